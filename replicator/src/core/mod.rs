//! The node core: every decision a replicated node makes, as a sans-IO state
//! machine (shared/DESIGN.md "The node core and how it is proven").
//!
//! Events go in — an application request ([`Core::write`], [`Core::flush`],
//! ...), a peer frame ([`Core::handle_frame`]), a link coming up or going
//! down, an I/O completion ([`Core::handle_io`]), a timer
//! ([`Core::handle_timeout`]), an operator verb ([`Core::promote`], ...) —
//! and actions come out of [`Core::poll_action`]: store and metadata I/O,
//! frames to send, links to close, replies. No sockets, threads, locks or
//! clocks: the tokio shell (`crate::node`) and the simulator (`twinblock-sim`)
//! drive the same code.
//!
//! Where things live:
//! - [`write`]: the Primary's write path (admission, activity log, replies);
//! - [`apply`]: the receiving side (peer operations applied in order, acks);
//! - [`handshake`]: hello, bitmap exchange and the sync decision;
//! - [`resync`]: SyncSource/SyncTarget; [`verify`]: online verify;
//! - [`persist`]: metadata, bitmap pages and activity-log journal updates;
//! - [`session`]: one peer session's sequencing and liveness;
//! - [`al`]: the activity log's bookkeeping; [`types`]: the vocabulary;
//! - [`verbs`]: the operator's verbs; [`query`]: states and status.

mod adaptive;
pub mod al;
mod apply;
mod bench;
mod declared;
mod disk_timeout;
pub(crate) mod handshake;
mod persist;
mod promoted_hook;
mod promotion;
mod query;
pub mod quorum;
pub mod rebuild_backoff;
mod resync;
pub mod session;
mod stop;
#[cfg(test)]
mod tests;
pub mod types;
mod verbs;
mod verify;
mod write;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;

pub use bench::{ProbeMode, ENOTCONN};
pub use quorum::{
    ControllerConfig, ControllerStatus, Hook, NoQuorum, ReadGate, Standing, VoteKind, VoteReply,
    VoteRequest,
};
pub use types::*;

/// Why a session ended when the peer ended its stream (the shell's words;
/// the peer's own reason, which follows, replaces them).
pub const PEER_FINISHED: &str = "the peer closed the link";

use crate::bitmap::Bitmap;
use crate::config::Protocol;
use crate::protocol::genid::{GenIds, NEVER_SYNCED};
use crate::protocol::wire::{DiskState, Lost, Message, Op, Role};
use al::AlState;
use session::{Phase, Session};

/// What an I/O the core issued was for.
#[derive(Debug, Clone)]
enum IoFor {
    /// An application operation's local part.
    App(ReqId),
    /// A bench probe's local scratch write.
    Bench(ReqId),
    /// A peer operation applied here.
    Apply(apply::ApplyIo),
    /// A flush so that activity-log extents may leave (write epoch covered).
    AlFlush {
        epoch: u64,
    },
    /// A resync or verify read.
    SourceRead {
        sid: SessionId,
    },
    Meta(MetaRecord),
    Bitmap(Vec<(u64, Vec<u64>)>),
    Al,
}

/// An application request waiting to be admitted (FIFO: admission order is
/// the local apply order and the peer's).
#[derive(Debug, Clone)]
struct AppOp {
    req: ReqId,
    op: Op,
    /// Submitted to a Primary: a FLUSH then covers the peer too, so it
    /// fails like the writes queued with it if the role is gone when it
    /// is admitted (a Secondary's FLUSH is only its own).
    primary: bool,
}

/// The peer part of an admitted application operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerPart {
    /// Nothing to wait for (no session, or protocol A, or a read-only op).
    Free,
    /// Waiting for the peer (sequence number).
    Waiting(u64),
    /// The peer did what the mode asks.
    Confirmed,
    /// The peer may lack it: released once the new generation and the
    /// bitmap that record it are durable.
    Lost,
    /// Lost, and the loss recorded: answered on the local part alone
    /// (which a Failed disk cannot give).
    Released,
}

/// An admitted application operation.
#[derive(Debug, Clone)]
struct Pending {
    local: Option<Result<(), IoError>>,
    /// When the local part completed (adaptive mode: from then on the
    /// reply waits for the peer alone).
    local_at: Option<Time>,
    peer: PeerPart,
    extents: Vec<u64>,
    range: Option<(u64, u64)>,
    /// FUA: the reply promises the data durable.
    fua: bool,
    /// The peer held a complete copy (UpToDate) when it confirmed: only
    /// then may it alone keep the reply's promise (this node's disk
    /// detached). A resync target holds an incomplete one.
    peer_whole: bool,
}

impl Pending {
    /// Its answer is known: only the reply gate (quorum) may still hold
    /// it. Both parts are done, or the local part failed, or (`detached`:
    /// this node's disk Failed) the peer's part alone decides: a detached
    /// disk's answer counts for nothing, so a write it never completes (a
    /// disk that hangs after an error) is answered without it.
    fn decided(&self, detached: bool) -> bool {
        let peer_done =
            matches!(self.peer, PeerPart::Free | PeerPart::Confirmed | PeerPart::Released);
        match self.local {
            Some(Err(_)) => true,
            Some(Ok(())) => peer_done,
            None => detached && peer_done,
        }
    }
}

