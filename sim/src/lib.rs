//! twinblock-sim: a deterministic simulator of two nodes running the real
//! node core (`twinblock_replicator::core::Core`) over a simulated network
//! and simulated disks, driven by one seed (shared/DESIGN.md "The node core
//! and how it is proven").
//!
//! - network: one link at a time, a FIFO frame queue per direction with a
//!   random delay; cuts (noticed by the shells, or silent partitions the
//!   cores must detect by their timeout); at a crash a random prefix of the
//!   frames in flight to the peer arrives, the rest is lost;
//! - disks: a page cache over a durable image, per block with a version;
//!   Flush makes every write emitted before it durable at its completion,
//!   FUA makes its own blocks durable; a process crash keeps the cache, a
//!   power loss keeps, per unflushed block, the cached or the durable
//!   version at random; EIO/ENOSPC on any store op or metadata update;
//! - metadata: the last successful Persist of each kind (an update in
//!   flight at a crash is kept or not, at random, atomically);
//! - clock: simulated; `handle_timeout` at `poll_timeout` deadlines;
//! - workload on whichever node is Primary (self-describing writes: every
//!   block of write `id` holds `id` and its block number), operator verbs,
//!   crashes and power loss of either node.
//!
//! The checker ([`check`]) runs after every step; see `checker.rs`.

mod checker;
pub mod rng;
mod witness;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use twinblock_replicator::arbiter::Refusal;
use twinblock_replicator::config::Protocol;
use twinblock_replicator::core::{
    Action, AdaptiveConfig, Connection, ControllerConfig, Core, CoreConfig, IoError, IoId,
    MetaRecord, NoQuorum, Persist, Plant, Recovered, Replication, ReplyError, ReqId, SessionId,
    StoreOp, Time, PAGE_WORDS,
};
use twinblock_replicator::protocol::genid::SplitBrainPolicy;
use twinblock_replicator::protocol::wire::{DiskState, Message, Role};

pub use checker::{Stats, Violation};
use rng::Rng;

pub const BLOCK: u64 = 64;
pub const EXTENT: u64 = 1024;
pub const SIZE: u64 = 16 * 1024;
pub const BLOCKS: usize = (SIZE / BLOCK) as usize;
/// The unit of self-describing content (writes may be this fine).
pub const CELL: u64 = 16;
pub const CELLS: usize = (SIZE / CELL) as usize;
/// Steps per seed unless told otherwise.
pub const DEFAULT_STEPS: usize = 1000;

/// What one run is.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    pub steps: usize,
    pub plant: Plant,
    /// Print every step.
    pub trace: bool,
}

/// The core's configuration in the simulator's tiny geometry.
pub fn config(
    me: &str,
    peer: &str,
    protocol: Protocol,
    checksum: bool,
    plant: Plant,
) -> CoreConfig {
    CoreConfig {
        resource: "sim".into(),
        me: me.into(),
        peer: peer.into(),
        size: SIZE,
        block: BLOCK,
        extent: EXTENT,
        protocol,
        max_lag: 2048,
        al_extents: 3,
        timeout: Duration::from_secs(2),
        ping_interval: Duration::from_millis(250),
        disk_timeout: None,
        resync_rate: 64 * 1024,
        resync_checksum: checksum,
        split_brain_policy: SplitBrainPolicy::Disconnect,
        chunk_blocks: 4,
        window: 4,
        checkpoint_chunks: 2,
        controller: None,
        adaptive: Default::default(),
        plant,
    }
}

/// Adaptive seeds: the latency budget and the hold rules (small, so that
/// a seed's few simulated seconds see every transition).
/// (The peer's own metadata I/O — activity-log and bitmap updates, up to
/// ~3 ms each in the simulator — counts against the budget too.)
pub const BUDGET: Duration = Duration::from_millis(20);
/// `congestion_fill` of the adaptive seeds that set it (10k+6): about two
/// of the largest writes (eight may be in flight).
pub const CONGESTION_FILL: u64 = 1536;

pub fn adaptive_config(budget: Duration) -> AdaptiveConfig {
    AdaptiveConfig {
        budget,
        hold: Duration::from_millis(400),
        max_hold: Duration::from_millis(1600),
        congestion_fill: None,
    }
}

/// The link's one-way delay in adaptive seeds, moving around the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkLevel {
    /// 0.1-1.1 ms: well within the budget.
    Low,
    /// Round trips of about budget/2 (the hysteresis threshold), +-0.5 ms.
    HalfBudget,
    /// Round trips of exactly the budget.
    AtBudget,
    /// Round trips hovering at the budget, +-1 ms.
    NearBudget,
    /// Round trips of 76-80% of the budget: above the three quarters of it
    /// that the quicker ways out of Ahead need, within seven eighths (C
    /// fits the budget if the peer's disk adds less than the rest).
    BelowBudget,
    /// 25-65 ms one way.
    High,
}

/// The controller's timing in the simulator (lease = dead_time / 2).
pub const DEAD_TIME: Duration = Duration::from_millis(1500);

// ----- the disk -----

/// A simulated disk: page cache over a durable image, per block.
#[derive(Clone)]
pub struct Disk {
    pub cache: Vec<u8>,
    pub durable: Vec<u8>,
    /// Version of each block in the cache / on disk (a write bumps it).
    cache_ver: Vec<u64>,
    durable_ver: Vec<u64>,
    next_ver: u64,
}

/// Blocks (number, version, content) an I/O makes durable when it completes.
type Durable = Vec<(usize, u64, Vec<u8>)>;

impl Disk {
    fn new() -> Disk {
        Disk {
            cache: vec![0; SIZE as usize],
            durable: vec![0; SIZE as usize],
            cache_ver: vec![0; BLOCKS],
            durable_ver: vec![0; BLOCKS],
            next_ver: 1,
        }
    }

    pub fn block(&self, b: usize) -> &[u8] {
        &self.cache[b * BLOCK as usize..(b + 1) * BLOCK as usize]
    }

    pub fn cell(&self, c: usize) -> &[u8] {
        &self.cache[c * CELL as usize..(c + 1) * CELL as usize]
    }

    /// Writes into the cache (block-aligned in the simulator); returns the
    /// blocks as now cached (for FUA).
    fn write(&mut self, off: u64, data: &[u8]) -> Durable {
        let (o, n) = (off as usize, data.len());
        self.cache[o..o + n].copy_from_slice(data);
        self.touched(off, n as u64)
    }

    fn touched(&mut self, off: u64, len: u64) -> Durable {
        let mut out = Vec::new();
        if len == 0 {
            return out;
        }
        let first = (off / BLOCK) as usize;
        let last = ((off + len - 1) / BLOCK) as usize;
        for b in first..=last {
            self.cache_ver[b] = self.next_ver;
            self.next_ver += 1;
            out.push((b, self.cache_ver[b], self.block(b).to_vec()));
        }
        out
    }

    fn zero(&mut self, off: u64, len: u64) -> Durable {
        let (o, n) = (off as usize, len as usize);
        self.cache[o..o + n].iter_mut().for_each(|x| *x = 0);
        self.touched(off, len)
    }

    /// Every block whose cache differs from the durable image (for a flush).
    fn unflushed(&self) -> Durable {
        (0..BLOCKS)
            .filter(|&b| self.cache_ver[b] != self.durable_ver[b])
            .map(|b| (b, self.cache_ver[b], self.block(b).to_vec()))
            .collect()
    }

    fn make_durable(&mut self, blocks: &Durable) {
        for (b, ver, data) in blocks {
            if *ver > self.durable_ver[*b] {
                self.durable_ver[*b] = *ver;
                let o = *b * BLOCK as usize;
                self.durable[o..o + BLOCK as usize].copy_from_slice(data);
            }
        }
    }

    /// Power loss: every block not durable keeps its cached or its durable
    /// version, at random.
    fn power_loss(&mut self, rng: &mut Rng) {
        for b in 0..BLOCKS {
            if self.cache_ver[b] != self.durable_ver[b] && rng.chance(1, 2) {
                let o = b * BLOCK as usize;
                let data = self.cache[o..o + BLOCK as usize].to_vec();
                self.durable[o..o + BLOCK as usize].copy_from_slice(&data);
                self.durable_ver[b] = self.cache_ver[b];
            }
        }
        self.cache.copy_from_slice(&self.durable);
        self.cache_ver.copy_from_slice(&self.durable_ver);
    }
}

// ----- persisted metadata -----

