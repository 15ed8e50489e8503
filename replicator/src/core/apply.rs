//! The receiving side: frames from the peer are checked (CRC, sequence,
//! bounds), and data operations are applied strictly in sequence order —
//! everything received is applied, also after the session that brought it
//! has ended, so the store never skips a write it holds a later one of.

use bytes::Bytes;

use crate::protocol::wire::{self, DiskState, Message, Op, Role};

use super::session::{Activity, Phase};
use super::types::{IoError, Plant, Progress, ReplyError, SessionId, StoreOp, Time};
use super::write::Admit;
use super::{Core, IoFor};

/// What a peer operation applied here is.
#[derive(Debug, Clone)]
pub(crate) struct ApplyIo {
    pub sid: SessionId,
    pub seq: u64,
    pub extents: Vec<u64>,
    pub verify: bool,
    pub flush_epoch: Option<u64>,
    pub bytes: u64,
    /// A checksum request of the peer's: its length (`Session::verify_asked`).
    pub asked: u64,
    /// A bench probe (scratch area): its failure is the probe's alone.
    pub scratch: bool,
    /// One of the peer's writes (a write, trim or zero; not a resync
    /// chunk, a flush, a verify read or a probe): counted in
    /// `Core::unwritten_peer_writes` until it completes.
    pub write: bool,
    /// A resync chunk: counted in `resync_bytes` (the target's, as the
    /// source's), not `replicated_bytes`.
    pub resync: bool,
}

/// A write of the peer's (application data, not a resync chunk, a flush,
/// a verify read or a bench probe).
fn peer_write(op: &Op) -> bool {
    matches!(op, Op::Write { .. } | Op::Trim { .. } | Op::Zero { .. })
}

/// The checksum online verify and checksum resync compare, of each
/// `block` bytes of `data`: the first 64 bits of its SHA-256. (CRC32, as
/// before, let one differing block in 2^32 pass as equal: a checksum
/// resync of a disk with a billion blocks to compare would likely have
/// skipped one, and a block can be made to match any CRC on purpose.)
pub fn block_sums(data: &[u8], block: u64) -> Vec<u64> {
    data.chunks(block as usize)
        .map(|b| {
            let d = ring::digest::digest(&ring::digest::SHA256, b);
            let mut first = [0u8; 8];
            first.copy_from_slice(&d.as_ref()[..8]);
            u64::from_be_bytes(first)
        })
        .collect()
}

impl Core {
    /// A frame from the peer on session `sid`.
    pub fn handle_frame(&mut self, now: Time, sid: SessionId, msg: Message) {
        self.now = self.now.max(now);
        if self.session_id() != Some(sid) {
            return; // a session that ended: nothing of it counts
        }
        if let Some(s) = self.session.as_mut() {
            s.last_heard = s.last_heard.max(now);
        }
        self.ctl_heard();
        if matches!(&msg, Message::State { role: Role::Primary, .. })
            || matches!(&msg, Message::Hello(h) if h.role == Role::Primary)
        {
            self.ctl_peer_primary();
            self.ctl_met_primary();
        } else if matches!(&msg, Message::State { role: Role::Secondary, .. })
            || matches!(&msg, Message::Hello(h) if h.role == Role::Secondary)
        {
            self.ctl_peer_secondary();
        }
        // (A hello refused says so: most of those are the two nodes'
        // data or configurations disagreeing, no fault of the link. So
        // is a refusal at the handshake's decision, after the bitmaps:
        // it read "link fault" before.)
        let handshaking = self.session.as_ref().is_some_and(|s| s.phase == Phase::Handshake);
        let what = if matches!(msg, Message::Hello(_)) || handshaking {
            "handshake"
        } else {
            "link fault"
        };
        if let Err(why) = self.frame(sid, msg) {
            self.close_session(sid, format!("{what}: {why}"));
        }
        self.pump();
    }

