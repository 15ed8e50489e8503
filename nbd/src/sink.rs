//! Where replies go: the socket's write side, shared by every request of a
//! connection. A reply is written straight from the thread that produced it
//! (a non-blocking `sendmsg`) when the socket is idle and takes it all: no
//! hand-off, no wake-up. Otherwise (the socket is busy, or the reader holds
//! several replies to one read of requests) it joins a queue that the
//! connection's writer thread sends in vectored batches with blocking
//! writes, each bounded by the socket's send timeout. Either way one
//! reply's bytes are never interleaved with another's. A reply holds its
//! in-flight units until the kernel has it.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tracing::debug;

use crate::budget::{Budget, Permit};
use crate::reply::Reply;
use crate::sock;

/// A reply on its way to the socket, holding the in-flight budget it used.
pub(crate) struct Queued {
    pub reply: Reply,
    _permit: Option<Permit>,
    /// Bytes of this reply already written.
    sent: usize,
}

impl Queued {
    pub fn new(reply: Reply, permit: Option<Permit>) -> Self {
        Queued { reply, _permit: permit, sent: 0 }
    }

    fn remaining(&self) -> usize {
        self.reply.len() - self.sent
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    /// The writer thread owns the socket until the queue is empty.
    writing: bool,
    /// The socket failed or the connection was killed: replies are dropped.
    broken: bool,
    /// No more replies will come; the writer exits when the queue is empty.
    closing: bool,
    /// The writer sleeps on the condvar.
    idle: bool,
    /// The reader is working through a batch of requests: replies wait in
    /// the queue and go out together at `uncork`.
    corked: bool,
}

pub(crate) struct Sink {
    sock: Arc<TcpStream>,
    /// Closed when the socket fails, so that the reader issues nothing more.
    budget: Arc<Budget>,
    state: Mutex<State>,
    wake: Condvar,
}

/// Replies held back by `cork` go to the writer thread when there are at
/// least this many, so that the reader goes back to reading at once: on
/// loopback a `sendmsg` also runs the client's TCP receive path, a large
/// part of a small request's cost. A lone reply (queue depth 1) still
/// leaves from the reader, with no hand-off. Measured with
/// `scripts/bench-nbd.sh` (4k randread QD32: about 1.3x the reader sending
/// every batch itself on a loaded machine; 4k randwrite QD1 unchanged).
const HANDOFF_REPLIES: usize = 2;

/// Why the writer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Every reply was written and the write side was shut down.
    Drained,
    /// The socket failed (or the connection was killed); replies were dropped.
    Broken,
}

