//! A simulated disk: a page cache over a durable image, per block with a
//! version. Flush makes every write emitted before it durable at its
//! completion, FUA its own blocks; a process crash keeps the cache, a
//! power loss keeps, per unflushed block, the cached or the durable
//! version at random.

use crate::rng::Rng;
use crate::{BLOCK, BLOCKS, CELL, SIZE};

/// A simulated disk: page cache over a durable image, per block.
#[derive(Clone)]
pub struct Disk {
    pub cache: Vec<u8>,
    pub durable: Vec<u8>,
    /// Version of each block in the cache / on disk (a write bumps it).
    pub(crate) cache_ver: Vec<u64>,
    pub(crate) durable_ver: Vec<u64>,
    pub(crate) next_ver: u64,
}

/// Blocks (number, version, content) an I/O makes durable when it completes.
pub(crate) type Durable = Vec<(usize, u64, Vec<u8>)>;

impl Disk {
    pub(crate) fn new() -> Disk {
        Disk {
            cache: vec![0; SIZE as usize],
            durable: vec![0; SIZE as usize],
            cache_ver: vec![0; BLOCKS],
            durable_ver: vec![0; BLOCKS],
            next_ver: 1,
        }
    }

    pub fn block(&self, b: usize) -> &[u8] {
        &self.cache[b * BLOCK as usize..(b + 1) * BLOCK as usize]
    }

    pub fn cell(&self, c: usize) -> &[u8] {
        &self.cache[c * CELL as usize..(c + 1) * CELL as usize]
    }

    /// Writes into the cache (block-aligned in the simulator); returns the
    /// blocks as now cached (for FUA).
    pub(crate) fn write(&mut self, off: u64, data: &[u8]) -> Durable {
        let (o, n) = (off as usize, data.len());
        self.cache[o..o + n].copy_from_slice(data);
        self.touched(off, n as u64)
    }

    pub(crate) fn touched(&mut self, off: u64, len: u64) -> Durable {
        let mut out = Vec::new();
        if len == 0 {
            return out;
        }
        let first = (off / BLOCK) as usize;
        let last = ((off + len - 1) / BLOCK) as usize;
        for b in first..=last {
            self.cache_ver[b] = self.next_ver;
            self.next_ver += 1;
            out.push((b, self.cache_ver[b], self.block(b).to_vec()));
        }
        out
    }

    pub(crate) fn zero(&mut self, off: u64, len: u64) -> Durable {
        let (o, n) = (off as usize, len as usize);
        self.cache[o..o + n].iter_mut().for_each(|x| *x = 0);
        self.touched(off, len)
    }

    /// Every block whose cache differs from the durable image (for a flush).
    pub(crate) fn unflushed(&self) -> Durable {
        (0..BLOCKS)
            .filter(|&b| self.cache_ver[b] != self.durable_ver[b])
            .map(|b| (b, self.cache_ver[b], self.block(b).to_vec()))
            .collect()
    }

    pub(crate) fn make_durable(&mut self, blocks: &Durable) {
        for (b, ver, data) in blocks {
            if *ver > self.durable_ver[*b] {
                self.durable_ver[*b] = *ver;
                let o = *b * BLOCK as usize;
                self.durable[o..o + BLOCK as usize].copy_from_slice(data);
            }
        }
    }

    /// Power loss: every block not durable keeps its cached or its durable
    /// version, at random.
    pub(crate) fn power_loss(&mut self, rng: &mut Rng) {
        for b in 0..BLOCKS {
            if self.cache_ver[b] != self.durable_ver[b] && rng.chance(1, 2) {
                let o = b * BLOCK as usize;
                let data = self.cache[o..o + BLOCK as usize].to_vec();
                self.durable[o..o + BLOCK as usize].copy_from_slice(&data);
                self.durable_ver[b] = self.cache_ver[b];
            }
        }
        self.cache.copy_from_slice(&self.durable);
        self.cache_ver.copy_from_slice(&self.durable_ver);
    }
}
