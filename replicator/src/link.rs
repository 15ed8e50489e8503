//! The peer link: a QUIC endpoint (quinn) with mutual TLS, one connection to
//! the peer, one bidirectional stream carrying the replication frames in
//! order. The node whose name sorts first dials (with backoff); the other
//! accepts. Each connection is a session of the node core: its frames go to
//! [`Node::frames`], what the core sends comes back through a channel to the
//! writer task. A new connection replaces a stale one (the core decides).
//!
//! Incoming connections are handled on their own tasks, with a deadline:
//! one peer that stalls its TLS handshake never keeps the real one out.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::busy_poll::BusyPoll;
use crate::config::{NodeConfig, ResourceConfig};
use crate::core;
use crate::link_stats;
use crate::node::{Answers, LinkTx, Node, Outbound};
use crate::protocol::wire::{self, Message};
use crate::{tls, udp};
use twinblock_timeline::{mark, Point};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot bind the replication endpoint {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot start the replication link's thread: {0}")]
    Runtime(std::io::Error),
}

/// Incoming connections being handshaken at once (more are refused).
const MAX_HANDSHAKES: usize = 16;

/// How long the link's thread drives the endpoint after the node stops.
const LINGER: Duration = Duration::from_secs(5);

/// QUIC application close codes of the replication link: a session that
/// ended (its reason says why), and the two refusals of a link before any
/// session: a node that is not the configured peer, a node that takes no
/// link now ([`Node::link_refused`]).
const CLOSE_ENDED: u32 = 0;
const CLOSE_NOT_PEER: u32 = 1;
const CLOSE_REFUSED: u32 = 2;

/// Why a session ends when its node stops (the peer is told so too).
const NODE_STOPPING: &str = "the node is stopping";

/// How long a closing session waits for its last frames to be
/// acknowledged, and for the peer's close.
const CLOSING: Duration = Duration::from_millis(500);

/// Who ended a session: it decides how the connection is closed, and
/// what the node is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndedBy {
    /// This node's core (or a failed write): its stream is finished and
    /// its data acknowledged, or given up when flow control held it past
    /// [`CLOSING`] (`write_frames`), so it closes at once, with its
    /// reason for the peer.
    Us,
    /// The peer finished its stream: its reason comes with its close,
    /// which follows.
    PeerFinished,
    /// The peer refused the link: dial again later.
    PeerRefused,
    /// The link failed, the peer closed the connection, or the node stops.
    Other,
}

/// The peer link's UDP socket buffers: twice the flow-control window
/// (`tls::transport`), as the kernel counts each datagram's overhead too.
const SOCKET_BUFFER: i32 = 2 * tls::WINDOW as i32;

/// The link's QUIC server and client configurations.
pub type Configs = (quinn::ServerConfig, quinn::ClientConfig);

/// Node `me`'s link configurations: its certificate, key and CA read and
/// checked. `up` builds them before it opens (and may create) the disk and
/// metadata, so a missing or mismatched file fails the start first, and
/// hands them to [`start`]. MTU discovery probes up to what the route to
/// `peer` (where this node sends) carries; a loopback peer's link starts
/// there ([`tls::initial_mtu`]).
pub fn configs(
    res: &ResourceConfig,
    me: &NodeConfig,
    peer: &NodeConfig,
) -> Result<Configs, LinkError> {
    let probe = tls::probe_bound(me.address.ip(), peer.connect);
    let start = tls::initial_mtu(me.address.ip(), peer.connect);
    debug!(node = %me.name, peer = %peer.connect, start, probe, "replication link: MTU discovery bound");
    let transport = tls::transport(res.timeout, res.ping_interval, start, probe);
    Ok(tls::endpoint_configs(&res.ca, &me.cert, &me.key, &res.name, transport)?)
}

/// Binds node `me`'s replication endpoint (`address`). `up` binds it
/// before it opens (and may create) the disk and metadata, so an address
/// in use fails the start first (before, the disk file and metadata of a
/// first start were left behind: review, helper-137), and hands it to
/// [`start`]. (Bound before the link's runtime exists: a runtime may not
/// be dropped on the caller's async thread, as an early return would.)
pub fn bind(me: &NodeConfig) -> Result<std::net::UdpSocket, LinkError> {
    let addr = me.address;
    std::net::UdpSocket::bind(addr).map_err(|source| LinkError::Bind { addr, source })
}

