//! One peer session as the core sees it: the handshake phase, what the peer
//! said of itself, the operations sent and what each still waits for, the
//! receiving side's sequence, liveness, and the resync or verify it runs.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use crate::bitmap::Bitmap;
use crate::protocol::wire::{DiskState, Hello, Role};

use super::types::{CoreConfig, Progress, Replication, ReqId, SessionId, Time};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Hello and bitmap sent; waiting for the peer's.
    Handshake,
    /// The sync decision is made: data moves.
    Running,
}

/// What the peer said of itself.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub role: Role,
    pub disk: DiskState,
    pub current: u64,
    pub out_of_sync: u64,
    /// When it was last promoted, as its hello or its last State said.
    pub promoted_at: u64,
}

/// What the reply for an operation waits for from the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Queued,
    Received,
    Done,
}

/// Why an operation was sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutKind {
    /// An application write/trim/zero/flush.
    App(ReqId),
    /// A resync chunk.
    Resync,
    /// A flush that makes resync chunks durable on the target.
    ResyncFlush(Vec<(u64, u64)>),
    /// Checksum resync: the target's CRCs of a run.
    Probe { offset: u64, len: u64 },
    /// Online verify of a chunk: our CRCs.
    Verify { offset: u64, sums: Vec<u64> },
    /// A `twinblock bench` probe (scratch area, never the device).
    Bench(ReqId),
}

#[derive(Debug, Clone)]
pub struct Out {
    pub kind: OutKind,
    pub need: Need,
    pub range: Option<(u64, u64)>,
    pub bytes: u64,
    pub sent: Time,
    /// `twinblock bench` probes were in flight when it was sent: its wait
    /// is the bench's backlog ahead of it, not the link's (adaptive mode
    /// does not count it).
    pub behind_probes: bool,
}

/// SyncSource's progress through the bitmap.
#[derive(Debug)]
pub struct SourceSync {
    /// Next block to look at.
    pub cursor: u64,
    /// Blocks sent and not yet durable on the target (skipped by the scan).
    pub claimed: Bitmap,
    /// Chunks sent since the last flush barrier.
    pub unflushed: Vec<(u64, u64)>,
    /// A read outstanding: (offset, len, the target's CRCs for a probe).
    pub reading: Option<(u64, u64, Option<Vec<u64>>)>,
    /// Probes answered, waiting for our read.
    pub probed: VecDeque<(u64, u64, Vec<u64>)>,
    pub chunks: usize,
    pub start: SourceStart,
    /// SyncDone sent; waiting for the target to say it holds our generation.
    pub done_sent: bool,
    /// A full sync's name (this connection's nonce), taken as this node's
    /// [`MetaRecord::full_sync`] once the bitmap set in full is durable
    /// (0: not a new full sync).
    ///
    /// [`MetaRecord::full_sync`]: super::types::MetaRecord::full_sync
    pub token: u64,
    pub progress: Progress,
}

/// How far a SyncSource is from sending its first chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStart {
    /// Waiting for the bitmap (with the peer's bits) to be durable.
    Bitmap,
    /// Waiting for a flush of every write issued before write epoch
    /// `epoch`: what the source sends must be what a power loss here
    /// leaves (data this node took as a sync target and never flushed, a
    /// forced node's page cache, are covered by no bitmap or log of its own).
    Flush {
        epoch: u64,
    },
    Running,
}

/// How many `timeout`s one operation may wait for the peer while the peer
/// completes others (DRBD's ko-count default).
pub const KO_COUNT: u32 = 7;

/// Online verify as its source runs it.
#[derive(Debug)]
pub struct VerifyRun {
    pub cursor: u64,
    pub reading: bool,
    pub chunks: usize,
    pub progress: Progress,
}

