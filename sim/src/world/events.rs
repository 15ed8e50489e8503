//! Time and what it brings: I/O completions, frames, timers, the link
//! coming and going, the witness, crashes and power losses.

use std::collections::VecDeque;
use std::time::Duration;

use twinblock_replicator::arbiter::{Grant, Refusal};
use twinblock_replicator::config::Protocol;
use twinblock_replicator::core::{Persist, Time, VoteKind};
use twinblock_replicator::protocol::wire::{DiskState, Role};

use crate::checker::{self, Violation};
use crate::disk::Disk;
use crate::meta::Meta;
use crate::node::{Held, Link};
use crate::rng::Rng;
use crate::trace::short_msg;
use crate::world::Sim;

impl Sim {
    /// The earliest scheduled event.
    pub(crate) fn next_event(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut min = |x: Time| t = Some(t.map_or(x, |y: Time| y.min(x)));
        for node in &self.nodes {
            if let Some(p) = node.paused_until {
                // (What it would handle waits for its resume.)
                min(p);
                continue;
            }
            for io in &node.ios {
                min(io.at);
            }
            if let Some(r) = node.restart_at {
                min(r);
            }
            if let Some(c) = &node.core {
                if let Some(d) = c.poll_timeout() {
                    min(d.max(self.now));
                }
            }
        }
        if let Some(l) = self.link.as_ref().filter(|l| !l.partitioned) {
            for (to, q) in l.queue.iter().enumerate() {
                if let Some((at, _)) = q.front().filter(|_| !self.nodes[to].paused()) {
                    min(*at);
                }
            }
        }
        if let Some(c) = self.connect_at {
            min(c);
        }
        if self.partition_until > self.now {
            min(self.partition_until);
        }
        let paused = [self.nodes[0].paused(), self.nodes[1].paused()];
        if let Some(x) = self.witness.as_ref().and_then(|w| w.next_event(paused)) {
            min(x);
        }
        t
    }