    fn frame(&mut self, sid: SessionId, msg: Message) -> Result<(), String> {
        let phase = self.session.as_ref().map(|s| s.phase).ok_or("no session")?;
        match msg {
            Message::Hello(h) => self.on_hello(sid, h)?,
            Message::Bits { runs, last } => self.on_bits(sid, runs, last)?,
            Message::BitWords { first, words, last } => {
                self.on_bit_words(sid, first, words, last)?
            }
            _ if phase == Phase::Handshake => {
                return Err("a frame before the handshake finished".into())
            }
            Message::Data { seq, op } => self.on_data(sid, seq, op)?,
            Message::Ack { received, done } => self.on_ack(received, done)?,
            Message::Failed { seq, errno } => self.on_failed(seq, errno)?,
            Message::Verified { seq, sums } => self.on_verified(seq, sums)?,
            Message::Ping { id } => {
                self.send(Message::Pong { id });
                self.ctl_answered();
            }
            Message::Pong { id } => {
                let now = self.now;
                let sample = self.session.as_mut().and_then(|s| s.pong(id, now));
                if let Some(rtt) = sample {
                    self.adaptive_sample(rtt);
                }
                self.ctl_pong(id);
            }
            Message::State { role, disk, peer_out_of_sync, current, promoted_at, .. } => {
                // The peer's State as Primary of a reign that began before
                // this node's own on this session is stale, and so is what
                // follows it (writes, an Ahead catch-up's chunks, a resync
                // of its own blocks): the session ends here (from review;
                // the write check below is the backstop).
                if role == Role::Primary
                    && self
                        .session
                        .as_ref()
                        .filter(|s| s.id == sid)
                        .and_then(|s| s.reigned)
                        .is_some_and(|mine| promoted_at <= mine)
                {
                    return Err(format!(
                        "{} says it is Primary for a reign (promoted at {promoted_at} ms) that \
                         began before this node's: its data is older",
                        self.cfg.peer
                    ));
                }
                // A promotion during the session: ours is numbered after it.
                self.peer_promoted_at = self.peer_promoted_at.max(promoted_at);
                if let Some(s) = self.session.as_mut().filter(|s| s.id == sid) {
                    s.peer.promoted_at = promoted_at;
                }
                self.on_peer_state(sid, role, disk, peer_out_of_sync, current)?
            }
            Message::SyncDone { current } => self.on_sync_done(current)?,
            Message::PromoteAsk { ask } => self.on_promote_ask(sid, ask),
            Message::PromoteAnswer { ask, granted, why } => {
                self.on_promote_answer(sid, ask, granted, why)?
            }
            Message::Outdate => {
                let from_primary = self
                    .session
                    .as_ref()
                    .filter(|s| s.id == sid)
                    .is_some_and(|s| s.peer.role == Role::Primary);
                let outdated = from_primary
                    && self.role == Role::Secondary
                    && self.outdate(
                        "the Primary goes on without this node (its operator's `disconnect`, or \
                         adaptive mode's Ahead)",
                    );
                // Outdated already (Behind in adaptive mode) but not yet in
                // the saved record: answered once it is, too (else a power
                // loss brought it back UpToDate: simulator seed 12235326).
                let saved = self.saved_record().map(|m| m.disk);
                let unsaved = self.role == Role::Secondary
                    && self.disk == DiskState::Outdated
                    && saved != Some(DiskState::Outdated);
                if (outdated || unsaved) && self.cfg.plant != Plant::OutdateDoneEarly {
                    // Answered once the record saying so is durable.
                    self.outdate_ack = Some(sid);
                } else {
                    self.send(Message::OutdateDone);
                }
            }
            Message::OutdateDone => {
                let outdating = self
                    .session
                    .as_ref()
                    .filter(|s| s.id == sid)
                    .is_some_and(|s| s.outdating.is_some());
                if outdating {
                    self.close_session(sid, "disconnected by the operator".into());
                } else if self.session_id() == Some(sid) {
                    self.ahead_peer_outdated();
                }
            }
            Message::VerifyRequest => {
                let repl = self.replication();
                if self.role == Role::Primary && repl == super::Replication::Established {
                    self.start_verify();
                } else {
                    tracing::warn!(
                        "the peer asked for an online verify: not started ({:?}, {repl})",
                        self.role
                    );
                }
            }
        }
        Ok(())
    }

