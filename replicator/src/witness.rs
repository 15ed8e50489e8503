//! The witness over the network: `twinblock witness` serves the
//! [`Arbiter`] on a QUIC endpoint with the same mutual TLS as the peer link
//! (its own ALPN), and each data node running a controller keeps one
//! connection to it ([`client`]). A request's `node` must be the node the
//! client certificate names: a node cannot vote for the other.
//!
//! Framing: one bidirectional stream per connection; each message is a
//! 4-byte big-endian length and a JSON object (`VoteRequest` up,
//! `VoteReply` down). Messages are small; anything over 64 KiB is a fault.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Mutex};
use tracing::{info, warn, Instrument};

use crate::arbiter::{Arbiter, Durable, Verdict};
use crate::config::{ResourceConfig, WitnessConfig};
use crate::conn_order::ConnOrder;
use crate::core::{VoteKind, VoteReply, VoteRequest};
use crate::node::Node;
use crate::tls;

const MAX_MESSAGE: usize = 64 << 10;

/// Connections a node may hold at once: a node needs one, and a few more
/// cover a reconnection while its old connection has not timed out yet.
/// A newer connection closes the node's oldest past this (before, every
/// connection of a certificate holder was kept, about 48 KB each: a node
/// that dialed in a loop grew the witness without bound).
const MAX_SESSIONS_PER_NODE: usize = 4;

/// Handshakes in progress at once; a new one past this gives up the
/// oldest (before, each unfinished one was kept for its 10 s deadline,
/// however many: anyone who could reach the port, without a certificate,
/// grew the witness by about 3 KB a first packet). A node's handshake
/// takes a round trip or two: it is given up only if this many others
/// start meanwhile.
const MAX_HANDSHAKES: usize = 64;

/// Refused connections (a failed or timed-out handshake, a certificate
/// that names no node) are one WARN line per 10 s with their count
/// ([`Tally`]). Before (review, helper-137), each was a WARN line: any
/// holder of a certificate of the CA (or none) wrote the witness's log as
/// fast as it could connect.
type Refusals = crate::refusals::Tally;

/// Logs a refused connection, [`Refusals`] deciding its level.
///
/// [`Tally`]: crate::refusals::Tally
fn refused(refusals: &std::sync::Mutex<Refusals>, remote: Option<std::net::SocketAddr>, why: &str) {
    let remote = remote.map_or_else(|| "-".to_string(), |r| r.to_string());
    match refusals.lock().unwrap_or_else(|p| p.into_inner()).note(Instant::now()) {
        Some(n) => {
            warn!(%remote, refused = n, "{why} (refused = connections refused since the last such line)")
        }
        None => tracing::debug!(%remote, "{why}"),
    }
}

/// The handshakes in progress, oldest first: (their number, what gives
/// one up).
type Handshakes =
    Arc<std::sync::Mutex<std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>>>;

/// The connections each node holds: (their number, the connection), the
/// oldest first.
type Sessions =
    Arc<std::sync::Mutex<BTreeMap<String, std::collections::VecDeque<(u64, quinn::Connection)>>>>;

#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("cannot bind the witness endpoint {addr}: {source}")]
    Bind { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("witness state {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("the resource file has no witness (a node with witness = true)")]
    NoWitness,
    #[error("node {0} is not the witness of this resource")]
    NotWitness(String),
}

async fn read_msg<T: serde::de::DeserializeOwned>(
    rx: &mut quinn::RecvStream,
) -> Result<Option<T>, String> {
    let mut len = [0u8; 4];
    match rx.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(format!("a {len}-byte message (at most {MAX_MESSAGE})"));
    }
    let mut buf = vec![0u8; len];
    rx.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&buf).map(Some).map_err(|e| format!("malformed message: {e}"))
}

async fn write_msg<T: serde::Serialize>(tx: &mut quinn::SendStream, m: &T) -> Result<(), String> {
    let body = serde_json::to_vec(m).map_err(|e| e.to_string())?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    tx.write_all(&frame).await.map_err(|e| e.to_string())
}

/// The witness's state file: its [`Durable`] record and the resource it
/// was saved for (absent in files of older versions).
#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    #[serde(flatten)]
    durable: Durable,
}

