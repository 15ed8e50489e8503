//! The control socket: how the CLI talks to a running node. One JSON
//! request per line, one JSON response per line, on a Unix socket at the
//! node's `control` path. The `events` request is a subscription: after
//! the response, one JSON line per state change (`crate::events::Event`)
//! until either side closes. The `bench` request streams too: progress
//! lines, then the report (`crate::bench::report::Line`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tracing::Instrument;
use twinblock_replicator::witness::WitnessStatus;
use twinblock_replicator::Node;

use crate::events::Hub;

#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub verb: String,
    #[serde(default)]
    pub force: bool,
    /// `events`: the current state first (`exists` events).
    #[serde(default)]
    pub now: bool,
    /// `bench`: what to measure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bench: Option<crate::bench::report::Params>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub status: Option<serde_json::Value>,
}

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// A client has this long to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Most control connections open at once (each holds one of the node's
/// file descriptors, which its disk, metadata and NBD clients need).
const MAX_CONNECTIONS: usize = 64;

/// The control connections open: a slot each, and those still to send
/// their request, oldest first, which a new client may displace when
/// every slot is taken (a verb sends its request at once).
struct Gate {
    slots: Arc<tokio::sync::Semaphore>,
    silent: std::sync::Mutex<std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>>,
    next: std::sync::atomic::AtomicU64,
}

impl Gate {
    fn new() -> Gate {
        Gate {
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            silent: Default::default(),
            next: Default::default(),
        }
    }

    fn silent(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>,
    > {
        self.silent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for a new client: a free one, else the one of the oldest
    /// client still silent, which is closed. None: every slot is busy
    /// with a request under way or a stream (`events`, `bench`).
    async fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Some(slot);
        }
        loop {
            let (_, close) = self.silent().pop_front()?;
            if close.send(()).is_ok() {
                tracing::debug!("control: closed the oldest silent client to make room");
                break;
            }
        }
        // Its slot comes back as soon as its task sees the close.
        let wait = self.slots.clone().acquire_owned();
        tokio::time::timeout(Duration::from_secs(1), wait).await.ok()?.ok()
    }

    /// Registers a client still to send its request: the receiver fires
    /// when it is displaced.
    fn waiting(&self) -> (u64, tokio::sync::oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.silent().push_back((id, tx));
        (id, rx)
    }

    /// The client `id` sent its request (or left): no longer displaceable.
    fn heard(&self, id: u64) {
        self.silent().retain(|(i, _)| *i != id);
    }
}

/// Accepts control clients and hands each one's request to `answer`, at
/// most [`MAX_CONNECTIONS`] at once: when all are taken the oldest client
/// that has not sent its request is closed, and if none is silent the
/// newcomer is told the node is busy. An accept that fails (out of
/// descriptors) is retried after a pause, not at once in a spin.
async fn serve<F, Fut>(listener: &UnixListener, answer: F)
where
    F: Fn(Result<Request, String>, RequestReader, tokio::net::unix::OwnedWriteHalf) -> Fut
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let answer = Arc::new(answer);
    let gate = Arc::new(Gate::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("control: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = gate.admit().await else {
            tracing::warn!("control: {MAX_CONNECTIONS} clients busy; one more refused");
            let mut text = serde_json::to_string(&Response {
                ok: false,
                error: Some(format!(
                    "the node is busy: {MAX_CONNECTIONS} control clients are connected \
                     (events, bench or verbs under way); try again"
                )),
                status: None,
            })
            .unwrap_or_default();
            text.push('\n');
            let _ = stream.try_write(text.as_bytes());
            continue;
        };
        let (id, displaced) = gate.waiting();
        let (gate, answer) = (gate.clone(), answer.clone());
        tokio::spawn(
            async move {
                let _slot = slot;
                let (rd, wr) = stream.into_split();
                let read = tokio::select! {
                    r = read_request(rd) => r,
                    _ = displaced => None,
                };
                gate.heard(id);
                let Some((parsed, rd)) = read else { return };
                answer(parsed, rd, wr).await;
            }
            .in_current_span(),
        );
    }
}

