//! The vocabulary of the node core: its states, the events it is fed and the
//! actions it asks its shell to perform. Nothing here does I/O.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::Protocol;
use crate::protocol::genid::{GenIds, SplitBrainPolicy};
use crate::protocol::wire::{DiskState, Message, Role};

/// Time as the core sees it: elapsed since an origin the shell chose (the
/// real shell: process start; the simulator: 0).
pub type Time = Duration;
/// An application request (an NBD command), numbered by the shell.
pub type ReqId = u64;
/// One I/O the core asked for (store or metadata), numbered by the core.
pub type IoId = u64;
/// One peer link, numbered by the shell (a new number for every connection).
pub type SessionId = u64;

/// Connection state (shared/DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Connection {
    /// Not trying to connect (operator `disconnect`, split brain, refusal).
    StandAlone,
    /// Trying to connect, or exchanging the handshake.
    Connecting,
    /// The handshake is done: data can move.
    Connected,
}

/// Whether a node wants a link to its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linking {
    /// It dials (or accepts) its peer.
    Wanted,
    /// StandAlone, and why: the reason it gives a peer it refuses.
    StandAlone(&'static str),
}

/// Replication state while connected (shared/DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Replication {
    /// Not connected.
    Off,
    /// Connected, nothing to resync: writes replicate as the mode says.
    Established,
    /// Sending out-of-sync blocks to the peer.
    SyncSource,
    /// Receiving out-of-sync blocks from the peer (disk Inconsistent).
    SyncTarget,
    /// A resync that waits (the peer is mid-handshake, or rate limited to 0).
    PausedSync,
    /// Running online verify against the peer.
    VerifySource,
    /// Answering the peer's online verify.
    VerifyTarget,
    /// Adaptive mode: acknowledging locally, tracking the peer in the bitmap.
    Ahead,
    /// Adaptive mode: the peer runs ahead of this node (Outdated).
    Behind,
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl fmt::Display for Replication {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// What the core remembers across restarts (the `meta` file). Saved
/// atomically: the shell replaces the whole record durably.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaRecord {
    pub disk: DiskState,
    /// Created by twinblock and never written since: reads as all zeroes.
    pub fresh: bool,
    pub gen: GenIds,
    /// When this node was last promoted (ms since the epoch; 0: never).
    pub promoted_at: u64,
    /// Non-zero: writes this node acknowledged were lost with its failed
    /// disk, which was then rebuilt from the peer's older generation
    /// `lost_acked`. While that is its current generation the node stays
    /// Outdated until an operator accepts the loss: `primary --force` on it
    /// (a new generation), or its peer made Primary on that generation.
    #[serde(default)]
    pub lost_acked: u64,
    /// Generations this node's data was at when it told the witness (a
    /// vote request), newest first, that its data still descends from
    /// (cleared when its data is taken from its peer). The witness keeps
    /// one of them for a node that ran alone; the saved history keeps only
    /// the last few generations, this list keeps those told (at most
    /// [`TOLD_KEPT`]).
    #[serde(default)]
    pub told: Vec<u64>,
    /// The full sync this node's data is part of, as its source or its
    /// target (the source's nonce of the connection that started it; 0:
    /// none). A target cut short that names the same one as its source
    /// resumes from the source's bitmap (which was set in full when the
    /// sync started, and cleared only where the target made the blocks
    /// durable) instead of starting over.
    #[serde(default)]
    pub full_sync: u64,
    /// The bitmap's base (`gen.bitmap`, while it is this) was set by
    /// `primary --force` on a failed or partly synced disk: it names the
    /// peer's generation so that the peer is still recognised after this
    /// node went on alone (every block is marked), but this data does not
    /// descend from it (0: none). See [`GenIds::descent`].
    #[serde(default)]
    pub forced_base: u64,
    /// The boot the record was saved during ([`Recovered::boot`]; 0:
    /// unknown).
    #[serde(default)]
    pub boot: u64,
    /// The page cache was lost (another boot) since this node's data was
    /// last reconciled with its peer: writes it had not flushed may be
    /// gone. On one generation the peer is then the better source.
    #[serde(default)]
    pub cache_lost: bool,
    /// Protocol B: writes this node had received and not written may be
    /// gone (its process stopped while it was Secondary); its page cache
    /// was not lost. On one generation the peer is then the better
    /// source, unless the peer lost its page cache.
    #[serde(default)]
    pub received_lost: bool,
    /// The node may hold writes received from its peer that are not on
    /// its disk: set, and saved, before it takes in the first peer write
    /// after it was last Primary with none pending; cleared when it is
    /// Primary with none pending. In protocol B a Secondary acknowledges
    /// writes on receipt: if its process stops with this set and writes in
    /// its activity log, some may be gone (`received_lost`). (Not its role:
    /// a demoted Primary's log holds its own writes, which a process crash
    /// keeps; flagged for them, it lost an acknowledged write, review.)
    #[serde(default)]
    pub received: bool,
    /// The activity log's writes were acknowledged under protocol A: before
    /// the peer had them, so a lost page cache does not make the peer the
    /// better source (unless `received`). Saved, so that a restart under
    /// another protocol judges the log by the one it was written under
    /// (review); the label follows the configuration only once the log is
    /// empty (review: a process restart under C relabelled an A log, and
    /// the power loss that followed was judged as C's).
    #[serde(default)]
    pub async_acks: bool,
    /// The same for protocol B (receipts acknowledged before the peer wrote
    /// them): `received_lost` is judged by it (review).
    #[serde(default)]
    pub receipt_acks: bool,
    /// Protocol A: this node is a Secondary whose peer is Primary (or was
    /// granted its promotion) on a link, or that still has writes of the
    /// peer's to write (received, not yet completed: a peer that said it
    /// is Secondary sent them before). The peer answers writes before this
    /// node has them: were this process to stop now, some may never
    /// arrive. A start that finds it set makes an UpToDate disk
    /// Consistent, as the link's loss does to a running node (`primary`
    /// then needs `--force`). Saved before this node takes in any write of that
    /// peer's (review, helper-86: both processes killed, the Secondary
    /// first, the Secondary came back UpToDate and was promoted without
    /// `--force` lacking what the old Primary had answered).
    #[serde(default)]
    pub behind_async_primary: bool,
    /// This record is a forced promotion's first, not yet confirmed
    /// (`core/declared.rs`): a start takes the record held here instead,
    /// the one on disk before the force ([`MetaRecord::at_start`]). A
    /// `primary --force` whose save hung was told it failed and undone in
    /// memory; its record could still land, and a process that stopped
    /// before its next save came back forced (a known limit until
    /// 2026-12-07). The second record, saved only while the promotion
    /// stands, drops it; no write is admitted before that one is durable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Box<MetaRecord>>,
}

