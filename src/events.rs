//! State-change events, in the spirit of `drbdsetup events2`.
//!
//! Inside `twinblock up`, [`Hub::start`] watches the node: it takes a
//! [`Status`] snapshot after every change the node signals (and every
//! 100 ms regardless), compares it with the previous one, and turns each
//! difference into an [`Event`]: logged (one info line per change, with
//! resource and node), counted in the metrics, and broadcast to every
//! `twinblock events` client subscribed through the control socket.
//!
//! The CLI side, [`follow`], prints them as human lines or JSON lines.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, watch};
use twinblock_replicator::node::StateKey;
use twinblock_replicator::status::Status;
use twinblock_replicator::Node;

use crate::control::{CallError, Request};
use crate::metrics::Metrics;

/// How often the node is looked at when it signals nothing.
const POLL: Duration = Duration::from_millis(100);
/// Sync progress is reported at most this often...
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// ...and only when it moved by at least this many percentage points.
const PROGRESS_STEP: f64 = 1.0;

/// One line of `twinblock events --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// UTC, RFC 3339 with milliseconds.
    pub time: String,
    /// `exists` (the state at subscription, `--now`) or `change`.
    #[serde(rename = "type")]
    pub kind: String,
    pub resource: String,
    pub node: String,
    /// What changed: `role`, `disk`, `connection`, `replication`,
    /// `peer-role`, `peer-disk`, `split-brain`, `sync`, `mode`,
    /// `controller`, `quorum`, `witness`, `superseded` (a node demoted
    /// without quorum whose reads fail until it meets its peer: `yes`,
    /// `no`), `address` (a service address
    /// move: `moved`, `in-place`, `checked`, `failed`, `withdrawn`).
    pub object: String,
    /// The value before (absent for `exists`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<String>,
    /// The value now. For `sync`: `started`, `progress`, `finished` or
    /// `interrupted` (the session ended under it).
    pub new: String,
    /// For `sync`: where it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncInfo>,
    /// For `address`: what moved, or why not (`promote: ...`,
    /// `recheck: ...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The outcome of one service address move (`[controller.address]`), sent
/// by the controller to the events hub: an `address` event (every one of
/// a promotion; of a re-check, only a move back or a failure, not the
/// usual "in place") and `twinblock_address_moves_total{op,result}`.
/// Before, a failed or withdrawn move was only `last_error` in `status`,
/// a failed re-check only a warning in the log (found by review,
/// helper-103).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressOutcome {
    /// `promote` (the move after a promotion) or `recheck`.
    pub op: &'static str,
    /// `moved`, `in-place`, `checked` (a re-check by a `command` that
    /// did not say whether it moved the address, the last move having
    /// succeeded), `failed` or `withdrawn` (the node was to demote
    /// meanwhile).
    pub result: &'static str,
    /// The mover's report, or the error.
    pub detail: String,
}

