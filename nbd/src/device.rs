//! The block-device trait the server is generic over. The NBD layer knows
//! nothing of what sits behind it (a plain file, or the replicator).

use std::future::Future;

use bytes::Bytes;

use crate::consts;

/// What a device operation can fail with, mapped to NBD errno values.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the device is read-only")]
    ReadOnly,
    #[error("operation not supported")]
    NotSupported,
    #[error("no space left on the device")]
    NoSpace,
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error("the device is shutting down")]
    Shutdown,
}

impl DeviceError {
    /// The NBD error number a client sees.
    pub fn errno(&self) -> u32 {
        match self {
            DeviceError::Io(e) => match e.raw_os_error() {
                // ENOSPC, and EDQUOT/EFBIG (quota, file size limit) which
                // NBD has no number for: the client sees "no space".
                Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => consts::ENOSPC,
                Some(libc::EINVAL) => consts::EINVAL,
                Some(12) => consts::ENOMEM,
                Some(1) | Some(13) | Some(30) => consts::EPERM,
                Some(95) => consts::ENOTSUP,
                _ => consts::EIO,
            },
            DeviceError::ReadOnly => consts::EPERM,
            DeviceError::NotSupported => consts::ENOTSUP,
            DeviceError::NoSpace => consts::ENOSPC,
            DeviceError::Invalid(_) => consts::EINVAL,
            DeviceError::Shutdown => consts::ESHUTDOWN,
        }
    }
}

pub type DeviceResult<T> = Result<T, DeviceError>;

/// One extent of `base:allocation` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub length: u32,
    /// `STATE_HOLE` | `STATE_ZERO` bits.
    pub flags: u32,
}

/// Flags of a WRITE_ZEROES request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZeroFlags {
    /// Durable before the reply.
    pub fua: bool,
    /// The range must stay allocated (no hole punching).
    pub no_hole: bool,
    /// Fail with ENOTSUP rather than zero slowly.
    pub fast: bool,
}

/// A block device that an NBD export serves. Offsets and lengths have been
/// range-checked by the server against `size()` before any call.
///
/// Contract: when `write` (or `trim`, `write_zeroes`) returns, the data is
/// visible to every later `read`, on every connection; when `flush` returns,
/// every write that returned before `flush` was called is durable; a write
/// with `fua` is durable when it returns.
pub trait BlockDevice: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// Whether writes are refused right now (a Secondary, say).
    fn read_only(&self) -> bool {
        false
    }
    /// Human-readable description (NBD_INFO_DESCRIPTION).
    fn description(&self) -> String {
        String::new()
    }
    /// Whether a request that could not complete at once may be finished
    /// on the thread that wakes it (its reply sent from there) instead of
    /// on a runtime worker woken for it: one thread hand-off less per
    /// request. A device says yes only if it wakes its futures while
    /// holding none of its own locks, and its futures, once pending, need
    /// no runtime context to finish (no timers or sockets registered after
    /// their first poll).
    fn finish_on_wake(&self) -> bool {
        false
    }
    /// A client entered the transmission phase on an export offered
    /// read-write (`writable`) or read-only; [`BlockDevice::client_closed`]
    /// when it leaves. A device that must not change under a client that
    /// holds it open counts them (a Primary's `secondary` is refused while
    /// one writes, as DRBD refuses while the device is held open).
    fn client_opened(&self, _writable: bool) {}
    /// The client of [`BlockDevice::client_opened`] left.
    fn client_closed(&self, _writable: bool) {}

    fn read(&self, offset: u64, len: u32) -> impl Future<Output = DeviceResult<Bytes>> + Send;
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> impl Future<Output = DeviceResult<()>> + Send;
    fn flush(&self) -> impl Future<Output = DeviceResult<()>> + Send;
    /// Discard: afterwards the range reads as zeroes or old data (we give zeroes).
    fn trim(
        &self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> impl Future<Output = DeviceResult<()>> + Send;
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        flags: ZeroFlags,
    ) -> impl Future<Output = DeviceResult<()>> + Send;
    /// Prefetch hint.
    fn cache(&self, offset: u64, len: u64) -> impl Future<Output = DeviceResult<()>> + Send;
    /// Allocation status of `[offset, offset+len)`: extents in order, covering
    /// at least one byte and at most `len` bytes.
    fn block_status(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = DeviceResult<Vec<Extent>>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_and_file_size_limits_are_no_space() {
        let os = |n| DeviceError::Io(std::io::Error::from_raw_os_error(n)).errno();
        assert_eq!(os(libc::ENOSPC), consts::ENOSPC);
        assert_eq!(os(libc::EDQUOT), consts::ENOSPC);
        assert_eq!(os(libc::EFBIG), consts::ENOSPC);
        assert_eq!(os(libc::EROFS), consts::EPERM);
        assert_eq!(os(libc::EOPNOTSUPP), consts::ENOTSUP);
        assert_eq!(os(libc::EBADMSG), consts::EIO);
    }
}
