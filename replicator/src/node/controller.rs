//! The failover controller's side: votes and hooks out, the witness's
//! link, answers and the health check in.

use super::*;

impl Node {
    /// Starts routing the core's votes and hooks to the caller.
    pub fn attach_controller(&self) -> mpsc::UnboundedReceiver<ControllerOut> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().controller = Some(tx);
        rx
    }

    pub fn witness_link(&self, up: bool) {
        self.with_core(|c, now| c.handle_witness_link(now, up));
    }

    pub fn vote(&self, reply: crate::core::VoteReply) {
        self.with_core(|c, now| c.handle_vote(now, wall_ms(), reply));
        self.changed.notify_waiters();
    }

    pub fn hook_done(&self, hook: crate::core::Hook, result: Result<(), String>) {
        self.with_core(|c, now| c.hook_done(now, hook, result));
        self.changed.notify_waiters();
    }

    /// Whether the address may be moved here now (see
    /// [`crate::core::Core::address_permit`]). Reads only: nothing is
    /// performed.
    pub fn address_permit(&self) -> Result<(), (bool, &'static str)> {
        let now = self.now();
        self.lock().core.address_permit(now)
    }

    /// A failure of the controller's own, not of a hook the core asked
    /// for (the start's `on_demote` after a crash): in `status`'s
    /// `last_error`, the node's state untouched. (`hook_done` would end a
    /// demotion under way without its `on_demote`; review, helper-160.)
    pub fn note_hook_failure(&self, e: String) {
        self.with_core(|c, _| c.note_hook_failure(e));
    }

    pub fn health(&self, ok: bool) {
        self.with_core(|c, now| c.health(now, ok));
    }
}
