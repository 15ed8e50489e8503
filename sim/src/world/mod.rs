//! One simulation: two nodes, the link, the witness, the workload and the
//! faults, advanced one random step at a time, the checker after each.
//! Its parts: `perform.rs` (the cores' actions), `workload.rs` (the
//! application's requests), `events.rs` (time, deliveries, crashes, the
//! witness), `operator.rs` (verbs), `checks.rs` (the rules checked there).

mod checks;
mod events;
mod operator;
mod perform;
mod workload;

use std::collections::VecDeque;
use std::time::Duration;

use twinblock_replicator::config::Protocol;
use twinblock_replicator::core::{
    AdaptiveConfig, ControllerConfig, Core, CoreConfig, NoQuorum, Recovered, Replication, ReqId,
    SessionId, Time,
};
use twinblock_replicator::protocol::genid::SplitBrainPolicy;
use twinblock_replicator::protocol::wire::DiskState;

use crate::checker::{self, Violation};
use crate::config::{
    adaptive_config, config, LinkLevel, Options, BUDGET, CONGESTION_FILL, DEAD_TIME,
};
use crate::node::{Link, Node};
use crate::rng::Rng;
use crate::witness;

/// One simulation.
pub struct Sim {
    pub opts: Options,
    pub rng: Rng,
    pub now: Time,
    pub nodes: [Node; 2],
    pub protocol: Protocol,
    pub(crate) checksum: bool,
    /// Other geometry for some seeds: (al_extents, chunk_blocks, window,
    /// checkpoint_chunks, max_lag).
    pub(crate) tuning: Option<(usize, u64, usize, u64, u64)>,
    pub(crate) policy: SplitBrainPolicy,
    pub(crate) link: Option<Link>,
    pub(crate) next_sid: SessionId,
    pub(crate) connect_at: Option<Time>,
    pub(crate) partition_until: Time,
    pub(crate) calm_until: Time,
    /// The calm period under way: its start and the link it began with.
    pub(crate) calm: Option<(Time, SessionId, (u64, u64))>,
    pub(crate) next_req: ReqId,
    pub(crate) next_uid: u64,
    /// Error rate: one in `err_rate` I/Os fails (0: none).
    pub(crate) err_rate: u64,
    pub(crate) chk: checker::Checker,
    pub(crate) log: Vec<String>,
    /// Deferred link-down notifications (node, sid).
    pub(crate) downs: VecDeque<(usize, SessionId)>,
    /// Controller seeds: the failover controller decides the roles, with a
    /// witness (the operator never promotes).
    pub(crate) witness: Option<witness::Witness>,
    /// Data replaced or given up so far: a node or a disk replaced, a
    /// disk forced that was not UpToDate, `discard-my-data`. A node's data
    /// may then lack what it ran alone with, and the witness refuse it.
    pub(crate) data_replaced: u32,
    pub(crate) on_no_quorum: NoQuorum,
    /// A violation found while advancing (reported by the step).
    pub(crate) pending_violation: Option<Violation>,
    /// The generations `primary --force` made that were undone, per node
    /// (given up before the first record was durable): a start on one of
    /// them brought back a force the operator was told failed.
    pub(crate) undone_forces: [Vec<u64>; 2],
    /// Adaptive seeds: the link's delay level (None: other seeds).
    pub level: Option<LinkLevel>,
    /// Adaptive seeds: the latency budget.
    pub budget: Duration,
    /// Adaptive seeds: `congestion_fill` (half of them, seeds 10k+6).
    pub congestion_fill: Option<u64>,
    /// Each node's replication state as last noted.
    pub(crate) noted_repl: [Replication; 2],
    /// A promotion asked of the peer (force, the disk at the ask, held
    /// back by a loss then): checked when it happens.
    pub(crate) asked_promotion: [Option<(bool, DiskState, bool)>; 2],
    /// Controller seeds: `primary --force` asked the witness (the disk
    /// then, held back by a loss then); the promotion comes with its grant.
    pub(crate) forced_claim: [Option<(DiskState, bool)>; 2],
    /// The operator runs `primary --force` on this node again then (it
    /// was refused with a wait).
    pub(crate) force_again: Option<(usize, Time)>,
    /// `disk-timeout` seeds: the cores' limit (a disk may stall: its store
    /// operations never complete).
    pub(crate) disk_timeout: Option<Duration>,
    /// Slow-metadata seeds (48k+5, 48k+8, 48k+44: controller seeds, whose
    /// failovers come fast; not adaptive): draws of their own for
    /// the Secondary's activity-log updates that lag (`perform.rs`), so
    /// the other seeds' courses stay as they were.
    pub(crate) slow_al: Option<Rng>,
    /// The metadata sits on the data's device: a stall hangs its updates
    /// too (else it is on a device of its own that keeps answering).
    pub(crate) meta_on_disk: bool,
    /// Pause seeds ([`Sim::pause_seed`]): draws of their own for whole
    /// nodes paused (SIGSTOP, a VM's steal time, a long stall) while time
    /// moves on, so the other seeds' courses stay as they were.
    pub(crate) pause_rng: Option<Rng>,
    /// Whether each node's disk is a sparse file whose holes its store
    /// tells (`SEEK_DATA`), else a block device: a resync read that may
    /// be a hole is answered as one where its blocks are (`perform.rs`).
    pub(crate) sparse: [bool; 2],
    /// Draws of their own for those answers, so the other draws of a seed
    /// stay as they were (a seed's course still moves where a hole is
    /// answered: a hole costs the resync's rate nothing).
    pub(crate) holes: Rng,
}

