//! The peer link: a QUIC endpoint (quinn) with mutual TLS, one connection to
//! the peer, one bidirectional stream carrying the replication frames in
//! order. The node whose name sorts first dials (with backoff); the other
//! accepts. A new connection from the peer replaces a stale one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn, Instrument};

use crate::node::Node;
use crate::protocol::liveness::Liveness;
use crate::protocol::receiver::Receiver;
use crate::protocol::wire::{self, Message, Role};
use crate::session::Session;
use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot bind the replication endpoint {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
}

/// Starts the link tasks of `node`; they stop when `stop` turns true.
pub fn start(node: Arc<Node>, stop: watch::Receiver<bool>) -> Result<quinn::Endpoint, LinkError> {
    let transport = tls::transport(node.res.timeout, node.res.ping_interval);
    let (server, client) =
        tls::endpoint_configs(&node.res.ca, &node.me.cert, &node.me.key, transport)?;
    let addr = node.me.address;
    let mut endpoint =
        quinn::Endpoint::server(server, addr).map_err(|source| LinkError::Bind { addr, source })?;
    endpoint.set_default_client_config(client);
    let span = tracing::Span::current();
    tokio::spawn(
        accept_loop(node.clone(), endpoint.clone(), stop.clone()).instrument(span.clone()),
    );
    if node.me.name < node.peer.name {
        tokio::spawn(dial_loop(node, endpoint.clone(), stop).instrument(span));
    }
    Ok(endpoint)
}

/// Larger UDP buffers than the default 208 KiB: a burst of replicated
/// writes otherwise overflows them and QUIC takes the drops for congestion.
/// Capped by net.core.rmem_max/wmem_max.
pub fn set_socket_buffers(socket: &impl std::os::fd::AsRawFd, bytes: i32) {
    for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
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
        if r != 0 {
            debug!("setsockopt({opt}): {}", std::io::Error::last_os_error());
        }
    }
}

async fn accept_loop(node: Arc<Node>, endpoint: quinn::Endpoint, mut stop: watch::Receiver<bool>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => return },
            _ = stop.wait_for(|s| *s) => return,
        };
        let remote = incoming.remote_address();
        let conn = match incoming.await {
            Ok(c) => c,
            Err(e) => {
                warn!(%remote, "refused a replication connection: {e}");
                continue;
            }
        };
        if let Err(e) = tls::check_peer(&conn, &node.peer.name) {
            warn!(%remote, "refused a replication connection: {e}");
            conn.close(1u32.into(), b"not the configured peer");
            continue;
        }
        if !node.state().want_connected {
            conn.close(2u32.into(), b"disconnected by the operator");
            continue;
        }
        let node = node.clone();
        let stop = stop.clone();
        tokio::spawn(
            async move {
                let r = conn.accept_bi().await;
                match r {
                    Ok((send, recv)) => run_session(node, conn, send, recv, stop).await,
                    Err(e) => debug!("peer connection ended before its stream: {e}"),
                }
            }
            .in_current_span(),
        );
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
            let idle = {
                let st = node.state();
                st.want_connected && st.session.is_none()
            };
            if idle {
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
                .map_err(|e| e.to_string())?;
            let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, send, recv))
        };
        let result = tokio::select! {
            r = tokio::time::timeout(node.res.timeout, attempt) => r.unwrap_or_else(|_| Err("timed out".into())),
            _ = stop.wait_for(|s| *s) => return,
        };
        match result {
            Ok((conn, send, recv)) => {
                backoff = base;
                last_warn = None;
                run_session(node.clone(), conn, send, recv, stop.clone()).await;
            }
            Err(e) => {
                if last_warn.as_deref() != Some(e.as_str()) {
                    warn!(peer = %node.peer.connect, "cannot connect to {}: {e}", node.peer.name);
                    last_warn = Some(e.clone());
                }
                node.set_error(format!("connect: {e}"));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(base * 8);
            }
        }
    }
}

/// Runs one session until the link fails, the peer times out, the operator
/// disconnects or the node stops.
async fn run_session(
    node: Arc<Node>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    mut stop: watch::Receiver<bool>,
) {
    let remote = conn.remote_address();
    let why = async {
        // Hello, both ways.
        let (head, _) = Message::Hello(node.hello()).encode();
        send.write_all(&head).await.map_err(|e| format!("sending hello: {e}"))?;
        let mut buf = BytesMut::with_capacity(1 << 20);
        let hello = tokio::time::timeout(node.res.timeout, async {
            loop {
                if let Some(m) = wire::decode(&mut buf).map_err(|e| e.to_string())? {
                    return Ok::<_, String>(m);
                }
                if recv.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                    return Err("peer closed the stream".into());
                }
            }
        })
        .await
        .map_err(|_| "no hello from the peer".to_string())??;
        let Message::Hello(hello) = hello else { return Err("first frame was not a hello".into()) };
        if hello.version != wire::VERSION {
            return Err(format!("peer speaks protocol version {}", hello.version));
        }
        if hello.resource != node.res.name || hello.node != node.peer.name {
            return Err(format!(
                "peer is {}/{}, expected {}/{}",
                hello.node, hello.resource, node.peer.name, node.res.name
            ));
        }
        if hello.size != node.res.size {
            return Err(format!("peer's size is {} bytes, ours {}", hello.size, node.res.size));
        }
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let session = Arc::new(Session::new(
            node.peer.name.clone(),
            node.res.protocol,
            node.res.max_lag,
            out_tx,
        ));
        // A stale session (the peer restarted) gives way to this one.
        let old = node.state().session.clone();
        if let Some(old) = old {
            node.session_lost(&old, "replaced by a new connection");
        }
        node.connected(&hello, session.clone())?;
        info!(%remote, "replication link up");
        let writer = tokio::spawn(write_frames(send, out_rx).in_current_span());
        if let Some(s) = node.needs_resync() {
            tokio::spawn(node.clone().resync(s).in_current_span());
        }
        let r = session_loop(&node, &session, &conn, &mut recv, buf, &mut stop).await;
        node.session_lost(&session, r.as_ref().err().map_or("stopped", |e| e.as_str()));
        writer.abort();
        r
    }
    .await;
    if let Err(e) = &why {
        warn!(%remote, "replication session ended: {e}");
        node.set_error(e.clone());
        // Closing at once would drop our hello if it is still in flight; let
        // the peer read it and reach its own verdict (or close) first.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
    }
    conn.close(0u32.into(), b"bye");
}