#[derive(Clone, Default)]
pub struct Meta {
    pub record: Option<MetaRecord>,
    pub bitmap: Option<Vec<u64>>,
    pub al: BTreeSet<u64>,
}

impl Meta {
    fn apply(&mut self, p: &Persist) {
        match p {
            Persist::Meta(m) => self.record = Some(m.clone()),
            Persist::Bitmap { pages } => {
                let words = BLOCKS.div_ceil(64);
                let bm = self.bitmap.get_or_insert_with(|| vec![0; words]);
                for (page, w) in pages {
                    let at = *page as usize * PAGE_WORDS;
                    for (i, x) in w.iter().enumerate() {
                        if at + i < bm.len() {
                            bm[at + i] = *x;
                        }
                    }
                }
            }
            Persist::Al { remove, add } => {
                for e in remove {
                    self.al.remove(e);
                }
                self.al.extend(add.iter().copied());
            }
        }
    }

    pub fn bit(&self, b: usize) -> bool {
        self.bitmap.as_ref().is_some_and(|w| w[b / 64] & (1 << (b % 64)) != 0)
    }
}

// ----- nodes -----

/// An I/O the shell performed, waiting to report its completion.
struct PendingIo {
    io: IoId,
    at: Time,
    result: Result<Option<Bytes>, IoError>,
    durable: Durable,
    persist: Option<Persist>,
    /// An application write, zero or flush of a Primary: once the disk
    /// has failed, it may hang (never complete; see `Node::hung`).
    may_hang: bool,
}

/// An application request outstanding on a node.
#[derive(Clone)]
pub(crate) struct AppReq {
    pub kind: AppKind,
    /// Peer confirmation can be trusted for it: the node was connected
    /// (Running) when it was submitted and the link never changed since.
    pub linked: Option<(SessionId, u64)>,
    /// For flushes: the floors at submission.
    pub snapshot: Option<checker::FlushSnap>,
    /// Adaptive mode: the node's mode switches at submission (a switch
    /// before the reply, or a reply while Ahead: not confirmed by the peer).
    pub switches: u64,
    /// The peer's power losses at submission.
    pub peer_power: u64,
    /// When it was submitted.
    pub at: Time,
}

#[derive(Clone, Debug)]
pub(crate) enum AppKind {
    Write {
        id: u64,
        off: u64,
        len: u64,
        fua: bool,
    },
    Zero {
        id: u64,
        off: u64,
        len: u64,
        fua: bool,
    },
    Flush,
    /// A `twinblock bench` probe (scratch area: no device change to check).
    Probe(twinblock_replicator::core::ProbeMode),
}

pub struct Node {
    pub name: &'static str,
    pub core: Option<Core>,
    pub disk: Disk,
    pub meta: Meta,
    ios: Vec<PendingIo>,
    /// I/O of a failed disk that never completes (until the process
    /// ends): a disk that hangs after its first error.
    hung: Vec<PendingIo>,
    /// Since when the core's disk is Failed (this process).
    failed_since: Option<Time>,
    /// The disk stalled: no store operation completes any more (until
    /// the process ends).
    stalled: bool,
    /// When the first store operation issued to the stalled disk was.
    first_hung: Option<Time>,
    pub(crate) reqs: HashMap<ReqId, AppReq>,
    /// Every request answered (a second answer is a violation).
    answered: std::collections::HashSet<ReqId>,
    /// Counts link changes (up or down) seen by this node.
    pub link_gen: u64,
    /// The disk file was recreated and no metadata was saved since.
    recreated: bool,
    restart_at: Option<Time>,
}

impl Node {
    fn new(name: &'static str) -> Node {
        Node {
            name,
            core: None,
            disk: Disk::new(),
            meta: Meta::default(),
            ios: Vec::new(),
            hung: Vec::new(),
            failed_since: None,
            stalled: false,
            first_hung: None,
            reqs: HashMap::new(),
            answered: Default::default(),
            link_gen: 0,
            recreated: true,
            restart_at: None,
        }
    }

    pub fn alive(&self) -> bool {
        self.core.is_some()
    }

    /// The disk was recreated and no metadata record was saved since (the
    /// shell reports `disk_created` until then).
    pub fn recreated_pending(&self) -> bool {
        self.recreated
    }

    pub fn is_primary(&self) -> bool {
        self.core.as_ref().is_some_and(|c| c.role() == Role::Primary)
    }
}

/// The link between the nodes.
struct Link {
    sid: SessionId,
    /// Frames in flight, per direction (index: the receiving node).
    queue: [VecDeque<(Time, Message)>; 2],
    /// Silently partitioned: nothing moves (the stream stalls, as a
    /// reliable stream does), nobody is told; it heals, or a timeout
    /// breaks the link and what was in flight is lost.
    partitioned: bool,
}

/// One simulation.
pub struct Sim {
    pub opts: Options,
    pub rng: Rng,
    pub now: Time,
    pub nodes: [Node; 2],
    pub protocol: Protocol,
    checksum: bool,
    /// Other geometry for some seeds: (al_extents, chunk_blocks, window,
    /// checkpoint_chunks, max_lag).
    tuning: Option<(usize, u64, usize, u64, u64)>,
    policy: SplitBrainPolicy,
    link: Option<Link>,
    next_sid: SessionId,
    connect_at: Option<Time>,
    partition_until: Time,
    calm_until: Time,
    /// The calm period under way: its start and the link it began with.
    calm: Option<(Time, SessionId, (u64, u64))>,
    next_req: ReqId,
    next_uid: u64,
    /// Error rate: one in `err_rate` I/Os fails (0: none).
    err_rate: u64,
    pub(crate) chk: checker::Checker,
    log: Vec<String>,
    /// Deferred link-down notifications (node, sid).
    downs: VecDeque<(usize, SessionId)>,
    /// Controller seeds: the failover controller decides the roles, with a
    /// witness (the operator never promotes).
    witness: Option<witness::Witness>,
    /// Data replaced or given up so far: a node or a disk replaced, a
    /// disk forced that was not UpToDate, `discard-my-data`. A node's data
    /// may then lack what it ran alone with, and the witness refuse it.
    data_replaced: u32,
    on_no_quorum: NoQuorum,
    /// A violation found while advancing (reported by the step).
    pending_violation: Option<Violation>,
    /// Adaptive seeds: the link's delay level (None: other seeds).
    pub level: Option<LinkLevel>,
    /// Adaptive seeds: the latency budget.
    pub budget: Duration,
    /// Adaptive seeds: `congestion_fill` (half of them, seeds 10k+6).
    pub congestion_fill: Option<u64>,
    /// Each node's replication state as last noted.
    noted_repl: [Replication; 2],
    /// A promotion asked of the peer (force, the disk at the ask): checked
    /// when it happens.
    asked_promotion: [Option<(bool, DiskState)>; 2],
    /// `disk-timeout` seeds: the cores' limit (a disk may stall: its store
    /// operations never complete).
    disk_timeout: Option<Duration>,
    /// The metadata sits on the data's device: a stall hangs its updates
    /// too (else it is on a device of its own that keeps answering).
    meta_on_disk: bool,
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
        let mut sim = Sim {
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
            witness: (opts.seed % 3 == 2).then(|| witness::Witness::new(DEAD_TIME, opts.plant)),
            data_replaced: 0,
            on_no_quorum: if opts.seed % 6 == 5 { NoQuorum::Freeze } else { NoQuorum::IoError },
            pending_violation: None,
            // One seed in five (overlapping the controller's one in three
            // at seeds 15k+11).
            level: (opts.seed % 5 == 1).then_some(LinkLevel::Low),
            budget: BUDGET,
            congestion_fill: None,
            noted_repl: [Replication::Off; 2],
            asked_promotion: [None; 2],
            // One seed in four.
            disk_timeout: (opts.seed % 4 == 3).then_some(DISK_TIMEOUT),
            // Of those, one in two (seeds 8k+7) with the metadata apart.
            meta_on_disk: opts.seed % 8 != 7,
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
        if sim.witness.is_some() {
            sim.note(format!("controller with a witness, on-no-quorum {:?}", sim.on_no_quorum));
        }
        sim.note(format!("protocol {protocol}, checksum {checksum}, err_rate {err_rate}, tuning {tuning:?}, {policy:?}"));
        for n in 0..2 {
            sim.start(n);
        }
        sim
    }

