//! The receiving (Secondary) side of a replication session, sans-IO: checks
//! every payload's CRC, puts operations back in sequence order (whatever
//! order they arrive in), drops duplicates, and produces cumulative acks.

use std::collections::BTreeMap;

use super::wire::{Message, Op};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkFault {
    #[error("CRC mismatch on write seq {seq} at offset {offset} ({len} bytes)")]
    Crc { seq: u64, offset: u64, len: u64 },
    #[error("sequence number 0 is not valid")]
    ZeroSeq,
}

#[derive(Debug)]
pub struct Receiver {
    /// Next sequence number to hand out for applying.
    next_apply: u64,
    /// Arrived, not yet handed out.
    waiting: BTreeMap<u64, Op>,
    /// Every op up to here has arrived.
    received: u64,
    /// Every op up to here has been applied.
    done: u64,
    acked: (u64, u64),
}

impl Default for Receiver {
    fn default() -> Self {
        Receiver::new()
    }
}

impl Receiver {
    pub fn new() -> Receiver {
        Receiver { next_apply: 1, waiting: BTreeMap::new(), received: 0, done: 0, acked: (0, 0) }
    }

    /// Takes an operation off the link. A CRC mismatch is a link fault:
    /// nothing of it is applied.
    pub fn on_data(&mut self, seq: u64, op: Op) -> Result<(), LinkFault> {
        if seq == 0 {
            return Err(LinkFault::ZeroSeq);
        }
        if let Op::Write { offset, data, crc, .. } = &op {
            if crc32fast::hash(data) != *crc {
                return Err(LinkFault::Crc { seq, offset: *offset, len: data.len() as u64 });
            }
        }
        if seq < self.next_apply || self.waiting.contains_key(&seq) {
            return Ok(()); // duplicate
        }
        self.waiting.insert(seq, op);
        while self.received + 1 < self.next_apply || self.waiting.contains_key(&(self.received + 1))
        {
            self.received += 1;
        }
        Ok(())
    }

    /// The next operation to apply, strictly in sequence order.
    pub fn next_ready(&mut self) -> Option<(u64, Op)> {
        let op = self.waiting.remove(&self.next_apply)?;
        let seq = self.next_apply;
        self.next_apply += 1;
        Some((seq, op))
    }

    /// `seq` (the last one handed out) has been applied.
    pub fn applied(&mut self, seq: u64) {
        debug_assert_eq!(seq, self.done + 1, "applied out of order");
        self.done = seq;
    }

    /// A cumulative ack, if anything changed since the last one.
    pub fn ack(&mut self) -> Option<Message> {
        let now = (self.received, self.done);
        if now == self.acked {
            return None;
        }
        self.acked = now;
        Some(Message::Ack { received: now.0, done: now.1 })
    }

    pub fn done(&self) -> u64 {
        self.done
    }
}