/// Starts the link tasks of `node` on `socket` ([`bind`]); they stop when
/// `stop` turns true.
///
/// The link runs on a thread of its own (a current-thread runtime): the
/// QUIC endpoint and connection drivers, the session's reader (which on a
/// Secondary applies the peer's writes) and its writer. A replicated write
/// passes through all of them; on one thread each hand-off is a task poll,
/// where on the node's multi-threaded runtime it was a wake-up of another
/// worker, several per write (the profile of issue 10: context switches
/// were the largest cost of the replicated path on two cores).
pub fn start(
    node: Arc<Node>,
    (server, client): Configs,
    socket: std::net::UdpSocket,
    stop: watch::Receiver<bool>,
) -> Result<quinn::Endpoint, LinkError> {
    let addr = node.me.address;
    let bind = |source| LinkError::Bind { addr, source };
    // The runtime looks for work a moment before it sleeps (on a
    // duplicate of the socket: valid as long as the runtime's hook).
    let poll = BusyPoll::new(node.res.busy_poll, socket.try_clone().map_err(bind)?.into());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_park(move || poll.before_park())
        .thread_name("twinblock-link")
        .build()
        .map_err(LinkError::Runtime)?;
    let endpoint = {
        // The endpoint's socket and driver belong to the link's runtime.
        let _in_link = rt.enter();
        let mut endpoint = match endpoint(socket, server) {
            Ok(e) => e,
            Err(e) => {
                drop(_in_link);
                rt.shutdown_background();
                return Err(bind(e));
            }
        };
        endpoint.set_default_client_config(client);
        rt.spawn(accept_loop(node.clone(), endpoint.clone(), stop.clone()));
        if node.me.name < node.peer.name {
            rt.spawn(dial_loop(node, endpoint.clone(), stop.clone()));
        }
        endpoint
    };
    let idle = endpoint.clone();
    let mut stop = stop;
    // The link's tasks all run on its thread: they are in the node's span
    // for the thread's whole life, not entered on every poll (which cost a
    // twentieth of this thread's time per replicated 4 KiB write).
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name("twinblock-link".into())
        .spawn(move || {
            let _span = span.enter();
            rt.block_on(async move {
                let _ = stop.wait_for(|s| *s).await;
                // The sessions say goodbye and the owner closes the
                // endpoint: keep driving it until it is idle.
                let _ = tokio::time::timeout(LINGER, idle.wait_idle()).await;
            });
            // Its tasks are dropped in the span too.
            drop(rt);
        })
        .map_err(LinkError::Runtime)?;
    Ok(endpoint)
}

/// Closes the link's endpoint as the node stops: every connection ends
/// with that reason for the peer.
pub fn close_on_stop(endpoint: &quinn::Endpoint) {
    endpoint.close(CLOSE_ENDED.into(), NODE_STOPPING.as_bytes());
}

/// The peer link's QUIC endpoint on `socket` (inside a tokio runtime,
/// which drives it): large socket buffers, jumbo datagrams, segmentation
/// offload in batches one send can carry ([`udp::BoundedGso`]), `server`
/// for the connections it accepts. Dialing needs a client config too.
pub fn endpoint(
    socket: std::net::UdpSocket,
    server: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    // Room for bursts of large datagrams (see `tls::MAX_UDP_PAYLOAD`).
    set_socket_buffers(&socket, SOCKET_BUFFER);
    let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new_with_abstract_socket(
        tls::endpoint_config(),
        Some(server),
        udp::BoundedGso::wrap(socket)?,
        runtime,
    )
}

