//! `primary` on a connected node: the peer agrees first.
//!
//! Two operators (or scripts) running `primary` on both nodes of a
//! connected pair at once each saw a Secondary peer and became Primary:
//! their State frames crossed, each side refused the link ("both are
//! Primary"), and both accepted writes, a split brain of a healthy pair.
//! So while a session runs, a promotion without the failover controller
//! is asked of the peer (`PromoteAsk`) and happens only once granted
//! (`PromoteAnswer`), as DRBD makes a role change a state change of both
//! nodes.
//!
//! - The peer grants unless it is Primary, or was granted a promotion of
//!   its own that its State has not confirmed yet. If it is asking too,
//!   the node whose name sorts first wins: the other grants, and its own
//!   ask fails.
//! - Once it granted, it counts the asker as Primary (refusing a promotion
//!   of its own) until the asker's next State, which follows the answer
//!   whatever the asker's promotion then does.
//! - A session that ends before the answer fails the ask: `primary` again
//!   decides alone (disconnected, a split brain the operator chose, found
//!   at the next handshake), as before.
//! - During the handshake a promotion is refused: the peer's role is not
//!   known yet.

use super::{Core, Phase, Refused};
use crate::protocol::wire::{Message, Role};

use super::SessionId;

/// A promotion this node asked of its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asked {
    pub ask: u64,
    pub force: bool,
    pub wall_ms: u64,
}

impl Core {
    /// `promote`'s path while a session exists: Ok once the peer was
    /// asked (see [`Core::promotion_answer`]), or why it was not.
    pub(super) fn ask_promotion(&mut self, force: bool, wall_ms: u64) -> Result<(), Refused> {
        if self.handshaking() {
            return Err(Refused(format!(
                "the link to {} is being set up: its role is not known yet (`primary` again \
                 in a moment)",
                self.cfg.peer
            )));
        }
        if self.promotion_asked().is_some() {
            return Err(Refused("a promotion is already being asked of the peer".into()));
        }
        self.promotion_refused(force, true)?;
        self.next_ask += 1;
        let ask = self.next_ask;
        if let Some(s) = self.session.as_mut() {
            s.asked = Some(Asked { ask, force, wall_ms });
        }
        self.asked_last = Some((ask, None));
        self.send(Message::PromoteAsk { ask });
        tracing::info!(ask, peer = %self.cfg.peer, "asking the peer to let this node become Primary");
        Ok(())
    }

    /// A session is in its handshake (a promotion now is refused: the
    /// peer's role is not known yet).
    pub fn handshaking(&self) -> bool {
        self.session.as_ref().is_some_and(|s| s.phase != Phase::Running)
    }

    /// The ask in flight, if any.
    pub fn promotion_asked(&self) -> Option<u64> {
        self.session.as_ref().and_then(|s| s.asked).map(|a| a.ask).or(self.forced_claim_ask())
    }

    /// How ask `ask` ended (None: not yet).
    pub fn promotion_answer(&self, ask: u64) -> Option<Result<(), Refused>> {
        match &self.asked_last {
            Some((a, r)) if *a == ask => r.clone(),
            _ => Some(Err(Refused("this promotion was superseded".into()))),
        }
    }

    /// The shell gave up waiting for ask `ask`: it fails, and a late
    /// grant changes nothing. Returns how the ask ended (an answer that
    /// came first stands).
    pub fn withdraw_promotion(&mut self, ask: u64) -> Result<(), Refused> {
        if let Some(r) = self.promotion_answer(ask) {
            return r;
        }
        if self.forced_claim_ask() == Some(ask) {
            self.withdraw_forced_claim();
            let r = Err(Refused("the witness did not answer in time".into()));
            self.answered(ask, r.clone());
            return r;
        }
        if let Some(s) = self.session.as_mut().filter(|s| s.asked.is_some_and(|a| a.ask == ask)) {
            s.asked = None;
        }
        let r = Err(Refused("the peer did not answer in time".into()));
        self.answered(ask, r.clone());
        r
    }

    pub(super) fn answered(&mut self, ask: u64, r: Result<(), Refused>) {
        if let Err(e) = &r {
            tracing::warn!(ask, "promotion refused: {e}");
        }
        if matches!(self.asked_last, Some((a, _)) if a == ask) {
            self.asked_last = Some((ask, Some(r)));
        }
    }

    pub(super) fn on_promote_ask(&mut self, sid: SessionId, ask: u64) {
        let (me, peer) = (self.cfg.me.clone(), self.cfg.peer.clone());
        let Some(s) = self.session.as_mut().filter(|s| s.id == sid) else { return };
        let refusal = if self.role == Role::Primary {
            Some(format!("{me} is Primary; demote it first"))
        } else if s.peer_promoting {
            Some(format!("{peer} was already granted a promotion"))
        } else if let Some(mine) = s.asked {
            if me < peer {
                Some(format!("{me} asked to become Primary at the same time, and goes first"))
            } else {
                // Ours gives way.
                s.asked = None;
                self.answered(
                    mine.ask,
                    Err(Refused(format!(
                        "{peer} asked to become Primary at the same time, and goes first"
                    ))),
                );
                None
            }
        } else {
            None
        };
        let granted = refusal.is_none();
        if let Some(s) = self.session.as_mut() {
            s.peer_promoting |= granted;
            s.granted_promotion |= granted;
        }
        self.send(Message::PromoteAnswer { ask, granted, why: refusal.unwrap_or_default() });
    }

    pub(super) fn on_promote_answer(
        &mut self,
        sid: SessionId,
        ask: u64,
        granted: bool,
        why: String,
    ) -> Result<(), String> {
        let Some(s) = self.session.as_mut().filter(|s| s.id == sid) else { return Ok(()) };
        let Some(mine) = s.asked.filter(|a| a.ask == ask) else {
            // An ask of ours that gave way: the peer granted it all the
            // same only if it did not see ours, and counts us as promoting
            // until our State.
            if granted {
                self.announce();
            }
            return Ok(());
        };
        s.asked = None;
        let r = if granted {
            let r = self.promote_inner(mine.force, mine.wall_ms);
            if r.is_err() {
                // The peer counts us as promoting until it hears our role.
                self.announce();
            }
            r
        } else {
            Err(Refused(format!("{} refused: {why}", self.cfg.peer)))
        };
        self.answered(ask, r);
        Ok(())
    }

    /// The session ends: an ask still in flight fails.
    pub(super) fn promotion_session_ended(&mut self, asked: Option<Asked>) {
        if let Some(a) = asked {
            self.answered(
                a.ask,
                Err(Refused(format!(
                    "the link to {} went down before it answered (`primary` again decides \
                     without it)",
                    self.cfg.peer
                ))),
            );
        }
    }
}