impl MetaRecord {
    /// The record a start takes: this one, or for a forced promotion's
    /// unconfirmed first record the one it replaced
    /// ([`MetaRecord::pending`]).
    pub fn at_start(&self) -> &MetaRecord {
        self.pending.as_deref().unwrap_or(self)
    }

    /// Its bitmap's base only names the peer's generation
    /// ([`MetaRecord::forced_base`]).
    pub fn base_forced(&self) -> bool {
        self.forced_base != 0 && self.forced_base == self.gen.bitmap
    }
}

/// How many told generations a node keeps (older ones are dropped: a
/// claim of data whose dropped one the witness still holds is refused,
/// and waits for an operator).
pub const TOLD_KEPT: usize = 8;

/// What the shell found on the metadata volume at start.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    /// The last saved record (None: new metadata).
    pub meta: Option<MetaRecord>,
    /// The saved out-of-sync bitmap (64-bit words, block i = bit i%64 of
    /// word i/64), if any.
    pub bitmap: Option<Vec<u64>>,
    /// Extents the activity log held (a crash may have left writes in
    /// flight there).
    pub al: Vec<u64>,
    /// The store created the disk file just now (missing before).
    pub disk_created: bool,
    /// The machine's boot (a hash of its boot id; 0: unknown): a record
    /// saved during another boot means the page cache the data was
    /// written to was lost since (a power loss or a reboot).
    pub boot: u64,
}

