//! One connection, on its own thread: the handshake with blocking I/O under
//! a deadline, then the read loop of the transmission phase. Requests are
//! decoded (sans-IO), take in-flight units, and their device operation is
//! polled once right here: what completes at once (a page-cache write or
//! read) is answered from this thread with no hand-off; whatever must wait
//! is spawned onto the tokio runtime and answers from there (or, for a
//! device that allows it, is finished on the thread that wakes it:
//! [`crate::inline`]). Replies go
//! through the [`Sink`]; a writer thread sends the ones that did not fit,
//! and the replies to a read of several requests.

use std::future::Future;
use std::io;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tracing::{debug, warn, Instrument};

use crate::budget::{Budget, Permit};
use crate::device::{BlockDevice, DeviceError, Extent};
use crate::export::{BlockSizes, ExportInfo};
use crate::handshake::{Handshake, HandshakeError, Negotiated, Progress};
use crate::inline::InlineTask;
use crate::issuing::Issuing;
use crate::reply::{self, Reply};
use crate::request::{Command, Decoded, ProtocolError, RequestDecoder};
use crate::server::{LogEvery, Shared};
use crate::sink::{Ended, Queued, Sink};
use crate::sock;
use twinblock_timeline::{mark, Point};

/// Socket reads when no large payload is expected.
const READ_CHUNK: usize = 64 * 1024;

/// At most this many extents in one BLOCK_STATUS reply (the spec lets a
/// server describe less than the requested length).
pub const MAX_EXTENTS: usize = 1024;

/// Bytes read off a closing connection before it is closed (so that unread
/// input does not turn the close into a reset that may destroy replies the
/// client has not read yet), and for how long.
const LINGER_BYTES: usize = 64 << 20;
const LINGER_TIME: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnError {
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("handshake timed out")]
    Timeout,
    #[error("client stalled in the middle of a request for {0:?}")]
    Stalled(Duration),
}

/// A connection as the server sees it from outside its thread.
pub(crate) struct ConnShared {
    sock: Arc<TcpStream>,
    sink: Arc<Sink>,
    budget: Arc<Budget>,
    stopping: AtomicBool,
}

impl ConnShared {
    /// A connection whose in-flight budget of `budget` units draws on the
    /// server's `server` too.
    pub fn new(stream: TcpStream, budget: u32, server: Arc<Budget>) -> Arc<ConnShared> {
        let sock = Arc::new(stream);
        let budget = Budget::with_parent(budget, Some(server));
        Arc::new(ConnShared {
            sink: Sink::new(sock.clone(), budget.clone()),
            budget,
            sock,
            stopping: AtomicBool::new(false),
        })
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Server shutdown: read nothing more; answer what was read.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.sock.shutdown(Shutdown::Read);
    }

    /// Past the shutdown deadline: drop unsent replies and requests not yet
    /// issued, and close the socket.
    pub fn kill(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.sink.break_off();
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

/// How the read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// NBD_CMD_DISC.
    Disconnect,
    /// The client closed (or reset) its side.
    Eof,
    /// Server shutdown.
    Stopped,
    /// The connection was killed (reply socket failed, deadline passed).
    Killed,
}

pub(crate) fn run<D: BlockDevice>(sh: &Shared<D>, conn: &Arc<ConnShared>) -> Result<(), ConnError> {
    let s = &*conn.sock;
    s.set_nodelay(true)?;
    if let Err(e) = sock::set_liveness(s, sh.config.io_timeout) {
        debug!("keepalive/TCP_USER_TIMEOUT not set: {e}");
    }
    let dev = &sh.device;
    let writable = !dev.read_only();
    let export = ExportInfo {
        name: sh.config.export_name.clone(),
        description: dev.description(),
        size: dev.size(),
        read_only: dev.read_only(),
        block_sizes: BlockSizes::default(),
    };
    let Some((negotiated, buf)) = handshake(s, conn, export, sh.config.handshake_timeout)? else {
        return Ok(());
    };
    debug!(?negotiated, "transmission");
    // Nothing this connection issues may pass what was issued before it
    // existed (a dead predecessor's writes).
    if !sh.fence.barrier(|| conn.is_stopping()) {
        return Ok(());
    }
    let _open = Opened::new(&**dev, writable);
    transmission(sh, conn, negotiated, buf)
}

/// A client in the transmission phase, told to the device
/// ([`BlockDevice::client_opened`]) until it leaves, however it leaves.
struct Opened<'a, D: BlockDevice> {
    dev: &'a D,
    writable: bool,
}

