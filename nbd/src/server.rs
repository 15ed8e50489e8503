//! The async shell: accepts TCP connections, drives the sans-IO handshake and
//! request decoder, runs commands against a [`BlockDevice`] with many in
//! flight, and writes replies (out of order, never interleaved).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::device::{BlockDevice, DeviceError};
use crate::export::{BlockSizes, ExportInfo};
use crate::handshake::{Handshake, HandshakeError, Negotiated, Progress};
use crate::reply::{self, Reply};
use crate::request::{Command, Decoded, ProtocolError, RequestDecoder};
use crate::sink::{Queued, Sink};

/// Settings of an NBD server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The export's name (the empty name also selects it).
    pub export_name: String,
    /// How long a client may take to finish the handshake.
    pub handshake_timeout: Duration,
    /// In-flight budget per connection, in units of one request plus one per
    /// MiB of payload (bounds memory at about this many MiB).
    pub in_flight_budget: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            export_name: String::new(),
            handshake_timeout: Duration::from_secs(30),
            in_flight_budget: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("handshake timed out")]
    Timeout,
}

/// Connections that ended without NBD_CMD_DISC and still have requests in
/// flight. A new connection waits for them before it may issue requests, so a
/// dead connection's write never lands after a newer one (nbd.md rule 11).
#[derive(Clone)]
struct DrainGate(Arc<watch::Sender<usize>>);

impl DrainGate {
    fn new() -> Self {
        DrainGate(Arc::new(watch::channel(0).0))
    }
    fn enter(&self) -> DrainGuard {
        self.0.send_modify(|n| *n += 1);
        DrainGuard(self.clone())
    }
    async fn wait_idle(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }
}

struct DrainGuard(DrainGate);

impl Drop for DrainGuard {
    fn drop(&mut self) {
        self.0 .0.send_modify(|n| *n -= 1);
    }
}

/// Serves `device` on `listener` until `shutdown` resolves; then stops
/// accepting, lets every connection finish its in-flight requests, and
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
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = DrainGate::new();
    let config = Arc::new(config);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let span = tracing::info_span!("nbd", client = %peer);
                    let conn = connection(stream, device.clone(), config.clone(), stop_rx.clone(), gate.clone());
                    conns.spawn(async move {
                        match conn.await {
                            Ok(()) => debug!("connection closed"),
                            Err(e) => info!("connection ended: {e}"),
                        }
                    }.instrument(span));
                }
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    info!(connections = conns.len(), "shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
    Ok(())
}