    /// Runs the witness's earliest event due now, if any.
    pub(crate) fn advance_witness(&mut self) -> Result<bool, Violation> {
        let now = self.now;
        let Some(w) = self.witness.as_mut() else { return Ok(false) };
        if let Some((_, down)) = w.crash_at.filter(|(c, _)| *c <= now) {
            w.crash_at = None;
            if w.alive {
                self.failover_crash(down);
            }
            return Ok(true);
        }
        let Some(w) = self.witness.as_mut() else { return Ok(false) };
        if w.restart_at.is_some_and(|r| r <= now) {
            w.restart_at = None;
            w.alive = true;
            w.returns += 1;
            w.restarted();
            match w.restart_file() {
                Some(file) => {
                    w.arb.restart_from(now, file);
                    self.note("witness restarts".into());
                }
                None => {
                    w.arb.restart_from(now, Default::default());
                    self.chk.stats.witness_stateless_restarts += 1;
                    self.note("witness restarts without its state (its file lost)".into());
                }
            }
            for n in 0..2 {
                if self.witness.as_ref().is_some_and(|w| w.up[n]) {
                    self.tell_witness_link(n, true);
                }
            }
            return Ok(true);
        }
        for n in 0..2 {
            let w = self.witness.as_mut().expect("witness");
            if w.heal_at[n].is_some_and(|h| h <= now) {
                w.heal_at[n] = None;
                w.up[n] = true;
                w.returns += 1;
                let alive = w.alive;
                self.note(format!("{}: witness link up", self.nodes[n].name));
                if alive {
                    self.tell_witness_link(n, true);
                }
                return Ok(true);
            }
        }
        let w = self.witness.as_mut().expect("witness");
        if w.to_w.front().is_some_and(|(at, _, _, _, _)| *at <= now) {
            let (_, n, process, conn, req) = w.to_w.pop_front().expect("front");
            if let Some(at) = w.late_until(n, now) {
                // A silent link that holds what is in flight (a stream
                // whose packets are retransmitted once it heals): the
                // request reaches the witness late.
                w.late_reqs.insert((n, process, req.id));
                let i = w.to_w.iter().position(|(t, _, _, _, _)| *t > at).unwrap_or(w.to_w.len());
                w.to_w.insert(i, (at, n, process, conn, req));
                self.chk.stats.witness_late += 1;
                return Ok(true);
            }
            self.witness_decides(n, process, conn, req)?;
            return Ok(true);
        }
        for n in 0..2 {
            if self.nodes[n].paused() {
                continue;
            }
            let w = self.witness.as_mut().expect("witness");
            if w.from_w[n].front().is_some_and(|(at, _)| *at <= now) {
                if let Some(at) = w.late_until(n, now) {
                    // (The answer waits for the silent link to heal.)
                    if let Some(f) = w.from_w[n].front_mut() {
                        f.0 = at;
                    }
                    self.chk.stats.witness_late += 1;
                    return Ok(true);
                }
                let (_, reply) = w.from_w[n].pop_front().expect("front");
                if !w.reachable(n, now) {
                    return Ok(true);
                }
                let Some(c) = self.nodes[n].core.as_mut() else { return Ok(true) };
                let (role, disk) = (c.role(), c.disk());
                let granted = reply.granted;
                c.handle_vote(now, now.as_millis() as u64 + 1, reply);
                // I4, the leases: a node counts a grant's lease from when it
                // asked, so by its count the lease ends before the witness's
                // (from when the request arrived, plus a margin). A node
                // that counts further could acknowledge writes after the
                // witness granted its peer (plant `lease-from-reply`).
                let end = c.witness_lease_end();
                let w = self.witness.as_ref().expect("witness");
                let name = self.nodes[n].name;
                if let (true, Some(end), Some(left)) = (granted, end, w.arb.lease_left(now)) {
                    if w.arb.holder() == Some(name) && end > now + left {
                        return Err(Violation {
                            step: self.chk.step,
                            rule: "I4",
                            what: format!(
                                "{name} counts its witness lease to {end:?}, past the witness's \
                                 own count ({:?})",
                                now + left
                            ),
                        });
                    }
                }
                let Some(c) = self.nodes[n].core.as_mut() else { return Ok(true) };
                let promoted = c.role() == Role::Primary && role != Role::Primary;
                let forced = self.forced_claim[n].filter(|_| c.promotion_asked().is_none());
                if forced.is_some() {
                    self.forced_claim[n] = None;
                }
                self.drain(n);
                if let (true, Some((d, _))) = (promoted, forced) {
                    self.note(format!(
                        "{}: primary --force granted by the witness",
                        self.nodes[n].name
                    ));
                    self.forced_promotion(n, d);
                }
                // I4, the leases, where the grant is used: the other node
                // no longer holds quorum by its own leases.
                if promoted {
                    let what =
                        format!("{} was promoted by the witness's grant", self.nodes[n].name);
                    self.other_holds_no_lease(n, now, what)?;
                }
                if promoted {
                    // (The disk it was promoted from: the grant may first
                    // end a session whose Primary's loss leaves it
                    // Consistent, in protocol A.)
                    let disk = self.nodes[n].core.as_ref().map_or(disk, |c| c.promoted_from());
                    self.note(format!(
                        "{}: promoted by the controller ({disk:?})",
                        self.nodes[n].name
                    ));
                    let force = disk != DiskState::UpToDate;
                    if force && forced.is_none() {
                        // The controller declared a protocol-A disk left
                        // Consistent good, as `--force` does: what either
                        // node acknowledged alone that it lacks is given up.
                        self.forced_promotion(n, disk);
                    }
                    self.chk.stats.ctl_promotions += 1;
                    let held = forced.is_some_and(|(_, held)| held);
                    self.check_promoted(n, force || held, disk, held)?;
                    if self.nodes[1 - n].is_primary() {
                        self.chk.stats.takeovers_from_primary += 1;
                        // (Only where the old Primary wrote nothing alone:
                        // its data is where the new one's grew from, the
                        // course `Refusal::Behind` covers. Data grown apart
                        // on both sides is a split brain the witness
                        // without its state cannot rank.)
                        let gen = |m: usize| self.nodes[m].core.as_ref().map(|c| c.gen());
                        if let (Some(old), Some(new)) = (gen(1 - n), gen(n)) {
                            if new.lineage().contains(&old.current) {
                                let now = self.now;
                                if let Some(w) = self.witness.as_mut() {
                                    w.crash_in_failover(now);
                                }
                            }
                        }
                    }
                }
                return Ok(true);
            }
        }
        let paused = [self.nodes[0].paused(), self.nodes[1].paused()];
        let w = self.witness.as_mut().expect("witness");
        if let Some((n, h, current)) = w.hook_due(now, paused) {
            let fail = self.rng.chance(1, 10);
            if !current {
                // (Its process crashed since it ran the hook.)
                self.note(format!("{}: hook {h:?} of an ended process done", self.nodes[n].name));
                return Ok(true);
            }
            let result = if fail { Err("hook exited 1".to_string()) } else { Ok(()) };
            self.note(format!("{}: hook {h:?} done {result:?}", self.nodes[n].name));
            if let Some(c) = self.nodes[n].core.as_mut() {
                c.hook_done(now, h, result);
            }
            self.drain(n);
            return Ok(true);
        }
        Ok(false)
    }