/// One request on a witness's control socket: `status` (what it knows) and
/// `down`; other verbs are for data nodes.
fn witness_answer(
    req: &Request,
    status: &watch::Receiver<WitnessStatus>,
    down: &watch::Sender<bool>,
) -> Response {
    let st = serde_json::to_value(&*status.borrow()).ok();
    match req.verb.as_str() {
        "status" => Response { ok: true, error: None, status: st },
        "down" => {
            let _ = down.send(true);
            Response { ok: true, error: None, status: st }
        }
        other => Response {
            ok: false,
            error: Some(format!("{other}: a witness keeps no data; it answers status and down")),
            status: None,
        },
    }
}

type RequestReader = TokioBufReader<tokio::io::Take<tokio::net::unix::OwnedReadHalf>>;

/// Reads one request: one bounded line, within a deadline (a client that
/// sends endless bytes or nothing holds nothing). None: nothing to answer.
async fn read_request(
    rd: tokio::net::unix::OwnedReadHalf,
) -> Option<(Result<Request, String>, RequestReader)> {
    let mut line = String::new();
    let mut rd = TokioBufReader::new(rd.take(MAX_REQUEST));
    let read = tokio::time::timeout(REQUEST_DEADLINE, rd.read_line(&mut line)).await;
    if !matches!(read, Ok(Ok(_))) {
        return None;
    }
    let parsed = if line.ends_with('\n') {
        serde_json::from_str::<Request>(&line).map_err(|e| format!("bad request: {e}"))
    } else {
        Err(format!("bad request: no complete line within {MAX_REQUEST} bytes"))
    };
    Some((parsed, rd))
}

async fn write_response(wr: &mut tokio::net::unix::OwnedWriteHalf, resp: &Response) {
    let mut text = serde_json::to_string(resp).unwrap_or_default();
    text.push('\n');
    let _ = wr.write_all(text.as_bytes()).await;
}

/// Binds the control socket owner-only (0600) whatever the umask: it
/// drives the node (`primary`, `down`, `discard-my-data`). Bound under a
/// name of this process's own, made private, then linked into place (a
/// link, unlike a rename, fails if the path was taken meanwhile, as a
/// bind there would), so no client can connect while it is still open to
/// others; a path too long for that name is bound in place and made
/// private at once.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let private = std::fs::Permissions::from_mode(0o600);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.new", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    match UnixListener::bind(&tmp) {
        Ok(listener) => {
            let placed = std::fs::set_permissions(&tmp, private)
                .and_then(|()| std::fs::hard_link(&tmp, path));
            let _ = std::fs::remove_file(&tmp);
            placed.map(|()| listener)
        }
        Err(_) => {
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(path, private)?;
            Ok(listener)
        }
    }
}

