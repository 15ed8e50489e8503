//! The resource file: one TOML file per resource, shared by both nodes.
//! Errors name the key and say why. Relative paths are relative to the
//! file's directory.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::units::{parse_duration, parse_size};

/// When a write is acknowledged to the NBD client (shared/DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Local write done; the write is queued to the peer.
    A,
    /// Local write done and the peer has received it.
    B,
    /// Local write done and the peer has written it.
    C,
    /// As C while the peer acknowledges within `[adaptive] latency_budget`;
    /// as A (`Ahead`, the peer marked in the bitmap) while it does not.
    Adaptive,
}

impl FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "A" | "a" => Ok(Protocol::A),
            "B" | "b" => Ok(Protocol::B),
            "C" | "c" => Ok(Protocol::C),
            "adaptive" => Ok(Protocol::Adaptive),
            _ => Err(format!("unknown protocol {s:?} (A, B, C or adaptive)")),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::A => "A",
            Protocol::B => "B",
            Protocol::C => "C",
            Protocol::Adaptive => "adaptive",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // (`reason`, not a source: the message holds it already, and a chain
    // printed with its sources said it twice.)
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: std::io::Error },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {key}: {reason}")]
    Key { path: PathBuf, key: String, reason: String },
}

/// The largest `size`: the out-of-sync bitmap (one bit per 4 KiB) is held
/// in memory, 2 GiB here. Past it a start aborted on the allocation
/// ("memory allocation of 35184372088832 bytes failed" at 1 EiB) after it
/// had created the disk file (review).
pub const MAX_SIZE: u64 = 64 << 40;

/// A SIZE key's text: a string (`"1G"`) or a plain number of bytes
/// (`size = 1073741824`, as the suffix-less string means). Before, a
/// number was refused as "expected a string" (found by helper-113).
mod size_text {
    use serde::de::{self, Deserializer, Visitor};
    use std::fmt;

    struct Text;

    impl Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a size such as \"1G\" or a number of bytes")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
            u64::try_from(v).map(|v| v.to_string()).map_err(|_| {
                E::invalid_value(de::Unexpected::Signed(v), &"a size of 0 bytes or more")
            })
        }
    }

    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_any(Text)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_any(Text).map(Some)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawConfig {
    name: String,
    protocol: String,
    #[serde(deserialize_with = "size_text::required")]
    size: String,
    timeout: Option<String>,
    ping_interval: Option<String>,
    connect_interval: Option<String>,
    disk_timeout: Option<String>,
    busy_poll: Option<String>,
    #[serde(default, deserialize_with = "size_text::optional")]
    max_lag: Option<String>,
    al_extents: Option<usize>,
    split_brain_policy: Option<String>,
    #[serde(default, deserialize_with = "size_text::optional")]
    resync_rate: Option<String>,
    resync_checksum: Option<bool>,
    max_connections: Option<usize>,
    tls: RawTls,
    nodes: BTreeMap<String, RawNode>,
    controller: Option<RawController>,
    adaptive: Option<RawAdaptive>,
}

/// `[adaptive]`: the latency budget of `protocol = "adaptive"`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdaptive {
    #[serde(alias = "latency-budget")]
    latency_budget: Option<String>,
    #[serde(alias = "congestion-fill", default, deserialize_with = "size_text::optional")]
    congestion_fill: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawController {
    dead_time: Option<String>,
    heartbeat: Option<String>,
    health: Option<String>,
    health_interval: Option<String>,
    #[serde(default)]
    on_promote: Vec<String>,
    #[serde(default)]
    on_demote: Vec<String>,
    #[serde(alias = "on-no-quorum")]
    on_no_quorum: Option<String>,
    hook_timeout: Option<String>,
    address: Option<AddressSettings>,
}

/// `[controller.address]`: how the service address moves (passed to the
/// mover as is; the mover checks the keys its kind needs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressSettings {
    pub kind: String,
    pub allocation_id: Option<String>,
    #[serde(default)]
    pub route_table_ids: Vec<String>,
    pub cidr: Option<String>,
    pub private_ip: Option<String>,
    pub command: Option<String>,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// IMDSv2 endpoint (default http://169.254.169.254).
    pub imds_endpoint: Option<String>,
    /// How long one move may take, retries included (default 60s).
    pub deadline: Option<String>,
    /// How often a Primary with quorum checks that the address is still
    /// here and moves it back if not (default 30s for the AWS kinds, off
    /// for `command`; "0s": off).
    pub recheck: Option<String>,
}

impl AddressSettings {
    /// A key set that `kind` does not use, and the kind(s) it belongs to
    /// (`cidr` with `kind = "aws-eip"`): refused at load, as it was
    /// ignored (found by review, helper-103). `deadline` and `recheck`
    /// belong to every kind.
    pub fn key_of_another_kind(&self) -> Option<(&'static str, &'static str)> {
        const AWS: &str = "\"aws-eip\", \"aws-route\" or \"aws-secondary-ip\"";
        let set = |v: &Option<String>| v.is_some();
        let keys = [
            ("allocation_id", set(&self.allocation_id), &["aws-eip"][..], "\"aws-eip\""),
            ("route_table_ids", !self.route_table_ids.is_empty(), &["aws-route"], "\"aws-route\""),
            ("cidr", set(&self.cidr), &["aws-route"], "\"aws-route\""),
            ("private_ip", set(&self.private_ip), &["aws-secondary-ip"], "\"aws-secondary-ip\""),
            ("command", set(&self.command), &["command"], "\"command\""),
            ("region", set(&self.region), &["aws-eip", "aws-route", "aws-secondary-ip"], AWS),
            ("endpoint", set(&self.endpoint), &["aws-eip", "aws-route", "aws-secondary-ip"], AWS),
            (
                "imds_endpoint",
                set(&self.imds_endpoint),
                &["aws-eip", "aws-route", "aws-secondary-ip"],
                AWS,
            ),
        ];
        keys.into_iter()
            .find(|(_, is_set, kinds, _)| *is_set && !kinds.contains(&self.kind.as_str()))
            .map(|(key, _, _, owners)| (key, owners))
    }
}

/// The `[controller]` table: `up` runs the failover controller.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub rules: crate::core::ControllerConfig,
    pub health: Option<String>,
    pub health_interval: Duration,
    pub on_promote: Vec<String>,
    pub on_demote: Vec<String>,
    pub hook_timeout: Duration,
    pub address: Option<AddressSettings>,
}

/// The witness (`witness = true`): votes, keeps no data.
#[derive(Debug, Clone)]
pub struct WitnessConfig {
    pub name: String,
    pub address: SocketAddr,
    /// Where the nodes send to reach it (default: `address`).
    pub connect: SocketAddr,
    pub control: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Where it saves who holds the Primary right and who is outdated
    /// (`meta`; default: none, kept in memory).
    pub state: Option<PathBuf>,
    /// Where `twinblock witness` serves Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    address: String,
    connect: Option<String>,
    nbd: Option<String>,
    disk: Option<PathBuf>,
    meta: Option<PathBuf>,
    control: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    #[serde(default)]
    witness: bool,
    cloud_instance_id: Option<String>,
    cloud_eni: Option<String>,
    metrics: Option<String>,
}