/// Reads the witness's state (a missing file: none yet). A file saved for
/// another resource is refused: its holder and outdated node would be
/// taken for this resource's (both name their nodes a and b, say).
fn load_state(path: &Option<PathBuf>, resource: &str) -> Result<Durable, WitnessError> {
    let Some(path) = path else { return Ok(Durable::default()) };
    let err = |reason: String| WitnessError::State { path: path.clone(), reason };
    match std::fs::read(path) {
        Ok(b) => {
            let f: StateFile = serde_json::from_slice(&b).map_err(|e| err(e.to_string()))?;
            match f.resource {
                Some(r) if r != resource => Err(err(format!(
                    "saved by the witness of resource {r:?}, not {resource:?} (two witnesses \
                     given one `meta`?)"
                ))),
                _ => Ok(f.durable),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Durable::default()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Saves the witness's state durably (write, fsync, rename, fsync dir).
fn save_state(path: &std::path::Path, resource: &str, d: &Durable) -> std::io::Result<()> {
    let f = StateFile { resource: Some(resource.to_owned()), durable: d.clone() };
    let body = serde_json::to_vec_pretty(&f).map_err(std::io::Error::other)?;
    crate::meta::atomic_write(path, &body)
}

struct Shared {
    arb: Arbiter,
    origin: Instant,
    state: Option<PathBuf>,
    /// Requests decided since start, per node, kind and verdict.
    tally: BTreeMap<(String, &'static str, &'static str), u64>,
    /// Decisions undone because the state could not be saved.
    save_failures: u64,
    /// The order of each node's requests across its connections
    /// ([`decide`]): a request on an older one is stale.
    order: ConnOrder,
}

/// Runs the witness `name` of `res` until `stop` turns true.
pub async fn serve(
    res: ResourceConfig,
    name: &str,
    stop: watch::Receiver<bool>,
) -> Result<(), WitnessError> {
    serve_reporting(res, name, stop, None).await
}

/// Requests of one node, kind and verdict since the witness started.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequestCount {
    pub node: String,
    /// `claim`, `renew` or `release`.
    pub kind: &'static str,
    /// `granted`, `renewed`, `released`, or why it was refused
    /// (`arbiter::Refusal::label`; `wrong_node`, `wrong_peer`,
    /// `save_failed` from the shell).
    pub verdict: &'static str,
    pub count: u64,
}

/// What the witness knows, for `twinblock status` on its control socket
/// and its metrics.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WitnessStatus {
    pub resource: String,
    pub node: String,
    pub role: &'static str,
    /// The resource's data nodes.
    pub members: Vec<String>,
    pub holder: Option<String>,
    /// How long the holder's lease may still run, margin included.
    pub lease_left_ms: Option<u64>,
    pub outdated: Vec<String>,
    /// Nodes that run without their outdated peer.
    pub running_alone: Vec<String>,
    pub complete: bool,
    /// Per node: milliseconds since its last request.
    pub heard_ms_ago: BTreeMap<String, u64>,
    pub state_file: Option<String>,
    pub requests: Vec<RequestCount>,
    pub state_save_failures: u64,
    /// When this status was taken (None: not yet).
    #[serde(skip)]
    pub taken: Option<Instant>,
}

fn status_of(res: &str, name: &str, members: &[String], sh: &Shared) -> WitnessStatus {
    let now = sh.origin.elapsed();
    let ms = |d: Duration| d.as_millis() as u64;
    WitnessStatus {
        resource: res.into(),
        node: name.into(),
        role: "Witness",
        members: members.to_vec(),
        holder: sh.arb.holder().map(str::to_owned),
        lease_left_ms: sh.arb.lease_left(now).map(ms),
        outdated: sh.arb.outdated().map(str::to_owned).collect(),
        running_alone: sh.arb.running_alone().map(str::to_owned).collect(),
        complete: sh.arb.durable().complete,
        heard_ms_ago: sh
            .arb
            .heard
            .iter()
            .map(|(n, t)| (n.clone(), ms(now.saturating_sub(*t))))
            .collect(),
        state_file: sh.state.as_ref().map(|p| p.display().to_string()),
        requests: sh
            .tally
            .iter()
            .map(|((node, kind, verdict), &count)| RequestCount {
                node: node.clone(),
                kind,
                verdict,
                count,
            })
            .collect(),
        state_save_failures: sh.save_failures,
        taken: Some(Instant::now()),
    }
}

fn kind_label(k: VoteKind) -> &'static str {
    match k {
        VoteKind::Claim => "claim",
        VoteKind::Renew => "renew",
        VoteKind::Release => "release",
    }
}

fn verdict_label(v: &Verdict) -> &'static str {
    match v {
        Ok(g) => g.label(),
        Err(r) => r.label(),
    }
}