/// The listening side, bound before the node announces itself.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlServer {
    pub fn bind(path: &Path) -> Result<ControlServer> {
        if let Ok(found) = std::fs::symlink_metadata(path) {
            // Only a stale socket is replaced: a file of another kind there
            // is a mistake in `control` (the disk's or the metadata's path
            // pasted), and it was deleted (found by review, helper-125).
            use std::os::unix::fs::FileTypeExt;
            if !found.file_type().is_socket() {
                bail!(
                    "{}: exists and is not a socket; `control` must name a path of its own \
                     (that file is left as it is)",
                    path.display()
                );
            }
            if StdUnixStream::connect(path).is_ok() {
                bail!("{} answers: is this node already up?", path.display());
            }
            std::fs::remove_file(path)
                .with_context(|| format!("removing the stale socket {}", path.display()))?;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let listener =
            bind_private(path).with_context(|| format!("cannot listen on {}", path.display()))?;
        Ok(ControlServer { listener, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The control socket of a witness (`twinblock witness`).
    pub async fn run_witness(
        self,
        status: watch::Receiver<WitnessStatus>,
        down: watch::Sender<bool>,
    ) {
        serve(&self.listener, move |parsed, _rd, mut wr| {
            let resp = match parsed {
                Ok(req) => witness_answer(&req, &status, &down),
                Err(e) => Response { ok: false, error: Some(e), status: None },
            };
            async move { write_response(&mut wr, &resp).await }
        })
        .await
    }

    pub async fn run(self, node: Arc<Node>, down: watch::Sender<bool>, hub: Arc<Hub>) {
        serve(&self.listener, move |parsed, rd, mut wr| {
            let (node, down, hub) = (node.clone(), down.clone(), hub.clone());
            async move {
                let resp = match parsed {
                    Ok(req) if req.verb == "events" => {
                        return stream_events(&node, &hub, req.now, rd, wr).await;
                    }
                    Ok(req) if req.verb == "bench" => {
                        return stream_bench(node, req, rd, wr).await;
                    }
                    Ok(req) => handle(&node, &down, req).await,
                    Err(e) => Response { ok: false, error: Some(e), status: None },
                };
                write_response(&mut wr, &resp).await;
            }
        })
        .await
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// An `events` subscription: the response, the current state (`now`),
/// then one line per event until the subscriber goes away.
async fn stream_events(
    node: &Node,
    hub: &Hub,
    now: bool,
    mut rd: impl tokio::io::AsyncRead + Unpin,
    mut wr: impl tokio::io::AsyncWrite + Unpin,
) {
    use tokio::sync::broadcast::error::RecvError;
    let (mut events, exists) = hub.subscribe();
    let status = serde_json::to_value(node.status()).ok();
    let resp = Response { ok: true, error: None, status };
    let mut text = serde_json::to_string(&resp).unwrap_or_default();
    text.push('\n');
    for e in exists.iter().filter(|_| now) {
        text.push_str(&serde_json::to_string(e).unwrap_or_default());
        text.push('\n');
    }
    if wr.write_all(text.as_bytes()).await.is_err() {
        return;
    }
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            e = events.recv() => match e {
                Ok(e) => {
                    let mut line = serde_json::to_string(&e).unwrap_or_default();
                    line.push('\n');
                    if wr.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "an events subscriber fell behind");
                }
                Err(RecvError::Closed) => return,
            },
            // The subscriber sends nothing more: EOF or an error means it
            // is gone.
            r = rd.read(&mut scratch) => if !matches!(r, Ok(n) if n > 0) {
                return;
            },
        }
    }
}

/// A `bench` request: refused at once if the node cannot run it, else the
/// response, progress lines and the report (or why it stopped). The bench
/// stops when the caller goes away.
async fn stream_bench(
    node: Arc<Node>,
    req: Request,
    mut rd: impl tokio::io::AsyncRead + Unpin,
    mut wr: tokio::net::unix::OwnedWriteHalf,
) {
    use crate::bench::report::Line;
    let mut slot = None;
    let refusal = match &req.bench {
        None => Some("bench: no parameters in the request".to_string()),
        Some(_) => node.bench_refusal().or_else(|| node.bench_prepare().err()).or_else(|| {
            match crate::bench::run::Slot::take() {
                Ok(s) => {
                    slot = Some(s);
                    None
                }
                Err(e) => Some(e),
            }
        }),
    };
    let status = serde_json::to_value(node.status()).ok();
    tracing::info!(verb = "bench", ok = refusal.is_none(), "control request");
    if let Some(e) = refusal {
        return write_response(&mut wr, &Response { ok: false, error: Some(e), status }).await;
    }
    write_response(&mut wr, &Response { ok: true, error: None, status }).await;
    let (Some(params), Some(slot)) = (req.bench, slot) else { return };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Line>();
    let run = tokio::spawn(crate::bench::run::bench(node, params, slot, move |l| {
        let _ = tx.send(l);
    }));
    let abort = run.abort_handle();
    let mut scratch = [0u8; 64];
    loop {
        tokio::select! {
            l = rx.recv() => {
                let Some(l) = l else { break };
                let mut line = serde_json::to_string(&l).unwrap_or_default();
                line.push('\n');
                if wr.write_all(line.as_bytes()).await.is_err() {
                    abort.abort();
                    return;
                }
            }
            r = rd.read(&mut scratch) => if !matches!(r, Ok(n) if n > 0) {
                tracing::info!("bench: the caller went away; stopped");
                abort.abort();
                return;
            },
        }
    }
    let last = match run.await {
        Ok(Ok(report)) => Line::Done(Box::new(report)),
        Ok(Err(e)) => Line::Failed(e),
        Err(e) => Line::Failed(format!("the bench task ended: {e}")),
    };
    let mut line = serde_json::to_string(&last).unwrap_or_default();
    line.push('\n');
    let _ = wr.write_all(line.as_bytes()).await;
}

async fn handle(node: &Arc<Node>, down: &watch::Sender<bool>, req: Request) -> Response {
    // Once the node is stopping (`down`, SIGTERM), a verb that would change
    // its state is refused: done, it would be undone by the exit a moment
    // later (before, `primary` then answered 0 and `status` said Primary;
    // found by review, helper-125).
    let stopping = *down.borrow();
    let result: Result<(), String> = match req.verb.as_str() {
        "status" => Ok(()),
        "primary" | "connect" | "verify" | "discard-my-data" if stopping => Err(format!(
            "{} is stopping (`down` or a signal asked it to): `up` it again first",
            node.me.name
        )),
        "primary" => node.promote(req.force).await.map_err(|e| e.0),
        "secondary" if req.force => {
            node.demote_forced();
            demoted(node).await
        }
        "secondary" => match node.demote_when_clients_left().await {
            Ok(()) => demoted(node).await,
            Err(e) => Err(e.0),
        },
        "discard-my-data" => node.discard_my_data().map_err(|e| e.0),
        "connect" => {
            node.set_want_connected(true);
            Ok(())
        }
        "disconnect" => {
            node.disconnect().await;
            Ok(())
        }
        "down" => {
            let _ = down.send(true);
            Ok(())
        }
        "verify" => node.start_verify().map_err(|e| e.0),
        other => Err(format!("unknown verb {other:?}")),
    };
    tracing::info!(verb = %req.verb, force = req.force, ok = result.is_ok(), "control request");
    let status = serde_json::to_value(node.status()).ok();
    match result {
        Ok(()) => Response { ok: true, error: None, status },
        Err(e) => Response { ok: false, error: Some(e), status },
    }
}

/// `secondary` answers once the node is Secondary, as `drbdadm
/// secondary` does: with a controller the role changes only when
/// `on_demote` is done (before, the verb exited 0 with a status saying
/// `Primary` while the hook still ran; found by an audit against the
/// design, helper-121). Bounded as a stop's demotion is
/// ([`crate::up::demote_wait`]).
async fn demoted(node: &Arc<Node>) -> Result<(), String> {
    use twinblock_replicator::node::poll_until;
    use twinblock_replicator::protocol::wire::Role;
    let wait = crate::up::demote_wait(node);
    let deadline = tokio::time::Instant::now() + wait;
    let secondary = || node.role() != Role::Primary;
    if !poll_until(deadline, Duration::from_millis(10), secondary).await {
        return Err(format!(
            "{} is still demoting after {}s (on_demote runs): it becomes Secondary once that \
             ends",
            node.me.name,
            wait.as_secs()
        ));
    }
    Ok(())
}

/// Why a call failed: the daemon is unreachable, or it refused.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("node is not running (cannot reach {path}: {reason})")]
    Unreachable { path: String, reason: String },
    /// It took the connection and gave no answer in time: its process is
    /// there but stopped or wedged (found by review, helper-125: this was
    /// "not running", and `up` then fails on the disk's lock).
    #[error(
        "node does not answer: no reply on {path} within {secs} s (its process may be stopped \
         or wedged; see its log)"
    )]
    NoAnswer { path: String, secs: u64 },
    #[error("{0}")]
    Refused(String),
}

