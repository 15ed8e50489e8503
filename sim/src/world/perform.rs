//! Performing the cores' actions: store and metadata I/O, frames, replies.

use std::time::Duration;

use bytes::Bytes;
use twinblock_replicator::core::{
    Action, Connection, Hook, IoError, Persist, Replication, ReplyError, ReqId, StoreOp, Time,
};
use twinblock_replicator::protocol::wire::{DiskState, Message, Role};

use crate::checker::Violation;
use crate::node::{AppKind, Held, PendingIo};
use crate::trace::{short_msg, short_op, short_persist};
use crate::world::Sim;
use crate::CELL;

impl Sim {
    pub(crate) fn fails(&mut self) -> Option<IoError> {
        if self.err_rate > 0 && self.rng.chance(1, self.err_rate) {
            Some(if self.rng.chance(1, 2) { IoError::EIO } else { IoError::ENOSPC })
        } else {
            None
        }
    }

    /// Whether node `n`'s store answers a read of `[off, off+len)` that
    /// may be a hole as one (`StoreOp::Read` with `holes`): its disk is a
    /// sparse file ([`Sim::sparse`]; else a block device, which cannot
    /// tell), the range is all hole in its page cache (`SEEK_DATA` sees
    /// data not yet written back), and the probe does not fail (one in
    /// eight is read all the same, as the real store reads when `lseek`
    /// fails). The whole range or nothing: the core takes `Ok(None)` for
    /// all of it, and the real store asks `SEEK_DATA` of the whole range.
    pub(crate) fn answers_hole(&mut self, n: usize, off: u64, len: u64) -> bool {
        self.chk.stats.hole_probes += 1;
        if !self.sparse[n] || !self.nodes[n].disk.is_hole(off, len) || !self.holes.chance(7, 8) {
            return false;
        }
        self.chk.stats.hole_reads += 1;
        // (The model's own rule, `disk.rs`: a hole reads as zeroes.)
        let (o, l) = (off as usize, len as usize);
        assert!(
            self.nodes[n].disk.cache[o..o + l].iter().all(|&x| x == 0),
            "{}: a hole at {off}+{len} holds data",
            self.nodes[n].name
        );
        true
    }

    pub(crate) fn io_delay(&mut self) -> Time {
        Duration::from_micros(50 + self.rng.below(3000))
    }

    /// An I/O of node `n` on its way: it completes at its time, or never
    /// if the disk stalled (until the process ends).
    pub(crate) fn queue_io(&mut self, n: usize, io: PendingIo) {
        if self.nodes[n].stalled && (io.persist.is_none() || self.meta_on_disk) {
            self.note(format!("{}: io#{} hangs (stalled disk)", self.nodes[n].name, io.io));
            self.chk.stats.hung_ios += 1;
            self.nodes[n].first_hung.get_or_insert(self.now);
            self.nodes[n].hung.push(io);
        } else {
            self.nodes[n].ios.push(io);
        }
    }

    /// Performs every action node `n`'s core has queued, then the deferred
    /// link-down notifications.
    pub(crate) fn drain(&mut self, n: usize) {
        while let Some(core) = self.nodes[n].core.as_mut() {
            let Some(a) = core.poll_action() else {
                if let Some((m, sid)) = self.downs.pop_front() {
                    if self.nodes[m].paused() {
                        self.nodes[m].held.push(Held::LinkDown(sid));
                        continue;
                    }
                    if let Some(c) = self.nodes[m].core.as_mut() {
                        c.handle_link_down(self.now, sid, "link closed");
                    }
                    self.drain(m);
                    continue;
                }
                break;
            };
            self.perform(n, a);
        }
    }