/// Planted mistakes: the simulator proves it finds each one. Never set
/// outside the simulator (the real shell always passes `None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Plant {
    #[default]
    None,
    /// Acknowledge a protocol C write once it is sent, before the peer applied it.
    EarlyAckC,
    /// Apply writes without making their extents active in the activity log.
    SkipAlMark,
    /// Ignore the peer's bitmap at connect.
    SkipBitmapExchange,
    /// Clear resync bits when a chunk is applied, before it is durable on the target.
    ClearBeforeDurable,
    /// A Primary acknowledges writes without quorum (the controller).
    IgnoreQuorum,
    /// A Primary never tells the witness that its peer fell behind (and
    /// acknowledges writes the peer lacks all the same).
    NoPeerFence,
    /// Adaptive mode: acknowledge writes while Ahead without marking
    /// their blocks in the bitmap.
    AheadWithoutMark,
    /// Writes whose peer part is lost are marked so without raising the
    /// hint that makes `release_lost` look for them (they would wait for
    /// ever).
    LostHint,
    /// A reply held for quorum does not raise the hint that makes
    /// `release_held` retry it.
    HeldHint,
    /// A node whose disk failed holding writes it acknowledged alone
    /// comes out of the resync from its peer's older data UpToDate (as if
    /// nothing were lost), not Outdated.
    ForgetLost,
    /// A node whose disk failed answers OK to writes that only that disk
    /// holds (their local completion came after the failure, or their
    /// peer part was lost with the session the failure closed).
    AckOnFailedDisk,
    /// A node whose disk failed waits for that disk's completion of each
    /// write before it answers (a disk that hangs after its error leaves
    /// them unanswered for ever).
    WaitOnFailedDisk,
    /// A node whose disk failed answers OK from its peer's copy before
    /// its record saying so is on disk (after a power loss it comes back
    /// UpToDate over a disk that lacks those writes).
    AckBeforeFailedRecord,
    /// `disk-timeout` is never enforced (a disk that stops answering keeps
    /// its writes waiting for ever).
    NoDiskTimeout,
    /// The witness grants a claim whatever the claimant's data (a node
    /// replaced and rebuilt from its outdated peer claims by its name).
    WitnessIgnoresData,
    /// A node does not keep the generations it told the witness: after a
    /// few separations the witness did not hear of, the one it holds is
    /// out of the node's saved history and its own data is refused.
    ForgetTold,
    /// A witness without its record renews a Primary running alone
    /// whatever the other node told of its data (`Refusal::Behind` never
    /// given): the Primary cut off while its peer was granted the right
    /// resumes without the writes that peer acknowledged.
    WitnessRenewsBehind,
    /// A disk as created takes its peer's data as its own without a sync,
    /// whatever the peer holds (not only a peer as created too).
    AdoptAnyPeer,
    /// `primary` on a connected node promotes it without asking the peer
    /// (both nodes promoted at once both become Primary).
    PromoteWithoutAsking,
    /// A full sync cut short resumes from the source's bitmap whatever
    /// full sync the target's data was part of (a replaced disk, or one
    /// that took another sync, included).
    ResumeAnyFullSync,
    /// Two nodes on one generation resync the union of their bitmaps from
    /// the first by name (disk and role aside), not from the node that was
    /// Primary last (its acknowledged writes the peer lacks are overwritten).
    UnionByName,
    /// Two nodes on one generation rank the union's source without asking
    /// which lost its page cache: the last Primary, back from a power loss,
    /// overwrites the acknowledged writes its peer holds and it lost.
    IgnoreLostCache,
    /// An Outdated SyncSource is made UpToDate at any resync's end, not
    /// only on its target's word that it is UpToDate: the Secondary
    /// outdated by a Primary that then wrote alone and lost its disk is
    /// promoted without `--force` over those writes.
    LiftOutdatedSource,
    /// A Secondary confirms its Primary's `Outdate` (`OutdateDone`) at
    /// once, before its record saying Outdated is durable: a crash then
    /// brings it back UpToDate while the Primary writes on alone.
    OutdateDoneEarly,
    /// Adaptive mode: an Ahead Primary answers writes alone at once, not
    /// only once its peer's record says Outdated.
    AheadBeforeOutdated,
    /// A node says reads may be served while writes it received from its
    /// peer still wait to be issued (a Primary promoted right after its
    /// link dropped reads older data, and the peer's write lands after).
    ReadsBeforeReceived,
    /// A sync source reads blocks for the resync while writes it received
    /// from its peer still wait to be issued: the target gets the older
    /// block, the queued write lands on the source alone.
    ResyncBeforeReceived,
    /// The controller claims the Primary role for a node that may have
    /// lost what it confirmed to its peer (its page cache, or in B the
    /// writes it had received): promoted while its peer is away, it runs
    /// the service without writes acknowledged in C or B.
    ClaimAfterLoss,
    /// A start ignores [`MetaRecord::behind_async_primary`]: a protocol-A
    /// Secondary killed while its peer was Primary comes back UpToDate
    /// and is promoted without `--force`.
    ForgetAsyncPrimary,
    /// The operator's `primary` without `--force` is accepted on a node
    /// a loss holds back ([`Core::held_back_by_loss`]): it runs the
    /// service without writes it had confirmed to its peer.
    PromoteAfterLoss,
    /// A Primary serves reads whatever its quorum ([`Core::read_gate`]):
    /// cut off from its peer and the witness, it reads its own data after
    /// the survivor took over and acknowledged writes (stale reads).
    ReadsWithoutQuorum,
    /// A node demoted without quorum serves reads as Secondary before it
    /// met its peer ([`Core::read_gate`], `Ctl::superseded`): deposed, it
    /// reads its own data after the new Primary acknowledged writes.
    ReadsWhenSuperseded,
    /// Acknowledge a protocol B write once it is sent, before the peer
    /// received it.
    EarlyAckB,
    /// A write issued while the peer is not linked is not marked in the
    /// bitmap (the activity log alone covers it).
    UnlinkedWithoutMark,
    /// Application writes are admitted while a resync chunk's read is in
    /// flight: the chunk, numbered after such a write, may carry the block
    /// as it was before it.
    WriteDuringResyncRead,
    /// A FLUSH in protocol B or C is answered once the local flush is done,
    /// without waiting for the peer's.
    FlushWithoutPeer,
    /// A renewal's witness lease is counted from the grant's arrival, not
    /// from when the request was sent (a late grant extends the lease past
    /// the witness's own count).
    LeaseFromReply,
    /// A write's reply is gated by quorum as the core's last timer saw it,
    /// not at the time of the reply: a node paused past its leases that
    /// resumes with completions queued answers them before its timer runs.
    GateOnTimerClock,
    /// `primary --force` on a failed or partly synced disk saves its
    /// record (a bitmap base, every block marked) before the marked bitmap
    /// is on disk: a crash in between leaves a record whose bitmap misses
    /// blocks that differ from the peer's.
    ForcedRecordBeforeBitmap,
    /// A SyncSource sends nothing for a chunk its store answered as a hole
    /// (as if the target's blocks were holes too, as a new disk's are) and
    /// clears its bits with the next flush: a target holding data there
    /// keeps it.
    HolesNotSent,
    /// A SyncTarget takes resync zeroes (`ResyncZero`: a hole of the
    /// source's, or a chunk of zeroes) as done without zeroing the range:
    /// it keeps what it held there.
    SkipResyncZero,
    /// A controller's promotion runs its hooks (the address move,
    /// `on_promote`) at the witness's grant, before the record saying the
    /// node is Primary is saved: a promotion that does not stand moves the
    /// service to the node.
    HooksBeforeRecord,
    /// A controller's promotion never runs its hooks: the Primary serves
    /// without its service address and `on_promote`.
    HooksNeverRun,
    /// The witness decides a request that came on a node's older
    /// connection after its newer one's (`conn_order`).
    StaleWitnessRequests,
    /// A start takes a forced promotion's unconfirmed first record as it
    /// is, not the record it holds (`MetaRecord::pending`): a force the
    /// operator was told failed comes back after a crash.
    ForgetPending,
}

