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

    /// The controller ran `hook`'s commands. A hook that succeeds after
    /// the same hook failed (`on_promote` run by the re-check that moved
    /// the address after a failed move) takes that failure out of
    /// `status`'s `last_error` if it is still the last error: the
    /// condition it reported is gone. Before, `status` showed the old
    /// failure for good (review, helper-107).
    pub fn hook_done(&self, hook: crate::core::Hook, result: Result<(), String>) {
        let ok = result.is_ok();
        let mut sh = self.lock();
        let now = self.now();
        sh.core.hook_done(now, hook, result);
        let last = sh.core.status().last_error;
        if !ok {
            sh.hook_failed = last.map(|e| (hook, e));
            sh.last_error_gone = None;
        } else if let Some((failed, e)) = sh.hook_failed.take() {
            if failed != hook {
                sh.hook_failed = Some((failed, e));
            } else if last.as_ref() == Some(&e) {
                sh.last_error_gone = Some(e);
            }
        }
        self.drain(&mut sh);
        drop(sh);
        self.changed.notify_waiters();
    }

    /// Whether the address may be moved here now (see
    /// [`crate::core::Core::address_permit`]). Reads only: nothing is
    /// performed.
    pub fn address_permit(&self) -> Result<(), (bool, &'static str)> {
        let now = self.now();
        self.lock().core.address_permit(now)
    }

    pub fn health(&self, ok: bool) {
        self.with_core(|c, now| c.health(now, ok));
    }
}
