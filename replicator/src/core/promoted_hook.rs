//! A controller's promotion runs its hooks (the service address moves,
//! then `on_promote`) once the record saying this node is Primary is
//! durable, not at the witness's grant.
//!
//! Before, the hooks went out with the grant. A `primary --force` whose
//! record could not be saved (a full metadata volume) was undone, but the
//! address had moved to the node and `on_promote` had started the service
//! there on a device that acknowledged no write; `on_demote` then moved
//! nothing back (a known limit until 2026-12-07). Nothing is acknowledged
//! before that record lands anyway (`write.rs` `meta_wait`), so waiting
//! for it costs the service nothing: a flush and one metadata save.

use super::*;

/// Where a controller's promotion stands with its hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PromotedHook {
    /// None is owed: Secondary, or the hooks went out.
    Settled,
    /// Promoted at `since`; the hooks wait for the record of this reign
    /// (`promoted_at`, raised by a handshake meanwhile or not) to be durable.
    AwaitingRecord { since: Time },
}

impl PromotedHook {
    /// The hooks wait for the record.
    pub(crate) fn owed(self) -> bool {
        matches!(self, PromotedHook::AwaitingRecord { .. })
    }
}

impl Core {
    /// A promotion whose hooks wait for its record has not started its
    /// service: the health check's failures say nothing of it (as while
    /// the shell runs those hooks; review, helper-156: before, three
    /// failed checks during a slow record handed the role over, the
    /// back-and-forth helper-106 had fixed). Not once a save of the record
    /// failed (it serves nothing: it hands over), nor for longer than
    /// `dead_time` (a metadata disk that hangs without `disk-timeout`).
    pub(super) fn promotion_starting(&self) -> bool {
        let Some(c) = &self.ctl else { return false };
        match c.promoted_hook {
            PromotedHook::AwaitingRecord { since } => {
                self.p.meta_failed.is_none() && self.now < since + c.cfg.dead_time
            }
            PromotedHook::Settled => false,
        }
    }

    /// A controller's promotion: its hooks go out once its record is
    /// durable ([`Core::settle_promoted_hook`]).
    pub(super) fn owe_promoted_hook(&mut self) {
        match self.cfg.plant {
            Plant::HooksBeforeRecord => {
                self.actions.push_back(Action::Hook(Hook::Promoted));
                return;
            }
            Plant::HooksNeverRun => return,
            _ => {}
        }
        if let Some(c) = &mut self.ctl {
            c.promoted_hook = PromotedHook::AwaitingRecord { since: self.now };
        }
        self.settle_promoted_hook();
    }

    /// At each pump: the owed hooks go out once this reign's record is
    /// durable, and are dropped when the promotion did not stand (demoted,
    /// a demotion under way, a failed force waiting to be undone).
    pub(super) fn settle_promoted_hook(&mut self) {
        let saved = self.reign_saved();
        let standing = self.role == Role::Primary && !self.declaration_abandoned();
        let Some(c) = &mut self.ctl else { return };
        if !c.promoted_hook.owed() {
            return;
        }
        if !standing || c.demoting() {
            c.promoted_hook = PromotedHook::Settled;
            tracing::info!("the promotion did not stand before its record was saved: no hooks run");
            return;
        }
        if saved {
            c.promoted_hook = PromotedHook::Settled;
            self.actions.push_back(Action::Hook(Hook::Promoted));
        }
    }
}
