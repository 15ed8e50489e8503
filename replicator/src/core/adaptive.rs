//! Adaptive mode (`protocol = "adaptive"`, shared/DESIGN.md "Protocol
//! modes"): protocol C while the peer acknowledges within the latency
//! budget; `Ahead` (as protocol A, the peer tracked in the bitmap) while it
//! does not; a bitmap resync and C again once the link has recovered.
//!
//! The states, on the Primary (the session's [`Activity`]):
//!
//! ```text
//!   Established (C) --a write waited >= budget--> Ahead
//!   Ahead --RTT <= budget/2 for `hold` (or <= 3/4 budget for 4 holds,
//!         or <= 7/8 budget for 16 holds),
//!         at least `hold` in Ahead--> SyncSource (C)
//!   SyncSource --the peer holds our generation--> Established
//! ```
//!
//! - Going Ahead: every write still waiting for the peer is treated as a
//!   write of a lost session (its range marked out of sync, its peer part
//!   `Lost`: the reply waits until the new generation and the bits are
//!   durable, and, with a controller, until the witness recorded the peer
//!   as outdated). The data becomes a new generation (`diverge`); once it
//!   is durable the peer learns it from the State frame and is `Behind`
//!   (disk Outdated, durably: it cannot be promoted without `--force`).
//! - Ahead: writes are applied locally and marked in the bitmap, not sent;
//!   their replies do not wait for the peer. Only pings cross the link;
//!   their round trips decide when to leave.
//! - Leaving: the marked blocks are resynced (the ordinary SyncSource, the
//!   peer SyncTarget from its first frame on), writes replicate as in C
//!   meanwhile, and SyncDone hands the peer our generation.
//!
//! Hysteresis, so that a link hovering at the budget converges instead of
//! looping between Ahead and resync (LINBIT/drbd#46): the way in is the
//! p99 of the replication wait in C beyond the budget (a write waiting the
//! budget for the peer while another of the last 100 did too, or one
//! waiting twice the budget). The replication wait of an operation is how
//! long its reply waits for the peer alone: from the later of its send and
//! its local completion (a slow local disk or fdatasync is not the link's
//! fault), and writes sent during a catch-up resync count from its end.
//! the way out needs round trips of at
//! most half the budget for `hold`, of at most three quarters of it for
//! four holds, or of at most seven eighths of it for sixteen holds (so a
//! link at the budget stays Ahead, and one that settles below it is not
//! left Ahead for ever with its peer Outdated: C fits the budget there);
//! a resync, once started, runs to its end (writes during a catch-up
//! resync wait as in C); and each time Ahead comes back soon after it was
//! left, `hold` doubles (up to `max_hold`), so the switch rate decays
//! geometrically under any link. Every switch is logged and counted in
//! `mode_switches`.

use std::time::Duration;

use crate::config::Protocol;
use crate::protocol::genid::NEVER_SYNCED;
use crate::protocol::wire::{DiskState, Message, Role};

use super::bench::BenchRun;
use super::session::{Activity, OutKind, Phase, SourceSync};
use super::types::{AdaptiveConfig, Progress, Time};
use super::{Core, PeerPart};

/// Highest backoff level: `hold` doubles at most this often.
const MAX_LEVEL: u32 = 6;
/// The latency window: the last this many writes acknowledged in C.
const WINDOW: usize = 100;

/// A way out of Ahead: every round trip at most `num/den` of the budget
/// for `holds` holds.
#[derive(Debug, Clone, Copy)]
struct Way {
    num: u32,
    den: u32,
    holds: u32,
}

/// The ways out, quickest first: good round trips (half the budget) for a
/// hold; fair ones (3/4) for four, so a link that settles there is not
/// left Ahead for ever; ones within the budget (7/8) for sixteen, so one
/// that settled just under it after a spike returns to C, rarely (should
/// C then miss the budget, Ahead comes back soon and the hold doubles).
/// [`RttClass`] names them in this order.
const WAYS: [Way; 3] = [
    Way { num: 1, den: 2, holds: 1 },
    Way { num: 3, den: 4, holds: 4 },
    Way { num: 7, den: 8, holds: 16 },
];
#[cfg(test)]
const FAIR_HOLDS: u32 = WAYS[1].holds;
#[cfg(test)]
const WITHIN_HOLDS: u32 = WAYS[2].holds;

