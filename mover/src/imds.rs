//! A small IMDSv2 client: this node's instance id and ENI.
//!
//! HTTP/1.1 over a tokio `TcpStream`, one request per connection. The AWS
//! SDK's IMDS client is not used because it rejects emulators (moto) whose
//! token answer has no TTL header.
//!
//! Protocol: `PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds: 21600`, then `GET`s under
//! `/latest/meta-data/` with `X-aws-ec2-metadata-token`. A 401 means the
//! token expired: a new one is fetched. Connection errors, timeouts and 5xx
//! answers are retried with backoff until the deadline.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backoff::Backoff;
use crate::Identity;

/// Where EC2 serves instance metadata.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";

/// How long [`resolve`] keeps trying.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// One request's own limit (IMDS answers in milliseconds when it is there).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Largest answer accepted: metadata values are short.
const MAX_RESPONSE: usize = 64 * 1024;

/// Why the identity could not be had from IMDS.
#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error("IMDS endpoint {0:?}: expected http://host[:port]")]
    Endpoint(String),
    /// A definite answer that retrying will not change (e.g. 404).
    #[error("IMDS {path}: HTTP {status}: {body}")]
    Status { path: String, status: u16, body: String },
    #[error("IMDS {path}: gave up at the deadline ({deadline:?}) after {attempts} attempts; last error: {last}")]
    Deadline { path: String, attempts: u32, deadline: Duration, last: String },
    #[error("IMDS {path}: unexpected answer: {reason}")]
    Malformed { path: String, reason: String },
}

/// Fills what `want` lacks (instance id, ENI) from IMDSv2 at `endpoint`
/// (normally [`DEFAULT_ENDPOINT`]), within [`DEFAULT_DEADLINE`]. What `want`
/// already has is kept and not asked for.
pub async fn resolve(endpoint: &str, want: Identity) -> Result<Identity, ImdsError> {
    resolve_within(endpoint, want, DEFAULT_DEADLINE).await
}

/// [`resolve`] with an explicit deadline.
pub async fn resolve_within(
    endpoint: &str,
    want: Identity,
    deadline: Duration,
) -> Result<Identity, ImdsError> {
    let want = want.normalized();
    if want.instance_id.is_some() && want.eni.is_some() {
        return Ok(want);
    }
    let mut c = Client::new(endpoint, deadline)?;
    let mut got = want;
    if got.instance_id.is_none() {
        let id = c.get("instance-id").await?;
        tracing::info!(instance_id = %id, "IMDS: instance id");
        got.instance_id = Some(id);
    }
    if got.eni.is_none() {
        let mac = c.get("mac").await?;
        let eni = c.get(&format!("network/interfaces/macs/{mac}/interface-id")).await?;
        tracing::info!(%mac, %eni, "IMDS: primary network interface");
        got.eni = Some(eni);
    }
    Ok(got)
}

/// What IMDS answered at each endpoint in this process: a running
/// instance's id and primary ENI cannot change.
static ANSWERED: Mutex<Vec<(String, Identity)>> = Mutex::new(Vec::new());

/// [`resolve`], asking IMDS only for what neither `want` nor an earlier
/// answer from `endpoint` in this process holds. Found by review
/// (helper-107): the controller asked IMDS at every address re-check
/// (every 30 s by default) when the config names no instance or ENI;
/// each look-up can fail or stall a re-check when IMDS is slow.
pub async fn resolve_cached(endpoint: &str, want: Identity) -> Result<Identity, ImdsError> {
    let want = want.normalized();
    let known = {
        let a = ANSWERED.lock().unwrap_or_else(|e| e.into_inner());
        a.iter().find(|(e, _)| e == endpoint).map(|(_, id)| id.clone()).unwrap_or_default()
    };
    let ask = Identity {
        instance_id: want.instance_id.clone().or(known.instance_id),
        eni: want.eni.clone().or(known.eni),
    };
    let got = resolve(endpoint, ask).await?;
    // Only IMDS's answers are kept, not what the caller gave.
    let mut a = ANSWERED.lock().unwrap_or_else(|e| e.into_inner());
    let i = match a.iter().position(|(e, _)| e == endpoint) {
        Some(i) => i,
        None => {
            a.push((endpoint.to_string(), Identity::default()));
            a.len() - 1
        }
    };
    let kept = &mut a[i].1;
    if want.instance_id.is_none() {
        kept.instance_id = got.instance_id.clone();
    }
    if want.eni.is_none() {
        kept.eni = got.eni.clone();
    }
    Ok(got)
}

