//! A connection's in-flight budget and the count of its device operations.
//!
//! Every request, rejected ones included, takes units from the budget before
//! it is decoded further; the units come back when its reply has been handed
//! to the kernel. So when a client stops reading, its replies pile up only to
//! the budget, and then the connection stops reading from it.
//!
//! A connection's budget draws on the server's too (its parent): the same
//! units from both, so that clients that open many connections and read
//! none of their replies hold at most the server's budget, not the
//! connections' sum. Except a connection's one request while it holds
//! nothing else: clients that hold the server's budget slow the others
//! down to one request at a time, but never stop them.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often a connection waiting for the server's units looks whether it
/// was killed meanwhile (its own budget's close does not wake the
/// server's waiters).
const PARENT_RECHECK: Duration = Duration::from_millis(50);

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
    /// The server's budget, which every unit of this one is also taken
    /// from.
    parent: Option<Arc<Budget>>,
}

impl Budget {
    pub fn new(total: u32) -> Arc<Budget> {
        Budget::with_parent(total, None)
    }

    /// A connection's budget drawing on the server's `parent`.
    pub fn with_parent(total: u32, parent: Option<Arc<Budget>>) -> Arc<Budget> {
        Arc::new(Budget {
            st: Mutex::new(State { available: total, ..State::default() }),
            cv: Condvar::new(),
            total,
            parent,
        })
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// All this budget's units in use are `n` (one request's).
    fn holds_only(&self, n: u32) -> bool {
        let st = self.lock();
        st.available + n.min(self.total) == self.total
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

    /// Takes `n` units (capped at the total), waiting for them, from this
    /// budget and then, unless this budget held none, from its parent; None
    /// once the budget is closed.
    pub fn acquire(self: &Arc<Self>, n: u32) -> Option<Permit> {
        let n = n.min(self.total);
        let mut st = self.lock();
        loop {
            if st.closed {
                return None;
            }
            if st.available >= n {
                break;
            }
            st = self.wait(st);
        }
        let alone = st.available == self.total;
        st.available -= n;
        drop(st);
        let mut permit = Permit { budget: self.clone(), n, parent: None };
        if let Some(p) = self.parent.as_ref().filter(|_| !alone) {
            // (Dropped without the parent's units, the permit gives back
            // this budget's.)
            permit.parent = p.acquire_for(n, self)?.map(Box::new);
        }
        Some(permit)
    }

    /// The parent's part of a child's `acquire` of `n` units: waits for
    /// them, giving up once `child` is closed. Some(None) if meanwhile
    /// this request became all `child` holds (its earlier ones done): it
    /// goes on without the parent, as one alone would have.
    fn acquire_for(self: &Arc<Self>, n: u32, child: &Budget) -> Option<Option<Permit>> {
        let units = n.min(self.total);
        let mut st = self.lock();
        loop {
            if st.closed || child.is_closed() {
                return None;
            }
            if st.available >= units {
                st.available -= units;
                return Some(Some(Permit { budget: self.clone(), n: units, parent: None }));
            }
            if child.holds_only(n) {
                return Some(None);
            }
            st.waiters += 1;
            st = self.cv.wait_timeout(st, PARENT_RECHECK).unwrap_or_else(|e| e.into_inner()).0;
            st.waiters -= 1;
        }
    }

    /// Takes `n` units if they are there right now (here and in the
    /// parent).
    pub fn try_acquire(self: &Arc<Self>, n: u32) -> Option<Permit> {
        let n = n.min(self.total);
        let mut st = self.lock();
        if st.closed || st.available < n {
            return None;
        }
        let alone = st.available == self.total;
        st.available -= n;
        drop(st);
        let mut permit = Permit { budget: self.clone(), n, parent: None };
        if let Some(p) = self.parent.as_ref().filter(|_| !alone) {
            permit.parent = Some(Box::new(p.try_acquire(n)?));
        }
        Some(permit)
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

/// Units of the budget (and of its parent), given back on drop.
pub(crate) struct Permit {
    budget: Arc<Budget>,
    n: u32,
    parent: Option<Box<Permit>>,
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

    /// Connections draw on the server's budget too, but a connection that
    /// holds nothing always gets its one request.
    #[test]
    fn connections_share_the_servers_budget() {
        let server = Budget::new(6);
        let child = || Budget::with_parent(4, Some(server.clone()));
        let (a, b) = (child(), child());
        let pa1 = a.acquire(1).unwrap();
        assert_eq!(server.available(), 6, "a connection's request while it holds nothing");
        let pa2 = a.acquire(3).unwrap();
        assert_eq!(server.available(), 3);
        let _pb1 = b.acquire(1).unwrap();
        let pb2 = b.try_acquire(3).unwrap();
        assert_eq!(server.available(), 0);
        let c = child();
        let _pc1 = c.acquire(2).unwrap();
        assert!(c.try_acquire(1).is_none(), "the server has none left");
        assert_eq!(c.available(), 2, "a refused try gives its own units back");
        // c waits for the server's units, and gets them when a's come back.
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.acquire(1).is_some());
        std::thread::sleep(Duration::from_millis(30));
        drop(pa2);
        assert!(t.join().unwrap());
        assert_eq!(server.available(), 3);
        assert_eq!(a.available(), 3);
        drop((pa1, pb2));
        assert_eq!(server.available(), 6);
        assert_eq!((a.available(), b.available()), (4, 3));
        // A pipelining connection: its second request waits for the
        // server's units, and goes on without them once its first is done
        // (slowed, never stopped).
        let all = server.acquire(6).unwrap();
        let e = child();
        let first = e.acquire(1).unwrap();
        let e2 = e.clone();
        let t = std::thread::spawn(move || e2.acquire(2).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(!t.is_finished(), "the second request waits for the server");
        drop(first);
        assert!(t.join().unwrap(), "then goes on as the connection's only one");
        drop(all);
        // All the server's units held: a connection holding nothing still
        // gets its request; one killed while it waits stops waiting.
        let all = server.acquire(6).unwrap();
        let d = child();
        let pd = d.acquire(4).unwrap();
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.acquire(1).is_none());
        std::thread::sleep(Duration::from_millis(30));
        c.close();
        assert!(t.join().unwrap(), "a killed connection stops waiting for the server");
        drop((all, pd));
        assert_eq!(server.available(), 6);
    }
}
