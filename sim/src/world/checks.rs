//! The rules checked after each step that need the simulation's own
//! state (promotions, failed disks' answers, liveness).

use std::time::Duration;

use twinblock_replicator::core::{Core, Replication, SessionId, Time};
use twinblock_replicator::protocol::wire::{DiskState, Role};

use crate::checker::{self, Violation};
use crate::config::adaptive_config;
use crate::node::AppKind;
use crate::trace::core_state;
use crate::world::Sim;

impl Sim {
    pub(crate) fn checked(&mut self) -> Result<(), Violation> {
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
        self.promotions_hooked()?;
        let mut chk = std::mem::replace(&mut self.chk, checker::Checker::new());
        let r = chk.observe(self);
        self.chk = chk;
        r
    }

    /// Rule `hooks`, the other way (`perform.rs` checks that no hook runs
    /// before the record): a controller's Primary that knows the record
    /// naming its promotion is saved, not demoting, sends that promotion's
    /// hooks (the address move, `on_promote`) within a heartbeat of its
    /// own time (a paused node's time stands still). (Known by the core,
    /// not only on disk: a save that failed may land all the same, and
    /// the core then waits for its retry; seed 34101710 of 5,000 steps.)
    /// Review of a7cf0dd, helper-156: a core that never sent them passed
    /// every seed.
    pub(crate) fn promotions_hooked(&mut self) -> Result<(), Violation> {
        if self.witness.is_none() {
            return Ok(());
        }
        for n in 0..2 {
            let node = &mut self.nodes[n];
            let Some(core) = node.core.as_ref() else {
                node.reigned_at = None;
                continue;
            };
            let promoted_at = core.promoted_at();
            let primary = core.role() == Role::Primary;
            // (A raise of the reign hooked already: the hooks follow it.)
            if primary && node.reigned_at.is_some() && node.hooked == node.reigned_at {
                node.hooked = Some(promoted_at);
            }
            node.reigned_at = primary.then_some(promoted_at);
            let node = &self.nodes[n];
            let Some(core) = node.core.as_ref() else { continue };
            let standing = core.controller().map(|c| c.standing);
            let owed = core.role() == Role::Primary
                && standing.is_some_and(|s| s != twinblock_replicator::core::Standing::Demoting)
                && core.promotion_saved(Duration::ZERO) == Ok(true)
                && node.hooked != Some(promoted_at);
            if !owed || node.paused() {
                self.nodes[n].unhooked_since = None;
                continue;
            }
            let since = match node.unhooked_since {
                Some((p, t)) if p == promoted_at => t,
                _ => {
                    self.nodes[n].unhooked_since = Some((promoted_at, self.now));
                    continue;
                }
            };
            if self.now > since + Duration::from_millis(200) {
                return Err(Violation {
                    step: self.chk.step,
                    rule: "hooks",
                    what: format!(
                        "{}: Primary (promoted at {promoted_at}), its record saying so saved \
                         {} ms ago, and its hooks never ran",
                        node.name,
                        (self.now - since).as_millis()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Promotions the peer granted are checked as they happen; those
    /// refused or withdrawn are forgotten.
    pub(crate) fn asked_promotions(&mut self) -> Result<(), Violation> {
        for n in 0..2 {
            let Some((force, disk, held)) = self.asked_promotion[n] else { continue };
            let Some(core) = self.nodes[n].core.as_ref() else {
                self.asked_promotion[n] = None;
                continue;
            };
            if core.role() == Role::Primary {
                self.asked_promotion[n] = None;
                self.note(format!("{}: promoted (granted by the peer)", self.nodes[n].name));
                self.check_promoted(n, force, disk, held)?;
            } else if core.promotion_asked().is_none() {
                self.asked_promotion[n] = None;
            }
        }
        Ok(())
    }

    /// The checker's rules for a promotion of node `n` that just happened
    /// (`disk` and `held`: its disk state and whether a loss held it back,
    /// when the promotion was asked).
    pub(crate) fn check_promoted(
        &mut self,
        n: usize,
        force: bool,
        disk: DiskState,
        held: bool,
    ) -> Result<(), Violation> {
        let mut chk = std::mem::replace(&mut self.chk, checker::Checker::new());
        let r = chk.promoted(self, n, force, disk, held);
        self.chk = chk;
        r
    }

    /// A node whose disk failed answers every request within
    /// `FAILED_ANSWER` of the failure or of its submission, whichever is
    /// later: its disk decides nothing any more (it may hang), the peer's
    /// part does. Without the controller (with it, quorum may hold a
    /// reply as long as it is lost).
    /// (A paused node handles nothing: its deadlines count from its
    /// resume at the earliest, when its timers run first.)
    pub(crate) fn failed_disk_answers(&mut self) -> Result<(), Violation> {
        const FAILED_ANSWER: Duration = Duration::from_secs(2);
        for n in 0..2 {
            if self.nodes[n].paused() {
                continue;
            }
            let resumed = self.nodes[n].resumed_at;
            // `disk-timeout`: a store operation without a completion for
            // that long fails the disk (then the next one issued to the
            // stalled disk counts: a Failed disk may take a sync again).
            if self.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::Failed) {
                self.nodes[n].first_hung = None;
            }
            if let (Some(limit), Some(first), Some(core)) =
                (self.disk_timeout, self.nodes[n].first_hung, self.nodes[n].core.as_ref())
            {
                if core.disk() != DiskState::Failed && (first + limit).max(resumed) < self.now {
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
                !matches!(r.kind, AppKind::Probe(_))
                    && r.at.max(since).max(resumed) + FAILED_ANSWER < self.now
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

    /// What a resync or verify under way has done so far.
    pub(crate) fn progress(&self) -> (u64, u64) {
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

    /// Liveness: a pair left alone on a working link for long enough
    /// finishes its resync and goes quiescent, or at least makes progress
    /// (unless it must wait for an operator: split brain, unrelated data,
    /// nothing UpToDate).
    pub(crate) fn liveness(
        &mut self,
        start: Time,
        sid: SessionId,
        sig: (u64, u64),
    ) -> Result<(), Violation> {
        // Adaptive seeds: an Ahead run ends after at most `max_hold` of a
        // good link (plus a ping), then the resync moves.
        let settle = if self.level.is_some() {
            Duration::from_millis(1500)
                + adaptive_config(self.budget).max_hold
                + Duration::from_millis(500)
        } else {
            Duration::from_millis(1500)
        };
        // A node waiting before its next rebuild (`core::rebuild_backoff`)
        // takes no link: the calm counts from the end of that wait.
        let waits = self.nodes.iter().filter_map(|n| n.core.as_ref()?.rebuild_retry_at());
        let start = waits.fold(start, Time::max);
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
}
