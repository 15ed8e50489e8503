//! The node's store lane: the store operations the core issues, performed
//! in the order it issued them, the large ones off the node's lock.
//!
//! The core asks for its store operations in an order that matters
//! (overlapping writes land in that order; a flush covers every write
//! issued before it). The shell used to perform each one in place, under
//! the node's mutex: a 1 MiB `pwrite` (a few hundred microseconds) then held
//! the lock, so the link's thread could not take in the peer's
//! acknowledgements meanwhile, and on a Secondary the link's one thread
//! received, decrypted, checked and wrote every byte itself, one stage
//! after the other (issue 10's profiles of 1 MiB writes).
//!
//! Now an operation of at least [`LANE_MIN`] bytes, and everything issued
//! after it until the lane is empty again, goes to the lane: a thread of the
//! node's own performs them in order, outside the lock, and reports each
//! completion to the core. Smaller operations issued while the lane is
//! empty are still performed in place (a 4 KiB page-cache write costs less
//! than waking a thread). One queue, one performer at a time: the order is
//! the core's.
//!
//! With a `disk-timeout` every operation goes to the lane ([`Lane::all`]):
//! one the disk never completes then blocks the lane's thread, not the
//! node's lock, so the core's timer can detach the disk and answer the
//! requests that waited for it (a page-cache write in place can block
//! too, on a disk that stopped answering).
//!
//! What the lane has not performed yet is visible to the shell: its
//! backlog in bytes (the link's reader stops taking in frames above
//! [`LANE_BACKLOG`], so QUIC's flow control holds the peer back as a slow
//! disk did when the reader wrote itself), and how many queued operations
//! are performed (a read waits for the writes issued before it; the final
//! flush at stop waits for all of them).

use std::collections::VecDeque;

use crate::core::{IoId, StoreOp};

/// Store operations at least this large (bytes written, zeroed or read)
/// are performed on the lane's thread.
pub const LANE_MIN: u64 = 128 << 10;

/// The most the lane holds (bytes queued or being performed) before the
/// link's reader waits: twice the link's flow-control window.
pub const LANE_BACKLOG: u64 = 2 * crate::tls::WINDOW as u64;

/// Whether the lane's thread is at work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneState {
    /// Nothing queued; operations may be performed in place.
    Idle,
    /// The lane's thread performs what is queued (and what is queued
    /// meanwhile) until the queue is empty.
    Running,
}

/// The queue, behind the node's lock.
#[derive(Debug)]
pub struct Lane {
    queue: VecDeque<(IoId, StoreOp)>,
    state: LaneState,
    /// Bytes queued or being performed.
    backlog: u64,
    /// Bytes of the operation being performed.
    taken: u64,
    /// Operations ever queued, and of those, performed.
    queued: u64,
    performed: u64,
    /// Smaller operations are performed in place when the lane is idle.
    min: u64,
}

/// What [`Lane::offer`] did with an operation.
#[derive(Debug)]
pub enum Offer {
    /// Perform it in place, now.
    InPlace(IoId, StoreOp),
    /// Queued; the lane's thread is running.
    Queued,
    /// Queued, and the lane's thread must be woken (it was idle).
    Wake,
}

impl Default for Lane {
    fn default() -> Self {
        Lane {
            queue: VecDeque::new(),
            state: LaneState::Idle,
            backlog: 0,
            taken: 0,
            queued: 0,
            performed: 0,
            min: LANE_MIN,
        }
    }
}

/// The bytes `op` moves.
fn size(op: &StoreOp) -> u64 {
    match op {
        StoreOp::Write { data, .. } | StoreOp::Scratch { data, .. } => data.len() as u64,
        StoreOp::Zero { len, .. } | StoreOp::Read { len, .. } => *len,
        StoreOp::Flush => 0,
    }
}

impl Lane {
    /// A lane that performs every operation (none in place under the
    /// node's lock): for a node with a `disk-timeout`.
    pub fn all() -> Lane {
        Lane { min: 0, ..Lane::default() }
    }

    pub fn state(&self) -> LaneState {
        self.state
    }

    /// An operation the core issued: in place if nothing issued before it
    /// is still queued and it is small, else queued behind them.
    pub fn offer(&mut self, io: IoId, op: StoreOp) -> Offer {
        if self.state == LaneState::Idle && size(&op) < self.min {
            return Offer::InPlace(io, op);
        }
        self.backlog += size(&op);
        self.queued += 1;
        self.queue.push_back((io, op));
        match self.state {
            LaneState::Running => Offer::Queued,
            LaneState::Idle => {
                self.state = LaneState::Running;
                Offer::Wake
            }
        }
    }