impl<'a, D: BlockDevice> Opened<'a, D> {
    fn new(dev: &'a D, writable: bool) -> Self {
        dev.client_opened(writable);
        Opened { dev, writable }
    }
}

impl<D: BlockDevice> Drop for Opened<'_, D> {
    fn drop(&mut self) {
        self.dev.client_closed(self.writable);
    }
}

fn handshake(
    s: &TcpStream,
    conn: &ConnShared,
    export: ExportInfo,
    timeout: Duration,
) -> Result<Option<(Negotiated, BytesMut)>, ConnError> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(ConnError::Timeout)
    };
    let timed_out = |e: io::Error| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ConnError::Timeout,
        _ => ConnError::Io(e),
    };
    let mut hs = Handshake::new(export);
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let progress = hs.receive(&mut buf);
        if hs.has_output() {
            s.set_write_timeout(Some(left()?))?;
            send_all(s, &hs.take_output()).map_err(timed_out)?;
        }
        match progress? {
            Progress::Transmission(n) => return Ok(Some((n, buf))),
            Progress::Abort => return Ok(None),
            Progress::NeedMore => {}
        }
        if conn.is_stopping() {
            return Ok(None);
        }
        s.set_read_timeout(Some(left()?))?;
        if sock::read_into(s, &mut buf, 4096).map_err(timed_out)? == 0 {
            return Ok(None);
        }
    }
}

fn send_all(s: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match sock::send_vectored(s, &[io::IoSlice::new(data)], true)? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            n => data = &data[n..],
        }
    }
    Ok(())
}

fn transmission<D: BlockDevice>(
    sh: &Shared<D>,
    conn: &Arc<ConnShared>,
    n: Negotiated,
    mut buf: BytesMut,
) -> Result<(), ConnError> {
    let s = &*conn.sock;
    // Reads wait without limit between requests (a client may idle), but
    // no longer than `io_timeout` inside one (`sock::read_within`): a
    // client that stalls half way through a request would otherwise hold
    // its payload buffer (up to 32 MiB) and its connection slot for ever.
    s.set_read_timeout(None)?;
    // A blocking reply write that makes no progress for this long fails:
    // the client stopped reading.
    s.set_write_timeout(Some(sh.config.io_timeout))?;
    let writer = {
        let sink = conn.sink.clone();
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("nbd-reply".into())
            .stack_size(256 << 10)
            .spawn(move || span.in_scope(|| sink.run_writer()))?
    };
    // Device futures polled on this thread may use the runtime's reactor.
    let _rt = sh.runtime.enter();
    let structured = n.structured;
    let mut decoder = RequestDecoder::new(&n);

    // Takes units, sending held-back replies first if it has to wait (they
    // may be what holds the units), and what the device held back for the
    // read's last request (it may be what the replies wait for).
    let acquire = |n: u32, issuing: &Issuing| match conn.budget.try_acquire(n) {
        Some(p) => Some(p),
        None => {
            issuing.release();
            conn.sink.uncork();
            let p = conn.budget.acquire(n);
            conn.sink.cork();
            p
        }
    };

    let ended: Result<End, ConnError> = 'read: loop {
        // Replies to the requests of one read leave together; a device's
        // hand-offs to other threads may wait for the last of them
        // (`issuing`: released when it is issued, or before this thread
        // waits).
        conn.sink.cork();
        let issuing = Issuing::start();
        let ended = loop {
            let decoded = match decoder.decode(&mut buf) {
                Ok(Some(d)) => d,
                Ok(None) => break None,
                Err(e) => break Some(Err(e.into())),
            };
            match decoded {
                Decoded::Reject { cookie, is_read, errno, reason } => {
                    debug!(cookie, errno, reason, is_read, "request rejected");
                    // Error replies count against the budget like any other.
                    let Some(permit) = acquire(1, &issuing) else {
                        break Some(Ok(End::Killed));
                    };
                    let reply = reply::error(structured, cookie, errno, reason);
                    conn.sink.send(Queued::new(reply, Some(permit)));
                }
                Decoded::Command { command: Command::Disconnect, .. } => {
                    break Some(Ok(End::Disconnect))
                }
                Decoded::Command { cookie, command } => {
                    let weight = 1 + command_bytes(&command) / (1 << 20);
                    let Some(permit) = acquire(weight, &issuing) else {
                        // Killed while waiting: what was read and not issued
                        // is dropped (it was never acknowledged).
                        break Some(Ok(End::Killed));
                    };
                    let more = decoder.another_buffered(&buf);
                    issuing.next(more);
                    issue(sh, conn, structured, cookie, command, permit);
                    if !more {
                        issuing.release();
                    }
                }
            }
        };
        drop(issuing);
        conn.sink.uncork();
        if let Some(ended) = ended {
            break 'read ended;
        }
        if conn.is_stopping() {
            break 'read Ok(End::Stopped);
        }
        // Small requests: read whatever is there (many at once). A large
        // payload: exactly its rest, so that it ends its buffer and the next
        // read starts a fresh one instead of copying a partial message.
        let wanted = decoder.wanted();
        let max =
            if wanted > READ_CHUNK { wanted.saturating_sub(buf.len()).max(1) } else { READ_CHUNK };
        let mid = decoder.mid_request(&buf);
        let read = if mid {
            sock::read_within(s, &mut buf, max, sh.config.io_timeout)
        } else {
            sock::read_into(s, &mut buf, max)
        };
        if let Ok(n) = read {
            mark(Point::NbdRead, n as u64);
        }
        match read {
            Ok(0) if conn.is_stopping() => break 'read Ok(End::Stopped),
            Ok(0) => break 'read Ok(End::Eof),
            Ok(_) => {}
            Err(e) if mid && e.kind() == io::ErrorKind::TimedOut => {
                break 'read Err(ConnError::Stalled(sh.config.io_timeout))
            }
            Err(e) => break 'read Err(e.into()),
        }
    };
    debug!(?ended, "read loop ended");
    // Requests issued complete on their own (they do not depend on the
    // client); their replies are queued by then.
    conn.budget.wait_ops();
    conn.sink.close();
    let written = writer.join().unwrap_or(Ended::Broken);
    if written == Ended::Drained && matches!(ended, Ok(End::Disconnect) | Ok(End::Stopped)) {
        linger(s);
    }
    ended.map(drop)
}