/// The session's replication activity.
#[derive(Debug)]
pub enum Activity {
    Idle,
    Source(SourceSync),
    Target {
        behind: u64,
        /// What this node has taken of the resync, as it sees it: the
        /// bytes the source has out of sync with us at the start, and the
        /// resync chunks (or, with `resync-checksum`, the ranges the source
        /// asked us to checksum) received since.
        progress: Progress,
        /// The source does not know this node's generation (newer, split or
        /// unrelated: its disk failed holding writes it may have
        /// acknowledged alone): the sync leaves it Outdated, not UpToDate.
        lost: bool,
    },
    Verify(VerifyRun),
    /// Adaptive mode, Primary: acknowledging without the peer.
    Ahead(super::adaptive::AheadRun),
    /// Adaptive mode, Secondary: the Primary is Ahead (disk Outdated).
    Behind,
}

/// Protocol A: what a Primary knows of its peer's record
/// (`MetaRecord::behind_async_primary`), which makes the peer come back
/// `Consistent` if its process stops while this node answers writes it
/// may lack. The peer saves it once it knows this node is Primary, and
/// applies no write of ours before (`apply.rs` waits for its record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerBehind {
    /// Not known saved: a write is answered once the peer has completed
    /// it, as in C (else the peer, killed before its record was saved,
    /// came back UpToDate without it and was promoted without `--force`;
    /// review, helper-90). Only the completion of a write numbered `from`
    /// or later, sent in this reign, proves the record (one of the reign
    /// before a re-promotion, completed late, took its place: review,
    /// helper-91); a reign begun before the session: 1.
    Unknown { from: u64 },
    /// The peer completed a write this Primary sent: its record says so,
    /// and writes are answered on their local completion.
    Saved,
}

#[derive(Debug)]
pub struct Session {
    pub id: SessionId,
    pub phase: Phase,
    pub started: Time,
    pub peer_hello: Option<Hello>,
    pub peer_bits: Bitmap,
    pub peer_bits_done: bool,
    pub peer: PeerInfo,
    /// Our role and disk as our hello announced them (the decision's input).
    pub hello_role: Role,
    pub hello_disk: DiskState,
    /// When our hello said this node was last promoted (0: never).
    pub hello_promoted_at: u64,
    /// What our hello said this node may have lost (`Lost`).
    pub hello_lost: crate::protocol::wire::Lost,
    /// Our hello's nonce, full sync and discard flag (see
    /// [`crate::protocol::wire::Hello`]): the resume decision is made on them.
    pub nonce: u64,
    pub hello_full_sync: u64,
    pub hello_discard: bool,
    /// `disconnect` on this Primary sent `Outdate` at this time: the
    /// session closes on the peer's `OutdateDone`, or after
    /// [`outdate_wait`].
    pub outdating: Option<Time>,
    pub activity: Activity,
    // Sending side.
    pub next_seq: u64,
    pub out: BTreeMap<u64, Out>,
    pub acked_received: u64,
    pub acked_done: u64,
    /// When the peer last completed an operation (or the session began):
    /// a peer that keeps completing them is slow, not lost.
    pub progress_at: Time,
    pub in_flight_bytes: u64,
    /// Answering the peer's online verify (its progress as this node sees
    /// it: the ranges checked so far), while otherwise idle: shown as
    /// `VerifyTarget`; the writes go on as when Established.
    pub verify_target: Option<Progress>,
    /// Of which bench probes.
    pub probe_bytes: u64,
    /// Bench probes in `out` (status: `bench_in_flight`, apart from the
    /// device's own `in_flight`).
    pub probes_out: usize,
    // Receiving side.
    pub received: u64,
    /// Taken from the receive queue into the store's order, its extents
    /// durably in the activity log (or failed): what the `Ack`'s
    /// `received` says. Protocol B answers a write on it, and a Secondary
    /// whose process stops may lose writes received and not yet written:
    /// its activity log must name them for the restart to know (simulator
    /// seed 7205784: an acknowledgement of bare receipt left a power loss
    /// there without evidence).
    pub admitted: u64,
    pub done: u64,
    /// Completed out of order, waiting for earlier ones.
    pub completed: std::collections::BTreeSet<u64>,
    pub acked: (u64, u64),
    // Liveness.
    pub last_heard: Time,
    pub last_ping: Time,
    pub ping_out: Option<(u64, Time)>,
    pub next_ping_id: u64,
    pub rtt: Option<Duration>,
    // Resync rate.
    pub tokens: f64,
    pub last_refill: Time,
    pub app_busy: bool,
    /// When the application last had an operation going: the resync keeps
    /// to `resync_rate` until it has been idle for a second (found by
    /// review: a tick that saw no write issued, because the resync itself
    /// held the writes back, lifted the limit, and a QD1 writer got 6 IOPS).
    pub last_app: Option<Time>,
    // Promotion (`core/promotion.rs`).
    /// This node asked the peer to let it become Primary.
    pub asked: Option<super::promotion::Asked>,
    /// The peer was granted its promotion; until its next State it counts
    /// as Primary for a promotion of ours.
    pub peer_promoting: bool,
    /// This node granted the peer a promotion not yet seen done (a State
    /// saying Primary): a State the peer sent before it heard the grant
    /// clears `peer_promoting`, and protocol A's Secondary must still take
    /// itself for behind when the link goes (found by review).
    pub granted_promotion: bool,
    /// Protocol A: whether this Primary knows its peer's record says it
    /// may be behind an A Primary (see [`PeerBehind`]).
    pub peer_behind: PeerBehind,
    /// Adaptive mode: what this Primary knows of the peer's saved record
    /// since it went Ahead in this session (writes answered alone wait
    /// for `Outdated`).
    pub peer_record: super::adaptive::PeerRecord,
    /// This node was promoted while this session ran (the promotion's
    /// `promoted_at`): writes the peer sent as Primary before it heard of
    /// that (a reign that began earlier) are older than this node's data.
    pub reigned: Option<u64>,
    /// Receiving side: the last resync chunk received, and the first flush
    /// received after it (0: none yet). A SyncDone is taken only once that
    /// flush is done: every chunk is then on disk. (Not the last flush
    /// received: an application flush sent after the source's resync
    /// flush may still run when the SyncDone comes; taken for a lie, it
    /// dropped the link, found by a live test.)
    pub last_resync: u64,
    pub flush_after_resync: u64,
    /// Bytes the peer asked this node to checksum (`Op::Verify`) and not
    /// answered yet: bounded by [`wire::VERIFY_IN_FLIGHT`].
    pub verify_asked: u64,
    /// Which side ends on the other's generation, or retires a stale
    /// bitmap base, once the handshake found nothing to move
    /// (`decide_sync`).
    pub adoption: Adoption,
}