    fn note(&mut self, s: String) {
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

    fn cfg(&self, n: usize) -> CoreConfig {
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
    fn start(&mut self, n: usize) {
        let rec = Recovered {
            meta: self.nodes[n].meta.record.clone(),
            bitmap: self.nodes[n].meta.bitmap.clone(),
            al: self.nodes[n].meta.al.iter().copied().collect(),
            disk_created: self.nodes[n].recreated,
        };
        let seed = self.rng.next();
        let core = Core::new(self.cfg(n), rec, self.now, seed);
        self.note(format!(
            "{} starts: disk {:?}, gen {:x?}",
            self.nodes[n].name,
            core.disk(),
            core.gen()
        ));
        self.nodes[n].core = Some(core);
        self.nodes[n].restart_at = None;
        self.drain(n);
        if self.witness.as_ref().is_some_and(|w| w.alive && w.up[n]) {
            if let Some(c) = self.nodes[n].core.as_mut() {
                c.handle_witness_link(self.now, true);
            }
            self.drain(n);
        }
    }

    // ----- performing actions -----

    fn fails(&mut self) -> Option<IoError> {
        if self.err_rate > 0 && self.rng.chance(1, self.err_rate) {
            Some(if self.rng.chance(1, 2) { IoError::EIO } else { IoError::ENOSPC })
        } else {
            None
        }
    }

    fn io_delay(&mut self) -> Time {
        Duration::from_micros(50 + self.rng.below(3000))
    }

    /// An I/O of node `n` on its way: it completes at its time, or never
    /// if the disk stalled (until the process ends).
    fn queue_io(&mut self, n: usize, io: PendingIo) {
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
    fn drain(&mut self, n: usize) {
        while let Some(core) = self.nodes[n].core.as_mut() {
            let Some(a) = core.poll_action() else {
                if let Some((m, sid)) = self.downs.pop_front() {
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

    fn perform(&mut self, n: usize, a: Action) {
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
                    StoreOp::Zero { offset, len, fua, .. } => {
                        if let Some(e) = err {
                            result = Err(e);
                        } else {
                            let d = self.nodes[n].disk.zero(*offset, *len);
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
                    StoreOp::Read { offset, len } => {
                        if let Some(e) = err {
                            result = Err(e);
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
                let at = self.now + self.io_delay();
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
                if let Some(w) = self.witness.as_mut().filter(|w| w.reachable(n, now)) {
                    let at = w.to_w.back().map_or(at, |(t, _, _)| (*t).max(at));
                    w.to_w.push_back((at, n, req));
                }
            }
            Action::Hook(h) => {
                let at = self.now + Duration::from_millis(1 + self.rng.below(50));
                if let Some(w) = self.witness.as_mut() {
                    w.hooks.push((at, n, h));
                } else if let Some(c) = self.nodes[n].core.as_mut() {
                    c.hook_done(self.now, h, Ok(()));
                }
            }
        }
    }

    /// The link goes away. `crashed`: the node that crashed (its frames
    /// in flight: a random prefix arrives). Both living nodes are told.
    fn link_down(&mut self, crashed: Option<usize>) {
        let Some(mut l) = self.link.take() else { return };
        self.note(format!("link {} down", l.sid));
        // A random prefix of what is in flight still arrives.
        for to in 0..2 {
            if !self.nodes[to].alive() || Some(to) == crashed {
                continue;
            }
            let q = std::mem::take(&mut l.queue[to]);
            let keep = if l.partitioned { 0 } else { self.rng.below(q.len() as u64 + 1) as usize };
            for (_, msg) in q.into_iter().take(keep) {
                if let Some(c) = self.nodes[to].core.as_mut() {
                    c.handle_frame(self.now, l.sid, msg);
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

    fn replied(&mut self, n: usize, req: ReqId, result: Result<(), ReplyError>) {
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
        if result.is_ok() {
            let confirmed = r.linked.is_some_and(|(sid, g)| {
                g == self.nodes[n].link_gen
                    && self.nodes[n].core.as_ref().and_then(|c| c.session_id()) == Some(sid)
                    && self.nodes[n].is_primary()
            }) && self.nodes[n].core.as_ref().is_some_and(|c| {
                c.status().counters.mode_switches == r.switches
                    && c.replication() != Replication::Ahead
            });
            if let Err(v) = self.chk.ack_check(self, n, &r) {
                self.pending_violation.get_or_insert(v);
            }
            if let Err(v) = self.chk.failed_disk_ack(self, n, &r, self.protocol) {
                self.pending_violation.get_or_insert(v);
            }
            if self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::Failed) {
                self.chk.stats.failed_disk_acks += 1;
            }
            self.chk.acked(n, &r, confirmed, self.protocol);
        }
    }

    // ----- the workload -----

    fn submit(&mut self, n: usize) {
        self.submit_as(n, false)
    }

    /// [`Sim::submit`], a FLUSH if `flush` (the same random draws).
    fn submit_as(&mut self, n: usize, flush: bool) {
        let Some(core) = self.nodes[n].core.as_ref() else { return };
        if self.nodes[n].reqs.len() >= 8 {
            return;
        }
        // Only a Primary replicates its requests.
        let linked = match core.session_id() {
            Some(sid)
                if core.connection() == twinblock_replicator::core::Connection::Connected
                    && core.role() == Role::Primary =>
            {
                Some((sid, self.nodes[n].link_gen))
            }
            _ => None,
        };
        let req = self.next_req;
        self.next_req += 1;
        let uid = self.next_uid;
        self.next_uid += 1;
        let r = self.rng.below(100);
        // Half the requests are block-aligned, half start and end at any
        // cell (partial blocks: the bitmap and resync work on whole ones).
        let unit = if self.rng.chance(1, 2) { BLOCK } else { CELL };
        let units = SIZE / unit;
        let scale = BLOCK / unit;
        let k = scale
            * (1 + if self.rng.chance(1, 4) { self.rng.below(12) } else { self.rng.below(3) });
        let k = if unit == CELL { k.saturating_sub(self.rng.below(scale)).max(1) } else { k };
        let first = self.rng.below(units - k + 1);
        // Hot spots: most writes go to two extents, so overlaps happen.
        let first = if self.rng.chance(2, 3) {
            (first % (40 * scale)) + if uid.is_multiple_of(2) { 0 } else { 128 * scale }
        } else {
            first
        };
        let first = first.min(units - k);
        let (off, len) = (first * unit, k * unit);
        let fua = self.rng.chance(1, 6);
        let now = self.now;
        let kind = if r < 4 {
            use twinblock_replicator::core::ProbeMode;
            let modes = [ProbeMode::A, ProbeMode::B, ProbeMode::C, ProbeMode::Link];
            AppKind::Probe(modes[self.rng.below(4) as usize])
        } else if r < 72 {
            AppKind::Write { id: uid, off, len, fua }
        } else if r < 84 {
            AppKind::Flush
        } else {
            AppKind::Zero { id: uid, off, len, fua }
        };
        let kind = if flush { AppKind::Flush } else { kind };
        let snapshot = matches!(kind, AppKind::Flush).then(|| self.chk.flush_snap(n));
        if let AppKind::Zero { id, off, len, .. } = &kind {
            self.chk.zero_submitted(*id, *off, *len);
        }
        let switches = self.nodes[n].core.as_ref().map_or(0, |c| c.status().counters.mode_switches);
        let peer_power = self.chk.power_losses[1 - n];
        self.nodes[n].reqs.insert(
            req,
            AppReq { kind: kind.clone(), linked, snapshot, switches, peer_power, at: now },
        );
        let core = self.nodes[n].core.as_mut().expect("alive");
        match kind {
            AppKind::Write { id, off, len, fua } => {
                core.write(now, req, off, payload(id, off, len), fua)
            }
            AppKind::Zero { off, len, fua, .. } => {
                if self.rng.chance(1, 2) {
                    core.trim(now, req, off, len as u32, fua)
                } else {
                    core.write_zeroes(now, req, off, len as u32, self.rng.chance(1, 2), fua)
                }
            }
            AppKind::Flush => core.flush(now, req),
            AppKind::Probe(mode) => {
                core.bench_write(now, req, mode, off % (1 << 20), payload(uid, 0, len))
            }
        }
        self.drain(n);
    }

    // ----- the steps -----

    /// The earliest scheduled event.
    fn next_event(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut min = |x: Time| t = Some(t.map_or(x, |y: Time| y.min(x)));
        for node in &self.nodes {
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
            for q in &l.queue {
                if let Some((at, _)) = q.front() {
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
        if let Some(x) = self.witness.as_ref().and_then(|w| w.next_event()) {
            min(x);
        }
        t
    }

    /// Runs the witness's earliest event due now, if any.
    fn advance_witness(&mut self) -> Result<bool, Violation> {
        let now = self.now;
        let Some(w) = self.witness.as_mut() else { return Ok(false) };
        if w.restart_at.is_some_and(|r| r <= now) {
            w.restart_at = None;
            w.alive = true;
            w.returns += 1;
            w.arb.restart(now);
            self.note("witness restarts".into());
            for n in 0..2 {
                if self.witness.as_ref().is_some_and(|w| w.up[n]) {
                    if let Some(c) = self.nodes[n].core.as_mut() {
                        c.handle_witness_link(now, true);
                    }
                    self.drain(n);
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
                    if let Some(c) = self.nodes[n].core.as_mut() {
                        c.handle_witness_link(now, true);
                    }
                    self.drain(n);
                }
                return Ok(true);
            }
        }
        let w = self.witness.as_mut().expect("witness");
        if w.to_w.front().is_some_and(|(at, _, _)| *at <= now) {
            let (_, n, req) = w.to_w.pop_front().expect("front");
            if w.reachable(n, now) {
                let before = w.arb.holder().map(str::to_owned);
                let verdict = w.arb.judge(now, &req);
                let reply = w.arb.reply(&req, &verdict);
                let after = w.arb.holder().map(str::to_owned);
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
                let at = w.from_w[n].back().map_or(at, |(t, _)| (*t).max(at));
                w.from_w[n].push_back((at, reply.clone()));
                if self.opts.trace || before != after || !reply.granted {
                    self.note(format!(
                        "witness: {} {:?} -> {} ({}), holder {:?}",
                        req.node, req.kind, reply.granted, reply.reason, after
                    ));
                }
            }
            return Ok(true);
        }
        for n in 0..2 {
            let w = self.witness.as_mut().expect("witness");
            if w.from_w[n].front().is_some_and(|(at, _)| *at <= now) {
                let (_, reply) = w.from_w[n].pop_front().expect("front");
                if !w.reachable(n, now) {
                    return Ok(true);
                }
                let Some(c) = self.nodes[n].core.as_mut() else { return Ok(true) };
                let (role, disk) = (c.role(), c.disk());
                c.handle_vote(now, now.as_millis() as u64 + 1, reply);
                let promoted = c.role() == Role::Primary && role != Role::Primary;
                self.drain(n);
                if promoted {
                    self.note(format!(
                        "{}: promoted by the controller ({disk:?})",
                        self.nodes[n].name
                    ));
                    let force = disk != DiskState::UpToDate;
                    self.chk.stats.ctl_promotions += 1;
                    self.check_promoted(n, force, disk)?;
                }
                return Ok(true);
            }
        }
        let w = self.witness.as_mut().expect("witness");
        if let Some(i) = w.hooks.iter().position(|(at, _, _)| *at <= now) {
            let (_, n, h) = w.hooks.remove(i);
            let fail = self.rng.chance(1, 10);
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

    /// Witness trouble: a cut or silent link, or a witness restart.
    fn witness_trouble(&mut self) {
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
            w.cut(n);
            self.note(format!("{}: witness link cut", self.nodes[n].name));
            if let Some(c) = self.nodes[n].core.as_mut() {
                c.handle_witness_link(now, false);
            }
            self.drain(n);
        } else if r < 8 {
            w.silent_until[n] = now + dur;
            w.cut(n);
            self.note(format!("{}: witness link silent for {dur:?}", self.nodes[n].name));
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
                if let Some(c) = self.nodes[m].core.as_mut() {
                    c.handle_witness_link(now, false);
                }
                self.drain(m);
            }
        }
    }

    /// Runs the earliest event.
    fn advance(&mut self) {
        let Some(t) = self.next_event() else {
            self.now += Duration::from_millis(10);
            return;
        };
        self.now = self.now.max(t);
        let now = self.now;
        // I/O completions (random order among equals).
        for n in 0..2 {
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
    fn maybe_schedule_connect(&mut self) {
        if self.link.is_some() || self.connect_at.is_some() || self.partition_until > self.now {
            return;
        }
        let want = self.nodes.iter().all(|n| n.core.as_ref().is_some_and(|c| c.wants_link()));
        if want {
            self.connect_at = Some(self.now + Duration::from_millis(5 + self.rng.below(300)));
        }
    }

    fn link_up(&mut self) {
        let want = self.nodes.iter().all(|n| n.core.as_ref().is_some_and(|c| c.wants_link()));
        if !want || self.link.is_some() {
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

    fn crash(&mut self, n: usize, power: bool) -> Result<(), Violation> {
        if !self.nodes[n].alive() {
            return Ok(());
        }
        self.note(format!(
            "{} {}",
            self.nodes[n].name,
            if power { "POWER LOSS" } else { "crashes" }
        ));
        self.nodes[n].core = None;
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
        self.chk.crashed(n, power);
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
            self.data_replaced += 1;
            self.chk.disk_replaced(n);
        }
        self.nodes[n].restart_at =
            Some(self.now + Duration::from_millis(50 + self.rng.below(3000)));
        Ok(())
    }

    /// The witness holds a generation node `n` ran alone with.
    fn ran_alone(&self, n: usize) -> bool {
        self.witness
            .as_ref()
            .is_some_and(|w| w.arb.durable().alone_with.contains_key(self.nodes[n].name))
    }

    /// One random step.
    fn step(&mut self) -> Result<(), Violation> {
        // Calm periods: no workload and no trouble, so that syncs finish
        // and the pair goes quiescent (I2 has something to check).
        if self.now < self.calm_until {
            self.advance();
            return self.checked();
        }
        if let Some((start, sid, sig)) = self.calm.take() {
            self.liveness(start, sid, sig)?;
        }
        if self.rng.chance(1, 250) {
            let longer = if self.level.is_some() { 2000 } else { 0 };
            self.calm_until = self.now + Duration::from_millis(300 + self.rng.below(3000 + longer));
            if self.level.is_some() {
                // A calm link: the pair must come back in sync.
                self.set_level(LinkLevel::Low);
            }
            let working = self.link.as_ref().is_some_and(|l| !l.partitioned);
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
            self.submit(n);
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

    fn checked(&mut self) -> Result<(), Violation> {
        if let Some(v) = self.pending_violation.take() {
            return Err(v);
        }
        self.maybe_schedule_connect();
        self.asked_promotions()?;
        for n in 0..2 {
            let r = self.replication(n);
            if r != self.noted_repl[n] {
                self.noted_repl[n] = r;
                if self.level.is_some() {
                    self.note(format!("{}: {r:?}", self.nodes[n].name));
                }
            }
        }
        self.failed_disk_answers()?;
        let mut chk = std::mem::replace(&mut self.chk, checker::Checker::new());
        let r = chk.observe(self);
        self.chk = chk;
        r
    }

    /// Promotions the peer granted are checked as they happen; those
    /// refused or withdrawn are forgotten.
    fn asked_promotions(&mut self) -> Result<(), Violation> {
        for n in 0..2 {
            let Some((force, disk)) = self.asked_promotion[n] else { continue };
            let Some(core) = self.nodes[n].core.as_ref() else {
                self.asked_promotion[n] = None;
                continue;
            };
            if core.role() == Role::Primary {
                self.asked_promotion[n] = None;
                self.note(format!("{}: promoted (granted by the peer)", self.nodes[n].name));
                self.check_promoted(n, force, disk)?;
            } else if core.promotion_asked().is_none() {
                self.asked_promotion[n] = None;
            }
        }
        Ok(())
    }

    /// The checker's rules for a promotion of node `n` that just happened.
    fn check_promoted(&mut self, n: usize, force: bool, disk: DiskState) -> Result<(), Violation> {
        let mut chk = std::mem::replace(&mut self.chk, checker::Checker::new());
        let r = chk.promoted(self, n, force, disk);
        self.chk = chk;
        r
    }

    /// A node whose disk failed answers every request within
    /// `FAILED_ANSWER` of the failure or of its submission, whichever is
    /// later: its disk decides nothing any more (it may hang), the peer's
    /// part does. Without the controller (with it, quorum may hold a
    /// reply as long as it is lost).
    fn failed_disk_answers(&mut self) -> Result<(), Violation> {
        const FAILED_ANSWER: Duration = Duration::from_secs(2);
        for n in 0..2 {
            // `disk-timeout`: a store operation without a completion for
            // that long fails the disk (then the next one issued to the
            // stalled disk counts: a Failed disk may take a sync again).
            if self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::Failed) {
                self.nodes[n].first_hung = None;
            }
            if let (Some(limit), Some(first), Some(core)) =
                (self.disk_timeout, self.nodes[n].first_hung, self.nodes[n].core.as_ref())
            {
                if core.disk() != DiskState::Failed && first + limit < self.now {
                    return Err(Violation {
                        step: self.chk.step,
                        rule: "disk-timeout",
                        what: format!(
                            "{}: an operation on the disk hangs since {} ms (disk-timeout {} ms), the \
                             disk is {:?}",
                            self.nodes[n].name,
                            (self.now - first).as_millis(),
                            limit.as_millis(),
                            core.disk()
                        ),
                    });
                }
            }
            let failed = self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::Failed);
            if !failed {
                self.nodes[n].failed_since = None;
                continue;
            }
            let since = *self.nodes[n].failed_since.get_or_insert(self.now);
            if self.witness.is_some() {
                continue;
            }
            let late = self.nodes[n].reqs.iter().find(|(_, r)| {
                !matches!(r.kind, AppKind::Probe(_)) && r.at.max(since) + FAILED_ANSWER < self.now
            });
            if let Some((req, r)) = late {
                return Err(Violation {
                    step: self.chk.step,
                    rule: "failed disk answers",
                    what: format!(
                        "{}: request {req} ({:?}) unanswered {} ms after its disk failed",
                        self.nodes[n].name,
                        r.kind,
                        (self.now - r.at.max(since)).as_millis()
                    ),
                });
            }
        }
        Ok(())
    }

    fn operator(&mut self) -> Result<(), Violation> {
        let mut n = self.rng.below(2) as usize;
        let r = self.rng.below(100);
        if r < 40 && !self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::UpToDate) {
            // The controller prefers an UpToDate node.
            n = 1 - n;
        }
        let other_primary = self.nodes[1 - n].is_primary();
        let now_ms = self.now.as_millis() as u64 + 1;
        let Some(core) = self.nodes[n].core.as_mut() else { return Ok(()) };
        if self.witness.is_some() && r < 48 {
            // The controller decides the roles: the operator only hands
            // over (`secondary`) or the service's health check fails.
            let nobody_good = self.nodes.iter().all(|x| {
                x.core
                    .as_ref()
                    .is_none_or(|c| c.disk() != DiskState::UpToDate && c.role() != Role::Primary)
            });
            let core = self.nodes[n].core.as_mut().expect("alive");
            if nobody_good && r < 10 {
                // The first setup: the operator declares one node's data good.
                let disk = core.disk();
                let res = core.promote(true, now_ms);
                self.note(format!("{}: primary --force ({disk:?}) -> {res:?}", self.nodes[n].name));
                self.drain(n);
                // (Forcing data that is not UpToDate gives up what either
                // node acknowledged alone that it lacks: the peer's data
                // will be resynced from it.)
                if res.is_ok()
                    && disk != DiskState::UpToDate
                    && (self.ran_alone(n) || self.ran_alone(1 - n))
                {
                    // The operator accepts what that node ran alone with
                    // may be gone.
                    self.data_replaced += 1;
                }
                if res.is_ok() {
                    self.check_promoted(n, true, disk)?;
                }
                return Ok(());
            }
            if core.role() == Role::Primary {
                if r < 20 {
                    core.health(self.now, false);
                    self.note(format!("{}: health check fails", self.nodes[n].name));
                } else {
                    let res = core.demote();
                    self.note(format!("{}: secondary -> {res:?}", self.nodes[n].name));
                }
                self.drain(n);
            }
            return Ok(());
        }
        if r < 40 {
            // primary [--force], as a controller would: never while the
            // other node is Primary.
            if other_primary || core.role() == Role::Primary {
                return Ok(());
            }
            let disk = core.disk();
            // A sane operator forces a node only when the other holds no
            // better data that it can see.
            let other_good =
                self.nodes[1 - n].core.as_ref().is_some_and(|c| c.disk() == DiskState::UpToDate);
            let force = disk != DiskState::UpToDate && !other_good && self.rng.chance(1, 4);
            // Sometimes the operator (or a script) runs `primary` on both
            // connected nodes at once, before either hears of the other
            // (disconnected, that is a split brain the operator makes).
            let connected =
                |x: &Node| x.core.as_ref().is_some_and(|c| c.connection() == Connection::Connected);
            let both = self.rng.chance(1, 6) && self.nodes.iter().all(connected);
            let mut promoted = vec![n];
            if both {
                promoted.push(1 - n);
            }
            let mut asked = Vec::new();
            for &m in &promoted {
                let Some(core) = self.nodes[m].core.as_mut() else { continue };
                if core.role() == Role::Primary {
                    continue;
                }
                let disk = core.disk();
                let force = force && m == n;
                let res = core.promote(force, now_ms);
                let now_primary = core.role() == Role::Primary;
                let name = self.nodes[m].name;
                self.note(format!(
                    "{name}: primary{}{} ({disk:?}) -> {res:?}{}",
                    if force { " --force" } else { "" },
                    if both { " (on both at once)" } else { "" },
                    if res.is_ok() && !now_primary { " (asked the peer)" } else { "" }
                ));
                if res.is_ok() {
                    if now_primary {
                        asked.push((m, force, disk));
                    } else {
                        self.asked_promotion[m] = Some((force, disk));
                    }
                }
            }
            for &m in &promoted {
                self.drain(m);
            }
            for (m, force, disk) in asked {
                self.check_promoted(m, force, disk)?;
            }
        } else if r < 48 {
            if core.role() == Role::Primary {
                let res = core.demote();
                self.note(format!("{}: secondary -> {res:?}", self.nodes[n].name));
                self.drain(n);
            }
        } else if r < 54 {
            core.disconnect();
            self.note(format!("{}: disconnect", self.nodes[n].name));
            self.drain(n);
        } else if r < 80 {
            if !core.wants_link() {
                core.connect();
                self.note(format!("{}: connect", self.nodes[n].name));
                self.drain(n);
            }
        } else if r < 90 {
            let res = core.verify();
            self.note(format!("{}: verify -> {res:?}", self.nodes[n].name));
            self.drain(n);
        } else {
            // Split brain: the Secondary gives up its data.
            if core.status().split_brain || !core.wants_link() {
                if core.role() == Role::Primary {
                    return Ok(());
                }
                let res = core.discard_my_data();
                self.note(format!("{}: discard-my-data -> {res:?}", self.nodes[n].name));
                // (Its floors follow the data when it becomes SyncTarget.)
                self.drain(n);
                if res.is_ok() {
                    self.chk.discarded(n);
                    if self.ran_alone(n) {
                        self.data_replaced += 1;
                    }
                }
                if let Some(c) = self.nodes[1 - n].core.as_mut() {
                    c.connect();
                }
            }
        }
        Ok(())
    }

    /// Liveness: a pair left alone on a working link for long enough
    /// finishes its resync and goes quiescent, or at least makes progress (unless it must wait for an
    /// operator: split brain, unrelated data, nothing UpToDate).
    /// What a resync or verify under way has done so far.
    fn progress(&self) -> (u64, u64) {
        // (A promotion is progress too: a pair that waited for the
        // witness's quiet period gets its Primary, which then has its
        // metadata to save. So is the witness coming back: the nodes
        // claim again and save the generations they told it, seed 216158.)
        let returns = self.witness.as_ref().map_or(0, |w| w.returns);
        let mut p = (self.chk.stats.promotions_checked + returns, 0);
        for c in self.nodes.iter().filter_map(|n| n.core.as_ref()) {
            let st = c.status();
            p.0 += st.counters.resync_bytes + st.sync.map_or(0, |s| s.done);
            p.1 += c.dirty().bytes();
        }
        p
    }

    fn liveness(&mut self, start: Time, sid: SessionId, sig: (u64, u64)) -> Result<(), Violation> {
        // Adaptive seeds: an Ahead run ends after at most `max_hold` of a
        // good link (plus a ping), then the resync moves.
        let settle = if self.level.is_some() {
            Duration::from_millis(1500)
                + adaptive_config(self.budget).max_hold
                + Duration::from_millis(500)
        } else {
            Duration::from_millis(1500)
        };
        if self.err_rate != 0 || self.now.saturating_sub(start) < settle {
            return Ok(());
        }
        if self.link_sid() != Some(sid) {
            return Ok(());
        }
        let cores: Vec<&Core> = self.nodes.iter().filter_map(|n| n.core.as_ref()).collect();
        if cores.len() < 2 || !cores.iter().any(|c| c.disk() == DiskState::UpToDate) {
            return Ok(());
        }
        if cores.iter().any(|c| c.status().split_brain || !c.wants_link()) {
            return Ok(());
        }
        self.chk.stats.liveness_checks += 1;
        let settled = cores.iter().all(|c| {
            c.session_id() == Some(sid)
                && c.replication() == Replication::Established
                && c.quiescent()
        });
        // A slow resync (one block per round trip) is alive if it moved.
        if !settled && self.progress() == sig {
            let what: Vec<String> = cores.iter().map(|c| core_state(c)).collect();
            return Err(Violation {
                step: self.chk.step,
                rule: "liveness",
                what: format!("left alone on link {sid} since {start:?}, not settled: {what:?}"),
            });
        }
        Ok(())
    }

    /// Adaptive seeds: the link's delay changes.
    pub fn set_level(&mut self, l: LinkLevel) {
        if self.level != Some(l) {
            self.note(format!("link level {l:?}"));
            self.level = Some(l);
        }
    }

    /// One frame's one-way delay at level `l`.
    fn link_delay(&mut self, l: LinkLevel) -> Duration {
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

/// What a hovering-link run saw (see [`hover`]).
#[derive(Debug, Clone, Copy)]
pub struct HoverOutcome {
    /// The Primary's mode switches while the link hovered.
    pub switches: u64,
    /// The most switches of one node within a flap window, whole run.
    pub max_window: u64,
    /// The Primary's mode switches after the link calmed.
    pub calm_switches: u64,
    /// Simulated time the Primary spent Ahead while the link hovered (ms).
    pub ahead_ms: u64,
    /// Writes acknowledged while the link hovered.
    pub acked: u64,
    /// Crashes planted ([`HoverCrash`]): 0 or 1.
    pub crashes: u64,
    /// Whether the planted crash came while the catch-up resync ran.
    pub crashed_in_catch_up: bool,
    /// At the end of the hovering: how long the Primary had been in C with
    /// its peer UpToDate (ms), if it was.
    pub in_c_ms: Option<u64>,
}

/// Convergence under a hovering link, deterministically: an adaptive pair
/// without faults (`seed`: the random choices), `a` Primary and in sync,
/// writes every `every` while the link stays at `level` for `secs`
/// simulated seconds; then the link calms (Low) with the writes going on
/// for 6 s, and stops for 3 s. The invariants are checked after every
/// step; at the end both nodes must be Established, quiescent, UpToDate
/// and identical. Returns what the hovering saw.
pub fn hover(
    seed: u64,
    level: LinkLevel,
    secs: u64,
    every: Duration,
    plant: Plant,
) -> Result<HoverOutcome, (Violation, Vec<String>)> {
    hover_after(seed, BUDGET, Duration::ZERO, level, secs, every, HoverCrash::None, plant)
}

/// A crash [`hover_after`] plants on the way back from Ahead to C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoverCrash {
    None,
    /// Node `node` (0: the Primary, 1: its peer) crashes, or loses power
    /// if `power`, `steps` simulation steps into the catch-up resync that
    /// ends Ahead (at once if it is over sooner). The node restarts by
    /// itself; a Primary that crashed is promoted again once the pair is
    /// back (without `--force`: its data must still be UpToDate).
    AtCatchUp {
        node: usize,
        power: bool,
        steps: usize,
    },
}

/// [`hover`] with a latency budget of `budget`, the link first `spike`
/// long far above it (`High`, writes going on): the Primary goes Ahead
/// before the hovering begins.
// (The scenario's knobs, each named at its call sites in sim/tests/sim.rs.)
#[allow(clippy::too_many_arguments)]
pub fn hover_after(
    seed: u64,
    budget: Duration,
    spike: Duration,
    level: LinkLevel,
    secs: u64,
    every: Duration,
    crash: HoverCrash,
    plant: Plant,
) -> Result<HoverOutcome, (Violation, Vec<String>)> {
    // An adaptive seed without the controller.
    let seed = (0..).map(|k| seed * 15 + 1 + 5 * k).find(|s| s % 3 != 2).expect("a seed");
    let mut sim = Sim::new(Options { seed, steps: 0, plant, trace: false });
    sim.err_rate = 0;
    sim.budget = budget;
    // The latency rule alone: a backlog past `congestion_fill` is no
    // hovering link (the seeds that set it check its switches).
    sim.congestion_fill = None;
    // (The cores started with the seed's budget.)
    start_afresh(&mut sim);
    let stuck = |sim: &Sim, what: &str| stuck_at(sim, "hover", what);
    let mut steps = 0usize;
    let mut tick = |sim: &mut Sim, write_at: &mut Option<Time>| -> Result<(), Violation> {
        steps += 1;
        sim.chk.step = steps;
        match *write_at {
            Some(at) if sim.next_event().is_none_or(|t| t > at) => {
                sim.now = sim.now.max(at);
                *write_at = Some(at + every);
                sim.submit(0);
            }
            _ => sim.advance(),
        }
        sim.checked()
    };
    // Connected, a Primary, b in sync.
    establish(&mut sim, "hover", &mut |sim| tick(sim, &mut None))?;
    let switches =
        |sim: &Sim| sim.nodes[0].core.as_ref().map_or(0, |c| c.status().counters.mode_switches);
    let mut writes = Some(sim.now);
    // The spike, if any.
    if !spike.is_zero() {
        sim.set_level(LinkLevel::High);
        let end = sim.now + spike;
        while sim.now < end {
            tick(&mut sim, &mut writes).map_err(|v| fail(&sim, v))?;
        }
    }
    // The hovering link.
    sim.set_level(level);
    let (s0, acked0) = (switches(&sim), sim.chk.stats.acked);
    let end = sim.now + Duration::from_secs(secs);
    let mut ahead_us = 0u64;
    let in_c = |sim: &Sim| {
        sim.replication(0) == Replication::Established
            && sim.nodes[1].core.as_ref().is_some_and(|c| c.disk() == DiskState::UpToDate)
    };
    let mut not_c_at = sim.now;
    // The planted crash: steps left until it, once the catch-up began;
    // whether the crashed Primary is still to be promoted again.
    let mut countdown: Option<usize> = None;
    let (mut crashes, mut repromote, mut in_catch_up) = (0u64, false, false);
    while sim.now < end {
        let before = sim.now;
        let ahead = sim.replication(0) == Replication::Ahead;
        tick(&mut sim, &mut writes).map_err(|v| fail(&sim, v))?;
        if ahead {
            ahead_us += sim.now.saturating_sub(before).as_micros() as u64;
        }
        if let HoverCrash::AtCatchUp { node, power, steps } = crash {
            if ahead && sim.replication(0) != Replication::Ahead && crashes == 0 {
                countdown = countdown.or(Some(steps));
            }
            if let Some(left) = countdown {
                if left == 0 || sim.replication(0) != Replication::SyncSource {
                    crashes += 1;
                    in_catch_up = sim.replication(0) == Replication::SyncSource;
                    sim.crash(node, power).map_err(|v| fail(&sim, v))?;
                    countdown = None;
                    repromote = node == 0;
                } else {
                    countdown = Some(left - 1);
                }
            }
        }
        if repromote
            && sim.nodes[0].core.as_ref().is_some_and(|c| c.role() != Role::Primary)
            && sim.replication(0) == Replication::Established
            && sim.replication(1) == Replication::Established
        {
            promote_checked(&mut sim, 0, false, "hover")?;
            repromote = false;
        }
        if !in_c(&sim) {
            not_c_at = sim.now;
        }
    }
    if repromote || countdown.is_some() {
        return Err(stuck(&sim, "the planted crash's Primary never came back to be promoted"));
    }
    let out = HoverOutcome {
        crashes,
        crashed_in_catch_up: in_catch_up,
        // (A Primary that crashed counts from 0 again.)
        switches: switches(&sim).saturating_sub(s0),
        max_window: 0,
        calm_switches: 0,
        ahead_ms: ahead_us / 1000,
        acked: sim.chk.stats.acked - acked0,
        in_c_ms: in_c(&sim).then(|| sim.now.saturating_sub(not_c_at).as_millis() as u64),
    };
    // The link calms, writes go on, then stop.
    sim.set_level(LinkLevel::Low);
    let end = sim.now + Duration::from_secs(6);
    let debug = std::env::var_os("HOVER_DEBUG").is_some();
    let mut last = (Replication::Off, Replication::Off);
    while sim.now < end {
        tick(&mut sim, &mut writes).map_err(|v| fail(&sim, v))?;
        let r = (sim.replication(0), sim.replication(1));
        if debug && r != last {
            let st = sim.nodes[0].core.as_ref().map(|c| c.status());
            eprintln!(
                "{:.4} {r:?} in_flight {:?} oos {:?} rtt {:?}",
                sim.now.as_secs_f64(),
                st.as_ref().map(|s| s.in_flight),
                st.as_ref().map(|s| s.out_of_sync_bytes),
                st.as_ref().map(|s| s.rtt)
            );
            last = r;
        }
    }
    let mut writes = None;
    let end = sim.now + Duration::from_secs(3);
    while sim.now < end {
        tick(&mut sim, &mut writes).map_err(|v| fail(&sim, v))?;
    }
    let states: Vec<String> =
        (0..2).map(|n| sim.nodes[n].core.as_ref().map_or("down".into(), core_state)).collect();
    if !in_sync(&sim) {
        return Err(stuck(
            &sim,
            &format!("not back in sync 9 s after the link calmed: {states:?}"),
        ));
    }
    if sim.nodes[0].disk.cache != sim.nodes[1].disk.cache {
        return Err(stuck(&sim, "in sync and quiescent, but the disks differ"));
    }
    Ok(HoverOutcome {
        max_window: sim.chk.stats.max_switches_window,
        calm_switches: switches(&sim).saturating_sub(s0 + out.switches),
        ..out
    })
}

/// What a stalled-Primary run saw (see [`stalled_primary`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct StallOutcome {
    /// Rounds run (a stall, a power loss, back in sync).
    pub rounds: u64,
    /// Requests the stalled Primary answered OK from its peer's part, in
    /// the rounds whose metadata sat apart and answered.
    pub acks_meta_apart: u64,
    /// The same in the rounds whose metadata stalled with the disk (its
    /// `Failed` record never saved: none may be OK).
    pub acks_meta_stalled: u64,
    /// Requests it answered with an error after the stall.
    pub failed_disk_errors: u64,
}

/// A Primary whose disk stalls, deterministically: a protocol C pair with
/// `disk-timeout`, no controller, no injected errors (`seed`: the random
/// choices). Each round the Primary writes (with FLUSHes and FUA among
/// them) every 2 ms; its disk stalls (round 0, 2, ...: the metadata on a
/// device of its own; round 1, 3, ...: on the stalled device too) while
/// it goes on writing; it is detached after `disk-timeout` and answers
/// what waited; it then loses power, restarts with its disk answering
/// again, and the pair must come back in sync, the other node Primary for
/// the next round. Every invariant is checked after every step; the power
/// loss checks that what the node's saved record calls usable holds every
/// acknowledged FLUSH and FUA write.
pub fn stalled_primary(
    seed: u64,
    rounds: u64,
    plant: Plant,
) -> Result<StallOutcome, (Violation, Vec<String>)> {
    // A seed without the controller or adaptive mode.
    let seed =
        (0..).map(|k| seed * 30 + 3 + 4 * k).find(|s| s % 3 != 2 && s % 5 != 1).expect("seed");
    let trace = std::env::var_os("STALL_TRACE").is_some();
    let mut sim = Sim::new(Options { seed, steps: 0, plant, trace });
    sim.err_rate = 0;
    sim.protocol = Protocol::C;
    sim.disk_timeout = Some(DISK_TIMEOUT);
    start_afresh(&mut sim);
    let stuck = |sim: &Sim, what: &str| stuck_at(sim, "stalled-primary", what);
    // One step: the Primary `p` submits when its time comes, else time moves.
    let tick = |sim: &mut Sim, writes: &mut Option<(usize, Time)>| -> Result<(), Violation> {
        sim.chk.step += 1;
        match *writes {
            Some((p, at)) if sim.next_event().is_none_or(|t| t > at) => {
                sim.now = sim.now.max(at);
                *writes = Some((p, at + Duration::from_millis(2)));
                sim.submit(p);
            }
            _ => sim.advance(),
        }
        sim.checked()
    };
    establish(&mut sim, "stalled-primary", &mut |sim| tick(sim, &mut None))?;
    let mut out = StallOutcome::default();
    let mut p = 0;
    for round in 0..rounds {
        sim.meta_on_disk = round % 2 == 1;
        let run = |sim: &mut Sim, writes: &mut Option<(usize, Time)>, d: Duration| {
            let end = sim.now + d;
            while sim.now < end {
                tick(sim, writes).map_err(|v| fail(sim, v))?;
            }
            Ok::<_, (Violation, Vec<String>)>(())
        };
        let mut writes = Some((p, sim.now));
        run(&mut sim, &mut writes, Duration::from_millis(300))?;
        // Every request answered (`failed_disk_answers` checks the time
        // a detached disk's answers take).
        let answered = |sim: &mut Sim, what: &str| {
            let t0 = sim.now;
            while !sim.nodes[p].reqs.is_empty() {
                tick(sim, &mut None).map_err(|v| fail(sim, v))?;
                if sim.now > t0 + Duration::from_secs(3) {
                    return Err(stuck(sim, &format!("requests unanswered {what}")));
                }
            }
            Ok(())
        };
        answered(&mut sim, "before the stall")?;
        let name = sim.nodes[p].name;
        sim.note(format!("{name}: the disk stalls (metadata on it: {})", sim.meta_on_disk));
        sim.nodes[p].stalled = true;
        let (acks, errors) = (sim.chk.stats.failed_disk_acks, sim.chk.stats.failed_disk_errors);
        // A FLUSH first (it takes no activity-log update, which may hang
        // with the metadata: it reaches the peer), then writes again.
        sim.submit_as(p, true);
        run(&mut sim, &mut writes, DISK_TIMEOUT + Duration::from_millis(100))?;
        answered(&mut sim, "after the stall")?;
        if sim.nodes[p].core.as_ref().is_none_or(|c| c.disk() != DiskState::Failed) {
            return Err(stuck(&sim, "the stalled disk was not detached"));
        }
        let acks = sim.chk.stats.failed_disk_acks - acks;
        if sim.meta_on_disk {
            out.acks_meta_stalled += acks;
        } else {
            out.acks_meta_apart += acks;
        }
        out.failed_disk_errors += sim.chk.stats.failed_disk_errors - errors;
        sim.crash(p, true).map_err(|v| fail(&sim, v))?;
        // It restarts, reconnects and resyncs.
        let t0 = sim.now;
        while !in_sync(&sim) {
            tick(&mut sim, &mut writes).map_err(|v| fail(&sim, v))?;
            if sim.now > t0 + Duration::from_secs(30) {
                let states: Vec<String> = (0..2)
                    .map(|n| sim.nodes[n].core.as_ref().map_or("down".into(), core_state))
                    .collect();
                return Err(stuck(&sim, &format!("not back in sync: {states:?}")));
            }
        }
        if sim.nodes[0].disk.cache != sim.nodes[1].disk.cache {
            return Err(stuck(&sim, "in sync and quiescent, but the disks differ"));
        }
        // The other node takes over (an operator's `primary`).
        p = 1 - p;
        promote_checked(&mut sim, p, false, "stalled-primary")?;
        out.rounds += 1;
    }
    Ok(out)
}

/// Connects the pair, promotes `a` (forced: both disks as created) and
/// runs `tick` until the initial sync is done (`rule`: what a stuck pair
/// is reported as).
fn establish(
    sim: &mut Sim,
    rule: &'static str,
    tick: &mut dyn FnMut(&mut Sim) -> Result<(), Violation>,
) -> Result<(), (Violation, Vec<String>)> {
    let stuck = |sim: &Sim, what: &str| stuck_at(sim, rule, what);
    let t0 = sim.now;
    while !(sim.replication(0) == Replication::Established
        && sim.replication(1) == Replication::Established)
    {
        tick(sim).map_err(|v| fail(sim, v))?;
        if sim.now > t0 + Duration::from_secs(10) {
            return Err(stuck(sim, "the pair did not connect"));
        }
    }
    promote_checked(sim, 0, true, rule)?;
    let t0 = sim.now;
    loop {
        tick(sim).map_err(|v| fail(sim, v))?;
        if in_sync(sim) {
            return Ok(());
        }
        if sim.now > t0 + Duration::from_secs(30) {
            return Err(stuck(sim, "the initial sync did not finish"));
        }
    }
}

/// A scenario's report of a violation: it, and the recent log.
fn fail(sim: &Sim, v: Violation) -> (Violation, Vec<String>) {
    (v, sim.recent().to_vec())
}

/// A scenario's report of a pair that did not get where it should
/// (`rule`: the scenario).
fn stuck_at(sim: &Sim, rule: &'static str, what: &str) -> (Violation, Vec<String>) {
    fail(sim, Violation { step: sim.chk.step, rule, what: what.into() })
}

/// Both nodes restarted afresh (new disks, no metadata) with the settings
/// the scenario gave the simulation.
fn start_afresh(sim: &mut Sim) {
    for n in 0..2 {
        sim.nodes[n].core = None;
        sim.nodes[n].ios.clear();
        sim.nodes[n].hung.clear();
        sim.nodes[n].meta = Meta::default();
        sim.nodes[n].recreated = true;
        sim.start(n);
    }
}

/// Node `n` promoted (`primary`, or `--force`), and the checker's rules
/// for a promotion applied.
fn promote_checked(
    sim: &mut Sim,
    n: usize,
    force: bool,
    rule: &'static str,
) -> Result<(), (Violation, Vec<String>)> {
    let now_ms = sim.now.as_millis() as u64 + 1;
    let core = sim.nodes[n].core.as_mut().expect("up");
    let disk = core.disk();
    core.promote(force, now_ms).map_err(|e| stuck_at(sim, rule, &format!("promote: {e}")))?;
    sim.drain(n);
    sim.check_promoted(n, force, disk).map_err(|v| fail(sim, v))
}

/// Both nodes Established, UpToDate and quiescent.
fn in_sync(sim: &Sim) -> bool {
    (0..2).all(|n| {
        sim.nodes[n].core.as_ref().is_some_and(|c| {
            c.replication() == Replication::Established
                && c.disk() == DiskState::UpToDate
                && c.quiescent()
        })
    })
}

/// Whether a metadata update that failed had landed all the same: one in
/// two, by a hash of the seed and the I/O's id.
fn landed_anyway(seed: u64, io: u64) -> bool {
    let h = (seed ^ io.wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h >> 63 == 1
}

/// Role/disk/replication and quiescence, for violation reports.
fn core_state(c: &Core) -> String {
    format!("{:?}/{:?}/{:?} quiescent={}", c.role(), c.disk(), c.replication(), c.quiescent())
}

fn short_op(op: &StoreOp) -> String {
    match op {
        StoreOp::Write { offset, data, fua } => format!("write {offset}+{} fua={fua}", data.len()),
        StoreOp::Zero { offset, len, fua, .. } => format!("zero {offset}+{len} fua={fua}"),
        StoreOp::Flush => "flush".into(),
        StoreOp::Read { offset, len } => format!("read {offset}+{len}"),
        StoreOp::Scratch { offset, data } => format!("scratch {offset}+{}", data.len()),
    }
}

fn short_msg(m: &Message) -> String {
    match m {
        Message::Data { seq, op } => match op {
            twinblock_replicator::protocol::wire::Op::Write { offset, data, fua, .. } => {
                format!(
                    "Data#{seq} write {offset}+{} fua={fua} id={}",
                    data.len(),
                    decode((offset / CELL) as usize, &data[..CELL as usize]).unwrap_or(u64::MAX)
                )
            }
            op => format!("Data#{seq} {op:?}"),
        },
        Message::Hello(h) => format!("Hello {:?} {:?} gen {:x?}", h.role, h.disk, h.gen),
        Message::Bits { runs, last } => format!("Bits {runs:?} last={last}"),
        m => format!("{m:?}"),
    }
}

fn short_persist(p: &Persist) -> String {
    match p {
        Persist::Meta(m) => format!("meta {:?} {:x?}", m.disk, m.gen),
        Persist::Bitmap { pages } => {
            format!("bitmap {:x?}", pages.iter().map(|(_, w)| w.clone()).collect::<Vec<_>>())
        }
        Persist::Al { remove, add } => format!("al -{remove:?} +{add:?}"),
    }
}

/// The content of write `id` over `[off, off+len)` (cell-aligned): every
/// 16-byte cell holds the id, its own cell number and a check word, so
/// the checker can tell which write a cell holds and that it sits where
/// it was written.
pub fn payload(id: u64, off: u64, len: u64) -> Bytes {
    let mut v = Vec::with_capacity(len as usize);
    for c in off / CELL..(off + len) / CELL {
        v.extend_from_slice(&cell_content(id, c));
    }
    Bytes::from(v)
}

pub fn cell_content(id: u64, c: u64) -> [u8; CELL as usize] {
    let mut v = [0u8; CELL as usize];
    v[..8].copy_from_slice(&id.to_le_bytes());
    v[8..12].copy_from_slice(&(c as u32).to_le_bytes());
    let check =
        (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ c.wrapping_mul(0xBF58_476D_1CE4_E5B9)) >> 32;
    v[12..16].copy_from_slice(&(check as u32 | 1).to_le_bytes());
    v
}

/// What a cell holds: 0 for zeroes, the write id, or None for garbage.
pub fn decode(c: usize, data: &[u8]) -> Option<u64> {
    if data.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let id = u64::from_le_bytes(data[..8].try_into().ok()?);
    (cell_content(id, c as u64) == data[..CELL as usize]).then_some(id)
}

thread_local! {
    static PANIC_AT: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The outcome of one seed.
pub struct Outcome {
    pub seed: u64,
    pub stats: Stats,
    pub failure: Option<(Violation, Vec<String>)>,
}

/// Runs one seed (catching panics in the core as failures).
pub fn run_seed(seed: u64, steps: usize, plant: Plant, trace: bool) -> Outcome {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let loc =
                info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            PANIC_AT.with(|p| *p.borrow_mut() = loc);
        }))
    });
    let res = std::panic::catch_unwind(|| {
        let mut sim = Sim::new(Options { seed, steps, plant, trace });
        let r = sim.run();
        (sim.chk.stats, r.map_err(|v| (v, sim.recent().to_vec())))
    });
    match res {
        Ok((stats, Ok(()))) => Outcome { seed, stats, failure: None },
        Ok((stats, Err(f))) => Outcome { seed, stats, failure: Some(f) },
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            let msg = format!("{msg} at {}", PANIC_AT.with(|p| p.borrow().clone()));
            Outcome {
                seed,
                stats: Stats::default(),
                failure: Some((Violation { step: 0, rule: "panic", what: msg }, Vec::new())),
            }
        }
    }
}

/// Runs `seeds` seeds from `first`; returns the failing ones.
pub fn run_many(
    first: u64,
    seeds: u64,
    steps: usize,
    plant: Plant,
    stop_at_first: bool,
) -> Vec<Outcome> {
    let mut failed = Vec::new();
    for seed in first..first + seeds {
        let o = run_seed(seed, steps, plant, false);
        if o.failure.is_some() {
            failed.push(o);
            if stop_at_first {
                break;
            }
        }
    }
    failed
}

pub fn plant_name(p: Plant) -> &'static str {
    match p {
        Plant::None => "none",
        Plant::EarlyAckC => "early-ack",
        Plant::SkipAlMark => "skip-al",
        Plant::SkipBitmapExchange => "skip-bitmap-exchange",
        Plant::ClearBeforeDurable => "clear-before-durable",
        Plant::ResumeAnyFullSync => "resume-any-full-sync",
        Plant::IgnoreQuorum => "ignore-quorum",
        Plant::NoPeerFence => "no-peer-fence",
        Plant::AheadWithoutMark => "ahead-without-mark",
        Plant::LostHint => "lost-hint",
        Plant::HeldHint => "held-hint",
        Plant::ForgetLost => "forget-lost",
        Plant::AckOnFailedDisk => "ack-on-failed-disk",
        Plant::WaitOnFailedDisk => "wait-on-failed-disk",
        Plant::NoDiskTimeout => "no-disk-timeout",
        Plant::AckBeforeFailedRecord => "ack-before-failed-record",
        Plant::WitnessIgnoresData => "witness-ignores-data",
        Plant::ForgetTold => "forget-told",
        Plant::AdoptAnyPeer => "adopt-any-peer",
        Plant::PromoteWithoutAsking => "promote-without-asking",
    }
}

/// The command that replays a failing seed.
pub fn replay_line(seed: u64, plant: Plant, steps: usize) -> String {
    let mut line = format!("scripts/sim.sh --seed {seed}");
    if plant != Plant::None {
        line += &format!(" --plant {}", plant_name(plant));
    }
    if steps != DEFAULT_STEPS {
        line += &format!(" --steps {steps}");
    }
    line
}