    fn on_data(&mut self, sid: SessionId, seq: u64, op: Op) -> Result<(), String> {
        if self.role == Role::Primary {
            return Err("the peer sent data while this node is Primary".into());
        }
        let s = self.session.as_mut().ok_or("no session")?;
        if seq != s.received + 1 {
            return Err(format!("operation {seq} out of sequence (expected {})", s.received + 1));
        }
        let size = self.cfg.size;
        if let Some((off, len)) = op.range().or(match op {
            Op::Verify { offset, len, .. } => Some((offset, len as u64)),
            _ => None,
        }) {
            if off.checked_add(len).is_none_or(|end| end > size) {
                return Err(format!("operation {seq} at {off}+{len} is outside the device"));
            }
        }
        if let Op::ResyncZero { offset, len } = &op {
            // Whole blocks (the source's bitmap has no others), and some:
            // anything else is no chunk of a resync.
            let block = self.cfg.block;
            if *len == 0 || offset % block != 0 || u64::from(*len) % block != 0 {
                return Err(format!(
                    "resync zeroes (operation {seq}) at {offset}+{len} are not whole blocks \
                     of {block} bytes"
                ));
            }
        }
        if let Op::Bench { offset, data, .. } = &op {
            let len = data.len() as u64;
            if offset.checked_add(len).is_none_or(|end| end > wire::BENCH_AREA) {
                return Err(format!(
                    "bench probe {seq} at {offset}+{len} is outside the scratch area"
                ));
            }
        }
        match &op {
            Op::Write { offset, data, crc, .. }
            | Op::Resync { offset, data, crc }
            | Op::Bench { offset, data, crc, .. }
                if crc32fast::hash(data) != *crc =>
            {
                return Err(format!(
                    "CRC mismatch on operation {seq} at offset {offset} ({} bytes)",
                    data.len()
                ));
            }
            Op::Verify { len, .. } if *len > wire::MAX_VERIFY => {
                return Err(format!("verify of {len} bytes is larger than allowed"));
            }
            Op::Verify { len, .. } if s.verify_asked + u64::from(*len) > wire::VERIFY_IN_FLIGHT => {
                return Err(format!(
                    "verify of {len} bytes (operation {seq}) past the {} MiB of checksum \
                     requests allowed in flight ({} MiB not answered yet)",
                    wire::VERIFY_IN_FLIGHT >> 20,
                    s.verify_asked >> 20
                ));
            }
            Op::Verify { len, .. } => s.verify_asked += u64::from(*len),
            _ => {}
        }
        // Who may send data: application writes come only from a Primary,
        // resync chunks from a Primary or this node's sync source. A peer
        // that sends them otherwise (buggy, or lying with a valid
        // certificate) would overwrite this node's data, even a source's
        // newer copy (found by a lying-peer test).
        let peer_primary = s.peer.role == Role::Primary;
        let target = matches!(s.activity, Activity::Target { .. } | Activity::Behind);
        match &op {
            Op::Write { .. } | Op::Trim { .. } | Op::Zero { .. } if !peer_primary => {
                return Err(format!("operation {seq} writes, and the peer is not Primary"));
            }
            // A write of a reign that began before this node's own during
            // this session: the peer sent it before it heard of this node's
            // promotion (a link that stalled and came back), and this node's
            // data moved on since. Applied, it would overwrite newer blocks
            // while the resync of this node's reign sent the older ones
            // (simulator seed 9102746: the disks differed, both connected
            // and in sync). Ending the session leaves it to the handshake:
            // the peer marks what it had not seen confirmed out of sync.
            Op::Write { .. } | Op::Trim { .. } | Op::Zero { .. }
                if s.reigned.is_some_and(|mine| s.peer.promoted_at <= mine) =>
            {
                return Err(format!(
                    "operation {seq} writes for {}'s reign (promoted at {} ms), which began \
                     before this node's (promoted at {} ms): this node's data moved on since",
                    self.cfg.peer,
                    s.peer.promoted_at,
                    s.reigned.unwrap_or_default()
                ));
            }
            Op::Resync { .. } | Op::ResyncZero { .. } if !peer_primary && !target => {
                return Err(format!(
                    "resync data (operation {seq}) from a peer that is neither Primary nor this \
                     node's sync source"
                ));
            }
            Op::Resync { .. } | Op::ResyncZero { .. } => {
                (s.last_resync, s.flush_after_resync) = (seq, 0)
            }
            Op::Flush if s.flush_after_resync == 0 => s.flush_after_resync = seq,
            _ => {}
        }
        if let Activity::Target { progress, .. } = &mut s.activity {
            let took = match &op {
                Op::Resync { data, .. } if !self.cfg.resync_checksum => data.len() as u64,
                Op::ResyncZero { len, .. } if !self.cfg.resync_checksum => u64::from(*len),
                Op::Verify { len, .. } if self.cfg.resync_checksum => u64::from(*len),
                _ => 0,
            };
            progress.done += took;
            progress.total = progress.total.max(progress.done);
        }
        if let (Op::Verify { offset, len, online: true }, Activity::Idle) = (&op, &s.activity) {
            // The peer's online verify (a checksum resync's probes say
            // they are not: one started mid-session, after a verify found
            // differences, comes while this node is Idle; found by review:
            // they left it shown VerifyTarget for the rest of the session).
            let end = offset.saturating_add(u64::from(*len)).min(size);
            if s.verify_target.is_none() {
                tracing::info!(bytes = size, "online verify by the peer started (VerifyTarget)");
            }
            let now = self.now;
            let p = s.verify_target.get_or_insert(Progress { total: size, done: 0, started: now });
            p.done = p.done.max(end);
            if end >= size {
                s.verify_target = None;
                tracing::info!("online verify by the peer: the last range checked");
            }
        }
        s.received = seq;
        if !matches!(op, Op::Bench { .. }) {
            // (A bench probe is no catch-up: a Primary that is Ahead sends
            // none, and one from a peer that lies must not make this disk
            // Inconsistent.)
            self.adaptive_data();
        }
        if peer_write(&op) {
            self.unwritten_peer_writes += 1;
        }
        self.incoming.push_back((sid, seq, op));
        Ok(())
    }

