//! What a run is and the core's configuration in the simulator's tiny
//! geometry: the adaptive seeds' budget and link levels, the controller's
//! timing.

use std::time::Duration;

use twinblock_replicator::config::Protocol;
use twinblock_replicator::core::{AdaptiveConfig, CoreConfig, Plant};
use twinblock_replicator::protocol::genid::SplitBrainPolicy;

use crate::{BLOCK, EXTENT, SIZE};

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
        files: Default::default(),
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
