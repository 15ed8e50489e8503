//! The activity log as the core keeps it: which extents are durably in the
//! log, which of them have operations in flight (they may not leave), and
//! which were written since the last local flush (leaving would forget
//! writes the page cache may still lose). The journal itself is the shell's
//! ([`crate::al`]); the core only says what to add and remove.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
pub struct AlState {
    /// Extents durably in the journal.
    pub durable: BTreeSet<u64>,
    /// Operations in flight per extent (local or to the peer).
    refs: HashMap<u64, u32>,
    /// Extent -> write epoch of the last store write to it.
    written: HashMap<u64, u64>,
    /// Extent -> last use (LRU clock).
    used: HashMap<u64, u64>,
    clock: u64,
    pub capacity: usize,
    /// A journal update in flight: (io, remove, add).
    pub saving: Option<(u64, Vec<u64>, Vec<u64>)>,
}

impl AlState {
    pub fn new(capacity: usize) -> AlState {
        AlState { capacity: capacity.max(1), ..AlState::default() }
    }

    pub fn touch(&mut self, extents: &[u64]) {
        for &e in extents {
            self.clock += 1;
            self.used.insert(e, self.clock);
        }
    }

    pub fn hold(&mut self, extents: &[u64]) {
        for &e in extents {
            *self.refs.entry(e).or_default() += 1;
        }
    }

    pub fn release(&mut self, extents: &[u64]) {
        for e in extents {
            if let Some(n) = self.refs.get_mut(e) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(e);
                }
            }
        }
    }

    pub fn wrote(&mut self, extents: &[u64], epoch: u64) {
        for &e in extents {
            self.written.insert(e, epoch);
        }
    }

    pub fn busy(&self, e: u64) -> bool {
        self.refs.contains_key(&e)
    }

    /// Extents that could leave once everything up to `flushed` is durable:
    /// (ready now, ready after a flush), least recently used first.
    pub fn candidates(&self, flushed: u64) -> (Vec<u64>, usize) {
        let mut idle: Vec<(u64, u64)> = self
            .durable
            .iter()
            .filter(|e| !self.busy(**e))
            .map(|&e| (self.used.get(&e).copied().unwrap_or(0), e))
            .collect();
        idle.sort_unstable();
        let mut ready = Vec::new();
        let mut later = 0;
        for (_, e) in idle {
            if self.written.get(&e).is_none_or(|&w| w <= flushed) {
                ready.push(e);
            } else {
                later += 1;
            }
        }
        (ready, later)
    }

    /// The journal update completed.
    pub fn saved(&mut self, remove: &[u64], add: &[u64]) {
        self.forget(remove);
        self.durable.extend(add.iter().copied());
    }

    /// The journal update failed. It may have landed all the same (the
    /// error came after the rename, from the directory's fsync): the
    /// extents it removed are out of the journal as far as writes know (a
    /// write to one takes a new update first), those it added are not in
    /// it. (Found by the simulator once failed updates could land, seed
    /// 70330: a write went to an extent whose removal had landed, and a
    /// block that differed was covered by nothing.)
    pub fn failed(&mut self, remove: &[u64]) {
        self.forget(remove);
    }

    fn forget(&mut self, extents: &[u64]) {
        for e in extents {
            self.durable.remove(e);
            self.used.remove(e);
            self.written.remove(e);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.refs.values().map(|&n| n as usize).sum()
    }
}
