//! A store exported as-is: the device behind `twinblock serve` (no
//! replication). Maps the NBD device trait onto the store.

use std::sync::Arc;

use bytes::Bytes;
use twinblock_nbd::consts::{STATE_HOLE, STATE_ZERO};
use twinblock_nbd::{BlockDevice, DeviceError, DeviceResult, Extent, ZeroFlags};

use crate::store::Store;

pub struct LocalDevice {
    store: Arc<Store>,
}

impl LocalDevice {
    pub fn new(store: Arc<Store>) -> Self {
        LocalDevice { store }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

impl BlockDevice for LocalDevice {
    fn size(&self) -> u64 {
        self.store.size()
    }

    fn description(&self) -> String {
        format!("twinblock local store ({})", self.store.backend())
    }

    async fn read(&self, offset: u64, len: u32) -> DeviceResult<Bytes> {
        Ok(self.store.read(offset, len).await?)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceResult<()> {
        Ok(self.store.write(offset, data, fua).await?)
    }

    async fn flush(&self) -> DeviceResult<()> {
        Ok(self.store.flush().await?)
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> DeviceResult<()> {
        self.store.discard(offset, len).await?;
        if fua {
            self.store.flush().await?;
        }
        Ok(())
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceResult<()> {
        match self.store.zero(offset, len, !flags.no_hole, flags.fast).await {
            Err(e) if flags.fast && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                return Err(DeviceError::NotSupported)
            }
            r => r?,
        }
        if flags.fua {
            self.store.flush().await?;
        }
        Ok(())
    }

    async fn cache(&self, offset: u64, len: u64) -> DeviceResult<()> {
        Ok(self.store.prefetch(offset, len)?)
    }

    async fn block_status(&self, offset: u64, len: u32) -> DeviceResult<Vec<Extent>> {
        allocation(&self.store, offset, len)
    }
}

/// `base:allocation` extents of a store range: holes read as zeroes.
pub fn allocation(store: &Store, offset: u64, len: u32) -> DeviceResult<Vec<Extent>> {
    let runs = store.extents(offset, len as u64)?;
    Ok(runs
        .into_iter()
        .map(|(length, hole)| Extent {
            length: length.min(u32::MAX as u64) as u32,
            flags: if hole { STATE_HOLE | STATE_ZERO } else { 0 },
        })
        .collect())
}
