//! What the core makes durable, and when: the metadata record (generation
//! ids, disk state), pages of the out-of-sync bitmap, and the activity-log
//! journal. One update of each kind is in flight at a time; what waits on
//! durability checks the durable view, so a failed update is retried by the
//! next operation that needs it and answered with its error.

use std::collections::BTreeSet;

use crate::bitmap::Bitmap;
use crate::protocol::wire::{DiskState, Message};

use super::types::{IoError, MetaRecord, Persist, PAGE_WORDS};
use super::{Action, Core, IoFor};

/// Bitmap pages in one save at most (4 MiB).
pub const SAVE_PAGES: usize = 1024;

#[derive(Debug, Default)]
pub struct PersistState {
    /// The record last saved successfully (None: nothing saved yet).
    pub durable_meta: Option<MetaRecord>,
    pub meta_saving: bool,
    /// When the save in flight was issued.
    pub meta_since: std::time::Duration,
    pub meta_failed: Option<IoError>,
    /// The record of the last save that failed, until one succeeds: a
    /// failed save may have landed all the same (an error after the
    /// rename), so it, not `durable_meta`, is what a start may find
    /// (`declared.rs` holds it in a forced promotion's first record).
    pub failed_record: Option<MetaRecord>,
    /// Bitmap pages changed since they were last saved.
    pub dirty_pages: BTreeSet<u64>,
    pub bitmap_saving: bool,
    pub bitmap_failed: Option<IoError>,
    /// Someone needs the bitmap durable (eviction, checkpoint, lost peer).
    pub want_bitmap: bool,
    pub al_failed: Option<IoError>,
    /// Empty the activity log of every idle, flushed extent.
    pub al_trim_wanted: bool,
    /// Failed updates are tried again from this time on (at most once a
    /// second: a full metadata volume must not spin).
    pub retry_at: std::time::Duration,
    /// The record in memory names a bitmap base whose bits are not all on
    /// disk yet (`primary --force` on a failed or partly synced disk marks
    /// every block): it is saved once they are, not before.
    pub record_after_bitmap: bool,
}

impl PersistState {
    pub fn new(durable_meta: Option<MetaRecord>) -> PersistState {
        PersistState { durable_meta, ..PersistState::default() }
    }

    pub fn all_pages_dirty(&mut self, bm: &Bitmap) {
        let pages = bm.words().len().div_ceil(PAGE_WORDS) as u64;
        self.dirty_pages.extend(0..pages);
        self.want_bitmap = true;
    }
}

impl Core {
    /// Marks `[off, off+len)` out of sync (and its bitmap pages changed).
    pub(crate) fn mark(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.dirty.mark(off, len);
        self.touch_pages(off, len);
    }

    pub(crate) fn clear(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.dirty.clear_range(off, len);
        self.touch_pages(off, len);
    }

    fn touch_pages(&mut self, off: u64, len: u64) {
        let per_page = self.cfg.block * 64 * PAGE_WORDS as u64;
        let last = (off + len - 1).min(self.cfg.size.saturating_sub(1));
        for p in off / per_page..=last / per_page {
            self.p.dirty_pages.insert(p);
        }
    }

    /// The record a start would take of the last one saved: a forced
    /// promotion's unconfirmed first record stands for the one it holds
    /// ([`MetaRecord::at_start`]). What "saved" means to whatever tells
    /// the peer or the witness what this node stands by.
    pub(crate) fn saved_record(&self) -> Option<&MetaRecord> {
        self.p.durable_meta.as_ref().map(MetaRecord::at_start)
    }

    /// The metadata record in memory is the one on disk.
    pub(crate) fn meta_durable(&self) -> bool {
        let durable = self.p.durable_meta.as_ref();
        // (Built only in debug builds: the field-wise check must be the
        // record's equality.)
        debug_assert_eq!(
            durable.is_some_and(|m| self.meta_is(m)),
            durable == Some(&self.meta_record())
        );
        durable.is_some_and(|m| self.meta_is(m))
    }

