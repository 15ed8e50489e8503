//! `disk-timeout`: a local disk that stops answering is detached. A store
//! operation or metadata update (the activity log, the bitmap, the
//! record: often on the same device) without a completion for this long
//! fails the disk (as an error would: `Failed`, the session to the peer closed, a full sync
//! later), and every request that waited for that disk alone is answered
//! from the peer's part (`write::try_reply`). Off by default, as in DRBD:
//! a disk that is only slow (a degraded RAID, a throttled cloud volume)
//! would otherwise be thrown away.

use std::collections::BTreeMap;

use crate::protocol::wire::DiskState;

use super::types::{IoError, IoId, Plant, Time};
use super::Core;

/// How long the replies of a detached disk wait for its record without a
/// `disk-timeout` (the disk failed with an error; its metadata may sit on
/// the same dying device, whose save then never returns). A detached disk
/// decides no reply, so none may wait for it for ever.
pub(crate) const RECORD_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The record that says this node's disk is detached (Failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FailedRecord {
    /// On disk: a power loss brings the node back Failed.
    Saved,
    /// Being saved.
    Saving,
    /// Its save failed, or has had no completion for `disk-timeout`
    /// ([`RECORD_WAIT`] without one).
    Lost,
}

/// Store operations and metadata updates in flight and when they were
/// issued, oldest first (I/O ids grow with time). Kept only with a
/// `disk-timeout`.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    issued: BTreeMap<IoId, Time>,
}

impl Core {
    /// A store operation or metadata update `io` was issued now.
    pub(crate) fn op_issued(&mut self, io: IoId) {
        if self.cfg.disk_timeout.is_some() {
            self.in_flight.issued.insert(io, self.now);
        }
    }

    /// `io` completed.
    pub(crate) fn op_completed(&mut self, io: IoId) {
        if !self.in_flight.issued.is_empty() {
            self.in_flight.issued.remove(&io);
        }
    }

    /// When the oldest store operation in flight times out (None: no
    /// timeout configured, nothing in flight, or the disk is detached).
    pub(crate) fn disk_deadline(&self) -> Option<Time> {
        let limit = self.cfg.disk_timeout?;
        if self.disk == DiskState::Failed || self.cfg.plant == Plant::NoDiskTimeout {
            return None;
        }
        self.in_flight.issued.first_key_value().map(|(_, at)| *at + limit)
    }

    /// Where the record saying this disk is detached (Failed) stands. An
    /// OK that only the peer's copy keeps needs it on disk: until then
    /// the saved record may still say UpToDate, and a node that loses
    /// power would come back as if its disk held those writes (a crashed
    /// Primary's activity-log extents then move from it to the peer).
    pub(crate) fn failed_record(&self) -> FailedRecord {
        if self.failed_record_saved() {
            FailedRecord::Saved
        } else if self.p.meta_failed.is_some() || self.failed_record_overdue() {
            FailedRecord::Lost
        } else {
            FailedRecord::Saving
        }
    }

    /// The durable record says the disk is detached.
    fn failed_record_saved(&self) -> bool {
        self.saved_record().is_some_and(|m| m.disk == DiskState::Failed)
    }

    /// The record's save has had no completion for `disk-timeout` (on a
    /// hung disk that holds the metadata too, it never will; see
    /// [`Core::failed_record_deadline`]).
    fn failed_record_overdue(&self) -> bool {
        self.failed_record_deadline().is_some_and(|at| self.now >= at)
    }

    /// When the save of the detached disk's record times out: after
    /// `disk-timeout`, or [`RECORD_WAIT`] without one, from the issue of
    /// the save in flight (an older record's, if that is what hangs: the
    /// Failed record waits behind it). None: the disk is not detached,
    /// its record is on disk, or nothing is saving.
    pub(crate) fn failed_record_deadline(&self) -> Option<Time> {
        let limit = self.cfg.disk_timeout.unwrap_or(RECORD_WAIT);
        (self.disk == DiskState::Failed && self.p.meta_saving && !self.failed_record_saved())
            .then(|| self.p.meta_since + limit)
    }

    /// The timer: the detached disk's record is overdue, so the replies
    /// waiting for it are decided.
    pub(crate) fn check_failed_record(&mut self) {
        if self.failed_record_overdue() && !self.pending.is_empty() {
            self.retry_replies_on_failed_disk();
        }
    }

    /// The disk is detached with store operations it never completed
    /// (known with a `disk-timeout` only).
    pub(crate) fn disk_hung(&self) -> bool {
        self.disk == DiskState::Failed && !self.in_flight.issued.is_empty()
    }

    /// The timer: the oldest operation is overdue, the disk is detached.
    pub(crate) fn check_disk_timeout(&mut self) {
        let Some(deadline) = self.disk_deadline() else { return };
        if self.now >= deadline {
            let limit = self.cfg.disk_timeout.unwrap_or_default();
            self.disk_failed(IoError::ETIMEDOUT, &format!("no completion for {limit:?}"));
        }
    }

    /// An operation the shell performs on the disk itself (an application
    /// read: the core does not issue those) had no completion for
    /// `disk-timeout`: the disk is detached, as for one of the core's.
    pub fn handle_disk_stalled(&mut self, now: Time, what: &str) {
        self.now = self.now.max(now);
        let Some(limit) = self.cfg.disk_timeout else { return };
        if self.cfg.plant == Plant::NoDiskTimeout {
            return;
        }
        self.disk_failed(IoError::ETIMEDOUT, &format!("{what}: no completion for {limit:?}"));
        self.pump();
    }

    /// An operation the shell performs on the disk itself failed (the
    /// final flush at stop): the disk is detached, as for one of the
    /// core's.
    pub fn handle_disk_error(&mut self, now: Time, e: IoError, what: &str) {
        self.now = self.now.max(now);
        self.disk_failed(e, what);
        self.pump();
    }
}