/// After the write side was shut down: read and discard what the client
/// still sends until it closes (at most a second): closing a socket with
/// unread input resets the connection, and a reset throws away the replies
/// still in the send queue.
fn linger(s: &TcpStream) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut scratch = BytesMut::with_capacity(64 * 1024);
    let mut total = 0;
    while total < LINGER_BYTES {
        let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
        else {
            break;
        };
        if s.set_read_timeout(Some(left)).is_err() {
            break;
        }
        scratch.clear();
        match sock::read_into(s, &mut scratch, 64 * 1024) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
}

/// Writes at least this large run on the runtime's blocking pool, so that
/// this thread reads the next request while the data is copied.
const OFFLOAD_WRITE: usize = 256 << 10;

/// Executes one command. Most are polled once in place (a page-cache read or
/// write completes right there) and spawned onto the runtime if they must
/// wait. Long synchronous work never runs on the runtime's async workers:
/// large writes, TRIM and WRITE_ZEROES (which may fall back to writing
/// zeroes over a large range) are driven to completion on a thread of the
/// blocking pool.
fn issue<D: BlockDevice>(
    sh: &Shared<D>,
    conn: &ConnShared,
    structured: bool,
    cookie: u64,
    command: Command,
    permit: Permit,
) {
    let heavy = match &command {
        Command::Write { data, .. } => data.len() >= OFFLOAD_WRITE,
        Command::Trim { .. } | Command::WriteZeroes { .. } => true,
        _ => false,
    };
    let op = conn.budget.op();
    let fence = sh.fence.enter();
    let device = sh.device.clone();
    let sink = conn.sink.clone();
    let failures = sh.failures.clone();
    let request = async move {
        let reply = execute(&*device, &failures, structured, cookie, command).await;
        drop(fence);
        sink.send(Queued::new(reply, Some(permit)));
        drop(op);
    };
    // Polled here, the request runs inside the connection thread's span;
    // elsewhere it takes the span along (only then: entering a span on
    // every poll costs more than a page-cache read).
    if heavy {
        let rt = sh.runtime.clone();
        let span = tracing::Span::current();
        drop(sh.runtime.spawn_blocking(move || span.in_scope(|| rt.block_on(request))));
        return;
    }
    if sh.device.finish_on_wake() {
        // Finished (and answered) on the thread that wakes it, in this
        // connection's span.
        InlineTask::start(request.in_current_span());
        return;
    }
    // A no-op waker is enough: if the request is not done, the runtime
    // polls it again (with its own waker) as soon as it is spawned.
    let mut request = Box::pin(request);
    let mut cx = Context::from_waker(Waker::noop());
    if request.as_mut().poll(&mut cx).is_pending() {
        sh.runtime.spawn(request.in_current_span());
    }
}