impl std::str::FromStr for Plant {
    type Err = String;
    fn from_str(s: &str) -> Result<Plant, String> {
        Ok(match s {
            "none" => Plant::None,
            "early-ack" => Plant::EarlyAckC,
            "skip-al" => Plant::SkipAlMark,
            "skip-bitmap-exchange" => Plant::SkipBitmapExchange,
            "clear-before-durable" => Plant::ClearBeforeDurable,
            "ignore-quorum" => Plant::IgnoreQuorum,
            "no-peer-fence" => Plant::NoPeerFence,
            "ahead-without-mark" => Plant::AheadWithoutMark,
            "lost-hint" => Plant::LostHint,
            "held-hint" => Plant::HeldHint,
            "forget-lost" => Plant::ForgetLost,
            "ack-on-failed-disk" => Plant::AckOnFailedDisk,
            "wait-on-failed-disk" => Plant::WaitOnFailedDisk,
            "no-disk-timeout" => Plant::NoDiskTimeout,
            "ack-before-failed-record" => Plant::AckBeforeFailedRecord,
            "witness-ignores-data" => Plant::WitnessIgnoresData,
            "forget-told" => Plant::ForgetTold,
            "witness-renews-behind" => Plant::WitnessRenewsBehind,
            "adopt-any-peer" => Plant::AdoptAnyPeer,
            "promote-without-asking" => Plant::PromoteWithoutAsking,
            "resume-any-full-sync" => Plant::ResumeAnyFullSync,
            "union-by-name" => Plant::UnionByName,
            "ignore-lost-cache" => Plant::IgnoreLostCache,
            "lift-outdated-source" => Plant::LiftOutdatedSource,
            "outdate-done-early" => Plant::OutdateDoneEarly,
            "ahead-before-outdated" => Plant::AheadBeforeOutdated,
            "reads-before-received" => Plant::ReadsBeforeReceived,
            "claim-after-loss" => Plant::ClaimAfterLoss,
            "resync-before-received" => Plant::ResyncBeforeReceived,
            "forget-async-primary" => Plant::ForgetAsyncPrimary,
            "promote-after-loss" => Plant::PromoteAfterLoss,
            "reads-without-quorum" => Plant::ReadsWithoutQuorum,
            "reads-when-superseded" => Plant::ReadsWhenSuperseded,
            "early-ack-b" => Plant::EarlyAckB,
            "unlinked-without-mark" => Plant::UnlinkedWithoutMark,
            "write-during-resync-read" => Plant::WriteDuringResyncRead,
            "flush-without-peer" => Plant::FlushWithoutPeer,
            "lease-from-reply" => Plant::LeaseFromReply,
            "gate-on-timer-clock" => Plant::GateOnTimerClock,
            "forced-record-before-bitmap" => Plant::ForcedRecordBeforeBitmap,
            "holes-not-sent" => Plant::HolesNotSent,
            "skip-resync-zero" => Plant::SkipResyncZero,
            "hooks-before-record" => Plant::HooksBeforeRecord,
            "hooks-never-run" => Plant::HooksNeverRun,
            "stale-witness-requests" => Plant::StaleWitnessRequests,
            "forget-pending" => Plant::ForgetPending,
            _ => {
                return Err(format!(
                    "unknown plant {s:?} (early-ack, skip-al, skip-bitmap-exchange, clear-before-durable, ignore-quorum, no-peer-fence, ahead-without-mark, lost-hint, held-hint, forget-lost, ack-on-failed-disk, wait-on-failed-disk, no-disk-timeout, ack-before-failed-record, witness-ignores-data, forget-told, witness-renews-behind, adopt-any-peer, promote-without-asking, resume-any-full-sync, union-by-name, ignore-lost-cache, lift-outdated-source, outdate-done-early, ahead-before-outdated, reads-before-received, resync-before-received, claim-after-loss, forget-async-primary, promote-after-loss, reads-without-quorum, reads-when-superseded, early-ack-b, unlinked-without-mark, write-during-resync-read, flush-without-peer, lease-from-reply, gate-on-timer-clock, forced-record-before-bitmap, holes-not-sent, skip-resync-zero, hooks-before-record, hooks-never-run, stale-witness-requests, forget-pending)"
                ))
            }
        })
    }
}