/// Reads one metadata path (relative to `/latest/meta-data/`), e.g.
/// `placement/region`.
pub async fn get(endpoint: &str, path: &str, deadline: Duration) -> Result<String, ImdsError> {
    Client::new(endpoint, deadline)?.get(path).await
}

struct Client {
    host: String,
    authority: String,
    token: Option<String>,
    deadline: Instant,
    budget: Duration,
}

struct Response {
    status: u16,
    body: String,
}

/// A failure worth another try.
struct Transient(String);

impl Client {
    fn new(endpoint: &str, budget: Duration) -> Result<Client, ImdsError> {
        let rest = endpoint
            .strip_prefix("http://")
            .ok_or_else(|| ImdsError::Endpoint(endpoint.to_string()))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(ImdsError::Endpoint(endpoint.to_string()));
        }
        // "[::1]:80" and "host:80" keep their port; a bare host gets :80.
        let has_port = match authority.rfind(']') {
            Some(i) => authority[i..].contains(':'),
            None => authority.contains(':'),
        };
        let host = if has_port { authority.to_string() } else { format!("{authority}:80") };
        Ok(Client {
            host,
            authority: authority.to_string(),
            token: None,
            deadline: Instant::now() + budget,
            budget,
        })
    }

    async fn get(&mut self, path: &str) -> Result<String, ImdsError> {
        let full = format!("/latest/meta-data/{path}");
        let mut backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_secs(1), self.deadline);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last = match self.attempt(&full).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => return Err(e),
                Err(Transient(why)) => why,
            };
            tracing::warn!(path = %full, attempt = attempts, error = %last, "IMDS request failed; retrying");
            if !backoff.wait().await {
                return Err(ImdsError::Deadline {
                    path: full,
                    attempts,
                    deadline: self.budget,
                    last,
                });
            }
        }
    }

    /// One try: token if needed, then the GET. Ok(Err) is final.
    async fn attempt(&mut self, path: &str) -> Result<Result<String, ImdsError>, Transient> {
        let token = match &self.token {
            Some(t) => t.clone(),
            None => {
                let r = self
                    .request(
                        "PUT",
                        "/latest/api/token",
                        &[("X-aws-ec2-metadata-token-ttl-seconds", "21600")],
                    )
                    .await?;
                match r.status {
                    200 => {
                        let t = r.body.trim().to_string();
                        if t.is_empty() {
                            return Err(Transient("empty token".into()));
                        }
                        self.token = Some(t.clone());
                        t
                    }
                    s if s >= 500 || s == 429 => {
                        return Err(Transient(format!("token: HTTP {s}")));
                    }
                    s => {
                        return Ok(Err(ImdsError::Status {
                            path: "/latest/api/token".into(),
                            status: s,
                            body: r.body.trim().to_string(),
                        }))
                    }
                }
            }
        };
        let r = self.request("GET", path, &[("X-aws-ec2-metadata-token", &token)]).await?;
        match r.status {
            200 => {
                let v = r.body.trim().to_string();
                if v.is_empty() || v.contains(char::is_whitespace) {
                    return Ok(Err(ImdsError::Malformed {
                        path: path.into(),
                        reason: format!("value {v:?}"),
                    }));
                }
                Ok(Ok(v))
            }
            401 => {
                tracing::info!(%path, "IMDS token refused (401); fetching a new one");
                self.token = None;
                Err(Transient("HTTP 401 (token expired)".into()))
            }
            s if s >= 500 || s == 429 => Err(Transient(format!("HTTP {s}"))),
            s => Ok(Err(ImdsError::Status {
                path: path.into(),
                status: s,
                body: r.body.trim().chars().take(200).collect(),
            })),
        }
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, Transient> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        let limit = REQUEST_TIMEOUT.min(left).max(Duration::from_millis(50));
        match tokio::time::timeout(limit, self.exchange(method, path, headers)).await {
            Ok(r) => r,
            Err(_) => Err(Transient(format!("{method} {path}: timed out after {limit:?}"))),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Response, Transient> {
        let io = |e: std::io::Error| Transient(format!("{method} {path}: {e}"));
        let mut s = TcpStream::connect(&self.host).await.map_err(io)?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: twinblock-mover\r\nAccept: */*\r\nConnection: close\r\n",
            self.authority
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if method == "PUT" {
            req.push_str("Content-Length: 0\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.map_err(io)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.map_err(io)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_RESPONSE {
                return Err(Transient(format!("{method} {path}: answer too large")));
            }
            if let Some(r) = parse_response(&buf, false)
                .map_err(|e| Transient(format!("{method} {path}: {e}")))?
            {
                return Ok(r);
            }
        }
        parse_response(&buf, true)
            .map_err(|e| Transient(format!("{method} {path}: {e}")))?
            .ok_or_else(|| Transient(format!("{method} {path}: connection closed mid-answer")))
    }
}

/// Parses an HTTP/1.1 response; Ok(None) when more bytes are needed.
/// `eof`: the peer closed, so a body without a length ends here.
fn parse_response(buf: &[u8], eof: bool) -> Result<Option<Response>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if eof { Err("truncated header".into()) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| "header is not UTF-8".to_string())?;
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut chunked = false;
    for l in lines {
        let Some((k, v)) = l.split_once(':') else { continue };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| format!("bad Content-Length {v:?}"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = if chunked {
        match dechunk(body)? {
            Some(b) => b,
            None if eof => return Err("truncated chunked body".into()),
            None => return Ok(None),
        }
    } else if let Some(n) = length {
        if body.len() < n {
            return if eof { Err("truncated body".into()) } else { Ok(None) };
        }
        body[..n].to_vec()
    } else if eof || status == 204 || status == 304 {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response { status, body: String::from_utf8_lossy(&body).into_owned() }))
}

/// Decodes a chunked body; Ok(None) when incomplete.
fn dechunk(mut b: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    loop {
        let Some(i) = b.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size_line = std::str::from_utf8(&b[..i]).map_err(|_| "bad chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        b = &b[i + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if b.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_length_chunked_and_eof_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\ni-abc", false)
            .unwrap()
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "i-abc"));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\ni-abc", false)
            .unwrap()
            .is_none());
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\ni-a\r\n2\r\nbc\r\n0\r\n\r\n",
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.body, "i-abc");
        let r = parse_response(b"HTTP/1.0 401 Unauthorized\r\n\r\nno", true).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_str()), (401, "no"));
        assert!(parse_response(b"SSH-2.0\r\n\r\n", true).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", true).is_err());
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            Client::new("http://169.254.169.254", DEFAULT_DEADLINE).unwrap().host,
            "169.254.169.254:80"
        );
        assert_eq!(
            Client::new("http://127.0.0.1:5000/", DEFAULT_DEADLINE).unwrap().host,
            "127.0.0.1:5000"
        );
        assert_eq!(Client::new("http://[::1]", DEFAULT_DEADLINE).unwrap().host, "[::1]:80");
        assert!(Client::new("https://x", DEFAULT_DEADLINE).is_err());
        assert!(Client::new("http://x/latest", DEFAULT_DEADLINE).is_err());
    }
}