impl Way {
    /// The longest round trip this way allows.
    fn limit(self, budget: Duration) -> Duration {
        budget * self.num / self.den
    }
}

/// Why the Primary goes Ahead.
#[derive(Debug, Clone, Copy)]
enum Why {
    /// A write waited this long for the peer (the latency budget's rule).
    Waited(Duration),
    /// This many bytes of writes waited for the peer (`congestion_fill`).
    Backlog(u64),
}

/// The Primary's Ahead run (in the session's activity).
#[derive(Debug, Clone, Copy)]
pub struct AheadRun {
    /// When the Primary went Ahead.
    pub since: Time,
    /// Per way out ([`WAYS`]): since when every round trip measured was
    /// within its limit.
    pub fits_since: [Option<Time>; WAYS.len()],
}

/// What a Primary that went Ahead in this session knows of its peer's
/// saved record (`Session::peer_record`). Nothing is acknowledged alone
/// until the peer says its record says Outdated (`Message::Outdate`,
/// answered by `OutdateDone` once durable): a crash of this Primary
/// before then would leave a peer that comes back, or stays, UpToDate
/// without those writes, and `primary` without `--force` would promote it
/// (found by review, without a controller; with one, the witness's fence
/// closes the same window). Kept beyond the Ahead run: the writes the
/// switch released still wait after a quick way back to C (review).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PeerRecord {
    /// Never asked in this session.
    #[default]
    Unasked,
    /// `Outdate` sent at this time, not answered yet: writes and flushes
    /// answered alone wait (for `timeout` at most: then the session ends,
    /// as for an operation the peer does not complete).
    Asked(Time),
    /// The peer answered: its saved record says Outdated.
    Outdated,
}

/// A round trip against the budget: the quickest way out it allows
/// ([`WAYS`], in order), or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RttClass {
    /// At most half the budget.
    Good,
    /// At most three quarters of it.
    Fair,
    /// At most seven eighths of it.
    Within,
    Bad,
}

impl AheadRun {
    /// A round trip of class `c` was measured (or is still unanswered
    /// after a time of class `c`): the ways it exceeds start over, the
    /// others go on (or begin at `now`, if `now` is given: a sample).
    fn saw(&mut self, c: RttClass, now: Option<Time>) {
        for (i, since) in self.fits_since.iter_mut().enumerate() {
            if i < c as usize {
                *since = None;
            } else if let Some(now) = now {
                since.get_or_insert(now);
            }
        }
    }
}

/// What outlives a session: the backoff and the latency window.
#[derive(Debug, Default, Clone)]
pub struct Backoff {
    pub level: u32,
    /// When Ahead was last left, and how many holds its way out asked for
    /// (1 for a lost link): Ahead coming back within four times that many
    /// holds came back soon.
    pub left: Option<(Time, u32)>,
    /// Since when the Primary replicates in C, Established (writes sent
    /// during a catch-up resync waited for it: their clock starts here).
    pub c_since: Option<Time>,
    /// Peer latencies of the last writes acknowledged in C, and how many
    /// of them reached the budget.
    pub window: std::collections::VecDeque<bool>,
    pub slow: usize,
}

impl Backoff {
    /// A write's peer latency in C: `slow` if it reached the budget.
    pub fn record(&mut self, slow: bool) {
        self.window.push_back(slow);
        self.slow += usize::from(slow);
        if self.window.len() > WINDOW {
            let old = self.window.pop_front().unwrap_or(false);
            self.slow -= usize::from(old);
        }
    }
}

/// How long the link must be good (and Ahead last) before leaving, at
/// backoff `level`.
pub fn hold(cfg: &AdaptiveConfig, level: u32) -> Duration {
    cfg.hold.saturating_mul(1 << level.min(MAX_LEVEL)).min(cfg.max_hold.max(cfg.hold))
}

