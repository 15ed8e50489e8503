//! io_uring backend, driven from the tokio reactor (no extra thread).
//!
//! A task pushes its SQE and submits under a short lock; buffered I/O that
//! the kernel completes inline is reaped right there, so a page-cache write
//! costs one syscall and no thread hop. Whatever the kernel finishes later
//! wakes the ring fd, which tokio polls; a reaper task then completes it.
//! Several tasks submitting at once share one `io_uring_enter` (whoever
//! holds the lock submits everything queued). Short reads and writes are
//! resubmitted for the rest; up to `entries` operations are in flight and the
//! rest wait in a backlog.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use io_uring::{opcode, squeue, types, IoUring, Probe};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{oneshot, Notify};
use tracing::Instrument;

use super::op::{Done, Op, ReadBuf};

struct Slot {
    op: Op,
    tx: oneshot::Sender<io::Result<Done>>,
}

struct State {
    ring: IoUring,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Ops to (re)submit when there is room.
    backlog: VecDeque<usize>,
    /// SQEs pushed and not yet completed.
    in_flight: usize,
    cap: usize,
    /// Results to hand to their waiters once the lock is released (a
    /// waiter may be finished right on the thread that wakes it).
    finished: Vec<(oneshot::Sender<io::Result<Done>>, io::Result<Done>)>,
}

struct Inner {
    state: Mutex<State>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, then, with the lock released, wakes the
    /// waiters of the ops that finished.
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let (r, finished) = {
            let mut st = self.lock();
            let r = f(&mut st);
            (r, std::mem::take(&mut st.finished))
        };
        send_all(finished);
        r
    }
}

fn send_all(finished: Vec<(oneshot::Sender<io::Result<Done>>, io::Result<Done>)>) {
    for (tx, result) in finished {
        let _ = tx.send(result);
    }
}

pub(crate) struct Ring {
    inner: Arc<Inner>,
    stop: Arc<Notify>,
}

struct RingFd(RawFd);

impl AsRawFd for RingFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Ring {
    /// Sets up a ring of `entries` and its reaper on the current tokio
    /// runtime. Fails when io_uring is unavailable (ENOSYS, EPERM under
    /// seccomp), refuses submissions, or lacks an opcode we need.
    pub fn new(entries: u32) -> io::Result<Ring> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|_| io::Error::other("io_uring store needs a tokio runtime"))?;
        let mut ring = IoUring::new(entries)?;
        // One NOP through `io_uring_enter` and back: a sandbox may allow
        // the ring's setup and refuse its submissions, and an engine whose
        // submissions fail would leave every operation waiting for ever.
        {
            // SAFETY: a NOP references no memory.
            unsafe { ring.submission().push(&opcode::Nop::new().build().user_data(u64::MAX)) }
                .map_err(|_| io::Error::other("io_uring: no room for a NOP in a new ring"))?;
            ring.submit_and_wait(1)?;
            let done = ring.completion().next().map(|c| c.result());
            if done != Some(0) {
                return Err(io::Error::other(format!("io_uring: a NOP completed as {done:?}")));
            }
        }
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Read::CODE, "read"),
            (opcode::Write::CODE, "write"),
            (opcode::Fallocate::CODE, "fallocate"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring lacks the {name} opcode"),
                ));
            }
        }
        let cap = ring.params().sq_entries() as usize;
        let fd = ring.as_raw_fd();
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                ring,
                slots: Vec::with_capacity(cap),
                free: Vec::new(),
                backlog: VecDeque::new(),
                in_flight: 0,
                cap,
                finished: Vec::new(),
            }),
        });
        let stop = Arc::new(Notify::new());
        let afd = {
            let _enter = handle.enter();
            // SAFETY: the ring fd stays open while the AsyncFd lives: the
            // reaper owns both and drops the AsyncFd first (it is also the
            // first parameter, so it drops first if the task never runs).
            unsafe { AsyncFd::register_with_interest(RingFd(fd), Interest::READABLE) }
                .map_err(|e| e.into_parts().1)?
        };
        handle.spawn(reaper(afd, inner.clone(), stop.clone()).in_current_span());
        Ok(Ring { inner, stop })
    }

    pub async fn run(&self, op: Op) -> io::Result<Done> {
        let (tx, rx) = oneshot::channel();
        self.inner.with(|st| {
            let id = st.insert(Slot { op, tx });
            st.backlog.push_back(id);
            st.pump();
        });
        // If this future is dropped the op still owns its buffer until the
        // kernel completes it.
        rx.await.map_err(|_| io::Error::other("io_uring op was dropped"))?
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Drain here, synchronously, rather than leaving it to whichever of
        // us and the reaper lets go of the state last: the store closes its
        // descriptors right after dropping the ring, and nothing queued may
        // reach the kernel after that. Backlogged ops fail (they never
        // reached the kernel); in-flight ones are waited for.
        self.inner.with(State::drain);
        self.stop.notify_one();
    }
}