/// Opens a subscription (`events`): sends `req`, checks the response, and
/// returns the stream positioned at the first event line (blocking).
pub fn open_stream(path: &Path, req: &Request) -> Result<BufReader<StdUnixStream>, CallError> {
    let unreachable =
        |reason: String| CallError::Unreachable { path: path.display().to_string(), reason };
    let s = StdUnixStream::connect(path).map_err(|e| unreachable(e.to_string()))?;
    // The first answer within a verb's deadline (a wedged or stopped node
    // answers nothing: before, `events` waited for ever); the events that
    // follow, without one.
    s.set_read_timeout(Some(CALL_WAIT)).map_err(|e| unreachable(e.to_string()))?;
    let mut rd = BufReader::new(s);
    let line = exchange(&mut rd, req).map_err(|e| unreachable(e.to_string()))?;
    rd.get_ref().set_read_timeout(None).map_err(|e| unreachable(e.to_string()))?;
    let resp: Response =
        serde_json::from_str(&line).map_err(|e| unreachable(format!("bad response: {e}")))?;
    if !resp.ok {
        return Err(CallError::Refused(resp.error.unwrap_or_else(|| "refused".into())));
    }
    Ok(rd)
}

/// Sends `req` and reads the response line. A node may answer before it
/// reads the request (busy: it refuses and closes at once), so a request
/// that cannot be sent still has its answer read; the send's error counts
/// only when there is none.
fn exchange(rd: &mut BufReader<StdUnixStream>, req: &Request) -> std::io::Result<String> {
    let mut text = serde_json::to_string(req).expect("request serializes");
    text.push('\n');
    let sent = rd.get_mut().write_all(text.as_bytes());
    let mut line = String::new();
    let read = rd.read_line(&mut line);
    match (sent, read) {
        (Err(e), _) if line.is_empty() => Err(e),
        (_, Err(e)) => Err(e),
        _ => Ok(line),
    }
}

