//! The Primary's write path. Application operations are admitted in arrival
//! order, one at a time, once what protects them is durable: the metadata
//! (a new generation when the peer will not get the write), the activity
//! log's extents, and room in protocol A's lag budget. An admitted
//! operation is numbered and sent to the peer, then written to the local
//! store, in the same step — so the local apply order is the sequence
//! order, which is the peer's apply order. Its reply waits for what the
//! mode requires.

use bytes::Bytes;

use crate::config::Protocol;
use crate::protocol::wire::{DiskState, Message, Op, Role};

use super::disk_timeout::FailedRecord;
use super::session::{Activity, Need, OutKind, PeerBehind, Phase};
use super::types::{IoError, Plant, ReplyError, ReqId, StoreOp, Time};
use super::{AppOp, Core, IoFor, PeerPart, Pending};

/// What admission says about the operation at the head of a queue.
pub(crate) enum Admit {
    Go,
    Wait,
    Fail(ReplyError),
}

impl Core {
    // ----- application requests -----

    /// An application write (`fua`: durable where the mode says before the reply).
    pub fn write(&mut self, now: Time, req: ReqId, offset: u64, data: Bytes, fua: bool) {
        self.submit_app(now, req, Op::write(offset, data, fua));
    }

    /// TRIM.
    pub fn trim(&mut self, now: Time, req: ReqId, offset: u64, len: u32, fua: bool) {
        self.submit_app(now, req, Op::Trim { offset, len, fua });
    }

    /// WRITE_ZEROES (`no_hole`: the range must stay allocated).
    pub fn write_zeroes(
        &mut self,
        now: Time,
        req: ReqId,
        offset: u64,
        len: u32,
        no_hole: bool,
        fua: bool,
    ) {
        self.submit_app(now, req, Op::Zero { offset, len, no_hole, fua });
    }

    /// FLUSH: everything completed before it is durable where the mode says.
    pub fn flush(&mut self, now: Time, req: ReqId) {
        self.submit_app(now, req, Op::Flush);
    }

    fn submit_app(&mut self, now: Time, req: ReqId, op: Op) {
        self.now = self.now.max(now);
        if let Some((off, len)) = op.range() {
            if off.checked_add(len).is_none_or(|end| end > self.cfg.size) {
                self.reply(req, Err(ReplyError::OutOfRange));
                return;
            }
            if len == 0 {
                self.reply(req, Ok(()));
                return;
            }
        }
        self.app.push_back(AppOp { req, op, primary: self.role == Role::Primary });
        self.pump();
    }

    /// Admits what can go, in order.
    pub(crate) fn app_pump(&mut self) {
        while let Some(head) = self.app.front() {
            let (op, req, primary) = (head.op.clone(), head.req, head.primary);
            match self.admit_app(&op, primary) {
                Admit::Wait => break,
                Admit::Fail(e) => {
                    self.app.pop_front();
                    self.app_admitted += 1;
                    self.reply(req, Err(e));
                }
                Admit::Go => {
                    let AppOp { req, op, .. } = self.app.pop_front().expect("head");
                    self.app_admitted += 1;
                    self.issue_app(req, op);
                }
            }
        }
    }

    /// The controller's gate for an operation (`write`: a write's), and,
    /// one the peer will not get (`alone`), a new generation of ours
    /// first: a Primary without quorum takes none, and one the peer will
    /// not get needs the witness to know the peer is behind. `Some`: what
    /// admission says meanwhile.
    fn go_apart(&mut self, alone: bool, write: bool, why: &str) -> Option<Admit> {
        if let Some(g) = self.reply_gate(alone, write) {
            return Some(match g {
                Ok(()) => Admit::Wait,
                Err(e) => Admit::Fail(e),
            });
        }
        if alone {
            self.diverge(why);
        }
        None
    }

