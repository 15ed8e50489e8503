//! The Prometheus endpoint's HTTP side: `GET /metrics` answered by a tiny
//! HTTP/1.1 responder on tokio, one request per connection, with what the
//! node's or the witness's renderer says at that moment.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Longest request head read.
const MAX_HEAD: usize = 8192;
/// A client has this long to send its request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);

/// Connections answered at once; a new one past this closes the oldest.
/// (Idle connections would otherwise hold the process's file descriptors,
/// which the node's disk and the witness's state file need. Closing the
/// oldest rather than the newest keeps a scrape answered while slow or
/// silent clients hold every slot: before, 16 idle sockets left every
/// scrape an empty reply.)
const MAX_CONNECTIONS: usize = 16;

/// Connections accepted per second at most, after a burst of
/// [`ACCEPT_BURST`]; more wait in the kernel's backlog. A client that
/// scrapes in a tight loop (6,000 a second from one Python thread here)
/// took 40% of a core in the node, and halved a protocol C pair's 4 KiB
/// QD32 writes (review: 0.57, 0.50 and 0.48 of the writes without it);
/// paced, it cost 5% of a core and the writes kept 0.79 to 0.84. Prometheus
/// scrapes every 15 s by default. The price: under a flood of
/// connections a scrape waits its turn in the backlog.
const ACCEPT_RATE: f64 = 200.0;
/// See [`ACCEPT_RATE`].
const ACCEPT_BURST: f64 = 64.0;

/// A token bucket: [`ACCEPT_BURST`] tokens, [`ACCEPT_RATE`] a second.
#[derive(Debug)]
struct Pace {
    tokens: f64,
    at: std::time::Instant,
}

impl Pace {
    fn new(now: std::time::Instant) -> Self {
        Pace { tokens: ACCEPT_BURST, at: now }
    }

    fn refill(&mut self, now: std::time::Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * ACCEPT_RATE).min(ACCEPT_BURST);
        self.at = self.at.max(now);
    }

    /// How long until the next connection may be accepted.
    fn wait(&mut self, now: std::time::Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / ACCEPT_RATE)
        }
    }

    /// A connection accepted.
    fn take(&mut self, now: std::time::Instant) {
        self.refill(now);
        self.tokens -= 1.0;
    }
}

/// What a scrape answers: the metrics' text, rendered at each request.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// The connections being answered, oldest first: (their number, a handle
/// that ends the task, and so closes the connection).
type Live = Arc<std::sync::Mutex<std::collections::VecDeque<(u64, tokio::task::AbortHandle)>>>;

/// Serves `GET /metrics` until `stop` turns true.
pub async fn serve(listener: TcpListener, render: Render, mut stop: watch::Receiver<bool>) {
    let live: Live = Arc::default();
    let mut next = 0u64;
    let mut pace = Pace::new(std::time::Instant::now());
    loop {
        let wait = pace.wait(std::time::Instant::now());
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match conn {
            Ok((stream, _)) => stream,
            Err(e) => {
                // (Out of descriptors: wait rather than spin on accept.)
                tracing::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        pace.take(std::time::Instant::now());
        next += 1;
        let id = next;
        let render = render.clone();
        let mut held = live.lock().unwrap_or_else(|p| p.into_inner());
        while held.len() >= MAX_CONNECTIONS {
            match held.pop_front() {
                Some((_, oldest)) => oldest.abort(),
                None => break,
            }
        }
        let done = live.clone();
        let task = tokio::spawn(async move {
            let _ = tokio::time::timeout(HEAD_DEADLINE * 2, answer(stream, &render)).await;
            done.lock().unwrap_or_else(|p| p.into_inner()).retain(|(i, _)| *i != id);
        });
        held.push_back((id, task.abort_handle()));
    }
}

/// Reads one request head and answers it; the connection then closes.
async fn answer(mut stream: TcpStream, render: &Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(HEAD_DEADLINE, async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_HEAD {
                return Ok::<bool, std::io::Error>(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok(true)
    })
    .await;
    let (status, ctype, body) = match complete {
        Ok(Ok(true)) => respond(&head, render),
        Ok(Ok(false)) => ("400 Bad Request", "text/plain", "bad request\n".to_string()),
        _ => return Ok(()),
    };
    let is_head = head.starts_with(b"HEAD ");
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !is_head {
        reply.push_str(&body);
    }
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

fn respond(head: &[u8], render: &Render) -> (&'static str, &'static str, String) {
    let text = String::from_utf8_lossy(head);
    let line = text.lines().next().unwrap_or_default();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", render())
        }
        ("GET" | "HEAD", "/") => {
            ("200 OK", "text/plain; charset=utf-8", "twinblock: metrics at /metrics\n".to_string())
        }
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain", "not found: try /metrics\n".into()),
        _ => ("405 Method Not Allowed", "text/plain", "only GET and HEAD\n".into()),
    }
}

/// Binds the metrics listener of a node or witness (before it announces
/// itself).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr).await.with_context(|| format!("cannot listen for metrics on {addr}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A burst, then the rate: over 10 s at most 64 + 2,000 connections,
    /// whatever the clients try; an idle second refills the burst.
    #[test]
    fn the_pace_is_a_burst_then_the_rate() {
        let t = Instant::now();
        let mut p = Pace::new(t);
        let mut now = t;
        let mut taken = 0;
        while now < t + Duration::from_secs(10) {
            let w = p.wait(now);
            if w.is_zero() {
                p.take(now);
                taken += 1;
            } else {
                now += w;
            }
        }
        assert!((2063..=2065).contains(&taken), "{taken}");
        let mut q = Pace::new(t);
        for _ in 0..64 {
            assert!(q.wait(t).is_zero());
            q.take(t);
        }
        assert_eq!(q.wait(t), Duration::from_millis(5));
        let later = t + Duration::from_secs(1);
        for _ in 0..64 {
            assert!(q.wait(later).is_zero());
            q.take(later);
        }
        assert!(!q.wait(later).is_zero());
    }
}