    /// Every bitmap change is on disk.
    pub(crate) fn bitmap_clean(&self) -> bool {
        self.p.dirty_pages.is_empty() && !self.p.bitmap_saving
    }

    /// Issues the updates that are due.
    pub(crate) fn persist_pump(&mut self) {
        if self.p.record_after_bitmap {
            if self.bitmap_clean() {
                self.p.record_after_bitmap = false;
            } else {
                // (Also after a failed save put its pages back.)
                self.p.want_bitmap = true;
            }
        }
        if !self.p.meta_saving
            && self.p.meta_failed.is_none()
            && !self.p.record_after_bitmap
            && !self.meta_durable()
            && !self.promotion_unflushed()
            && !self.declaration_abandoned()
        {
            let m = self.meta_record();
            let io = self.io(IoFor::Meta(m.clone()));
            self.p.meta_saving = true;
            self.p.meta_since = self.now;
            self.actions.push_back(Action::Persist { io, what: Persist::Meta(m) });
        }
        if self.p.want_bitmap
            && !self.p.bitmap_saving
            && self.p.bitmap_failed.is_none()
            && !self.p.dirty_pages.is_empty()
        {
            // At most SAVE_PAGES at a time (the rest in the saves that
            // follow): every page at once held a 16 TiB bitmap's 512 MiB
            // twice over beside it (review).
            let batch: Vec<u64> = self.p.dirty_pages.iter().copied().take(SAVE_PAGES).collect();
            let pages: Vec<(u64, Vec<u64>)> = batch
                .into_iter()
                .map(|p| {
                    self.p.dirty_pages.remove(&p);
                    (p, self.dirty.page(p, PAGE_WORDS))
                })
                .collect();
            let io = self.io(IoFor::Bitmap(pages.iter().map(|(p, _)| (*p, Vec::new())).collect()));
            self.p.bitmap_saving = true;
            self.p.want_bitmap = !self.p.dirty_pages.is_empty();
            self.actions.push_back(Action::Persist { io, what: Persist::Bitmap { pages } });
        }
        // (A node that found its cache lost keeps its activity log until
        // its record saying so is saved: the log is what tells the next
        // start, on the same boot, that the cache was lost.)
        if self.p.al_trim_wanted
            && self.al.saving.is_none()
            && self.p.al_failed.is_none()
            && (self.lost == crate::protocol::wire::Lost::None || self.meta_durable())
        {
            let (ready, later) = self.al.candidates(self.flushed_epoch);
            if later > 0 && self.al_flush.is_none() && self.disk_usable() {
                // Extents written since the last flush leave only once
                // those writes are durable.
                self.flush_written();
            } else if ready.is_empty() {
                if later == 0 {
                    self.p.al_trim_wanted = false;
                }
            } else if self.bitmap_clean() {
                self.p.al_trim_wanted = later > 0;
                self.al_journal(ready, Vec::new());
            } else {
                self.p.want_bitmap = true;
            }
        }
    }

    /// The record to save makes this node the last Primary (a newer
    /// `promoted_at`), and what the node held at its promotion is not yet
    /// durable: issues that flush (if none is out) and says the record
    /// waits. On one generation the last Primary is
    /// the union's source when both nodes lost their page caches, so its
    /// disk must hold what its peer made durable alone: a write both held
    /// that the peer's FLUSH, acknowledged while the link was down, made
    /// durable there and only cached here (review of the simulator's
    /// exclusion for two power losses). A disk that cannot flush does not
    /// hold the record back.
    fn promotion_unflushed(&mut self) -> bool {
        let durable_at = self.p.durable_meta.as_ref().map_or(0, |m| m.promoted_at);
        if self.promoted_at <= durable_at
            || self.flushed_epoch >= self.promo_epoch
            || !self.disk_usable()
        {
            return false;
        }
        self.flush_written();
        true
    }