async fn session_loop(
    node: &Arc<Node>,
    session: &Arc<Session>,
    conn: &quinn::Connection,
    recv: &mut quinn::RecvStream,
    mut buf: BytesMut,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let mut live = Liveness::new(Instant::now(), node.res.timeout);
    let mut receiver = Receiver::new();
    let mut tick = tokio::time::interval(node.res.ping_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Process what is buffered first (the hello may have brought more).
        while let Some(m) = wire::decode(&mut buf).map_err(|e| format!("link: {e}"))? {
            live.heard(Instant::now());
            match m {
                Message::Data { seq, op } => {
                    if node.state().role != Role::Secondary {
                        return Err("peer sent data while this node is Primary".into());
                    }
                    receiver.on_data(seq, op).map_err(|e| format!("link fault: {e}"))?;
                    while let Some((seq, op)) = receiver.next_ready() {
                        if matches!(op, wire::Op::Flush)
                            || matches!(op, wire::Op::Write { fua: true, .. })
                        {
                            // Let protocol B's "received" out before a slow sync.
                            if let Some(ack) = receiver.ack() {
                                session.send(ack);
                            }
                        }
                        match node.apply(seq, &op).await {
                            Ok(Some(reply)) => session.send(reply),
                            Ok(None) => {}
                            Err(e) => {
                                warn!(seq, "cannot apply a replicated operation: {e}");
                                session.send(Message::Failed {
                                    seq,
                                    errno: e.raw_os_error().unwrap_or(5),
                                });
                            }
                        }
                        receiver.applied(seq);
                    }
                }
                Message::Ack { received, done } => session.on_ack(received, done),
                Message::Failed { seq, errno } => {
                    warn!(seq, errno, "peer failed to apply a write: marked out of sync");
                    if let Some(u) = session.on_failed(seq) {
                        node.peer_failed(u.range);
                    }
                }
                Message::Verified { seq, crcs } => node.verified(seq, &crcs),
                Message::Ping { id } => session.send(Message::Pong { id }),
                Message::Pong { id } => live.pong(id, Instant::now()),
                Message::State { role, disk, peer_out_of_sync, fresh, current } => {
                    node.peer_state(role, disk, peer_out_of_sync, fresh, current)
                }
                Message::Hello(_) => return Err("unexpected second hello".into()),
                _ => {}
            }
        }
        if let Some(ack) = receiver.ack() {
            session.send(ack);
        }
        if !node.state().want_connected {
            return Err("disconnected by the operator".into());
        }
        tokio::select! {
            biased;
            r = recv.read_buf(&mut buf) => match r {
                Ok(0) => return Err("peer closed the link".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("link: {e}")),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                if live.expired(now) {
                    return Err(format!("no sign of life from the peer for {:?}", node.res.timeout));
                }
                if let Some(id) = live.ping(now) {
                    session.send(Message::Ping { id });
                }
                // Blocks left to resync (a promotion after a crash, a
                // failed apply): start, unless one is running.
                if let Some(s) = node.needs_resync() {
                    if Arc::ptr_eq(&s, session) {
                        tokio::spawn(node.clone().resync(s).in_current_span());
                    }
                }
                // QUIC's own estimate: from ACK timing, not behind queued data.
                node.set_rtt(Some(conn.rtt()));
            }
            _ = node.changed.notified() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
}

/// Writes queued frames, batching what is ready into one vectored write.
async fn write_frames(mut send: quinn::SendStream, mut rx: mpsc::UnboundedReceiver<Message>) {
    let mut chunks: Vec<Bytes> = Vec::with_capacity(128);
    fn push(chunks: &mut Vec<Bytes>, m: Message) {
        let (head, payload) = m.encode();
        chunks.push(head.freeze());
        if let Some(p) = payload {
            chunks.push(p);
        }
    }
    while let Some(first) = rx.recv().await {
        push(&mut chunks, first);
        while chunks.len() < 128 {
            match rx.try_recv() {
                Ok(m) => push(&mut chunks, m),
                Err(_) => break,
            }
        }
        if let Err(e) = send.write_all_chunks(&mut chunks).await {
            debug!("link write failed: {e}");
            return;
        }
        chunks.clear();
    }
}