/// Nothing to move at the handshake, and the two end on one generation:
/// two disks that twinblock created and nobody wrote, met on two
/// generations (the "taker" takes the "giver's"), or both on one while a
/// bitmap base still names an older one (an adoption or a resync whose
/// last State was lost with a link). The taker's State says it holds the
/// giver's generation only once its record does (as a SyncTarget's after
/// SyncDone), and the giver keeps its bitmap's base until such a State: a
/// taker that crashes before its record is saved comes back on its old
/// generation, which the giver's bitmap still names (a bitmap resync, not
/// a full one, or after two generations apart an "unrelated" refusal:
/// found by review).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    None,
    /// This node took the peer's generation; its State waits for the
    /// record.
    Taking,
    /// The peer takes ours: its State naming it ends our bitmap's base.
    Giving,
}

impl Session {
    pub fn new(id: SessionId, now: Time, cfg: &CoreConfig) -> Session {
        Session {
            id,
            phase: Phase::Handshake,
            started: now,
            peer_hello: None,
            peer_bits: Bitmap::with_block(cfg.size, cfg.block),
            peer_bits_done: false,
            peer: PeerInfo {
                role: Role::Secondary,
                disk: DiskState::Inconsistent,
                current: 0,
                out_of_sync: 0,
                promoted_at: 0,
            },
            hello_role: Role::Secondary,
            hello_disk: DiskState::Inconsistent,
            hello_promoted_at: 0,
            hello_lost: crate::protocol::wire::Lost::None,
            nonce: 0,
            hello_full_sync: 0,
            hello_discard: false,
            outdating: None,
            activity: Activity::Idle,
            next_seq: 1,
            out: BTreeMap::new(),
            acked_received: 0,
            acked_done: 0,
            progress_at: now,
            in_flight_bytes: 0,
            verify_target: None,
            probe_bytes: 0,
            probes_out: 0,
            received: 0,
            admitted: 0,
            done: 0,
            completed: Default::default(),
            acked: (0, 0),
            last_heard: now,
            last_ping: now,
            ping_out: None,
            next_ping_id: 1,
            rtt: None,
            tokens: 0.0,
            last_refill: now,
            asked: None,
            peer_promoting: false,
            granted_promotion: false,
            peer_behind: PeerBehind::Unknown { from: 1 },
            peer_record: super::adaptive::PeerRecord::Unasked,
            reigned: None,
            last_resync: 0,
            flush_after_resync: 0,
            verify_asked: 0,
            adoption: Adoption::None,
            app_busy: false,
            last_app: None,
        }
    }