fn command_bytes(c: &Command) -> u32 {
    match c {
        Command::Read { len, .. } => *len,
        Command::Write { data, .. } => data.len() as u32,
        _ => 0,
    }
}

async fn execute<D: BlockDevice>(
    dev: &D,
    failures: &LogEvery,
    structured: bool,
    cookie: u64,
    command: Command,
) -> Reply {
    let result = match command {
        Command::Read { offset, len } => match dev.read(offset, len).await {
            Ok(data) if data.len() == len as usize => {
                return reply::read(structured, cookie, offset, data)
            }
            Ok(_) => Err(DeviceError::Io(io::Error::other("short read from device"))),
            Err(e) => Err(e),
        },
        Command::Write { offset, data, fua } => dev.write(offset, data, fua).await,
        Command::Flush => dev.flush().await,
        Command::Trim { offset, len, fua } => dev.trim(offset, len as u64, fua).await,
        Command::Cache { offset, len } => dev.cache(offset, len as u64).await,
        Command::WriteZeroes { offset, len, flags } => {
            dev.write_zeroes(offset, len as u64, flags).await
        }
        Command::BlockStatus { offset, len, req_one } => {
            match dev.block_status(offset, len).await {
                Ok(extents) => {
                    let extents = clamp_extents(extents, len, req_one);
                    return reply::block_status(cookie, &extents);
                }
                Err(e) => Err(e),
            }
        }
        Command::Disconnect => Ok(()),
    };
    match result {
        Ok(()) => reply::ok(cookie),
        Err(e) => {
            // A client may repeat a failing request as often as it likes:
            // I/O errors are warned of at most once a second, and refusals
            // the protocol expects (read-only, FAST_ZERO not fast, ...) are
            // no server failure at all.
            let due = if matches!(e, DeviceError::Io(_)) { failures.due() } else { None };
            match due {
                Some(suppressed) => warn!(
                    cookie,
                    suppressed,
                    "request failed: {e} ({suppressed} more failed and not logged since the \
                     last such warning)"
                ),
                _ => debug!(cookie, "request failed: {e}"),
            }
            reply::error(structured, cookie, e.errno(), &e.to_string())
        }
    }
}

/// Extents as the protocol wants them: non-empty, at most `len` bytes in
/// all, at most [`MAX_EXTENTS`] of them, exactly one with REQ_ONE.
pub(crate) fn clamp_extents(extents: Vec<Extent>, len: u32, req_one: bool) -> Vec<Extent> {
    let max = if req_one { 1 } else { MAX_EXTENTS };
    let mut out = Vec::with_capacity(extents.len().clamp(1, max));
    let mut left = len;
    for mut e in extents {
        if left == 0 || out.len() == max {
            break;
        }
        if e.length == 0 {
            continue;
        }
        e.length = e.length.min(left);
        left -= e.length;
        out.push(e);
    }
    if out.is_empty() {
        out.push(Extent { length: len, flags: 0 });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_are_clamped_to_the_request() {
        let e = |length, flags| Extent { length, flags };
        assert_eq!(
            clamp_extents(vec![e(100, 0), e(100, 3)], 150, false),
            vec![e(100, 0), e(50, 3)]
        );
        assert_eq!(clamp_extents(vec![e(100, 0), e(100, 3)], 150, true), vec![e(100, 0)]);
        assert_eq!(clamp_extents(vec![e(0, 3)], 10, false), vec![e(10, 0)]);
        assert_eq!(clamp_extents(vec![], 10, true), vec![e(10, 0)]);
    }

    #[test]
    fn block_status_replies_are_capped() {
        let many: Vec<Extent> = (0..5000).map(|i| Extent { length: 1, flags: i % 2 }).collect();
        let out = clamp_extents(many, 5000, false);
        assert_eq!(out.len(), MAX_EXTENTS);
        assert_eq!(out.iter().map(|e| e.length).sum::<u32>(), MAX_EXTENTS as u32);
    }
}