/// [`serve`], publishing the witness's status on `report` every 100 ms.
pub async fn serve_reporting(
    res: ResourceConfig,
    name: &str,
    mut stop: watch::Receiver<bool>,
    report: Option<watch::Sender<WitnessStatus>>,
) -> Result<(), WitnessError> {
    let w: WitnessConfig = res.witness.clone().ok_or(WitnessError::NoWitness)?;
    if w.name != name {
        return Err(WitnessError::NotWitness(name.into()));
    }
    let saved = load_state(&w.state, &res.name)?;
    let quiet = res.controller.as_ref().map_or(Duration::from_secs(10), |c| c.rules.dead_time);
    let shared = Arc::new(Mutex::new(Shared {
        arb: Arbiter::new(&res.name, Duration::ZERO, quiet, saved),
        origin: Instant::now(),
        state: w.state.clone(),
        tally: BTreeMap::new(),
        save_failures: 0,
        order: ConnOrder::default(),
    }));
    if w.state.is_none() {
        warn!("no `meta` for the witness: its state lives in memory only (after a restart it refuses failovers until a grant told it who is current)");
    }
    let transport = tls::witness_transport(Duration::from_secs(30), Duration::from_secs(1));
    let (server, _) = tls::endpoint_configs_for(
        &res.ca,
        &w.cert,
        &w.key,
        tls::witness_alpn(&res.name),
        transport,
    )?;
    let addr = w.address;
    // (Its nodes notice a restart at their next packet: `tls`.)
    let endpoint_config =
        tls::restart_noticed_endpoint_config(&w.key, &format!("{} {addr}", res.name))?;
    let socket =
        std::net::UdpSocket::bind(addr).map_err(|source| WitnessError::Bind { addr, source })?;
    let endpoint =
        quinn::Endpoint::new(endpoint_config, Some(server), socket, Arc::new(quinn::TokioRuntime))
            .map_err(|source| WitnessError::Bind { addr, source })?;
    info!(%addr, "witness listening");
    let nodes: Vec<String> = res.nodes.keys().cloned().collect();
    let sessions: Sessions = Arc::default();
    let handshakes: Handshakes = Arc::default();
    let refusals = Arc::new(std::sync::Mutex::new(Refusals::default()));
    let mut next_session = 0u64;
    if let Some(report) = report {
        let shared = shared.clone();
        let (resource, me, members) = (res.name.clone(), name.to_owned(), nodes.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                let st = {
                    let sh = shared.lock().await;
                    status_of(&resource, &me, &members, &sh)
                };
                if report.send(st).is_err() {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
    }
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(incoming) = incoming else { break };
        // (A new address proves it receives first: Initials from nowhere
        // gave the oldest pending handshake up, a real node's too.)
        let Some(incoming) = tls::validated(incoming) else { continue };
        let shared = shared.clone();
        let nodes = nodes.clone();
        let sessions = sessions.clone();
        next_session += 1;
        let id = next_session;
        let (give_up, given_up) = tokio::sync::oneshot::channel();
        {
            let mut pending = handshakes.lock().unwrap_or_else(|p| p.into_inner());
            while pending.len() >= MAX_HANDSHAKES {
                // (Dropping it gives the oldest up.)
                pending.pop_front();
            }
            pending.push_back((id, give_up));
        }
        let handshakes = handshakes.clone();
        let refusals = refusals.clone();
        let ca = res.ca.clone();
        let from = incoming.remote_address();
        tokio::spawn(
            async move {
                let done = tokio::select! {
                    d = tokio::time::timeout(Duration::from_secs(10), incoming) => Some(d),
                    _ = given_up => None,
                };
                handshakes.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _)| *i != id);
                let conn = match done {
                    Some(Ok(Ok(c))) => c,
                    Some(Ok(Err(e))) => {
                        return refused(&refusals, Some(from), &handshake_failed(&e, &ca));
                    }
                    Some(Err(_)) => {
                        return refused(&refusals, Some(from), "witness handshake timed out")
                    }
                    None => return tracing::debug!("witness handshake given up for a newer one"),
                };
                let Some(who) = nodes.iter().find(|n| tls::check_peer(&conn, n).is_ok()).cloned()
                else {
                    refused(
                        &refusals,
                        Some(conn.remote_address()),
                        "refused: the certificate names no node of this resource",
                    );
                    conn.close(1u32.into(), b"unknown node");
                    return;
                };
                info!(node = %who, remote = %conn.remote_address(), "node connected");
                admit(&sessions, &who, id, &conn);
                if let Err(e) = session(conn.clone(), id, &who, &nodes, shared).await {
                    warn!(node = %who, "session ended: {e}");
                    // The node is told why (its log shows the close reason).
                    let cut = (0..=e.len().min(200)).rev().find(|&i| e.is_char_boundary(i));
                    let why = &e[..cut.unwrap_or(0)];
                    conn.close(2u32.into(), why.as_bytes());
                }
                let mut all = sessions.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(held) = all.get_mut(&who) {
                    held.retain(|(i, _)| *i != id);
                }
            }
            .in_current_span(),
        );
    }
    endpoint.close(0u32.into(), b"down");
    Ok(())
}