/// The simulator's `disk-timeout` (store operations take at most ~3 ms).
pub const DISK_TIMEOUT: Duration = Duration::from_millis(300);

impl Sim {
    pub fn new(opts: Options) -> Sim {
        let mut rng = Rng::new(opts.seed);
        let protocol = match rng.below(3) {
            0 => Protocol::A,
            1 => Protocol::B,
            _ => Protocol::C,
        };
        let checksum = rng.chance(1, 3);
        let err_rate = match rng.below(8) {
            0..=3 => 0,
            4 | 5 => 2000,
            6 => 300,
            _ => 60,
        };
        let tuning = rng.chance(1, 3).then(|| {
            (
                1 + rng.below(4) as usize,
                [1, 2, 4, 8][rng.below(4) as usize],
                1 + rng.below(4) as usize,
                [1, 2, 4][rng.below(3) as usize],
                [256, 2048, 1 << 20][rng.below(3) as usize],
            )
        });
        let policy = match rng.below(8) {
            0 => SplitBrainPolicy::DiscardYoungerPrimary,
            1 => SplitBrainPolicy::DiscardLeastChanges,
            2 => SplitBrainPolicy::DiscardZeroChanges,
            _ => SplitBrainPolicy::Disconnect,
        };
        // (Three disks in four are sparse files.)
        let mut holes = Rng::new(opts.seed ^ 0x0040_15E5);
        let sparse = [holes.chance(3, 4), holes.chance(3, 4)];
        let mut sim = Sim {
            sparse,
            holes,
            policy,
            tuning,
            rng,
            now: Duration::ZERO,
            nodes: [Node::new("a"), Node::new("b")],
            protocol,
            checksum,
            link: None,
            next_sid: 1,
            connect_at: None,
            partition_until: Duration::ZERO,
            calm_until: Duration::ZERO,
            calm: None,
            next_req: 1,
            next_uid: 1,
            err_rate,
            chk: checker::Checker::new(),
            log: Vec::new(),
            downs: VecDeque::new(),
            // One seed in three (without drawing from the seed's stream).
            witness: (opts.seed % 3 == 2)
                .then(|| witness::Witness::new(DEAD_TIME, opts.plant, opts.seed)),
            data_replaced: 0,
            on_no_quorum: if opts.seed % 6 == 5 { NoQuorum::Freeze } else { NoQuorum::IoError },
            pending_violation: None,
            undone_forces: [Vec::new(), Vec::new()],
            // One seed in five (overlapping the controller's one in three
            // at seeds 15k+11).
            level: (opts.seed % 5 == 1).then_some(LinkLevel::Low),
            budget: BUDGET,
            congestion_fill: None,
            noted_repl: [Replication::Off; 2],
            asked_promotion: [None; 2],
            forced_claim: [None; 2],
            force_again: None,
            // One seed in four.
            disk_timeout: (opts.seed % 4 == 3).then_some(DISK_TIMEOUT),
            // Of those, one in two (seeds 8k+7) with the metadata apart.
            meta_on_disk: opts.seed % 8 != 7,
            slow_al: (matches!(opts.seed % 48, 5 | 8 | 44) && opts.seed % 5 != 1)
                .then(|| Rng::new(opts.seed ^ 0x51_0A1)),
            pause_rng: Sim::pause_seed(opts.seed).then(|| Rng::new(opts.seed ^ 0x0570_BBED)),
            opts,
        };
        if sim.level.is_some() {
            // Tighter budgets too: the peer's own I/O then crosses them
            // now and then, on any link.
            sim.budget = Duration::from_millis([4, 8, 12, 20][sim.rng.below(4) as usize]);
            sim.protocol = Protocol::Adaptive;
            sim.chk.adaptive = true;
            // (From the seed, not drawn: the other seeds' draws stay as
            // they were.) Two of eight requests' most bytes in flight.
            sim.congestion_fill = (sim.opts.seed % 10 == 6).then_some(CONGESTION_FILL);
            sim.note(format!(
                "adaptive mode, budget {:?}, congestion_fill {:?}, the link moving around it",
                sim.budget, sim.congestion_fill
            ));
        }
        sim.chk.ctl_mode = sim.witness.is_some();
        sim.chk.protocol = sim.protocol;
        if sim.witness.is_some() {
            sim.note(format!("controller with a witness, on-no-quorum {:?}", sim.on_no_quorum));
        }
        sim.note(format!("protocol {protocol}, checksum {checksum}, err_rate {err_rate}, tuning {tuning:?}, {policy:?}, sparse {sparse:?}"));
        for n in 0..2 {
            sim.start(n);
        }
        sim
    }