/// The core's configuration (from the resource file; the simulator uses
/// small blocks and extents so that a few hundred steps reach every corner).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub resource: String,
    pub me: String,
    pub peer: String,
    pub size: u64,
    /// Bitmap granularity (4096 in production).
    pub block: u64,
    /// Activity-log extent (4 MiB in production).
    pub extent: u64,
    pub protocol: Protocol,
    pub max_lag: u64,
    pub al_extents: usize,
    pub timeout: Duration,
    pub ping_interval: Duration,
    /// A store operation without a completion for this long fails the
    /// local disk (None: wait for ever, the default).
    pub disk_timeout: Option<Duration>,
    pub resync_rate: u64,
    pub resync_checksum: bool,
    pub split_brain_policy: SplitBrainPolicy,
    /// Largest resync or verify chunk, in blocks.
    pub chunk_blocks: u64,
    /// Resync/verify chunks in flight at once.
    pub window: usize,
    /// Resync chunks between flush-and-checkpoint barriers.
    pub checkpoint_chunks: u64,
    /// The failover controller's rules (None: roles change only by the
    /// operator's verbs).
    pub controller: Option<super::quorum::ControllerConfig>,
    /// Adaptive mode's rules (used with `Protocol::Adaptive` only).
    pub adaptive: AdaptiveConfig,
    pub plant: Plant,
    /// The node's files, named when one of them fails.
    pub files: Files,
}