/// Larger UDP buffers than the default 208 KiB: a burst of replicated
/// writes otherwise overflows them, QUIC takes the drops for congestion,
/// and drops of large datagrams for an MTU black hole (back to 1200-byte
/// packets for a minute). With CAP_NET_ADMIN the size is set beyond
/// net.core.rmem_max/wmem_max (SO_RCVBUFFORCE); otherwise capped there.
pub fn set_socket_buffers(socket: &impl std::os::fd::AsRawFd, bytes: i32) {
    let set = |opt: libc::c_int| {
        // SAFETY: setsockopt with a valid fd and a pointer to an i32.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&bytes as *const i32).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    for (force, opt) in
        [(libc::SO_RCVBUFFORCE, libc::SO_RCVBUF), (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)]
    {
        if set(force).is_err() {
            if let Err(e) = set(opt) {
                debug!("setsockopt({opt}): {e}");
            }
        }
    }
}

async fn accept_loop(node: Arc<Node>, endpoint: quinn::Endpoint, mut stop: watch::Receiver<bool>) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    // The refusals logged: a peer that dials again and again (every few
    // seconds while this node's disk hangs) is refused in one line.
    let refusals = Arc::new(std::sync::Mutex::new(crate::refusals::RefusalLog::default()));
    // Handshakes refused as too many at once: one WARN line per 10 s with
    // their count (a flood of Initial packets wrote one line each).
    let mut busy = crate::refusals::Tally::default();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(incoming) = tls::validated(incoming) else { continue };
        let remote = incoming.remote_address();
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            match busy.note(std::time::Instant::now()) {
                Some(refused) => warn!(
                    %remote,
                    refused,
                    "too many replication handshakes at once: refused (the count since the last such line)"
                ),
                None => debug!(%remote, "too many replication handshakes at once: refused"),
            }
            incoming.refuse();
            continue;
        };
        let node = node.clone();
        let stop = stop.clone();
        let timeout = node.res.timeout;
        let refusals = refusals.clone();
        tokio::spawn(async move {
            let accepted = tokio::time::timeout(timeout, async {
                let conn = incoming
                    .await
                    .map_err(|e| handshake_error(&e, &node.res.name, &node.res.ca, false))?;
                if let Err(e) = tls::check_peer(&conn, &node.peer.name) {
                    conn.close(CLOSE_NOT_PEER.into(), b"not the configured peer");
                    return Err(e.to_string());
                }
                if let Some(why) = node.link_refused() {
                    conn.close(CLOSE_REFUSED.into(), why.as_bytes());
                    return Err(format!("{why}: refused"));
                }
                let (send, recv) = conn
                    .accept_bi()
                    .await
                    .map_err(|e| handshake_error(&e, &node.res.name, &node.res.ca, false))?;
                Ok((conn, send, recv))
            })
            .await
            .unwrap_or_else(|_| Err("handshake timed out".into()));
            drop(permit);
            match accepted {
                Ok((conn, send, recv)) => {
                    refusals.lock().unwrap_or_else(|p| p.into_inner()).linked();
                    node.set_link_refusal(None);
                    run_session(node, conn, send, recv, stop).await;
                }
                Err(e) => {
                    // (The same refusal of the same host again is a debug
                    // line: a peer dials on while this node's disk hangs,
                    // or waits for its next rebuild, whose countdown aside
                    // the reason stays the same.)
                    let e = one_line(&e);
                    node.set_link_refusal(Some(format!("refused {remote}: {e}")));
                    let say = refusals.lock().unwrap_or_else(|p| p.into_inner()).refused(
                        remote.ip(),
                        &e,
                        std::time::Instant::now(),
                    );
                    match say {
                        crate::refusals::Say::Debug => {
                            debug!(%remote, "refused a replication connection again: {e}")
                        }
                        crate::refusals::Say::Warn { unlogged: 0 } => {
                            warn!(%remote, "refused a replication connection: {e}")
                        }
                        crate::refusals::Say::Warn { unlogged } => warn!(
                            %remote,
                            unlogged,
                            "refused a replication connection: {e} (and {unlogged} other new \
                             refusals since the last such line, not logged)"
                        ),
                    }
                }
            }
        });
    }
}