async fn connection<D: BlockDevice>(
    mut stream: TcpStream,
    device: Arc<D>,
    config: Arc<ServerConfig>,
    mut stop: watch::Receiver<bool>,
    gate: DrainGate,
) -> Result<(), ConnError> {
    stream.set_nodelay(true)?;
    let export = ExportInfo {
        name: config.export_name.clone(),
        description: device.description(),
        size: device.size(),
        read_only: device.read_only(),
        block_sizes: BlockSizes::default(),
    };
    let mut hs = Handshake::new(export);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let deadline = tokio::time::Instant::now() + config.handshake_timeout;
    let negotiated = loop {
        let progress = hs.receive(&mut buf);
        if hs.has_output() {
            stream.write_all(&hs.take_output()).await?;
        }
        match progress? {
            Progress::Transmission(n) => break n,
            Progress::Abort => return Ok(()),
            Progress::NeedMore => {}
        }
        tokio::select! {
            read = stream.read_buf(&mut buf) => if read? == 0 { return Ok(()) },
            _ = tokio::time::sleep_until(deadline) => return Err(ConnError::Timeout),
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    };
    debug!(?negotiated, "transmission");
    gate.wait_idle().await;
    transmission(stream, buf, negotiated, device, &config, stop, gate).await
}

async fn transmission<D: BlockDevice>(
    stream: TcpStream,
    mut buf: BytesMut,
    n: Negotiated,
    device: Arc<D>,
    config: &ServerConfig,
    mut stop: watch::Receiver<bool>,
    gate: DrainGate,
) -> Result<(), ConnError> {
    let (mut rd, wr) = stream.into_split();
    let (sink, flusher) = Sink::new(wr);
    let flusher = tokio::spawn(flusher.in_current_span());
    let budget = config.in_flight_budget.max(34);
    let in_flight = Arc::new(Semaphore::new(budget as usize));
    let structured = n.structured;
    let mut decoder = RequestDecoder::new(&n);

    let ended: Result<bool, ConnError> = 'read: loop {
        loop {
            let decoded = match decoder.decode(&mut buf) {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => break 'read Err(e.into()),
            };
            match decoded {
                Decoded::Reject { cookie, is_read, errno, reason } => {
                    debug!(cookie, errno, reason, is_read, "request rejected");
                    sink.send(Queued::new(reply::error(structured, cookie, errno, reason), None));
                }
                Decoded::Command { command: Command::Disconnect, .. } => break 'read Ok(true),
                Decoded::Command { cookie, command } => {
                    let weight = 1 + command_bytes(&command) / (1 << 20);
                    let permit = match in_flight.clone().acquire_many_owned(weight).await {
                        Ok(p) => p,
                        Err(_) => {
                            break 'read Err(ConnError::Io(std::io::Error::other(
                                "in-flight budget closed",
                            )))
                        }
                    };
                    let device = device.clone();
                    let sink = sink.clone();
                    let request: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(
                        async move {
                            let reply = execute(&*device, structured, cookie, command).await;
                            sink.send(Queued::new(reply, Some(permit)));
                        }
                        .in_current_span(),
                    );
                    run_or_spawn(request).await;
                }
            }
        }
        buf.reserve(decoder.wanted().max(64 * 1024));
        tokio::select! {
            read = rd.read_buf(&mut buf) => match read {
                Ok(0) => break 'read Ok(false),
                Ok(_) => {}
                Err(e) => break 'read Err(e.into()),
            },
            _ = stop.wait_for(|s| *s) => break 'read Ok(true),
        }
    };

    // A connection that dies with requests in flight holds new connections
    // back until those requests are done.
    let _guard = match &ended {
        Ok(true) => None,
        _ => Some(gate.enter()),
    };
    let _all = in_flight.acquire_many(budget).await;
    sink.close();
    drop(sink);
    let _ = flusher.await;
    ended.map(|_| ())
}

/// Polls a request once right here: what completes at once (a page-cache
/// read, an error) costs no task hand-off. Whatever must wait is spawned and
/// finishes on its own.
async fn run_or_spawn(mut request: Pin<Box<dyn Future<Output = ()> + Send>>) {
    let done = std::future::poll_fn(|cx| Poll::Ready(request.as_mut().poll(cx).is_ready())).await;
    if !done {
        tokio::spawn(request);
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
    structured: bool,
    cookie: u64,
    command: Command,
) -> Reply {
    let result = match command {
        Command::Read { offset, len } => match dev.read(offset, len).await {
            Ok(data) if data.len() == len as usize => {
                return reply::read(structured, cookie, offset, data)
            }
            Ok(_) => Err(DeviceError::Io(std::io::Error::other("short read from device"))),
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
            warn!(cookie, "request failed: {e}");
            reply::error(structured, cookie, e.errno(), &e.to_string())
        }
    }
}

/// Extents as the protocol wants them: non-empty, at most `len` bytes in all,
/// exactly one with REQ_ONE.
fn clamp_extents(
    extents: Vec<crate::device::Extent>,
    len: u32,
    req_one: bool,
) -> Vec<crate::device::Extent> {
    let mut out = Vec::with_capacity(extents.len().max(1));
    let mut left = len;
    for mut e in extents {
        if left == 0 || (req_one && !out.is_empty()) {
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
        out.push(crate::device::Extent { length: len, flags: 0 });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Extent;

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
}