/// A node's handshake that failed, as the witness logs it: another CA's
/// certificate names `tls.ca` (`ca`), as on the peer link; anything else
/// in one line, for the peer's close reason is its own bytes, and a close
/// in an Initial packet needs no certificate (its line breaks wrote lines
/// of the sender's choosing into the witness's WARN: review, helper-159).
fn handshake_failed(e: &quinn::ConnectionError, ca: &std::path::Path) -> String {
    let why = tls::ca_refusal(e, ca).unwrap_or_else(|| crate::link::one_line(&e.to_string()));
    format!("witness handshake failed: {why}")
}

/// Records `who`'s new connection `id`, closing its oldest past
/// [`MAX_SESSIONS_PER_NODE`].
fn admit(sessions: &Sessions, who: &str, id: u64, conn: &quinn::Connection) {
    let mut all = sessions.lock().unwrap_or_else(|p| p.into_inner());
    let held = all.entry(who.to_owned()).or_default();
    held.push_back((id, conn.clone()));
    while held.len() > MAX_SESSIONS_PER_NODE {
        if let Some((_, old)) = held.pop_front() {
            info!(node = %who, remote = %old.remote_address(), "closing the node's oldest connection: it opened a newer one");
            old.close(3u32.into(), b"superseded by a newer connection of this node");
        }
    }
}

async fn session(
    conn: quinn::Connection,
    conn_id: u64,
    who: &str,
    nodes: &[String],
    shared: Arc<Mutex<Shared>>,
) -> Result<(), String> {
    let (mut tx, mut rx) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    while let Some(req) = read_msg::<VoteRequest>(&mut rx).await? {
        let mut sh = shared.lock().await;
        // The lock is held until the new state is saved: a decision that
        // could not be saved is undone before anyone else sees it.
        let now = sh.origin.elapsed();
        let d = decide(&mut sh, now, conn_id, who, nodes, &req);
        let stale = d.stale;
        let saved = match (d.save.clone(), sh.state.clone()) {
            // Durable before the answer relies on it.
            (Some(after), Some(path)) => matches!(
                tokio::task::spawn_blocking({
                    let resource = sh.arb.resource.clone();
                    move || save_state(&path, &resource, &after)
                })
                .await,
                Ok(Ok(()))
            ),
            _ => true,
        };
        let (reply, verdict) = settle(&mut sh, d, saved);
        *sh.tally.entry((who.to_owned(), kind_label(req.kind), verdict)).or_default() += 1;
        drop(sh);
        write_msg(&mut tx, &reply).await?;
        if stale {
            return Err(reply.reason);
        }
    }
    Ok(())
}

