//! The server: accepts TCP connections on the tokio runtime and gives each
//! one its own thread that reads requests with blocking `read()` (see
//! [`crate::conn`]); device operations are futures, polled once in place
//! and handed to the runtime only when they must wait.
//!
//! Why a thread per connection: at queue depth 1 a request's latency is
//! mostly wake-ups. A thread blocked in `read()` is woken synchronously by
//! the client's write, typically on the client's CPU, and answers from
//! there; an epoll-driven task of a multi-threaded runtime is woken across
//! CPUs and wakes further idle workers. Measured with `scripts/bench-nbd.sh`
//! (README, Benchmarks).

use std::collections::HashMap;
use std::future::Future;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::conn::{self, ConnShared};
use crate::device::BlockDevice;
use crate::fence::Fence;

/// Settings of an NBD server. Every limit has a default (see `Default`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The export's name (the empty name also selects it).
    pub export_name: String,
    /// How long a client may take to finish the handshake; bounds the
    /// server's writes during the handshake too.
    pub handshake_timeout: Duration,
    /// In-flight budget per connection, in units of one request plus one per
    /// MiB of payload: requests being executed and replies not yet taken by
    /// the kernel, rejected requests included. When it is used up the server
    /// stops reading from that client. Memory per connection is about this
    /// many MiB plus one request (32 MiB at most).
    pub in_flight_budget: u32,
    /// The same units for all connections together: clients that open
    /// many connections and read none of their replies hold at most this
    /// many (about as many MiB) between them; other connections then wait
    /// for units, until the client takes its replies or `io_timeout`
    /// disconnects it.
    pub in_flight_total: u32,
    /// Connections at once (in the handshake or transmitting); one more is
    /// accepted and closed at once, with a warning in the log.
    pub max_connections: usize,
    /// A client that does not acknowledge data (vanished) or does not take
    /// a reply (stopped reading) for this long is disconnected: TCP
    /// keepalive, `TCP_USER_TIMEOUT` and the send timeout of reply writes.
    pub io_timeout: Duration,
    /// On shutdown, how long clients get to read their last replies before
    /// their connections are closed.
    pub shutdown_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            export_name: String::new(),
            handshake_timeout: Duration::from_secs(30),
            in_flight_budget: 128,
            in_flight_total: 512,
            max_connections: 64,
            io_timeout: Duration::from_secs(60),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// What every connection thread shares.
pub(crate) struct Shared<D> {
    pub device: Arc<D>,
    pub config: ServerConfig,
    /// The in-flight units of all connections ([`ServerConfig::in_flight_total`]).
    pub budget: Arc<crate::budget::Budget>,
    pub fence: Arc<Fence>,
    /// Failed requests, warned of at most once a second.
    pub failures: Arc<LogEvery>,
    pub runtime: tokio::runtime::Handle,
    pub stopping: AtomicBool,
    /// Live connections, to stop and, past the deadline, kill them.
    pub conns: Mutex<HashMap<u64, Arc<ConnShared>>>,
    /// Count of live connection threads.
    pub active: watch::Sender<usize>,
}