    pub fn repl(&self) -> Replication {
        match &self.activity {
            Activity::Idle if self.verify_target.is_some() => Replication::VerifyTarget,
            Activity::Idle => Replication::Established,
            Activity::Source(_) => Replication::SyncSource,
            Activity::Target { .. } => Replication::SyncTarget,
            Activity::Verify(_) => Replication::VerifySource,
            Activity::Ahead(_) => Replication::Ahead,
            Activity::Behind => Replication::Behind,
        }
    }

    pub fn progress(&self) -> Option<Progress> {
        match &self.activity {
            Activity::Source(s) => Some(s.progress),
            Activity::Target { progress, .. } => Some(*progress),
            Activity::Verify(v) => Some(v.progress),
            Activity::Idle => self.verify_target,
            _ => None,
        }
    }

    /// Nothing in flight either way and no resync or verify under way.
    pub fn idle(&self) -> bool {
        self.out.is_empty() && self.received == self.done && matches!(self.activity, Activity::Idle)
    }

    /// Numbers an operation.
    pub fn submit(
        &mut self,
        kind: OutKind,
        need: Need,
        range: Option<(u64, u64)>,
        bytes: u64,
        now: Time,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let behind_probes = self.probe_bytes > 0;
        self.in_flight_bytes += bytes;
        if matches!(kind, OutKind::Bench(_)) {
            self.probe_bytes += bytes;
            self.probes_out += 1;
        }
        self.out.insert(seq, Out { kind, need, range, bytes, sent: now, behind_probes });
        seq
    }

    /// An operation leaves the flight (acknowledged or failed).
    pub fn landed(&mut self, o: &Out) {
        self.in_flight_bytes -= o.bytes;
        if matches!(o.kind, OutKind::Bench(_)) {
            self.probe_bytes -= o.bytes;
            self.probes_out -= 1;
        }
    }

    /// Why the peer must be declared lost now, if it must (`applying`: the
    /// peer's operations this node's disk has not completed).
    pub fn overdue(&self, now: Time, cfg: &CoreConfig, applying: usize) -> Option<String> {
        if now.saturating_sub(self.last_heard) >= cfg.timeout {
            let why = format!("no sign of life from the peer for {:?}", cfg.timeout);
            // This node's own disk may be what keeps the peer's frames
            // unread (the link's reader waits while the store lane is
            // full): the reason names it, by name, as the peer reads it too.
            return Some(if applying == 0 {
                why
            } else {
                format!(
                    "{why}, while {}'s disk has operations of {} not completed",
                    cfg.me, cfg.peer
                )
            });
        }
        if self.phase == Phase::Handshake && now.saturating_sub(self.started) >= cfg.timeout {
            return Some("the peer did not finish the handshake".into());
        }
        if let super::adaptive::PeerRecord::Asked(at) = self.peer_record {
            if now.saturating_sub(at) >= cfg.timeout {
                return Some(format!(
                    "the peer did not confirm within {:?} that its record says Outdated (adaptive \
                     mode went Ahead; its metadata device may hang)",
                    cfg.timeout
                ));
            }
        }
        let outdate_wait = outdate_wait(cfg);
        if self.outdating.is_some_and(|at| now.saturating_sub(at) >= outdate_wait) {
            return Some(format!(
                "disconnected by the operator; the peer did not confirm within {outdate_wait:?} \
                 that it is Outdated (it may still say UpToDate)"
            ));
        }
        // A peer that answers pings but completes nothing (a hung disk, a
        // stuck apply) is lost after `timeout` without progress; one that
        // completes operations slowly (a slow link or disk with a backlog
        // older than `timeout`) is waited for, up to `KO_COUNT` times
        // `timeout` for any one operation (as DRBD's ko-count).
        if let Some((seq, o)) = self.out.iter().next() {
            if now.saturating_sub(o.sent.max(self.progress_at)) >= cfg.timeout {
                return Some(format!(
                    "the peer answers but has completed no operation for {:?}",
                    cfg.timeout
                ));
            }
            if now.saturating_sub(o.sent) >= cfg.timeout * KO_COUNT {
                return Some(format!(
                    "the peer has not completed operation {seq} for {:?} ({KO_COUNT} x timeout)",
                    cfg.timeout * KO_COUNT
                ));
            }
        }
        None
    }

