//! One connected replication session, as the write path sees it: numbers
//! outgoing operations (through the sans-IO [`Sender`]), queues them for the
//! link's writer task, and wakes each NBD reply when the peer confirmed what
//! the protocol mode requires.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::config::Protocol;
use crate::protocol::sender::{Need, Sender, Unconfirmed};
use crate::protocol::wire::{Message, Op};

/// What the write path holds after handing an operation to the session.
pub enum Ticket {
    /// No session: the caller marks the range out of sync.
    Alone,
    /// The reply may go out now (protocol A).
    Queued,
    /// Wait for the peer; an error means the link was lost first (the range
    /// was marked out of sync before the waiter was released).
    Wait(oneshot::Receiver<()>),
}

struct Inner {
    sender: Sender,
    waiters: HashMap<u64, oneshot::Sender<()>>,
    /// Protocol A: lag budget held until the peer applied the op.
    lag: BTreeMap<u64, OwnedSemaphorePermit>,
    lost: bool,
}

pub struct Session {
    pub peer: String,
    pub protocol: Protocol,
    out: mpsc::UnboundedSender<Message>,
    inner: Mutex<Inner>,
    lag_budget: Arc<Semaphore>,
}

/// Lag budget units: 4 KiB.
const UNIT: u64 = 4096;

impl Session {
    pub fn new(
        peer: String,
        protocol: Protocol,
        max_lag: u64,
        out: mpsc::UnboundedSender<Message>,
    ) -> Session {
        Session {
            peer,
            protocol,
            out,
            inner: Mutex::new(Inner {
                sender: Sender::new(),
                waiters: HashMap::new(),
                lag: BTreeMap::new(),
                lost: false,
            }),
            lag_budget: Arc::new(Semaphore::new((max_lag / UNIT) as usize)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Protocol A: waits until `bytes` more may be in flight (bounded lag).
    pub async fn lag_permit(&self, bytes: u64) -> Option<OwnedSemaphorePermit> {
        if self.protocol != Protocol::A || bytes == 0 {
            return None;
        }
        let units = bytes.div_ceil(UNIT).max(1) as u32;
        self.lag_budget.clone().acquire_many_owned(units).await.ok()
    }

    /// Numbers `op` and queues it for the peer. Called under the node's
    /// ordering lock, so sequence order is the local apply order.
    pub fn submit(&self, op: &Op, lag: Option<OwnedSemaphorePermit>) -> Ticket {
        self.submit_needing(op, lag, Need::of(op, self.protocol))
    }

    /// Resync and verify traffic: paced by the peer applying it, whatever
    /// the mode. Returns the sequence number too (0 without a session).
    pub fn submit_resync(&self, op: &Op) -> (u64, Ticket) {
        let mut seq = 0;
        let t = self.submit_inner(op, None, Need::Done, &mut seq);
        (seq, t)
    }

    fn submit_needing(&self, op: &Op, lag: Option<OwnedSemaphorePermit>, need: Need) -> Ticket {
        self.submit_inner(op, lag, need, &mut 0)
    }

    fn submit_inner(
        &self,
        op: &Op,
        lag: Option<OwnedSemaphorePermit>,
        need: Need,
        seq_out: &mut u64,
    ) -> Ticket {
        let mut inner = self.lock();
        if inner.lost {
            return Ticket::Alone;
        }
        let (seq, ready) = inner.sender.submit_needing(op, need);
        *seq_out = seq;
        if self.out.send(Message::Data { seq, op: op.clone() }).is_err() {
            // The writer is gone; the link loss will account for this seq.
        }
        if let Some(p) = lag {
            inner.lag.insert(seq, p);
        }
        if ready {
            return Ticket::Queued;
        }
        let (tx, rx) = oneshot::channel();
        inner.waiters.insert(seq, tx);
        Ticket::Wait(rx)
    }

    /// A cumulative ack from the peer; returns the payload bytes it retired.
    pub fn on_ack(&self, received: u64, done: u64) {
        let mut inner = self.lock();
        for seq in inner.sender.on_ack(received, done) {
            if let Some(w) = inner.waiters.remove(&seq) {
                let _ = w.send(());
            }
        }
        let keep = inner.lag.split_off(&(done + 1));
        inner.lag = keep;
    }

    /// The peer failed to apply `seq`: its range is out of sync there; the
    /// reply no longer waits for the peer.
    pub fn on_failed(&self, seq: u64) -> Option<Unconfirmed> {
        let mut inner = self.lock();
        let u = inner.sender.on_failed(seq)?;
        if let Some(w) = inner.waiters.remove(&seq) {
            let _ = w.send(());
        }
        Some(u)
    }

    /// Sends a control message (ack, ping, state) to the peer.
    pub fn send(&self, m: Message) {
        let _ = self.out.send(m);
    }

    /// Ends the session: `mark` gets every unconfirmed range (to mark out of
    /// sync) before any waiting reply is released.
    pub fn lose(&self, mark: impl FnOnce(&[Unconfirmed])) {
        let mut inner = self.lock();
        if inner.lost {
            return;
        }
        inner.lost = true;
        let unconfirmed = inner.sender.lose();
        mark(&unconfirmed);
        inner.waiters.clear(); // waiters see the link was lost
        inner.lag.clear();
    }

    pub fn in_flight(&self) -> usize {
        self.lock().sender.in_flight()
    }
}