impl Sink {
    pub fn new(sock: Arc<TcpStream>, budget: Arc<Budget>) -> Arc<Sink> {
        Arc::new(Sink { sock, budget, state: Mutex::new(State::default()), wake: Condvar::new() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends a reply: right now if the socket is free and takes it all,
    /// otherwise through the writer thread; inside [`batch`], when the
    /// batch ends. Never blocks.
    pub fn send(self: &Arc<Self>, q: Queued) {
        let Some(mut q) = hold(self, q) else { return };
        let mut st = self.lock();
        if st.broken {
            return;
        }
        if st.corked && !st.writing {
            st.queue.push_back(q);
            return;
        }
        if !st.writing {
            match write_batch(&self.sock, std::slice::from_mut(&mut q), false) {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => {
                    drop(st);
                    return self.write_failed(e);
                }
            }
            st.writing = true;
        }
        st.queue.push_back(q);
        if st.idle {
            self.wake.notify_one();
        }
    }

    /// Sends the replies a [`batch`] held: in one vectored non-blocking
    /// write if the socket is free and takes them (the rest through the
    /// writer), else into the queue the writer, or the reader's `uncork`,
    /// sends.
    fn send_held(&self, mut held: Vec<Queued>) {
        let mut st = self.lock();
        if st.broken {
            return;
        }
        if !st.writing && !st.corked {
            match write_batch(&self.sock, &mut held, false) {
                Ok(true) => return,
                Ok(false) => held.retain(|q| q.remaining() > 0),
                Err(e) => {
                    drop(st);
                    return self.write_failed(e);
                }
            }
            st.writing = true;
        }
        st.queue.extend(held);
        if st.writing && st.idle {
            self.wake.notify_one();
        }
    }

    /// A reply write failed: the connection is dead (see `break_off`).
    fn write_failed(&self, e: io::Error) {
        debug!("reply write failed: {e}");
        self.break_off();
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// Holds replies back until `uncork` (the reader has more requests in
    /// hand; their replies will leave together).
    pub fn cork(&self) {
        self.lock().corked = true;
    }

    /// Sends what `cork` held back: several replies through the writer
    /// thread (vectored), a single one right here in one non-blocking
    /// `sendmsg` if the socket takes it (the rest through the writer).
    pub fn uncork(&self) {
        let mut st = self.lock();
        st.corked = false;
        if st.broken || st.writing || st.queue.is_empty() {
            return;
        }
        if st.queue.len() >= HANDOFF_REPLIES {
            st.writing = true;
            if st.idle {
                self.wake.notify_one();
            }
            return;
        }
        let mut batch: Vec<Queued> = st.queue.drain(..).collect();
        match write_batch(&self.sock, &mut batch, false) {
            Ok(true) => return,
            Ok(false) => {}
            Err(e) => {
                drop(st);
                return self.write_failed(e);
            }
        }
        batch.retain(|q| q.remaining() > 0);
        for q in batch.into_iter().rev() {
            st.queue.push_front(q);
        }
        st.writing = true;
        if st.idle {
            self.wake.notify_one();
        }
    }

    /// No more replies: the writer sends what is queued, shuts the write side
    /// down and ends.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closing = true;
        if st.idle {
            self.wake.notify_one();
        }
    }

    /// The connection is dead: the budget is closed first (so the reader
    /// issues none of the requests it holds: a dead client's stale writes
    /// must not land later), then every queued reply is dropped and later
    /// ones are refused. A writer blocked in the socket is released by the
    /// caller shutting the socket down.
    pub fn break_off(&self) {
        self.budget.close();
        let dropped = {
            let mut st = self.lock();
            st.broken = true;
            self.wake.notify_one();
            std::mem::take(&mut st.queue)
        };
        drop(dropped);
    }

    /// The writer thread's loop.
    pub fn run_writer(&self) -> Ended {
        let mut batch: Vec<Queued> = Vec::new();
        loop {
            {
                let mut st = self.lock();
                loop {
                    if st.broken {
                        return Ended::Broken;
                    }
                    // The queue is this thread's only once it was handed over
                    // (`writing`); until then it holds corked replies that
                    // `uncork` sends itself.
                    if st.writing {
                        if !st.queue.is_empty() {
                            batch.extend(st.queue.drain(..));
                            break;
                        }
                        st.writing = false;
                    }
                    if st.closing && st.queue.is_empty() {
                        drop(st);
                        let _ = self.sock.shutdown(Shutdown::Write);
                        return Ended::Drained;
                    }
                    st.idle = true;
                    st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                    st.idle = false;
                }
            }
            // Blocking writes; each one returns EAGAIN when the socket's send
            // timeout passes without progress: a client that stopped reading.
            let result = write_batch(&self.sock, &mut batch, true);
            batch.clear();
            if let Err(e) = result {
                self.write_failed(e);
                return Ended::Broken;
            }
        }
    }
}

/// Replies held by a batch, per connection.
type Held = Vec<(Arc<Sink>, Vec<Queued>)>;

thread_local! {
    /// Replies sent on this thread inside [`batch`], per connection.
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

/// Inside a batch: keeps `q` for the batch's end (None). Else gives it back.
fn hold(sink: &Arc<Sink>, q: Queued) -> Option<Queued> {
    HELD.with(|h| {
        let mut h = h.borrow_mut();
        let Some(held) = h.as_mut() else { return Some(q) };
        match held.iter_mut().find(|(s, _)| Arc::ptr_eq(s, sink)) {
            Some((_, v)) => v.push(q),
            None => held.push((sink.clone(), vec![q])),
        }
        None
    })
}

/// Runs `f`; the replies it sends on this thread (through requests it
/// finishes: [`crate::BlockDevice::finish_on_wake`]) leave when it
/// returns, together, one vectored write per connection. The replicated
/// node sends every reply one acknowledgement of the peer allows this way:
/// one `sendmsg` for them instead of one each (on loopback each also runs
/// the client's TCP receive path). Nested calls join the outer batch.
pub fn batch<R>(f: impl FnOnce() -> R) -> R {
    let outer = HELD.with(|h| {
        let mut h = h.borrow_mut();
        if h.is_some() {
            return true;
        }
        *h = Some(Vec::new());
        false
    });
    if outer {
        return f();
    }
    // Sends what was held even if `f` panics.
    struct End;
    impl Drop for End {
        fn drop(&mut self) {
            let held = HELD.with(|h| h.borrow_mut().take()).unwrap_or_default();
            for (sink, replies) in held {
                sink.send_held(replies);
            }
        }
    }
    let _end = End;
    f()
}

/// Writes `batch`, advancing `sent`. Without `wait`, stops at the first
/// write that would block: Ok(false) then. Ok(true) when all was written.
fn write_batch(s: &TcpStream, batch: &mut [Queued], wait: bool) -> io::Result<bool> {
    let mut first = 0;
    while first < batch.len() {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(((batch.len() - first) * 2).min(64));
        for q in batch[first..].iter() {
            let (h, d) = (&q.reply.head, &q.reply.data);
            if q.sent < h.len() {
                slices.push(IoSlice::new(&h[q.sent..]));
                if !d.is_empty() {
                    slices.push(IoSlice::new(d));
                }
            } else {
                slices.push(IoSlice::new(&d[q.sent - h.len()..]));
            }
            if slices.len() >= 62 {
                break;
            }
        }
        let mut n = match sock::send_vectored(s, &slices, wait) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && !wait => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "client stopped reading"))
            }
            Err(e) => return Err(e),
        };
        drop(slices);
        while n > 0 && first < batch.len() {
            let q = &mut batch[first];
            let take = q.remaining().min(n);
            q.sent += take;
            n -= take;
            if q.remaining() == 0 {
                first += 1;
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (Arc<Sink>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (Sink::new(Arc::new(server), Budget::new(64)), client)
    }

    fn cookies(c: &mut TcpStream, n: usize) -> Vec<u64> {
        let mut buf = vec![0u8; 16 * n];
        c.read_exact(&mut buf).unwrap();
        buf.chunks(16).map(|r| u64::from_be_bytes(r[8..16].try_into().unwrap())).collect()
    }

    #[test]
    fn a_batch_holds_its_replies_until_it_ends_then_sends_them_all() {
        let (sink, mut client) = pair();
        client.set_nonblocking(true).unwrap();
        batch(|| {
            for cookie in 1..=3 {
                sink.send(Queued::new(crate::reply::ok(cookie), None));
            }
            // Nested: joins the outer batch.
            batch(|| sink.send(Queued::new(crate::reply::ok(4), None)));
            std::thread::sleep(std::time::Duration::from_millis(50));
            let mut b = [0u8; 1];
            assert!(
                matches!(client.read(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock),
                "a reply left before the batch ended"
            );
        });
        client.set_nonblocking(false).unwrap();
        assert_eq!(cookies(&mut client, 4), vec![1, 2, 3, 4]);
        // Outside a batch a reply leaves at once.
        sink.send(Queued::new(crate::reply::ok(5), None));
        assert_eq!(cookies(&mut client, 1), vec![5]);
    }

    #[test]
    fn a_batch_on_a_broken_connection_drops_its_replies() {
        let (sink, _client) = pair();
        sink.break_off();
        batch(|| sink.send(Queued::new(crate::reply::ok(1), None)));
        assert!(sink.lock().queue.is_empty());
    }
}