    /// Waits for the metadata record (a new generation, `fresh` cleared)
    /// to be durable before an operation that relies on it; fails it if
    /// the save failed.
    fn meta_wait(&mut self) -> Option<Admit> {
        // (A failed force's demotion runs its hooks: nothing is answered
        // on what is about to be undone, even on a record that landed.)
        if self.declaration_abandoned() {
            return Some(Admit::Fail(ReplyError::Io(IoError::EIO)));
        }
        // (A forced promotion's first record, durable, is not the one
        // that confirms it: a start would roll it back, `declared.rs`.)
        if self.meta_durable() && !self.declared_unconfirmed() {
            return None;
        }
        // (A record waiting for the bitmap it names fails with that save.)
        let failed = self.p.meta_failed.take().or_else(|| {
            if self.p.record_after_bitmap {
                self.p.bitmap_failed.take()
            } else {
                None
            }
        });
        Some(match failed {
            Some(e) => Admit::Fail(ReplyError::Io(e)),
            None => Admit::Wait,
        })
    }

    fn admit_app(&mut self, op: &Op, primary: bool) -> Admit {
        let range = op.range();
        if (range.is_some() || primary) && self.role != Role::Primary {
            return Admit::Fail(ReplyError::ReadOnly);
        }
        if !self.disk_usable() {
            return Admit::Fail(ReplyError::Io(IoError::EIO));
        }
        // What the peer sent before must land first: a Primary promoted
        // with its peer's writes still to write answers nothing over them.
        // (A Secondary's FLUSH goes to the store behind the peer writes
        // already issued there, all it covers: held here, it starved under
        // a steady stream of them; review, helper-102, `core::tests::multi_conn`
        // `a_flush_on_the_secondary_is_answered_under_a_steady_stream_of_peer_writes`.)
        if self.role == Role::Primary && self.peer_writes_pending() {
            return Admit::Wait;
        }
        if self.session.as_ref().is_some_and(|s| s.phase == Phase::Handshake) {
            return Admit::Wait;
        }
        let Some((off, len)) = range else {
            // A FLUSH without the peer makes durable here what the peer
            // may hold only in its page cache (writes it received before
            // the link went): a promise this node alone keeps, so its data
            // is a new generation, as for a write, saved before the FLUSH
            // is answered. Else a peer that lost those writes with its
            // power, promoted later on the same generation, was the source
            // and overwrote them (review; `core::tests`
            // `a_flush_without_the_peer_is_a_generation_the_peer_lacks`).
            if self.role == Role::Primary && (!self.linked() || self.ahead()) {
                if self.ahead_unfenced() {
                    return Admit::Wait;
                }
                let held = self.go_apart(true, false, "a FLUSH without the peer");
                if let Some(a) = held.or_else(|| self.meta_wait()) {
                    return a;
                }
            }
            return Admit::Go;
        };
        if self.barrier > 0 && self.cfg.plant != Plant::WriteDuringResyncRead {
            return Admit::Wait;
        }
        // (Adaptive mode: an Ahead Primary writes without the peer too,
        // once the peer's record says it is Outdated.)
        if self.ahead() && self.ahead_unfenced() {
            return Admit::Wait;
        }
        let alone = !self.linked() || self.ahead();
        if let Some(a) = self.go_apart(alone, true, "writing without the peer") {
            return a;
        }
        self.fresh = false;
        if let Some(a) = self.meta_wait() {
            return a;
        }
        let extents = self.extents(Some((off, len)));
        match self.al_admit(&extents) {
            Admit::Go => {}
            other => return other,
        }
        if self.cfg.protocol == Protocol::A {
            if let Some(s) = self.session.as_ref().filter(|s| s.phase == Phase::Running) {
                let bytes = op.wire_bytes();
                if s.in_flight_bytes > 0 && s.in_flight_bytes + bytes > self.cfg.max_lag {
                    return Admit::Wait;
                }
            }
        }
        Admit::Go
    }