/// Serves `device` on `listener` until `shutdown` resolves; then stops
/// accepting and reading, answers what is in flight, gives clients
/// `shutdown_timeout` to read their replies, closes every connection and
/// returns.
pub async fn serve<D, F>(
    listener: TcpListener,
    device: Arc<D>,
    config: ServerConfig,
    shutdown: F,
) -> std::io::Result<()>
where
    D: BlockDevice,
    F: Future<Output = ()>,
{
    let budget = crate::budget::Budget::new(config.in_flight_total.max(config.in_flight_budget));
    let shared = Arc::new(Shared {
        device,
        budget,
        config,
        fence: Arc::new(Fence::default()),
        failures: Arc::new(LogEvery::default()),
        runtime: tokio::runtime::Handle::current(),
        stopping: AtomicBool::new(false),
        conns: Mutex::new(HashMap::new()),
        active: watch::channel(0).0,
    });
    let ids = AtomicU64::new(0);
    let refusals = LogEvery::default();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let live = *shared.active.borrow();
                    if live >= shared.config.max_connections {
                        // (Logged before the close: whoever sees the close
                        // finds it in the log.)
                        match refusals.due() {
                            Some(suppressed) => warn!(
                                client = %peer,
                                live,
                                suppressed,
                                "connection refused: --max-connections reached ({suppressed} more \
                                 refused and not logged since the last such warning)"
                            ),
                            None => debug!(client = %peer, live, "connection refused: --max-connections reached"),
                        }
                        drop(stream);
                        continue;
                    }
                    let stream = match stream.into_std().and_then(|s| s.set_nonblocking(false).map(|()| s)) {
                        Ok(s) => s,
                        Err(e) => { warn!(client = %peer, "cannot take over the connection: {e}"); continue; }
                    };
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    start_connection(&shared, id, stream, peer);
                }
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    shared.stopping.store(true, Ordering::SeqCst);
    let live: Vec<Arc<ConnShared>> = lock(&shared.conns).values().cloned().collect();
    info!(connections = live.len(), "shutting down: answering requests in flight");
    for c in &live {
        c.stop();
    }
    let mut rx = shared.active.subscribe();
    let drained = tokio::time::timeout(shared.config.shutdown_timeout, rx.wait_for(|n| *n == 0));
    if drained.await.is_err() {
        let live: Vec<Arc<ConnShared>> = lock(&shared.conns).values().cloned().collect();
        warn!(connections = live.len(), "clients did not take their replies in time: closing");
        for c in &live {
            c.kill();
        }
        // Only device operations are left to finish now.
        let _ = rx.wait_for(|n| *n == 0).await;
    }
    Ok(())
}

/// How often at most a warning that a client can cause over and over is
/// logged (a refused connection, a failed request): a client that
/// reconnects or retries in a loop must not write the log as fast as it can.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// A warning logged at most once per [`WARN_EVERY`], with the number of
/// occurrences not logged since.
#[derive(Default)]
pub(crate) struct LogEvery {
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogEvery {
    /// `Some(n)`: log this one now (`n` were not logged since the last);
    /// `None`: counted, not to be logged.
    pub fn due(&self) -> Option<u64> {
        let mut st = lock(&self.state);
        let now = Instant::now();
        if st.0.is_some_and(|t| now.duration_since(t) < WARN_EVERY) {
            st.1 += 1;
            return None;
        }
        st.0 = Some(now);
        Some(std::mem::take(&mut st.1))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn start_connection<D: BlockDevice>(
    shared: &Arc<Shared<D>>,
    id: u64,
    stream: TcpStream,
    peer: std::net::SocketAddr,
) {
    let conn =
        ConnShared::new(stream, shared.config.in_flight_budget.max(34), shared.budget.clone());
    lock(&shared.conns).insert(id, conn.clone());
    shared.active.send_modify(|n| *n += 1);
    let sh = shared.clone();
    // Inside the server's span (a node's: its resource and name).
    let parent = tracing::Span::current();
    let started = std::thread::Builder::new()
        .name(format!("nbd-conn-{id}"))
        .stack_size(1 << 20)
        .spawn(move || {
            let span = tracing::info_span!(parent: &parent, "nbd", client = %peer);
            let _span = span.enter();
            match conn::run(&sh, &conn) {
                Ok(()) => debug!("connection closed"),
                Err(e) => info!("connection ended: {e}"),
            }
            lock(&sh.conns).remove(&id);
            sh.active.send_modify(|n| *n -= 1);
        });
    if let Err(e) = started {
        warn!(client = %peer, "cannot start a connection thread: {e}");
        lock(&shared.conns).remove(&id);
        shared.active.send_modify(|n| *n -= 1);
    }
}