async fn dial_loop(node: Arc<Node>, endpoint: quinn::Endpoint, mut stop: watch::Receiver<bool>) {
    let base = node.res.connect_interval;
    let mut backoff = base;
    let mut last_warn: Option<String> = None;
    loop {
        // Wait until we want a connection and have none.
        loop {
            let notified = node.changed.notified();
            if node.wants_link() && !node.has_link() {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let attempt = async {
            let conn = endpoint
                .connect(node.peer.connect, &node.peer.name)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| handshake_error(&e, &node.res.name, &node.res.ca, true))?;
            let (send, recv) = conn
                .open_bi()
                .await
                .map_err(|e| handshake_error(&e, &node.res.name, &node.res.ca, true))?;
            Ok::<_, String>((conn, send, recv))
        };
        let result = tokio::select! {
            r = tokio::time::timeout(node.res.timeout, attempt) => r.unwrap_or_else(|_| Err("timed out".into())),
            _ = stop.wait_for(|s| *s) => return,
        };
        match result {
            Ok((conn, send, recv)) => {
                node.set_link_refusal(None);
                let ran = run_session(node.clone(), conn, send, recv, stop.clone()).await;
                let pause = if ran {
                    // A session that ran: the next dial comes soon.
                    backoff = base;
                    last_warn = None;
                    base
                } else {
                    // One that never got past its handshake (a peer that
                    // takes no link now, its disk hanging; a handshake
                    // either side refuses) is tried again less and less
                    // often (the core logs a repeated refusal once).
                    let pause = backoff;
                    backoff = (backoff * 2).min(base * 8);
                    pause
                };
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            Err(e) => {
                // (A peer that does not answer is no refusal.)
                if e != "timed out" {
                    node.set_link_refusal(Some(format!(
                        "cannot connect to {} at {}: {}",
                        node.peer.name,
                        node.peer.connect,
                        one_line(&e)
                    )));
                }
                if last_warn.as_deref() != Some(e.as_str()) {
                    warn!(peer = %node.peer.connect, "cannot connect to {}: {e}", node.peer.name);
                    last_warn = Some(e.clone());
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(base * 8);
            }
        }
    }
}

/// Runs one session until the link fails, the core closes it, or the node
/// stops; says whether it got past its handshake.
async fn run_session(
    node: Arc<Node>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let remote = conn.remote_address();
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let closing = Arc::new(tokio::sync::Notify::new());
    let answers = Arc::new(Answers::default());
    let sid =
        node.link_up(LinkTx { queue: out_tx, closing: closing.clone(), answers: answers.clone() });
    let mut tally = SessionTally { node: node.clone(), sid, conn: conn.clone(), mtu: 0 };
    // The first look before any frame is read: the handshake can reach
    // Established before the loop's first tick, and a status taken then
    // showed no path (CI: `path_mtu` null right at Established).
    tally.tick();
    // (A debug line: a dialer its peer refuses has its QUIC connection up
    // before the peer checks its certificate, and logged this at every
    // dial. The core's "connected" says when a session runs.)
    debug!(%remote, sid, "replication link up");
    let (closed_tx, mut closed_rx) = tokio::sync::oneshot::channel();
    let writer = tokio::spawn(write_frames(send, out_rx, closing, closed_tx, answers.clone()));
    let mut buf = BytesMut::with_capacity(1 << 20);
    let mut tick = tokio::time::interval(node.res.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut room = true;
    // The peer reads nothing of what this node answers: its frames wait
    // in QUIC's window until it does (and it is lost after `timeout`).
    let mut answered = true;
    let mut held_once = false;
    let mut ran = false;
    let mut faulted = None;
    let (why, by): (String, EndedBy) = loop {
        tokio::select! {
            // The store lane's backlog (a disk slower than the link) keeps
            // further frames in QUIC's window: the peer waits, not this
            // node's memory. Every other arm (the writer's end, the tick
            // with the link's RTT and counters, the stop) goes on meanwhile.
            _ = node.lane_room(), if !room => room = true,
            _ = answers.room(), if !answered => {
                answered = true;
                debug!(sid, "replication link: the peer reads again");
            }
            // The paused reader sees no close: the peer's (a disconnect,
            // its give-up) is seen here, with its reason.
            e = conn.closed(), if !room || !answered => {
                break read_failed(&node.peer.name, &node.res.ca, Some(e.clone()), e)
            }
            r = recv.read_buf(&mut buf), if room && answered => match r {
                Ok(0) => break (core::PEER_FINISHED.into(), EndedBy::PeerFinished),
                Ok(_) => {
                    let mut msgs = Vec::new();
                    let fault = loop {
                        match wire::decode(&mut buf) {
                            Ok(Some(m)) => {
                                match &m {
                                    Message::Data { seq, .. } => mark(Point::FrameDecoded, *seq),
                                    Message::Ack { done, .. } => mark(Point::AckDecoded, *done),
                                    _ => {}
                                }
                                msgs.push(m)
                            }
                            Ok(None) => break None,
                            Err(e) => break Some(format!("link fault: {e}")),
                        }
                    };
                    room = node.frames(sid, msgs);
                    if !answers.has_room() {
                        answered = false;
                        // (Once a session: a peer that reads in fits and
                        // starts is not a line each time.)
                        if std::mem::replace(&mut held_once, true) {
                            debug!(sid, queued = answers.bytes(), "replication link: answers held");
                        } else {
                            warn!(
                            sid,
                            queued = answers.bytes(),
                            "replication link: the peer reads nothing of what this node \
                             answers; its frames wait until it does (it is lost after the \
                             timeout)"
                            );
                        }
                    }
                    if let Some(f) = fault {
                        // This node's decision, as for a frame the core
                        // refuses: its core ends the session, the writer
                        // finishes the stream, and the link closes at once
                        // with the fault as the reason the peer reads.
                        let ours = node.link_fault(sid, f.clone());
                        faulted = Some((f, ours));
                    }
                }
                Err(e) => break read_failed(&node.peer.name, &node.res.ca, conn.close_reason(), e),
            },
            end = &mut closed_rx => break writer_ended(&node.peer.name, &node.res.ca, &conn, end),
            _ = tick.tick() => ran |= tally.tick(),
            _ = stop.wait_for(|s| *s) => break (NODE_STOPPING.into(), EndedBy::Other),
        }
        // (A session that faults is not one that ran, whenever it got past
        // its handshake: the dialer backs off from such a peer.)
        if let Some((f, ours)) = faulted.take() {
            break match tokio::time::timeout(CLOSING, &mut closed_rx).await {
                Ok(end) => writer_ended(&node.peer.name, &node.res.ca, &conn, end),
                // The writer is held up (flow control): close anyway.
                Err(_) if ours => (f, EndedBy::Us),
                // The core had ended the session before, for its own
                // reason (in its status); the close says what we know.
                Err(_) => (f, EndedBy::Other),
            };
        }
    };
    // The peer's end of the stream can come first when this node's core
    // had closed the session already (the peer's writer then finishes its
    // side too): the end is this node's, with its core's reason.
    ran = ran || node.session_running(sid);
    let (why, by) = if by == EndedBy::PeerFinished && !node.has_session(sid) {
        match tokio::time::timeout(CLOSING, &mut closed_rx).await {
            Ok(end) => writer_ended(&node.peer.name, &node.res.ca, &conn, end),
            Err(_) => (why, by),
        }
    } else {
        (why, by)
    };
    node.link_down(sid, &why);
    // A session that never got past its handshake (the peer refuses this
    // node's certificate, at every dial) is told by the core's "peer
    // lost", once per reason: here it is a debug line (before, a WARN at
    // every dial: review, helper-137).
    if by == EndedBy::PeerRefused || !ran {
        debug!(%remote, sid, "replication session ended: {why}");
    } else {
        warn!(%remote, sid, "replication session ended: {why}");
    }
    // Let queued frames (our hello, a refusal) reach the peer, briefly.
    let _ = tokio::time::timeout(CLOSING, writer).await;
    if by != EndedBy::Us {
        // A peer that ended the session closes once its last frames are
        // acknowledged, with its reason: that is what the node reports.
        let _ = tokio::time::timeout(CLOSING, conn.closed()).await;
        if by == EndedBy::PeerFinished {
            if let Some(quinn::ConnectionError::ApplicationClosed(c)) = conn.close_reason() {
                node.peer_said(sid, peer_closed(&node.peer.name, &c).0);
            }
        }
    }
    conn.close(CLOSE_ENDED.into(), one_line(&why).as_bytes());
    ran
}

/// What the session's tick looks at, and its transport counters in the
/// node's tally; the last look is taken when the session's task ends,
/// however it ends (after the connection's close; a panic or a dropped
/// task too).
struct SessionTally {
    node: Arc<Node>,
    sid: core::SessionId,
    conn: quinn::Connection,
    /// The path MTU last logged.
    mtu: u16,
}

impl SessionTally {
    /// The session's tick: the RTT and the transport counters to the
    /// node, a changed path MTU to the log. Says whether the session is
    /// running (past its handshake).
    fn tick(&mut self) -> bool {
        let running = self.node.session_running(self.sid);
        self.node.set_rtt(self.conn.rtt());
        let stats = self.conn.stats();
        self.node.link_look(self.sid, link_stats::look(&stats));
        if stats.path.current_mtu != self.mtu {
            self.mtu = stats.path.current_mtu;
            debug!(mtu = self.mtu, "replication link: path MTU (UDP payload) changed");
        }
        running
    }
}

impl Drop for SessionTally {
    fn drop(&mut self) {
        self.node.link_ended(self.sid, &link_stats::look(&self.conn.stats()));
    }
}

/// How the session's writer ended.
#[derive(Debug)]
enum WriterEnd {
    /// The core closed the session (its reason); the stream is finished.
    Closed(String),
    /// A write failed (most often: the connection closed under it).
    Failed(quinn::WriteError),
}

/// The session's end as its writer tells it: the core's own end, or a
/// failed write, which says what the connection's close says (a refusal
/// from the peer is one).
fn writer_ended(
    peer: &str,
    ca: &Path,
    conn: &quinn::Connection,
    end: Result<WriterEnd, tokio::sync::oneshot::error::RecvError>,
) -> (String, EndedBy) {
    match end {
        Ok(WriterEnd::Closed(why)) => (why, EndedBy::Us),
        Ok(WriterEnd::Failed(e)) => read_failed(peer, ca, conn.close_reason(), e),
        Err(_) => ("closed".into(), EndedBy::Us),
    }
}

/// Why the link failed, in words for the operator: with the peer's own
/// reason when it closed the connection (`closed`, the connection's close
/// reason), else what the read or write said (`e`); and who ended the
/// session. A dialer whose certificate the peer refuses has its
/// connection up first, and learns it here ([`tls::ca_refusal`], naming
/// `ca`, this node's `tls.ca`).
fn read_failed(
    peer: &str,
    ca: &Path,
    closed: Option<quinn::ConnectionError>,
    e: impl std::fmt::Display,
) -> (String, EndedBy) {
    if let Some(why) = closed.as_ref().and_then(|c| tls::ca_refusal(c, ca)) {
        return (one_line(&format!("link: {why}")), EndedBy::Other);
    }
    match closed {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => peer_closed(peer, &c),
        Some(quinn::ConnectionError::LocallyClosed) => {
            ("the node closed the link".into(), EndedBy::Other)
        }
        // (A transport-level close carries the peer's words too.)
        Some(lost) => (one_line(&format!("link: connection lost: {lost}")), EndedBy::Other),
        None => (format!("link: {e}"), EndedBy::Other),
    }
}

/// The peer's close of the connection, in its words: a refusal of the
/// link, or the end of a session.
fn peer_closed(peer: &str, c: &quinn::ApplicationClose) -> (String, EndedBy) {
    let reason = match one_line(&String::from_utf8_lossy(&c.reason)) {
        r if r.is_empty() => "(no reason)".to_string(),
        r => r,
    };
    let code = c.error_code.into_inner();
    if code == u64::from(CLOSE_REFUSED) || code == u64::from(CLOSE_NOT_PEER) {
        (format!("{peer} refused the link: {reason}"), EndedBy::PeerRefused)
    } else {
        (format!("{peer} closed the link: {reason}"), EndedBy::Other)
    }
}

/// Text from the peer, as it goes into logs and the status: one line of
/// at most 200 characters.
/// A link's TLS handshake that failed, as its status says it. The
/// application protocol names the resource ([`tls::alpn`]): a peer
/// configured with another `name` fails it with TLS alert 120
/// (no_application_protocol), which alone said nothing of the cause
/// ("peer doesn't support any known protocol"). `dialing`: this node
/// dialled (the peer refused) or accepted (this node refused). A
/// certificate of another CA names `tls.ca` ([`tls::ca_refusal`]).
fn handshake_error(e: &quinn::ConnectionError, resource: &str, ca: &Path, dialing: bool) -> String {
    if let Some(why) = tls::ca_refusal(e, ca) {
        return why;
    }
    let no_app_protocol = quinn::TransportErrorCode::crypto(120);
    let alpn = match e {
        quinn::ConnectionError::ConnectionClosed(c) => c.error_code == no_app_protocol,
        quinn::ConnectionError::TransportError(t) => t.code == no_app_protocol,
        _ => false,
    };
    // (The peer's close reason is its own bytes, and a close in an Initial
    // packet needs no certificate: one line, as the status keeps it, for
    // the WARN line too; review, helper-159.)
    let e = one_line(&e.to_string());
    if !alpn {
        return e;
    }
    let who = if dialing {
        "it serves no resource"
    } else {
        "it asked for a resource other than this node's resource"
    };
    format!("{who} \"{resource}\": both nodes' resource files must have the same `name` (TLS: {e})")
}

pub(crate) fn one_line(text: &str) -> String {
    text.chars().take(200).map(|ch| if ch.is_control() { ' ' } else { ch }).collect()
}

/// Payloads shorter than this are copied beside their frame's header
/// (see `write_frames`); longer ones go to QUIC as they are.
const COPY_BELOW: usize = 1024;

/// Small frames copied together into one chunk, at most (about).
const SMALL_BATCH: usize = 64 << 10;

/// Writes queued frames, batching what is ready into one vectored write.
/// Ends (and says why on `closed`) when the core closes the session or the
/// stream fails.
///
/// A write QUIC's flow control holds (a peer that reads nothing: its disk
/// stalls with its store lane full) does not hold the core's close back:
/// the close rings `closing`, and from then on what was queued before it
/// has [`CLOSING`] in all to go out. If it cannot, the session ends with
/// the core's reason all the same, and the connection's close (which
/// `run_session` sends next, with that reason) drops the rest, as a lost
/// link would: the core gave those frames up when it closed the session.
async fn write_frames(
    mut send: quinn::SendStream,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    closing: Arc<tokio::sync::Notify>,
    closed: tokio::sync::oneshot::Sender<WriterEnd>,
    answers: Arc<Answers>,
) {
    let mut chunks: Vec<Bytes> = Vec::with_capacity(128);
    // Small frames (headers, acks, pongs, payloads under COPY_BELOW) are
    // copied together into one buffer: each chunk handed to QUIC is a
    // segment of its send buffer, and quinn looks a segment up by walking
    // them from the oldest unacknowledged one, for every piece of every
    // packet. With one segment per 13-byte frame (a peer's burst of pings,
    // each answered) a send buffer of a million segments held the link's
    // thread for seconds per packet, and the node gave its peer up.
    let mut small = BytesMut::new();
    fn push(chunks: &mut Vec<Bytes>, small: &mut BytesMut, m: Message) {
        match &m {
            Message::Data { seq, .. } => mark(Point::WriterTook, *seq),
            Message::Ack { done, .. } => mark(Point::AckWriterTook, *done),
            _ => {}
        }
        let (head, payload) = m.encode();
        small.extend_from_slice(&head);
        match payload {
            Some(p) if p.len() >= COPY_BELOW => {
                chunks.push(small.split().freeze());
                chunks.push(p);
            }
            Some(p) => small.extend_from_slice(&p),
            None => {}
        }
    }
    // Armed when the close rings; polled only then.
    let give_up = tokio::time::sleep(CLOSING);
    tokio::pin!(give_up);
    let mut ending = Ending::Running;
    loop {
        while !matches!(ending, Ending::Closed(_))
            && chunks.len() < 128
            && small.len() < SMALL_BATCH
        {
            let empty = chunks.is_empty() && small.is_empty();
            let got = if empty { rx.recv().await } else { rx.try_recv().ok() };
            match got {
                Some(Outbound::Frame(m)) => {
                    answers.taken(&m);
                    push(&mut chunks, &mut small, m)
                }
                Some(Outbound::Close(why)) => {
                    if matches!(ending, Ending::Running) {
                        give_up.as_mut().reset(tokio::time::Instant::now() + CLOSING);
                    }
                    ending = Ending::Closed(why);
                }
                None if chunks.is_empty() && small.is_empty() => return,
                None => break,
            }
        }
        if !small.is_empty() {
            chunks.push(small.split().freeze());
        }
        let held = {
            let write = send.write_all_chunks(&mut chunks);
            tokio::pin!(write);
            loop {
                // (A write that completes at once polls nothing else.)
                tokio::select! {
                    biased;
                    r = &mut write => break r.map(|()| false),
                    _ = closing.notified(), if matches!(ending, Ending::Running) => {
                        give_up.as_mut().reset(tokio::time::Instant::now() + CLOSING);
                        ending = Ending::Draining;
                    }
                    _ = &mut give_up, if !matches!(ending, Ending::Running) => break Ok(true),
                }
            }
        };
        match held {
            Err(e) => {
                debug!("link write failed: {e}");
                let _ = closed.send(WriterEnd::Failed(e));
                return;
            }
            Ok(true) => {
                // The peer took nothing for CLOSING: the close goes now,
                // with its reason (queued behind the held frames).
                debug!("link write held by flow control at the close");
                let why = match ending {
                    Ending::Closed(why) => why,
                    _ => loop {
                        match rx.try_recv() {
                            Ok(Outbound::Close(why)) => break why,
                            Ok(Outbound::Frame(_)) => {}
                            Err(_) => break "closed".into(),
                        }
                    },
                };
                let _ = closed.send(WriterEnd::Closed(why));
                return;
            }
            Ok(false) => {
                chunks.clear();
                if let Ending::Closed(why) = ending {
                    // The session closes the connection next, which would
                    // drop what the peer has not acknowledged: wait for
                    // that, briefly.
                    if send.finish().is_ok() {
                        let _ = tokio::time::timeout(CLOSING, send.stopped()).await;
                    }
                    let _ = closed.send(WriterEnd::Closed(why));
                    return;
                }
            }
        }
    }
}

/// Whether the core closed the session, as a link's writer knows it.
enum Ending {
    /// No close rung.
    Running,
    /// The close rang (it is queued behind frames not yet taken): what
    /// comes before it has until the armed deadline.
    Draining,
    /// The close was taken from the queue, with its reason: nothing
    /// follows it.
    Closed(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed_by_peer(code: u32, reason: &str) -> Option<quinn::ConnectionError> {
        Some(quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: code.into(),
            reason: Bytes::copy_from_slice(reason.as_bytes()),
        }))
    }

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection lost")
    }

    #[test]
    fn a_refusal_names_the_peer_and_its_reason() {
        let why = "the local disk is detached with operations it never completed";
        assert_eq!(
            read_failed("b", Path::new("ca.pem"), closed_by_peer(CLOSE_REFUSED, why), io()),
            (format!("b refused the link: {why}"), EndedBy::PeerRefused)
        );
        assert_eq!(
            read_failed(
                "b",
                Path::new("ca.pem"),
                closed_by_peer(CLOSE_NOT_PEER, "not the configured peer"),
                io()
            ),
            ("b refused the link: not the configured peer".to_string(), EndedBy::PeerRefused)
        );
    }

    /// A dialer whose certificate the listener refuses has its
    /// connection up first: the close's rustls words become words that
    /// name `tls.ca` (README walk-through).
    #[test]
    fn a_certificate_refused_for_its_ca_names_tls_ca() {
        let closed = Some(quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::crypto(51),
            frame_type: None,
            reason: Bytes::from_static(b"invalid peer certificate: BadSignature"),
        }));
        assert_eq!(
            read_failed("b", Path::new("certs/ca.pem"), closed, io()),
            (
                "link: the peer refused this node's certificate, not signed by the CA in its \
                 tls.ca (ours: certs/ca.pem) (TLS: invalid peer certificate: BadSignature)"
                    .to_string(),
                EndedBy::Other
            )
        );
    }

    /// A handshake the peer closed says the peer's reason, its own bytes,
    /// in one line: a CONNECTION_CLOSE in an Initial packet needs no
    /// certificate (its keys derive from the dialer's first packet), and
    /// its line breaks wrote lines of the sender's choosing into the
    /// dialer's WARN "cannot connect" (review, helper-159).
    #[test]
    fn a_handshake_closed_by_the_peer_says_its_reason_in_one_line() {
        for code in [quinn::TransportErrorCode::crypto(40), quinn::TransportErrorCode::crypto(120)]
        {
            let e = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
                error_code: code,
                frame_type: None,
                reason: Bytes::from_static(b"bye\n2026-12-07T00:00:00Z  WARN forged\x1b[2J"),
            });
            let why = handshake_error(&e, "r0", Path::new("ca.pem"), true);
            assert!(why.contains("bye") && why.contains("forged"), "{why:?}");
            assert!(!why.contains(|c: char| c.is_control()), "{why:?}");
        }
    }

    #[test]
    fn a_session_the_peer_ended_is_not_a_refusal() {
        assert_eq!(
            read_failed("b", Path::new("ca.pem"), closed_by_peer(CLOSE_ENDED, NODE_STOPPING), io()),
            ("b closed the link: the node is stopping".to_string(), EndedBy::Other)
        );
        // The peer's reason is cut to one line of 200 characters.
        let long = format!("line\nbreak{}", "x".repeat(1000));
        let (why, _) =
            read_failed("b", Path::new("ca.pem"), closed_by_peer(CLOSE_ENDED, &long), io());
        assert_eq!(why, format!("b closed the link: line break{}", "x".repeat(190)));
        assert_eq!(
            read_failed("b", Path::new("ca.pem"), closed_by_peer(CLOSE_ENDED, ""), io()),
            ("b closed the link: (no reason)".to_string(), EndedBy::Other)
        );
        assert_eq!(
            read_failed(
                "b",
                Path::new("ca.pem"),
                Some(quinn::ConnectionError::LocallyClosed),
                io()
            ),
            ("the node closed the link".to_string(), EndedBy::Other)
        );
        let (why, refused) =
            read_failed("b", Path::new("ca.pem"), Some(quinn::ConnectionError::TimedOut), io());
        assert_eq!((why.as_str(), refused), ("link: connection lost: timed out", EndedBy::Other));
        assert_eq!(
            read_failed("b", Path::new("ca.pem"), None, io()),
            ("link: connection lost".to_string(), EndedBy::Other)
        );
    }
}