    /// The seeds whose nodes may pause (2 in 31, by their number: none
    /// the tests name, so their courses stay as they were).
    pub fn pause_seed(seed: u64) -> bool {
        matches!(seed % 31, 6 | 28)
    }

    pub(crate) fn note(&mut self, s: String) {
        if self.opts.trace {
            eprintln!("[{:>10.4}] {s}", self.now.as_secs_f64());
        }
        self.log.push(format!("[{:.4}] {s}", self.now.as_secs_f64()));
        if self.log.len() > 400 && !self.opts.trace {
            self.log.remove(0);
        }
    }

    pub fn recent(&self) -> &[String] {
        &self.log
    }

    pub(crate) fn cfg(&self, n: usize) -> CoreConfig {
        let (me, peer) = if n == 0 { ("a", "b") } else { ("b", "a") };
        let mut c = config(me, peer, self.protocol, self.checksum, self.opts.plant);
        c.adaptive = AdaptiveConfig {
            congestion_fill: self.congestion_fill,
            ..adaptive_config(self.budget)
        };
        c.split_brain_policy = self.policy;
        c.disk_timeout = self.disk_timeout;
        if let Some((al, chunk, window, checkpoint, lag)) = self.tuning {
            c.al_extents = al;
            c.chunk_blocks = chunk;
            c.window = window;
            c.checkpoint_chunks = checkpoint;
            c.max_lag = lag;
        }
        if self.witness.is_some() {
            c.controller = Some(ControllerConfig {
                dead_time: DEAD_TIME,
                heartbeat: Duration::from_millis(200),
                on_no_quorum: self.on_no_quorum,
            });
        }
        c
    }

