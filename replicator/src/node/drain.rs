//! Performing the core's actions ([`Node::drain`]) and handing frames to
//! the link's writer, held while an NBD read's requests are issued.

use super::store_ops::{persist, Performed};
use super::*;

/// The most frames held for one hand-over ([`Node::send_frame`]): about a
/// 64 KiB read of 4 KiB writes.
const HOLD_FRAMES: usize = 16;

/// The longest the first held frame waits for the others.
const HOLD_TIME: Duration = Duration::from_micros(200);

impl Node {
    /// Performs the core's actions until it has none.
    ///
    /// Acknowledgements are cumulative: of those the core emits during one
    /// drain (one per frame applied, when a batch of frames arrived), only
    /// the last goes out, in the place of the first that was held back
    /// (before any later frame to the same session).
    pub(crate) fn drain(&self, sh: &mut Shell) {
        let mut ack: Option<(SessionId, Message)> = None;
        while let Some(a) = sh.core.poll_action() {
            match a {
                Action::Send { session, msg: msg @ Message::Ack { .. } } => {
                    if let Some((s, held)) = ack.take().filter(|(s, _)| *s != session) {
                        self.send_frame(sh, s, held);
                    }
                    ack = Some((session, msg));
                    continue;
                }
                Action::Send { session, .. } | Action::Close { session, .. }
                    if ack.as_ref().is_some_and(|(s, _)| *s == session) =>
                {
                    if let Some((s, held)) = ack.take() {
                        self.send_frame(sh, s, held);
                    }
                }
                _ => {}
            }
            match a {
                Action::Store { io, op } => match sh.lane.offer(io, op) {
                    Offer::InPlace(io, op) => {
                        if let Performed::Done(r) = self.perform(op, io) {
                            let now = self.now();
                            sh.core.handle_io(now, io, r);
                        }
                    }
                    Offer::Queued => {}
                    Offer::Wake => {
                        let _ = self.lane_wake.send(());
                    }
                },
                Action::Persist { io, what } => {
                    if !sh.persist_async {
                        let r = persist(&self.files, &self.me.name, &self.res, what);
                        let now = self.now();
                        sh.core.handle_io(now, io, r.map(|()| None));
                        continue;
                    }
                    let Some(node) = self.this.upgrade() else { continue };
                    self.rt.spawn(
                        async move {
                            let files = node.files.clone();
                            let (name, res) = (node.me.name.clone(), node.res.clone());
                            let r = tokio::task::spawn_blocking(move || {
                                persist(&files, &name, &res, what)
                            })
                            .await
                            .unwrap_or(Err(IoError::EIO));
                            let mut sh = node.lock();
                            let now = node.now();
                            sh.core.handle_io(now, io, r.map(|()| None));
                            node.drain(&mut sh);
                            drop(sh);
                            // Received writes it held back may be issued now
                            // (a read waits for them: `Node::readable`).
                            node.lane_progress.notify_waiters();
                        }
                        .in_current_span(),
                    );
                }
                Action::Send { session, msg } => self.send_frame(sh, session, msg),
                Action::Close { session, reason } => {
                    // Frames held for the link go before its close.
                    Self::release_held(sh);
                    if let Some(l) = sh.links.remove(&session) {
                        let _ = l.queue.send(Outbound::Close(reason));
                        l.closing.notify_one();
                    }
                    self.changed.notify_waiters();
                }
                Action::Reply { req, result } => {
                    if let Some(tx) = sh.replies.remove(&req) {
                        sh.answered.push((tx, result));
                    }
                }
                Action::Vote(v) => {
                    if let Some(tx) = &sh.controller {
                        let _ = tx.send(ControllerOut::Vote(v));
                    }
                }
                Action::Hook(h) => match &sh.controller {
                    Some(tx) => {
                        let _ = tx.send(ControllerOut::Hook(h));
                    }
                    None => {
                        let now = self.now();
                        sh.core.hook_done(now, h, Ok(()));
                    }
                },
            }
        }
        if let Some((s, held)) = ack {
            self.send_frame(sh, s, held);
        }
        let c = &sh.core;
        let key = StateKey {
            role: c.role(),
            disk: c.disk(),
            connection: c.connection(),
            replication: c.replication(),
        };
        if sh.last_key != Some(key) {
            // A disk that leaves Failed (the target of a full sync that
            // rewrites every block, or declared good by `primary --force`)
            // may sync again: what a failed writeback dropped is rewritten
            // or given up (`store::syncer`). Only on that transition: the
            // latch is set before the core hears of the failure.
            if sh.last_key.is_some_and(|k| k.disk == DiskState::Failed)
                && key.disk != DiskState::Failed
            {
                self.store.sync_recovered();
            }
            sh.last_key = Some(key);
            let _ = self.transitions.send(key);
            sh.state_changed = Some(self.lane_progress.clone());
        }
    }

    /// Hands a frame to the writer task of session `session`'s link.
    ///
    /// While an NBD connection's thread issues the requests of one read
    /// and more of them follow (`twinblock_nbd::issuing`), the frame is
    /// held and handed over with the others when the last is issued: one
    /// wake-up of the link's thread for them all, and they leave together
    /// (fuller packets, fewer sends; the peer applies and acknowledges them
    /// in one go). Frames keep their order: any frame not held, from any
    /// thread, and any close, first hands over those held. At most
    /// [`HOLD_FRAMES`] frames, for at most [`HOLD_TIME`]: a read of many
    /// small writes, or local writes that sleep (dirty-page throttling),
    /// do not hold the first of them back for long (in adaptive mode the
    /// wait would count against the link); and the connection's budget
    /// (at least 34 units) is never all in held frames.
    fn send_frame(&self, sh: &mut Shell, session: SessionId, msg: Message) {
        if let Message::Data { seq, .. } = &msg {
            mark(Point::Frame, *seq);
        }
        if twinblock_nbd::issuing::issuing_more()
            && sh.held.len() < HOLD_FRAMES
            && sh.held_since.is_none_or(|t| t.elapsed() < HOLD_TIME)
        {
            let node = self.this.clone();
            let release = Box::new(move || {
                if let Some(node) = node.upgrade() {
                    Self::release_held(&mut node.lock());
                }
            });
            if twinblock_nbd::issuing::when_issued(self as *const Node as usize, release).is_ok() {
                sh.held_since.get_or_insert_with(Instant::now);
                sh.held.push((session, msg));
                return;
            }
        }
        Self::release_held(sh);
        Self::hand_over(sh, session, msg);
    }

    /// Hands the held frames to their links, in order.
    fn release_held(sh: &mut Shell) {
        sh.held_since = None;
        for (session, msg) in std::mem::take(&mut sh.held) {
            Self::hand_over(sh, session, msg);
        }
    }

    fn hand_over(sh: &Shell, session: SessionId, msg: Message) {
        match &msg {
            Message::Data { seq, .. } => mark(Point::Handed, *seq),
            Message::Ack { done, .. } => mark(Point::AckHanded, *done),
            _ => {}
        }
        if let Some(l) = sh.links.get(&session) {
            l.answers.queued(&msg);
            let _ = l.queue.send(Outbound::Frame(msg));
        }
    }
}