    /// The activity log holds `extents` durably, or what must happen first
    /// is under way.
    pub(crate) fn al_admit(&mut self, extents: &[u64]) -> Admit {
        if self.cfg.plant == Plant::SkipAlMark {
            return Admit::Go;
        }
        // An extent an update in flight takes out of the log is not held:
        // the op waits for the update, then adds it back.
        let leaving: &[u64] = self.al.saving.as_ref().map_or(&[], |(_, remove, _)| remove);
        let missing: Vec<u64> = extents
            .iter()
            .copied()
            .filter(|e| !self.al.durable.contains(e) || leaving.contains(e))
            .collect();
        if missing.is_empty() {
            self.al.touch(extents);
            return Admit::Go;
        }
        if self.al.saving.is_some() {
            return Admit::Wait;
        }
        if let Some(e) = self.p.al_failed.take() {
            return Admit::Fail(ReplyError::Io(e));
        }
        let capacity = self.al.capacity.max(extents.len());
        let room = capacity.saturating_sub(self.al.durable.len());
        let mut evict = Vec::new();
        if missing.len() > room {
            let need = missing.len() - room;
            let (ready, later) = self.al.candidates(self.flushed_epoch);
            let ready: Vec<u64> = ready.into_iter().filter(|e| !extents.contains(e)).collect();
            if ready.len() < need {
                if later > 0 {
                    // Extents written since the last flush may leave only
                    // once those writes are durable.
                    self.flush_written();
                }
                return Admit::Wait;
            }
            evict = ready[..need].to_vec();
            // Bits of the leaving extents must be on disk before they leave.
            if !self.bitmap_clean() {
                if let Some(e) = self.p.bitmap_failed.take() {
                    return Admit::Fail(ReplyError::Io(e));
                }
                self.p.want_bitmap = true;
                return Admit::Wait;
            }
        }
        self.al_journal(evict, missing);
        Admit::Wait
    }

    /// This node's disk is detached (Failed): a local completion says
    /// nothing a reply may rest on, only the peer's confirmation does.
    /// (With the plant, it is trusted as before the fix.)
    fn detached_ack(&self) -> bool {
        self.disk == DiskState::Failed && self.cfg.plant != Plant::AckOnFailedDisk
    }

    /// This node's disk is detached (Failed): a write's reply need not
    /// wait for that disk's completion, which may never come (a disk that
    /// hangs after an error). (With the plant, it waits as before the fix.)
    pub(crate) fn answers_alone(&self) -> bool {
        self.detached_ack() && self.cfg.plant != Plant::WaitOnFailedDisk
    }

    /// With this node's disk detached, the peer alone keeps what an OK
    /// reply to `p` promises: it confirmed `p` holding a complete copy
    /// (UpToDate: not a resync target, whose copy lacks the blocks still
    /// to come, found by the simulator's seed 105355), and
    /// - a FUA write in protocol B was not only received (received is
    ///   not durable);
    /// - a FLUSH leaves nothing the peer lacks (blocks written apart, or
    ///   the failed write's, were only on the detached disk).
    fn peer_keeps_promise(&self, p: &Pending) -> bool {
        p.peer == PeerPart::Confirmed
            && p.peer_whole
            && !(p.fua && self.cfg.protocol == Protocol::B)
            && !(p.range.is_none() && self.dirty.bytes() > 0)
    }

