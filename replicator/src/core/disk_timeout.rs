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
}
