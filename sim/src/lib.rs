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
//!   blocks never written or punched whole are holes, and a sparse disk's
//!   store answers a resync read over holes alone as a hole (`disk.rs`);
//! - metadata: the last successful Persist of each kind (an update in
//!   flight at a crash is kept or not, at random, atomically);
//! - clock: simulated; `handle_timeout` at `poll_timeout` deadlines;
//! - workload on whichever node is Primary (self-describing writes: every
//!   block of write `id` holds `id` and its block number), operator verbs,
//!   crashes and power loss of either node.
//!
//! The checker ([`check`]) runs after every step; see `checker.rs`.

mod checker;
mod config;
mod content;
mod disk;
mod meta;
mod node;
pub mod rng;
mod scenarios;
mod trace;
mod witness;
mod world;

use twinblock_replicator::core::Plant;

pub use checker::{Stats, Violation};
pub use config::{adaptive_config, config, LinkLevel, Options, BUDGET, CONGESTION_FILL, DEAD_TIME};
pub use content::{cell_content, decode, payload};
pub use disk::Disk;
pub use meta::Meta;
pub use node::Node;
pub use scenarios::{hover, hover_after, stalled_primary, HoverCrash, HoverOutcome, StallOutcome};
pub use world::{Sim, DISK_TIMEOUT};

pub const BLOCK: u64 = 64;
pub const EXTENT: u64 = 1024;
pub const SIZE: u64 = 16 * 1024;
pub const BLOCKS: usize = (SIZE / BLOCK) as usize;
/// The unit of self-describing content (writes may be this fine).
pub const CELL: u64 = 16;
pub const CELLS: usize = (SIZE / CELL) as usize;
/// Steps per seed unless told otherwise.
pub const DEFAULT_STEPS: usize = 1000;

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
        Plant::UnionByName => "union-by-name",
        Plant::IgnoreLostCache => "ignore-lost-cache",
        Plant::ClaimAfterLoss => "claim-after-loss",
        Plant::LiftOutdatedSource => "lift-outdated-source",
        Plant::OutdateDoneEarly => "outdate-done-early",
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
        Plant::WitnessRenewsBehind => "witness-renews-behind",
        Plant::AdoptAnyPeer => "adopt-any-peer",
        Plant::PromoteWithoutAsking => "promote-without-asking",
        Plant::AheadBeforeOutdated => "ahead-before-outdated",
        Plant::ReadsBeforeReceived => "reads-before-received",
        Plant::ResyncBeforeReceived => "resync-before-received",
        Plant::ForgetAsyncPrimary => "forget-async-primary",
        Plant::PromoteAfterLoss => "promote-after-loss",
        Plant::ReadsWithoutQuorum => "reads-without-quorum",
        Plant::ReadsWhenSuperseded => "reads-when-superseded",
        Plant::EarlyAckB => "early-ack-b",
        Plant::UnlinkedWithoutMark => "unlinked-without-mark",
        Plant::WriteDuringResyncRead => "write-during-resync-read",
        Plant::FlushWithoutPeer => "flush-without-peer",
        Plant::LeaseFromReply => "lease-from-reply",
        Plant::GateOnTimerClock => "gate-on-timer-clock",
        Plant::ForcedRecordBeforeBitmap => "forced-record-before-bitmap",
        Plant::HolesNotSent => "holes-not-sent",
        Plant::SkipResyncZero => "skip-resync-zero",
        Plant::HooksBeforeRecord => "hooks-before-record",
        Plant::HooksNeverRun => "hooks-never-run",
        Plant::StaleWitnessRequests => "stale-witness-requests",
        Plant::ForgetPending => "forget-pending",
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
