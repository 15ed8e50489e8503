//! The operator's verbs: promotions, demotions, connects, discards, verify.

use twinblock_replicator::core::Connection;
use twinblock_replicator::protocol::wire::{DiskState, Role};

use crate::checker::Violation;
use crate::node::Node;
use crate::world::Sim;

/// How long after a `primary --force` refused with a wait the operator
/// runs it again (the wait is a lease and a quarter, under a second).
const FORCE_AGAIN: std::time::Duration = std::time::Duration::from_millis(1000);

impl Sim {
    pub(crate) fn operator(&mut self) -> Result<(), Violation> {
        let mut n = self.rng.below(2) as usize;
        let r = self.rng.below(100);
        if r < 40 && !self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::UpToDate) {
            // The controller prefers an UpToDate node.
            n = 1 - n;
        }
        if self.nodes[n].paused() {
            // The verb's control request waits on a paused daemon: the
            // operator gives up on it.
            self.note(format!("{}: operator's verb times out (paused)", self.nodes[n].name));
            return Ok(());
        }
        let other_primary = self.nodes[1 - n].is_primary();
        let now_ms = self.now.as_millis() as u64 + 1;
        self.clock_in(n);
        let Some(core) = self.nodes[n].core.as_mut() else { return Ok(()) };
        if core.role() == Role::Primary && core.declaration_unsaved() && self.rng.chance(1, 2) {
            // The `primary` whose forced record is not saved yet (a
            // metadata volume that hangs or is full) gives up waiting: the
            // shell demotes the node again, undoing the force unless its
            // first record is durable (`node/verbs.rs`). Its save may
            // still land, before or at a crash.
            let confirming = core.declaration_confirming();
            let made = core.gen().current;
            let undone = !confirming && core.declared_over().is_some_and(|g| g.current != made);
            core.abandon_promotion();
            if undone {
                // Told it failed: that generation never comes back.
                self.undone_forces[n].push(made);
            }
            self.chk.stats.forces_given_up += 1;
            let saving = !self.nodes[n].ios.is_empty() || !self.nodes[n].hung.is_empty();
            self.chk.stats.forces_given_up_saving += u64::from(saving || confirming);
            self.note(format!(
                "{}: primary --force gives up waiting for its record{}",
                self.nodes[n].name,
                if confirming { " (first record saved: the force stands)" } else { "" }
            ));
            self.drain(n);
            return Ok(());
        }
        if self.witness.is_some() && r < 48 {
            // The controller decides the roles: the operator only hands
            // over (`secondary`) or the service's health check fails.
            let nobody_good = self.nobody_good();
            if nobody_good && r < 10 {
                return self.first_setup(n);
            }
            let core = self.nodes[n].core.as_mut().expect("alive");
            if core.role() == Role::Primary {
                if r < 20 {
                    core.health(self.now, false);
                    self.note(format!("{}: health check fails", self.nodes[n].name));
                } else {
                    let res = core.demote();
                    self.note(format!("{}: secondary -> {res:?}", self.nodes[n].name));
                    // Refused (no peer could take over): the operator
                    // sometimes insists.
                    if res.is_err() && self.rng.chance(1, 2) {
                        let core = self.nodes[n].core.as_mut().expect("alive");
                        core.demote_forced();
                        self.note(format!("{}: secondary --force", self.nodes[n].name));
                    }
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
            // better data that it can see: a disk not UpToDate, or one held
            // back by a loss (its page cache, or writes it had received,
            // gone since it last met its peer: `primary` names `--force`
            // "to accept the loss").
            let other_good =
                self.nodes[1 - n].core.as_ref().is_some_and(|c| c.disk() == DiskState::UpToDate);
            let held = self.nodes[n].core.as_ref().is_some_and(|c| c.held_back_by_loss());
            let force =
                (disk != DiskState::UpToDate || held) && !other_good && self.rng.chance(1, 4);
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
                if self.nodes[m].paused() {
                    continue;
                }
                let Some(core) = self.nodes[m].core.as_mut() else { continue };
                if core.role() == Role::Primary {
                    continue;
                }
                let (disk, held) = (core.disk(), core.held_back_by_loss());
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
                        asked.push((m, force, disk, held));
                    } else {
                        self.asked_promotion[m] = Some((force, disk, held));
                    }
                }
            }
            for &m in &promoted {
                self.drain(m);
            }
            for (m, force, disk, held) in asked {
                self.check_promoted(m, force, disk, held)?;
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
            // Split brain: the Secondary gives up its data. Or an
            // operator's discard that lands while a handshake is under
            // way (after this node's hello: it waits for the next one).
            let handshaking = core.session_id().is_some_and(|sid| !core.session_running(sid));
            if core.status().split_brain || !core.wants_link() || handshaking {
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
                let paused_peer = self.nodes[1 - n].paused();
                if let Some(c) = self.nodes[1 - n].core.as_mut().filter(|_| !paused_peer) {
                    c.connect();
                }
            }
        }
        Ok(())
    }

    /// The first setup with a controller: the operator declares node
    /// `n`'s data good (`primary --force`). Refused with a wait (a Primary
    /// peer may hold a lease), the operator runs it again once the wait is
    /// over, as the message says.
    pub(crate) fn first_setup(&mut self, n: usize) -> Result<(), Violation> {
        let now_ms = self.now.as_millis() as u64 + 1;
        self.clock_in(n);
        let Some(core) = self.nodes[n].core.as_mut() else { return Ok(()) };
        let (disk, held) = (core.disk(), core.held_back_by_loss());
        let res = core.promote(true, now_ms);
        let now_primary = core.role() == Role::Primary;
        self.note(format!(
            "{}: primary --force ({disk:?}) -> {res:?}{}",
            self.nodes[n].name,
            if res.is_ok() && !now_primary { " (asked the witness)" } else { "" }
        ));
        self.drain(n);
        match res {
            Err(e) if e.0.contains("again in") => {
                self.force_again = Some((n, self.now + FORCE_AGAIN));
            }
            // Not connected: promoted at the witness's grant.
            Ok(()) if !now_primary => self.forced_claim[n] = Some((disk, held)),
            Ok(()) => {
                self.forced_promotion(n, disk);
                self.check_promoted(n, true, disk, held)?;
            }
            Err(_) => {}
        }
        Ok(())
    }

    /// The operator's `primary --force` that was to be run again, once
    /// due, if nobody holds good data still.
    pub(crate) fn first_setup_again(&mut self) -> Result<(), Violation> {
        let Some((n, at)) = self.force_again else { return Ok(()) };
        if self.now < at || self.nodes[n].paused() {
            return Ok(());
        }
        self.force_again = None;
        if self.nobody_good() && self.nodes[n].alive() {
            return self.first_setup(n);
        }
        Ok(())
    }

    /// The node's core is told the time before an operator's verb, as the
    /// daemon does (`Node::with_core`): the sim wakes a core only at its
    /// deadlines, and a verb on a core idle for a while stamped what it
    /// sent with the time of its last event. (Seed 18200891 at 20,000
    /// steps: `primary --force` on a core idle for 0.9 s sent the witness
    /// a claim that looked a second old, taken as lost at once and given
    /// back while the witness granted it.)
    pub(crate) fn clock_in(&mut self, n: usize) {
        if let Some(core) = self.nodes[n].core.as_mut() {
            core.set_clock(self.now);
        }
    }

    /// No node holds data the controller would promote, nor is Primary.
    fn nobody_good(&self) -> bool {
        self.nodes.iter().all(|x| {
            x.core
                .as_ref()
                .is_none_or(|c| c.disk() != DiskState::UpToDate && c.role() != Role::Primary)
        })
    }
}