    /// The witness decides node `n`'s request `req`, sent by its process
    /// `process` on its connection `conn`, arriving now: a request on an
    /// older connection after its newer one's is refused undecided
    /// (`conn_order`); else decided, checked, and answered (to the
    /// process and connection that sent it only).
    fn witness_decides(
        &mut self,
        n: usize,
        process: u64,
        conn: u64,
        req: twinblock_replicator::core::VoteRequest,
    ) -> Result<(), Violation> {
        let now = self.now;
        let w = self.witness.as_mut().expect("witness");
        let late = w.late_reqs.remove(&(n, process, req.id));
        if w.reachable(n, now) {
            if !w.order.admit(self.nodes[n].name, conn) {
                self.note(format!(
                    "witness: {}'s {:?} on its old connection {conn} refused as stale",
                    req.node, req.kind
                ));
                return Ok(());
            }
            let before = w.arb.holder().map(str::to_owned);
            // The residual limit of a witness without its record (README):
            // it cannot tell a lone Primary cut off and overtaken from the
            // one it granted last unless the other node told it its data
            // since its start (`Refusal::Behind`).
            let recordless = !w.arb.durable().complete;
            let blind = recordless && !w.arb.heard.contains_key(self.nodes[1 - n].name);
            let (verdict, reply, failed) = w.decide(now, &req);
            let after = w.arb.holder().map(str::to_owned);
            // I4, the leases: the witness grants a claim only once the
            // other node's leases ended, by that node's own count (its
            // witness lease from when it asked, its peer lease from the
            // heartbeat the claimant answered). A Primary that still
            // holds quorum by its own clock while the other node is
            // granted may acknowledge writes beside it (caught here
            // whether or not a write falls into the overlap: plant
            // `lease-from-reply`). Not for a claim a silent link held
            // (late seeds): its node may have answered the other's
            // heartbeats as Primary since it asked, a peer lease the
            // witness cannot see; the node then gives the grant back
            // (`Core::claimed`), and the rule is checked where the
            // answer arrives, if it promotes the node.
            if req.kind == VoteKind::Claim && verdict == Ok(Grant::Granted) && !late {
                let what = format!("the witness granted {} the right", req.node);
                self.other_holds_no_lease(n, now, what)?;
            }
            if blind
                && req.kind == VoteKind::Renew
                && !req.peer_current
                && verdict == Ok(Grant::Granted)
                && reply.granted
            {
                // Renewed so, the Primary runs on without what the other
                // node acknowledged alone since it was overtaken, as if an
                // operator had forced it: that is given up (seed 17400596:
                // a took over from b and acknowledged a write, then crashed;
                // the witness lost its state in the failover and renewed b,
                // never hearing a).
                self.chk.stats.witness_blind_renewals += 1;
                self.note(format!(
                    "witness without its record renews {} not having heard {} since its start \
                 (the residual limit: what {} acknowledged alone is given up)",
                    req.node,
                    self.nodes[1 - n].name,
                    self.nodes[1 - n].name
                ));
                self.forced_promotion(n, DiskState::Consistent);
                self.check_promoted(n, true, DiskState::Consistent, false)?;
            }
            if recordless
                && req.kind == VoteKind::Claim
                && req.peer_current
                && (self.nodes[1 - n].was_replaced || self.nodes[n].was_replaced)
                && verdict == Ok(Grant::Granted)
                && reply.granted
            {
                // The same residual limit, with a claim: a witness
                // without its record grants a node its peer vouches
                // current, and the peer is a replaced node rebuilt
                // from it, whose lost disk alone held what it
                // acknowledged running alone (seed 18010106: b ran
                // alone, its node was replaced and synced from a, the
                // witness lost its state, and a was granted). Three
                // failures: what the lost node acknowledged alone is
                // given up, as if an operator had forced the claimant.
                // So when the claimant is the replaced node itself,
                // rebuilt from the peer that vouches for it (seed
                // 30401336 at 20,000 steps: a ran alone, its node was
                // replaced and synced from b, the witness lost its
                // state, a was granted, later b).
                self.chk.stats.witness_blind_claims += 1;
                let lost = if self.nodes[n].was_replaced { n } else { 1 - n };
                self.note(format!(
                    "witness without its record grants {}, its peer {} current, {} a replaced \
                 node (the residual limit: what {} acknowledged alone before it was \
                 replaced is given up)",
                    req.node,
                    self.nodes[1 - n].name,
                    self.nodes[lost].name,
                    self.nodes[lost].name
                ));
                self.chk.given_up_by_blind_grant();
            }
            if let Some(landed) = failed {
                self.chk.stats.witness_failed_saves += 1;
                self.chk.stats.witness_landed_failed_saves += u64::from(landed);
                self.note(format!(
                    "witness: the save of its state failed (landed: {landed}): {:?} of {} undone",
                    req.kind, req.node
                ));
            }
            // The witness refuses a claim by its data only for data
            // that lost what its node ran alone with: a node replaced
            // (its metadata lost). Anything else is a false refusal,
            // which leaves the pair without a Primary. (A node keeps
            // the generations it told, `MetaRecord::told`, so several
            // separations the witness did not hear of do not push the
            // one it holds out of what the node says; more than
            // `TOLD_KEPT` of them would.)
            if verdict.as_ref().is_err_and(Refusal::by_data) && self.data_replaced == 0 {
                return Err(Violation {
                    step: self.chk.step,
                    rule: "witness-data",
                    what: format!(
                        "the witness refused {}'s claim by its data {:x?} though no node was \
                     replaced nor data given up: {}",
                        req.node, req.data, reply.reason
                    ),
                });
            }
            // Now and then an answer is slow (a lost packet, a busy
            // witness): longer than the witness's margin.
            let at = if self.rng.chance(1, 25) {
                now + Duration::from_millis(100 + self.rng.below(700))
            } else {
                now + Duration::from_micros(100 + self.rng.below(2000))
            };
            let w = self.witness.as_mut().expect("witness");
            let at = w.late_until(n, now).map_or(at, |l| l.max(at));
            let at = w.from_w[n].back().map_or(at, |(t, _)| (*t).max(at));
            // (Not to a process that ended since it asked.)
            // (Nor to a connection the node gave up: a request a cut link
            // held, `Witness::stale`.)
            let current = process == w.process[n] && conn == w.conn[n];
            if current {
                w.from_w[n].push_back((at, reply.clone()));
            }
            if self.opts.trace || before != after || !reply.granted {
                self.note(format!(
                    "witness: {} {:?} -> {} ({}), holder {:?}",
                    req.node, req.kind, reply.granted, reply.reason, after
                ));
            }
            // What a cut link held of this node's requests reaches the
            // witness now, on the connection the node gave up, right after
            // its newer one was granted something: the worst moment (an old
            // `Release` then clears the right the node holds again).
            if current && reply.granted {
                let w = self.witness.as_mut().expect("witness");
                for (m, p, c, r) in w.take_stale(n, conn) {
                    self.chk.stats.witness_stale += 1;
                    self.witness_decides(m, p, c, r)?;
                }
            }
        }
        Ok(())
    }