    /// Issues what has arrived, in order, once its extents are in the
    /// activity log (and, on a SyncTarget, once Inconsistent is on disk).
    pub(crate) fn apply_pump(&mut self) {
        while let Some((sid, seq, op)) = self.incoming.front().cloned() {
            if !self.disk_usable() {
                self.incoming.pop_front();
                if peer_write(&op) {
                    self.peer_write_done();
                }
                self.verify_answered(sid, verify_len(&op));
                self.admitted(sid, seq);
                if self.session_id() == Some(sid) {
                    self.send(Message::Failed { seq, errno: IoError::EIO.0 });
                }
                continue;
            }
            let range = op.range();
            // A resync chunk needs no extent here: the source's bitmap covers
            // it until a flush numbered after it has completed.
            let extents = if op.is_resync() { Vec::new() } else { self.extents(range) };
            if range.is_some() {
                self.fresh = false;
                if peer_write(&op) {
                    // Saved before its receipt is acknowledged (below): a
                    // crash from now on may lose a received write.
                    self.received = true;
                }
                if !self.meta_durable() {
                    if let Some(e) = self.p.meta_failed.take() {
                        let meta = self.cfg.files.meta_with("");
                        self.disk_failed_on(e, "metadata", &meta);
                        continue;
                    }
                    break;
                }
                match self.al_admit(&extents) {
                    Admit::Go => {}
                    Admit::Wait => break,
                    Admit::Fail(e) => {
                        let e = match e {
                            ReplyError::Io(e) => e,
                            _ => IoError::EIO,
                        };
                        let al = self.cfg.files.meta_with(".al");
                        self.disk_failed_on(e, "activity log", &al);
                        continue;
                    }
                }
            }
            self.incoming.pop_front();
            self.admitted(sid, seq);
            self.al.hold(&extents);
            let scratch = matches!(op, Op::Bench { .. });
            let mut a = ApplyIo {
                sid,
                seq,
                extents: extents.clone(),
                verify: false,
                flush_epoch: None,
                // (Resync zeroes count as the blocks they make in sync, as
                // the source counts them.)
                bytes: match &op {
                    _ if scratch => 0,
                    Op::ResyncZero { len, .. } => u64::from(*len),
                    _ => op.wire_bytes(),
                },
                asked: verify_len(&op),
                scratch,
                write: peer_write(&op),
                resync: op.is_resync(),
            };
            // The planted mistake: resync zeroes (a hole of the source's,
            // or a chunk of zeroes) are taken as done unwritten, as if this
            // node's blocks were holes already (a new disk's are).
            let skipped =
                self.cfg.plant == Plant::SkipResyncZero && matches!(op, Op::ResyncZero { .. });
            if matches!(op, Op::Bench { store: false, .. }) || skipped {
                // Crosses the link only: done as it arrives.
                self.applied(sid, seq);
                continue;
            }
            let store_op = StoreOp::of(op);
            match store_op {
                StoreOp::Flush => a.flush_epoch = Some(self.write_epoch),
                StoreOp::Read { .. } => a.verify = true,
                _ => {}
            }
            self.applying += 1;
            self.store(IoFor::Apply(a), store_op);
            if range.is_some() {
                self.al.wrote(&extents, self.write_epoch);
            }
        }
    }