/// One node of the resource.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    /// Replication endpoint (QUIC over UDP) this node binds.
    pub address: SocketAddr,
    /// Where the peer sends to reach this node (default: `address`); set it
    /// to put a relay such as `twinblock netem` in between.
    pub connect: SocketAddr,
    /// NBD listener.
    pub nbd: SocketAddr,
    pub disk: PathBuf,
    pub meta: PathBuf,
    pub control: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The cloud instance and network interface (address movers); from
    /// IMDSv2 when absent.
    pub cloud_instance_id: Option<String>,
    pub cloud_eni: Option<String>,
    /// Where `up` serves Prometheus metrics (`GET /metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

/// A validated resource file.
#[derive(Debug, Clone)]
pub struct ResourceConfig {
    pub path: PathBuf,
    pub name: String,
    pub protocol: Protocol,
    pub size: u64,
    /// No sign of life from the peer for this long: the peer is lost.
    pub timeout: Duration,
    pub ping_interval: Duration,
    /// A local store operation without a completion for this long fails
    /// the disk (detached, as an I/O error would). None (`"0"`, the
    /// default): wait for ever.
    pub disk_timeout: Option<Duration>,
    /// How long the link's thread looks for work before it sleeps
    /// ([`crate::busy_poll`]); zero: never.
    pub busy_poll: Duration,
    /// First retry delay when connecting (doubles up to 8x).
    pub connect_interval: Duration,
    /// Protocol A: bytes in flight to the peer before writes wait.
    pub max_lag: u64,
    /// Hot 4 MiB extents in the activity log (what a crash resyncs).
    pub al_extents: usize,
    /// Resync bytes per second while the application is writing (the
    /// floor: application I/O gets the rest). Idle: no limit.
    pub resync_rate: u64,
    /// Resync asks the peer for block CRCs first and sends only what differs.
    pub resync_checksum: bool,
    /// How a split brain is resolved without an operator (default: it is not).
    pub split_brain_policy: crate::protocol::genid::SplitBrainPolicy,
    /// NBD clients served at once by `up` (more are refused).
    pub max_connections: usize,
    pub ca: PathBuf,
    /// The two data nodes.
    pub nodes: BTreeMap<String, NodeConfig>,
    pub witness: Option<WitnessConfig>,
    pub controller: Option<ControllerSettings>,
    /// `[adaptive] latency_budget` (protocol adaptive only): a write that
    /// would wait longer for the peer sends the Primary Ahead.
    pub latency_budget: Option<Duration>,
    /// `[adaptive] congestion_fill` (optional): more than this many bytes
    /// of writes sent and not yet acknowledged by the peer send the
    /// Primary Ahead too (DRBD's `congestion-fill`).
    pub congestion_fill: Option<u64>,
}

/// The dotted key (`nodes.b.address`) at a deserialization error's span:
/// a value of the wrong type names its key, a missing key its table
/// (`tables_only`), an unknown key itself. Before (found by helper-113), such errors were the
/// parser's snippet alone, naming neither table nor key. None when the
/// text does not parse (a syntax error: the parser's message says where).
fn key_at(text: &str, at: &std::ops::Range<usize>, tables_only: bool) -> Option<String> {
    use toml::de::{DeTable, DeValue};
    let overlaps = |s: &std::ops::Range<usize>| {
        s.start < at.end.max(at.start + 1) && at.start < s.end.max(s.start + 1)
    };
    // (path, key span, value span, is a table)
    fn walk(
        t: &DeTable,
        prefix: &str,
        out: &mut Vec<(String, std::ops::Range<usize>, std::ops::Range<usize>, bool)>,
    ) {
        for (k, v) in t.iter() {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            let table = matches!(v.get_ref(), DeValue::Table(_));
            out.push((path.clone(), k.span(), v.span(), table));
            if let DeValue::Table(t) = v.get_ref() {
                walk(t, &path, out);
            }
        }
    }
    let doc = DeTable::parse(text).ok()?;
    let mut all = Vec::new();
    walk(doc.get_ref(), "", &mut all);
    // A key or plain value first; then a table's header (the deepest);
    // then the narrowest table around it.
    all.iter()
        .find(|(_, k, v, table)| !tables_only && !table && (overlaps(k) || overlaps(v)))
        .or_else(|| {
            all.iter()
                .filter(|(_, k, _, table)| *table && overlaps(k))
                .max_by_key(|(p, ..)| p.matches('.').count())
        })
        .or_else(|| {
            all.iter()
                .filter(|(_, _, v, table)| *table && overlaps(v))
                .min_by_key(|(_, _, v, _)| v.len())
        })
        .map(|(p, ..)| p.clone())
}