    /// Node `n`'s witness link came up or went down: its core is told,
    /// or, paused, told at its resume.
    pub(crate) fn tell_witness_link(&mut self, n: usize, up: bool) {
        if up {
            // (A link back up is a new connection: `Witness::conn`.)
            if let Some(w) = self.witness.as_mut() {
                w.conn[n] += 1;
            }
        }
        if self.nodes[n].paused() {
            self.nodes[n].held.push(Held::WitnessLink(up));
            return;
        }
        if let Some(c) = self.nodes[n].core.as_mut() {
            c.handle_witness_link(self.now, up);
        }
        self.drain(n);
    }

    /// Node `n`'s pause is over: its core is told what changed meanwhile
    /// (in order), then receives the requests that waited in its NBD
    /// socket; what else waited (I/O completions, frames, timers, witness
    /// answers, hook results, all due now) follows event by event.
    pub(crate) fn resume(&mut self, n: usize) {
        self.nodes[n].paused_until = None;
        self.nodes[n].resumed_at = self.now;
        let now = self.now;
        let was_primary = self.nodes[n].is_primary();
        if was_primary && self.nodes[1 - n].is_primary() {
            self.chk.stats.paused_deposed += 1;
        }
        // (The daemon's own timer fires first thing: its core knows the
        // time before it handles anything, as `Node::with_core` feeds it.)
        self.clock_in(n);
        let queued = std::mem::take(&mut self.nodes[n].queued_submits);
        self.note(format!(
            "{} resumes ({} requests queued, {} notifications)",
            self.nodes[n].name,
            queued,
            self.nodes[n].held.len()
        ));
        for h in std::mem::take(&mut self.nodes[n].held) {
            if let Some(c) = self.nodes[n].core.as_mut() {
                match h {
                    Held::LinkDown(sid) => c.handle_link_down(now, sid, "link closed"),
                    Held::WitnessLink(up) => c.handle_witness_link(now, up),
                }
            }
            self.drain(n);
        }
        for _ in 0..queued {
            self.submit(n);
        }
    }