    pub(crate) fn apply_done(&mut self, a: ApplyIo, result: Result<Option<Bytes>, IoError>) {
        self.applying -= 1;
        self.verify_answered(a.sid, a.asked);
        if a.write {
            self.peer_write_done();
        }
        self.al.release(&a.extents);
        let current = self.session_id() == Some(a.sid);
        match result {
            Ok(data) => {
                if let Some(e) = a.flush_epoch {
                    self.flushed_epoch = self.flushed_epoch.max(e);
                }
                if a.resync {
                    self.counters.resync_bytes += a.bytes;
                } else {
                    self.counters.replicated_bytes += a.bytes;
                }
                if a.verify && current {
                    let sums = block_sums(data.as_deref().unwrap_or(&[]), self.cfg.block);
                    self.send(Message::Verified { seq: a.seq, sums });
                }
            }
            Err(e) if a.scratch => {
                // The bench scratch area failed: the probe fails, the disk
                // and the link do not (the sequence moves on past it).
                if let Some(failed) = self.scratch_failed.due(self.now) {
                    tracing::warn!(errno = e.0, failed, "bench scratch writes failed");
                }
                if current {
                    self.send(Message::Failed { seq: a.seq, errno: e.0 });
                }
            }
            Err(e) => {
                // The Primary learns which operation failed, then the
                // link closes (a Failed disk is detached).
                if current {
                    self.send(Message::Failed { seq: a.seq, errno: e.0 });
                }
                let what = if a.verify {
                    "verify read for the peer"
                } else if a.flush_epoch.is_some() {
                    "replicated flush"
                } else {
                    "replicated write"
                };
                self.disk_failed(e, what);
                if current {
                    self.close_session(a.sid, "the local disk failed: detached".into());
                }
                return;
            }
        }
        self.applied(a.sid, a.seq);
    }

    /// `len` bytes of session `sid`'s checksum requests are answered, or
    /// will never be.
    fn verify_answered(&mut self, sid: SessionId, len: u64) {
        if let Some(s) = self.session.as_mut().filter(|s| s.id == sid) {
            s.verify_asked = s.verify_asked.saturating_sub(len);
        }
    }

    /// A write of the peer's is written here (or failed, or dropped on a
    /// detached disk): one fewer to write.
    fn peer_write_done(&mut self) {
        debug_assert!(self.unwritten_peer_writes > 0, "a peer write counted twice");
        self.unwritten_peer_writes = self.unwritten_peer_writes.saturating_sub(1);
    }

    /// Operation `seq` of session `sid` is done here (in any order; the
    /// cumulative `done` moves over every gap-free prefix).
    fn applied(&mut self, sid: SessionId, seq: u64) {
        if let Some(s) = self.session.as_mut().filter(|s| s.id == sid) {
            s.completed.insert(seq);
            while s.completed.remove(&(s.done + 1)) {
                s.done += 1;
            }
        }
    }

    /// Operation `seq` of session `sid` left the receive queue (in order):
    /// its extents are in the activity log, so a crash from now on knows
    /// it may have been lost.
    fn admitted(&mut self, sid: SessionId, seq: u64) {
        if let Some(s) = self.session.as_mut().filter(|s| s.id == sid) {
            s.admitted = s.admitted.max(seq);
        }
    }

    /// A cumulative acknowledgement, when something changed. Its
    /// `received` is what was admitted ([`Session::admitted`]), not what
    /// arrived: protocol B acknowledges a write on it.
    pub(crate) fn send_ack(&mut self) {
        let Some(s) = self.session.as_mut() else { return };
        if s.phase != Phase::Running || (s.admitted, s.done) == s.acked {
            return;
        }
        s.acked = (s.admitted, s.done);
        let (received, done, sid) = (s.admitted, s.done, s.id);
        self.actions
            .push_back(super::Action::Send { session: sid, msg: Message::Ack { received, done } });
    }