/// A request decided, its new state not saved yet ([`settle`]).
struct Decision {
    reply: VoteReply,
    verdict: &'static str,
    /// The arbiter before the request (undone to it if the save fails).
    prev: Option<Arbiter>,
    /// What to save before the reply goes out.
    save: Option<Durable>,
    /// The request came on a connection the node gave up: answered, then
    /// that connection is closed ([`ConnOrder`]).
    stale: bool,
}

/// Decides `req` on `who`'s connection `conn` (numbered in the order the
/// witness accepted them; `nodes`: the resource's).
///
/// A request on a node's older connection after its newer one's is
/// refused, `stale_connection`, and its connection closed ([`ConnOrder`]).
fn decide(
    sh: &mut Shared,
    now: Duration,
    conn: u64,
    who: &str,
    nodes: &[String],
    req: &VoteRequest,
) -> Decision {
    let refused = |reason: String| VoteReply { id: req.id, granted: false, holder: None, reason };
    let plain = |reply, verdict| Decision { reply, verdict, prev: None, save: None, stale: false };
    if req.node != who {
        return plain(
            refused(format!("request for {} on {who}'s connection", req.node)),
            "wrong_node",
        );
    }
    if !sh.order.admit(who, conn) {
        let why = format!(
            "a request on {who}'s older connection to the witness, after its newer one's: \
             stale, not decided"
        );
        return Decision { stale: true, ..plain(refused(why), "stale_connection") };
    }
    if req.peer == who || !nodes.contains(&req.peer) {
        // The peer it names is what the witness outdates: it must be
        // the other node of this resource.
        let why = format!("{who} names {:?} as its peer, not the other node", req.peer);
        return plain(refused(why), "wrong_peer");
    }
    let prev = sh.arb.clone();
    let before = sh.arb.durable();
    let verdict = sh.arb.judge(now, req);
    let reply = sh.arb.reply(req, &verdict);
    // (After a failed save, whatever the file holds is replaced before a
    // reply relies on what the witness holds, changed or not.)
    let save = sh.arb.to_save(&before);
    Decision { reply, verdict: verdict_label(&verdict), prev: Some(prev), save, stale: false }
}

/// The answer to a decision, once its state was saved (`saved`) or not:
/// a decision that could not be saved is undone and refused.
fn settle(sh: &mut Shared, d: Decision, saved: bool) -> (VoteReply, &'static str) {
    let (Some(prev), Some(_)) = (d.prev, &d.save) else { return (d.reply, d.verdict) };
    sh.arb.saved(prev, saved);
    if saved {
        return (d.reply, d.verdict);
    }
    sh.save_failures += 1;
    let reply = VoteReply {
        id: d.reply.id,
        granted: false,
        holder: None,
        reason: "the witness cannot save its state".into(),
    };
    (reply, "save_failed")
}