/// Paths of a node's disk and metadata (`meta`; its bitmap and activity
/// log are `META.bitmap`, `META.al`), as a failure names them; empty (in
/// the simulator and unit tests) they are named by their role.
#[derive(Debug, Clone, Default)]
pub struct Files {
    pub disk: String,
    pub meta: String,
}

impl Files {
    /// The metadata file of suffix `ext` (`""`, `".bitmap"`, `".al"`);
    /// empty when the paths are not known.
    pub fn meta_with(&self, ext: &str) -> String {
        match self.meta.as_str() {
            "" => String::new(),
            meta => format!("{meta}{ext}"),
        }
    }
}

/// Adaptive mode (see `core::adaptive`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveConfig {
    /// A write that waits this long for the peer sends the Primary Ahead.
    pub budget: Duration,
    /// Round trips at most budget/2 for this long (and at least this long
    /// Ahead) before the catch-up resync starts.
    pub hold: Duration,
    /// `hold` doubles each time Ahead comes back soon; up to this.
    pub max_hold: Duration,
    /// More than this many bytes of writes sent to the peer and not yet
    /// acknowledged send the Primary Ahead too (None: no such limit).
    pub congestion_fill: Option<u64>,
}

impl AdaptiveConfig {
    /// Production rules for a budget (`ping`: the heartbeat interval, the
    /// round-trip samples while Ahead).
    pub fn with_budget(budget: Duration, ping: Duration) -> AdaptiveConfig {
        let hold = (ping * 4).max(Duration::from_secs(2));
        AdaptiveConfig { budget, hold, max_hold: hold * 16, congestion_fill: None }
    }
}

impl Default for AdaptiveConfig {
    fn default() -> AdaptiveConfig {
        AdaptiveConfig::with_budget(Duration::from_millis(3), Duration::from_millis(500))
    }
}

impl CoreConfig {
    /// Production geometry from a resource file.
    pub fn from_resource(res: &crate::config::ResourceConfig, me: &str, peer: &str) -> CoreConfig {
        CoreConfig {
            resource: res.name.clone(),
            me: me.into(),
            peer: peer.into(),
            size: res.size,
            block: crate::bitmap::BLOCK,
            extent: crate::al::EXTENT,
            protocol: res.protocol,
            max_lag: res.max_lag,
            al_extents: res.al_extents,
            timeout: res.timeout,
            ping_interval: res.ping_interval,
            disk_timeout: res.disk_timeout,
            resync_rate: res.resync_rate,
            resync_checksum: res.resync_checksum,
            split_brain_policy: res.split_brain_policy,
            chunk_blocks: 256,
            window: 16,
            checkpoint_chunks: 64,
            controller: res.controller.as_ref().map(|c| c.rules.clone()),
            adaptive: AdaptiveConfig {
                congestion_fill: res.congestion_fill,
                ..AdaptiveConfig::with_budget(
                    res.latency_budget.unwrap_or(Duration::from_millis(3)),
                    res.ping_interval,
                )
            },
            plant: Plant::None,
            files: Files {
                disk: res.nodes.get(me).map(|n| n.disk.display().to_string()).unwrap_or_default(),
                meta: res.nodes.get(me).map(|n| n.meta.display().to_string()).unwrap_or_default(),
            },
        }
    }
}