    /// Starts (or restarts) node `n` from what it persisted.
    pub(crate) fn start(&mut self, n: usize) {
        let rec = Recovered {
            meta: self.nodes[n].meta.record.clone(),
            bitmap: self.nodes[n].meta.bitmap.clone(),
            al: self.nodes[n].meta.al.iter().copied().collect(),
            disk_created: self.nodes[n].recreated,
            // A power loss is a new boot (the page cache is gone).
            boot: self.chk.power_losses[n] + 1,
        };
        let seed = self.rng.next();
        let core = Core::new(self.cfg(n), rec, self.now, seed);
        self.note(format!(
            "{} starts: disk {:?}, gen {:x?}",
            self.nodes[n].name,
            core.disk(),
            core.gen()
        ));
        if self.undone_forces[n].contains(&core.gen().current) {
            self.pending_violation.get_or_insert(Violation {
                step: self.chk.step,
                rule: "undone-force",
                what: format!(
                    "{} starts on generation {:x}, made by a `primary --force` it was told failed",
                    self.nodes[n].name,
                    core.gen().current
                ),
            });
        }
        self.nodes[n].core = Some(core);
        self.nodes[n].hooked = None;
        self.nodes[n].reigned_at = None;
        self.nodes[n].unhooked_since = None;
        self.nodes[n].restart_at = None;
        self.drain(n);
        if self.witness.as_ref().is_some_and(|w| w.alive && w.up[n]) {
            if let Some(c) = self.nodes[n].core.as_mut() {
                c.handle_witness_link(self.now, true);
            }
            self.drain(n);
        }
    }

    /// One random step.
    pub(crate) fn step(&mut self) -> Result<(), Violation> {
        // Calm periods: no workload and no trouble, so that syncs finish
        // and the pair goes quiescent (I2 has something to check).
        if self.now < self.calm_until {
            self.advance();
            return self.checked();
        }
        if let Some((start, sid, sig)) = self.calm.take() {
            self.liveness(start, sid, sig)?;
        }
        self.first_setup_again()?;
        if self.rng.chance(1, 250) {
            let longer = if self.level.is_some() { 2000 } else { 0 };
            self.calm_until = self.now + Duration::from_millis(300 + self.rng.below(3000 + longer));
            if self.level.is_some() {
                // A calm link: the pair must come back in sync.
                self.set_level(LinkLevel::Low);
            }
            // (A node still paused: the calm proves nothing of liveness.)
            let working = self.link.as_ref().is_some_and(|l| !l.partitioned)
                && !self.nodes.iter().any(|n| n.paused());
            let sig = self.progress();
            self.calm = self.link_sid().filter(|_| working).map(|sid| (self.now, sid, sig));
            self.note("calm".into());
            self.advance();
            return self.checked();
        }
        if self.level.is_some() && self.rng.chance(1, 60) {
            let l = match self.rng.below(20) {
                0..=4 => LinkLevel::Low,
                5..=8 => LinkLevel::HalfBudget,
                9..=12 => LinkLevel::AtBudget,
                13..=16 => LinkLevel::NearBudget,
                17..=18 => LinkLevel::High,
                _ => LinkLevel::BelowBudget,
            };
            self.set_level(l);
        }
        if self.disk_timeout.is_some() && self.rng.chance(1, 3000) {
            let n = self.rng.below(2) as usize;
            if self.nodes[n].alive() && !self.nodes[n].stalled {
                self.note(format!("{}: the disk stalls", self.nodes[n].name));
                self.nodes[n].stalled = true;
            }
        }
        let primary = self.nodes.iter().position(|n| n.is_primary());
        if let Some((n, d)) = self.pause_rng.as_mut().and_then(|r| pause_draw(r, primary)) {
            self.pause(n, d);
        }
        if let Some((n, d)) = self.witness.as_mut().and_then(|w| w.late_silence(primary)) {
            self.late_silence(n, d);
        }
        if let Some(d) = self.witness.as_mut().and_then(|w| w.isolation()) {
            self.isolate_primary(d);
        }
        let r = self.rng.below(1000);
        if r < 700 {
            self.advance();
        } else if r < 900 {
            // Workload on the Primary (sometimes on the other node).
            let p = self.nodes.iter().position(|n| n.is_primary());
            let n = match p {
                Some(p) if !self.rng.chance(1, 20) => p,
                _ => self.rng.below(2) as usize,
            };
            if self.nodes[n].paused() {
                // The request waits in the paused node's NBD socket.
                self.nodes[n].queued_submits += 1;
            } else {
                self.submit(n);
            }
        } else if r < 950 {
            self.operator()?;
        } else if r < 960 {
            let n = self.rng.below(2) as usize;
            let power = self.rng.chance(1, 3);
            self.crash(n, power)?;
        } else if r < 967 && self.witness.is_some() && self.rng.chance(1, 3) {
            self.witness_trouble();
        } else if r < 967 {
            // Link trouble.
            if self.link.is_some() {
                if self.rng.chance(1, 2) {
                    self.note("link cut".into());
                    self.link_down(None);
                    self.drain(0);
                    self.drain(1);
                } else {
                    self.note("silent partition".into());
                    self.partition_until =
                        self.now + Duration::from_millis(100 + self.rng.below(4000));
                    if let Some(l) = self.link.as_mut() {
                        l.partitioned = true;
                    }
                }
            }
        } else {
            self.advance();
        }
        self.checked()
    }