async fn reaper(afd: AsyncFd<RingFd>, inner: Arc<Inner>, stop: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = stop.notified() => break,
            ready = afd.readable() => match ready {
                Ok(mut guard) => {
                    inner.with(State::pump);
                    guard.clear_ready();
                }
                Err(e) => {
                    tracing::error!("io_uring reaper: {e}");
                    break;
                }
            }
        }
    }
    drop(afd);
    drop(inner);
}

impl State {
    fn insert(&mut self, slot: Slot) -> usize {
        match self.free.pop() {
            Some(id) => {
                self.slots[id] = Some(slot);
                id
            }
            None => {
                self.slots.push(Some(slot));
                self.slots.len() - 1
            }
        }
    }

    /// Pushes what fits, submits, reaps; repeats while completions make room
    /// for (re)submissions.
    fn pump(&mut self) {
        loop {
            self.push_backlog();
            let mut attempts = 0;
            while !self.ring.submission().is_empty() {
                match self.ring.submit() {
                    Ok(_) => {}
                    Err(e) => {
                        let again = matches!(
                            e.raw_os_error(),
                            Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                        );
                        if !again || attempts > 100 {
                            tracing::error!("io_uring submit: {e}");
                            break;
                        }
                        attempts += 1;
                        self.reap();
                        continue;
                    }
                }
                break;
            }
            let reaped = self.reap();
            if reaped == 0 || self.backlog.is_empty() || self.in_flight >= self.cap {
                break;
            }
        }
    }

    fn push_backlog(&mut self) {
        while self.in_flight < self.cap {
            let Some(id) = self.backlog.pop_front() else {
                break;
            };
            let Some(slot) = self.slots.get_mut(id).and_then(Option::as_mut) else {
                continue;
            };
            let entry = entry_for(&mut slot.op).user_data(id as u64);
            // SAFETY: the op's buffer lives in `slots` until its completion
            // is reaped; in_flight < cap keeps the SQ from overflowing.
            if unsafe { self.ring.submission().push(&entry) }.is_err() {
                self.backlog.push_front(id);
                break;
            }
            self.in_flight += 1;
        }
    }

    fn reap(&mut self) -> usize {
        let done: Vec<(usize, i32)> =
            self.ring.completion().map(|cqe| (cqe.user_data() as usize, cqe.result())).collect();
        for &(id, res) in &done {
            // Saturating: after a leak (see `leak_in_flight`) late
            // completions may still arrive for ops we no longer count.
            self.in_flight = self.in_flight.saturating_sub(1);
            self.complete(id, res);
        }
        done.len()
    }