/// A data operation of the local store. The shell performs store actions in
/// the order the core emits them (so the local apply order is the order the
/// core chose); completions may come back in any order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Into the page cache; with `fua`, durable before completion.
    Write { offset: u64, data: Bytes, fua: bool },
    /// Zeroes (`punch`: may deallocate, as TRIM). With `fua`, durable.
    Zero { offset: u64, len: u64, punch: bool, fua: bool },
    /// fdatasync: every store write emitted before it is durable.
    Flush,
    /// Reads the current content (resync, verify). With `holes`, a range
    /// that is all hole in the backing file (a sparse regular file, found by
    /// `SEEK_DATA`) may complete with `Ok(None)`, unread: it reads as zeroes.
    /// A store that cannot tell (a block device, a file system without
    /// `SEEK_DATA`) reads it. Performed in its place in the core's order,
    /// as a read is: it sees every write issued before it.
    Read { offset: u64, len: u64, holes: bool },
    /// Into the bench scratch area (never the device), as `Write` without FUA.
    Scratch { offset: u64, data: Bytes },
}

impl StoreOp {
    /// Durable before it completes (FUA).
    pub fn fua(&self) -> bool {
        matches!(self, StoreOp::Write { fua: true, .. } | StoreOp::Zero { fua: true, .. })
    }

    /// What a replicated operation does to the local store (a verify
    /// reads; a resync chunk is an ordinary write, or a zeroing that may
    /// punch when it is all zeroes: a full sync of a mostly empty device
    /// filled a sparse target, or a thin volume, to the device's size; a
    /// source sends those as `ResyncZero`, without the zeroes).
    pub fn of(op: crate::protocol::wire::Op) -> StoreOp {
        use crate::protocol::wire::{all_zero, Op};
        match op {
            Op::Write { offset, data, fua, .. } => StoreOp::Write { offset, data, fua },
            Op::Resync { offset, data, .. } if !data.is_empty() && all_zero(&data) => {
                StoreOp::Zero { offset, len: data.len() as u64, punch: true, fua: false }
            }
            Op::ResyncZero { offset, len } => {
                StoreOp::Zero { offset, len: u64::from(len), punch: true, fua: false }
            }
            Op::Resync { offset, data, .. } => StoreOp::Write { offset, data, fua: false },
            Op::Trim { offset, len, fua } => {
                StoreOp::Zero { offset, len: len as u64, punch: true, fua }
            }
            Op::Zero { offset, len, no_hole, fua } => {
                StoreOp::Zero { offset, len: len as u64, punch: !no_hole, fua }
            }
            Op::Flush => StoreOp::Flush,
            Op::Verify { offset, len, .. } => {
                StoreOp::Read { offset, len: len as u64, holes: false }
            }
            Op::Bench { offset, data, .. } => StoreOp::Scratch { offset, data },
        }
    }
}

/// A metadata update. Each is durable when it completes successfully, and
/// leaves the previous version intact when it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    /// Replace the metadata record (atomic).
    Meta(MetaRecord),
    /// Overwrite these pages of the saved bitmap (page n = words
    /// n*PAGE_WORDS ..), then sync.
    Bitmap { pages: Vec<(u64, Vec<u64>)> },
    /// Activity-log journal: extents leaving, then extents joining, then sync.
    Al { remove: Vec<u64>, add: Vec<u64> },
}

/// Words per bitmap page in [`Persist::Bitmap`] (4 KiB pages).
pub const PAGE_WORDS: usize = 512;

/// Why an I/O failed (an errno).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoError(pub i32);

impl IoError {
    pub const EIO: IoError = IoError(5);
    pub const ENOSPC: IoError = IoError(28);
    /// A store operation without a completion for `disk-timeout`.
    pub const ETIMEDOUT: IoError = IoError(110);

    /// The system's text for it: "No space left on device (os error 28)".
    pub fn describe(self) -> String {
        std::io::Error::from_raw_os_error(self.0).to_string()
    }
}

