//! A link hovering around the adaptive budget: the Primary must not flap.

use std::time::Duration;

use twinblock_replicator::core::{Plant, Replication, Time};
use twinblock_replicator::protocol::wire::{DiskState, Role};

use crate::checker::Violation;
use crate::config::{LinkLevel, Options, BUDGET};
use crate::trace::core_state;
use crate::world::Sim;

use super::{establish, fail, in_sync, promote_checked, start_afresh, stuck_at};

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