    fn complete(&mut self, id: usize, res: i32) {
        let Some(slot) = self.slots.get_mut(id).and_then(Option::as_mut) else {
            return;
        };
        if res < 0 {
            if res == -libc::EINTR || res == -libc::EAGAIN {
                self.backlog.push_back(id);
                return;
            }
            return self.finish(id, Err(io::Error::from_raw_os_error(-res)));
        }
        let n = res as usize;
        match &mut slot.op {
            Op::Read { buf, done, off, .. } => {
                if n == 0 {
                    // The file ends inside the device (truncated under the
                    // node): an error, never zeroes (see `sys::past_eof`).
                    let at = *off + *done as u64;
                    return self.finish(id, Err(super::sys::past_eof(at)));
                } else {
                    *done += n;
                }
                if *done < buf.len() {
                    self.backlog.push_back(id);
                    return;
                }
                self.finish(id, Ok(Done::Unit));
            }
            Op::Write { data, done, .. } => {
                if n == 0 {
                    return self.finish(id, Err(io::ErrorKind::WriteZero.into()));
                }
                *done += n;
                if *done < data.as_slice().len() {
                    self.backlog.push_back(id);
                    return;
                }
                self.finish(id, Ok(Done::Unit));
            }
            Op::Fallocate { .. } => self.finish(id, Ok(Done::Unit)),
        }
    }

    fn finish(&mut self, id: usize, result: io::Result<Done>) {
        let Some(slot) = self.slots.get_mut(id).and_then(Option::take) else {
            return;
        };
        self.free.push(id);
        let result = match (result, slot.op) {
            // SAFETY: a read finishes only once every byte was written.
            (Ok(_), Op::Read { buf, .. }) => Ok(Done::Data(unsafe { ReadBuf::into_bytes(buf) })),
            (r, _) => r,
        };
        self.finished.push((slot.tx, result));
    }
}

impl State {
    /// Fails every backlogged op: it has not reached the kernel and, once
    /// the ring is closing, never will.
    fn fail_backlog(&mut self) {
        while let Some(id) = self.backlog.pop_front() {
            self.finish(id, Err(io::Error::other("store closed before the op was submitted")));
        }
    }

    /// Waits until the kernel is done with every buffer we gave it. Ops that
    /// come back short (and would be resubmitted) fail instead. Where the
    /// wait itself fails, the in-flight buffers are leaked: freeing memory
    /// the kernel may still write into is far worse than a leak at shutdown.
    fn drain(&mut self) {
        loop {
            self.fail_backlog();
            if self.in_flight == 0 {
                return;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                // A full completion queue: reaping makes room.
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN))
                        && self.reap() > 0 => {}
                Err(e) => {
                    tracing::error!(
                        in_flight = self.in_flight,
                        "io_uring: cannot wait for in-flight ops ({e}); leaking their buffers"
                    );
                    self.leak_in_flight();
                    return;
                }
            }
            self.reap();
        }
    }

    /// Gives up on every op without freeing its buffer; the waiters (if any)
    /// get an error.
    fn leak_in_flight(&mut self) {
        for Slot { op, tx } in std::mem::take(&mut self.slots).into_iter().flatten() {
            std::mem::forget(op);
            self.finished.push((tx, Err(io::Error::other("store closed with the op in flight"))));
        }
        self.free.clear();
        self.backlog.clear();
        self.in_flight = 0;
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // Buffers must outlive the kernel's use of them. `Ring::drop` has
        // normally drained already; this covers a ring that never got that
        // far (and is a no-op otherwise).
        self.drain();
        send_all(std::mem::take(&mut self.finished));
    }
}

fn entry_for(op: &mut Op) -> squeue::Entry {
    match op {
        Op::Read { fd, off, buf, done } => {
            let len = (buf.len() - *done) as u32;
            // SAFETY: `done` < len(buf), so the pointer stays in the buffer.
            let ptr = unsafe { buf.as_mut_ptr().add(*done) };
            opcode::Read::new(types::Fd(*fd), ptr, len).offset(*off + *done as u64).build()
        }
        Op::Write { fd, off, data, done, fua } => {
            let rest = &data.as_slice()[*done..];
            let flags = if *fua { libc::RWF_DSYNC } else { 0 };
            opcode::Write::new(types::Fd(*fd), rest.as_ptr(), rest.len() as u32)
                .offset(*off + *done as u64)
                .rw_flags(flags)
                .build()
        }
        Op::Fallocate { fd, off, len, mode } => {
            opcode::Fallocate::new(types::Fd(*fd), *len).offset(*off).mode(*mode).build()
        }
    }
}