/// The node core. See the module documentation.
pub struct Core {
    cfg: CoreConfig,
    rng: u64,
    now: Time,
    role: Role,
    disk: DiskState,
    gen: GenIds,
    fresh: bool,
    promoted_at: u64,
    /// Promotions asked of the peer so far (`promotion.rs`), and the last
    /// one with its answer once it came.
    next_ask: u64,
    asked_last: Option<(u64, Option<Result<(), Refused>>)>,
    /// [`MetaRecord::lost_acked`]: the generation this node's data was
    /// rebuilt from after its disk failed holding acknowledged writes the
    /// peer lacked (0: none).
    lost_acked: u64,
    /// See [`MetaRecord::told`].
    told: Vec<u64>,
    /// The current generation, which this process started, holds no write
    /// or FLUSH it answered OK yet ([`VoteRequest::unacked`]); false
    /// after a start (not known then).
    unacked_current: Option<u64>,
    /// The session whose Primary's `Outdate` this node answers once its
    /// record saying Outdated is durable (`OutdateDone`).
    pub(crate) outdate_ack: Option<SessionId>,
    /// See [`MetaRecord::full_sync`].
    pub(crate) full_sync: u64,
    /// See [`MetaRecord::forced_base`] (meant while `gen.bitmap` is it:
    /// [`Core::base_forced`]).
    pub(crate) forced_base: u64,
    /// This process's boot ([`Recovered::boot`]), saved in the record.
    boot: u64,
    /// See [`MetaRecord::cache_lost`] and [`MetaRecord::received_lost`].
    lost: Lost,
    /// See [`MetaRecord::received`].
    received: bool,
    /// See [`MetaRecord::async_acks`] (A, B or C).
    log_protocol: Protocol,
    /// The latest `promoted_at` the peer's hellos gave (0: none): a
    /// promotion here is numbered after it, so "the peer was Primary since
    /// this node's promotion" is read off the two numbers.
    peer_promoted_at: u64,
    /// Whether the node wants a peer link, or stays StandAlone and why.
    linking: Linking,
    split_brain: bool,
    discard: bool,
    dirty: Bitmap,
    al: AlState,
    session: Option<Session>,
    app: VecDeque<AppOp>,
    /// User operations that have left `app` (admitted or failed): bench
    /// probes keep their place behind the ones that arrived before them.
    app_admitted: u64,
    /// Ordered by request (the order they were issued): whatever walks it
    /// answers or reports in that order, the same in every process (a
    /// simulator seed replays alike).
    pending: BTreeMap<ReqId, Pending>,
    /// Some entry of `pending` may be [`PeerPart::Lost`]: set wherever one
    /// is marked so, cleared by `release_lost` when it finds none. Spares
    /// the scan of every pending operation on every event (a profile of
    /// 4k writes at queue depth 32 found it the core's largest cost).
    maybe_lost: bool,
    /// Some completed entry of `pending` may have its reply held until
    /// quorum returns (the controller): set where `try_reply` holds one,
    /// cleared by `release_held` before it retries them. Spares the scan
    /// of every pending operation on every event of a Primary with a
    /// controller.
    maybe_held: bool,
    /// Peer operations received, not yet issued to the store (in order;
    /// they outlive the session that brought them).
    incoming: VecDeque<(SessionId, u64, Op)>,
    /// Peer operations issued to the store, not yet complete.
    applying: usize,
    /// The peer's writes (writes, trims, zeroes) received and not yet
    /// completed here, queued or issued: what a protocol-A node would lose
    /// were its process to stop now ([`Core::behind_async_primary`] for a
    /// Secondary, [`Core::received_lost_recorded`] once promoted).
    unwritten_peer_writes: usize,
    ios: HashMap<IoId, IoFor>,
    /// Store operations in flight, oldest first (with a `disk-timeout`).
    in_flight: disk_timeout::InFlight,
    next_io: IoId,
    /// Store writes emitted so far, and how many of them are durable.
    write_epoch: u64,
    flushed_epoch: u64,
    /// The write epoch when this node was last promoted: the record that
    /// makes it the last Primary (`promoted_at`) is saved only once what
    /// it held then is durable (`persist_pump`).
    promo_epoch: u64,
    /// The disk state this node's last promotion started from (not
    /// UpToDate: the promotion declared the data good, as `--force` does).
    promoted_from: DiskState,
    /// What a `primary --force` whose record is not saved yet declared,
    /// and what it replaced (`declared.rs`).
    declared: Option<declared::Declared>,
    al_flush: Option<IoId>,
    /// Application flushes in flight: the write epoch each covers.
    flush_epochs: HashMap<ReqId, u64>,
    /// Resync/verify reads outstanding: application writes wait (a chunk is
    /// read and numbered with no write between).
    barrier: usize,
    p: persist::PersistState,
    actions: VecDeque<Action>,
    counters: CoreCounters,
    last_error: Option<String>,
    /// Why the local disk was detached: `status` shows it while the disk
    /// is `Failed` and nothing newer is in `last_error` (a handshake clears
    /// that one, and a detached disk ends the session).
    disk_error: Option<String>,
    /// The last hook that failed, until that hook succeeds or a demotion
    /// does: `status` shows it while nothing newer is in `last_error` (a
    /// handshake clears that one, and a Primary whose `on_promote` failed
    /// showed nothing of it once its peer came back, the service still not
    /// running; review, helper-160).
    hook_error: Option<(Hook, String)>,
    /// Failed rebuilds in a row and the next one's time (`rebuild_backoff`).
    rebuild: rebuild_backoff::RebuildBackoff,
    /// Bench scratch writes that failed here, and probes the peer's
    /// scratch area failed: warned of every 10 s, not each time.
    scratch_failed: types::LogEvery,
    peer_scratch_failed: types::LogEvery,
    /// The session whose loss `last_error` tells (a peer's late reason
    /// is about that one or none).
    last_lost: Option<SessionId>,
    /// The failover controller's state (None: no controller).
    ctl: Option<quorum::Ctl>,
    /// This process started a generation the peer does not have since it
    /// was last connected (see `diverge`).
    separated: bool,
    /// Adaptive mode's backoff (outlives sessions).
    backoff: adaptive::Backoff,
    /// This process acknowledged a write while apart from the peer (since
    /// the last handshake): such changes are never discarded by a
    /// deposition (a forgetful witness may have promoted a stale peer).
    acked_apart: bool,
    /// Bench probes waiting for room in protocol A's lag budget.
    probes: VecDeque<bench::Probe>,
    /// The bench running here, if one is (`bench_begin`/`bench_end`).
    bench_run: bench::BenchRun,
    /// The node is stopping (`down`, SIGTERM): what a bench is told.
    stopping: bool,
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Core {
    /// A core for the metadata the shell found. `seed` feeds the generation
    /// ids (random in production, the seed's in the simulator). The actions
    /// of recovery (an activity log to fold into the bitmap, new metadata to
    /// write) are queued at once.
    pub fn new(cfg: CoreConfig, rec: Recovered, now: Time, seed: u64) -> Core {
        let mut dirty = Bitmap::with_block(cfg.size, cfg.block);
        if let Some(words) = &rec.bitmap {
            dirty.merge_words(words);
        }
        if rec.meta.as_ref().is_some_and(|m| m.pending.is_some()) {
            // The process stopped between a forced promotion's two
            // records (`declared.rs`): the force was not confirmed, and
            // nothing was acknowledged on it. Its first record's save may
            // have hung, `primary` been told it failed and the force
            // undone in memory.
            tracing::warn!(
                "the metadata holds a `primary --force` whose record was never confirmed (the \
                 process stopped while it was saved): the node starts on the record before \
                 that force"
            );
        }
        let at_start = |m: &MetaRecord| match cfg.plant {
            Plant::ForgetPending => MetaRecord { pending: None, ..m.clone() },
            _ => m.at_start().clone(),
        };
        let mut meta = rec.meta.as_ref().map(at_start).unwrap_or(MetaRecord {
            disk: DiskState::Inconsistent,
            fresh: rec.disk_created,
            gen: GenIds::never_synced(),
            promoted_at: 0,
            lost_acked: 0,
            told: Vec::new(),
            full_sync: 0,
            forced_base: 0,
            boot: rec.boot,
            cache_lost: false,
            received_lost: false,
            received: false,
            async_acks: ack_kind(cfg.protocol) == Protocol::A,
            receipt_acks: ack_kind(cfg.protocol) == Protocol::B,
            behind_async_primary: false,
            pending: None,
        });
        // The protocol the activity log's writes were acknowledged under:
        // the record's while the log holds extents, else this start's.
        let log_protocol = if rec.meta.is_some() && !rec.al.is_empty() {
            log_protocol_of(&meta)
        } else {
            ack_kind(cfg.protocol)
        };
        let durable_meta = rec.meta.clone();
        if meta.boot != 0
            && rec.boot != 0
            && meta.boot != rec.boot
            && !rec.al.is_empty()
            && !meta.cache_lost
            && (log_protocol != Protocol::A || meta.received)
        {
            // Written during another boot, with writes in the activity log
            // (extents leave it only once flushed; a clean stop empties
            // it): what was not flushed then may be gone (a power loss),
            // though the record says nothing of it. Not in protocol A: there
            // the peer need not hold what this node acknowledged (a write
            // is answered before the peer has it), so ranked below its peer
            // this node's durable writes (FUA, flushed) were overwritten by
            // the peer's older copies (simulator seed 7205678); an unflushed
            // write lost with the page cache is what A, like a local disk,
            // allows. Unless it held writes received from the peer: those
            // the peer has (a Secondary's lost copy of a FUA write, promoted,
            // overwrote the Primary's: review). The protocol is the one the
            // record was saved under, not this start's (review: a C Primary
            // restarted under A overwrote its peer's copies).
            tracing::warn!(
                "the machine restarted since this node's data was written: writes it had not \
                 flushed may be lost; its peer is the better resync source on one generation, \
                 and the failover controller promotes it only once it has met its peer"
            );
            meta.cache_lost = true;
        } else if log_protocol == Protocol::B
            && rec.meta.is_some()
            && meta.received
            && !rec.al.is_empty()
            && !meta.cache_lost
            && !meta.received_lost
        {
            // Protocol B acknowledges a write on the peer's receipt: a
            // Secondary whose process stopped with writes in its activity
            // log may have held some received and not yet written, which
            // only the Primary now has: the peer is the better source on
            // one generation (simulator seed 2200234), unless the peer lost
            // its page cache, which is worse (its own activity log may be
            // older writes of this node's, as a Primary: review). Not a
            // node that held no received writes (a Primary, a demoted one):
            // its own writes were in the page cache, which a process crash
            // keeps (flagged, it became the target of a peer that then lost
            // power, seed 2201685 and review).
            tracing::warn!(
                "protocol B: this Secondary stopped with writes in its activity log; writes it \
                 had received but not written are gone: its peer is the better resync source \
                 on one generation, and the failover controller promotes it only once it has \
                 met its peer"
            );
            meta.received_lost = true;
        }
        if meta.behind_async_primary
            && meta.disk == DiskState::UpToDate
            && !meta.cache_lost
            && cfg.plant != Plant::ForgetAsyncPrimary
        {
            // The process stopped (with the link, or before the link's
            // loss was saved) while its peer was a protocol-A Primary, or
            // with writes of that peer's still to write: writes the peer
            // answered may never have reached this node. So the link's
            // loss leaves a running node (`write.rs`). (Not a node that
            // lost its page cache with writes received: flagged above, it
            // is held back as surely, and its peer stays the better source
            // on one generation, `primary --force` included; made
            // Consistent, a forced promotion started a generation and
            // overwrote its peer's durable writes: `core::tests::resync`
            // `an_a_secondary_back_from_a_power_loss_with_received_writes_is_not_the_source`.)
            tracing::warn!(
                "protocol A: this node stopped while its peer was Primary, or with writes of its \
                 peer's still to write; writes the peer acknowledged may not have reached it: disk \
                 Consistent (`connect` brings them, `primary --force` promotes it as it is)"
            );
            meta.disk = DiskState::Consistent;
        }
        if rec.meta.is_some() && rec.disk_created {
            // The disk is new but its metadata is not: the data is gone, as
            // if the disk had failed. The generation ids stay: they say
            // what this node acknowledged (a resync from a peer that lacks
            // it leaves this node Outdated, see `handshake::unusable_side`).
            meta.disk = DiskState::Failed;
            meta.fresh = false;
            // (What it told the witness is gone with it, and any full
            // sync it was part of.)
            meta.told.clear();
            meta.full_sync = 0;
        }
        let mut al = AlState::new(cfg.al_extents);
        for &e in &rec.al {
            // (An extent whose offset does not fit in 64 bits, read from a
            // damaged log, covers no block: `mark` clips the rest.)
            if let Some(offset) = e.checked_mul(cfg.extent) {
                dirty.mark(offset, cfg.extent);
            }
            al.durable.insert(e);
        }
        // The page cache may still hold the previous process's unflushed
        // writes in those extents: they leave the log only after a flush
        // (write epoch 1 is the previous incarnation's).
        al.wrote(&rec.al, 1);
        let mut core = Core {
            rng: seed,
            now,
            role: Role::Secondary,
            disk: meta.disk,
            gen: meta.gen,
            fresh: meta.fresh,
            promoted_at: meta.promoted_at,
            next_ask: 0,
            asked_last: None,
            lost_acked: meta.lost_acked,
            told: meta.told.clone(),
            unacked_current: None,
            outdate_ack: None,
            full_sync: meta.full_sync,
            forced_base: meta.forced_base,
            boot: rec.boot,
            lost: if meta.cache_lost {
                Lost::Cache
            } else if meta.received_lost {
                Lost::Received
            } else {
                Lost::None
            },
            received: meta.received,
            log_protocol,
            peer_promoted_at: 0,
            linking: Linking::Wanted,
            split_brain: false,
            discard: false,
            dirty,
            al,
            session: None,
            app: VecDeque::new(),
            app_admitted: 0,
            pending: BTreeMap::new(),
            maybe_lost: false,
            maybe_held: false,
            incoming: VecDeque::new(),
            applying: 0,
            unwritten_peer_writes: 0,
            ios: HashMap::new(),
            in_flight: Default::default(),
            next_io: 1,
            write_epoch: 1,
            flushed_epoch: 0,
            promo_epoch: 0,
            promoted_from: DiskState::UpToDate,
            declared: None,
            al_flush: None,
            flush_epochs: HashMap::new(),
            barrier: 0,
            p: persist::PersistState::new(durable_meta),
            actions: VecDeque::new(),
            counters: CoreCounters::default(),
            last_error: None,
            hook_error: None,
            disk_error: None,
            rebuild: Default::default(),
            scratch_failed: Default::default(),
            peer_scratch_failed: Default::default(),
            last_lost: None,
            ctl: cfg.controller.clone().map(|c| quorum::Ctl::new(c, now)),
            separated: false,
            backoff: adaptive::Backoff::default(),
            acked_apart: false,
            probes: VecDeque::new(),
            bench_run: Default::default(),
            stopping: false,
            cfg,
        };
        if !rec.al.is_empty() {
            // The recovered extents' bits must be saved before the log
            // forgets them; then the log empties. What the page cache
            // holds there (a process crash keeps it) is not durable yet:
            // the extents leave only after a flush, or a resync that
            // clears their bits could leave a later power loss uncovered.
            core.p.all_pages_dirty(&core.dirty);
            core.p.al_trim_wanted = true;
            core.write_epoch = 1;
            core.al.wrote(&rec.al, 1);
        }
        core.pump();
        core
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// The record as it should be on disk now.
    fn meta_record(&self) -> MetaRecord {
        MetaRecord {
            disk: self.disk,
            fresh: self.fresh,
            gen: self.gen,
            promoted_at: self.promoted_at,
            lost_acked: self.lost_acked,
            told: self.told.clone(),
            full_sync: self.full_sync,
            forced_base: self.forced_base_saved(),
            boot: self.boot,
            cache_lost: self.lost == Lost::Cache,
            received_lost: self.received_lost_recorded(),
            received: self.received,
            async_acks: self.log_protocol == Protocol::A,
            receipt_acks: self.log_protocol == Protocol::B,
            behind_async_primary: self.behind_async_primary(),
            pending: self.declared_before(),
        }
    }

    /// See [`MetaRecord::behind_async_primary`]: what the record says.
    /// Also while writes the peer sent are still to be written here,
    /// whatever the peer's role now: a peer that said it is Secondary (a
    /// handover, `down`) sent every write it answered before, but those
    /// received and not yet written are gone if this process stops (before,
    /// the record was cleared at once, and such a node came back UpToDate
    /// without them: a known limit until 2026-12-06; `core::tests::protocol_a`
    /// `an_a_secondary_killed_with_a_demoted_peers_writes_unwritten_comes_back_consistent`).
    /// (Promoted meanwhile, the node says so by [`Core::received_lost_recorded`].)
    pub(crate) fn behind_async_primary(&self) -> bool {
        self.cfg.protocol == Protocol::A
            && self.role == Role::Secondary
            && self.disk == DiskState::UpToDate
            && (self.unwritten_peer_writes > 0
                || self.session.as_ref().is_some_and(Self::peer_reigns))
    }

    /// What the record's `received_lost` says: this node lost writes
    /// received and not written (protocol B, found at start), or would
    /// were its process to stop now: a protocol-A Primary promoted with
    /// writes of its peer's still to write (a handover). Such a node comes
    /// back held back, its peer the better source on one generation (as in
    /// B); else, the last Primary, it was the resync's source and its older
    /// copies overwrote what its peer had acknowledged (review, helper-92:
    /// `core::tests::protocol_a`
    /// `an_a_node_promoted_with_its_peers_write_queued_then_killed_is_held_back`).
    /// Its own writes wait for the record that clears it (`write::admit_app`'s
    /// `meta_wait`): come back so, the peer's older copies would replace them.
    fn received_lost_recorded(&self) -> bool {
        self.lost == Lost::Received || self.a_primary_with_peer_writes_unwritten()
    }

    /// A protocol-A Primary promoted (a handover) while writes its peer
    /// sent as Primary are still to be written here: its record says it
    /// lost them ([`Core::received_lost_recorded`]) and it takes no link
    /// until they land ([`Core::link_refused`]).
    pub(crate) fn a_primary_with_peer_writes_unwritten(&self) -> bool {
        self.cfg.protocol == Protocol::A
            && self.role == Role::Primary
            && self.unwritten_peer_writes > 0
    }

    /// A protocol-A Secondary, UpToDate, whose peer in session `s` is
    /// Primary (as its hello or a State said) or was granted a promotion:
    /// writes the peer answered may not be here. What the link's loss
    /// judges (`write.rs`; the writes already received land after it).
    pub(crate) fn behind_async_primary_in(&self, s: &session::Session) -> bool {
        self.cfg.protocol == Protocol::A
            && self.role == Role::Secondary
            && self.disk == DiskState::UpToDate
            && Self::peer_reigns(s)
    }

    /// The peer in session `s` is Primary or was granted a promotion.
    fn peer_reigns(s: &session::Session) -> bool {
        s.peer.role == Role::Primary || s.peer_promoting || s.granted_promotion
    }

    /// It may have lost unflushed writes with its machine's page cache.
    #[cfg(test)]
    pub(crate) fn cache_lost(&self) -> bool {
        self.lost == Lost::Cache
    }

    /// What it may have lost since its data was last reconciled.
    #[cfg(test)]
    pub(crate) fn lost(&self) -> Lost {
        self.lost
    }

    /// Writes received from the peer are still to be written here (queued,
    /// or with the store).
    fn peer_writes_pending(&self) -> bool {
        self.peer_writes_queued() || self.applying > 0
    }

    /// Writes received from the peer wait in the receive queue, not yet
    /// issued to the store: what this node reads of its own data (for a
    /// client, a resync or a verify) would not hold them yet.
    fn peer_writes_queued(&self) -> bool {
        !self.incoming.is_empty()
    }

    /// [`MetaRecord::received`] and the log's protocol label as they should
    /// be: `received` is set before the first peer write is taken in
    /// (`apply_pump`) and cleared here once the node is Primary with none
    /// pending (a demoted Primary's log then holds only its own writes,
    /// until it takes in one of its peer's).
    fn settle_record_flags(&mut self) {
        self.settle_declared();
        if self.received && self.role == Role::Primary && !self.peer_writes_pending() {
            self.received = false;
        }
        // The log's label follows the configuration once the log is empty
        // (what it held was judged by the protocol it was written under).
        let now = ack_kind(self.cfg.protocol);
        if self.log_protocol != now && self.al.durable.is_empty() && self.al.saving.is_none() {
            self.log_protocol = now;
        }
        // A base the force set is done with once the bitmap's base is
        // another (a sync ended it, the data was replaced): a later base
        // that names the same generation is a plain one, this data having
        // grown from it (else a node forced, that took its peer's data
        // again and then wrote alone, said its data did not descend from
        // the peer's: review, helper-145).
        if self.forced_base != 0 && self.forced_base != self.gen.bitmap {
            self.forced_base = 0;
        }
    }

    /// The bitmap's base only names the peer's generation: this data does
    /// not descend from it ([`MetaRecord::forced_base`]).
    pub(crate) fn base_forced(&self) -> bool {
        self.forced_base != 0 && self.forced_base == self.gen.bitmap
    }

    /// [`MetaRecord::forced_base`] as the record keeps it: only while it
    /// is the bitmap's base.
    fn forced_base_saved(&self) -> u64 {
        if self.base_forced() {
            self.forced_base
        } else {
            0
        }
    }

    /// `m` is the metadata record in memory (without building one: this
    /// is asked at every event).
    pub(crate) fn meta_is(&self, m: &MetaRecord) -> bool {
        m.disk == self.disk
            && m.fresh == self.fresh
            && m.gen == self.gen
            && m.promoted_at == self.promoted_at
            && m.lost_acked == self.lost_acked
            && m.full_sync == self.full_sync
            && m.forced_base == self.forced_base_saved()
            && m.boot == self.boot
            && m.cache_lost == (self.lost == Lost::Cache)
            && m.received_lost == self.received_lost_recorded()
            && m.received == self.received
            && m.async_acks == (self.log_protocol == Protocol::A)
            && m.receipt_acks == (self.log_protocol == Protocol::B)
            && m.behind_async_primary == self.behind_async_primary()
            && m.pending.is_some() == self.declared_unconfirmed()
            // (Element by element: `Vec`'s equality calls `memcmp`, a
            // twentieth of a link thread's time at 4 KiB QD32, this being
            // asked several times per event.)
            && m.told.len() == self.told.len()
            && m.told.iter().zip(&self.told).all(|(a, b)| a == b)
    }

    /// This node's data is being replaced by data that did not grow from
    /// it (a resync from a peer on another line, a lost disk, an
    /// adoption): it no longer descends from the generations it told the
    /// witness. (A catch-up from a Primary that went Ahead of this node's
    /// generation, or a resync from a peer whose history holds it, keeps
    /// them: that data grew from this node's.)
    pub(crate) fn data_from_peer(&mut self) {
        self.told.clear();
    }

    /// The data was rebuilt from an older generation than this node
    /// acknowledged (its disk failed first): Outdated until an operator
    /// accepts the loss.
    pub(crate) fn lost_pinned(&self) -> bool {
        self.lost_acked != 0 && self.lost_acked == self.gen.current
    }

    /// The peer is Primary on the very generation this node is pinned to:
    /// an operator (`primary`, `primary --force`) or the controller made
    /// that data the truth, so the loss is accepted; this node follows.
    /// Returns whether it was pinned.
    pub(crate) fn unpin_for_primary_peer(&mut self, peer_current: u64) -> bool {
        if !self.lost_pinned() || peer_current != self.lost_acked {
            return false;
        }
        tracing::warn!(
            "the peer is Primary on the data this node was rebuilt from: the writes lost with \
             this node's failed disk are given up"
        );
        self.lost_acked = 0;
        true
    }

    /// The peer's current generation, if it is Primary on a running session.
    pub(crate) fn primary_peer_current(&self) -> Option<u64> {
        self.session
            .as_ref()
            .filter(|s| s.phase == Phase::Running && s.peer.role == Role::Primary)
            .map(|s| s.peer.current)
    }

    fn disk_usable(&self) -> bool {
        !matches!(self.disk, DiskState::Failed | DiskState::Diskless)
    }

    fn random_id(&mut self) -> u64 {
        loop {
            let id = splitmix(&mut self.rng);
            if id > NEVER_SYNCED {
                return id;
            }
        }
    }

    fn io(&mut self, what: IoFor) -> IoId {
        let io = self.next_io;
        self.next_io += 1;
        self.ios.insert(io, what);
        self.op_issued(io);
        io
    }

    /// Issues a flush of every write issued so far (its completion raises
    /// `flushed_epoch` to this write epoch), unless one is out already.
    pub(crate) fn flush_written(&mut self) {
        if self.al_flush.is_none() {
            let epoch = self.write_epoch;
            let io = self.store(IoFor::AlFlush { epoch }, StoreOp::Flush);
            self.al_flush = Some(io);
        }
    }

    fn store(&mut self, what: IoFor, op: StoreOp) -> IoId {
        if matches!(op, StoreOp::Write { .. } | StoreOp::Zero { .. }) {
            self.write_epoch += 1;
        }
        let io = self.io(what);
        self.actions.push_back(Action::Store { io, op });
        io
    }

    fn send(&mut self, msg: Message) {
        if let Some(s) = &self.session {
            self.actions.push_back(Action::Send { session: s.id, msg });
        }
    }

    fn reply(&mut self, req: ReqId, result: Result<(), ReplyError>) {
        if result.is_ok() {
            self.unacked_current = None;
        }
        self.actions.push_back(Action::Reply { req, result });
    }

    fn error(&mut self, e: String) {
        tracing::warn!("{e}");
        self.last_error = Some(e);
    }

    fn extents(&self, range: Option<(u64, u64)>) -> Vec<u64> {
        match range {
            Some((off, len)) if len > 0 => {
                (off / self.cfg.extent..=(off + len - 1) / self.cfg.extent).collect()
            }
            _ => Vec::new(),
        }
    }

    /// A local store failure: this disk is detached (Failed) and will take
    /// a full resync from the peer. Its generation ids stay: they say what
    /// this node acknowledged, so a resync from a peer that lacks some of
    /// it leaves this node Outdated (see `handshake::unusable_side`).
    fn disk_failed(&mut self, e: IoError, what: &str) {
        let disk = self.cfg.files.disk.clone();
        self.disk_failed_on(e, what, &disk);
    }

    /// [`Core::disk_failed`] for a failure of `file` (the disk's own, or
    /// a metadata file: empty, not named).
    fn disk_failed_on(&mut self, e: IoError, what: &str, file: &str) {
        if self.disk != DiskState::Failed {
            // (A timeout's `what` says it: no system text for it.)
            let text = if e == IoError::ETIMEDOUT { String::new() } else { e.describe() };
            let why = match (file, text.as_str()) {
                ("", "") => format!("local disk failed ({what}): detached"),
                ("", text) => format!("local disk failed ({what}: {text}): detached"),
                (disk, "") => format!("local disk failed ({what} on {disk}): detached"),
                (disk, text) => format!("local disk failed ({what} on {disk}: {text}): detached"),
            };
            self.disk_error = Some(why.clone());
            // The target of a resync into it: a rebuild failed (the
            // next one waits, `rebuild_backoff`).
            let target = self
                .session
                .as_ref()
                .is_some_and(|s| matches!(s.activity, session::Activity::Target { .. }));
            let wait = if target { self.rebuild_failed(&why) } else { Duration::ZERO };
            if wait.is_zero() {
                self.error(why);
            } else {
                self.error(format!(
                    "{why}; {} failed rebuilds in a row: the next one in {wait:?} (`connect` \
                     here retries now)",
                    self.rebuild_failures()
                ));
            }
            self.disk = DiskState::Failed;
            // A flush in flight may never answer (a disk that hangs); its
            // answer says nothing once the disk is declared good again,
            // and a promotion then waits for a flush issued afresh
            // (review: it waited for this one for ever).
            self.al_flush = None;
            // Detached: nothing this disk holds may go to the peer any
            // more (a resync or verify it was the source of ends); the
            // handshake of the next link sends it a full sync instead.
            if let Some(sid) = self.session_id() {
                // (With the system's reason: this node's status and the
                // peer's show this last, over the line above.)
                let why = match text.as_str() {
                    "" => format!("the local disk failed ({what}): detached"),
                    text => format!("the local disk failed ({what}: {text}): detached"),
                };
                self.close_session(sid, why);
            }
            // What waited for this disk alone is decided now: the disk may
            // never complete it (one that hangs after its first error).
            let waiting: Vec<ReqId> =
                self.pending.iter().filter(|(_, p)| p.local.is_none()).map(|(r, _)| *r).collect();
            for req in waiting {
                self.try_reply(req);
            }
        }
    }

    // ----- events -----

    /// The next action for the shell, if any. Drain after every call.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// An I/O the core asked for completed (`data`: what a read returned).
    pub fn handle_io(&mut self, now: Time, io: IoId, result: Result<Option<Bytes>, IoError>) {
        self.now = self.now.max(now);
        self.op_completed(io);
        let Some(what) = self.ios.remove(&io) else { return };
        match what {
            IoFor::App(req) => self.app_local_done(req, result.map(|_| ())),
            IoFor::Bench(req) => self.bench_local_done(req, result.map(|_| ())),
            IoFor::Apply(a) => self.apply_done(a, result),
            IoFor::AlFlush { epoch } => {
                // (A flush the disk's failure let go of is no longer ours.)
                if self.al_flush == Some(io) {
                    self.al_flush = None;
                    match result {
                        Ok(_) => self.flushed_epoch = self.flushed_epoch.max(epoch),
                        Err(e) => self.disk_failed(e, "flush"),
                    }
                }
            }
            IoFor::SourceRead { sid } => {
                self.barrier = self.barrier.saturating_sub(1);
                self.source_read_done(sid, result);
            }
            IoFor::Meta(m) => self.meta_saved(m, result.map(|_| ())),
            IoFor::Bitmap(pages) => self.bitmap_saved(pages, result.map(|_| ())),
            IoFor::Al => self.al_saved(result.map(|_| ())),
        }
        self.pump();
    }

    /// The earliest time at which [`Core::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Time> {
        let s = self.session.as_ref().map(|s| s.next_deadline(&self.cfg));
        let record = self.failed_record_deadline().filter(|_| !self.pending.is_empty());
        let rebuild = self.rebuild_retry_at();
        let bench = self.bench_budget_deadline();
        [
            s,
            self.ctl_deadline(),
            self.adaptive_deadline(),
            bench,
            self.disk_deadline(),
            record,
            rebuild,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The time, told before an operator's verb (which takes none): what
    /// the verb sends is stamped with it (a witness request's age decides
    /// when it counts as lost). Timers due by then run at the verb's own
    /// pump or at the next [`Core::handle_timeout`].
    pub fn set_clock(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    /// Timers: heartbeats, the peer's liveness, acknowledgements overdue,
    /// the resync rate.
    pub fn handle_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        let now = self.now;
        if let Some(c) = self.ctl.as_mut() {
            c.timer_at = now;
        }
        let cfg = self.cfg.clone();
        let mut lost = None;
        let mut ping = None;
        let app_waiting = !self.pending.is_empty() || !self.app.is_empty();
        if let Some(s) = &mut self.session {
            if let Some(why) = s.overdue(now, &cfg, self.applying) {
                lost = Some((s.id, why));
            } else {
                ping = s.ping_due(now, &cfg);
                s.refill(now, &cfg, app_waiting);
            }
        }
        if let Some(id) = ping {
            self.send(Message::Ping { id });
            self.ctl_ping_sent(id);
        }
        if let Some((sid, why)) = lost {
            self.close_session(sid, why);
        }
        self.check_disk_timeout();
        self.check_failed_record();
        self.retry_persist();
        self.pump();
    }

    /// The QUIC layer's RTT estimate (shown in status; adaptive mode's input).
    pub fn set_rtt(&mut self, rtt: Duration) {
        if let Some(s) = &mut self.session {
            s.rtt = Some(rtt);
        }
    }

    /// Runs every queue until nothing more can move, then sends the acks
    /// and persists what must be.
    fn pump(&mut self) {
        for _ in 0..64 {
            let before = (self.actions.len(), self.app.len(), self.incoming.len());
            self.settle_record_flags();
            self.adaptive_tick();
            self.persist_pump();
            self.apply_pump();
            self.app_pump();
            self.bench_pump();
            self.resync_pump();
            self.verify_pump();
            self.release_lost();
            self.persist_pump();
            let after = (self.actions.len(), self.app.len(), self.incoming.len());
            if before == after {
                break;
            }
        }
        self.ctl_tick();
        self.settle_promoted_hook();
        self.release_held();
        self.send_ack();
    }

    /// Tells the peer our role and disk.
    fn announce(&mut self) {
        let saved = self.saved_record().map(|m| m.gen.current);
        let current = self.gen.current;
        let Some(s) = self.session.as_mut().filter(|s| s.phase == Phase::Running) else { return };
        if s.adoption == session::Adoption::Taking {
            // Our State names the peer's generation once our record does
            // (`meta_saved` announces again).
            if saved != Some(current) {
                return;
            }
            s.adoption = session::Adoption::None;
        }
        let m = self.state_message();
        self.send(m);
    }

    fn state_message(&self) -> Message {
        Message::State {
            role: self.role,
            disk: self.disk,
            peer_out_of_sync: self.dirty.bytes(),
            fresh: self.fresh,
            // The generation this node's record holds: a peer ends its
            // bitmap's base (or its resync) on a State naming its own
            // generation, so a State sent before the record holding a new
            // one is saved (a promotion, a demotion or a hook while a
            // SyncTarget's record after SyncDone is on its way) must not
            // name it, or a crash in that window left the peer with no
            // base for the generation this node came back on (a full
            // resync; found by review). `meta_saved` announces the new
            // one.
            current: self.saved_record().map_or(self.gen.current, |m| m.gen.current),
            promoted_at: self.promoted_at,
        }
    }
}

/// When a protocol acknowledges writes, as the activity log's label: A, B
/// or C (adaptive's Ahead writes start a generation of their own, so its
/// log is C's).
fn ack_kind(p: Protocol) -> Protocol {
    match p {
        Protocol::Adaptive => Protocol::C,
        p => p,
    }
}

/// The protocol a record says its activity log was written under.
fn log_protocol_of(m: &MetaRecord) -> Protocol {
    if m.async_acks {
        Protocol::A
    } else if m.receipt_acks {
        Protocol::B
    } else {
        Protocol::C
    }
}