/// The node side: keeps a connection to the witness, sends what the core
/// asks (`votes`), feeds the answers and the link's state to the core.
pub async fn client(
    node: Arc<Node>,
    mut votes: mpsc::UnboundedReceiver<VoteRequest>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), WitnessError> {
    let Some(w) = node.res.witness.clone() else { return Err(WitnessError::NoWitness) };
    let transport = tls::transport(
        Duration::from_secs(10),
        Duration::from_millis(500),
        tls::QUIC_FLOOR,
        tls::PROBE_UP_TO,
    );
    let (_, client) = tls::endpoint_configs_for(
        &node.res.ca,
        &node.me.cert,
        &node.me.key,
        tls::witness_alpn(&node.res.name),
        transport,
    )?;
    let bind: std::net::SocketAddr =
        if w.connect.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("literal");
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|source| WitnessError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client);
    // The certificate refusal last logged as a WARN.
    let mut said: Option<String> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        // (The failure's text, and whether it is a certificate of another
        // CA: the peer's close reason is its own bytes, so that is told by
        // `ca_refusal`, not by the text saying "tls.ca".)
        let failed = |e: &quinn::ConnectionError| match tls::ca_refusal(e, &node.res.ca) {
            Some(why) => (why, true),
            None => (crate::link::one_line(&e.to_string()), false),
        };
        let attempt = async {
            let conn = endpoint
                .connect(w.connect, &w.name)
                .map_err(|e| (e.to_string(), false))?
                .await
                .map_err(|e| failed(&e))?;
            tls::check_peer(&conn, &w.name).map_err(|e| (e.to_string(), false))?;
            let (tx, rx) = conn.open_bi().await.map_err(|e| failed(&e))?;
            accepted(&conn).await.map_err(|e| failed(&e))?;
            Ok::<_, (String, bool)>((conn, tx, rx))
        };
        let (conn, mut tx, mut rx) =
            match tokio::time::timeout(Duration::from_secs(5), attempt).await {
                Ok(Ok(x)) => x,
                Ok(Err((e, ca))) => {
                    // A certificate of another CA is the operator's to
                    // mend: a WARN line the first time it is so (the rest,
                    // a witness down or restarting, is a debug line).
                    if ca && said.as_deref() != Some(e.as_str()) {
                        warn!(witness = %w.name, "witness unreachable: {e}");
                        said = Some(e);
                    } else {
                        tracing::debug!("witness unreachable: {e}");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
                Err(_) => continue,
            };
        info!(witness = %w.name, "connected to the witness");
        // (A refusal after this is new: said again, once.)
        said = None;
        // Requests queued while there was no link are stale.
        while votes.try_recv().is_ok() {}
        node.witness_link(true);
        let reader = {
            let node = node.clone();
            async move {
                while let Some(reply) = read_msg::<VoteReply>(&mut rx).await? {
                    node.vote(reply);
                }
                Ok::<(), String>(())
            }
        };
        let writer = async {
            while let Some(v) = votes.recv().await {
                write_msg(&mut tx, &v).await?;
            }
            Ok::<(), String>(())
        };
        let why = tokio::select! {
            r = reader => r.err().unwrap_or_else(|| "the witness closed the stream".into()),
            r = writer => r.err().unwrap_or_else(|| "stopped".into()),
            _ = stop.wait_for(|s| *s) => "stopped".into(),
        };
        // (How the connection ended, if it did: "reset by peer" is a
        // restarted witness, "timed out" one that went silent.)
        let how = conn.close_reason().map(|e| format!(" ({e})")).unwrap_or_default();
        conn.close(0u32.into(), b"bye");
        node.witness_link(false);
        warn!(witness = %w.name, "link to the witness lost: {why}{how}");
    }
    endpoint.close(0u32.into(), b"down");
    Ok(())
}

