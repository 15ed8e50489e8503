//! Work a device holds until the requests of one read are issued.
//!
//! A connection's thread issues the requests of one read one after the
//! other, each polled in place. A device whose requests hand work to
//! another thread (the replicated node hands each write's frame to its
//! link's thread) may hold that hand-off while more requests of the same
//! read follow the current one, and make it once, when the last of them is
//! issued: one wake-up of the other thread for them all instead of one
//! each, and what it gets goes out together (on the link: fuller packets,
//! fewer sends). The last request of a read (at QD1 the only one) is never
//! held back: [`issuing_more`] is false while it is issued.
//!
//! What is held runs when the last request is issued, before the
//! connection's thread waits for anything (budget units, the next read),
//! and on the way out of the loop however it ends (a panic included).

use std::cell::{Cell, RefCell};

/// What runs once the read's requests are issued, each at most once per
/// key (a device registers one release however many requests it holds).
type Held = Vec<(usize, Box<dyn FnOnce()>)>;

thread_local! {
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
    static MORE: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is issuing the requests of one read and more of
/// them follow the one being issued: a device may then hold its hand-off
/// with [`when_issued`].
pub fn issuing_more() -> bool {
    MORE.with(Cell::get)
}

/// Runs `release` once this thread has issued the requests of its current
/// read, unless a release under the same `key` is registered already.
/// Gives `release` back (to be done now) when the thread is not issuing
/// a read's requests or none follows the current one.
pub fn when_issued(key: usize, release: Box<dyn FnOnce()>) -> Result<(), Box<dyn FnOnce()>> {
    if !issuing_more() {
        return Err(release);
    }
    HELD.with(|h| match h.borrow_mut().as_mut() {
        None => Err(release),
        Some(held) => {
            if !held.iter().any(|(k, _)| *k == key) {
                held.push((key, release));
            }
            Ok(())
        }
    })
}

/// The connection thread's side: set while it issues one read's requests.
pub(crate) struct Issuing(());

impl Issuing {
    /// Starts issuing the requests of one read.
    pub(crate) fn start() -> Issuing {
        HELD.with(|h| *h.borrow_mut() = Some(Vec::new()));
        Issuing(())
    }

    /// The next request is issued with `more` requests of the read after it.
    pub(crate) fn next(&self, more: bool) {
        MORE.with(|m| m.set(more));
    }

    /// Runs what was held (the thread is about to wait, or the last request
    /// was issued); the read's requests may go on being issued.
    pub(crate) fn release(&self) {
        // (Nothing registers while they run: no request follows now.)
        MORE.with(|m| m.set(false));
        let held = HELD.with(|h| h.borrow_mut().as_mut().map(std::mem::take));
        for (_, release) in held.into_iter().flatten() {
            release();
        }
    }
}

impl Drop for Issuing {
    fn drop(&mut self) {
        self.release();
        HELD.with(|h| *h.borrow_mut() = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A release callback, boxed as `when_issued` takes it.
    type Release = Box<dyn FnOnce()>;

    fn counter() -> (Rc<Cell<u32>>, impl Fn() -> Release) {
        let n = Rc::new(Cell::new(0));
        let m = n.clone();
        (n, move || {
            let m = m.clone();
            Box::new(move || m.set(m.get() + 1))
        })
    }

    #[test]
    fn nothing_is_held_outside_a_read_or_for_its_last_request() {
        let (ran, release) = counter();
        assert!(when_issued(1, release()).is_err(), "not issuing");
        let issuing = Issuing::start();
        issuing.next(false);
        assert!(!issuing_more());
        assert!(when_issued(1, release()).is_err(), "the last request is never held");
        drop(issuing);
        assert_eq!(ran.get(), 0);
    }

    #[test]
    fn what_is_held_runs_once_per_key_when_the_last_request_is_issued() {
        let (ran, release) = counter();
        let issuing = Issuing::start();
        issuing.next(true);
        assert!(when_issued(1, release()).is_ok());
        assert!(when_issued(1, release()).is_ok(), "one release per key");
        assert!(when_issued(2, release()).is_ok());
        assert_eq!(ran.get(), 0, "held while more requests follow");
        issuing.next(false);
        issuing.release();
        assert_eq!(ran.get(), 2);
        // The next read's requests hold again.
        issuing.next(true);
        assert!(when_issued(1, release()).is_ok());
        drop(issuing);
        assert_eq!(ran.get(), 3, "released on the way out");
        assert!(!issuing_more());
    }

    #[test]
    fn what_is_held_runs_when_the_loop_unwinds() {
        let (ran, release) = counter();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let issuing = Issuing::start();
            issuing.next(true);
            when_issued(7, release()).ok();
            panic!("a request panicked");
        }));
        assert!(r.is_err());
        assert_eq!(ran.get(), 1);
    }
}