/// The backoff level for a new Ahead run at `now`: up when Ahead comes
/// back soon after it was left — within four times the holds its way out
/// took (four holds after good round trips, sixteen after fair ones, 64
/// after ones just within the budget: a marginal link is tried again in C
/// more and more rarely, down to once per sixteen `max_hold`s, where a
/// window of four holds let a link that left on round trips within the
/// budget and missed it in C a few seconds later cycle every sixteen
/// holds for ever, found in the simulator) — down (one step) otherwise.
pub fn next_level(cfg: &AdaptiveConfig, b: &Backoff, now: Time) -> u32 {
    let h = hold(cfg, b.level);
    match b.left {
        Some((t, holds)) if now.saturating_sub(t) < h * 4 * holds => (b.level + 1).min(MAX_LEVEL),
        _ => b.level.saturating_sub(1),
    }
}

/// The way into Ahead: the p99 of the peer's write latency in C exceeds
/// the budget. A write waiting since `sent` reached the budget at `now`
/// and another of the last [`WINDOW`] did too (`slow`: how many) — or it
/// waited twice the budget (a stalled or much slower link; also with no
/// history).
pub fn over_budget(cfg: &AdaptiveConfig, sent: Time, now: Time, slow: usize) -> bool {
    let waited = now.saturating_sub(sent);
    waited >= cfg.budget * 2 || (waited >= cfg.budget && slow >= 1)
}

/// When [`over_budget`] may become true for a write waiting since `sent`.
pub fn budget_deadline(cfg: &AdaptiveConfig, sent: Time, slow: usize) -> Time {
    if slow >= 1 {
        sent + cfg.budget
    } else {
        sent + cfg.budget * 2
    }
}

/// How a round trip of `rtt` counts for leaving Ahead.
pub fn rtt_class(cfg: &AdaptiveConfig, rtt: Duration) -> RttClass {
    const CLASSES: [RttClass; WAYS.len()] = [RttClass::Good, RttClass::Fair, RttClass::Within];
    WAYS.iter()
        .position(|w| rtt * w.den <= cfg.budget * w.num)
        .map_or(RttClass::Bad, |i| CLASSES[i])
}

/// The way out that lets an Ahead run end at `now` (the link side of the
/// rule, [`WAYS`]), as the holds it asked for (the quickest that
/// applies), if one does.
pub fn leave_rule(cfg: &AdaptiveConfig, level: u32, run: AheadRun, now: Time) -> Option<u32> {
    let h = hold(cfg, level);
    if now < run.since + h {
        return None;
    }
    WAYS.iter()
        .zip(run.fits_since)
        .find(|(w, since)| since.is_some_and(|t| now >= t + h * w.holds))
        .map(|(w, _)| w.holds)
}

/// Why an Ahead run ends (for its log line).
#[derive(Debug, Clone, Copy)]
enum Leave {
    LinkBack,
    Demoted,
    NoQuorum,
}

impl Core {
    pub(crate) fn adaptive(&self) -> bool {
        self.cfg.protocol == Protocol::Adaptive
    }