/// How long a verb waits for its answer at least.
pub const CALL_WAIT: Duration = Duration::from_secs(30);

/// Sends one request to the node at `path` (blocking).
pub fn call(path: &Path, req: &Request) -> Result<Response, CallError> {
    call_within(path, req, CALL_WAIT)
}

/// [`call`], waiting up to `wait` for the answer.
pub fn call_within(path: &Path, req: &Request, wait: Duration) -> Result<Response, CallError> {
    call_from(path, req, wait).map(|(resp, _)| resp)
}

/// [`call_within`], also returning the answering process's pid (from the
/// socket's peer credentials), when the kernel gives it.
pub fn call_from(
    path: &Path,
    req: &Request,
    wait: Duration,
) -> Result<(Response, Option<u32>), CallError> {
    let unreachable =
        |reason: String| CallError::Unreachable { path: path.display().to_string(), reason };
    let s = StdUnixStream::connect(path).map_err(|e| unreachable(e.to_string()))?;
    let pid = peer_pid(&s);
    s.set_read_timeout(Some(wait)).map_err(|e| unreachable(e.to_string()))?;
    let line = exchange(&mut BufReader::new(s), req).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            CallError::NoAnswer { path: path.display().to_string(), secs: wait.as_secs() }
        }
        _ => unreachable(e.to_string()),
    })?;
    let resp: Response =
        serde_json::from_str(&line).map_err(|e| unreachable(format!("bad response: {e}")))?;
    if !resp.ok {
        return Err(CallError::Refused(resp.error.clone().unwrap_or_else(|| "refused".into())));
    }
    Ok((resp, pid))
}

/// The pid of the process at the other end of a Unix socket.
fn peer_pid(s: &StdUnixStream) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for the call; the kernel writes at
    // most `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid as u32)
}
