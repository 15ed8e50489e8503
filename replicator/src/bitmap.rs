//! Out-of-sync tracking: one bit per 4 KiB block (1 TiB -> 32 MiB).

pub const BLOCK: u64 = 4096;

#[derive(Debug, Clone)]
pub struct Bitmap {
    words: Vec<u64>,
    blocks: u64,
    set: u64,
}

impl Bitmap {
    pub fn new(size: u64) -> Bitmap {
        let blocks = size.div_ceil(BLOCK);
        Bitmap { words: vec![0; blocks.div_ceil(64) as usize], blocks, set: 0 }
    }

    /// Marks every block that `[offset, offset+len)` touches.
    pub fn mark(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / BLOCK;
        let last = ((offset + len - 1) / BLOCK).min(self.blocks.saturating_sub(1));
        for b in first..=last {
            let (w, bit) = ((b / 64) as usize, b % 64);
            if self.words[w] & (1 << bit) == 0 {
                self.words[w] |= 1 << bit;
                self.set += 1;
            }
        }
    }

    pub fn is_set(&self, block: u64) -> bool {
        block < self.blocks && self.words[(block / 64) as usize] & (1 << (block % 64)) != 0
    }

    /// Bytes marked out of sync.
    pub fn bytes(&self) -> u64 {
        self.set * BLOCK
    }

    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.set = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_every_touched_block_once() {
        let mut b = Bitmap::new(1 << 20);
        b.mark(4095, 2); // straddles blocks 0 and 1
        assert_eq!(b.bytes(), 8192);
        b.mark(0, 4096);
        assert_eq!(b.bytes(), 8192);
        b.mark((1 << 20) - 1, 1);
        assert!(b.is_set(255));
        assert_eq!(b.bytes(), 3 * 4096);
        b.clear();
        assert_eq!(b.bytes(), 0);
    }
}
