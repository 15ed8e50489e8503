//! A stalled Primary answered from its peer, round after round.

use std::time::Duration;

use twinblock_replicator::config::Protocol;
use twinblock_replicator::core::{Plant, Time};
use twinblock_replicator::protocol::wire::DiskState;

use crate::checker::Violation;
use crate::config::Options;
use crate::trace::core_state;
use crate::world::{Sim, DISK_TIMEOUT};

use super::{establish, fail, in_sync, promote_checked, start_afresh, stuck_at};

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