    /// The witness crashes (in some seeds) right after handing the right
    /// over from a Primary still running, and restarts without its state
    /// ([`crate::witness::Witness::crash_in_failover`]).
    fn failover_crash(&mut self, down: Duration) {
        let now = self.now;
        let Some(w) = self.witness.as_mut() else { return };
        w.lose_next = true;
        self.chk.stats.witness_failover_crashes += 1;
        w.alive = false;
        w.restart_at = Some(now + down);
        w.cut(0);
        w.cut(1);
        self.note("witness crashes (in a failover; it will lose its state)".into());
        for m in 0..2 {
            self.tell_witness_link(m, false);
        }
    }

    /// The Primary loses the witness (its link cut) for `d`, and its
    /// peer (a silent partition) for 3 s more: it may reach the witness
    /// before it meets its peer again ([`crate::witness::Witness::isolation`]).
    pub(crate) fn isolate_primary(&mut self, d: Duration) {
        let now = self.now;
        let Some(p) = self.nodes.iter().position(|n| n.is_primary()) else { return };
        // (Only with an UpToDate Secondary to take over.)
        let peer_ready = self.nodes[1 - p]
            .core
            .as_ref()
            .is_some_and(|c| c.role() == Role::Secondary && c.disk() == DiskState::UpToDate);
        let Some(w) = self.witness.as_mut().filter(|_| peer_ready) else { return };
        if !w.up[p] {
            return;
        }
        w.up[p] = false;
        w.heal_at[p] = Some(now + d);
        w.cut_holding(p);
        self.partition_until = self.partition_until.max(now + d + Duration::from_secs(3));
        if let Some(l) = self.link.as_mut() {
            l.partitioned = true;
        }
        self.note(format!(
            "{}: cut off from its peer and the witness for {d:?}",
            self.nodes[p].name
        ));
        self.tell_witness_link(p, false);
    }