    /// This Primary is Ahead: writes are acknowledged without the peer.
    pub(crate) fn ahead(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Running && matches!(s.activity, Activity::Ahead(_)))
    }

    /// This session's Ahead switch asked the peer to outdate itself and it
    /// has not yet said its saved record does: no write or flush may be
    /// answered alone yet (Ahead, or released by the switch).
    pub(crate) fn ahead_unfenced(&self) -> bool {
        if self.cfg.plant == super::Plant::AheadBeforeOutdated {
            return false;
        }
        self.session.as_ref().is_some_and(|s| {
            s.phase == Phase::Running && matches!(s.peer_record, PeerRecord::Asked(_))
        })
    }

    /// The peer's `OutdateDone` after an Ahead switch: its record says
    /// Outdated, and what waited may be answered alone.
    pub(crate) fn ahead_peer_outdated(&mut self) {
        if let Some(s) = self.session.as_mut() {
            if matches!(s.peer_record, PeerRecord::Asked(_)) {
                s.peer_record = PeerRecord::Outdated;
                tracing::info!("adaptive: the peer's record says Outdated: writes answered alone");
            }
        }
    }

    /// Whether this Primary replicates in C, Established.
    fn in_c(&self) -> bool {
        // An online verify runs beside writes in C: the budget holds then
        // too (going Ahead stops the verify). Before, a verify kept the
        // Primary in C whatever its writes waited, for as long as it ran
        // (hours on a large disk; found by review).
        self.adaptive()
            && self.role == Role::Primary
            && self.session.as_ref().is_some_and(|s| {
                s.phase == Phase::Running
                    && matches!(s.activity, Activity::Idle | Activity::Verify(_))
            })
    }

    /// Since when application operation `req`, sent at `sent`, waits
    /// for the peer alone: its local part is done (before, the client
    /// waits for the local disk, not for replication), counted from the
    /// start of C at the earliest.
    fn peer_wait_start(&self, req: u64, sent: Time) -> Option<Time> {
        let local = self.pending.get(&req)?.local_at?;
        let start = sent.max(local);
        Some(self.backoff.c_since.map_or(start, |c| c.max(start)))
    }

    /// Since when the longest replication wait under way started, if the
    /// Primary is in C.
    fn oldest_wait(&self) -> Option<Time> {
        if !self.in_c() {
            return None;
        }
        let s = self.session.as_ref()?;
        s.out
            .values()
            .filter_map(|o| match o.kind {
                OutKind::App(req) if !o.behind_probes => self.peer_wait_start(req, o.sent),
                _ => None,
            })
            .min()
    }

    /// Since when the longest replication wait of a write sent behind
    /// bench probes started, while a bench runs here (not yet stopped),
    /// the Primary is in C and the link's own round trip (QUIC's estimate,
    /// which the probes queued in the stream do not lengthen) has reached
    /// the budget: a wait behind probes on a link within the budget is the
    /// bench's own backlog (its throughput run keeps 4 MiB in flight), the
    /// price of measuring, and stopped every bench beside a writing client
    /// on a loopback pair with a 20 ms budget (debug build).
    fn oldest_wait_behind_probes(&self) -> Option<Time> {
        if !self.bench_watched() {
            return None;
        }
        let s = self.session.as_ref()?;
        if s.rtt.is_none_or(|rtt| rtt < self.cfg.adaptive.budget) {
            return None;
        }
        s.out
            .values()
            .filter_map(|o| match o.kind {
                OutKind::App(req) if o.behind_probes => self.peer_wait_start(req, o.sent),
                _ => None,
            })
            .min()
    }

    /// A bench runs here, not stopped, and the Primary is in C: what
    /// [`Core::bench_over_budget`] watches.
    fn bench_watched(&self) -> bool {
        matches!(self.bench_run, BenchRun::Running) && self.in_c()
    }

    /// When a write behind bench probes will have waited twice the budget
    /// ([`Core::bench_over_budget`]): the bench then stops even if nothing
    /// else happens.
    pub(crate) fn bench_budget_deadline(&self) -> Option<Time> {
        self.oldest_wait_behind_probes().map(|t| t + self.cfg.adaptive.budget * 2)
    }

    /// A write behind bench probes waited twice the budget on a link whose
    /// round trip reached it: the bench stops (its next probe is refused,
    /// naming why). Such writes do not
    /// count towards Ahead (their wait may be the bench's backlog), so
    /// without this a bench suspended adaptive mode for as long as it ran
    /// (eight runs of up to 10 min): found by review (helper-154), a link
    /// slowed to 200 ms round trips mid-bench against a 20 ms budget made
    /// a client's writes wait 200–570 ms for ten seconds, the Primary in
    /// C. Once the probes ahead have landed, the writes are judged by the
    /// budget again. (`core::tests::bench_budget`.)
    ///
    /// With `congestion_fill`, likewise: the backlog rule is off while
    /// probes are in flight, so the application's bytes waiting for the
    /// peer (the probes' not counted) past the fill stop the bench.
    fn bench_over_budget(&mut self) {
        if let Some(backlog) = self.bench_backlog() {
            let fill = self.cfg.adaptive.congestion_fill.unwrap_or(0);
            tracing::warn!(
                backlog,
                congestion_fill = fill,
                "adaptive: writes waiting for the peer passed congestion_fill behind bench \
                 probes: the bench stops"
            );
            self.bench_run = BenchRun::Stopped(format!(
                "adaptive mode: {backlog} bytes of writes wait for the peer behind the bench's \
                 probes, past congestion_fill ({fill}): the bench stops so that the backlog \
                 rule applies again (run it again when fewer writes come)"
            ));
            return;
        }
        let Some(start) = self.oldest_wait_behind_probes() else { return };
        let budget = self.cfg.adaptive.budget;
        let waited = self.now.saturating_sub(start);
        if waited < budget * 2 {
            return;
        }
        let why = format!(
            "adaptive mode: a write waited {} ms for the peer behind the bench's probes, \
             twice the latency budget ({} ms), on a link whose round trip ({} ms) reached it: \
             the bench stops so that the application's writes keep the budget (run it again \
             once the link is back within it)",
            waited.as_millis(),
            budget.as_millis(),
            self.session.as_ref().and_then(|s| s.rtt).unwrap_or_default().as_millis()
        );
        tracing::warn!(
            waited_us = waited.as_micros() as u64,
            budget_us = budget.as_micros() as u64,
            "adaptive: a write waited twice the latency budget behind bench probes: \
             the bench stops"
        );
        self.bench_run = BenchRun::Stopped(why);
    }

    /// The application's bytes waiting for the peer, if more than
    /// `congestion_fill` while bench probes are in flight (which turn
    /// [`Core::congested`] off) and a bench runs here, not yet stopped.
    fn bench_backlog(&self) -> Option<u64> {
        let fill = self.cfg.adaptive.congestion_fill?;
        if !self.bench_watched() {
            return None;
        }
        let s = self.session.as_ref()?;
        if s.probe_bytes == 0 || s.in_flight_bytes <= fill {
            return None;
        }
        let since = self.backoff.c_since;
        let backlog: u64 = s
            .out
            .values()
            .filter(|o| matches!(o.kind, OutKind::App(_)) && since.is_none_or(|c| o.sent >= c))
            .map(|o| o.bytes)
            .sum();
        (backlog > fill).then_some(backlog)
    }

    /// The backlog, if the Primary is in C and more than `congestion_fill`
    /// bytes of writes wait for the peer. Not counted, as for the latency
    /// rule: bench probes and the writes sent behind them (the bench's own
    /// bytes are no sign of a slow link; found by review: writes queued
    /// behind a probe sent the Primary Ahead once it landed), and writes
    /// sent before C began (during the catch-up resync, behind its data).
    fn congested(&self) -> Option<u64> {
        let fill = self.cfg.adaptive.congestion_fill?;
        if !self.in_c() {
            return None;
        }
        let s = self.session.as_ref()?;
        if s.probe_bytes > 0 || s.in_flight_bytes <= fill {
            return None;
        }
        let since = self.backoff.c_since;
        let backlog: u64 = s
            .out
            .values()
            .filter(|o| {
                matches!(o.kind, OutKind::App(_))
                    && !o.behind_probes
                    && since.is_none_or(|c| o.sent >= c)
            })
            .map(|o| o.bytes)
            .sum();
        (backlog > fill).then_some(backlog)
    }

    /// The timed transitions (run from `pump`).
    pub(crate) fn adaptive_tick(&mut self) {
        if !self.adaptive() {
            return;
        }
        let now = self.now;
        self.bench_over_budget();
        match (self.in_c(), self.backoff.c_since) {
            (true, None) => self.backoff.c_since = Some(now),
            (false, Some(_)) => self.backoff.c_since = None,
            _ => {}
        }
        if let Some(bytes) = self.congested() {
            if self.may_go_ahead() {
                self.go_ahead(Why::Backlog(bytes));
            }
            return;
        }
        if let Some(sent) = self.oldest_wait() {
            if self.may_go_ahead() && over_budget(&self.cfg.adaptive, sent, now, self.backoff.slow)
            {
                self.go_ahead(Why::Waited(now.saturating_sub(sent)));
            }
            return;
        }
        let cfg = &self.cfg.adaptive;
        let Some(s) = self.session.as_mut().filter(|s| s.phase == Phase::Running) else { return };
        let unanswered = s.ping_out.map(|(_, sent)| now.saturating_sub(sent));
        let Activity::Ahead(run) = &mut s.activity else { return };
        if let Some(u) = unanswered {
            // A ping unanswered for half the budget: the link is not good
            // (and so on for each way out).
            run.saw(rtt_class(cfg, u), None);
        }
        let run = *run;
        let (leave, why) = if self.role != Role::Primary {
            (Some(1), Leave::Demoted)
        } else if !self.may_go_ahead() {
            (Some(1), Leave::NoQuorum)
        } else {
            (leave_rule(&self.cfg.adaptive, self.backoff.level, run, now), Leave::LinkBack)
        };
        // The peer knows it is behind (our generation is durable and was
        // announced) and no resync read of an earlier run is outstanding.
        if let Some(holds) = leave.filter(|_| self.meta_durable() && self.barrier == 0) {
            self.leave_ahead(run, holds, why);
        }
    }

    /// The next time at which [`Core::adaptive_tick`] has work.
    pub(crate) fn adaptive_deadline(&self) -> Option<Time> {
        if !self.adaptive() {
            return None;
        }
        if let Some(sent) = self.oldest_wait() {
            if !self.may_go_ahead() {
                return None;
            }
            return Some(budget_deadline(&self.cfg.adaptive, sent, self.backoff.slow));
        }
        let s = self.session.as_ref().filter(|s| s.phase == Phase::Running)?;
        let Activity::Ahead(run) = &s.activity else { return None };
        let mut t = None::<Time>;
        let mut at = |x: Time| {
            if x > self.now {
                t = Some(t.map_or(x, |y: Time| y.min(x)));
            }
        };
        let budget = self.cfg.adaptive.budget;
        let h = hold(&self.cfg.adaptive, self.backoff.level);
        for (w, since) in WAYS.iter().zip(run.fits_since) {
            let Some(since) = since else { continue };
            // The outstanding ping passing this way's limit; the way's
            // holds complete.
            if let Some((_, sent)) = s.ping_out {
                at(sent + w.limit(budget) + Duration::from_micros(1));
            }
            at((since + h * w.holds).max(run.since + h));
        }
        t
    }

    /// The peer acknowledged application operation `req`, sent at `sent`.
    pub(crate) fn adaptive_acked(&mut self, req: u64, sent: Time) {
        if !self.in_c() {
            return;
        }
        // (Its local part still running: the peer cost the client nothing.)
        let waited = self
            .peer_wait_start(req, sent)
            .map_or(Duration::ZERO, |start| self.now.saturating_sub(start));
        self.backoff.record(waited >= self.cfg.adaptive.budget);
    }

    /// A round-trip sample (a ping answered).
    pub(crate) fn adaptive_sample(&mut self, rtt: Duration) {
        let now = self.now;
        let class = rtt_class(&self.cfg.adaptive, rtt);
        if let Some(Activity::Ahead(run)) = self.session.as_mut().map(|s| &mut s.activity) {
            run.saw(class, Some(now));
        }
    }

    /// C -> Ahead: what waits for the peer is released as a lost session's
    /// writes are; new writes go to the bitmap.
    fn go_ahead(&mut self, why: Why) {
        let now = self.now;
        let level = next_level(&self.cfg.adaptive, &self.backoff, now);
        let Some(s) = self.session.as_mut() else { return };
        let waiting: Vec<(u64, Option<(u64, u64)>)> = s
            .out
            .values()
            .filter_map(|o| match o.kind {
                OutKind::App(req) => Some((req, o.range)),
                _ => None,
            })
            .collect();
        if let Activity::Verify(v) = &s.activity {
            tracing::warn!(
                checked = v.progress.done,
                bytes = v.progress.total,
                "online verify stopped: adaptive mode goes Ahead (run it again once in sync)"
            );
        }
        s.activity = Activity::Ahead(AheadRun { since: now, fits_since: [None; WAYS.len()] });
        s.peer_record = PeerRecord::Asked(now);
        self.backoff.level = level;
        // Back in C, the window starts afresh.
        self.backoff.window.clear();
        self.backoff.slow = 0;
        for (req, range) in waiting {
            if let Some((off, len)) = range {
                self.mark(off, len);
            }
            self.lose_peer_part(req, |p| matches!(p, PeerPart::Waiting(_)));
        }
        self.p.want_bitmap = true;
        // The peer saves itself Outdated before anything is answered alone.
        self.send(Message::Outdate);
        self.diverge("Ahead: the peer falls behind");
        self.counters.mode_switches += 1;
        let hold_ms = hold(&self.cfg.adaptive, level).as_millis() as u64;
        let switches = self.counters.mode_switches;
        match why {
            Why::Waited(waited) => tracing::warn!(
                waited_us = waited.as_micros() as u64,
                budget_us = self.cfg.adaptive.budget.as_micros() as u64,
                hold_ms,
                switches,
                "adaptive: a write waited the whole latency budget for the peer: Ahead \
                 (writes acknowledged locally, the peer marked out of sync)"
            ),
            Why::Backlog(bytes) => tracing::warn!(
                backlog = bytes,
                congestion_fill = self.cfg.adaptive.congestion_fill.unwrap_or(0),
                hold_ms,
                switches,
                "adaptive: the writes waiting for the peer passed congestion_fill: Ahead \
                 (writes acknowledged locally, the peer marked out of sync)"
            ),
        }
    }

    /// Ahead -> SyncSource: the marked blocks go to the peer; C again.
    fn leave_ahead(&mut self, run: AheadRun, holds: u32, why: Leave) {
        let now = self.now;
        let claimed = crate::bitmap::Bitmap::with_block(self.cfg.size, self.cfg.block);
        let total = self.dirty.bytes();
        let Some(s) = self.session.as_mut() else { return };
        s.activity = Activity::Source(SourceSync::new(claimed, total, now));
        self.backoff.left = Some((now, holds));
        self.counters.mode_switches += 1;
        let why = match why {
            Leave::LinkBack => "the link is back within the budget",
            Leave::Demoted => "this node is no longer Primary",
            Leave::NoQuorum => "the controller forbids answering alone (no quorum, or demoting)",
        };
        tracing::info!(
            ahead_ms = now.saturating_sub(run.since).as_millis() as u64,
            out_of_sync = self.dirty.bytes(),
            switches = self.counters.mode_switches,
            "adaptive: leaving Ahead, {why}: resyncing the marked blocks (C again)"
        );
    }

    /// Secondary: the Primary's data is a generation we do not hold while
    /// the link is up — it went Ahead: we are Behind (Outdated).
    ///
    /// Not when the State names a generation our data descends from, or
    /// none (a new disk's): a State names the generation the Primary's
    /// *record* holds, and one sent before the record with its newest
    /// generation is saved (a `primary --force` just before the connect,
    /// whose new generation the handshake gave us) names an older one.
    /// Going Ahead takes a fresh id, never one of those.
    pub(crate) fn adaptive_peer_state(&mut self, role: Role, current: u64) {
        if !self.adaptive()
            || role != Role::Primary
            || self.role != Role::Secondary
            || current == NEVER_SYNCED
            || self.gen.descent(self.base_forced()).contains(&current)
            // (Outdated already: by the `Outdate` the Primary sent as it
            // went Ahead, which comes before this State.)
            || !matches!(
                self.disk,
                DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated
            )
        {
            return;
        }
        let Some(s) = self.session.as_mut().filter(|s| s.phase == Phase::Running) else { return };
        if !matches!(s.activity, Activity::Idle) {
            return;
        }
        s.activity = Activity::Behind;
        // (The Primary's verify, if it ran one, stopped when it went
        // Ahead: no "VerifyTarget" once the catch-up is over.)
        s.verify_target = None;
        self.disk = DiskState::Outdated;
        tracing::warn!(
            "adaptive: the Primary is Ahead: Behind (disk Outdated until the catch-up resync)"
        );
    }

    /// Secondary: data from the Primary while Behind starts the catch-up
    /// resync (from now on our disk is a mix: Inconsistent, on disk before
    /// the data lands).
    pub(crate) fn adaptive_data(&mut self) {
        let Some(s) = self.session.as_mut() else { return };
        if !matches!(s.activity, Activity::Behind) {
            return;
        }
        let progress = Progress { total: s.peer.out_of_sync, done: 0, started: self.now };
        s.activity = Activity::Target { behind: s.peer.out_of_sync, progress, lost: false };
        self.disk = DiskState::Inconsistent;
        tracing::info!("adaptive: catch-up resync from the Primary (SyncTarget)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn may_leave(cfg: &AdaptiveConfig, level: u32, run: AheadRun, now: Time) -> bool {
        leave_rule(cfg, level, run, now).is_some()
    }

    fn cfg() -> AdaptiveConfig {
        AdaptiveConfig {
            budget: Duration::from_millis(4),
            hold: Duration::from_millis(100),
            max_hold: Duration::from_millis(800),
            congestion_fill: None,
        }
    }

    #[test]
    fn the_way_in_is_the_p99() {
        let c = cfg();
        let t0 = Duration::from_secs(1);
        let ms = Duration::from_millis;
        // No slow write in the window: twice the budget.
        assert!(!over_budget(&c, t0, t0 + ms(4), 0));
        assert!(!over_budget(&c, t0, t0 + ms(7), 0));
        assert!(over_budget(&c, t0, t0 + ms(8), 0));
        assert_eq!(budget_deadline(&c, t0, 0), t0 + ms(8));
        // Another slow one among the last 100: the budget.
        assert!(!over_budget(&c, t0, t0 + ms(3), 1));
        assert!(over_budget(&c, t0, t0 + ms(4), 1));
        assert_eq!(budget_deadline(&c, t0, 1), t0 + ms(4));
        let mut b = Backoff::default();
        for i in 0..250 {
            b.record(i % 50 == 0);
        }
        assert_eq!((b.window.len(), b.slow), (WINDOW, 2));
    }

    #[test]
    fn the_way_out_needs_half_the_budget_for_the_hold() {
        let c = cfg();
        let ms = Duration::from_millis;
        assert_eq!(rtt_class(&c, ms(2)), RttClass::Good);
        assert_eq!(rtt_class(&c, ms(3)), RttClass::Fair);
        assert_eq!(rtt_class(&c, Duration::from_micros(3001)), RttClass::Within);
        assert_eq!(rtt_class(&c, Duration::from_micros(3500)), RttClass::Within);
        assert_eq!(rtt_class(&c, Duration::from_micros(3501)), RttClass::Bad);
        let at =
            |good, fair, within| AheadRun { since: ms(1000), fits_since: [good, fair, within] };
        let run = at(Some(ms(1050)), None, None);
        assert!(!may_leave(&c, 0, run, ms(1100)));
        assert!(may_leave(&c, 0, run, ms(1150)));
        assert!(!may_leave(&c, 1, run, ms(1200)));
        assert!(may_leave(&c, 1, run, ms(1250)));
        assert!(!may_leave(&c, 0, at(None, None, None), ms(9000)));
        // Round trips between half and three quarters of the budget: four
        // holds (a link that settles there is not left Ahead for ever).
        let fair = at(None, Some(ms(1050)), None);
        assert!(!may_leave(&c, 0, fair, ms(1400)));
        assert!(may_leave(&c, 0, fair, ms(1450)));
        assert!(!may_leave(&c, 1, fair, ms(1800)));
        assert!(may_leave(&c, 1, fair, ms(1850)));
        assert_eq!(leave_rule(&c, 1, fair, ms(1850)), Some(FAIR_HOLDS));
        // Up to seven eighths of it: sixteen holds.
        let within = at(None, None, Some(ms(1050)));
        assert!(!may_leave(&c, 0, within, ms(2640)));
        assert_eq!(leave_rule(&c, 0, within, ms(2650)), Some(WITHIN_HOLDS));
        // The quickest way out that applies is the one taken.
        let all = at(Some(ms(1050)), Some(ms(1050)), Some(ms(1050)));
        assert_eq!(leave_rule(&c, 0, all, ms(2650)), Some(1));
    }

    #[test]
    fn the_hold_doubles_when_ahead_comes_back_soon_and_is_capped() {
        let c = cfg();
        let ms = Duration::from_millis;
        let b = Backoff { level: 0, left: Some((ms(1000), 1)), ..Backoff::default() };
        assert_eq!(next_level(&c, &b, ms(1300)), 1);
        assert_eq!(next_level(&c, &b, ms(1500)), 0);
        let b = Backoff { level: 3, left: Some((ms(1000), 1)), ..Backoff::default() };
        assert_eq!(next_level(&c, &b, ms(10_000)), 2);
        // Left on round trips just within the budget (16 holds): soon is
        // within 64 holds.
        let b = Backoff { level: 0, left: Some((ms(1000), WITHIN_HOLDS)), ..Backoff::default() };
        assert_eq!(next_level(&c, &b, ms(7000)), 1);
        assert_eq!(next_level(&c, &b, ms(7500)), 0);
        assert_eq!(hold(&c, 0), ms(100));
        assert_eq!(hold(&c, 2), ms(400));
        assert_eq!(hold(&c, 5), ms(800));
        assert_eq!(hold(&c, 60), ms(800));
    }
}