    pub fn ping_due(&mut self, now: Time, cfg: &CoreConfig) -> Option<u64> {
        if self.ping_out.is_some() || now.saturating_sub(self.last_ping) < cfg.ping_interval {
            return None;
        }
        let id = self.next_ping_id;
        self.next_ping_id += 1;
        self.ping_out = Some((id, now));
        self.last_ping = now;
        Some(id)
    }

    /// A pong: the round trip measured (None: not the ping awaited).
    pub fn pong(&mut self, id: u64, now: Time) -> Option<Duration> {
        let (want, sent) = self.ping_out?;
        if want != id {
            return None;
        }
        self.ping_out = None;
        let sample = now.saturating_sub(sent);
        self.rtt = Some(match self.rtt {
            None => sample,
            Some(s) => (s * 7 + sample) / 8,
        });
        Some(sample)
    }

    /// Resync budget: `resync_rate` bytes/s while the application writes
    /// or waits (`app_waiting`), and for a second after; unlimited when it
    /// is idle.
    pub fn refill(&mut self, now: Time, cfg: &CoreConfig, app_waiting: bool) {
        let dt = now.saturating_sub(self.last_refill).as_secs_f64();
        self.last_refill = now;
        if self.app_busy || app_waiting {
            self.last_app = Some(now);
        }
        if self.last_app.is_some_and(|t| now.saturating_sub(t) < Duration::from_secs(1)) {
            let cap = cfg.resync_rate as f64 * 0.1;
            let t = if self.tokens.is_finite() { self.tokens } else { 0.0 };
            self.tokens = (t + dt * cfg.resync_rate as f64).min(cap.max(1.0));
        } else {
            self.tokens = f64::INFINITY;
        }
        self.app_busy = false;
    }

    pub fn next_deadline(&self, cfg: &CoreConfig) -> Time {
        let mut t = self.last_heard + cfg.timeout;
        if self.phase == Phase::Handshake {
            t = t.min(self.started + cfg.timeout);
        }
        if let Some(at) = self.outdating {
            t = t.min(at + outdate_wait(cfg));
        }
        if let super::adaptive::PeerRecord::Asked(at) = self.peer_record {
            t = t.min(at + cfg.timeout);
        }
        if let Some((_, o)) = self.out.iter().next() {
            t = t.min(o.sent + cfg.timeout);
        }
        if self.ping_out.is_none() {
            t = t.min(self.last_ping + cfg.ping_interval);
        }
        if matches!(self.activity, Activity::Source(_)) && self.tokens <= 0.0 {
            t = t.min(self.last_refill + Duration::from_millis(10));
        }
        t
    }
}

/// How long `disconnect` on a Primary waits for its Secondary to confirm
/// it is Outdated (a round trip and one metadata update): at most 2 s, so
/// a `disconnect` from a peer that reads nothing (its disk stalled, its
/// lane full) still takes effect within seconds, not after `timeout`.
pub fn outdate_wait(cfg: &CoreConfig) -> Duration {
    cfg.timeout.min(Duration::from_secs(2))
}