    /// A session is up and past its handshake.
    pub(crate) fn linked(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.phase == Phase::Running)
    }

    /// Our data is already a generation the peer may lack.
    pub(crate) fn apart(&self) -> bool {
        self.gen.bitmap != 0
    }

    /// Our data starts to differ from the peer's: a new current
    /// generation (once per separation), saved before it is relied on.
    pub(crate) fn diverge(&mut self, why: &str) {
        // Once per separation, as this process saw it: after a restart the
        // saved record may predate the peer adopting our generation (a
        // crash between its SyncDone and our record's update), so the
        // first write without the peer starts a new one anyway (the
        // bitmap's base generation stays: the peer is still recognised).
        if self.apart() && self.separated {
            return;
        }
        self.separated = true;
        let id = self.random_id();
        self.gen.new_current(id);
        self.unacked_current = Some(id);
        tracing::info!(current = format!("{:016x}", self.gen.current), why, "new data generation");
    }

    fn issue_app(&mut self, req: ReqId, op: Op) {
        let range = op.range();
        let extents = self.extents(range);
        self.al.touch(&extents);
        self.al.hold(&extents); // the local part
        let now = self.now;
        let mut peer = PeerPart::Free;
        let protocol = self.cfg.protocol;
        let plant = self.cfg.plant;
        // Only a Primary replicates: a Secondary's FLUSH is its own.
        let replicate = self.role == Role::Primary;
        let ahead = self.ahead();
        if ahead {
            // Adaptive mode, Ahead: the bitmap carries it to the peer
            // later (the catch-up resync); the reply does not wait.
            if let Some((off, len)) = range.filter(|_| plant != Plant::AheadWithoutMark) {
                self.mark(off, len);
            }
        } else if let Some(s) =
            self.session.as_mut().filter(|s| replicate && s.phase == Phase::Running)
        {
            let mut need = match (protocol, &op) {
                // (A flush answered alone leaves the peer lacking nothing
                // more: only writes wait, `session::PeerBehind`.)
                (Protocol::A, Op::Flush) => Need::Queued,
                (Protocol::A, _) if s.peer_behind == PeerBehind::Saved => Need::Queued,
                (Protocol::A, _) => Need::Done,
                (Protocol::B, Op::Flush) => Need::Done,
                (Protocol::B, _) => Need::Received,
                (Protocol::C | Protocol::Adaptive, _) => Need::Done,
            };
            if plant == Plant::EarlyAckC && protocol == Protocol::C {
                need = Need::Queued;
            }
            if plant == Plant::EarlyAckB && protocol == Protocol::B && range.is_some() {
                need = Need::Queued;
            }
            if plant == Plant::FlushWithoutPeer && range.is_none() && protocol != Protocol::A {
                need = Need::Queued;
            }
            let bytes = op.wire_bytes();
            let seq = s.submit(OutKind::App(req), need, range, bytes, now);
            s.app_busy = true;
            self.counters.replicated_bytes += bytes;
            if need != Need::Queued {
                peer = PeerPart::Waiting(seq);
            }
            self.al.hold(&extents); // the peer's part, until it applied it
            let sid = s.id;
            self.actions.push_back(super::Action::Send {
                session: sid,
                msg: Message::Data { seq, op: op.clone() },
            });
        } else if let Some((off, len)) =
            range.filter(|_| !(plant == Plant::UnlinkedWithoutMark && replicate))
        {
            self.mark(off, len);
        }
        // Application operations are writes, trims, zeroes and flushes.
        let store_op = StoreOp::of(op);
        let fua = store_op.fua();
        let is_flush = matches!(store_op, StoreOp::Flush);
        let epoch = self.write_epoch;
        self.store(IoFor::App(req), store_op);
        if is_flush {
            self.flush_epochs.insert(req, epoch);
        } else {
            self.al.wrote(&extents, self.write_epoch);
        }
        if let Some((_, len)) = range {
            self.counters.written_bytes += len;
        }
        self.pending.insert(
            req,
            Pending { local: None, local_at: None, peer, extents, range, fua, peer_whole: false },
        );
    }

    pub(crate) fn app_local_done(&mut self, req: ReqId, result: Result<(), IoError>) {
        let epoch = self.flush_epochs.remove(&req);
        let Some(p) = self.pending.get_mut(&req) else { return };
        p.local = Some(result);
        p.local_at = Some(self.now);
        let extents = p.extents.clone();
        let range = p.range;
        self.al.release(&extents);
        match result {
            Ok(()) => {
                if let Some(e) = epoch {
                    self.flushed_epoch = self.flushed_epoch.max(e);
                }
            }
            Err(e) => {
                // The peer may have it and we do not.
                if let Some((off, len)) = range {
                    self.mark(off, len);
                }
                self.disk_failed(e, "application write");
            }
        }
        self.try_reply(req);
    }

    pub(crate) fn try_reply(&mut self, req: ReqId) {
        let detached = self.detached_ack();
        let Some(p) = self.pending.get(&req) else { return };
        if p.decided(self.answers_alone()) {
            // (No local answer: the disk is detached and the peer decides.)
            let mut result = p.local.unwrap_or(Ok(())).map_err(ReplyError::Io);
            if result.is_ok() && detached && !self.peer_keeps_promise(p) {
                // Only a detached disk holds it (a full sync from the peer
                // will replace that disk), if that: the write did not happen.
                result = Err(ReplyError::Io(IoError::EIO));
            }
            if result.is_ok() && detached && self.cfg.plant != Plant::AckBeforeFailedRecord {
                // The peer's copy alone keeps it: only once this node's
                // record says its disk is detached (see `failed_record`).
                match self.failed_record() {
                    FailedRecord::Saved => {}
                    FailedRecord::Saving => return,
                    FailedRecord::Lost => result = Err(ReplyError::Io(IoError::EIO)),
                }
            }
            if result.is_ok() {
                match self.reply_gate(false, p.range.is_some()) {
                    None => {}
                    Some(Ok(())) => {
                        // Held until quorum returns (`release_held`).
                        if self.cfg.plant != Plant::HeldHint {
                            self.maybe_held = true;
                        }
                        return;
                    }
                    Some(Err(e)) => result = Err(e),
                }
            }
            // A FLUSH answered apart counts too: it promised what this
            // node alone made durable (review: a node deposed after a
            // FLUSH alone was given up in full). Only in a separation of
            // this session's: a SyncSource is apart until its resync
            // ends, and what it answers meanwhile reaches the peer
            // (review: a reply during the resync kept a later deposed
            // node's unacknowledged changes, the pair StandAlone).
            if result.is_ok() && self.apart() && self.separated {
                self.acked_apart = true;
            }
            if let Some(p) = self.pending.remove(&req) {
                if p.local.is_none() {
                    // Answered without its local part (detached): the
                    // activity log no longer waits for it.
                    self.al.release(&p.extents);
                    self.flush_epochs.remove(&req);
                }
            }
            self.reply(req, result);
        }
    }

    /// Replies that wait for this detached disk's record are tried again
    /// (its save ended, or timed out).
    pub(crate) fn retry_replies_on_failed_disk(&mut self) {
        if !self.detached_ack() || self.pending.is_empty() {
            return;
        }
        let reqs: Vec<ReqId> = self.pending.keys().copied().collect();
        for req in reqs {
            self.try_reply(req);
        }
    }

    fn peer_confirmed(&mut self, req: ReqId) {
        let whole = self.session.as_ref().is_some_and(|s| s.peer.disk == DiskState::UpToDate);
        if let Some(p) = self.pending.get_mut(&req) {
            if matches!(p.peer, PeerPart::Waiting(_)) {
                p.peer = PeerPart::Confirmed;
                p.peer_whole = whole;
            }
        }
        self.try_reply(req);
    }

    /// The peer part of `req` is lost if it is in a state `from` accepts:
    /// the one place that marks it so, and raises the hint `release_lost`
    /// looks at.
    pub(super) fn lose_peer_part(&mut self, req: ReqId, from: fn(PeerPart) -> bool) {
        let Some(p) = self.pending.get_mut(&req) else { return };
        if from(p.peer) {
            p.peer = PeerPart::Lost;
            if self.cfg.plant != Plant::LostHint {
                self.maybe_lost = true;
            }
        }
    }

    /// Replies whose peer part was lost go out once the new generation and
    /// the bits that record the loss are durable.
    pub(crate) fn release_lost(&mut self) {
        if !self.maybe_lost {
            return;
        }
        let detached = self.detached_ack();
        let alone = self.answers_alone();
        let mut any = false;
        let mut lost: Vec<ReqId> = Vec::new();
        for (req, p) in &self.pending {
            if p.peer == PeerPart::Lost {
                any = true;
                if p.local.is_some() || alone {
                    lost.push(*req);
                }
            }
        }
        self.maybe_lost = any;
        if lost.is_empty() {
            return;
        }
        if detached {
            // The peer may lack them and only a detached disk holds them,
            // if it ever completes them: nothing to record, `try_reply`
            // fails them.
            for req in lost {
                if let Some(p) = self.pending.get_mut(&req) {
                    p.peer = PeerPart::Released;
                }
                self.try_reply(req);
            }
            return;
        }
        // Unless the peer has caught up since (a resync brought it
        // everything this node holds, these writes included): a new
        // generation then would make an UpToDate peer Outdated with
        // nothing out of sync to bring it back (it stayed Behind for
        // ever after an adaptive catch-up, simulator seed 20306), and
        // the witness need not hear that it is behind.
        let peer_has_them = self.peer_current();
        // Nor while this node's disk is fresh (never written since it was
        // created: no write was acknowledged, only FLUSHes and the like,
        // which changed no block): the peer lacks nothing. Before, a
        // FLUSH whose peer part a lost link took, released while the next
        // session's handshake ran (a fresh peer's hello resets the
        // once-per-separation), started a generation after our hello had
        // named the last one: the peer adopted that one, took the
        // Primary's next State for a Primary gone Ahead, and stayed a
        // SyncTarget no resync would end (simulator seed 34702616).
        if self.role == Role::Primary && !peer_has_them && !self.fresh {
            self.diverge("the peer may lack acknowledged writes");
        }
        let failed = self.p.meta_failed.take().or_else(|| self.p.bitmap_failed.take());
        if let Some(e) = failed {
            for req in lost {
                self.pending.remove(&req);
                self.reply(req, Err(ReplyError::Io(e)));
            }
            return;
        }
        if !self.bitmap_clean() {
            self.p.want_bitmap = true;
        }
        if self.role == Role::Primary && self.ahead_unfenced() {
            // Released by going Ahead: answered once the peer's record
            // says it is Outdated (`adaptive::PeerRecord`), also after the
            // Ahead run ended (a demoted node fails them below).
            return;
        }
        if self.meta_durable() && self.bitmap_clean() {
            // The peer may lack them: the witness must know it is behind.
            match self.reply_gate(!peer_has_them, true) {
                None => {}
                Some(Ok(())) => return,
                Some(Err(e)) => {
                    for req in lost {
                        self.pending.remove(&req);
                        self.reply(req, Err(e));
                    }
                    return;
                }
            }
            // A node demoted since it sent them (`secondary` with writes
            // in flight) no longer moves its data on without the peer: it
            // keeps its generation, and a peer promoted apart that meets it
            // on that generation takes the union of the bits from the
            // Primary. An OK from the local disk alone would then be a
            // promise the resync breaks (simulator seed 1202562): such a
            // write or flush fails (EIO; the bits make the two disks agree
            // at the next connect, on one copy or the other).
            let demoted = self.role != Role::Primary;
            for req in lost {
                if demoted && self.pending.get(&req).is_some_and(|p| p.local.is_some()) {
                    self.pending.remove(&req);
                    self.reply(req, Err(ReplyError::Io(IoError::EIO)));
                    continue;
                }
                if let Some(p) = self.pending.get_mut(&req) {
                    p.peer = PeerPart::Released;
                }
                self.try_reply(req);
            }
        }
    }

    // ----- the peer's answers -----

    /// A cumulative acknowledgement: every operation up to `received` has
    /// arrived, every one up to `done` is applied.
    pub(crate) fn on_ack(&mut self, received: u64, done: u64) -> Result<(), String> {
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        let last = s.next_seq - 1;
        if done > received || received > last || received < s.acked_received || done < s.acked_done
        {
            return Err(format!(
                "bad acknowledgement (received {received}, done {done}; sent up to {last})"
            ));
        }
        let mut confirmed = Vec::new();
        if received > s.acked_received {
            for (_, o) in s.out.range(s.acked_received + 1..=received) {
                if let (OutKind::App(req) | OutKind::Bench(req), Need::Received) = (&o.kind, o.need)
                {
                    confirmed.push(*req);
                }
            }
        }
        s.acked_received = received;
        if done > s.acked_done {
            s.progress_at = self.now;
        }
        let rest = s.out.split_off(&(done + 1));
        let retired = std::mem::replace(&mut s.out, rest);
        s.acked_done = done;
        for o in retired.values() {
            s.landed(o);
        }
        for req in confirmed {
            self.peer_confirmed(req);
        }
        for (seq, o) in retired {
            if let (OutKind::App(_), Need::Done, Protocol::A) = (&o.kind, o.need, self.cfg.protocol)
            {
                // (Only a Primary sends writes; a write of this reign the
                // peer applied after its record said it may be behind:
                // `session::PeerBehind`.)
                if let Some(s) = self.session.as_mut() {
                    if matches!(s.peer_behind, PeerBehind::Unknown { from } if seq >= from) {
                        s.peer_behind = PeerBehind::Saved;
                    }
                }
            }
            if let OutKind::App(req) = o.kind {
                if !o.behind_probes {
                    self.adaptive_acked(req, o.sent);
                }
            }
            self.retire(o.kind, o.range);
        }
        Ok(())
    }

    /// An operation the peer applied.
    fn retire(&mut self, kind: OutKind, range: Option<(u64, u64)>) {
        match kind {
            OutKind::App(req) => {
                let extents = self.extents(range);
                self.al.release(&extents);
                self.peer_confirmed(req);
            }
            OutKind::Bench(req) => self.peer_confirmed(req),
            other => self.source_retired(other, range),
        }
    }

    /// The peer could not apply `seq`: the range is out of sync there, and
    /// its reply waits until that is durable here.
    pub(crate) fn on_failed(&mut self, seq: u64, errno: i32) -> Result<(), String> {
        let Some(s) = self.session.as_mut() else { return Ok(()) };
        let Some(o) = s.out.remove(&seq) else {
            return Err(format!("the peer failed operation {seq}, which is not in flight"));
        };
        s.progress_at = self.now;
        s.landed(&o);
        if matches!(o.kind, OutKind::Bench(_)) {
            // A probe of `twinblock bench` into the scratch area: the
            // device's data is not involved, nothing is marked.
            if let Some(failed) = self.peer_scratch_failed.due(self.now) {
                tracing::warn!(
                    seq,
                    errno,
                    failed,
                    "the peer failed bench probes (its scratch area)"
                );
            }
        } else {
            tracing::warn!(seq, errno, "the peer failed to apply an operation: marked out of sync");
        }
        match o.kind {
            OutKind::App(req) => {
                if let Some((off, len)) = o.range {
                    self.mark(off, len);
                }
                let extents = self.extents(o.range);
                self.al.release(&extents);
                // Also a protocol B write confirmed on receipt: the peer
                // does not hold it after all (its reply, if still to come,
                // waits for the mark and then rests on the local disk).
                self.lose_peer_part(req, |p| {
                    matches!(p, PeerPart::Waiting(_) | PeerPart::Free | PeerPart::Confirmed)
                });
                self.p.want_bitmap = true;
            }
            OutKind::Bench(req) => self.bench_lost(req, IoError(errno)),
            OutKind::Verify { offset, sums } => {
                self.mark(offset, sums.len() as u64 * self.cfg.block);
                self.p.want_bitmap = true;
                if let Some(Activity::Verify(v)) = self.session.as_mut().map(|s| &mut s.activity) {
                    v.chunks = v.chunks.saturating_sub(1);
                }
            }
            OutKind::Probe { offset, len } => {
                // The target could not read its side: send the run as it is
                // (the window slot moves to the read).
                if let Some(Activity::Source(src)) = self.session.as_mut().map(|s| &mut s.activity)
                {
                    src.chunks = src.chunks.saturating_sub(1);
                    src.probed.push_back((offset, len, Vec::new()));
                }
            }
            OutKind::Resync => {
                // Its bits stay set: sent again by a later pass.
                if let Some(Activity::Source(src)) = self.session.as_mut().map(|s| &mut s.activity)
                {
                    src.chunks = src.chunks.saturating_sub(1);
                    if let Some((off, len)) = o.range {
                        src.claimed.clear_range(off, len);
                    }
                }
            }
            OutKind::ResyncFlush(ranges) => {
                if let Some(Activity::Source(src)) = self.session.as_mut().map(|s| &mut s.activity)
                {
                    for (off, len) in ranges {
                        src.claimed.clear_range(off, len);
                    }
                }
            }
        }
        Ok(())
    }

    /// The session ends: everything the peer did not confirm is marked out
    /// of sync; the replies that waited for it go out once that is durable.
    pub(crate) fn lose_session(&mut self, why: String) {
        let Some(s) = self.session.take() else { return };
        // (Judged as the session ends; nothing below moves a Secondary's
        // role or disk.)
        let behind = self.behind_async_primary_in(&s);
        self.last_lost = Some(s.id);
        self.promotion_session_ended(s.asked);
        if matches!(&s.activity, super::session::Activity::Source(src) if src.done_sent) {
            // The peer may have taken this generation as its own (a
            // catch-up's SyncDone went out): what goes on without it is a
            // new one, which the witness must hear of first.
            self.separated = false;
        }
        if let super::session::Activity::Ahead(run) = &s.activity {
            // Out of Ahead by the link's loss (a switch too: with the next
            // session the marked blocks resync and the Primary is in C).
            // Left as by the catch-up: Ahead again soon doubles the hold
            // (found by review: a link lost again and again shrank it).
            self.counters.mode_switches += 1;
            self.backoff.left = Some((self.now, 1));
            tracing::warn!(
                ahead_ms = self.now.saturating_sub(run.since).as_millis() as u64,
                out_of_sync = self.dirty.bytes(),
                switches = self.counters.mode_switches,
                "adaptive: the link was lost while Ahead (the marked blocks resync when \
                 it is back, then C)"
            );
        }
        let mut lost_app = false;
        for (_, o) in s.out {
            if let OutKind::Bench(req) = o.kind {
                self.bench_lost(req, super::ENOTCONN);
            }
            if let OutKind::App(req) = o.kind {
                if let Some((off, len)) = o.range {
                    self.mark(off, len);
                }
                let extents = self.extents(o.range);
                self.al.release(&extents);
                self.lose_peer_part(req, |p| matches!(p, PeerPart::Waiting(_)));
                lost_app = true;
            }
        }
        if lost_app {
            self.p.want_bitmap = true;
            // Only a Primary's data moves on without the peer.
            if self.role == Role::Primary {
                self.diverge("the peer lost");
            }
        }
        if behind {
            // Protocol A may have left us behind: freshness unknown. (A
            // peer that said it is Secondary, and was granted no promotion
            // in this session, sent every write it answered before it said
            // so, in order: a Primary's `down` demotes first, and its
            // writes reach us before the link closes.)
            self.disk = DiskState::Consistent;
        }
        // The same failure again before any session ran (a peer that
        // refuses each link while its disk hangs, or while it waits for
        // its next rebuild: the countdown aside) is not news.
        if s.phase == super::session::Phase::Handshake
            && self
                .last_error
                .as_deref()
                .is_some_and(|l| super::rebuild_backoff::same_refusal(l, &why))
        {
            tracing::debug!(%why, "link lost again during the handshake");
        } else {
            tracing::warn!(%why, out_of_sync = self.dirty.bytes(), "peer lost");
        }
        self.last_error = Some(why);
    }

    /// The peer's reason for session `sid`, which ended here when its
    /// stream did (the reason comes with the peer's close, after): it
    /// replaces [`PEER_FINISHED`](super::PEER_FINISHED) in `last_error`,
    /// unless a new session is up, a newer one was lost since, or
    /// something else happened since.
    pub fn handle_peer_reason(&mut self, sid: super::SessionId, why: String) {
        if self.session.is_none()
            && self.last_lost == Some(sid)
            && self.last_error.as_deref() == Some(super::PEER_FINISHED)
        {
            tracing::warn!("{why}");
            self.last_error = Some(why);
        }
    }

    /// Closes session `sid` (a protocol fault, a timeout, the operator).
    pub(crate) fn close_session(&mut self, sid: super::SessionId, why: String) {
        if self.session_id() != Some(sid) {
            return;
        }
        self.actions.push_back(super::Action::Close { session: sid, reason: why.clone() });
        self.lose_session(why);
    }

    /// The shell could not decode what the peer sent on `sid` (a frame no
    /// node sends): this node ends the session, as for a frame it refuses
    /// (`apply`), with `why` as its reason for the peer. False if `sid`
    /// had ended already (for a reason of its own).
    pub fn handle_link_fault(&mut self, now: Time, sid: super::SessionId, why: String) -> bool {
        self.now = self.now.max(now);
        let ours = self.session_id() == Some(sid);
        self.close_session(sid, why);
        self.pump();
        ours
    }

    /// The shell's link for `sid` is gone.
    pub fn handle_link_down(&mut self, now: Time, sid: super::SessionId, why: &str) {
        self.now = self.now.max(now);
        if self.session_id() == Some(sid) {
            self.lose_session(why.to_owned());
        }
        self.pump();
    }
}
