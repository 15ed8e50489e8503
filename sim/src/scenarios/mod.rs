//! Scenarios with a script: a link hovering at the adaptive budget
//! (`hover.rs`), a stalled Primary (`stall.rs`), and their helpers.

mod hover;
mod stall;

pub use hover::{hover, hover_after, HoverCrash, HoverOutcome};
pub use stall::{stalled_primary, StallOutcome};

use std::time::Duration;

use twinblock_replicator::core::Replication;
use twinblock_replicator::protocol::wire::DiskState;

use crate::checker::Violation;
use crate::meta::Meta;
use crate::world::Sim;

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
        if let Some(w) = sim.witness.as_mut() {
            w.node_crashed(n);
        }
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
    sim.clock_in(n);
    let core = sim.nodes[n].core.as_mut().expect("up");
    let (disk, held) = (core.disk(), core.held_back_by_loss());
    core.promote(force, now_ms).map_err(|e| stuck_at(sim, rule, &format!("promote: {e}")))?;
    sim.drain(n);
    sim.check_promoted(n, force, disk, held).map_err(|v| fail(sim, v))
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