/// Resolves once the witness has taken this node's certificate, or fails
/// with why the connection closed. A client's side of the TLS handshake is
/// done before the server has checked the client's certificate: a witness
/// that refuses it closes the connection after this node took it for
/// connected, and every attempt logged "connected to the witness" and a
/// WARN "link to the witness lost", its status connected between them
/// (review, helper-159). A QUIC server sends HANDSHAKE_DONE once its side
/// is done, the certificate checked; quinn has no event for it, so its
/// count is looked at until then (a round trip, the attempt's 5 s at
/// most).
async fn accepted(conn: &quinn::Connection) -> Result<(), quinn::ConnectionError> {
    loop {
        if conn.stats().frame_rx.handshake_done > 0 {
            return Ok(());
        }
        tokio::select! {
            e = conn.closed() => return Err(e),
            _ = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(node: &str, kind: VoteKind, data: &[u64], forced: bool) -> VoteRequest {
        VoteRequest {
            id: 1,
            resource: "r".into(),
            node: node.into(),
            peer: if node == "a" { "b" } else { "a" }.into(),
            kind,
            uptodate: true,
            peer_current: false,
            lease_ms: 1000,
            data: data.to_vec(),
            forced,
            unacked: false,
            withdrawn: false,
            unused: false,
            undoable: false,
        }
    }

    /// One request as `session` runs it, its state saved to `disk`;
    /// `fails`: the save returns an error after the rename (the new
    /// state is in the file all the same).
    fn ask(
        sh: &mut Shared,
        disk: &mut Durable,
        now: Duration,
        r: VoteRequest,
        fails: bool,
    ) -> VoteReply {
        ask_on(sh, disk, now, 1, r, fails)
    }

    /// [`ask`] on the node's connection `conn`.
    fn ask_on(
        sh: &mut Shared,
        disk: &mut Durable,
        now: Duration,
        conn: u64,
        r: VoteRequest,
        fails: bool,
    ) -> VoteReply {
        let nodes = ["a".to_string(), "b".to_string()];
        let d = decide(sh, now, conn, &r.node, &nodes, &r);
        if let Some(after) = &d.save {
            *disk = after.clone();
        }
        settle(sh, d, !fails).0
    }

    /// b runs without a (a outdated at the witness) and is cut off; the
    /// operator forces a (`primary --force`, b thought lost), and the
    /// witness's save of that grant fails after its rename: refused, and
    /// undone in memory, but the grant is in the file. b comes back and
    /// renews: granted (nothing new to save), and it acknowledges writes
    /// alone again. The witness restarts: from the file, a is the holder
    /// and b outdated, so a's next claim is granted, without b's writes.
    /// The witness must save what it holds at the first request after a
    /// failed save, whatever it decides.
    #[test]
    fn a_decision_undone_after_a_failed_save_is_not_restored_by_a_restart() {
        let saved = Durable { complete: true, ..Durable::default() };
        let quiet = Duration::from_secs(2);
        let mut sh = Shared {
            arb: Arbiter::new("r", Duration::ZERO, quiet, saved.clone()),
            origin: Instant::now(),
            state: Some(PathBuf::from("/nonexistent/w.meta")),
            tally: BTreeMap::new(),
            save_failures: 0,
            order: ConnOrder::default(),
        };
        let mut disk = saved;
        let t = Duration::from_secs(100);
        assert!(
            ask(&mut sh, &mut disk, t, req("b", VoteKind::Claim, &[2, 1], false), false).granted
        );
        // b's lease runs out; a forced.
        let t = t + Duration::from_secs(5);
        let r = ask(&mut sh, &mut disk, t, req("a", VoteKind::Claim, &[1], true), true);
        assert!(!r.granted, "{r:?}");
        assert_eq!(sh.arb.holder(), Some("b"));
        // b is back, renews, and writes alone.
        let t = t + Duration::from_secs(1);
        let r = ask(&mut sh, &mut disk, t, req("b", VoteKind::Renew, &[2, 1], false), false);
        assert!(r.granted, "{r:?}");
        // The witness crashes and starts from its file.
        let t = t + Duration::from_millis(100);
        let mut w = Arbiter::new("r", t, quiet, disk.clone());
        let t = t + Duration::from_secs(3);
        let r = w.handle(t, &req("a", VoteKind::Claim, &[1], false));
        assert!(!r.granted, "a, which lacks b's writes, is granted the right: {r:?} ({disk:?})");
    }

    /// a, Primary, gives the right back (`secondary`) on a connection
    /// that is failing: the `Release` is held up in the network, a gives
    /// the connection up and opens another, and claims the right again on
    /// it (its controller promotes it; it acknowledges writes on that
    /// grant). The held-up `Release` reaches the witness after that, on
    /// the old connection, which the witness has not timed out. Decided,
    /// it cleared a's right while a's lease ran, and b, cut off from a,
    /// was granted the right at once: two Primaries. It is refused as
    /// stale, and a keeps the right.
    #[test]
    fn a_release_held_up_on_an_old_connection_does_not_clear_a_newer_claim() {
        let mut sh = Shared {
            arb: Arbiter::new(
                "r",
                Duration::ZERO,
                Duration::ZERO,
                Durable { complete: true, ..Durable::default() },
            ),
            origin: Instant::now(),
            state: None,
            tally: BTreeMap::new(),
            save_failures: 0,
            order: ConnOrder::default(),
        };
        let mut disk = Durable::default();
        let t = Duration::from_secs(100);
        let r = ask_on(&mut sh, &mut disk, t, 3, req("a", VoteKind::Claim, &[1], false), false);
        assert!(r.granted, "{r:?}");
        // (The Release was sent here, on connection 3, and held up.)
        let t = t + Duration::from_secs(2);
        let claim = VoteRequest { id: 7, ..req("a", VoteKind::Claim, &[1], false) };
        let r = ask_on(&mut sh, &mut disk, t, 8, claim, false);
        assert!(r.granted, "{r:?}");
        let t = t + Duration::from_millis(100);
        let late = VoteRequest { id: 2, ..req("a", VoteKind::Release, &[1], false) };
        let r = ask_on(&mut sh, &mut disk, t, 3, late, false);
        assert!(!r.granted, "{r:?}");
        assert!(r.reason.contains("older connection"), "{r:?}");
        assert_eq!(sh.arb.holder(), Some("a"));
        let t = t + Duration::from_millis(100);
        let r = ask_on(&mut sh, &mut disk, t, 9, req("b", VoteKind::Claim, &[1], false), false);
        assert!(!r.granted, "b granted beside a's running lease: {r:?}");
        // a's requests on its newer connection go on as before.
        let renew = VoteRequest { id: 8, ..req("a", VoteKind::Renew, &[1], false) };
        assert!(ask_on(&mut sh, &mut disk, t, 8, renew, false).granted);
    }

    /// A node's failed handshake is one line in the witness's log, the
    /// peer's close reason included (review, helper-159: its line breaks
    /// reached the WARN as they were).
    #[test]
    fn a_failed_handshake_is_logged_in_one_line() {
        let e = quinn::ConnectionError::ConnectionClosed(quinn_proto::ConnectionClose {
            error_code: quinn_proto::TransportErrorCode::crypto(40),
            frame_type: None,
            reason: bytes::Bytes::from_static(b"bye\n2026-12-07T00:00:00Z  WARN forged\x1b[2J"),
        });
        let why = handshake_failed(&e, std::path::Path::new("ca.pem"));
        assert!(why.starts_with("witness handshake failed: ") && why.contains("forged"), "{why}");
        assert!(!why.contains(|c: char| c.is_control()), "{why:?}");
    }

    /// The state file round-trips for its resource (undo record and
    /// generations included), and is refused by another resource's
    /// witness; a file without a resource (older versions) is taken.
    #[test]
    fn the_state_file_names_its_resource() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.state");
        let mut d = Durable {
            holder: Some("a".into()),
            complete: true,
            last_holder: Some("a".into()),
            ..Durable::default()
        };
        d.outdated.insert("b".into());
        d.alone_with.insert("a".into(), u64::MAX);
        d.undo = Some(Box::new(Durable { holder: Some("b".into()), ..Durable::default() }));
        save_state(&path, "r0", &d).unwrap();
        assert_eq!(load_state(&Some(path.clone()), "r0").unwrap(), d);
        let e = load_state(&Some(path.clone()), "r1").unwrap_err().to_string();
        assert!(e.contains("\"r0\"") && e.contains("\"r1\""), "{e}");
        std::fs::write(&path, serde_json::to_vec(&d).unwrap()).unwrap();
        assert_eq!(load_state(&Some(path), "r1").unwrap(), d);
    }

    /// Every field of the witness's `status --json` is named in the
    /// README: scripts read them. Before, only a prose summary said what
    /// the object holds, and `members`, `complete`, `state_file`,
    /// `state_save_failures` were named nowhere (found by an audit of
    /// `status --json` against shared/DESIGN.md, helper-121).
    #[test]
    fn every_field_of_the_witness_status_is_named_in_the_readme() {
        let readme = include_str!("../../README.md");
        let mut st = WitnessStatus::default();
        st.requests.push(RequestCount {
            node: "a".into(),
            kind: "claim",
            verdict: "granted",
            count: 1,
        });
        let v = serde_json::to_value(&st).unwrap();
        let mut missing: Vec<String> = Vec::new();
        for (k, v) in v.as_object().unwrap() {
            missing.push(k.clone());
            if let Some(inner) = v.as_array().and_then(|a| a.first()).and_then(|o| o.as_object()) {
                missing.extend(inner.keys().map(|k| format!("requests.{k}")));
            }
        }
        missing.retain(|k| {
            let last = k.rsplit('.').next().unwrap_or(k);
            !readme.contains(&format!("`{last}`"))
        });
        assert!(missing.is_empty(), "witness status fields the README does not name: {missing:?}");
    }
}
