//! The reconnect fence (nbd.md rule 11): a write of a connection that died
//! must never land after a newer write of its reconnected client. A new
//! connection therefore issues its first request only after every request
//! issued before its handshake finished, on any connection, has completed.
//! Device operations always complete (they do not depend on any client), so
//! the wait is bounded by the device, never by a stalled client.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

#[derive(Default)]
struct State {
    epoch: u64,
    /// Operations in flight, by the epoch they were issued in.
    in_flight: BTreeMap<u64, usize>,
    waiters: usize,
}

#[derive(Default)]
pub(crate) struct Fence {
    st: Mutex<State>,
    cv: Condvar,
}

impl Fence {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts an operation being issued now, until the token drops.
    pub fn enter(self: &Arc<Self>) -> FenceToken {
        let mut st = self.lock();
        let epoch = st.epoch;
        *st.in_flight.entry(epoch).or_insert(0) += 1;
        FenceToken { fence: self.clone(), epoch }
    }

    /// Waits until everything issued before this call has completed.
    /// Returns false if `cancelled` turned true first (checked every 100 ms).
    pub fn barrier(&self, cancelled: impl Fn() -> bool) -> bool {
        let mut st = self.lock();
        let mine = st.epoch;
        st.epoch += 1;
        loop {
            let older = st.in_flight.first_key_value().is_some_and(|(&e, _)| e <= mine);
            if !older {
                return true;
            }
            if cancelled() {
                return false;
            }
            st.waiters += 1;
            st = self
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
            st.waiters -= 1;
        }
    }
}

pub(crate) struct FenceToken {
    fence: Arc<Fence>,
    epoch: u64,
}

impl Drop for FenceToken {
    fn drop(&mut self) {
        let mut st = self.fence.lock();
        if let Some(n) = st.in_flight.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                st.in_flight.remove(&self.epoch);
                if st.waiters > 0 {
                    self.fence.cv.notify_all();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn barrier_waits_for_older_operations_only() {
        let f = Arc::new(Fence::default());
        let old = f.enter();
        let f2 = f.clone();
        let t = std::thread::spawn(move || f2.barrier(|| false));
        std::thread::sleep(Duration::from_millis(50));
        // Issued after the barrier started: not waited for.
        let newer = f.enter();
        assert!(!t.is_finished(), "the barrier waits for the older operation");
        drop(old);
        assert!(t.join().unwrap());
        drop(newer);
        assert!(f.barrier(|| false));
    }

    #[test]
    fn barrier_can_be_cancelled() {
        let f = Arc::new(Fence::default());
        let _op = f.enter();
        assert!(!f.barrier(|| true));
    }
}