    /// This node is the pair's last Primary as of `promoted_at`: the
    /// record saying so waits for a flush of every write issued until now
    /// ([`Core::promotion_unflushed`]). A promotion, and the handshake's
    /// raise of a reigning Primary past its peer's time (review: the raise
    /// was saved with a write the peer had flushed only in this node's
    /// cache).
    pub(crate) fn reign_from(&mut self, promoted_at: u64) {
        self.promoted_at = promoted_at;
        self.promo_epoch = self.write_epoch;
    }

    /// Issues an activity-log journal update.
    pub(crate) fn al_journal(&mut self, remove: Vec<u64>, add: Vec<u64>) {
        let io = self.io(IoFor::Al);
        self.al.saving = Some((io, remove.clone(), add.clone()));
        self.actions.push_back(Action::Persist { io, what: Persist::Al { remove, add } });
    }

    pub(crate) fn meta_saved(&mut self, m: MetaRecord, result: Result<(), IoError>) {
        self.p.meta_saving = false;
        match result {
            Ok(()) => {
                let outdated = m.disk == DiskState::Outdated;
                self.p.failed_record = None;
                self.p.durable_meta = Some(m);
                // The peer learns what we now stand by (a SyncTarget's new
                // generation, a changed disk state).
                self.announce();
                // A Primary's `Outdate`, now saved: its `disconnect` ends.
                if outdated && self.outdate_ack.is_some() && self.outdate_ack == self.session_id() {
                    self.outdate_ack = None;
                    self.send(Message::OutdateDone);
                }
            }
            Err(e) => {
                self.error(format!(
                    "cannot save metadata {}: {}",
                    self.meta_file(""),
                    e.describe()
                ));
                self.p.meta_failed = Some(e);
                self.p.failed_record = Some(m);
            }
        }
        // Replies waiting for this detached disk's record (`write::try_reply`).
        self.retry_replies_on_failed_disk();
    }

    pub(crate) fn bitmap_saved(
        &mut self,
        pages: Vec<(u64, Vec<u64>)>,
        result: Result<(), IoError>,
    ) {
        self.p.bitmap_saving = false;
        if let Err(e) = result {
            self.error(format!(
                "cannot save the out-of-sync bitmap {}: {}",
                self.meta_file(".bitmap"),
                e.describe()
            ));
            self.p.dirty_pages.extend(pages.iter().map(|(p, _)| *p));
            self.p.bitmap_failed = Some(e);
        }
    }

    pub(crate) fn al_saved(&mut self, result: Result<(), IoError>) {
        let Some((_, remove, add)) = self.al.saving.take() else { return };
        match result {
            Ok(()) => self.al.saved(&remove, &add),
            Err(e) => {
                self.error(format!(
                    "cannot update the activity log {}: {}",
                    self.meta_file(".al"),
                    e.describe()
                ));
                self.al.failed(&remove);
                self.p.al_failed = Some(e);
            }
        }
    }

    /// The metadata file of suffix `ext` (`""`, `".bitmap"`, `".al"`),
    /// as a failure names it.
    pub(crate) fn meta_file(&self, ext: &str) -> String {
        match self.cfg.files.meta_with(ext) {
            f if f.is_empty() => format!("`meta{ext}`"),
            f => f,
        }
    }

    /// Failed updates may be tried again (from the timer, once a second).
    pub(crate) fn retry_persist(&mut self) {
        let failed = self.p.meta_failed.is_some()
            || self.p.bitmap_failed.is_some()
            || self.p.al_failed.is_some();
        if !failed || self.now < self.p.retry_at {
            return;
        }
        self.p.retry_at = self.now + std::time::Duration::from_secs(1);
        self.p.meta_failed = None;
        self.p.bitmap_failed = None;
        self.p.al_failed = None;
    }
}
