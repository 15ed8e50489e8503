//! Where replies go: the socket's write half, shared by every request of a
//! connection. A reply is written straight from the task that produced it
//! when the socket is idle and has room (no hand-off, no wake-up); otherwise
//! it joins a queue that a flusher task writes out in vectored batches.
//! Either way one reply's bytes are never interleaved with another's.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tracing::debug;

use crate::reply::Reply;

/// A reply on its way to the socket, holding the in-flight budget it used.
pub struct Queued {
    pub reply: Reply,
    _permit: Option<OwnedSemaphorePermit>,
    /// Bytes of this reply already written.
    sent: usize,
}

impl Queued {
    pub fn new(reply: Reply, permit: Option<OwnedSemaphorePermit>) -> Self {
        Queued { reply, _permit: permit, sent: 0 }
    }

    fn remaining(&self) -> usize {
        self.reply.len() - self.sent
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// The flusher owns the socket until the queue is empty.
    flushing: bool,
    /// The socket failed: replies are dropped.
    broken: bool,
    /// No more replies will come; the flusher exits when the queue is empty.
    closing: bool,
}

pub struct Sink {
    wr: OwnedWriteHalf,
    state: Mutex<State>,
    wake: Notify,
}

impl Sink {
    /// Returns the sink and its flusher task (to be spawned).
    pub fn new(wr: OwnedWriteHalf) -> (Arc<Sink>, impl std::future::Future<Output = ()> + Send) {
        let sink = Arc::new(Sink { wr, state: Mutex::new(State::default()), wake: Notify::new() });
        let flusher = flush_loop(sink.clone());
        (sink, flusher)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a reply: right now if the socket is free and takes it all,
    /// otherwise through the flusher.
    pub fn send(&self, mut q: Queued) {
        let mut st = self.lock();
        if st.broken {
            return;
        }
        if !st.flushing {
            debug_assert!(st.queue.is_empty());
            match try_write(&self.wr, std::slice::from_mut(&mut q)) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    debug!("reply write failed: {e}");
                    st.broken = true;
                    return;
                }
            }
            st.flushing = true;
            st.queue.push_back(q);
            drop(st);
            self.wake.notify_one();
            return;
        }
        st.queue.push_back(q);
    }

    /// No more replies: the flusher writes what is queued, shuts the write
    /// side down and ends.
    pub fn close(&self) {
        self.lock().closing = true;
        self.wake.notify_one();
    }
}

/// Writes as much of `batch` as the socket takes without blocking, advancing
/// `sent`. Ok(true) when everything was written.
fn try_write(wr: &OwnedWriteHalf, batch: &mut [Queued]) -> io::Result<bool> {
    loop {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(batch.len() * 2);
        for q in batch.iter().filter(|q| q.remaining() > 0) {
            let (h, d) = (&q.reply.head, &q.reply.data);
            if q.sent < h.len() {
                slices.push(IoSlice::new(&h[q.sent..]));
                if !d.is_empty() {
                    slices.push(IoSlice::new(d));
                }
            } else {
                slices.push(IoSlice::new(&d[q.sent - h.len()..]));
            }
            if slices.len() >= 64 {
                break;
            }
        }
        if slices.is_empty() {
            return Ok(true);
        }
        let mut n = match wr.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e),
        };
        for q in batch.iter_mut() {
            let take = q.remaining().min(n);
            q.sent += take;
            n -= take;
            if n == 0 {
                break;
            }
        }
    }
}

async fn flush_loop(sink: Arc<Sink>) {
    let mut batch: Vec<Queued> = Vec::new();
    loop {
        let idle = {
            let mut st = sink.lock();
            batch.retain(|q| q.remaining() > 0);
            if batch.is_empty() {
                batch.extend(st.queue.drain(..));
            }
            if batch.is_empty() {
                st.flushing = false;
                if st.closing || st.broken {
                    break;
                }
            }
            batch.is_empty()
        };
        if idle {
            sink.wake.notified().await;
            continue;
        }
        match try_write(&sink.wr, &mut batch) {
            Ok(true) => batch.clear(),
            Ok(false) => {
                if let Err(e) = sink.wr.writable().await {
                    debug!("reply socket: {e}");
                    sink.lock().broken = true;
                    batch.clear();
                }
            }
            Err(e) => {
                debug!("reply write failed: {e}");
                let mut st = sink.lock();
                st.broken = true;
                st.queue.clear();
                batch.clear();
            }
        }
    }
    // The write side shuts down when the last reference to the sink drops.
}