    /// The lane's thread takes the next operation; none left: the lane is
    /// idle again (checked and set under the same lock as `offer`, so no
    /// operation is left behind).
    pub fn take_next(&mut self) -> Option<(IoId, StoreOp)> {
        let next = self.queue.pop_front();
        match &next {
            Some((_, op)) => self.taken = size(op),
            None => self.state = LaneState::Idle,
        }
        next
    }

    /// The lane's thread performed the operation it took last.
    pub fn performed(&mut self) {
        self.backlog = self.backlog.saturating_sub(std::mem::take(&mut self.taken));
        self.performed += 1;
    }

    /// A mark that [`Lane::caught_up`] passes once everything queued so far
    /// is performed.
    pub fn mark(&self) -> u64 {
        self.queued
    }

    pub fn caught_up(&self, mark: u64) -> bool {
        self.performed >= mark
    }

    /// Room for more: the backlog is within [`LANE_BACKLOG`].
    pub fn has_room(&self) -> bool {
        self.backlog <= LANE_BACKLOG
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn write(len: usize) -> StoreOp {
        StoreOp::Write { offset: 0, data: Bytes::from(vec![0; len]), fua: false }
    }

    #[test]
    fn with_a_disk_timeout_nothing_is_performed_in_place() {
        let mut lane = Lane::all();
        assert!(matches!(lane.offer(1, write(4096)), Offer::Wake));
        assert!(matches!(lane.offer(2, StoreOp::Flush), Offer::Queued));
        assert_eq!(lane.state(), LaneState::Running);
    }

    #[test]
    fn small_operations_are_performed_in_place_while_the_lane_is_idle() {
        let mut lane = Lane::default();
        assert!(matches!(lane.offer(1, write(4096)), Offer::InPlace(1, _)));
        assert!(matches!(lane.offer(2, StoreOp::Flush), Offer::InPlace(2, _)));
        assert_eq!(lane.state(), LaneState::Idle);
    }

    #[test]
    fn everything_after_a_large_operation_keeps_its_order_on_the_lane() {
        let mut lane = Lane::default();
        assert!(matches!(lane.offer(1, write(1 << 20)), Offer::Wake));
        // Small, but issued after a queued one: queued behind it.
        assert!(matches!(lane.offer(2, write(4096)), Offer::Queued));
        assert!(matches!(lane.offer(3, StoreOp::Flush), Offer::Queued));
        let order: Vec<IoId> = std::iter::from_fn(|| lane.take_next().map(|(io, _)| io)).collect();
        assert_eq!(order, [1, 2, 3]);
        // Emptied: idle, and a small operation is in place again.
        assert_eq!(lane.state(), LaneState::Idle);
        assert!(matches!(lane.offer(4, write(4096)), Offer::InPlace(4, _)));
    }

    #[test]
    fn marks_and_backlog_follow_what_is_performed() {
        let mut lane = Lane::default();
        assert!(lane.caught_up(lane.mark()) && lane.has_room());
        lane.offer(1, write(1 << 20));
        lane.offer(2, write(4096));
        let mark = lane.mark();
        assert!(!lane.caught_up(mark));
        // Over the backlog limit: no room until it is performed.
        let big = LANE_BACKLOG as usize + 1;
        lane.offer(3, write(big));
        assert!(!lane.has_room());
        lane.take_next().unwrap();
        // Taken is not performed: a read must still wait.
        assert!(!lane.caught_up(mark));
        lane.performed();
        lane.take_next().unwrap();
        lane.performed();
        assert!(lane.caught_up(mark));
        assert!(!lane.caught_up(lane.mark()) && !lane.has_room());
        lane.take_next().unwrap();
        lane.performed();
        assert!(lane.caught_up(lane.mark()) && lane.has_room());
    }

    #[test]
    fn the_lane_is_woken_once_per_run() {
        let mut lane = Lane::default();
        assert!(matches!(lane.offer(1, write(1 << 20)), Offer::Wake));
        assert!(matches!(lane.offer(2, write(1 << 20)), Offer::Queued));
        assert!(lane.take_next().is_some());
        assert!(matches!(lane.offer(3, write(1 << 20)), Offer::Queued));
        assert!(
            lane.take_next().is_some() && lane.take_next().is_some() && lane.take_next().is_none()
        );
        assert!(matches!(lane.offer(4, write(1 << 20)), Offer::Wake));
    }
}
