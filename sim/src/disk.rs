//! A simulated disk: a page cache over a durable image, per block with a
//! version. Flush makes every write emitted before it durable at its
//! completion, FUA its own blocks; a process crash keeps the cache, a
//! power loss keeps, per unflushed block, the cached or the durable
//! version at random.
//!
//! Holes, as a sparse file has them (`store::Store::is_hole`): a block is
//! a hole from the disk's creation until something is written to it, and
//! again once a punch (a zeroing the core allows to deallocate: TRIM,
//! WRITE_ZEROES without NO_HOLE, a resync's zeroes) covers it whole. A
//! zeroing that may not punch, or a punch that covers a block in part,
//! leaves it allocated (zeroes written, as a file system does within a
//! block). A hole reads as zeroes. Whether a block is a hole is part of
//! its version: a power loss keeps a block's cached or durable version
//! with its hole or data, so an unflushed write may vanish and leave the
//! hole it went to, and a durable write never turns into a hole.

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
    /// Whether each block is a hole in the cache / on disk (its version's).
    pub(crate) cache_hole: Vec<bool>,
    pub(crate) durable_hole: Vec<bool>,
}

/// One version of a block: its number, version, content and whether it
/// is a hole.
#[derive(Debug, Clone)]
pub(crate) struct BlockVersion {
    pub(crate) block: usize,
    pub(crate) ver: u64,
    pub(crate) data: Vec<u8>,
    pub(crate) hole: bool,
}

/// Blocks an I/O makes durable when it completes.
pub(crate) type Durable = Vec<BlockVersion>;

impl Disk {
    /// A disk as created: all hole.
    pub(crate) fn new() -> Disk {
        Disk {
            cache: vec![0; SIZE as usize],
            durable: vec![0; SIZE as usize],
            cache_ver: vec![0; BLOCKS],
            durable_ver: vec![0; BLOCKS],
            next_ver: 1,
            cache_hole: vec![true; BLOCKS],
            durable_hole: vec![true; BLOCKS],
        }
    }

    pub fn block(&self, b: usize) -> &[u8] {
        &self.cache[b * BLOCK as usize..(b + 1) * BLOCK as usize]
    }

    pub fn cell(&self, c: usize) -> &[u8] {
        &self.cache[c * CELL as usize..(c + 1) * CELL as usize]
    }

    /// Whether every block of `[off, off+len)` is a hole in the cache (what
    /// `SEEK_DATA` sees: data still in the page cache counts as data).
    pub fn is_hole(&self, off: u64, len: u64) -> bool {
        len > 0 && blocks(off, len).all(|b| self.cache_hole[b])
    }

    /// Blocks that are holes in the cache.
    pub fn holes(&self) -> usize {
        self.cache_hole.iter().filter(|&&h| h).count()
    }

    /// Writes into the cache (block-aligned in the simulator); returns the
    /// blocks as now cached (for FUA).
    pub(crate) fn write(&mut self, off: u64, data: &[u8]) -> Durable {
        let (o, n) = (off as usize, data.len());
        self.cache[o..o + n].copy_from_slice(data);
        // (Written, if only in part: allocated.)
        blocks(off, n as u64).for_each(|b| self.cache_hole[b] = false);
        self.touched(off, n as u64)
    }

    fn touched(&mut self, off: u64, len: u64) -> Durable {
        let mut out = Vec::new();
        for b in blocks(off, len) {
            self.cache_ver[b] = self.next_ver;
            self.next_ver += 1;
            out.push(self.cached(b));
        }
        out
    }

    fn cached(&self, b: usize) -> BlockVersion {
        BlockVersion {
            block: b,
            ver: self.cache_ver[b],
            data: self.block(b).to_vec(),
            hole: self.cache_hole[b],
        }
    }

    /// Zeroes `[off, off+len)`. With `punch` the blocks it covers whole
    /// become holes (a block covered in part is zeroed in place, a hole or
    /// allocated as it was); without, every block it touches is allocated.
    pub(crate) fn zero(&mut self, off: u64, len: u64, punch: bool) -> Durable {
        let (o, n) = (off as usize, len as usize);
        self.cache[o..o + n].iter_mut().for_each(|x| *x = 0);
        for b in blocks(off, len) {
            let whole = b as u64 * BLOCK >= off && (b as u64 + 1) * BLOCK <= off + len;
            if !punch {
                self.cache_hole[b] = false;
            } else if whole {
                self.cache_hole[b] = true;
            }
        }
        self.touched(off, len)
    }

    /// Every block whose cache differs from the durable image (for a flush).
    pub(crate) fn unflushed(&self) -> Durable {
        (0..BLOCKS)
            .filter(|&b| self.cache_ver[b] != self.durable_ver[b])
            .map(|b| self.cached(b))
            .collect()
    }