/// The answer to an application request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// Not Primary: the export is read-only here (EPERM).
    ReadOnly,
    /// The store or metadata failed (errno).
    Io(IoError),
    /// The request is outside the device.
    OutOfRange,
}

/// What the core asks its shell to do, drained with [`crate::core::Core::poll_action`].
#[derive(Debug, Clone)]
pub enum Action {
    /// Perform a store operation (in emission order); then `handle_io`.
    Store { io: IoId, op: StoreOp },
    /// Make metadata durable; then `handle_io`.
    Persist { io: IoId, what: Persist },
    /// Send a frame on session `session` (ordered, reliable).
    Send { session: SessionId, msg: Message },
    /// Close session `session`; the shell reports `handle_link_down` for it.
    Close { session: SessionId, reason: String },
    /// Answer application request `req`.
    Reply { req: ReqId, result: Result<(), ReplyError> },
    /// Send a request to the witness (dropped when there is no link to it;
    /// the core asks again).
    Vote(super::quorum::VoteRequest),
    /// Run a controller hook; then `hook_done`.
    Hook(super::quorum::Hook),
}

/// What an operator verb was refused for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

/// Sync or verify progress.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub total: u64,
    pub done: u64,
    pub started: Time,
}

/// The core's counters (status `counters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreCounters {
    pub written_bytes: u64,
    pub replicated_bytes: u64,
    pub resync_bytes: u64,
    /// Bytes a SyncSource read from its disk for resync chunks (a hole it
    /// skipped, sent as zeroes unread, is not read).
    pub resync_read_bytes: u64,
    pub verify_mismatches: u64,
    pub mode_switches: u64,
}

/// A snapshot of the core's state (what `status` shows).
#[derive(Debug, Clone)]
pub struct CoreStatus {
    pub role: Role,
    pub disk: DiskState,
    pub connection: Connection,
    pub replication: Replication,
    pub peer_role: Option<Role>,
    pub peer_disk: Option<DiskState>,
    pub out_of_sync_bytes: u64,
    pub split_brain: bool,
    /// This node may lack writes it confirmed to its peer and has not met
    /// it since (`Core::lost_since_synced`): neither `primary` without
    /// `--force` nor the controller promotes it until a session has.
    pub lost_since_synced: bool,
    /// `discard-my-data` was accepted and waits for a handshake, which
    /// will take the peer's data in full (the controller does not promote
    /// this node meanwhile).
    pub discard_pending: bool,
    pub rtt: Option<Duration>,
    pub sync: Option<Progress>,
    pub counters: CoreCounters,
    /// The device's operations sent to the peer and not yet applied there
    /// (writes, flushes, trims, resync and verify requests): not the bench's
    /// probes, which are `bench_in_flight`.
    pub in_flight: usize,
    /// `twinblock bench` probes sent on the same stream and not yet
    /// answered by the peer.
    pub bench_in_flight: usize,
    /// Extents in the on-disk activity log.
    pub al_extents: usize,
    pub last_error: Option<String>,
    pub gen: GenIds,
}

/// Events that would flood the log (a failing bench scratch area fails
/// every probe of a run, thousands a second): said at most once per
/// [`Self::EVERY`], with how many happened since.
#[derive(Debug, Default)]
pub(crate) struct LogEvery {
    since_said: u64,
    said_at: Option<Time>,
}

impl LogEvery {
    pub const EVERY: Duration = Duration::from_secs(10);

    /// One more at `now`: how many to report now, if it is time to.
    pub fn due(&mut self, now: Time) -> Option<u64> {
        self.since_said += 1;
        if self.said_at.is_some_and(|t| now.saturating_sub(t) < Self::EVERY) {
            return None;
        }
        self.said_at = Some(now);
        Some(std::mem::take(&mut self.since_said))
    }
}

#[cfg(test)]
mod log_every_tests {
    use super::*;

    #[test]
    fn says_the_first_then_once_per_period_with_the_count() {
        let mut l = LogEvery::default();
        let s = Duration::from_secs;
        assert_eq!(l.due(s(1)), Some(1));
        assert_eq!(l.due(s(2)), None);
        assert_eq!(l.due(s(10)), None);
        assert_eq!(l.due(s(11)), Some(3));
        assert_eq!(l.due(s(12)), None);
    }
}