    /// Witness trouble: a cut or silent link, or a witness restart.
    pub(crate) fn witness_trouble(&mut self) {
        let now = self.now;
        let n = self.rng.below(2) as usize;
        let r = self.rng.below(10);
        let dur = Duration::from_millis(100 + self.rng.below(5000));
        let Some(w) = self.witness.as_mut() else { return };
        if r < 4 {
            if !w.up[n] {
                return;
            }
            w.up[n] = false;
            w.heal_at[n] = Some(now + dur);
            // (What was on its way comes later, on the connection the
            // node gives up: `Witness::stale`.)
            w.cut_holding(n);
            self.note(format!("{}: witness link cut", self.nodes[n].name));
            self.tell_witness_link(n, false);
        } else if r < 8 {
            w.silent_until[n] = now + dur;
            // Late seeds: a silence holds what is in flight and delivers
            // it once it heals (else it is lost).
            w.late[n] = w.late_rng.is_some();
            if !w.late[n] {
                w.cut(n);
            }
            let late = if w.late[n] { " (what is in flight arrives late)" } else { "" };
            self.note(format!("{}: witness link silent for {dur:?}{late}", self.nodes[n].name));
        } else {
            if !w.alive {
                return;
            }
            w.alive = false;
            w.restart_at = Some(now + dur);
            w.cut(0);
            w.cut(1);
            self.note("witness crashes".into());
            for m in 0..2 {
                self.tell_witness_link(m, false);
            }
        }
    }

