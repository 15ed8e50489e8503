//! Busy polling of the link's thread (`busy-poll`, default 50 µs).
//!
//! Before the link's runtime parks (blocks in `epoll_wait`), it polls its
//! UDP socket and the node's "frame queued" flag for up to the budget,
//! yielding the CPU between looks. Work that arrives meanwhile (the peer's
//! acknowledgement, a write to send) is taken without the thread going to
//! sleep and being woken again. On a VM whose idle vCPUs halt (no guest
//! halt polling, as on this project's test machine and on cloud
//! instances), each such wake-up costs an inter-processor interrupt and a
//! halted vCPU's exit: measured here, a protocol C 4 KiB write at QD1 went
//! from about 250 µs to about 80 µs. The thread yields between looks, so
//! a runnable thread (fio, the NBD connection, the peer node) takes the
//! CPU first; an idle node spins at most the budget after each burst of
//! work (its timers included), then sleeps as before.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Largest budget the configuration accepts.
pub const MAX_BUDGET: Duration = Duration::from_millis(1);

/// What the link's thread watches before it sleeps.
#[derive(Debug)]
pub struct BusyPoll {
    budget: Duration,
    /// The link's socket (a duplicate: valid as long as this).
    socket: OwnedFd,
    queued: Arc<AtomicBool>,
}

/// Why [`BusyPoll::spin`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// A frame was queued for the link's writer.
    Queued,
    /// The socket has a datagram.
    Readable,
    /// Nothing came within the budget (or the budget is zero).
    Budget,
}

impl BusyPoll {
    /// Watches `socket` (a duplicate of the link's) and `queued` (set by
    /// whoever queues work for the thread) for `budget`.
    pub fn new(budget: Duration, socket: OwnedFd, queued: Arc<AtomicBool>) -> BusyPoll {
        BusyPoll { budget: budget.min(MAX_BUDGET), socket, queued }
    }

    /// Polls until work arrives or the budget is spent. The flag is cleared
    /// first: what set it before this call is known to the runtime already
    /// (a queued frame also wakes the runtime, which then does not sleep).
    pub fn spin(&self) -> Woke {
        if self.budget.is_zero() {
            return Woke::Budget;
        }
        self.queued.store(false, Ordering::Relaxed);
        let start = Instant::now();
        loop {
            if self.queued.load(Ordering::Relaxed) {
                return Woke::Queued;
            }
            let mut p =
                libc::pollfd { fd: self.socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd, no timeout.
            if unsafe { libc::poll(&mut p, 1, 0) } > 0 {
                return Woke::Readable;
            }
            if start.elapsed() >= self.budget {
                return Woke::Budget;
            }
            // SAFETY: no arguments; lets a runnable thread have this CPU.
            unsafe { libc::sched_yield() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        (a, b)
    }

    #[test]
    fn returns_when_a_datagram_is_there() {
        let (a, b) = pair();
        let poll = BusyPoll::new(MAX_BUDGET, OwnedFd::from(b.try_clone().unwrap()), Arc::default());
        assert_eq!(poll.spin(), Woke::Budget);
        a.send(b"x").unwrap();
        // (Loopback delivers within the send call.)
        assert_eq!(poll.spin(), Woke::Readable);
    }

    #[test]
    fn returns_when_a_frame_is_queued_meanwhile() {
        let (_a, b) = pair();
        let queued = Arc::new(AtomicBool::new(false));
        // A long budget (past the cap) so that only the flag can end it.
        let poll = BusyPoll {
            budget: Duration::from_secs(30),
            socket: OwnedFd::from(b.try_clone().unwrap()),
            queued: queued.clone(),
        };
        let done = Arc::new(AtomicBool::new(false));
        let setter = {
            let done = done.clone();
            std::thread::spawn(move || {
                // Set after the spin has cleared it, and again until seen.
                while !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                    queued.store(true, Ordering::Relaxed);
                }
            })
        };
        let woke = poll.spin();
        done.store(true, Ordering::Relaxed);
        setter.join().unwrap();
        assert_eq!(woke, Woke::Queued);
    }

    #[test]
    fn zero_budget_never_spins_and_budgets_are_capped() {
        let (_a, b) = pair();
        let queued = Arc::new(AtomicBool::new(true));
        let off =
            BusyPoll::new(Duration::ZERO, OwnedFd::from(b.try_clone().unwrap()), queued.clone());
        assert_eq!(off.spin(), Woke::Budget);
        assert!(queued.load(Ordering::Relaxed), "a zero budget leaves the flag alone");
        let big =
            BusyPoll::new(Duration::from_secs(5), OwnedFd::from(b.try_clone().unwrap()), queued);
        assert_eq!(big.budget, MAX_BUDGET);
    }
}
