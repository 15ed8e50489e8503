//! The link to the peer (`crate::link`): sessions up and down, frames in,
//! the transport's counters and round trip.

use super::*;

impl Node {
    /// The shell should have a link to the peer.
    pub fn wants_link(&self) -> bool {
        self.link_refused().is_none()
    }

    /// Why the node takes no link now, if it takes none
    /// ([`Core::link_refused`]).
    pub fn link_refused(&self) -> Option<std::borrow::Cow<'static, str>> {
        let mut sh = self.lock();
        // (The time first: a rebuild's wait may have ended since the
        // timer task last moved the core's clock.)
        sh.core.set_clock(self.now());
        sh.core.link_refused()
    }

    /// A replication handshake was refused (`why` names who and why), or
    /// (None) one with the real peer passed: status `link_refusal`.
    pub fn set_link_refusal(&self, why: Option<String>) {
        *self.link_refusal.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    /// Session `sid` is the one in force.
    pub fn has_session(&self, sid: SessionId) -> bool {
        self.lock().core.session_id() == Some(sid)
    }

    /// Session `sid` is in force and past its handshake.
    pub fn session_running(&self, sid: SessionId) -> bool {
        self.lock().core.session_running(sid)
    }

    /// A session is in force (handshaking or running).
    pub fn has_link(&self) -> bool {
        self.lock().core.session_id().is_some()
    }

    /// A new link is up: returns its session number; frames for the peer
    /// arrive on `out`'s queue.
    pub fn link_up(&self, out: LinkTx) -> SessionId {
        let sid = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut sh = self.lock();
        sh.links.insert(sid, out);
        let now = self.now();
        sh.core.handle_link_up(now, sid);
        self.drain(&mut sh);
        drop(sh);
        self.changed.notify_waiters();
        sid
    }

    /// Frames that arrived on link `sid`, in order. Returns whether the
    /// store lane has room for more ([`Node::lane_room`] waits for it).
    pub fn frames(&self, sid: SessionId, msgs: Vec<Message>) -> bool {
        let mut sh = self.lock();
        for m in msgs {
            let now = self.now();
            sh.core.handle_frame(now, sid, m);
        }
        self.drain(&mut sh);
        sh.lane.has_room()
    }

    /// The link's reader could not decode the peer's frames: the core
    /// ends the session with `why` (its writer then closes the link).
    /// False if the core had ended that session already.
    pub fn link_fault(&self, sid: SessionId, why: String) -> bool {
        self.with_core(|c, now| c.handle_link_fault(now, sid, why))
    }

    pub fn link_down(&self, sid: SessionId, why: &str) {
        let mut sh = self.lock();
        sh.links.remove(&sid);
        let now = self.now();
        sh.core.handle_link_down(now, sid, why);
        self.drain(&mut sh);
        drop(sh);
        self.changed.notify_waiters();
    }

    /// What the peer said when it closed session `sid`, which already
    /// ended here (its reason comes after its stream's end).
    pub fn peer_said(&self, sid: SessionId, why: String) {
        self.lock().core.handle_peer_reason(sid, why);
    }

    pub(super) fn link_tally(&self) -> std::sync::MutexGuard<'_, LinkTally> {
        self.link_tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Session `sid`'s transport counters now.
    pub fn link_look(&self, sid: SessionId, c: LinkStatus) {
        self.link_tally().update(sid, c);
    }

    /// Session `sid` ended with these transport counters.
    pub fn link_ended(&self, sid: SessionId, c: &LinkStatus) {
        self.link_tally().end(sid, c);
    }

    pub fn set_rtt(&self, rtt: Duration) {
        self.lock().core.set_rtt(rtt);
    }
}
