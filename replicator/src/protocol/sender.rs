//! The sending (Primary) side of a replication session, sans-IO: numbers
//! operations, tracks what each one still waits for, and turns cumulative
//! acknowledgements into completions.

use std::collections::BTreeMap;

use crate::config::Protocol;

use super::wire::Op;

/// What the NBD reply for an operation must wait for from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Nothing (protocol A, and flushes in A: a barrier only).
    Queued,
    /// The peer has it in memory (protocol B).
    Received,
    /// The peer has applied it (protocol C; flushes in B and C).
    Done,
}

impl Need {
    pub fn of(op: &Op, protocol: Protocol) -> Need {
        match (protocol, op) {
            (Protocol::A, _) => Need::Queued,
            (Protocol::B, Op::Flush) => Need::Done,
            (Protocol::B, _) => Need::Received,
            (Protocol::C, _) => Need::Done,
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    need: Need,
    satisfied: bool,
    range: Option<(u64, u64)>,
    bytes: u64,
}

/// An operation that did not make it to the peer's disk before the link was
/// lost: its range must be resynced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconfirmed {
    pub seq: u64,
    pub range: Option<(u64, u64)>,
    /// Its NBD reply was still waiting for the peer.
    pub was_waiting: bool,
}

#[derive(Debug, Default)]
pub struct Sender {
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
    received: u64,
    done: u64,
    in_flight_bytes: u64,
}

impl Sender {
    pub fn new() -> Sender {
        Sender { next_seq: 1, ..Sender::default() }
    }

    /// Numbers `op`. Returns its sequence number and whether its reply may go
    /// out without waiting for the peer.
    pub fn submit(&mut self, op: &Op, protocol: Protocol) -> (u64, bool) {
        self.submit_needing(op, Need::of(op, protocol))
    }

    /// Like [`Sender::submit`] with an explicit need (resync waits for Done
    /// whatever the mode).
    pub fn submit_needing(&mut self, op: &Op, need: Need) -> (u64, bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let satisfied = need == Need::Queued;
        let bytes = op.wire_bytes();
        self.in_flight_bytes += bytes;
        self.pending.insert(seq, Pending { need, satisfied, range: op.range(), bytes });
        (seq, satisfied)
    }

    /// Applies a cumulative ack; returns the operations whose reply may now
    /// go out (each exactly once, in order).
    pub fn on_ack(&mut self, received: u64, done: u64) -> Vec<u64> {
        let received = received.max(done).min(self.next_seq - 1);
        let done = done.min(self.next_seq - 1);
        let mut ready = Vec::new();
        if received > self.received {
            for (&seq, p) in self.pending.range_mut(self.received + 1..=received) {
                if !p.satisfied && p.need == Need::Received {
                    p.satisfied = true;
                    ready.push(seq);
                }
            }
            self.received = received;
        }
        if done > self.done {
            let rest = self.pending.split_off(&(done + 1));
            for (seq, p) in std::mem::replace(&mut self.pending, rest) {
                if !p.satisfied {
                    ready.push(seq);
                }
                self.in_flight_bytes -= p.bytes;
            }
            self.done = done;
        }
        ready.sort_unstable();
        ready.dedup();
        ready
    }

    /// The peer could not apply `seq`: it is out of sync there. Returns it.
    pub fn on_failed(&mut self, seq: u64) -> Option<Unconfirmed> {
        let p = self.pending.get_mut(&seq)?;
        let was_waiting = !p.satisfied;
        p.satisfied = true;
        Some(Unconfirmed { seq, range: p.range, was_waiting })
    }

    /// Payload bytes sent and not yet applied by the peer (protocol A's lag).
    pub fn in_flight_bytes(&self) -> u64 {
        self.in_flight_bytes
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The link is gone: everything not applied on the peer is returned, to
    /// be marked out of sync; waiting replies go out without the peer.
    pub fn lose(&mut self) -> Vec<Unconfirmed> {
        self.in_flight_bytes = 0;
        std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(seq, p)| Unconfirmed { seq, range: p.range, was_waiting: !p.satisfied })
            .collect()
    }
}
