//! A connection's in-flight budget and the count of its device operations.
//!
//! Every request, rejected ones included, takes units from the budget before
//! it is decoded further; the units come back when its reply has been handed
//! to the kernel. So when a client stops reading, its replies pile up only to
//! the budget, and then the connection stops reading from it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    available: u32,
    /// No more units will be handed out (the connection was killed).
    closed: bool,
    /// Device operations issued and not yet completed.
    ops: usize,
    /// Someone sleeps on the condvar (notify only then: a notify is a syscall).
    waiters: usize,
}

pub(crate) struct Budget {
    st: Mutex<State>,
    cv: Condvar,
    total: u32,
}

impl Budget {
    pub fn new(total: u32) -> Arc<Budget> {
        Arc::new(Budget {
            st: Mutex::new(State { available: total, ..State::default() }),
            cv: Condvar::new(),
            total,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        st.waiters += 1;
        st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        st.waiters -= 1;
        st
    }

    fn wake(&self, st: &State) {
        if st.waiters > 0 {
            self.cv.notify_all();
        }
    }

    /// Takes `n` units (capped at the total), waiting for them; None once
    /// the budget is closed.
    pub fn acquire(self: &Arc<Self>, n: u32) -> Option<Permit> {
        let n = n.min(self.total);
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            if st.available >= n {
                st.available -= n;
                return Some(Permit { budget: self.clone(), n });
            }
            st = self.wait(st);
        }
    }

    /// Takes `n` units if they are there right now.
    pub fn try_acquire(self: &Arc<Self>, n: u32) -> Option<Permit> {
        let n = n.min(self.total);
        let mut st = self.lock();
        if st.closed || st.available < n {
            return None;
        }
        st.available -= n;
        Some(Permit { budget: self.clone(), n })
    }

    /// Refuses every later `acquire` and wakes a waiting one.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        self.wake(&st);
    }

    /// Counts a device operation until the guard drops.
    pub fn op(self: &Arc<Self>) -> OpGuard {
        self.lock().ops += 1;
        OpGuard(self.clone())
    }

    /// Waits until every device operation has completed.
    pub fn wait_ops(&self) {
        let mut st = self.lock();
        while st.ops > 0 {
            st = self.wait(st);
        }
    }

    #[cfg(test)]
    fn available(&self) -> u32 {
        self.lock().available
    }
}

/// Units of the budget, given back on drop.
pub(crate) struct Permit {
    budget: Arc<Budget>,
    n: u32,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut st = self.budget.lock();
        st.available += self.n;
        self.budget.wake(&st);
    }
}

pub(crate) struct OpGuard(Arc<Budget>);

impl Drop for OpGuard {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.ops -= 1;
        self.0.wake(&st);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn permits_come_back_and_close_wakes_a_waiter() {
        let b = Budget::new(4);
        let p = b.acquire(3).unwrap();
        assert_eq!(b.available(), 1);
        drop(p);
        let big = b.acquire(100).unwrap(); // capped at the total
        assert_eq!(b.available(), 0);
        drop(big);
        let all = b.acquire(4).unwrap();
        let b2 = b.clone();
        let t = std::thread::spawn(move || b2.acquire(1).is_none());
        std::thread::sleep(Duration::from_millis(50));
        b.close();
        assert!(t.join().unwrap(), "a closed budget refuses the waiter");
        drop(all);
        assert_eq!(b.available(), 4);
    }
}