    pub(crate) fn perform(&mut self, n: usize, a: Action) {
        if self.opts.trace {
            let d = match &a {
                Action::Store { io, op } => format!("store#{io} {}", short_op(op)),
                Action::Persist { io, what } => format!("persist#{io} {}", short_persist(what)),
                Action::Send { session, msg } => format!("send[{session}] {}", short_msg(msg)),
                other => format!("{other:?}"),
            };
            self.note(format!("  {} > {d}", self.nodes[n].name));
        }
        match a {
            Action::Store { io, op } => {
                let at = self.now + self.io_delay();
                let err = self.fails();
                let primary = self.nodes[n].is_primary();
                let mut durable = Vec::new();
                let mut result = Ok(None);
                if primary {
                    // The Primary's apply history (what it sends, too).
                    match &op {
                        StoreOp::Write { offset, data, .. } => {
                            self.chk.primary_applied(n, *offset, data)
                        }
                        StoreOp::Zero { offset, len, .. } => {
                            self.chk.primary_applied(n, *offset, &vec![0u8; *len as usize])
                        }
                        _ => {}
                    }
                    if let Err(v) = self.chk.primary_store(n, &self.nodes[n], &op) {
                        self.pending_violation.get_or_insert(v);
                    }
                }
                match &op {
                    StoreOp::Write { offset, data, fua } => {
                        if let Some(e) = err {
                            result = Err(e);
                            // A failed write may have landed in part.
                            if self.rng.chance(1, 2) {
                                let cells = data.len() as u64 / CELL;
                                let part = (self.rng.below(cells + 1) * CELL) as usize;
                                self.nodes[n].disk.write(*offset, &data[..part]);
                            }
                        } else {
                            let d = self.nodes[n].disk.write(*offset, data);
                            if *fua {
                                durable = d;
                            }
                        }
                    }
                    StoreOp::Zero { offset, len, fua, punch } => {
                        if let Some(e) = err {
                            result = Err(e);
                        } else {
                            let d = self.nodes[n].disk.zero(*offset, *len, *punch);
                            if *fua {
                                durable = d;
                            }
                        }
                    }
                    StoreOp::Flush => {
                        if let Some(e) = err {
                            result = Err(e);
                        } else {
                            durable = self.nodes[n].disk.unflushed();
                        }
                    }
                    StoreOp::Scratch { .. } => {
                        // The bench scratch area: not the device.
                        if let Some(e) = err {
                            result = Err(e);
                        }
                    }
                    StoreOp::Read { offset, len, holes } => {
                        if let Some(e) = err {
                            result = Err(e);
                        } else if *holes && self.answers_hole(n, *offset, *len) {
                            // All hole in the page cache (as `SEEK_DATA`
                            // sees it): answered unread, as zeroes.
                            self.note(format!(
                                "{}: read {offset}+{len} answered as a hole",
                                self.nodes[n].name
                            ));
                            result = Ok(None);
                        } else {
                            let (o, l) = (*offset as usize, *len as usize);
                            result = Ok(Some(Bytes::copy_from_slice(
                                &self.nodes[n].disk.cache[o..o + l],
                            )));
                        }
                    }
                }
                if let Err(e) = result {
                    if matches!(op, StoreOp::Write { .. } | StoreOp::Zero { .. }) {
                        // The disk skipped a write: its content is no
                        // longer a state of any history.
                        self.chk.lineage_broken(n);
                    }
                    self.note(format!(
                        "{}: store {:?} fails errno {}",
                        self.nodes[n].name,
                        short_op(&op),
                        e.0
                    ));
                }
                let may_hang = primary
                    && matches!(op, StoreOp::Write { .. } | StoreOp::Zero { .. } | StoreOp::Flush);
                self.queue_io(n, PendingIo { io, at, result, durable, persist: None, may_hang });
            }
            Action::Persist { io, what } => {
                let mut at = self.now + self.io_delay();
                // Slow-metadata seeds: now and then a Secondary's
                // activity-log update lags (a metadata device that stalls),
                // and the writes it received wait in its queue meanwhile,
                // long enough for a failover, or a replaced disk, and a
                // reconnect (from review: the resync read before them).
                // (Not in a calm period: no trouble then, the pair settles.)
                let lags = matches!(what, Persist::Al { .. })
                    && !self.nodes[n].is_primary()
                    && self.now >= self.calm_until;
                if let Some(r) = self.slow_al.as_mut().filter(|_| lags) {
                    if r.chance(1, 5) {
                        at += Duration::from_millis(200 + r.below(1000));
                    }
                }
                let result = match self.fails() {
                    Some(e) => {
                        self.note(format!(
                            "{}: persist {} fails errno {}",
                            self.nodes[n].name,
                            short_persist(&what),
                            e.0
                        ));
                        Err(e)
                    }
                    None => Ok(None),
                };
                // (On the stalled device too if `meta_on_disk`.)
                let durable = Vec::new();
                self.queue_io(
                    n,
                    PendingIo { io, at, result, durable, persist: Some(what), may_hang: false },
                );
            }
            Action::Send { session, msg } => {
                // A Secondary confirms its Primary's `Outdate`: its record
                // says Outdated (the checker's rule, `outdated_by_frame`).
                let confirmed = matches!(msg, Message::OutdateDone)
                    && self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::Outdated);
                if confirmed {
                    self.chk.outdated_by_frame(n);
                }
                let delay = match self.level {
                    None => Duration::from_micros(100 + self.rng.below(3000)),
                    Some(l) => self.link_delay(l),
                };
                let now = self.now;
                if let Some(l) = self.link.as_mut().filter(|l| l.sid == session) {
                    let q = &mut l.queue[1 - n];
                    let at = q.back().map_or(now + delay, |(t, _)| (*t).max(now + delay));
                    q.push_back((at, msg));
                }
            }
            Action::Close { session, reason } => {
                self.note(format!("{} closes link {session}: {reason}", self.nodes[n].name));
                if self.link.as_ref().is_some_and(|l| l.sid == session) {
                    self.link_down(None);
                } else {
                    self.downs.push_back((n, session));
                }
            }
            Action::Reply { req, result } => self.replied(n, req, result),
            Action::Vote(req) => {
                let at = self.now + Duration::from_micros(100 + self.rng.below(2000));
                let now = self.now;
                if let Some(w) =
                    self.witness.as_mut().filter(|w| w.reachable(n, now) || w.holds(n, now))
                {
                    // (Sent into a silent link that holds it: it arrives
                    // once the link heals.)
                    let at = w.late_until(n, now).map_or(at, |l| l.max(at));
                    let at = w.to_w.back().map_or(at, |(t, _, _, _, _)| (*t).max(at));
                    let process = w.process[n];
                    if !w.reachable(n, now) {
                        w.late_reqs.insert((n, process, req.id));
                    }
                    let conn = w.conn[n];
                    w.to_w.push_back((at, n, process, conn, req));
                }
            }
            Action::Hook(h) => {
                // A promotion's hooks (the address move, `on_promote`)
                // only for a promotion whose record is on disk: one that
                // does not stand (its record never saved) would move the
                // service to a node that acknowledges nothing
                // (`core/promoted_hook.rs`).
                let on_disk = self.nodes[n].meta.at_start().map_or(0, |m| m.promoted_at);
                let promoted_at = self.nodes[n].core.as_ref().map_or(0, |c| c.promoted_at());
                if h == Hook::Promoted {
                    self.nodes[n].hooked = Some(promoted_at);
                }
                if h == Hook::Promoted && on_disk != promoted_at {
                    self.pending_violation.get_or_insert(Violation {
                        step: self.chk.step,
                        rule: "hooks",
                        what: format!(
                            "{}: a promotion's hooks run before its record is on disk (promoted at {promoted_at}, the record on disk says {on_disk})",
                            self.nodes[n].name
                        ),
                    });
                }
                let at = self.now + Duration::from_millis(1 + self.rng.below(50));
                if let Some(w) = self.witness.as_mut() {
                    let process = w.process[n];
                    w.hooks.push((at, n, process, h));
                } else if let Some(c) = self.nodes[n].core.as_mut() {
                    c.hook_done(self.now, h, Ok(()));
                }
            }
        }
    }

    /// The link goes away. `crashed`: the node that crashed (its frames
    /// in flight: a random prefix arrives). Both living nodes are told.
    pub(crate) fn link_down(&mut self, crashed: Option<usize>) {
        let Some(mut l) = self.link.take() else { return };
        self.note(format!("link {} down", l.sid));
        // A random prefix of what is in flight still arrives.
        for to in 0..2 {
            if !self.nodes[to].alive() || Some(to) == crashed {
                continue;
            }
            let q = std::mem::take(&mut l.queue[to]);
            // (A paused node reads none of it: the close comes first.)
            let keep = if l.partitioned || self.nodes[to].paused() {
                0
            } else {
                self.rng.below(q.len() as u64 + 1) as usize
            };
            for (_, msg) in q.into_iter().take(keep) {
                if let Some(c) = self.nodes[to].core.as_mut() {
                    c.handle_frame(self.now, l.sid, msg);
                    // A handshake those frames finished met the peer, if
                    // only for this step (seed 30500045 at 20,000 steps:
                    // the checker sampled no Connected and took a deposed
                    // node's reads, after it met its replaced peer, for
                    // reads apart from it).
                    if c.connection() == Connection::Connected {
                        self.chk.met_peer(to, self.now);
                    }
                }
                // Actions are performed after the link is gone: sends drop.
                self.drain(to);
            }
        }
        for to in 0..2 {
            self.nodes[to].link_gen += 1;
            if self.nodes[to].alive() {
                self.downs.push_back((to, l.sid));
            }
        }
        self.connect_at = None;
    }

    pub(crate) fn replied(&mut self, n: usize, req: ReqId, result: Result<(), ReplyError>) {
        if !self.nodes[n].answered.insert(req) {
            let v = Violation {
                step: self.chk.step,
                rule: "one reply",
                what: format!("{}: request {req} answered twice", self.nodes[n].name),
            };
            self.pending_violation.get_or_insert(v);
            return;
        }
        let Some(r) = self.nodes[n].reqs.remove(&req) else { return };
        if let AppKind::Probe(mode) = r.kind {
            self.note(format!("{}: probe {req} {mode:?} -> {result:?}", self.nodes[n].name));
            return;
        }
        if let (Err(e), AppKind::Write { .. } | AppKind::Zero { .. } | AppKind::Flush) =
            (&result, &r.kind)
        {
            if self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::Failed) {
                self.chk.stats.failed_disk_errors += 1;
            }
            if *e != ReplyError::ReadOnly {
                self.note(format!("{}: req {req} {:?} -> {:?}", self.nodes[n].name, r.kind, e));
            }
        }
        if result.is_ok() && !matches!(r.kind, AppKind::Flush) || self.opts.trace {
            self.note(format!(
                "{}: req {req} {:?} -> {:?} linked {:?} gen {}",
                self.nodes[n].name, r.kind, result, r.linked, self.nodes[n].link_gen
            ));
        } else if result.is_ok() {
            self.note(format!("{}: req {req} Flush ok", self.nodes[n].name));
        }
        if result.is_ok()
            && matches!(r.kind, AppKind::Write { .. } | AppKind::Zero { .. })
            && self.nodes[n].core.as_ref().is_none_or(|c| c.session_id().is_none())
        {
            let gen = self.nodes[n].core.as_ref().map_or(0, |c| c.gen().current);
            self.chk.write_acked_alone(n, gen);
        }
        // I4, the leases, at the reply: a controller's Primary answers a
        // write OK only while it holds quorum by its own leases, counted
        // to now (a node paused past them answers nothing OK at its
        // resume: plant `gate-on-timer-clock`).
        if result.is_ok() && matches!(r.kind, AppKind::Write { .. } | AppKind::Zero { .. }) {
            let c = self.nodes[n].core.as_ref();
            if let Some(st) = c.filter(|c| c.role() == Role::Primary).and_then(|c| c.controller()) {
                if !st.quorum {
                    let v = Violation {
                        step: self.chk.step,
                        rule: "I4",
                        what: format!(
                            "{}: request {req} acknowledged without quorum by its own leases",
                            self.nodes[n].name
                        ),
                    };
                    self.pending_violation.get_or_insert(v);
                }
            }
        }
        if result.is_ok() {
            let confirmed = r.linked.is_some_and(|(sid, g)| {
                g == self.nodes[n].link_gen
                    && self.nodes[n].core.as_ref().and_then(|c| c.session_id()) == Some(sid)
                    && self.nodes[n].is_primary()
            }) && self.nodes[n].core.as_ref().is_some_and(|c| {
                c.status().counters.mode_switches == r.switches
                    && c.replication() != Replication::Ahead
            });
            match self.chk.ack_check(self, n, &r) {
                Err(v) => {
                    self.pending_violation.get_or_insert(v);
                }
                Ok(true) => self.chk.overtake(1 - n),
                Ok(false) => {}
            }
            if matches!(r.kind, AppKind::Write { .. } | AppKind::Zero { .. })
                && self.nodes[n].is_primary()
            {
                self.chk.reign_ack(n);
            }
            if let Err(v) = self.chk.failed_disk_ack(self, n, &r, self.protocol) {
                self.pending_violation.get_or_insert(v);
            }
            match self.chk.peer_durable_ack(self, n, &r, confirmed, self.protocol) {
                Ok(true) => self.chk.stats.peer_durable_checks += 1,
                Ok(false) => {}
                Err(v) => {
                    self.pending_violation.get_or_insert(v);
                }
            }
            if self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::Failed) {
                self.chk.stats.failed_disk_acks += 1;
            }
            // (A session still in its handshake is not a link yet: a
            // Primary writes alone then, as without one.)
            let linked = self.nodes[n].is_primary()
                && self.nodes[n]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.session_id().is_some_and(|sid| c.session_running(sid)));
            let failed = self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::Failed);
            self.chk.acked(n, &r, confirmed, linked, self.protocol, failed);
        }
    }
}