    fn on_peer_state(
        &mut self,
        sid: SessionId,
        role: Role,
        disk: DiskState,
        out_of_sync: u64,
        current: u64,
    ) -> Result<(), String> {
        if role == Role::Primary && self.role == Role::Primary {
            return Err(format!("both {} and {} are Primary", self.cfg.me, self.cfg.peer));
        }
        let my_current = self.gen.current;
        let Some(s) = self.session.as_mut().filter(|s| s.id == sid) else { return Ok(()) };
        // (A promotion it was granted is decided once it says its role.)
        s.peer_promoting = false;
        if role == Role::Primary {
            // The promotion granted is done: its role says the rest.
            s.granted_promotion = false;
        }
        s.peer.role = role;
        s.peer.disk = disk;
        s.peer.current = current;
        s.peer.out_of_sync = out_of_sync;
        let finished = match &s.activity {
            // (Outdated: a target that holds our data but lost writes of
            // its own that it acknowledged before its disk failed;
            // Consistent: one that holds our data, which is Consistent.)
            Activity::Source(src) => {
                src.done_sent
                    && current == my_current
                    && matches!(
                        disk,
                        DiskState::UpToDate | DiskState::Outdated | DiskState::Consistent
                    )
            }
            _ => false,
        };
        if let Activity::Target { behind, .. } = &mut s.activity {
            *behind = out_of_sync;
        }
        if s.adoption == super::session::Adoption::Giving && current == my_current {
            // The peer's record holds our generation: our bitmap's base
            // is done with, as after a sync.
            s.adoption = super::session::Adoption::None;
            self.gen.synced_to(my_current);
        }
        let idle = s.phase == Phase::Running && matches!(s.activity, Activity::Idle);
        if finished {
            s.activity = Activity::Idle;
            self.sync_finished_source(disk);
        }
        if role == Role::Primary && self.unpin_for_primary_peer(current) {
            // Pinned to the Primary's very generation: with nothing to move
            // this node holds its data.
            if idle
                && self.role == Role::Secondary
                && self.disk == DiskState::Outdated
                && disk == DiskState::UpToDate
                && self.dirty.bytes() == 0
            {
                self.disk = DiskState::UpToDate;
                self.announce();
            }
        }
        self.adaptive_peer_state(role, current);
        Ok(())
    }
}

/// The bytes a peer's checksum request asks to read (0: not one).
fn verify_len(op: &Op) -> u64 {
    match op {
        Op::Verify { len, .. } => u64::from(*len),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::block_sums;

    /// `data` with 4 bytes at `at` chosen so that its CRC32 is `want`
    /// (CRC32 is affine in those bits: solved over GF(2)).
    fn forge_crc(data: &mut [u8], at: usize, want: u32) {
        let crc_with = |data: &mut [u8], p: u32| {
            data[at..at + 4].copy_from_slice(&p.to_le_bytes());
            crc32fast::hash(data)
        };
        let base = crc_with(data, 0);
        // Column i: what flipping bit i of the patch does to the CRC.
        let mut rows: Vec<(u32, u32)> =
            (0..32).map(|i| (crc_with(data, 1 << i) ^ base, 1u32 << i)).collect();
        // Gaussian elimination: express `want ^ base` in the columns.
        let mut target = want ^ base;
        let mut patch = 0u32;
        for bit in (0..32).rev() {
            let Some(k) = rows.iter().position(|(v, _)| v >> bit & 1 == 1) else { continue };
            let (v, p) = rows.swap_remove(k);
            for r in rows.iter_mut() {
                if r.0 >> bit & 1 == 1 {
                    *r = (r.0 ^ v, r.1 ^ p);
                }
            }
            if target >> bit & 1 == 1 {
                target ^= v;
                patch ^= p;
            }
        }
        assert_eq!(target, 0, "not solvable");
        crc_with(data, patch);
    }

    /// Two different 4 KiB blocks with the same CRC32 (made on purpose,
    /// or one pair in 2^32 by chance): online verify and checksum resync
    /// compared CRC32s and took them for equal. Their checksums differ.
    #[test]
    fn blocks_with_the_same_crc32_have_different_checksums() {
        let a: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        let mut b = a.clone();
        b[100] ^= 0x5a;
        forge_crc(&mut b, 2000, crc32fast::hash(&a));
        assert_ne!(a, b);
        assert_eq!(crc32fast::hash(&a), crc32fast::hash(&b), "the forged block");
        assert_ne!(block_sums(&a, 4096), block_sums(&b, 4096));
        assert_eq!(block_sums(&a, 4096), block_sums(&a.clone(), 4096));
        let two = [a.as_slice(), b.as_slice()].concat();
        let sums = block_sums(&two, 4096);
        assert_eq!(sums.len(), 2);
        assert_ne!(sums[0], sums[1]);
    }
}
