//! A request finished on the thread that wakes it.
//!
//! A request whose device operation could not complete when the connection
//! thread first polled it used to be spawned onto the runtime: its wake-up
//! (the peer's acknowledgement, on the replication link's thread) then woke
//! a runtime worker, which polled it once more and sent the reply — one
//! more thread hand-off per request, on two cores the largest cost after
//! the copies. For devices that allow it ([`BlockDevice::finish_on_wake`])
//! the waker polls the request right where it is woken.
//!
//! The states keep a wake that arrives during a poll (on this thread or
//! another) from polling twice at once or being lost: it is noted, and the
//! poller polls again.
//!
//! [`BlockDevice::finish_on_wake`]: crate::BlockDevice::finish_on_wake

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

type Request = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Nobody polls it; a wake polls it.
const IDLE: u8 = 0;
/// Being polled.
const POLLING: u8 = 1;
/// Being polled, and woken meanwhile: poll again.
const NOTIFIED: u8 = 2;
/// Finished.
const DONE: u8 = 3;

pub(crate) struct InlineTask {
    state: AtomicU8,
    request: Mutex<Option<Request>>,
}

impl InlineTask {
    /// Polls `request` once on this thread; if it is not done, the next wake
    /// polls it on the waking thread.
    ///
    /// Outside tokio's cooperative budget: the waking thread may be a tokio
    /// task that has spent its budget (the link's reader after many
    /// acknowledgements, the store's reaper), and a tokio channel polled
    /// then answers "pending" and wakes itself; this task would poll it
    /// again for ever, since that budget is only refilled when the waking
    /// task yields.
    pub fn start(request: impl Future<Output = ()> + Send + 'static) {
        let request: Request = Box::pin(tokio::task::unconstrained(request));
        let task = Arc::new(InlineTask {
            state: AtomicU8::new(POLLING),
            request: Mutex::new(Some(request)),
        });
        task.run();
    }

    /// Polls until the request is done or pending with no wake noted. Only
    /// the thread that moved the state to POLLING gets here.
    fn run(self: &Arc<Self>) {
        let waker = Waker::from(self.clone());
        let mut cx = Context::from_waker(&waker);
        let mut slot = self.request.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let Some(request) = slot.as_mut() else { return };
            if let Poll::Ready(()) = request.as_mut().poll(&mut cx) {
                *slot = None;
                self.state.store(DONE, Ordering::Release);
                return;
            }
            // Pending: back to IDLE unless a wake came in meanwhile.
            match self.state.compare_exchange(POLLING, IDLE, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return,
                Err(_) => {
                    // NOTIFIED: poll again.
                    self.state.store(POLLING, Ordering::Release);
                }
            }
        }
    }

    fn wake_up(self: &Arc<Self>) {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let next = match s {
                IDLE => POLLING,
                POLLING => NOTIFIED,
                _ => return, // already noted, or done
            };
            match self.state.compare_exchange(s, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if next == POLLING => return self.run(),
                Ok(_) => return,
                Err(now) => s = now,
            }
        }
    }
}

impl Wake for InlineTask {
    fn wake(self: Arc<Self>) {
        self.wake_up();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wake_up();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Ready on its `n`th poll; wakes itself from inside its own poll
    /// (a wake during the poll) and from another thread.
    struct Steps {
        polls: Arc<AtomicUsize>,
        n: usize,
        done: Arc<AtomicUsize>,
    }

    impl Future for Steps {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let k = self.polls.fetch_add(1, Ordering::SeqCst) + 1;
            if k >= self.n {
                self.done.fetch_add(1, Ordering::SeqCst);
                return Poll::Ready(());
            }
            if k % 2 == 1 {
                cx.waker().wake_by_ref(); // during its own poll
            } else {
                let w = cx.waker().clone();
                std::thread::spawn(move || w.wake());
            }
            Poll::Pending
        }
    }

    #[test]
    fn a_request_is_polled_to_completion_by_its_wakes_once_each() {
        let polls = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        InlineTask::start(Box::pin(Steps { polls: polls.clone(), n: 9, done: done.clone() }));
        let t = std::time::Instant::now();
        while done.load(Ordering::SeqCst) == 0 {
            assert!(t.elapsed() < std::time::Duration::from_secs(10), "never finished");
            std::thread::yield_now();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(done.load(Ordering::SeqCst), 1, "finished twice");
        assert_eq!(polls.load(Ordering::SeqCst), 9, "polled after it finished");
    }

    /// The waking thread is a tokio task that spent its cooperative budget
    /// (as the link's reader does after many acknowledgements): the request
    /// still finishes, instead of polling its "pending, woken" channel for
    /// ever on that thread.
    #[test]
    fn a_wake_from_a_task_out_of_budget_finishes_the_request() {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            rt.block_on(async move {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                InlineTask::start(Box::pin(async move {
                    let _ = rx.await;
                    let _ = done_tx.send(());
                }));
                std::future::poll_fn(|cx| {
                    // Each poll of a ready channel spends a unit of budget.
                    for _ in 0..1000 {
                        let (t, mut r) = tokio::sync::oneshot::channel::<()>();
                        let _ = t.send(());
                        let _ = Pin::new(&mut r).poll(cx);
                    }
                    Poll::Ready(())
                })
                .await;
                let _ = tx.send(()); // wakes the request here, out of budget
            });
        });
        assert!(
            done_rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok(),
            "the request never finished (polled for ever on the waking thread?)"
        );
    }

    #[test]
    fn a_wake_after_completion_does_nothing() {
        let waker: Arc<Mutex<Option<Waker>>> = Arc::default();
        let w2 = waker.clone();
        let mut first = true;
        InlineTask::start(Box::pin(std::future::poll_fn(move |cx| {
            if first {
                first = false;
                *w2.lock().unwrap() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            Poll::Ready(())
        })));
        let w = waker.lock().unwrap().take().unwrap();
        w.wake_by_ref(); // finishes it here
        w.wake(); // and this one finds it done
    }
}