    /// Runs the earliest event.
    pub(crate) fn advance(&mut self) {
        let Some(t) = self.next_event() else {
            self.now += Duration::from_millis(10);
            return;
        };
        self.now = self.now.max(t);
        let now = self.now;
        for n in 0..2 {
            if self.nodes[n].paused_until.is_some_and(|p| p <= now) {
                self.resume(n);
                return;
            }
        }
        // I/O completions (random order among equals).
        for n in 0..2 {
            if self.nodes[n].paused() {
                continue;
            }
            if let Some(i) = self.nodes[n].ios.iter().position(|io| io.at <= now) {
                let io = self.nodes[n].ios.remove(i);
                let failed =
                    self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::Failed);
                if io.may_hang && failed && self.rng.chance(1, 2) {
                    // The failed disk hangs: this one never completes.
                    self.note(format!("{}: io#{} hangs", self.nodes[n].name, io.io));
                    self.chk.stats.hung_ios += 1;
                    self.nodes[n].hung.push(io);
                    return;
                }
                // A failed metadata update may have landed all the same
                // (the error came after the rename, from the directory's
                // fsync): decided by the seed and the I/O's id, without a
                // draw from the seed's stream.
                let landed = io.result.is_ok() || landed_anyway(self.opts.seed, io.io);
                if io.result.is_ok() {
                    self.nodes[n].disk.make_durable(&io.durable);
                }
                if let Some(p) = io.persist.as_ref().filter(|_| landed) {
                    if io.result.is_err() {
                        self.chk.stats.landed_failed_persists += 1;
                        let name = self.nodes[n].name;
                        self.note(format!("{name}: the failed persist#{} landed", io.io));
                    }
                    self.nodes[n].meta.apply(p);
                    if matches!(p, Persist::Meta(_)) {
                        self.nodes[n].recreated = false;
                    }
                }
                if self.opts.trace {
                    self.note(format!(
                        "  {} < io#{} {:?}",
                        self.nodes[n].name,
                        io.io,
                        io.result.as_ref().map(|_| ())
                    ));
                }
                if let Some(c) = self.nodes[n].core.as_mut() {
                    c.handle_io(now, io.io, io.result);
                }
                self.drain(n);
                return;
            }
        }
        for n in 0..2 {
            if self.nodes[n].restart_at.is_some_and(|r| r <= now) {
                self.start(n);
                return;
            }
        }
        if self.partition_until <= now {
            if let Some(l) = self.link.as_mut() {
                l.partitioned = false;
            }
        }
        if let Some(l) = self.link.as_mut().filter(|l| !l.partitioned) {
            for to in 0..2 {
                if self.nodes[to].paused() {
                    continue;
                }
                if l.queue[to].front().is_some_and(|(at, _)| *at <= now) {
                    let (_, msg) = l.queue[to].pop_front().expect("front");
                    let sid = l.sid;
                    if self.opts.trace {
                        self.note(format!(
                            "  {} < [{sid}] {}",
                            self.nodes[to].name,
                            short_msg(&msg)
                        ));
                    }
                    if let Some(c) = self.nodes[to].core.as_mut() {
                        c.handle_frame(now, sid, msg);
                    }
                    self.drain(to);
                    return;
                }
            }
        }
        for n in 0..2 {
            if self.nodes[n].paused() {
                continue;
            }
            if let Some(c) = self.nodes[n].core.as_mut() {
                if c.poll_timeout().is_some_and(|d| d <= now) {
                    c.handle_timeout(now);
                    self.drain(n);
                    return;
                }
            }
        }
        if let Err(v) = self.advance_witness() {
            self.pending_violation = Some(v);
            return;
        }
        if self.partition_until <= now {
            if let Some(l) = self.link.as_mut() {
                l.partitioned = false;
            }
        }
        if self.connect_at.is_some_and(|c| c <= now) {
            self.connect_at = None;
            self.link_up();
        }
    }

    /// Keeps a connection attempt scheduled while both want a link.
    pub(crate) fn maybe_schedule_connect(&mut self) {
        if self.link.is_some() || self.connect_at.is_some() || self.partition_until > self.now {
            return;
        }
        let want = self.nodes.iter().all(|n| n.core.as_ref().is_some_and(|c| c.wants_link()));
        if want {
            self.connect_at = Some(self.now + Duration::from_millis(5 + self.rng.below(300)));
        }
    }

    pub(crate) fn link_up(&mut self) {
        let want = self.nodes.iter().all(|n| n.core.as_ref().is_some_and(|c| c.wants_link()));
        if !want || self.link.is_some() {
            return;
        }
        // A paused node answers no handshake: the connection is made once
        // it resumes.
        if let Some(p) = self.nodes.iter().filter_map(|n| n.paused_until).max() {
            self.connect_at = Some(p + Duration::from_millis(1));
            return;
        }
        let sid = self.next_sid;
        self.next_sid += 1;
        self.note(format!("link {sid} up"));
        self.chk.linked(&self.nodes);
        self.link =
            Some(Link { sid, queue: [VecDeque::new(), VecDeque::new()], partitioned: false });
        let first = self.rng.below(2) as usize;
        for n in [first, 1 - first] {
            self.nodes[n].link_gen += 1;
            if let Some(c) = self.nodes[n].core.as_mut() {
                c.handle_link_up(self.now, sid);
            }
            self.drain(n);
        }
    }

    pub(crate) fn crash(&mut self, n: usize, power: bool) -> Result<(), Violation> {
        if !self.nodes[n].alive() {
            return Ok(());
        }
        self.note(format!(
            "{} {}",
            self.nodes[n].name,
            if power { "POWER LOSS" } else { "crashes" }
        ));
        // (Whatever its role and link now: a write received before its
        // peer said Secondary may still be queued here, promoted since or
        // cut off since; review, helper-92.)
        let behind_a = self.protocol == Protocol::A
            && self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::UpToDate)
            && self.chk.lacks_a_acked(self, n);
        if behind_a {
            self.chk.stats.a_behind_crashes += 1;
        }
        self.nodes[n].core = None;
        self.forced_claim[n] = None;
        // (A paused process can be killed: what waited for it is gone.)
        self.nodes[n].paused_until = None;
        self.nodes[n].held.clear();
        self.nodes[n].queued_submits = 0;
        if let Some(w) = self.witness.as_mut() {
            w.node_crashed(n);
        }
        // Metadata updates in flight: done or not, atomically.
        let mut ios = std::mem::take(&mut self.nodes[n].ios);
        ios.append(&mut self.nodes[n].hung);
        self.nodes[n].failed_since = None;
        self.nodes[n].stalled = false;
        self.nodes[n].first_hung = None;
        for io in ios {
            if io.result.is_ok() && self.rng.chance(1, 2) {
                if let Some(p) = &io.persist {
                    self.nodes[n].meta.apply(p);
                    if matches!(p, Persist::Meta(_)) {
                        self.nodes[n].recreated = false;
                    }
                }
                self.nodes[n].disk.make_durable(&io.durable);
            }
        }
        self.nodes[n].reqs.clear();
        if self.link.is_some() {
            self.link_down(Some(n));
            let other = 1 - n;
            self.drain(other);
        }
        if power {
            let mut rng = std::mem::replace(&mut self.rng, Rng::new(0));
            self.nodes[n].disk.power_loss(&mut rng);
            self.rng = rng;
        }
        // (After the crash: what the core had received and not issued is
        // gone, and after a power loss what was not durable may be.)
        let lost_conf = self.chk.lacks_confirmed(self, n);
        self.chk.crashed(n, power, behind_a, lost_conf);
        if power {
            let mut chk = std::mem::replace(&mut self.chk, checker::Checker::new());
            let r = chk.power_check(self, n);
            self.chk = chk;
            r?;
        }
        if power && self.rng.chance(1, 25) {
            // The disk is replaced; the metadata survives.
            self.note(format!("{}: disk file recreated", self.nodes[n].name));
            self.nodes[n].disk = Disk::new();
            self.nodes[n].recreated = true;
            self.data_replaced += 1;
            self.chk.disk_replaced(n);
        } else if power && self.rng.chance(1, 6) {
            // The node is replaced (a terminated instance): a new disk and
            // no metadata, as on a first start.
            self.note(format!("{}: node replaced (new disk, no metadata)", self.nodes[n].name));
            self.nodes[n].disk = Disk::new();
            self.nodes[n].meta = Meta::default();
            self.nodes[n].recreated = true;
            self.nodes[n].was_replaced = true;
            self.data_replaced += 1;
            self.chk.disk_replaced(n);
        }
        self.nodes[n].restart_at =
            Some(self.now + Duration::from_millis(50 + self.rng.below(3000)));
        Ok(())
    }

    /// The witness holds a generation node `n` ran alone with.
    /// The operator's `primary --force` on node `n` (its disk `disk`) took
    /// effect. Forcing data that is not UpToDate gives up what either node
    /// acknowledged alone that it lacks (the peer's data will be resynced
    /// from it): the operator accepts that it may be gone.
    pub(crate) fn forced_promotion(&mut self, n: usize, disk: DiskState) {
        if disk != DiskState::UpToDate && (self.ran_alone(n) || self.ran_alone(1 - n)) {
            self.data_replaced += 1;
        }
    }

    /// I4, the leases: when node `n` is granted the right (`what`), the
    /// other node no longer holds quorum by its own leases.
    fn other_holds_no_lease(&self, n: usize, now: Time, what: String) -> Result<(), Violation> {
        let m = 1 - n;
        match self.nodes[m].core.as_ref() {
            Some(c) if c.role() == Role::Primary && c.address_permit(now).is_ok() => {
                Err(Violation {
                    step: self.chk.step,
                    rule: "I4",
                    what: format!(
                        "{what} while {} holds quorum by its own leases",
                        self.nodes[m].name
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn ran_alone(&self, n: usize) -> bool {
        self.witness
            .as_ref()
            .is_some_and(|w| w.arb.durable().alone_with.contains_key(self.nodes[n].name))
    }
}

/// Whether a metadata update that failed had landed all the same: one in
/// two, by a hash of the seed and the I/O's id.
fn landed_anyway(seed: u64, io: u64) -> bool {
    let h = (seed ^ io.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h >> 63 == 1
}