    /// Node `n`'s whole process pauses for `d` (if it runs and is not
    /// paused already): it handles nothing until then.
    pub(crate) fn pause(&mut self, n: usize, d: Duration) {
        if !self.nodes[n].alive() || self.nodes[n].paused() {
            return;
        }
        self.chk.stats.pauses += 1;
        self.note(format!("{} PAUSED for {d:?}", self.nodes[n].name));
        self.nodes[n].paused_until = Some(self.now + d);
    }

    /// Node `n`'s link to the witness goes silent for `d`, holding what
    /// is in flight (late seeds).
    pub(crate) fn late_silence(&mut self, n: usize, d: Duration) {
        let now = self.now;
        let Some(w) = self.witness.as_mut() else { return };
        if !w.up[n] || now < w.silent_until[n] {
            return;
        }
        w.silent_until[n] = now + d;
        w.late[n] = true;
        self.note(format!(
            "{}: witness link silent for {d:?} (what is in flight arrives late)",
            self.nodes[n].name
        ));
    }

    /// Adaptive seeds: the link's delay changes.
    pub fn set_level(&mut self, l: LinkLevel) {
        if self.level != Some(l) {
            self.note(format!("link level {l:?}"));
            self.level = Some(l);
        }
    }

    /// One frame's one-way delay at level `l`.
    pub(crate) fn link_delay(&mut self, l: LinkLevel) -> Duration {
        let half = self.budget.as_micros() as u64 / 2;
        let us = match l {
            LinkLevel::Low => 100 + self.rng.below(1000),
            LinkLevel::HalfBudget => (half / 2 + self.rng.below(500)).saturating_sub(250),
            LinkLevel::AtBudget => half,
            LinkLevel::NearBudget => (half + self.rng.below(1000)).saturating_sub(500),
            LinkLevel::BelowBudget => half * 76 / 100 + self.rng.below(half * 4 / 100),
            LinkLevel::High => 25_000 + self.rng.below(40_000),
        };
        Duration::from_micros(us)
    }

    pub fn replication(&self, n: usize) -> Replication {
        self.nodes[n].core.as_ref().map_or(Replication::Off, |c| c.replication())
    }

    /// No frames in flight and no I/O outstanding anywhere.
    pub fn idle(&self) -> bool {
        self.link.as_ref().is_none_or(|l| l.queue.iter().all(|q| q.is_empty()))
            && self.nodes.iter().all(|n| n.ios.is_empty())
    }

    pub fn link_sid(&self) -> Option<SessionId> {
        self.link.as_ref().map(|l| l.sid)
    }

    /// Runs the whole seed.
    pub fn run(&mut self) -> Result<(), Violation> {
        for i in 0..self.opts.steps {
            self.chk.step = i;
            self.step()?;
        }
        Ok(())
    }
}

/// A pause seed's draw for this step: which node pauses (the Primary
/// two times in three, if there is one), and for how long (one step in
/// 400; half of them longer than the controller's dead time, so that its
/// peer takes over meanwhile).
fn pause_draw(r: &mut Rng, primary: Option<usize>) -> Option<(usize, Duration)> {
    if !r.chance(1, 400) {
        return None;
    }
    let n = match primary {
        Some(p) if !r.chance(1, 3) => p,
        _ => r.below(2) as usize,
    };
    let ms = if r.chance(1, 2) {
        DEAD_TIME.as_millis() as u64 + r.below(4000)
    } else {
        20 + r.below(1000)
    };
    Some((n, Duration::from_millis(ms)))
}