impl ResourceConfig {
    pub fn load(path: &Path) -> Result<ResourceConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|reason| ConfigError::Read { path: path.to_owned(), reason })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<ResourceConfig, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // A key missing from the top level: its span is no key's.
            let missing = || {
                let rest = e.message().strip_prefix("missing field `")?;
                Some(rest.split('`').next()?.to_owned())
            };
            let key = |at: &std::ops::Range<usize>| {
                if missing().is_none() {
                    return key_at(text, at, false);
                }
                // The whole document, or nothing: the top level's.
                let root = at.start == 0 && (at.is_empty() || at.end >= text.trim_end().len());
                if root {
                    missing()
                } else {
                    key_at(text, at, true)
                }
            };
            match e.span().and_then(|at| Some((key(&at)?, at))) {
                // A value of the wrong type, a missing or unknown key:
                // `FILE: KEY: reason (line N)`, as every other bad value.
                Some((key, at)) => ConfigError::Key {
                    path: path.to_owned(),
                    key,
                    reason: format!(
                        "{} (line {})",
                        e.message().trim(),
                        text[..at.start.min(text.len())].matches('\n').count() + 1
                    ),
                },
                None => ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.to_string().trim().replace('\n', " "),
                },
            }
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let key_err = |key: &str, reason: String| ConfigError::Key {
            path: path.to_owned(),
            key: key.to_owned(),
            reason,
        };
        let resolve = |p: &Path| if p.is_absolute() { p.to_owned() } else { base.join(p) };
        // An empty path resolved to the file's own directory, and `up`
        // failed on it naming no key ("/etc/tb/: Is a directory").
        let given = |key: &str, p: Option<&PathBuf>| match p {
            Some(p) if p.as_os_str().to_string_lossy().trim().is_empty() => {
                Err(key_err(key, "empty: give the path of a file".into()))
            }
            _ => Ok(()),
        };
        given("tls.ca", Some(&raw.tls.ca))?;
        if raw.name.is_empty()
            || !raw.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(key_err("name", format!("{:?} is not a valid resource name", raw.name)));
        }
        let protocol = raw.protocol.parse().map_err(|e| key_err("protocol", e))?;
        let size = parse_size(&raw.size).map_err(|e| key_err("size", e))?;
        if size == 0 || size % 4096 != 0 {
            return Err(key_err("size", format!("{size} is not a positive multiple of 4096")));
        }
        if size > MAX_SIZE {
            return Err(key_err(
                "size",
                format!(
                    "{size} bytes is over the largest size, 64T ({MAX_SIZE}): the out-of-sync \
                     bitmap, one bit per 4 KiB, is held in memory (2 GiB at 64T, twice that \
                     during a resync)"
                ),
            ));
        }
        let dur = |key: &str, v: &Option<String>, default: Duration| match v {
            Some(v) => parse_duration(v).map_err(|e| key_err(key, e)),
            None => Ok(default),
        };
        // A key that cannot be zero says so and why: `parse_duration` takes
        // a bare "0" for every key, and before it did, `timeout = "0"` was
        // refused with "give a unit (us, ms, s)" (README walk-through).
        // And a few that run something each time they pass have a floor:
        // far below a millisecond they spin a thread (review, helper-159:
        // `heartbeat = "1ns"` with `dead_time = "4ns"` was taken).
        let at_least = |key: &str, d: Duration, min: Duration, why: &str| {
            if d.is_zero() {
                Err(key_err(key, format!("must be more than zero ({why})")))
            } else if d < min {
                Err(key_err(key, format!("must be at least {min:?} ({why})")))
            } else {
                Ok(d)
            }
        };
        let nonzero = |key: &str, d: Duration, why: &str| at_least(key, d, Duration::ZERO, why);
        let timeout = nonzero(
            "timeout",
            dur("timeout", &raw.timeout, Duration::from_secs(6))?,
            "with none, the peer would be lost as soon as it is found",
        )?;
        let ping_interval = at_least(
            "ping-interval",
            dur("ping-interval", &raw.ping_interval, Duration::from_millis(500))?,
            Duration::from_millis(10),
            "the time between heartbeats",
        )?;
        let connect_interval = nonzero(
            "connect-interval",
            dur("connect-interval", &raw.connect_interval, Duration::from_millis(250))?,
            "at least 10ms: the first reconnect delay, doubled up to 8 times",
        )?;
        // (From zero the backoff never grew: a peer that refused every
        // handshake was dialed in a busy loop.)
        if connect_interval < Duration::from_millis(10) {
            return Err(key_err(
                "connect-interval",
                format!(
                    "{connect_interval:?} is too short (at least 10ms: the first reconnect \
                     delay, doubled up to 8 times)"
                ),
            ));
        }
        if ping_interval >= timeout {
            return Err(key_err("ping-interval", format!("must be below timeout ({timeout:?})")));
        }
        // Zero turns these off, as DRBD's disk-timeout 0.
        let disk_timeout = dur("disk-timeout", &raw.disk_timeout, Duration::ZERO)?;
        if !disk_timeout.is_zero() && disk_timeout < Duration::from_millis(100) {
            return Err(key_err(
                "disk-timeout",
                format!("{disk_timeout:?} is too short (0 turns it off; else at least 100ms)"),
            ));
        }
        let disk_timeout = (!disk_timeout.is_zero()).then_some(disk_timeout);
        let busy_poll = dur("busy-poll", &raw.busy_poll, Duration::from_micros(50))?;
        if busy_poll > crate::busy_poll::MAX_BUDGET {
            return Err(key_err(
                "busy-poll",
                format!("{busy_poll:?} is too long (at most 1ms; 0 turns it off)"),
            ));
        }
        let congestion_fill = match raw.adaptive.as_ref().and_then(|a| a.congestion_fill.as_ref()) {
            None => None,
            Some(v) => {
                let n = parse_size(v).map_err(|e| key_err("adaptive.congestion_fill", e))?;
                if n < 64 << 10 {
                    return Err(key_err(
                        "adaptive.congestion_fill",
                        format!("{v:?} is too small (at least 64K; leave it out to turn it off)"),
                    ));
                }
                Some(n)
            }
        };
        let latency_budget = match (&raw.adaptive, protocol) {
            (None, Protocol::Adaptive) => return Err(key_err(
                "adaptive.latency_budget",
                "required with protocol = \"adaptive\" (e.g. [adaptive] latency_budget = \"3ms\")"
                    .into(),
            )),
            (None, _) => None,
            (Some(_), p) if p != Protocol::Adaptive => {
                return Err(key_err(
                    "adaptive",
                    format!("the [adaptive] table needs protocol = \"adaptive\" (protocol is {p})"),
                ))
            }
            (Some(a), _) => {
                let v = a.latency_budget.as_ref().ok_or_else(|| {
                    key_err(
                        "adaptive.latency_budget",
                        "required with protocol = \"adaptive\" (e.g. \"3ms\")".into(),
                    )
                })?;
                let d = nonzero(
                    "adaptive.latency_budget",
                    parse_duration(v).map_err(|e| key_err("adaptive.latency_budget", e))?,
                    "what replication may add to a write before the Primary goes Ahead",
                )?;
                if d >= timeout {
                    return Err(key_err(
                        "adaptive.latency_budget",
                        format!("{d:?} must be below timeout ({timeout:?})"),
                    ));
                }
                Some(d)
            }
        };
        let max_lag = match &raw.max_lag {
            Some(v) => parse_size(v).map_err(|e| key_err("max-lag", e))?,
            None => 64 << 20,
        };
        if max_lag < 32 << 20 {
            return Err(key_err("max-lag", "must be at least 32M (one maximal write)".into()));
        }
        let al_extents = raw.al_extents.unwrap_or(1237);
        if !(7..=65534).contains(&al_extents) {
            return Err(key_err("al-extents", format!("{al_extents} is outside 7..=65534")));
        }
        let max_connections = raw.max_connections.unwrap_or(64);
        if !(1..=65536).contains(&max_connections) {
            return Err(key_err(
                "max-connections",
                format!("{max_connections} is outside 1..=65536"),
            ));
        }
        let split_brain_policy = match &raw.split_brain_policy {
            Some(p) => p.parse().map_err(|e| key_err("split-brain-policy", e))?,
            None => crate::protocol::genid::SplitBrainPolicy::Disconnect,
        };
        let resync_rate = match &raw.resync_rate {
            Some(v) => parse_size(v).map_err(|e| {
                key_err("resync-rate", format!("{e} (bytes per second, e.g. 100M)"))
            })?,
            None => 100 << 20,
        };
        if resync_rate < 1 << 20 {
            return Err(key_err(
                "resync-rate",
                "below 1M per second a large resync takes days".into(),
            ));
        }
        let data_nodes = raw.nodes.values().filter(|n| !n.witness).count();
        if data_nodes != 2 {
            return Err(key_err(
                "nodes",
                format!("need exactly 2 nodes with a disk (and at most one witness), found {data_nodes}"),
            ));
        }
        if raw.nodes.values().filter(|n| n.witness).count() > 1 {
            return Err(key_err("nodes", "at most one node can be the witness".into()));
        }
        let mut nodes = BTreeMap::new();
        let mut witness = None;
        for (name, n) in raw.nodes {
            let k = |field: &str| format!("nodes.{name}.{field}");
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(key_err(
                    &format!("nodes.{name}"),
                    "node names use a-z, 0-9 and -".into(),
                ));
            }
            for (field, p) in [
                ("control", Some(&n.control)),
                ("cert", Some(&n.cert)),
                ("key", Some(&n.key)),
                ("disk", n.disk.as_ref()),
                ("meta", n.meta.as_ref()),
            ] {
                given(&k(field), p)?;
            }
            // (Port 0 bound an ephemeral port nobody was told of: the peer
            // dialed port 0 for ever, or clients and scrapers found nothing.)
            let addr = |field: &str, v: &str| {
                let a = v
                    .parse::<SocketAddr>()
                    .map_err(|e| key_err(&k(field), format!("{v:?} is not HOST:PORT ({e})")))?;
                if a.port() == 0 {
                    return Err(key_err(
                        &k(field),
                        format!("{v:?} has port 0: give the port it is reached at"),
                    ));
                }
                Ok(a)
            };
            let address = addr("address", &n.address)?;
            let connect = match &n.connect {
                Some(c) => addr("connect", c)?,
                None => address,
            };
            let metrics = n.metrics.as_deref().map(|m| addr("metrics", m)).transpose()?;
            if n.witness {
                for (field, given) in [("nbd", n.nbd.is_some()), ("disk", n.disk.is_some())] {
                    if given {
                        return Err(key_err(
                            &k(field),
                            "a witness keeps no data: remove it".into(),
                        ));
                    }
                }
                witness = Some(WitnessConfig {
                    name: name.clone(),
                    address,
                    connect,
                    control: resolve(&n.control),
                    cert: resolve(&n.cert),
                    key: resolve(&n.key),
                    state: n.meta.as_deref().map(resolve),
                    metrics,
                });
                continue;
            }
            // Found by review (helper-118): an ENI id given as the
            // instance (or the reverse) was found only by the first
            // failover's address move, which then failed.
            for (field, v, prefix, what) in [
                ("cloud_instance_id", &n.cloud_instance_id, "i-", "an instance id"),
                ("cloud_eni", &n.cloud_eni, "eni-", "a network interface id"),
            ] {
                // Blank: not given (IMDS is asked), as the mover takes it.
                if let Some(v) = v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                    let id = v.strip_prefix(prefix).unwrap_or_default();
                    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                        return Err(key_err(
                            &k(field),
                            format!("{v:?} is not {what} ({prefix}...)"),
                        ));
                    }
                }
            }
            let need = |field: &str| key_err(&k(field), "required for a node with a disk".into());
            let node = NodeConfig {
                name: name.clone(),
                address,
                connect,
                nbd: addr("nbd", n.nbd.as_deref().ok_or_else(|| need("nbd"))?)?,
                disk: resolve(n.disk.as_deref().ok_or_else(|| need("disk"))?),
                meta: resolve(n.meta.as_deref().ok_or_else(|| need("meta"))?),
                control: resolve(&n.control),
                cert: resolve(&n.cert),
                key: resolve(&n.key),
                cloud_instance_id: n.cloud_instance_id,
                cloud_eni: n.cloud_eni,
                metrics,
            };
            if node.metrics == Some(node.nbd) {
                // Both are TCP listeners of this node: `up` failed with
                // "cannot listen for metrics ...: Address already in use",
                // naming neither key (review, helper-137).
                return Err(key_err(
                    &k("metrics"),
                    format!("{} is nodes.{name}.nbd too: give metrics a port of its own", node.nbd),
                ));
            }
            if node.meta == node.disk {
                // The metadata would be written over the device's first
                // blocks (or, the disk created first, refused as "not
                // twinblock metadata", which says nothing of the cause).
                return Err(key_err(
                    &k("meta"),
                    format!(
                        "{} is nodes.{name}.disk too: the metadata needs a file of its own",
                        node.meta.display()
                    ),
                ));
            }
            // Nor may the disk be one of the metadata's own files: the
            // bench's scratch area (every bench failed, "in use by another
            // process": the node itself), the activity log, the bitmap (its
            // atomic write would replace the disk file), the identity.
            let siblings = [
                crate::bench::scratch_path(&node.meta),
                crate::al::sibling(&node.meta, "al"),
                crate::al::sibling(&node.meta, "bitmap"),
                crate::disk_id::id_path(&node.meta),
            ];
            if siblings.contains(&node.disk) {
                return Err(key_err(
                    &k("disk"),
                    format!(
                        "{} is a file of nodes.{name}.meta's own ({}.*): the device needs a file \
                         of its own",
                        node.disk.display(),
                        node.meta.display()
                    ),
                ));
            }
            nodes.insert(name, node);
        }
        // Where each node is reached (its `connect`, else its `address`):
        // two nodes reached at one endpoint make a node talk to itself (or
        // to the witness), refused at every connection by its certificate
        // with nothing in the file named. (Two nodes may bind the same
        // `address`, a wildcard such as 0.0.0.0:7788 on each host, when
        // `connect` says where each is reached.)
        let mut reached: BTreeMap<SocketAddr, String> = BTreeMap::new();
        let ends = nodes
            .values()
            .map(|n| (&n.name, n.connect, n.connect != n.address))
            .chain(witness.iter().map(|w| (&w.name, w.connect, w.connect != w.address)));
        for (name, at, explicit) in ends {
            let key = format!("nodes.{name}.{}", if explicit { "connect" } else { "address" });
            if let Some(other) = reached.insert(at, name.clone()) {
                return Err(key_err(
                    &key,
                    format!("{at} is where nodes.{other} is reached too: each node needs its own endpoint"),
                ));
            }
        }
        let controller = match raw.controller {
            None => None,
            Some(c) => {
                let dead_time = nonzero(
                    "controller.dead_time",
                    dur("controller.dead_time", &c.dead_time, Duration::from_secs(10))?,
                    "the peer's silence before the survivor may take over",
                )?;
                // (Zero was reported as a dead_time "must be at least 4
                // heartbeats (0ns each)", naming the wrong key.)
                let heartbeat = at_least(
                    "controller.heartbeat",
                    dur("controller.heartbeat", &c.heartbeat, Duration::from_secs(1))?,
                    Duration::from_millis(10),
                    "the time between the witness's renewals",
                )?;
                if dead_time < heartbeat * 4 {
                    return Err(key_err(
                        "controller.dead_time",
                        format!("{dead_time:?} must be at least 4 heartbeats ({heartbeat:?} each)"),
                    ));
                }
                let rules = crate::core::ControllerConfig {
                    dead_time,
                    heartbeat,
                    on_no_quorum: match c.on_no_quorum.as_deref() {
                        None | Some("io-error") => crate::core::NoQuorum::IoError,
                        Some("freeze") => crate::core::NoQuorum::Freeze,
                        Some(other) => {
                            return Err(key_err(
                                "controller.on_no_quorum",
                                format!("{other:?} is not io-error or freeze"),
                            ))
                        }
                    },
                };
                if ping_interval * 2 > rules.lease() {
                    return Err(key_err(
                        "ping-interval",
                        format!(
                            "{ping_interval:?} is too long for controller.dead_time {dead_time:?}: \
                             a Primary keeps quorum for dead_time/2 per answered heartbeat, so \
                             ping-interval must be at most dead_time/4"
                        ),
                    ));
                }
                if witness.is_none() {
                    return Err(key_err(
                        "controller",
                        "the controller needs a witness (a third node with witness = true): \
                         without one no node can prove the other stopped"
                            .into(),
                    ));
                }
                if let Some(a) = &c.address {
                    if !["aws-eip", "aws-route", "aws-secondary-ip", "command"]
                        .contains(&a.kind.as_str())
                    {
                        return Err(key_err(
                            "controller.address.kind",
                            format!(
                                "{:?} is not aws-eip, aws-route, aws-secondary-ip or command",
                                a.kind
                            ),
                        ));
                    }
                    if let Some((key, owners)) = a.key_of_another_kind() {
                        return Err(key_err(
                            &format!("controller.address.{key}"),
                            format!(
                                "belongs to kind {owners}, not to kind {:?} (remove it, or \
                                 check the kind)",
                                a.kind
                            ),
                        ));
                    }
                    if let Some(d) = &a.deadline {
                        nonzero(
                            "controller.address.deadline",
                            parse_duration(d)
                                .map_err(|e| key_err("controller.address.deadline", e))?,
                            "with none, every move fails before its first call",
                        )?;
                    }
                    if let Some(r) = &a.recheck {
                        parse_duration(r).map_err(|e| key_err("controller.address.recheck", e))?;
                    }
                }
                // (Zero, the health check's command ran in a busy loop, and
                // every hook was killed as it started.)
                let health_interval = at_least(
                    "controller.health_interval",
                    dur("controller.health_interval", &c.health_interval, heartbeat * 2)?,
                    Duration::from_millis(10),
                    "with none, the health check runs in a busy loop",
                )?;
                let hook_timeout = nonzero(
                    "controller.hook_timeout",
                    dur("controller.hook_timeout", &c.hook_timeout, Duration::from_secs(120))?,
                    "with none, every hook is killed as it starts",
                )?;
                Some(ControllerSettings {
                    rules,
                    health: c.health.filter(|h| !h.trim().is_empty()),
                    health_interval,
                    on_promote: c.on_promote,
                    on_demote: c.on_demote,
                    hook_timeout,
                    address: c.address,
                })
            }
        };
        Ok(ResourceConfig {
            path: path.to_owned(),
            name: raw.name,
            protocol,
            size,
            timeout,
            ping_interval,
            disk_timeout,
            busy_poll,
            connect_interval,
            max_lag,
            al_extents,
            split_brain_policy,
            resync_rate,
            resync_checksum: raw.resync_checksum.unwrap_or(false),
            max_connections,
            ca: resolve(&raw.tls.ca),
            nodes,
            witness,
            controller,
            latency_budget,
            congestion_fill,
        })
    }

    /// This node and its peer, or an error naming the unknown node.
    pub fn pair(&self, me: &str) -> Result<(&NodeConfig, &NodeConfig), ConfigError> {
        if self.witness.as_ref().is_some_and(|w| w.name == me) {
            return Err(ConfigError::Key {
                path: self.path.clone(),
                key: format!("nodes.{me}"),
                reason: "this node is the witness: run `twinblock witness`".into(),
            });
        }
        let mine = self.nodes.get(me).ok_or_else(|| ConfigError::Key {
            path: self.path.clone(),
            key: format!("nodes.{me}"),
            reason: format!(
                "no such node (the file has {})",
                self.nodes.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })?;
        let peer = self.nodes.values().find(|n| n.name != me).expect("two nodes");
        Ok((mine, peer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "ldap"
protocol = "C"
size = "1G"
[tls]
ca = "certs/ca.pem"
[nodes.a]
address = "127.0.0.1:7788"
nbd = "127.0.0.1:10809"
disk = "a.img"
meta = "a.meta"
control = "a.sock"
cert = "certs/a.pem"
key = "certs/a.key"
[nodes.b]
address = "127.0.0.1:7789"
nbd = "127.0.0.1:10810"
disk = "/abs/b.img"
meta = "b.meta"
control = "b.sock"
cert = "certs/b.pem"
key = "certs/b.key"
"#;

    fn parse(text: &str) -> Result<ResourceConfig, String> {
        ResourceConfig::parse(Path::new("/etc/tb/ldap.toml"), text).map_err(|e| e.to_string())
    }

    /// Past the largest size the file is refused naming the key, before
    /// anything is made (a start aborted on the bitmap's allocation).
    #[test]
    fn a_size_past_the_largest_is_refused_naming_the_key() {
        let c = parse(&GOOD.replace("size = \"1G\"", "size = \"64T\"")).unwrap();
        assert_eq!(c.size, MAX_SIZE);
        for big in ["\"65537G\"", "70368744181760", "\"1048576T\""] {
            let e = parse(&GOOD.replace("size = \"1G\"", &format!("size = {big}"))).unwrap_err();
            assert!(e.contains("ldap.toml: size: "), "{e}");
            assert!(e.contains("largest size, 64T"), "{e}");
        }
    }

    #[test]
    fn a_size_may_be_a_plain_number_of_bytes() {
        let c =
            parse(&GOOD.replace("size = \"1G\"", "size = 1073741824\nmax-lag = 67108864")).unwrap();
        assert_eq!(c.size, 1 << 30);
        assert_eq!(c.max_lag, 64 << 20);
        let e = parse(&GOOD.replace("size = \"1G\"", "size = -1")).unwrap_err();
        assert!(e.contains("ldap.toml: size: "), "{e}");
        assert!(e.contains("-1"), "{e}");
        let e = parse(&GOOD.replace("size = \"1G\"", "size = true")).unwrap_err();
        assert!(e.contains("ldap.toml: size: invalid type: boolean `true`"), "{e}");
        assert!(e.contains("a size"), "{e}");
    }

    /// Port 0 anywhere a node is reached is refused naming the key: it
    /// bound an ephemeral port nobody was told of (a peer that dialed
    /// port 0 for ever, an export no client found). Review, helper-137.
    #[test]
    fn port_zero_is_refused_naming_the_key() {
        for (from, to, key) in [
            ("127.0.0.1:7788", "127.0.0.1:0", "nodes.a.address"),
            ("127.0.0.1:10810", "[::1]:0", "nodes.b.nbd"),
            ("[nodes.a]\n", "[nodes.a]\nconnect = \"10.0.0.1:0\"\n", "nodes.a.connect"),
            ("[nodes.b]\n", "[nodes.b]\nmetrics = \"127.0.0.1:0\"\n", "nodes.b.metrics"),
        ] {
            let e = parse(&GOOD.replacen(from, to, 1)).unwrap_err();
            assert!(e.contains(&format!("ldap.toml: {key}: ")), "{key}: {e}");
            assert!(e.contains("has port 0: give the port it is reached at"), "{e}");
        }
        let e = parse(
            &with_address("kind = \"command\"\ncommand = \"true\"\n")
                .replace("127.0.0.1:7790", "127.0.0.1:0"),
        )
        .unwrap_err();
        assert!(e.contains("nodes.w.address") && e.contains("port 0"), "{e}");
        // A wildcard host is fine, with its port.
        parse(
            &GOOD
                .replace("127.0.0.1:7788", "0.0.0.0:7788")
                .replace("[nodes.a]\n", "[nodes.a]\nconnect = \"127.0.0.1:7788\"\n"),
        )
        .unwrap();
    }

    #[test]
    fn good_file() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.protocol, Protocol::C);
        assert_eq!(c.size, 1 << 30);
        assert_eq!(c.ca, Path::new("/etc/tb/certs/ca.pem"));
        let (a, b) = c.pair("a").unwrap();
        assert_eq!(a.disk, Path::new("/etc/tb/a.img"));
        assert_eq!(b.disk, Path::new("/abs/b.img"));
        assert_eq!(c.timeout, Duration::from_secs(6));
        assert_eq!(c.disk_timeout, None, "disk-timeout is off by default");
    }

    /// `GOOD` with a witness and a controller whose `[controller.address]`
    /// table is `table`.
    fn with_address(table: &str) -> String {
        format!(
            "{GOOD}[nodes.w]\nwitness = true\naddress = \"127.0.0.1:7790\"\n\
             control = \"w.sock\"\ncert = \"certs/w.pem\"\nkey = \"certs/w.key\"\n\
             [controller]\n[controller.address]\n{table}"
        )
    }

    /// A node's `cloud_instance_id` and `cloud_eni` are checked at load:
    /// swapped or mistyped, they failed the first failover's address move
    /// (review, helper-118).
    #[test]
    fn cloud_ids_are_checked_at_load() {
        let with = |line: &str| GOOD.replace("[nodes.b]\n", &format!("[nodes.b]\n{line}\n"));
        let c =
            parse(&with("cloud_instance_id = \"i-0abc123\"\ncloud_eni = \"eni-0def456\"")).unwrap();
        assert_eq!(c.nodes["b"].cloud_eni.as_deref(), Some("eni-0def456"));
        let e = parse(&with("cloud_instance_id = \"eni-0def456\"")).unwrap_err();
        assert!(
            e.contains("nodes.b.cloud_instance_id") && e.contains("is not an instance id (i-...)"),
            "{e}"
        );
        let e = parse(&with("cloud_eni = \"i-0abc123\"")).unwrap_err();
        assert!(e.contains("nodes.b.cloud_eni") && e.contains("(eni-...)"), "{e}");
        assert!(parse(&with("cloud_instance_id = \" \"")).is_ok(), "blank: not given");
        for bad in ["\"i-\"", "\"i-0a/bc\"", "\"0abc\""] {
            let e = parse(&with(&format!("cloud_instance_id = {bad}"))).unwrap_err();
            assert!(e.contains("nodes.b.cloud_instance_id"), "{bad}: {e}");
        }
    }

    /// `[controller.address]`'s durations are checked at load, naming the
    /// key; a zero deadline (every move failing before its first call) is
    /// refused (review, helper-103).
    #[test]
    fn address_deadline_and_recheck_are_checked_at_load() {
        let with =
            |extra: &str| with_address(&format!("kind = \"command\"\ncommand = \"true\"\n{extra}"));
        let c = parse(&with("deadline = \"5s\"\nrecheck = \"10s\"\n")).unwrap();
        let a = c.controller.unwrap().address.unwrap();
        assert_eq!(a.recheck.as_deref(), Some("10s"));
        let e = parse(&with("deadline = \"0s\"\n")).unwrap_err();
        assert!(e.contains("controller.address.deadline: must be more than zero"), "{e}");
        let e = parse(&with("recheck = \"often\"\n")).unwrap_err();
        assert!(e.contains("controller.address.recheck") && e.contains("often"), "{e}");
    }

    /// A key of another kind (`cidr` with `kind = "aws-eip"`) is refused
    /// at load, naming the key and the kind it belongs to: it was ignored,
    /// and a typo'd kind or a half-edited table went unnoticed (review,
    /// helper-103).
    #[test]
    fn address_keys_of_another_kind_are_refused_at_load() {
        let with = |kind: &str, extra: &str| with_address(&format!("kind = \"{kind}\"\n{extra}"));
        let eip = "allocation_id = \"eipalloc-1\"\nregion = \"eu-west-1\"\n";
        assert!(parse(&with("aws-eip", eip)).is_ok());
        let e = parse(&with("aws-eip", &format!("{eip}cidr = \"10.9.9.9/32\"\n"))).unwrap_err();
        assert!(
            e.contains("controller.address.cidr")
                && e.contains("aws-route")
                && e.contains("aws-eip"),
            "{e}"
        );
        let e =
            parse(&with("aws-eip", &format!("{eip}route_table_ids = [\"rtb-1\"]\n"))).unwrap_err();
        assert!(e.contains("controller.address.route_table_ids"), "{e}");
        let cmd = "command = \"true\"\n";
        assert!(parse(&with("command", cmd)).is_ok());
        let e = parse(&with("command", &format!("{cmd}region = \"eu-west-1\"\n"))).unwrap_err();
        assert!(e.contains("controller.address.region") && e.contains("\"command\""), "{e}");
        let e = parse(&with("command", &format!("{cmd}imds_endpoint = \"http://1.2.3.4\"\n")))
            .unwrap_err();
        assert!(e.contains("controller.address.imds_endpoint"), "{e}");
        let e = parse(&with("aws-route", "command = \"x\"\nregion = \"r\"\n")).unwrap_err();
        assert!(e.contains("controller.address.command") && e.contains("aws-route"), "{e}");
    }

    /// Checked by review (helper-106): every `[controller.address]` table
    /// the README and docs/movers.md show still loads, every optional key
    /// set (`endpoint`, `imds_endpoint`, `deadline`, `recheck` with the AWS
    /// kinds; `deadline`, `recheck` with `command`).
    #[test]
    fn the_documented_address_tables_load() {
        let with = with_address;
        let optional = "endpoint = \"http://127.0.0.1:5000\"\n\
                        imds_endpoint = \"http://169.254.169.254\"\n\
                        deadline = \"60s\"\nrecheck = \"30s\"\n";
        for table in [
            "kind = \"aws-eip\"\nallocation_id = \"eipalloc-0123456789abcdef0\"\n\
             region = \"eu-west-1\"\n",
            "kind = \"aws-route\"\nroute_table_ids = [\"rtb-0aaa\", \"rtb-0bbb\"]\n\
             cidr = \"10.9.9.9/32\"\nregion = \"eu-west-1\"\n",
            "kind = \"aws-secondary-ip\"\nprivate_ip = \"10.0.1.50\"\nregion = \"eu-west-1\"\n",
        ] {
            assert!(parse(&with(table)).is_ok(), "{table}");
            let all = format!("{table}{optional}");
            assert!(parse(&with(&all)).is_ok(), "{all}");
        }
        let cmd = "kind = \"command\"\ncommand = \"/usr/local/bin/move-ip\"\n";
        assert!(parse(&with(cmd)).is_ok());
        let cmd_all = format!("{cmd}deadline = \"60s\"\nrecheck = \"30s\"\n");
        assert!(parse(&with(&cmd_all)).is_ok());
    }

    /// An empty path (`cert = ""`) names its key. Before (review,
    /// helper-137), it resolved to the file's directory and `up` failed
    /// with "/etc/tb/: I/O error: Is a directory", naming no key (the disk
    /// and metadata: "cannot open /etc/tb/").
    #[test]
    fn an_empty_path_names_its_key() {
        for (line, key) in [
            ("ca = \"certs/ca.pem\"", "tls.ca"),
            ("cert = \"certs/a.pem\"", "nodes.a.cert"),
            ("key = \"certs/b.key\"", "nodes.b.key"),
            ("disk = \"a.img\"", "nodes.a.disk"),
            ("meta = \"b.meta\"", "nodes.b.meta"),
            ("control = \"a.sock\"", "nodes.a.control"),
        ] {
            let (name, _) = line.split_once(" = ").unwrap();
            for empty in ["\"\"", "\" \""] {
                let e = parse(&GOOD.replace(line, &format!("{name} = {empty}"))).unwrap_err();
                assert!(e.contains(&format!("ldap.toml: {key}: ")), "{key}: {e}");
                assert!(e.contains("empty"), "{key}: {e}");
            }
        }
    }

    /// A `connect-interval` under 10ms is refused naming the key. Before
    /// (review, helper-137), "0s" was taken: the backoff doubled from zero
    /// and a node dialed a peer that refused its handshake in a busy loop
    /// (18% of a core on each node, measured).
    #[test]
    fn a_connect_interval_under_10ms_names_the_key() {
        let with = |v: &str| GOOD.replace("[tls]", &format!("connect-interval = \"{v}\"\n[tls]"));
        assert_eq!(parse(&with("10ms")).unwrap().connect_interval, Duration::from_millis(10));
        for v in ["0s", "0ms", "1ns", "9ms"] {
            let e = parse(&with(v)).unwrap_err();
            assert!(e.contains("ldap.toml: connect-interval: "), "{v}: {e}");
            assert!(e.contains("at least 10ms"), "{v}: {e}");
        }
    }

    /// Intervals far below a millisecond are refused, naming the key and
    /// the floor (review, helper-159: `heartbeat = "1ns"` with
    /// `dead_time = "4ns"`, and `ping-interval = "1ns"`, were taken: busy
    /// loops).
    #[test]
    fn intervals_below_their_floor_name_the_key() {
        let ping = |v: &str| GOOD.replace("[tls]", &format!("ping-interval = \"{v}\"\n[tls]"));
        assert_eq!(parse(&ping("10ms")).unwrap().ping_interval, Duration::from_millis(10));
        let e = parse(&ping("1ns")).unwrap_err();
        assert!(e.contains("ldap.toml: ping-interval: ") && e.contains("at least 10ms"), "{e}");
        let with = |line: &str| {
            format!(
                "{GOOD}[nodes.w]\nwitness = true\naddress = \"127.0.0.1:7790\"\n\
                 control = \"w.sock\"\ncert = \"certs/w.pem\"\nkey = \"certs/w.key\"\n\
                 [controller]\nhealth = \"true\"\n{line}\n"
            )
        };
        for (line, key) in [
            ("heartbeat = \"1ns\"\ndead_time = \"4ns\"", "controller.heartbeat"),
            ("health_interval = \"1us\"", "controller.health_interval"),
        ] {
            let e = parse(&with(line)).unwrap_err();
            assert!(e.contains(&format!("ldap.toml: {key}: ")), "{line}: {e}");
            assert!(e.contains("at least 10ms"), "{line}: {e}");
        }
        let c = parse(&with("heartbeat = \"10ms\"\nhealth_interval = \"10ms\"")).unwrap();
        assert_eq!(c.controller.unwrap().health_interval, Duration::from_millis(10));
    }

    /// A zero `controller.health_interval` or `controller.hook_timeout` is
    /// refused naming the key. Before (review, helper-137), both were
    /// taken: the health check's command ran in a busy loop (a shell
    /// forked without pause), and every hook was killed as it started.
    #[test]
    fn a_zero_health_interval_or_hook_timeout_names_the_key() {
        let with = |line: &str| {
            format!(
                "{GOOD}[nodes.w]\nwitness = true\naddress = \"127.0.0.1:7790\"\n\
                 control = \"w.sock\"\ncert = \"certs/w.pem\"\nkey = \"certs/w.key\"\n\
                 [controller]\nhealth = \"true\"\n{line}\n"
            )
        };
        let c = parse(&with("health_interval = \"500ms\"")).unwrap();
        assert_eq!(c.controller.unwrap().health_interval, Duration::from_millis(500));
        for (line, key) in [
            ("health_interval = \"0s\"", "controller.health_interval"),
            ("hook_timeout = \"0s\"", "controller.hook_timeout"),
        ] {
            let e = parse(&with(line)).unwrap_err();
            assert!(e.contains(&format!("ldap.toml: {key}: ")), "{line}: {e}");
            assert!(e.contains("must be more than zero"), "{line}: {e}");
        }
    }

    /// Every duration key with a bare `"0"`: where zero means off it is
    /// taken as zero; elsewhere refused naming the key and saying it must be
    /// more than zero (README walk-through: `timeout = "0"` was refused
    /// with "give a unit (us, ms, s)", and `busy-poll = "0"` only worked
    /// through a special case).
    #[test]
    fn a_bare_zero_is_zero_or_refused_naming_the_key() {
        let top = |line: &str| GOOD.replace("[tls]", &format!("{line}\n[tls]"));
        let c = parse(&top("busy-poll = \"0\"\ndisk-timeout = \"0\"")).unwrap();
        assert_eq!(c.busy_poll, Duration::ZERO);
        assert_eq!(c.disk_timeout, None);
        let c = parse(&with_address("kind = \"command\"\ncommand = \"true\"\nrecheck = \"0\"\n"))
            .unwrap();
        assert_eq!(c.controller.unwrap().address.unwrap().recheck.as_deref(), Some("0"));
        let controller = |line: &str| {
            format!(
                "{GOOD}[nodes.w]\nwitness = true\naddress = \"127.0.0.1:7790\"\n\
                 control = \"w.sock\"\ncert = \"certs/w.pem\"\nkey = \"certs/w.key\"\n\
                 [controller]\n{line}\n"
            )
        };
        let adaptive = |line: &str| {
            GOOD.replace("protocol = \"C\"", "protocol = \"adaptive\"")
                .replace("[tls]", &format!("[adaptive]\n{line}\n[tls]"))
        };
        for (text, key) in [
            (top("timeout = \"0\""), "timeout"),
            (top("ping-interval = \"0\""), "ping-interval"),
            (top("connect-interval = \"0\""), "connect-interval"),
            (adaptive("latency_budget = \"0\""), "adaptive.latency_budget"),
            (controller("dead_time = \"0\""), "controller.dead_time"),
            (controller("heartbeat = \"0\""), "controller.heartbeat"),
            (controller("health_interval = \"0\""), "controller.health_interval"),
            (controller("hook_timeout = \"0\""), "controller.hook_timeout"),
            (
                with_address("kind = \"command\"\ncommand = \"true\"\ndeadline = \"0\"\n"),
                "controller.address.deadline",
            ),
        ] {
            let e = parse(&text).unwrap_err();
            assert!(
                e.contains(&format!("ldap.toml: {key}: must be more than zero (")),
                "{key}: {e}"
            );
            assert!(!e.contains("give a unit"), "{key}: {e}");
        }
        // Any other number still needs its unit.
        let e = parse(&top("timeout = \"5\"")).unwrap_err();
        assert!(e.contains("timeout: \"5\": give a unit"), "{e}");
    }

    /// A zero `timeout` names `timeout` (it named `ping-interval`, found
    /// by review).
    #[test]
    fn a_zero_timeout_names_timeout() {
        let e = parse(&GOOD.replace("[tls]", "timeout = \"0s\"\n[tls]")).unwrap_err();
        assert!(e.contains(": timeout: must be more than zero"), "{e}");
        let e = parse(&GOOD.replace("[tls]", "ping-interval = \"7s\"\n[tls]")).unwrap_err();
        assert!(e.contains("ping-interval") && e.contains("below timeout (6s)"), "{e}");
    }

    #[test]
    fn disk_timeout_is_off_at_zero_and_at_least_100ms_otherwise() {
        let with = |v: &str| GOOD.replace("[tls]", &format!("disk-timeout = \"{v}\"\n[tls]"));
        assert_eq!(parse(&with("5s")).unwrap().disk_timeout, Some(Duration::from_secs(5)));
        assert_eq!(parse(&with("0")).unwrap().disk_timeout, None);
        let e = parse(&with("10ms")).unwrap_err();
        assert!(e.contains("disk-timeout") && e.contains("too short"), "{e}");
        let e = parse(&with("soon")).unwrap_err();
        assert!(e.contains("disk-timeout") && e.contains("soon"), "{e}");
    }

    #[test]
    fn busy_poll_is_50us_by_default_off_at_zero_and_at_most_1ms() {
        let with = |v: &str| GOOD.replace("[tls]", &format!("busy-poll = \"{v}\"\n[tls]"));
        assert_eq!(parse(GOOD).unwrap().busy_poll, Duration::from_micros(50));
        assert_eq!(parse(&with("200us")).unwrap().busy_poll, Duration::from_micros(200));
        assert_eq!(parse(&with("0")).unwrap().busy_poll, Duration::ZERO);
        let e = parse(&with("5ms")).unwrap_err();
        assert!(e.contains("busy-poll") && e.contains("too long"), "{e}");
        let e = parse(&with("a while")).unwrap_err();
        assert!(e.contains("busy-poll") && e.contains("a while"), "{e}");
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(&GOOD.replace("protocol = \"C\"", "protocol = \"D\"")).unwrap_err();
        assert!(e.contains("protocol") && e.contains("\"D\""), "{e}");
        let e = parse(&GOOD.replace("size = \"1G\"", "size = \"1Q\"")).unwrap_err();
        assert!(e.contains("size"), "{e}");
        let e = parse(&GOOD.replace("127.0.0.1:7789", "nowhere")).unwrap_err();
        assert!(e.contains("nodes.b.address") && e.contains("nowhere"), "{e}");
        let e = parse(&GOOD.replace("name = \"ldap\"", "name = \"ldap\"\ncolour = \"red\""))
            .unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse(&GOOD.replace("timeout", "x").replace("[tls]", "timeout = \"soon\"\n[tls]"))
            .unwrap_err();
        assert!(e.contains("timeout") && e.contains("soon"), "{e}");
        let e = parse(&GOOD.replace("[nodes.b]", "[nodes.c]\naddress = \"1.2.3.4:1\"\n[nodes.b]"))
            .unwrap_err();
        assert!(e.contains("nodes"), "{e}");
        let e = parse(&GOOD.replace("size = \"1G\"", "size = \"1G\"\nresync-rate = \"10K\""))
            .unwrap_err();
        assert!(e.contains("resync-rate"), "{e}");
        let e = parse(
            &GOOD.replace("size = \"1G\"", "size = \"1G\"\nsplit-brain-policy = \"coin-flip\""),
        )
        .unwrap_err();
        assert!(e.contains("split-brain-policy") && e.contains("coin-flip"), "{e}");
        let e = parse(
            &GOOD.replace("key = \"certs/b.key\"", "key = \"certs/b.key\"\nmetrics = \"9942\""),
        )
        .unwrap_err();
        assert!(e.contains("nodes.b.metrics") && e.contains("HOST:PORT"), "{e}");
        let c = parse(&GOOD.replace(
            "key = \"certs/b.key\"",
            "key = \"certs/b.key\"\nmetrics = \"127.0.0.1:9942\"",
        ))
        .unwrap();
        assert_eq!(c.nodes["b"].metrics, Some("127.0.0.1:9942".parse().unwrap()));
        // The node's own NBD address: refused, naming the key.
        let e = parse(&GOOD.replace(
            "key = \"certs/b.key\"",
            "key = \"certs/b.key\"\nmetrics = \"127.0.0.1:10810\"",
        ))
        .unwrap_err();
        assert!(e.contains("nodes.b.metrics") && e.contains("nodes.b.nbd too"), "{e}");
        assert_eq!(c.nodes["a"].metrics, None);
        let c = parse(GOOD).unwrap();
        let e = c.pair("z").unwrap_err().to_string();
        assert!(e.contains("nodes.z") && e.contains("a, b"), "{e}");
        let adaptive = GOOD.replace("protocol = \"C\"", "protocol = \"adaptive\"");
        let e = parse(&adaptive).unwrap_err();
        assert!(e.contains("adaptive.latency_budget") && e.contains("required"), "{e}");
        let e = parse(&adaptive.replace("[tls]", "[adaptive]\nlatency_budget = \"soon\"\n[tls]"))
            .unwrap_err();
        assert!(e.contains("adaptive.latency_budget") && e.contains("soon"), "{e}");
        let e = parse(&adaptive.replace("[tls]", "[adaptive]\nlatency_budget = \"10s\"\n[tls]"))
            .unwrap_err();
        assert!(e.contains("adaptive.latency_budget") && e.contains("timeout"), "{e}");
        let e =
            parse(&adaptive.replace("[tls]", "[adaptive]\nbudget = \"3ms\"\n[tls]")).unwrap_err();
        assert!(e.contains("budget"), "{e}");
        let e = parse(&GOOD.replace("[tls]", "[adaptive]\nlatency_budget = \"3ms\"\n[tls]"))
            .unwrap_err();
        assert!(e.contains("adaptive") && e.contains("protocol"), "{e}");
        let c = parse(&adaptive.replace("[tls]", "[adaptive]\nlatency_budget = \"3ms\"\n[tls]"))
            .unwrap();
        assert_eq!(c.protocol, Protocol::Adaptive);
        assert_eq!(c.protocol.to_string(), "adaptive");
        assert_eq!(c.latency_budget, Some(Duration::from_millis(3)));
        assert_eq!(c.congestion_fill, None);
        let fill = |v: &str| {
            parse(
                &adaptive
                    .replace("[tls]", &format!("[adaptive]\nlatency_budget = \"3ms\"\n{v}\n[tls]")),
            )
        };
        assert_eq!(fill("congestion_fill = \"8M\"").unwrap().congestion_fill, Some(8 << 20));
        // DRBD's spelling too.
        assert_eq!(fill("congestion-fill = \"64K\"").unwrap().congestion_fill, Some(64 << 10));
        let e = fill("congestion_fill = \"4K\"").unwrap_err();
        assert!(e.contains("adaptive.congestion_fill") && e.contains("too small"), "{e}");
        let e = fill("congestion_fill = \"lots\"").unwrap_err();
        assert!(e.contains("adaptive.congestion_fill"), "{e}");
    }

    /// A copied node section left with the first node's endpoint, or a
    /// node's metadata on its disk file: refused naming the key (before,
    /// the node started and was refused by its own certificate at every
    /// connection, or its start failed on "not twinblock metadata").
    #[test]
    fn endpoints_and_a_nodes_files_may_not_coincide() {
        let e = parse(&GOOD.replace("127.0.0.1:7789", "127.0.0.1:7788")).unwrap_err();
        assert!(e.contains("nodes.b.address") && e.contains("nodes.a is reached too"), "{e}");
        let e = parse(&GOOD.replace("meta = \"b.meta\"", "meta = \"/abs/b.img\"")).unwrap_err();
        assert!(e.contains("nodes.b.meta") && e.contains("nodes.b.disk too"), "{e}");
        // Both binding a wildcard, each reached by its own `connect`: fine.
        let wild = GOOD
            .replace(
                "address = \"127.0.0.1:7788\"",
                "address = \"0.0.0.0:7788\"\nconnect = \"10.0.1.10:7788\"",
            )
            .replace(
                "address = \"127.0.0.1:7789\"",
                "address = \"0.0.0.0:7788\"\nconnect = \"10.0.2.10:7788\"",
            );
        parse(&wild).unwrap();
        let e = parse(&wild.replace("10.0.2.10", "10.0.1.10")).unwrap_err();
        assert!(e.contains("nodes.b.connect") && e.contains("nodes.a is reached too"), "{e}");
        // The same disk path on both nodes is the usual file (two hosts).
        parse(&GOOD.replace("/abs/b.img", "a.img")).unwrap();
    }

    /// A disk that is one of its metadata's files (the bench's scratch
    /// area `META.bench`, the activity log, the bitmap, the disk's
    /// identity) is refused naming the key. Before, `disk = "b.meta.bench"`
    /// was taken: every bench failed on b with "in use by another process"
    /// (the node itself), and a disk at `META.bitmap` would be replaced by
    /// the bitmap's next atomic write (found by review).
    #[test]
    fn a_disk_may_not_be_one_of_its_metadatas_files() {
        for ext in ["bench", "al", "bitmap", "disk"] {
            let cfg = GOOD.replace("disk = \"/abs/b.img\"", &format!("disk = \"b.meta.{ext}\""));
            let e = parse(&cfg).unwrap_err();
            assert!(
                e.contains("nodes.b.disk") && e.contains(&format!("b.meta.{ext}")),
                "{ext}: {e}"
            );
        }
    }
}
