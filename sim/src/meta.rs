//! A node's persisted metadata: the last successful update of each kind.

use std::collections::BTreeSet;

use twinblock_replicator::core::{MetaRecord, Persist, PAGE_WORDS};

use crate::BLOCKS;

#[derive(Clone, Default)]
pub struct Meta {
    pub record: Option<MetaRecord>,
    pub bitmap: Option<Vec<u64>>,
    pub al: BTreeSet<u64>,
}

impl Meta {
    /// The record a start takes (a forced promotion's unconfirmed first
    /// record stands for the one it holds, `MetaRecord::at_start`): what
    /// the checker judges the node's durable state by.
    pub(crate) fn at_start(&self) -> Option<&MetaRecord> {
        self.record.as_ref().map(MetaRecord::at_start)
    }

    pub(crate) fn apply(&mut self, p: &Persist) {
        match p {
            Persist::Meta(m) => self.record = Some(m.clone()),
            Persist::Bitmap { pages } => {
                let words = BLOCKS.div_ceil(64);
                let bm = self.bitmap.get_or_insert_with(|| vec![0; words]);
                for (page, w) in pages {
                    let at = *page as usize * PAGE_WORDS;
                    for (i, x) in w.iter().enumerate() {
                        if at + i < bm.len() {
                            bm[at + i] = *x;
                        }
                    }
                }
            }
            Persist::Al { remove, add } => {
                for e in remove {
                    self.al.remove(e);
                }
                self.al.extend(add.iter().copied());
            }
        }
    }

    pub fn bit(&self, b: usize) -> bool {
        self.bitmap.as_ref().is_some_and(|w| w[b / 64] & (1 << (b % 64)) != 0)
    }
}