impl AddressOutcome {
    /// Whether `twinblock events` shows it.
    pub(crate) fn is_event(&self) -> bool {
        self.op != "recheck" || !matches!(self.result, "in-place" | "checked")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncInfo {
    /// The replication state: SyncSource, SyncTarget, PausedSync,
    /// VerifySource or VerifyTarget.
    pub direction: String,
    /// Done so far (known on the source and the verifying side).
    #[serde(default)]
    pub percent: Option<f64>,
    /// What this resync or verify covers (where known).
    #[serde(default)]
    pub bytes_total: Option<u64>,
    #[serde(default)]
    pub eta_s: Option<f64>,
    /// Bytes out of sync on this node now.
    pub out_of_sync_bytes: u64,
    /// `finished` on the SyncSource: bytes the resync sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moved_bytes: Option<u64>,
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-29T18:04:05.123Z`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn debug<T: std::fmt::Debug>(v: &T) -> String {
    format!("{v:?}")
}

fn opt<T: std::fmt::Debug>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "Unknown".to_string(), debug)
}

/// The mode in force: the configured protocol, `Ahead` while running ahead.
fn mode(st: &Status) -> String {
    if st.replication == "Ahead" {
        "Ahead".to_string()
    } else {
        st.protocol.clone()
    }
}

/// The plain (string-valued) parts of a snapshot, in reporting order.
fn plain(st: &Status) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("role", debug(&st.role)),
        ("disk", debug(&st.disk)),
        ("connection", st.connection.clone()),
        ("replication", st.replication.clone()),
        ("peer-role", opt(&st.peer.role)),
        ("peer-disk", opt(&st.peer.disk)),
        ("split-brain", if st.split_brain { "yes" } else { "no" }.to_string()),
        ("mode", mode(st)),
    ];
    if let Some(c) = &st.controller {
        v.push(("controller", c.state.clone()));
        v.push(("quorum", if c.quorum { "yes" } else { "no" }.to_string()));
        v.push(("witness", if c.witness_connected { "connected" } else { "lost" }.to_string()));
        v.push(("superseded", if c.superseded { "yes" } else { "no" }.to_string()));
    }
    v
}

/// The resync or verify under way, if any (its replication state).
fn syncing(st: &Status) -> Option<&str> {
    let r = st.replication.as_str();
    matches!(r, "SyncSource" | "SyncTarget" | "PausedSync" | "VerifySource" | "VerifyTarget")
        .then_some(r)
}

/// A verify between two Secondaries that found differences ends its own
/// session once it has finished, to resync them (the core's
/// `online verify marked ... reconnecting` reason): finished, not cut short.
fn verify_reconnects(st: &Status) -> bool {
    st.last_error.as_deref().is_some_and(|e| e.starts_with("online verify marked"))
}

fn sync_info(st: &Status, direction: &str) -> SyncInfo {
    SyncInfo {
        direction: direction.to_string(),
        percent: st.sync.as_ref().map(|s| (s.percent * 10.0).round() / 10.0),
        bytes_total: st.sync.as_ref().map(|s| s.bytes_total),
        eta_s: st.sync.as_ref().and_then(|s| s.eta_s).map(f64::round),
        out_of_sync_bytes: st.out_of_sync_bytes,
        moved_bytes: None,
    }
}

/// Turns successive snapshots into events.
#[derive(Default)]
pub struct Tracker {
    prev: Option<Status>,
    /// When and at what percentage the last sync event was made.
    last_progress: Option<(Instant, f64)>,
    /// `counters.resync_bytes` when the running resync started.
    resync_base: u64,
}

impl Tracker {
    fn event(st: &Status, kind: &str, object: &str, old: Option<String>, new: String) -> Event {
        Event {
            time: timestamp(SystemTime::now()),
            kind: kind.into(),
            resource: st.resource.clone(),
            node: st.node.clone(),
            object: object.into(),
            old,
            new,
            sync: None,
            detail: None,
        }
    }

    /// The current state as `exists` events (what `--now` prints first).
    pub fn exists(st: &Status) -> Vec<Event> {
        let mut out: Vec<Event> =
            plain(st).into_iter().map(|(o, v)| Self::event(st, "exists", o, None, v)).collect();
        if let Some(dir) = syncing(st) {
            let mut e = Self::event(st, "exists", "sync", None, "progress".into());
            e.sync = Some(sync_info(st, dir));
            out.push(e);
        }
        out
    }

    /// A state the node passed through since the last snapshot (it may be
    /// gone already, `latest` being the snapshot after it): the last
    /// snapshot with these states and the latest counters.
    pub fn passed(&mut self, key: &StateKey, latest: &Status, now: Instant) -> Vec<Event> {
        let Some(prev) = &self.prev else { return Vec::new() };
        let mut st = prev.clone();
        st.counters = latest.counters.clone();
        st.out_of_sync_bytes = latest.out_of_sync_bytes;
        st.role = key.role;
        st.disk = key.disk;
        st.connection = key.connection_name();
        st.replication = key.replication.to_string();
        if st.replication == "Off" {
            st.peer.role = None;
            st.peer.disk = None;
        }
        if syncing(&st).is_none() {
            st.sync = None;
        } else if syncing(&st) == syncing(latest) {
            st.sync = latest.sync.clone();
        }
        self.diff(&st, now)
    }

    /// What changed since the last snapshot (nothing for the first one).
    pub fn diff(&mut self, st: &Status, now: Instant) -> Vec<Event> {
        let Some(prev) = self.prev.replace(st.clone()) else {
            self.resync_base = st.counters.resync_bytes;
            return Vec::new();
        };
        let mut out = Vec::new();
        for ((object, old), (_, new)) in plain(&prev).into_iter().zip(plain(st)) {
            if old != new {
                out.push(Self::event(st, "change", object, Some(old), new));
            }
        }
        // The controller appeared (it never goes away while `up` runs).
        if prev.controller.is_none() && st.controller.is_some() {
            for (object, new) in plain(st).into_iter().skip(plain(&prev).len()) {
                out.push(Self::event(st, "change", object, None, new));
            }
        }
        let mut sync_event = |what: &str, info: SyncInfo| {
            let mut e = Self::event(st, "change", "sync", None, what.into());
            e.sync = Some(info);
            out.push(e);
        };
        let finished = |base: u64| {
            let dir = syncing(&prev).unwrap_or_default();
            let mut info = sync_info(st, dir);
            // Only the source counts what resync moves.
            info.moved_bytes =
                (dir == "SyncSource").then(|| st.counters.resync_bytes.saturating_sub(base));
            info.percent = (st.out_of_sync_bytes == 0).then_some(100.0);
            info.bytes_total = None;
            info.eta_s = None;
            info
        };
        match (syncing(&prev), syncing(st)) {
            (None, Some(dir)) => {
                self.resync_base = prev.counters.resync_bytes;
                self.last_progress = Some((now, st.sync.as_ref().map_or(0.0, |s| s.percent)));
                sync_event("started", sync_info(st, dir));
            }
            (Some(_), None) if st.replication == "Off" && !verify_reconnects(st) => {
                // The session ended under it (the link lost, the peer
                // stopped): it did not finish, and the blocks it never
                // reached are unchecked or still to move.
                self.last_progress = None;
                let mut info = finished(self.resync_base);
                info.percent = prev.sync.as_ref().map(|s| (s.percent * 10.0).round() / 10.0);
                sync_event("interrupted", info);
            }
            (Some(_), None) => {
                self.last_progress = None;
                sync_event("finished", finished(self.resync_base));
            }
            (Some(a), Some(b)) if a != b => {
                // From one activity straight into another (verify, then
                // the resync that repairs what it found).
                sync_event("finished", finished(self.resync_base));
                self.resync_base = st.counters.resync_bytes;
                self.last_progress = Some((now, st.sync.as_ref().map_or(0.0, |s| s.percent)));
                sync_event("started", sync_info(st, b));
            }
            (Some(_), Some(dir)) => {
                let pct = st.sync.as_ref().map(|s| s.percent);
                let due = self.last_progress.is_none_or(|(at, p)| {
                    now.duration_since(at) >= PROGRESS_EVERY
                        && pct.is_some_and(|x| (x - p).abs() >= PROGRESS_STEP)
                });
                if due {
                    self.last_progress = Some((now, pct.unwrap_or(0.0)));
                    sync_event("progress", sync_info(st, dir));
                }
            }
            (None, None) => {}
        }
        out
    }
}

/// The human form of an event (one line).
pub fn render(e: &Event) -> String {
    // "2026-... change r0 a: connection Connected -> StandAlone"
    let mut line = format!("{} {} {} {}: {}", e.time, e.kind, e.resource, e.node, e.object);
    match (&e.old, &e.sync) {
        (_, Some(s)) => {
            let mut parts = vec![s.direction.clone()];
            if let Some(p) = s.percent {
                parts.push(format!("{p:.1}%"));
            }
            if let Some(t) = s.bytes_total {
                parts.push(format!("of {t} bytes"));
            }
            if let Some(m) = s.moved_bytes {
                parts.push(format!("{m} bytes moved"));
            }
            parts.push(format!("{} bytes out of sync", s.out_of_sync_bytes));
            if let Some(x) = s.eta_s {
                parts.push(format!("ETA {x:.0} s"));
            }
            line.push_str(&format!(" {} ({})", e.new, parts.join(", ")));
        }
        (Some(old), None) => line.push_str(&format!(" {old} -> {}", e.new)),
        (None, None) => line.push_str(&format!(" {}", e.new)),
    }
    if let Some(d) = &e.detail {
        line.push_str(&format!(" ({d})"));
    }
    line
}

/// The daemon side: watches the node, logs, counts and broadcasts changes.
pub struct Hub {
    tx: broadcast::Sender<Event>,
    node: Arc<Node>,
}

impl Hub {
    /// Starts watching `node` until `stop` turns true.
    /// `address`: the controller's address moves (closed without one).
    pub fn start(
        node: Arc<Node>,
        metrics: Option<Arc<Metrics>>,
        mut address: mpsc::UnboundedReceiver<AddressOutcome>,
        mut stop: watch::Receiver<bool>,
    ) -> Arc<Hub> {
        let (tx, _) = broadcast::channel(4096);
        let hub = Arc::new(Hub { tx: tx.clone(), node: node.clone() });
        // The first snapshot and the subscription are taken before `start`
        // returns: a change made right after (a `disconnect` as soon as
        // `up` says it is up) is then a difference, not the baseline.
        let mut tracker = Tracker::default();
        let mut transitions = node.transitions();
        let (_, first) = node.status_since(&mut transitions);
        tracker.diff(&first, Instant::now());
        // Not inside the node's span: each line names resource and node itself.
        tokio::spawn(async move {
            let mut passed = Vec::new();
            let mut moves = Vec::new();
            let mut address_open = true;
            loop {
                let mut events = Vec::new();
                for o in moves.drain(..) {
                    if let Some(m) = &metrics {
                        m.count_address_move(&o);
                    }
                    if o.is_event() {
                        let st = node.status();
                        let mut e = Tracker::event(&st, "change", "address", None, o.result.into());
                        e.detail = Some(format!("{}: {}", o.op, o.detail));
                        events.push(e);
                    }
                }
                let (keys, st) = node.status_since(&mut transitions);
                for k in passed.drain(..).chain(keys) {
                    events.extend(tracker.passed(&k, &st, Instant::now()));
                }
                if let Some(m) = &metrics {
                    m.observe_status(&st);
                }
                events.extend(tracker.diff(&st, Instant::now()));
                for e in events {
                    log(&e);
                    if let Some(m) = &metrics {
                        m.count_event(&e);
                    }
                    let _ = tx.send(e);
                }
                tokio::select! {
                    k = transitions.recv() => if let Ok(k) = k { passed.push(k) },
                    o = address.recv(), if address_open => match o {
                        Some(o) => moves.push(o),
                        None => address_open = false,
                    },
                    _ = node.changed.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
        hub
    }

    /// A new subscription, and (for `--now`) the state at this moment.
    pub fn subscribe(&self) -> (broadcast::Receiver<Event>, Vec<Event>) {
        let rx = self.tx.subscribe();
        (rx, Tracker::exists(&self.node.status()))
    }
}

fn log(e: &Event) {
    let old = e.old.as_deref().unwrap_or("-");
    match &e.sync {
        Some(s) => tracing::info!(
            resource = %e.resource,
            node = %e.node,
            object = %e.object,
            new = %e.new,
            direction = %s.direction,
            percent = s.percent,
            out_of_sync_bytes = s.out_of_sync_bytes,
            moved_bytes = s.moved_bytes,
            "state change: sync {} ({})",
            e.new,
            s.direction,
        ),
        None if e.detail.is_some() => tracing::info!(
            resource = %e.resource,
            node = %e.node,
            object = %e.object,
            new = %e.new,
            detail = e.detail.as_deref().unwrap_or_default(),
            "{}: {}",
            e.object,
            e.new
        ),
        None => tracing::info!(
            resource = %e.resource,
            node = %e.node,
            object = %e.object,
            old = %old,
            new = %e.new,
            "state change: {} {} -> {}",
            e.object,
            old,
            e.new
        ),
    }
}

/// Why following the events stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("the node closed the events stream (it went down)")]
    Closed,
    #[error("writing to stdout: {0}")]
    Stdout(std::io::Error),
}

/// `twinblock events`: subscribes on the node's control socket and prints
/// one line per event until the node goes away (or `count` events).
pub fn follow(
    control: &Path,
    now: bool,
    json: bool,
    count: Option<usize>,
) -> Result<(), FollowError> {
    let req = Request { verb: "events".into(), force: false, now, bench: None };
    let stream = crate::control::open_stream(control, &req)?;
    let mut out = std::io::stdout().lock();
    let mut seen = 0usize;
    for line in BufReader::new(stream).lines() {
        if count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
        let Ok(line) = line else { break };
        let Ok(e) = serde_json::from_str::<Event>(&line) else { continue };
        let text = if json { line } else { render(&e) };
        writeln!(out, "{text}").and_then(|()| out.flush()).map_err(FollowError::Stdout)?;
        seen += 1;
    }
    if count.is_some_and(|c| seen >= c) {
        return Ok(());
    }
    Err(FollowError::Closed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use twinblock_replicator::protocol::wire::{DiskState, Role};
    use twinblock_replicator::status::{Counters, PeerStatus, SyncStatus};

    fn status() -> Status {
        Status {
            resource: "r0".into(),
            node: "a".into(),
            role: Role::Primary,
            disk: DiskState::UpToDate,
            connection: "Connected".into(),
            replication: "Established".into(),
            protocol: "C".into(),
            peer: PeerStatus {
                node: "b".into(),
                address: "127.0.0.1:7789".into(),
                role: Some(Role::Secondary),
                disk: Some(DiskState::UpToDate),
            },
            out_of_sync_bytes: 0,
            split_brain: false,
            lost_since_synced: false,
            discard_pending: false,
            rtt_us: Some(100),
            sync: None,
            counters: Counters::default(),
            link: Default::default(),
            in_flight: 0,
            bench_in_flight: 0,
            activity_log_extents: 0,
            io_backend: "uring".into(),
            last_error: None,
            link_refusal: None,
            generation: "0".into(),
            controller: None,
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
        assert_eq!(timestamp(t), "2026-05-28T20:26:40.123Z");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn a_disconnect_and_a_resync_are_events() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        assert!(t.diff(&status(), t0).is_empty());
        let mut s = status();
        s.connection = "StandAlone".into();
        s.replication = "Off".into();
        s.peer.role = None;
        s.peer.disk = None;
        let ev = t.diff(&s, t0);
        let objs: Vec<_> = ev.iter().map(|e| e.object.as_str()).collect();
        assert_eq!(objs, ["connection", "replication", "peer-role", "peer-disk"]);
        assert_eq!(ev[0].old.as_deref(), Some("Connected"));
        assert_eq!(ev[0].new, "StandAlone");
        assert_eq!(
            render(&ev[0]).split_once(' ').unwrap().1,
            "change r0 a: connection Connected -> StandAlone"
        );
        assert!(t.diff(&s, t0).is_empty(), "no change, no event");
        let mut s = status();
        s.connection = "SyncSource".into();
        s.replication = "SyncSource".into();
        s.out_of_sync_bytes = 1 << 20;
        s.sync = Some(SyncStatus { percent: 0.0, bytes_total: 1 << 20, eta_s: None });
        let ev = t.diff(&s, t0);
        let last = ev.last().unwrap();
        assert_eq!((last.object.as_str(), last.new.as_str()), ("sync", "started"));
        s.sync = Some(SyncStatus { percent: 50.0, bytes_total: 1 << 20, eta_s: Some(1.0) });
        s.counters.resync_bytes = 1 << 19;
        assert!(t.diff(&s, t0).is_empty(), "progress at most once a second");
        let ev = t.diff(&s, t0 + Duration::from_secs(2));
        assert_eq!(ev[0].new, "progress");
        assert_eq!(ev[0].sync.as_ref().unwrap().percent, Some(50.0));
        let mut done = status();
        done.counters.resync_bytes = 1 << 20;
        let ev = t.diff(&done, t0 + Duration::from_secs(3));
        let last = ev.last().unwrap();
        assert_eq!((last.object.as_str(), last.new.as_str()), ("sync", "finished"));
        assert_eq!(last.sync.as_ref().unwrap().percent, Some(100.0));
        assert_eq!(last.sync.as_ref().unwrap().moved_bytes, Some(1 << 20));
        let line = serde_json::to_string(last).unwrap();
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), *last);
    }

    /// A verify (or resync) cut short by the link's loss is `interrupted`
    /// at the percentage it reached: it was reported `finished`, at 100 %
    /// when it had found nothing out of sync so far, though the blocks it
    /// never compared may differ (found by review, helper-117: kill -9 of
    /// the Secondary at 71.5 % of a verify).
    #[test]
    fn a_verify_cut_short_by_the_link_is_interrupted_not_finished() {
        let mut t = Tracker::default();
        let t0 = Instant::now();
        assert!(t.diff(&status(), t0).is_empty());
        let mut s = status();
        s.connection = "Verifying".into();
        s.replication = "VerifySource".into();
        s.sync = Some(SyncStatus { percent: 0.0, bytes_total: 1 << 30, eta_s: None });
        t.diff(&s, t0);
        s.sync = Some(SyncStatus { percent: 71.5, bytes_total: 1 << 30, eta_s: Some(1.0) });
        t.diff(&s, t0 + Duration::from_secs(2));
        let mut cut = status();
        cut.connection = "Connecting".into();
        cut.replication = "Off".into();
        let ev = t.diff(&cut, t0 + Duration::from_secs(3));
        let last = ev.last().unwrap();
        assert_eq!((last.object.as_str(), last.new.as_str()), ("sync", "interrupted"));
        assert_eq!(last.sync.as_ref().unwrap().percent, Some(71.5));
        assert_eq!(
            render(last).split_once(' ').unwrap().1,
            "change r0 a: sync interrupted (VerifySource, 71.5%, 0 bytes out of sync)"
        );
        // A verify between Secondaries that ends its session to resync
        // what it found has finished.
        t.diff(&s, t0 + Duration::from_secs(4));
        cut.last_error = Some("online verify marked 4096 bytes out of sync: reconnecting".into());
        cut.out_of_sync_bytes = 4096;
        let ev = t.diff(&cut, t0 + Duration::from_secs(5));
        let last = ev.iter().rfind(|e| e.object == "sync").unwrap();
        assert_eq!(last.new, "finished");
    }

    #[test]
    fn a_node_superseded_and_met_again_is_two_events() {
        use twinblock_replicator::status::ControllerView;
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let mut s = status();
        s.controller = Some(ControllerView {
            state: "Watching".into(),
            quorum: true,
            witness_connected: true,
            last_refusal: None,
            superseded: false,
            hooks_await_record: false,
        });
        assert!(t.diff(&s, t0).is_empty());
        let c = |s: &mut Status| s.controller.as_mut().unwrap().superseded ^= true;
        c(&mut s);
        let ev = t.diff(&s, t0);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(render(&ev[0]).split_once(' ').unwrap().1, "change r0 a: superseded no -> yes");
        c(&mut s);
        let ev = t.diff(&s, t0);
        assert_eq!((ev[0].object.as_str(), ev[0].new.as_str()), ("superseded", "no"));
        assert!(Tracker::exists(&s).iter().any(|e| e.object == "superseded" && e.new == "no"));
    }

    #[test]
    fn a_resync_between_two_looks_is_seen() {
        use twinblock_replicator::core::{Connection, Replication};
        let mut t = Tracker::default();
        let t0 = Instant::now();
        let mut s = status();
        s.connection = "Connecting".into();
        s.replication = "Off".into();
        t.diff(&s, t0);
        let key = |c, r| StateKey {
            role: Role::Secondary,
            disk: DiskState::Inconsistent,
            connection: c,
            replication: r,
        };
        let mut after = status();
        after.role = Role::Secondary;
        after.counters.resync_bytes = 4096;
        let mut ev = t.passed(&key(Connection::Connected, Replication::SyncTarget), &after, t0);
        ev.extend(t.passed(&key(Connection::Connected, Replication::Established), &after, t0));
        ev.extend(t.diff(&after, t0));
        let lines: Vec<String> =
            ev.iter().map(|e| render(e).split_once(' ').unwrap().1.into()).collect();
        let want = [
            "change r0 a: role Primary -> Secondary",
            "change r0 a: disk UpToDate -> Inconsistent",
            "change r0 a: connection Connecting -> SyncTarget",
            "change r0 a: replication Off -> SyncTarget",
            "change r0 a: sync started (SyncTarget, 0 bytes out of sync)",
            "change r0 a: connection SyncTarget -> Connected",
            "change r0 a: replication SyncTarget -> Established",
            "change r0 a: sync finished (SyncTarget, 100.0%, 0 bytes out of sync)",
            "change r0 a: disk Inconsistent -> UpToDate",
        ];
        assert_eq!(lines, want);
    }

    #[test]
    fn exists_lists_the_whole_state() {
        let ev = Tracker::exists(&status());
        assert!(ev.iter().all(|e| e.kind == "exists" && e.old.is_none()));
        let role = ev.iter().find(|e| e.object == "role").unwrap();
        assert_eq!(role.new, "Primary");
        assert!(render(role).ends_with("exists r0 a: role Primary"), "{}", render(role));
    }

    // Review (helper-103): a failed address move was silent. Every
    // promotion's move is an event; a re-check only when it moved the
    // address back or failed (not every 30 s "in place").
    #[test]
    fn address_moves_are_events_with_their_detail() {
        let o = |op, result| AddressOutcome { op, result, detail: "x".into() };
        assert!(o("promote", "in-place").is_event());
        assert!(o("promote", "failed").is_event());
        assert!(o("recheck", "moved").is_event());
        assert!(o("recheck", "failed").is_event());
        assert!(!o("recheck", "in-place").is_event());
        assert!(!o("recheck", "checked").is_event());
        let mut e = Tracker::event(&status(), "change", "address", None, "failed".into());
        e.detail = Some("promote: command `x` failed".into());
        assert!(
            render(&e).ends_with("change r0 a: address failed (promote: command `x` failed)"),
            "{}",
            render(&e)
        );
        let json = serde_json::to_string(&e).unwrap();
        assert!(json.contains("\"detail\":\"promote: command `x` failed\""), "{json}");
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
    }
}
