//! Busy polling of the link's thread (`busy-poll`, default 50 µs).
//!
//! Before the link's runtime parks (blocks in `epoll_wait`), it polls its
//! UDP socket and the runtime's queue of wake-ups from other threads (a
//! frame queued for the writer by the NBD thread, the store lane's room)
//! for up to the budget, yielding the CPU between looks. Work that arrives
//! meanwhile (the peer's acknowledgement, a write to send) is taken
//! without the thread going to sleep and being woken again. On a VM whose
//! idle vCPUs halt (no guest halt polling, as on this project's test
//! machine), each such wake-up costs an inter-processor interrupt and a
//! halted vCPU's exit: measured here, a protocol C 4 KiB write at QD1
//! went from about 230 µs to about 75 µs (README, "Busy polling"). The
//! thread yields between looks, so a runnable thread (fio, the NBD
//! connection, the peer node) takes the CPU first; an idle node spins at
//! most the budget after each burst of work (its timers, keep-alives
//! included: 10 to 20 a second), then sleeps as before.

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Largest budget the configuration accepts.
pub const MAX_BUDGET: Duration = Duration::from_millis(1);

/// What the link's thread watches before it sleeps.
#[derive(Debug)]
pub struct BusyPoll {
    budget: Duration,
    /// The link's socket (a duplicate: valid as long as this).
    socket: OwnedFd,
}

/// Why [`BusyPoll::spin`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// Another thread woke a task of the runtime (a frame queued for the
    /// link's writer, the store lane's room, a close).
    Pending,
    /// The socket has a datagram.
    Readable,
    /// Nothing came within the budget (or the budget is zero).
    Budget,
}

impl BusyPoll {
    /// Watches `socket` (a duplicate of the link's) for up to `budget`
    /// (capped at [`MAX_BUDGET`]).
    pub fn new(budget: Duration, socket: OwnedFd) -> BusyPoll {
        BusyPoll { budget: budget.min(MAX_BUDGET), socket }
    }

    /// Polls until `pending` holds (a task was woken from another thread),
    /// the socket is readable, or the budget is spent. Whatever ends it,
    /// the runtime then finds the work without sleeping: a remote wake-up
    /// also signals its driver, and a datagram that arrived since its last
    /// look is an edge its `epoll_wait` returns at once.
    pub fn spin(&self, pending: impl Fn() -> bool) -> Woke {
        if self.budget.is_zero() {
            return Woke::Budget;
        }
        let start = Instant::now();
        loop {
            if pending() {
                return Woke::Pending;
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

    /// The hook for the link runtime's `on_thread_park`: spins, ending
    /// early when a task of the runtime was woken from another thread
    /// (its queue of remote wake-ups is not empty).
    pub fn before_park(&self) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let metrics = rt.metrics();
        self.spin(|| metrics.global_queue_depth() > 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        (a, b)
    }

    fn dup(s: &UdpSocket) -> OwnedFd {
        OwnedFd::from(s.try_clone().unwrap())
    }

    #[test]
    fn returns_when_a_datagram_is_there() {
        let (a, b) = pair();
        let poll = BusyPoll::new(MAX_BUDGET, dup(&b));
        assert_eq!(poll.spin(|| false), Woke::Budget);
        a.send(b"x").unwrap();
        // Delivered (loopback may defer it to a softirq under load).
        b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        b.peek(&mut [0u8; 1]).unwrap();
        assert_eq!(poll.spin(|| false), Woke::Readable);
    }

    #[test]
    fn returns_when_work_is_pending_meanwhile() {
        let (_a, b) = pair();
        // A long budget (past the cap) so that only the work can end it.
        let poll = BusyPoll { budget: Duration::from_secs(30), socket: dup(&b) };
        let pending = Arc::new(AtomicBool::new(false));
        let setter = {
            let pending = pending.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                pending.store(true, Ordering::Relaxed);
            })
        };
        let woke = poll.spin(|| pending.load(Ordering::Relaxed));
        setter.join().unwrap();
        assert_eq!(woke, Woke::Pending);
    }

    #[test]
    fn a_remote_wake_up_of_the_runtime_ends_the_spin() {
        let (_a, b) = pair();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let poll = BusyPoll { budget: Duration::from_secs(30), socket: dup(&b) };
        let _in = rt.enter();
        assert_eq!(rt.metrics().global_queue_depth(), 0);
        // A task woken from another thread waits in the runtime's queue
        // of remote wake-ups until the runtime runs.
        let handle = rt.handle().clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            drop(handle.spawn(async {}));
        })
        .join()
        .unwrap();
        let metrics = rt.metrics();
        assert_eq!(poll.spin(|| metrics.global_queue_depth() > 0), Woke::Pending);
    }

    #[test]
    fn zero_budget_never_spins_and_budgets_are_capped() {
        let (_a, b) = pair();
        let off = BusyPoll::new(Duration::ZERO, dup(&b));
        assert_eq!(off.spin(|| panic!("looked although off")), Woke::Budget);
        let big = BusyPoll::new(Duration::from_secs(5), dup(&b));
        assert_eq!(big.budget, MAX_BUDGET);
    }
}
