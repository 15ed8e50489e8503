//! Online verify: the source reads each chunk and numbers a verify
//! operation right after it (no application write admitted in between), so
//! the peer computes its checksums on the same state of the data. Mismatching
//! blocks are marked out of sync (and saved), counted, and resynced.

use super::session::{Activity, Phase, VerifyRun};
use super::types::{Progress, StoreOp};
use super::{Core, IoFor};

impl Core {
    pub(crate) fn start_verify(&mut self) {
        let now = self.now;
        let size = self.cfg.size;
        if let Some(s) = self.session.as_mut().filter(|s| s.phase == Phase::Running) {
            if matches!(s.activity, Activity::Idle) {
                tracing::info!(bytes = size, "online verify started");
                s.activity = Activity::Verify(VerifyRun {
                    cursor: 0,
                    reading: false,
                    chunks: 0,
                    progress: Progress { total: size, done: 0, started: now },
                });
            }
        }
    }

    pub(crate) fn verify_pump(&mut self) {
        let chunk = self.cfg.chunk_blocks * self.cfg.block;
        let (window, size) = (self.cfg.window, self.cfg.size);
        let queued = self.peer_writes_queued();
        let Some(s) = self.session.as_mut().filter(|s| s.phase == Phase::Running) else { return };
        let sid = s.id;
        let Activity::Verify(v) = &mut s.activity else { return };
        // (Reads after the writes received from the peer, as a resync's:
        // before, a block a queued write changes would be reported as
        // differing.)
        if !v.reading && v.chunks < window && v.cursor < size && !queued {
            let len = chunk.min(size - v.cursor);
            let offset = v.cursor;
            v.reading = true;
            self.barrier += 1;
            self.store(IoFor::SourceRead { sid }, StoreOp::Read { offset, len, holes: false });
            return;
        }
        if !v.reading && v.chunks == 0 && v.cursor >= size {
            tracing::info!(
                mismatches = self.counters.verify_mismatches,
                out_of_sync = self.dirty.bytes(),
                "online verify finished"
            );
            s.activity = Activity::Idle;
            // A Primary resyncs what it marked from its own bitmap. Between
            // two Secondaries nothing would: the marks waited for the next
            // handshake, and a node promoted meanwhile served its
            // differing blocks as in sync (found in review). The handshake
            // decides whose copy moves, as after any separation.
            if self.role != super::Role::Primary && self.dirty.bytes() > 0 {
                let why = format!(
                    "online verify marked {} bytes out of sync: reconnecting to resync them",
                    self.dirty.bytes()
                );
                self.close_session(sid, why);
            }
        }
    }
}