    pub(crate) fn make_durable(&mut self, blocks: &Durable) {
        for v in blocks {
            if v.ver > self.durable_ver[v.block] {
                self.durable_ver[v.block] = v.ver;
                self.durable_hole[v.block] = v.hole;
                let o = v.block * BLOCK as usize;
                self.durable[o..o + BLOCK as usize].copy_from_slice(&v.data);
            }
        }
    }

    /// Power loss: every block not durable keeps its cached or its durable
    /// version (content and hole alike), at random.
    pub(crate) fn power_loss(&mut self, rng: &mut Rng) {
        for b in 0..BLOCKS {
            if self.cache_ver[b] != self.durable_ver[b] && rng.chance(1, 2) {
                let o = b * BLOCK as usize;
                let data = self.cache[o..o + BLOCK as usize].to_vec();
                self.durable[o..o + BLOCK as usize].copy_from_slice(&data);
                self.durable_ver[b] = self.cache_ver[b];
                self.durable_hole[b] = self.cache_hole[b];
            }
        }
        self.cache.copy_from_slice(&self.durable);
        self.cache_ver.copy_from_slice(&self.durable_ver);
        self.cache_hole.copy_from_slice(&self.durable_hole);
    }

    /// The model's own rule: a hole reads as zeroes, in the cache and on
    /// disk (the block where one does not).
    #[cfg(test)]
    fn hole_with_data(&self) -> Option<usize> {
        let zero = |img: &[u8], b: usize| {
            img[b * BLOCK as usize..(b + 1) * BLOCK as usize].iter().all(|&x| x == 0)
        };
        (0..BLOCKS).find(|&b| {
            (self.cache_hole[b] && !zero(&self.cache, b))
                || (self.durable_hole[b] && !zero(&self.durable, b))
        })
    }
}

/// The blocks `[off, off+len)` touches (none if `len` is 0).
fn blocks(off: u64, len: u64) -> std::ops::Range<usize> {
    if len == 0 {
        return 0..0;
    }
    (off / BLOCK) as usize..((off + len).div_ceil(BLOCK)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_follow_writes_punches_and_zeroes() {
        let mut d = Disk::new();
        assert!(d.is_hole(0, SIZE), "a disk as created is all hole");
        d.write(BLOCK + CELL, &[1; CELL as usize]);
        assert!(!d.is_hole(BLOCK, BLOCK), "a block written in part is data");
        assert!(d.is_hole(0, BLOCK) && d.is_hole(2 * BLOCK, BLOCK));
        assert!(!d.is_hole(0, 3 * BLOCK), "a range with data in it");
        // A punch over part of the block zeroes it in place: still data.
        d.zero(BLOCK, CELL * 2, true);
        assert!(!d.is_hole(BLOCK, BLOCK));
        assert!(d.block(1).iter().all(|&x| x == 0));
        // Over the whole block: a hole again.
        d.zero(0, 2 * BLOCK, true);
        assert!(d.is_hole(0, 2 * BLOCK));
        // Zeroes that may not punch allocate, even over part of a block.
        d.zero(CELL, CELL, false);
        assert!(!d.is_hole(0, BLOCK) && d.is_hole(BLOCK, BLOCK));
        assert_eq!(d.hole_with_data(), None);
    }

    #[test]
    fn a_power_loss_keeps_a_blocks_hole_with_its_version() {
        for seed in 0..64 {
            let mut d = Disk::new();
            // Durable data at block 0, then punched without a flush.
            let v = d.write(0, &[7; BLOCK as usize]);
            d.make_durable(&v);
            d.zero(0, BLOCK, true);
            // An unflushed write into a hole at block 1.
            d.write(BLOCK, &[9; BLOCK as usize]);
            d.power_loss(&mut Rng::new(seed));
            assert_eq!(d.hole_with_data(), None, "seed {seed}");
            // Block 0: the durable data or the punched hole, never a hole
            // holding data nor data where the durable write was lost.
            match d.cache_hole[0] {
                true => assert!(d.block(0).iter().all(|&x| x == 0)),
                false => assert!(d.block(0).iter().all(|&x| x == 7)),
            }
            // Block 1: the write, or the hole it went to.
            match d.cache_hole[1] {
                true => assert!(d.block(1).iter().all(|&x| x == 0)),
                false => assert!(d.block(1).iter().all(|&x| x == 9)),
            }
        }
        // A durable write survives whatever the draws.
        let mut d = Disk::new();
        let v = d.write(0, &[7; BLOCK as usize]);
        d.make_durable(&v);
        d.power_loss(&mut Rng::new(1));
        assert!(!d.is_hole(0, BLOCK) && d.block(0).iter().all(|&x| x == 7));
    }
}
