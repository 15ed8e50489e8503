//! The invariants of shared/DESIGN.md, checked after every step. Each is
//! tuned to be sound: it never flags what the design allows.
//!
//! Positions: every application write/zero gets a unique id at submission,
//! increasing; one Primary admits its requests in FIFO order, so the ids
//! are its apply order, and a later Primary's ids are larger. A 16-byte
//! cell holding write `id` is at position `id`; a zeroed cell at the
//! position of the newest zero operation ever submitted on it (generous:
//! zeroes do not say which zero they are); anything else is garbage.
//! Zeroes a resync brought (a source's hole, or a chunk of zeroes, sent as
//! `ResyncZero`) count the same: never as a write, so zeroes over a write
//! the node should hold are a lost write.
//!
//! I1 (acknowledged writes). Floors per node and cell, the newest position
//! the node must hold:
//! - `fl_c`: survives a process crash of the node (page cache), not a power
//!   loss: its own acknowledged writes (as Primary), and, in protocol C,
//!   writes the Primary acknowledged over a link that stayed up (same
//!   session, no link change) from submission to reply while it was
//!   Primary (so the peer confirmed them);
//! - `fl_b`: the same in protocol B (received), lost at any crash of the node;
//! - `dfl`: survives power loss: FUA writes (local; the peer's in C) and
//!   what an acknowledged FLUSH covered (the floors at its submission:
//!   local; the peer's in B and C over an unbroken link).
//!
//! - `own`: the writes a node acknowledged as Primary since its peer was
//!   last promoted (lost at a power loss, a failed or replaced disk, a
//!   discard): when the two meet again on one generation, a sync into that
//!   node (the union of their bitmaps) must leave them on it, in every
//!   protocol: the node that was Primary last is the source of what it
//!   wrote (checked when such a sync ends). Not for a sync the
//!   generations decided (a newer peer, a split brain resolved).
//! - the target's own floors in B and C: a sync on one generation into a
//!   node leaves it holding what its floors said at the sync's start (the
//!   writes its peer acknowledged and it holds; the peer, back from a
//!   power loss, may lack them), unless the node itself crashed meanwhile
//!   or its disk was not UpToDate or Consistent before (a sync target's
//!   mix: the Primary alone held the data, and lost what it had not
//!   flushed with its power).
//!
//! Protocol A sets no peer floors (I6 covers it). Checked: a promotion
//! without `--force` (or with it, of an UpToDate disk) finds the new
//! Primary holding its floors once what it had received is applied (at the
//! latest when it is quiescent or 3 s later); at a power loss the durable
//! image holds `dfl` if the durable metadata says the data is usable
//! (UpToDate/Consistent/Outdated). Floors move with the data: a SyncTarget
//! has none during the sync and takes the source's (as of the sync's start)
//! when that session ends it Established and UpToDate (or Consistent: from a
//! Consistent source); `--force` on a disk
//! that is not UpToDate resets all floors (the operator accepted the loss);
//! a replaced disk has none; flush snapshots taken before a node's data was
//! replaced are dropped. With the controller, the writes a node
//! acknowledged apart must survive a failover to its peer until the
//! operator gives them up (`discard-my-data` on that node, or `--force`).
//!
//! I2: both nodes up on the same link, both Established and quiescent
//! (`Core::quiescent`), no frame in flight, no I/O outstanding, no Failed
//! disk and at least one UpToDate/Consistent disk → caches byte-identical.
//!
//! I3: every 64-byte block whose caches differ is covered by a bit of a
//! durably saved bitmap or an extent of a durably saved activity log on at
//! least one node — unless a node's durable metadata is missing, says
//! never-synced and not fresh, or Failed, or Inconsistent with generations
//! that do not make it the other's sync target (any connect fully syncs
//! it), its disk was
//! recreated and no record was saved since, or the durable generations are
//! unrelated (never synced over; the operator forced a replaced disk) or
//! call for a full sync (or a split brain, which only a full sync resolves).
//!
//! I4: never both nodes `accepts_writes()` (a paused node accepts nothing
//! until it resumes, its clock told the time); with a controller, no write
//! acknowledged in a reign another node's later reign overtook (`ack_check`),
//! and no Primary whose `read_gate` serves reads after the other node,
//! Primary since it was, acknowledged writes (a stale read after a failover);
//! nor a node that was Primary when the other was promoted, demoted since,
//! that serves reads as Secondary before it met its peer or restarted while
//! the other node's reign acknowledged writes (plant `reads-when-superseded`).
//! The leases (in `world/events.rs`): a node's own count of a witness
//! grant's lease never ends after the witness's count while it names the
//! node holder, and when the witness grants a claim the other node, if
//! Primary, holds no quorum by its own leases (plant `lease-from-reply`;
//! for a claim a silent link held, where the grant promotes the node); in
//! `world/perform.rs`: a controller's Primary answers a write OK only while
//! it holds quorum by its own leases (plant `gate-on-timer-clock`).
//!
//! I5: `promote(false)` returning Ok for an Inconsistent, Outdated, Failed
//! or Diskless disk; `may_read()` Ok for one of them, at any step.
//!
//! I6: a Secondary (not SyncTarget, disk UpToDate or Consistent) holds a
//! state of the Primary's apply history (its store writes and zeroes, in
//! emission order) since they were last identical while both quiescent
//! with nothing in flight; the lineage ends when the Primary changes, dies
//! or fails, or the Secondary loses power, skips a failed write or syncs.
//!
//! I7 (reads after a promotion): once a Primary's core says its reads are
//! settled (`Core::reads_settled`, readable data), it issues no write of
//! its peer's stream while it stays Primary: a read from then on would have
//! seen older data under it. A store write's cells name the application
//! write they hold; one submitted before that moment, not to this node
//! and not by a request of its own still pending, is the peer's. Zeroes
//! name no write: a zero (write zeroes or trim) must lie within one of the
//! node's own pending zero requests.
//!
//! Adaptive seeds (protocol adaptive, the link's delay moving around the
//! budget, hovering at it, at half of it, far above and below): a write
//! is confirmed by the peer only if the Primary neither was Ahead at its
//! reply nor switched modes since its submission; with the controller,
//! every acknowledged write survives a failover as in C. No flapping: at
//! most `FLAP_LIMIT` mode switches of a node in any `FLAP_WINDOW` of
//! simulated time. Convergence: the liveness rule below, with the hold
//! time added (a calm period sets the link's delay low).
//!
//! Liveness (in `world/checks.rs`): a pair left calm for 1.5 s on one link, with no
//! I/O errors injected, some UpToDate disk and no operator decision
//! pending (split brain, StandAlone), is Established and quiescent, or its
//! resync/verify made progress meanwhile. A node whose rebuilds failed
//! waits before its next one (`core::rebuild_backoff`, up to 60 s) and
//! takes no link until then: the 1.5 s count from the end of that wait
//! (no link meanwhile, or a node that wants none, is not checked).

use std::fmt;
use std::time::Duration;

use twinblock_replicator::config::Protocol;
use twinblock_replicator::core::{Connection, ReadGate, Replication, StoreOp, Time};
use twinblock_replicator::protocol::genid::{decide, Decision, NEVER_SYNCED};
use twinblock_replicator::protocol::wire::{DiskState, Role};

use crate::node::{AppKind, AppReq, Node};
use crate::world::Sim;
use crate::{decode, BLOCK, BLOCKS, CELL, CELLS, EXTENT};

/// No flapping: at most this many mode switches of one node ...
pub const FLAP_LIMIT: usize = 14;
/// ... within this much simulated time.
pub const FLAP_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Violation {
    pub step: usize,
    pub rule: &'static str,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {} violated: {}", self.step, self.rule, self.what)
    }
}

#[derive(Clone)]
pub(crate) struct FlushSnap {
    own: Vec<u64>,
    peer: Vec<u64>,
    /// The nodes' data epochs (a sync into a node starts a new one).
    epochs: [u64; 2],
}

/// The Primary's apply history since the Secondary was last identical to it.
struct Lineage {
    primary: usize,
    base: Vec<u8>,
    log: Vec<(u64, Vec<u8>)>,
}

struct PendingPromotion {
    deadline: Time,
    floor: Vec<u64>,
}

/// How often each check had something to check (coverage).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub acked: u64,
    /// Requests answered OK by a node whose disk is Failed (from the
    /// peer's part alone).
    pub failed_disk_acks: u64,
    /// Application requests answered with an error by such a node.
    pub failed_disk_errors: u64,
    /// Metadata updates that failed and landed all the same.
    pub landed_failed_persists: u64,
    /// Saves of the witness's state that failed, and of those the ones
    /// that landed all the same.
    pub witness_failed_saves: u64,
    pub witness_landed_failed_saves: u64,
    /// Witness restarts that found no state file.
    pub witness_stateless_restarts: u64,
    /// Controller promotions while the other node was still Primary (cut
    /// off), and of those the ones the witness crashed after.
    pub takeovers_from_primary: u64,
    pub witness_failover_crashes: u64,
    /// Whole nodes paused, and of those the ones that resumed Primary
    /// after the other node was promoted meanwhile (deposed while paused).
    pub pauses: u64,
    pub paused_deposed: u64,
    /// Witness requests and answers held by a silent link and delivered
    /// late, once it healed.
    pub witness_late: u64,
    /// Requests a cut link held, delivered on the node's old connection
    /// after its newer one was granted something, and refused as stale
    /// (decided, under the plant `stale-witness-requests`).
    pub witness_stale: u64,
    /// Renewals of a lone Primary by a witness without its record that had
    /// not heard the other node since its start (the residual limit).
    pub witness_blind_renewals: u64,
    /// Claims granted by a witness without its record, vouched by a
    /// replaced peer (the same residual limit).
    pub witness_blind_claims: u64,
    pub confirmed: u64,
    pub promotions_checked: u64,
    /// Protocol-A Secondaries stopped while linked to a Primary.
    pub a_behind_crashes: u64,
    /// Crashes and power losses that left a node lacking a write its
    /// Primary had acknowledged on its word (B, C).
    pub lost_conf_crashes: u64,
    /// Promotions forced on a node a loss held back.
    pub held_forced: u64,
    /// `primary --force` given up before its record was confirmed, and
    /// how many of those left a first record (or its save) behind.
    pub forces_given_up: u64,
    pub forces_given_up_saving: u64,
    pub power_checks: u64,
    /// Replies whose promise was checked on the peer's durable image.
    pub peer_durable_checks: u64,
    pub i2_checks: u64,
    pub i3_diff_blocks: u64,
    pub i6_checks: u64,
    pub i6_nontrivial: u64,
    pub syncs_done: u64,
    /// Syncs on one generation into a node whose own writes were checked.
    pub own_checks: u64,
    /// Syncs on one generation into a node whose floors were checked (B, C).
    pub kept_checks: u64,
    pub steps: u64,
    pub connected_steps: u64,
    pub primary_steps: u64,
    pub split_brain_steps: u64,
    pub target_steps: u64,
    /// Steps where a node waits before its next rebuild (its rebuilds
    /// failed: `core::rebuild_backoff`), taking no link.
    pub rebuild_wait_steps: u64,
    pub syncs_started: u64,
    pub liveness_checks: u64,
    /// I/O of a failed disk that hung (never completed).
    pub hung_ios: u64,
    /// Controller seeds: promotions the witness granted, and steps where
    /// a Primary had no quorum.
    pub ctl_promotions: u64,
    pub no_quorum_steps: u64,
    /// Adaptive seeds: mode switches seen, steps with a Primary Ahead,
    /// catch-up resyncs that ended in sync, simulated time (ms), and the
    /// most switches of one node within a flap window.
    pub mode_switches: u64,
    pub ahead_steps: u64,
    pub catch_ups_done: u64,
    pub adaptive_ms: u64,
    pub max_switches_window: u64,
    /// Secondaries outdated by their Primary's `disconnect` (they
    /// confirmed its Outdate frame).
    pub outdated_by_primary: u64,
    /// Resync reads that may be answered as a hole, and those that were.
    pub hole_probes: u64,
    pub hole_reads: u64,
}

pub(crate) struct Checker {
    pub step: usize,
    pub stats: Stats,
    /// Per node outdated by its Primary's `disconnect` (it confirmed the
    /// Outdate frame: its record says so): the generation of that peer's
    /// latest write acknowledged alone since (0: none yet). Such a node
    /// lacks those writes until it completes a sync as target; it must not
    /// be promoted without `--force` before (whatever its disk state says:
    /// kept here apart from the core's own, found by review). Over when it
    /// is in sync again with a peer that wrote nothing alone since, or is
    /// promoted; cleared by a forced promotion, a discard or a replaced
    /// disk (data given up).
    frame_outdated: [Option<u64>; 2],
    /// Protocol A: node `n`'s process stopped while its disk was UpToDate,
    /// lacking a write its peer had acknowledged as Primary while linked
    /// (`a_acked`; the peer may have said it is Secondary since, with that
    /// write still on `n`'s queue, and `n` may have been promoted or cut
    /// off since): until the two have met again (or it was forced, or its
    /// data replaced) it is not promoted without `--force` (I5).
    a_behind: [bool; 2],
    /// B and C, per cell: the newest write node `n`'s Primary acknowledged
    /// on `n`'s word (confirmed: received in B, written in C) since `n` was
    /// last promoted, became a sync target, or had its data replaced.
    conf: [Vec<u64>; 2],
    /// Node `n`'s process stopped or its power went while it lacked such
    /// a write (`conf`): a power loss took the page cache, or in B a crash
    /// the writes received and not yet written. Until it has a running
    /// session with its peer again (the handshake judged what it lacks),
    /// or was forced, discarded or replaced, it is not promoted without
    /// `--force` (I5). The checker's own record, from the disk's content,
    /// beside the core's (`Core::held_back_by_loss`): a loss the core does
    /// not see is caught here.
    lost_conf: [bool; 2],
    /// Protocol A, per cell: the newest write node `n`'s peer acknowledged
    /// while linked to it (confirmed or not), which `n` should hold to be
    /// current. Cleared
    /// when `n` is promoted (its data is the truth from then on; not when
    /// promoted without `--force` with writes of the peer's still queued),
    /// its disk replaced, the peer's changes given up or its power lost.
    a_acked: [Vec<u64>; 2],
    fl_c: [Vec<u64>; 2],
    fl_b: [Vec<u64>; 2],
    dfl: [Vec<u64>; 2],
    /// The part of `dfl` a Primary promised its client: FUA writes and
    /// what a FLUSH acknowledged by a Primary covered (not a Secondary's
    /// own FLUSH). What a sync on one generation into a node must leave
    /// when both nodes lost power since they were last in sync.
    pdfl: [Vec<u64>; 2],
    zero_max: Vec<u64>,
    lineage: [Option<Lineage>; 2],
    was_target: [bool; 2],
    synced_floor: [Option<(u64, Vec<u64>)>; 2],
    /// The session of the last sync into each node: its end brings the
    /// source's data, whatever a forced promotion since did to the floors
    /// (`synced_floor` is dropped then; a blind renewal mid-sync, seed
    /// 24000095, left a new disk's completed sync unseen, I5).
    sync_sid: [Option<u64>; 2],
    epoch: [u64; 2],
    promotion: [Option<PendingPromotion>; 2],
    /// Controller seeds (see I1 and I4).
    pub ctl_mode: bool,
    /// Controller seeds, protocol C: writes acknowledged while the node
    /// was not linked, that it must hold if the controller promotes it.
    fo: [Vec<u64>; 2],
    /// When each node last became Primary.
    reign: [Option<Time>; 2],
    /// Writes each node acknowledged in its last reign.
    reign_acks: [u64; 2],
    /// The start of each node's latest reign in which it acknowledged a
    /// write (not reset by a later reign: a stale read is one that lacks
    /// writes of any reign after the reader's own).
    acked_reign: [Option<Time>; 2],
    /// Node `n` was Primary when the other node was promoted (it was
    /// superseded: deposed, or demoted later) and has not met its peer
    /// since (a running session) nor restarted: its copy may lack what the
    /// other node acknowledged, and it serves no read as Secondary either.
    superseded: [bool; 2],
    /// When each node was last connected to its peer (a handshake judged
    /// what it lacks): a node superseded by a reign it met since, even
    /// before its demotion ended, took what the peer had (or the peer had
    /// nothing better: its disk failed since; seed 8435).
    met: [Option<Time>; 2],
    /// Each node was Primary without quorum (its controller's standing)
    /// when last observed: demoted at the next step, it was demoted
    /// without quorum (deposed, or `secondary --force` while fenced), and
    /// the other node may be promoted after its demotion (superseded
    /// then too, though no longer Primary when the other was promoted).
    primary_without_quorum: [bool; 2],
    /// Each node's last reign, not over and with no write acknowledged,
    /// was overtaken: the other node (Primary before it) acknowledged a
    /// write while it did not accept writes. It may acknowledge none in
    /// that reign any more (see `ack_check`).
    overtaken: [bool; 2],
    /// Adaptive seeds (see the module documentation).
    pub adaptive: bool,
    /// Per node: the core's switch count last seen, and recent switches.
    switches_seen: [u64; 2],
    switch_times: [std::collections::VecDeque<Time>; 2],
    was_ahead: [bool; 2],
    last_now: Time,
    /// Power losses of each node so far.
    pub power_losses: [u64; 2],
    /// Node `n`'s data was created or replaced (a new disk, a new node)
    /// and has completed no sync since, nor been forced: it holds nothing
    /// that was acknowledged, whatever its core says. I5: it is neither
    /// promoted without `--force` nor read.
    unsynced: [bool; 2],
    /// Whether each node may adopt its peer's data without a sync in the
    /// last link's session: both disks were all zeroes (as created) when
    /// it came up, and the peer's data was good.
    adoptable: [bool; 2],
    /// Whether each node's core said UpToDate (or Consistent) at the
    /// last step.
    was_up: [bool; 2],
    /// I1: what each node acknowledged as Primary since its peer was last
    /// promoted (see the module documentation).
    own: [Vec<u64>; 2],
    /// The last link came up with both nodes on one generation.
    same_gen: bool,
    /// A sync into the node began on such a link: its `own` floor is
    /// checked when it ends.
    own_sync: [bool; 2],
    /// B and C: the node's floors when such a sync into it began (checked
    /// when it ends; dropped at its crash).
    kept: [Option<Vec<u64>>; 2],
    /// Node `n` lost power since the two were last in sync (Established
    /// on one session): when both did, only what a Primary promised its
    /// client is owed (`pdfl`, see `follow_syncs`).
    power_apart: [bool; 2],
    pub protocol: Protocol,
    /// I7: the first application write id submitted after node `n`, as
    /// Primary, said its reads were settled (None: not so since it became
    /// Primary).
    reads_open: [Option<u64>; 2],
}

fn maxv(a: &mut [u64], b: &[u64]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x = (*x).max(*y);
    }
}

fn blocks(off: u64, len: u64) -> std::ops::Range<usize> {
    (off / BLOCK) as usize..((off + len).div_ceil(BLOCK)) as usize
}

fn cells(off: u64, len: u64) -> std::ops::Range<usize> {
    (off / CELL) as usize..((off + len).div_ceil(CELL)) as usize
}

/// The first cell of block `b` where the two nodes differ, decoded.
fn diff(sim: &Sim, b: usize) -> String {
    let per = (BLOCK / CELL) as usize;
    for c in b * per..(b + 1) * per {
        let (x, y) = (sim.nodes[0].disk.cell(c), sim.nodes[1].disk.cell(c));
        if x != y {
            return format!("cell {c}: a={:?} b={:?}", decode(c, x), decode(c, y));
        }
    }
    "no cell differs".into()
}

impl Checker {
    pub fn new() -> Checker {
        let z = || vec![0u64; CELLS];
        Checker {
            step: 0,
            stats: Stats::default(),
            frame_outdated: [None, None],
            a_behind: [false, false],
            conf: [vec![0; CELLS], vec![0; CELLS]],
            lost_conf: [false, false],
            a_acked: [z(), z()],
            fl_c: [z(), z()],
            fl_b: [z(), z()],
            dfl: [z(), z()],
            pdfl: [z(), z()],
            zero_max: z(),
            lineage: [None, None],
            was_target: [false, false],
            synced_floor: [None, None],
            sync_sid: [None, None],
            epoch: [0, 0],
            promotion: [None, None],
            ctl_mode: false,
            fo: [z(), z()],
            reign: [None, None],
            reign_acks: [0, 0],
            acked_reign: [None, None],
            superseded: [false, false],
            met: [None, None],
            primary_without_quorum: [false, false],
            overtaken: [false, false],
            adaptive: false,
            switches_seen: [0, 0],
            switch_times: Default::default(),
            was_ahead: [false, false],
            last_now: Duration::ZERO,
            power_losses: [0, 0],
            unsynced: [true, true],
            adoptable: [false, false],
            was_up: [false, false],
            power_apart: [false, false],
            own: [z(), z()],
            same_gen: false,
            own_sync: [false, false],
            kept: [None, None],
            protocol: Protocol::C,
            reads_open: [None, None],
        }
    }

    fn v(&self, rule: &'static str, what: String) -> Violation {
        Violation { step: self.step, rule, what }
    }

    fn floor(&self, n: usize) -> Vec<u64> {
        let mut f = self.fl_c[n].clone();
        maxv(&mut f, &self.fl_b[n]);
        maxv(&mut f, &self.dfl[n]);
        f
    }

    /// The position a block's content stands for.
    fn pos(&self, b: usize, data: &[u8]) -> Option<u64> {
        match decode(b, data)? {
            0 => Some(self.zero_max[b]),
            id => Some(id),
        }
    }

    // ----- events from the simulation -----

    pub fn zero_submitted(&mut self, id: u64, off: u64, len: u64) {
        for b in cells(off, len) {
            self.zero_max[b] = self.zero_max[b].max(id);
        }
    }

    pub fn flush_snap(&self, n: usize) -> FlushSnap {
        let mut own = self.fl_c[n].clone();
        maxv(&mut own, &self.dfl[n]);
        FlushSnap { own, peer: self.floor(1 - n), epochs: self.epoch }
    }

    /// Node `n` acknowledged `r` successfully; `confirmed`: over a link
    /// that stayed up since submission; `linked`: `n` is a Primary with a
    /// running session now; `disk_failed`: `n`'s disk is Failed.
    pub fn acked(
        &mut self,
        n: usize,
        r: &AppReq,
        confirmed: bool,
        linked: bool,
        protocol: Protocol,
        disk_failed: bool,
    ) {
        let m = 1 - n;
        // With the controller every acknowledged write survives a failover
        // in C: the peer has it, or the witness will not let it take over
        // (checked at a promotion; a power loss of the peer keeps only
        // what it made durable). Without one, so does a write an adaptive
        // Primary acknowledged Ahead while linked (its peer's record says
        // Outdated first; found by review, helper-78: before, it did not,
        // and this checker did not look).
        // (Two failures, as `failed_disk_ack` says: acknowledged from a
        // Failed disk on the strength of the peer's cache, which the
        // peer's power loss since the submission took: seed 29101487.)
        let c_like = matches!(protocol, Protocol::C | Protocol::Adaptive);
        let ahead_linked = protocol == Protocol::Adaptive && linked;
        let two_failures = disk_failed && self.power_losses[m] != r.peer_power;
        if !confirmed && ((self.ctl_mode && c_like && !two_failures) || ahead_linked) {
            if let AppKind::Write { id, off, len, .. } | AppKind::Zero { id, off, len, .. } =
                &r.kind
            {
                for b in cells(*off, *len) {
                    self.fo[m][b] = self.fo[m][b].max(*id);
                }
            }
        }
        self.stats.acked += 1;
        if confirmed {
            self.stats.confirmed += 1;
        }
        // (Writes acknowledged apart, the peer not linked, are the
        // unfenced case A, like DRBD without fencing, leaves to the
        // operator.)
        if protocol == Protocol::A && linked {
            if let AppKind::Write { id, off, len, .. } | AppKind::Zero { id, off, len, .. } =
                &r.kind
            {
                for b in cells(*off, *len) {
                    self.a_acked[m][b] = self.a_acked[m][b].max(*id);
                }
            }
        }
        match &r.kind {
            AppKind::Write { id, off, len, fua } | AppKind::Zero { id, off, len, fua } => {
                for b in cells(*off, *len) {
                    self.own[n][b] = self.own[n][b].max(*id);
                    self.fl_c[n][b] = self.fl_c[n][b].max(*id);
                    if *fua {
                        self.dfl[n][b] = self.dfl[n][b].max(*id);
                        self.pdfl[n][b] = self.pdfl[n][b].max(*id);
                    }
                    if confirmed && protocol != Protocol::A {
                        self.conf[m][b] = self.conf[m][b].max(*id);
                    }
                    if confirmed {
                        match protocol {
                            Protocol::C | Protocol::Adaptive => {
                                self.fl_c[m][b] = self.fl_c[m][b].max(*id);
                                if *fua {
                                    self.dfl[m][b] = self.dfl[m][b].max(*id);
                                    self.pdfl[m][b] = self.pdfl[m][b].max(*id);
                                }
                            }
                            Protocol::B => self.fl_b[m][b] = self.fl_b[m][b].max(*id),
                            Protocol::A => {}
                        }
                    }
                }
            }
            AppKind::Probe(_) => {}
            AppKind::Flush => {
                // Floors taken before a sync replaced a node's data say
                // nothing of it now.
                let snap = r.snapshot.as_ref().expect("flush snapshot");
                let own = snap.own.clone();
                if snap.epochs[n] == self.epoch[n] {
                    maxv(&mut self.dfl[n], &own);
                    if r.primary {
                        maxv(&mut self.pdfl[n], &own);
                    }
                }
                if confirmed && protocol != Protocol::A && snap.epochs[m] == self.epoch[m] {
                    let peer = snap.peer.clone();
                    maxv(&mut self.dfl[m], &peer);
                    if r.primary {
                        maxv(&mut self.pdfl[m], &peer);
                    }
                }
            }
        }
    }

    /// I4 as a client sees it: node `n` acknowledged a write at `now`; no
    /// node became Primary after `n` did and before now — unless that
    /// reign is over (the node is no longer Primary) and acknowledged no
    /// write: a reign that wrote nothing leaves no history for `n`'s
    /// writes to fork from (with writes, its new generation makes the
    /// next handshake a split brain, and `n` regains no quorum from it).
    ///
    /// Nor while that reign, with no write acknowledged yet, is not over
    /// but its node accepts no writes (a Primary without quorum, about to
    /// be deposed: the witness without its state ranks the two by their
    /// data, `Refusal::Behind`, and renews the one whose data is newer):
    /// Ok(true), that reign is overtaken, and a write it acknowledges
    /// later is a violation.
    pub fn ack_check(&self, sim: &Sim, n: usize, r: &AppReq) -> Result<bool, Violation> {
        if !self.ctl_mode || matches!(r.kind, AppKind::Flush) {
            return Ok(false);
        }
        let m = 1 - n;
        if self.overtaken[n] {
            return Err(self.v(
                "I4",
                format!(
                    "{} acknowledged a write at {:?} in a reign {} overtook (it acknowledged \
                     writes since {} became Primary)",
                    sim.nodes[n].name, sim.now, sim.nodes[m].name, sim.nodes[n].name
                ),
            ));
        }
        if let (Some(mine), Some(theirs)) = (self.reign[n], self.reign[m]) {
            let idle = self.reign_acks[m] == 0;
            let void = idle && !sim.nodes[m].is_primary();
            let shut = idle && !sim.nodes[m].core.as_ref().is_some_and(|c| c.accepts_writes());
            if theirs > mine && theirs <= sim.now && !void && shut {
                return Ok(true);
            }
            if theirs > mine && theirs <= sim.now && !void {
                return Err(self.v(
                    "I4",
                    format!(
                        "{} acknowledged a write at {:?}, after {} became Primary at {theirs:?}",
                        sim.nodes[n].name, sim.now, sim.nodes[m].name
                    ),
                ));
            }
        }
        Ok(false)
    }

    /// Node `n`'s reign is overtaken (`ack_check` said so).
    pub fn overtake(&mut self, n: usize) {
        self.overtaken[n] = true;
    }

    /// Node `n` acknowledged a write or zero as Primary (for `ack_check`).
    pub fn reign_ack(&mut self, n: usize) {
        self.reign_acks[n] += 1;
        self.acked_reign[n] = self.reign[n];
    }

    /// I1 at the reply: node `n` acknowledged write `r` while its disk is
    /// Failed (detached: what it holds counts for nothing, a full sync
    /// from the peer replaces it). The write must then be on the peer:
    /// in C (and adaptive) in its cache, unless the peer lost power since
    /// the submission (two failures: C keeps writes through one); in A
    /// the peer promises nothing, so no such write may be acknowledged.
    /// B is not checked (its peer confirms receipt, not a write in its
    /// cache). A FLUSH no peer took part in may not be acknowledged.
    pub fn failed_disk_ack(
        &self,
        sim: &Sim,
        n: usize,
        r: &AppReq,
        protocol: Protocol,
    ) -> Result<(), Violation> {
        if sim.nodes[n].core.as_ref().is_none_or(|c| c.disk() != DiskState::Failed) {
            return Ok(());
        }
        let m = 1 - n;
        let (id, off, len) = match &r.kind {
            AppKind::Write { id, off, len, .. } | AppKind::Zero { id, off, len, .. } => {
                (id, off, len)
            }
            // A FLUSH no peer took part in (protocol A) rests on the
            // failed disk alone.
            AppKind::Flush if protocol == Protocol::A => {
                return Err(self.v(
                    "I1",
                    format!(
                        "{} acknowledged a FLUSH only its Failed disk made durable",
                        sim.nodes[n].name
                    ),
                ));
            }
            // In C: what the node had acknowledged at its submission must
            // be on the peer (a flush submitted without a link, or
            // covering writes acknowledged apart, rests on them).
            AppKind::Flush if matches!(protocol, Protocol::C | Protocol::Adaptive) => {
                let Some(snap) = r.snapshot.as_ref() else { return Ok(()) };
                if self.power_losses[m] != r.peer_power || snap.epochs != self.epoch {
                    return Ok(());
                }
                let lacking = (0..snap.own.len()).find(|&b| {
                    snap.own[b] > 0
                        && self.pos(b, sim.nodes[m].disk.cell(b)).is_none_or(|p| p < snap.own[b])
                });
                return match lacking {
                    None => Ok(()),
                    Some(b) => Err(self.v(
                        "I1",
                        format!(
                            "{} acknowledged a FLUSH with its disk Failed, and {} lacks write {} \
                             it covers (cell {b})",
                            sim.nodes[n].name, sim.nodes[m].name, snap.own[b]
                        ),
                    )),
                };
            }
            _ => return Ok(()),
        };
        let on_peer = match protocol {
            Protocol::B => return Ok(()),
            // (In A too a write may wait for the peer's completion: a
            // reign's first writes, `session::PeerBehind`. Acknowledged
            // from a Failed disk, the peer must hold it.)
            Protocol::A | Protocol::C | Protocol::Adaptive => {
                self.power_losses[m] != r.peer_power
                    || cells(*off, *len)
                        .all(|b| self.pos(b, sim.nodes[m].disk.cell(b)).is_some_and(|p| p >= *id))
            }
        };
        if on_peer {
            return Ok(());
        }
        Err(self.v(
            "I1",
            format!(
                "{} acknowledged write {id} with its disk Failed, and {} does not hold it",
                sim.nodes[n].name, sim.nodes[m].name
            ),
        ))
    }

    /// I1 at the reply, on the peer's durable image: a FLUSH a Primary
    /// acknowledged in B or C (or a FUA write in C) over a link that stayed
    /// up since its submission promises that the peer made what it covers
    /// durable (its flush completed before it confirmed). Checked at once,
    /// not only at a power loss of the peer inside the window between the
    /// reply and the peer's own flush (a FLUSH answered before the peer's
    /// flush was found by 4 of 2,000 seeds of 5,000 steps that way, none
    /// of 2,000 of 1,000; plant `flush-without-peer`). Not for a peer whose
    /// disk failed or whose record says its data is not usable (as at a
    /// power loss, [`Checker::power_check`]).
    /// Ok(true): checked.
    pub fn peer_durable_ack(
        &self,
        sim: &Sim,
        n: usize,
        r: &AppReq,
        confirmed: bool,
        protocol: Protocol,
    ) -> Result<bool, Violation> {
        let m = 1 - n;
        if !confirmed || !r.primary || protocol == Protocol::A {
            return Ok(false);
        }
        let peer = &sim.nodes[m];
        let usable = peer.meta.at_start().is_some_and(|rec| {
            matches!(rec.disk, DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated)
        });
        if !usable || peer.core.as_ref().is_none_or(|c| c.disk() == DiskState::Failed) {
            return Ok(false);
        }
        if self.power_losses[m] != r.peer_power {
            return Ok(false);
        }
        let mut floor = vec![0u64; CELLS];
        match &r.kind {
            AppKind::Flush => {
                let Some(snap) = r.snapshot.as_ref() else { return Ok(false) };
                if snap.epochs[m] != self.epoch[m] {
                    return Ok(false);
                }
                floor.copy_from_slice(&snap.peer);
            }
            AppKind::Write { id, off, len, fua: true }
            | AppKind::Zero { id, off, len, fua: true }
                if matches!(protocol, Protocol::C | Protocol::Adaptive) =>
            {
                for b in cells(*off, *len) {
                    floor[b] = *id;
                }
            }
            _ => return Ok(false),
        }
        let cell = |b: usize| &peer.disk.durable[b * CELL as usize..(b + 1) * CELL as usize];
        match (0..CELLS)
            .find(|&b| floor[b] > 0 && self.pos(b, cell(b)).is_none_or(|p| p < floor[b]))
        {
            None => Ok(true),
            Some(b) => Err(self.v(
                "I1",
                format!(
                    "{} acknowledged {:?} and {}'s durable image lacks write {} it covers \
                     (cell {b} holds {:?})",
                    sim.nodes[n].name,
                    r.kind,
                    peer.name,
                    floor[b],
                    self.pos(b, cell(b))
                ),
            )),
        }
    }

    /// A store write/zero the Primary `n` performed (its apply history).
    pub fn primary_applied(&mut self, n: usize, off: u64, data: &[u8]) {
        for l in self.lineage.iter_mut().flatten() {
            if l.primary == n {
                l.log.push((off, data.to_vec()));
            }
        }
    }

    /// `behind_a`: its disk was UpToDate (protocol A, any role, linked or
    /// not), lacking a write its peer acknowledged as Primary while linked
    /// (see `a_behind`, [`Checker::lacks_a_acked`]).
    pub fn crashed(&mut self, n: usize, power: bool, behind_a: bool, lost_conf: bool) {
        // (A restarted core forgets that it was superseded: README.)
        self.superseded[n] = false;
        self.primary_without_quorum[n] = false;
        self.a_behind[n] |= behind_a;
        self.lost_conf[n] |= lost_conf;
        self.stats.lost_conf_crashes += u64::from(lost_conf);
        if power {
            // (What it acknowledged and had not flushed may be gone from
            // its own disk too: the power rules judge that.)
            self.a_acked[1 - n].iter_mut().for_each(|x| *x = 0);
        }
        self.kept[n] = None;
        self.synced_floor[n] = None;
        self.fl_b[n].iter_mut().for_each(|x| *x = 0);
        self.promotion[n] = None;
        for l in &mut self.lineage {
            if l.as_ref().is_some_and(|l| l.primary == n) {
                *l = None;
            }
        }
        if power {
            self.own[n].iter_mut().for_each(|x| *x = 0);
            self.power_losses[n] += 1;
            self.power_apart[n] = true;
            self.fo[n].iter_mut().for_each(|x| *x = 0);
            self.fl_c[n] = self.dfl[n].clone();
            self.lineage[n] = None;
            self.synced_floor[n] = None;
        }
    }

    /// The operator gave up node `n`'s changes (`discard-my-data`): the
    /// writes it acknowledged apart need not survive a failover to its
    /// peer any more.
    /// Node `n` confirmed its Primary's Outdate frame (`OutdateDone`, its
    /// record saying Outdated).
    pub fn outdated_by_frame(&mut self, n: usize) {
        self.stats.outdated_by_primary += 1;
        self.frame_outdated[n] = Some(0);
    }

    /// Node `n` acknowledged a write without a session with its peer
    /// (the peer did not get it then).
    pub fn write_acked_alone(&mut self, n: usize, gen: u64) {
        if let Some(alone) = self.frame_outdated[1 - n].as_mut() {
            *alone = gen;
        }
    }

    /// A witness without its record granted node `n`, vouched current by
    /// its replaced peer: what either node acknowledged alone before a
    /// replacement took it need not be on the other (the README's residual
    /// limit; the two are in sync, so nothing else is given up). Seed
    /// 18200516: the write b acknowledged alone before b's node was
    /// replaced, given up at b's blind grant, was still asked of a at a's
    /// promotion after b crashed.
    pub fn given_up_by_blind_grant(&mut self) {
        for f in &mut self.fo {
            f.iter_mut().for_each(|x| *x = 0);
        }
    }

    pub fn discarded(&mut self, n: usize) {
        self.lost_conf[n] = false;
        self.conf[n].iter_mut().for_each(|x| *x = 0);
        self.a_acked[1 - n].iter_mut().for_each(|x| *x = 0);
        self.frame_outdated = [None, None];
        self.kept[n] = None;
        self.own[n].iter_mut().for_each(|x| *x = 0);
        self.fo[1 - n].iter_mut().for_each(|x| *x = 0);
    }

    /// Node `n`'s disk lacks a write its Primary acknowledged on its word
    /// (B or C, see `conf`).
    pub fn lacks_confirmed(&self, sim: &Sim, n: usize) -> bool {
        (0..CELLS).any(|b| {
            self.conf[n][b] > 0
                && self.pos(b, sim.nodes[n].disk.cell(b)).is_none_or(|p| p < self.conf[n][b])
        })
    }

    /// Node `n`'s disk lacks a write its peer acknowledged in protocol A.
    pub fn lacks_a_acked(&self, sim: &Sim, n: usize) -> bool {
        (0..CELLS).any(|b| {
            self.a_acked[n][b] > 0
                && self.pos(b, sim.nodes[n].disk.cell(b)).is_none_or(|p| p < self.a_acked[n][b])
        })
    }

    pub fn disk_replaced(&mut self, n: usize) {
        // What `n` acknowledged in a reign the other node did not follow
        // (it was Primary elsewhere, cut off: I4's stale-read rules) was
        // on `n`'s disk alone, gone with it: the other node's reads lack
        // nothing that still exists (the residual limit of a lone
        // Primary's lost disk). Seed 31201889: b, Primary cut off, a
        // took over and acknowledged writes, then a's node was replaced;
        // b served reads again once the new a linked, and was taken for
        // reading stale data; its writes then, for writes after a's
        // reign (`ack_check`: that reign is void now, as one that
        // acknowledged nothing).
        self.acked_reign[n] = None;
        self.reign_acks[n] = 0;
        self.a_behind[n] = false;
        self.lost_conf[n] = false;
        self.conf[n].iter_mut().for_each(|x| *x = 0);
        self.a_acked[n].iter_mut().for_each(|x| *x = 0);
        self.frame_outdated = [None, None];
        self.kept[n] = None;
        self.unsynced[n] = true;
        self.epoch[n] += 1;
        self.fo[n].iter_mut().for_each(|x| *x = 0);
        self.synced_floor[n] = None;
        for f in [
            &mut self.fl_c[n],
            &mut self.fl_b[n],
            &mut self.dfl[n],
            &mut self.pdfl[n],
            &mut self.own[n],
        ] {
            f.iter_mut().for_each(|x| *x = 0);
        }
        self.lineage[n] = None;
    }

    /// Node `n`'s session with its peer reached its handshake's end now
    /// (seen between steps by [`Checker::observe`]; here for one that a
    /// crash's last frames finished and the crash ended in the same step).
    pub fn met_peer(&mut self, n: usize, now: Time) {
        self.superseded[n] = false;
        self.met[n] = Some(now);
    }

    pub fn lineage_broken(&mut self, n: usize) {
        self.lineage[n] = None;
    }

    /// Node `n` was promoted (`disk`: its disk state before; `held`: a
    /// loss held it back then, `Core`'s `lost_since_synced`).
    pub fn promoted(
        &mut self,
        sim: &Sim,
        n: usize,
        force: bool,
        disk: DiskState,
        held: bool,
    ) -> Result<(), Violation> {
        // (The checker's own record first: the core's below could miss
        // what it does not see.)
        if !force && self.lost_conf[n] {
            return Err(self.v(
                "I5",
                format!(
                    "{} promoted without --force ({disk:?}) lacking a write its Primary had \
                     acknowledged on its word, lost with its {}, before it met the peer again",
                    sim.nodes[n].name,
                    if self.protocol == Protocol::B { "page cache or queue" } else { "page cache" }
                ),
            ));
        }
        if !force && held {
            return Err(self.v(
                "I5",
                format!(
                    "{} promoted without --force ({disk:?}) while it may lack writes it confirmed \
                     to its peer (a lost page cache or received writes) and had not met it since",
                    sim.nodes[n].name
                ),
            ));
        }
        if !force
            && matches!(
                disk,
                DiskState::Inconsistent
                    | DiskState::Outdated
                    | DiskState::Failed
                    | DiskState::Diskless
            )
        {
            return Err(self
                .v("I5", format!("{} promoted without --force from {disk:?}", sim.nodes[n].name)));
        }
        if !force && self.unsynced[n] {
            return Err(self.v(
                "I5",
                format!(
                    "{} promoted without --force ({disk:?}) with data never synced since it was created or replaced",
                    sim.nodes[n].name
                ),
            ));
        }
        if !force && self.a_behind[n] {
            return Err(self.v(
                "I5",
                format!(
                    "{} promoted without --force ({disk:?}) after its process stopped lacking a \
                     write its protocol-A Primary had acknowledged, before it met the peer again",
                    sim.nodes[n].name
                ),
            ));
        }
        self.a_behind[n] = false;
        self.lost_conf[n] = false;
        self.conf[n].iter_mut().for_each(|x| *x = 0);
        // Its data is the truth from now on, but for what its peer sent
        // before it said Secondary and is still queued here: that is still
        // to be here (review, helper-92: a node promoted so and killed came
        // back without it, promoted without `--force`). (Not what is
        // lacking for good: a double failure the promotion accepted.)
        let queued = sim.nodes[n].core.as_ref().is_some_and(|c| c.unwritten_peer_writes() > 0);
        if force || !queued {
            self.a_acked[n].iter_mut().for_each(|x| *x = 0);
        }
        if !force && self.frame_outdated[n].is_some_and(|g| g != 0) {
            return Err(self.v(
                "I5",
                format!(
                    "{} promoted without --force ({disk:?}) without the writes its Primary \
                     acknowledged after outdating it",
                    sim.nodes[n].name
                ),
            ));
        }
        if force {
            self.unsynced[n] = false;
            self.frame_outdated = [None, None];
        }
        // (Its own reign now: the outdate is over.)
        self.frame_outdated[n] = None;
        self.lineage[n] = None;
        self.reign[n] = Some(sim.now);
        self.reign_acks[n] = 0;
        self.superseded[n] = false;
        self.superseded[1 - n] = sim.nodes[1 - n].is_primary();
        self.overtaken[n] = false;
        // The peer's writes as Primary before this reign are this node's
        // to keep or drop now.
        self.own[1 - n].iter_mut().for_each(|x| *x = 0);
        // `--force` on a disk that is not UpToDate, or on one a loss held
        // back: the operator accepted that what it lacks is gone.
        if force && (disk != DiskState::UpToDate || held) {
            self.stats.held_forced += u64::from(held);
            self.kept = [None, None];
            self.synced_floor = [None, None];
            self.epoch[0] += 1;
            self.epoch[1] += 1;
            self.lost_conf = [false, false];
            for m in 0..2 {
                for f in [
                    &mut self.conf[m],
                    &mut self.fl_c[m],
                    &mut self.fl_b[m],
                    &mut self.dfl[m],
                    &mut self.pdfl[m],
                    &mut self.fo[m],
                    &mut self.own[m],
                ] {
                    f.iter_mut().for_each(|x| *x = 0);
                }
            }
            return Ok(());
        }
        let mut floor = self.floor(n);
        maxv(&mut floor, &self.fo[n]);
        self.promotion[n] =
            Some(PendingPromotion { deadline: sim.now + Duration::from_secs(3), floor });
        Ok(())
    }

    // ----- the checks -----

    pub fn observe(&mut self, sim: &Sim) -> Result<(), Violation> {
        self.stats.steps += 1;
        for n in 0..2 {
            // Met its peer again (the handshake judged what it lacks), or
            // the node took itself for behind (Consistent: promoted only by
            // force, or made UpToDate by a handshake).
            if sim.nodes[n].core.as_ref().is_some_and(|c| {
                c.connection() == Connection::Connected || c.disk() != DiskState::UpToDate
            }) {
                self.a_behind[n] = false;
            }
            // Demoted without quorum: another node may be promoted after
            // (a deposed node hears the witness name the new holder before
            // that node has heard its grant), and its copy is stale then.
            let primary = sim.nodes[n].is_primary();
            if self.ctl_mode && std::mem::take(&mut self.primary_without_quorum[n]) && !primary {
                self.superseded[n] = true;
            }
            self.primary_without_quorum[n] = primary
                && sim.nodes[n]
                    .core
                    .as_ref()
                    .and_then(|c| c.controller())
                    .is_some_and(|c| !c.quorum);
            // Met its peer (a resync takes the peer's data), or its disk
            // is read nowhere (`Core::read_gate`'s superseded copy).
            if sim.nodes[n]
                .core
                .as_ref()
                .is_none_or(|c| c.connection() == Connection::Connected || c.may_read().is_err())
            {
                self.superseded[n] = false;
            }
            if sim.nodes[n].core.as_ref().is_some_and(|c| c.connection() == Connection::Connected) {
                self.met_peer(n, sim.now);
            }
            if sim.replication(n) != Replication::Off && std::mem::take(&mut self.lost_conf[n]) {
                // The handshake judged what it lacks: a sync as target
                // brings it, else (a source, the peer worse off) it is
                // gone from the pair and no longer expected here.
                self.conf[n].iter_mut().for_each(|x| *x = 0);
            }
        }
        if sim.replication(0) != Replication::Off && sim.replication(1) != Replication::Off {
            self.stats.connected_steps += 1;
        }
        if sim.nodes.iter().any(|n| n.is_primary()) {
            self.stats.primary_steps += 1;
        }
        if sim.nodes.iter().any(|n| n.core.as_ref().is_some_and(|c| c.status().split_brain)) {
            self.stats.split_brain_steps += 1;
        }
        if sim.nodes.iter().any(|n| {
            n.core.as_ref().is_some_and(|c| {
                c.role() == Role::Primary && c.controller().is_some_and(|s| !s.quorum)
            })
        }) {
            self.stats.no_quorum_steps += 1;
        }
        for n in 0..2 {
            // A failed disk's data counts for nothing (what its node
            // acknowledged rests on the peer, as the other floors say).
            if sim.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::Failed) {
                self.own[n].iter_mut().for_each(|x| *x = 0);
                self.kept[n] = None;
            }
        }
        self.follow_syncs(sim)?;
        self.follow_adoptions(sim);
        self.follow_power(sim);
        self.check_core_caches(sim)?;
        self.check_i4_i5(sim)?;
        self.check_promotions(sim)?;
        self.check_i2(sim)?;
        self.check_i3(sim)?;
        self.check_i6(sim)?;
        self.check_flapping(sim)?;
        self.follow_reads(sim);
        Ok(())
    }

    /// I7: when each Primary's reads became settled.
    fn follow_reads(&mut self, sim: &Sim) {
        for n in 0..2 {
            let settled = sim.nodes[n].core.as_ref().is_some_and(|c| {
                c.role() == Role::Primary && c.may_read().is_ok() && c.reads_settled()
            });
            let primary = sim.nodes[n].is_primary();
            if !primary {
                self.reads_open[n] = None;
            } else if settled && self.reads_open[n].is_none() {
                self.reads_open[n] = Some(sim.next_uid);
            }
        }
    }

    /// I7: a store write or zero the Primary `node` (index `n`) issues:
    /// none of its peer's once its reads were settled. A write's cells
    /// name the application write they hold (its own: submitted after that
    /// moment, or a request still pending); zeroes name none, so one of its
    /// own pending zero requests must cover them.
    pub fn primary_store(&self, n: usize, node: &Node, op: &StoreOp) -> Result<(), Violation> {
        let Some(open) = self.reads_open[n] else { return Ok(()) };
        let own_write = |id| {
            node.reqs.values().any(|r| matches!(r.kind, AppKind::Write { id: w, .. } if w == id))
        };
        let peers = match op {
            StoreOp::Write { offset, data, .. } => {
                data.chunks(CELL as usize).enumerate().find_map(|(i, cell)| {
                    let c = (offset / CELL) as usize + i;
                    decode(c, cell)
                        .filter(|&id| id != 0 && id < open && !own_write(id))
                        .map(|id| format!("writes cell {c} with write {id} of its peer's stream"))
                })
            }
            StoreOp::Zero { offset: o, len: l, .. } => {
                let own = node.reqs.values().any(|r| {
                    matches!(r.kind, AppKind::Zero { off, len, .. } if off <= *o && o + l <= off + len)
                });
                (!own).then(|| format!("zeroes {o}+{l}, none of its own pending requests"))
            }
            _ => None,
        };
        match peers {
            None => Ok(()),
            Some(what) => Err(self.v(
                "I7",
                format!(
                    "{} is Primary and said its reads were settled, and now {what}: a read \
                     before saw older data",
                    node.name
                ),
            )),
        }
    }

    /// Adaptive seeds: switches counted, and no flapping.
    fn check_flapping(&mut self, sim: &Sim) -> Result<(), Violation> {
        if !self.adaptive {
            return Ok(());
        }
        self.stats.adaptive_ms += sim.now.saturating_sub(self.last_now).as_millis() as u64;
        self.last_now = sim.now;
        for n in 0..2 {
            let Some(c) = &sim.nodes[n].core else {
                self.switches_seen[n] = 0;
                continue;
            };
            let ahead = c.replication() == Replication::Ahead;
            if ahead {
                self.stats.ahead_steps += 1;
            }
            match c.replication() {
                Replication::Ahead => self.was_ahead[n] = true,
                Replication::Established if self.was_ahead[n] => {
                    self.stats.catch_ups_done += 1;
                    self.was_ahead[n] = false;
                }
                Replication::Off => self.was_ahead[n] = false,
                _ => {}
            }
            let seen = c.status().counters.mode_switches;
            // A restarted core counts from 0.
            let new = seen.saturating_sub(self.switches_seen[n].min(seen));
            self.switches_seen[n] = seen;
            let q = &mut self.switch_times[n];
            for _ in 0..new {
                q.push_back(sim.now);
            }
            self.stats.mode_switches += new;
            while q.front().is_some_and(|t| sim.now.saturating_sub(*t) >= FLAP_WINDOW) {
                q.pop_front();
            }
            let len = q.len();
            self.stats.max_switches_window = self.stats.max_switches_window.max(len as u64);
            if len > FLAP_LIMIT {
                return Err(self.v(
                    "adaptive-flap",
                    format!(
                        "{} switched modes {} times within {FLAP_WINDOW:?} (limit {FLAP_LIMIT})",
                        sim.nodes[n].name, len
                    ),
                ));
            }
        }
        Ok(())
    }

    /// A SyncTarget's data becomes the source's: so do its floors.
    fn follow_syncs(&mut self, sim: &Sim) -> Result<(), Violation> {
        for n in 0..2 {
            let target = sim.replication(n) == Replication::SyncTarget;
            if target {
                self.stats.target_steps += 1;
            }
            if sim.nodes[n].core.as_ref().is_some_and(|c| c.rebuild_retry_at().is_some()) {
                self.stats.rebuild_wait_steps += 1;
            }
            if target && !self.was_target[n] {
                self.stats.syncs_started += 1;
                self.epoch[n] += 1;
                // Until the sync completes the node holds a mix: no floors;
                // then the source's floors of the sync's start (what it
                // then held is what the sync brings, besides the writes
                // replicated meanwhile, which confirm floors directly).
                let sid = sim.nodes[n].core.as_ref().and_then(|c| c.session_id()).unwrap_or(0);
                // When both nodes lost power since they were last in sync,
                // each may lack unflushed writes the other holds, and
                // neither is the better source: what is owed is what a
                // Primary promised its client, FUA writes and what its
                // acknowledged FLUSH covered (`pdfl`), not what the target
                // made durable by a FLUSH of its own as a Secondary (seed
                // 9570026: b flushed a write its Primary never flushed;
                // both lost power; the last Primary was the source). A
                // Primary's FLUSH acknowledged while the link was down is
                // on it alone: the node promoted later makes its data
                // durable before its promotion counts (review).
                let kept_floor = if self.power_apart[0] && self.power_apart[1] {
                    self.pdfl[n].clone()
                } else {
                    self.floor(n)
                };
                self.synced_floor[n] = Some((sid, self.floor(1 - n)));
                self.sync_sid[n] = Some(sid);
                // On one generation, what the node acknowledged as Primary
                // must come out of the sync (checked at its end).
                self.own_sync[n] = self.same_gen;
                if !self.same_gen {
                    self.own[n].iter_mut().for_each(|x| *x = 0);
                }
                // (Not for a node whose disk was already a mix, a sync
                // target before: the Primary alone held the data then, and
                // what it did not flush is lost with its power.)
                self.kept[n] = (self.same_gen && self.protocol != Protocol::A && self.was_up[n])
                    .then_some(kept_floor);
                for f in [
                    &mut self.conf[n],
                    &mut self.fl_c[n],
                    &mut self.fl_b[n],
                    &mut self.dfl[n],
                    &mut self.pdfl[n],
                    &mut self.fo[n],
                ] {
                    f.iter_mut().for_each(|x| *x = 0);
                }
                self.lineage[n] = None;
            }
            // Back in sync with a peer that wrote nothing alone since the
            // outdate (its generation is this node's): the outdate is over.
            // Or UpToDate on the generation of the peer's last write
            // acknowledged alone: a sync brought it those (its end may be
            // cut in the very step that delivered it, which the sync's own
            // end below does not see: simulator seed 12101159).
            let over = match self.frame_outdated[n] {
                Some(0) => sim.nodes[n].core.as_ref().is_some_and(|c| {
                    c.replication() == Replication::Established && c.disk() == DiskState::UpToDate
                }),
                Some(alone) => sim.nodes[n]
                    .core
                    .as_ref()
                    .is_some_and(|c| c.disk() == DiskState::UpToDate && c.gen().current == alone),
                None => false,
            };
            if over {
                self.frame_outdated[n] = None;
            }
            let was_target = std::mem::replace(&mut self.was_target[n], target);
            // Ended: the same session is Established. The data came,
            // whatever the disk state says of writes the node acknowledged
            // before (Outdated: they are lost); completed if UpToDate, or
            // Consistent (the source was: protocol A, it may lack what its
            // Primary answered alone, and so may the copy).
            let ended = sim.nodes[n].core.as_ref().filter(|c| {
                c.replication() == Replication::Established
                    && self.synced_floor[n]
                        .as_ref()
                        .is_some_and(|(sid, _)| c.session_id() == Some(*sid))
            });
            let disk = ended.map(|c| c.disk());
            // (The data came by the sync even if a forced promotion since
            // dropped its floors.)
            let data_came = sim.nodes[n].core.as_ref().is_some_and(|c| {
                c.replication() == Replication::Established
                    && self.sync_sid[n].is_some_and(|sid| c.session_id() == Some(sid))
                    && matches!(
                        c.disk(),
                        DiskState::UpToDate | DiskState::Outdated | DiskState::Consistent
                    )
            });
            if data_came {
                self.unsynced[n] = false;
            }
            // Or the link went down in the very step that brought SyncDone
            // (a crash of the source delivers what it had sent): a target
            // at the last step, now without a session and with the data
            // complete (Consistent, or UpToDate: seeds 207468 and 204895,
            // a replaced disk's sync).
            // (Its floors may have been reset in that step, by a forced
            // promotion of the source: seed 600608 at 5,000 steps.)
            let cut_after_done = was_target
                && sim.nodes[n].core.as_ref().is_some_and(|c| {
                    c.session_id().is_none()
                        && matches!(c.disk(), DiskState::UpToDate | DiskState::Consistent)
                });
            if cut_after_done {
                self.unsynced[n] = false;
            }
            let cut_up = cut_after_done
                && sim.nodes[n].core.as_ref().is_some_and(|c| c.disk() == DiskState::UpToDate);
            if matches!(disk, Some(DiskState::UpToDate | DiskState::Consistent)) || cut_up {
                // (The sync brought the peer's writes.)
                self.frame_outdated[n] = None;
                if let Some((_, f)) = self.synced_floor[n].take() {
                    self.stats.syncs_done += 1;
                    maxv(&mut self.fl_c[n], &f);
                    if std::mem::take(&mut self.own_sync[n]) {
                        self.check_own(sim, n)?;
                    }
                    if let Some(kept) = self.kept[n].take() {
                        self.check_kept(sim, n, &kept)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// I1 (B and C): a sync on one generation into node `n` ended; what
    /// its floors said at the sync's start is still there.
    fn check_kept(&mut self, sim: &Sim, n: usize, kept: &[u64]) -> Result<(), Violation> {
        self.stats.kept_checks += 1;
        let node = &sim.nodes[n];
        let lacking = (0..CELLS)
            .find(|&b| kept[b] > 0 && self.pos(b, node.disk.cell(b)).is_none_or(|p| p < kept[b]));
        let Some(b) = lacking else { return Ok(()) };
        Err(self.v(
            "I1",
            format!(
                "a sync on one generation into {} overwrote write {} it held for its peer \
                 (cell {b} holds {:?})",
                node.name,
                kept[b],
                decode(b, node.disk.cell(b))
            ),
        ))
    }

    /// I1 (`own`): a sync on one generation into node `n` ended; the writes
    /// it acknowledged as Primary since its peer's last promotion are there.
    fn check_own(&mut self, sim: &Sim, n: usize) -> Result<(), Violation> {
        self.stats.own_checks += 1;
        let node = &sim.nodes[n];
        let lacking = (0..CELLS).find(|&b| {
            self.own[n][b] > 0 && self.pos(b, node.disk.cell(b)).is_none_or(|p| p < self.own[n][b])
        });
        let Some(b) = lacking else { return Ok(()) };
        Err(self.v(
            "I1",
            format!(
                "a sync on one generation into {} overwrote write {} it acknowledged as the \
                 last Primary (cell {b} holds {:?})",
                node.name,
                self.own[n][b],
                decode(b, node.disk.cell(b))
            ),
        ))
    }

    /// Two nodes Established on one session are in sync: a power loss
    /// before it is no longer "apart".
    fn follow_power(&mut self, sim: &Sim) {
        let established = |n: usize| {
            sim.nodes[n]
                .core
                .as_ref()
                .filter(|c| c.replication() == Replication::Established)
                .and_then(|c| c.session_id())
        };
        if established(0).is_some() && established(0) == established(1) {
            self.power_apart = [false, false];
        }
    }

    /// The link came up: whether each node may adopt its peer's data
    /// without a sync in this session (see `follow_adoptions`).
    pub fn linked(&mut self, nodes: &[crate::Node]) {
        let gen = |n: usize| nodes[n].core.as_ref().map(|c| c.gen().current);
        self.same_gen = gen(0).is_some() && gen(0) == gen(1);
        let zero = |n: usize| nodes[n].disk.cache.iter().all(|&x| x == 0);
        let both = zero(0) && zero(1);
        for n in 0..2 {
            self.adoptable[n] = both && !self.unsynced[1 - n];
        }
    }

    /// A node with new data that its core makes UpToDate without a sync
    /// (a disk as created, adopted by a peer whose data was good and as
    /// created too when the link came up: both all zeroes, so identical;
    /// what the peer writes later is replicated) has its data. (Checked
    /// at the step it turns UpToDate or Consistent: the link may be cut,
    /// or the peer crash or be replaced, in the same step.)
    fn follow_adoptions(&mut self, sim: &Sim) {
        let up = |m: usize| {
            sim.nodes[m]
                .core
                .as_ref()
                .is_some_and(|c| matches!(c.disk(), DiskState::UpToDate | DiskState::Consistent))
        };
        for n in 0..2 {
            if self.unsynced[n] && up(n) && !self.was_up[n] && self.adoptable[n] {
                self.unsynced[n] = false;
            }
        }
        self.was_up = [up(0), up(1)];
    }

    /// What a core keeps to spare itself work (hints, counts) agrees with
    /// the state it summarises (`Core::check_caches`).
    fn check_core_caches(&self, sim: &Sim) -> Result<(), Violation> {
        for n in &sim.nodes {
            if let Some(Err(what)) = n.core.as_ref().map(|c| c.check_caches()) {
                return Err(Violation {
                    step: self.step,
                    rule: "core cache",
                    what: format!("{}: {what}", n.name),
                });
            }
        }
        Ok(())
    }

    fn check_i4_i5(&self, sim: &Sim) -> Result<(), Violation> {
        let writers = sim
            .nodes
            .iter()
            // (A paused process accepts nothing until it resumes, its
            // clock told the time first.)
            .filter(|n| !n.paused() && n.core.as_ref().is_some_and(|c| c.accepts_writes()))
            .count();
        if writers > 1 {
            return Err(self.v("I4", "both nodes accept writes".into()));
        }
        for (n, node) in sim.nodes.iter().enumerate() {
            if let Some(c) = &node.core {
                // Stale reads after a failover: a Primary serves reads
                // (`Core::read_gate`) only in a reign the other node did
                // not follow with acknowledged writes of its own.
                let m = 1 - n;
                if self.ctl_mode
                    && c.role() == Role::Primary
                    && c.may_read().is_ok()
                    && c.read_gate(sim.now, true) == ReadGate::Serve
                {
                    // (Any reign of the other's since counts, also one
                    // followed by a later reign that acknowledged nothing
                    // yet.)
                    if let (Some(mine), Some(theirs)) = (self.reign[n], self.acked_reign[m]) {
                        if theirs > mine {
                            return Err(self.v(
                                "I4",
                                format!(
                                    "{} serves reads as Primary (since {mine:?}) after {}, \
                                     Primary since {theirs:?}, acknowledged writes it lacks",
                                    node.name, sim.nodes[m].name
                                ),
                            ));
                        }
                    }
                }
                // Nor once demoted, apart from the node that superseded it.
                if self.ctl_mode
                    && self.superseded[n]
                    && c.role() != Role::Primary
                    && self.acked_reign[m] > self.reign[n]
                    && self.met[n] < self.acked_reign[m]
                    && c.may_read().is_ok()
                    && c.read_gate(sim.now, false) == ReadGate::Serve
                {
                    return Err(self.v(
                        "I4",
                        format!(
                            "{} serves reads as a Secondary apart from {}, Primary since {:?} \
                             (while {} was Primary), which acknowledged writes it lacks",
                            node.name, sim.nodes[m].name, self.reign[m], node.name
                        ),
                    ));
                }
                if self.unsynced[n] && c.may_read().is_ok() {
                    return Err(self.v(
                        "I5",
                        format!(
                            "{} serves reads of data never synced since it was created or replaced",
                            node.name
                        ),
                    ));
                }
                let d = c.disk();
                if matches!(
                    d,
                    DiskState::Inconsistent
                        | DiskState::Outdated
                        | DiskState::Failed
                        | DiskState::Diskless
                ) && c.may_read().is_ok()
                {
                    return Err(
                        self.v("I5", format!("{} serves reads from a {d:?} disk", node.name))
                    );
                }
            }
        }
        Ok(())
    }

    fn check_promotions(&mut self, sim: &Sim) -> Result<(), Violation> {
        for n in 0..2 {
            let Some(p) = &self.promotion[n] else { continue };
            let node = &sim.nodes[n];
            let Some(c) = node
                .core
                .as_ref()
                .filter(|c| c.role() == Role::Primary && c.disk() != DiskState::Failed)
            else {
                self.promotion[n] = None;
                continue;
            };
            let mut missing = None;
            for b in 0..CELLS {
                let pos = self.pos(b, node.disk.cell(b));
                if pos.is_none_or(|p| p < self.promotion[n].as_ref().expect("p").floor[b]) {
                    missing = Some((b, pos));
                    break;
                }
            }
            match missing {
                None => {
                    self.stats.promotions_checked += 1;
                    self.promotion[n] = None
                }
                Some((b, pos)) if sim.now >= p.deadline || c.quiescent() => {
                    return Err(self.v(
                        "I1",
                        format!(
                            "{} promoted: cell {b} holds {pos:?}, older than an acknowledged write {}",
                            node.name, p.floor[b]
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// At a power loss: the durable image holds the node's durable floors.
    pub fn power_check(&mut self, sim: &Sim, n: usize) -> Result<(), Violation> {
        let node = &sim.nodes[n];
        let usable = node.meta.at_start().is_some_and(|m| {
            matches!(m.disk, DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated)
        });
        if !usable {
            return Ok(());
        }
        self.stats.power_checks += 1;
        for b in 0..CELLS {
            let pos = self.pos(b, node.disk.cell(b));
            if pos.is_none_or(|p| p < self.dfl[n][b]) {
                return Err(self.v(
                    "I1",
                    format!(
                        "{} lost power: cell {b} holds {pos:?}, older than an acknowledged FLUSH/FUA floor {}",
                        node.name, self.dfl[n][b]
                    ),
                ));
            }
        }
        Ok(())
    }

    /// I2: connected, Established, quiescent, nothing in flight: identical.
    fn check_i2(&mut self, sim: &Sim) -> Result<(), Violation> {
        let Some(sid) = sim.link_sid() else { return Ok(()) };
        for node in &sim.nodes {
            let Some(c) = &node.core else { return Ok(()) };
            if c.session_id() != Some(sid)
                || c.replication() != Replication::Established
                || !c.quiescent()
            {
                return Ok(());
            }
        }
        if !sim.idle() {
            return Ok(());
        }
        // Only a pair with data to agree on: no detached (Failed) disk, and
        // not two disks that both wait for `primary --force`.
        let disks: Vec<DiskState> =
            sim.nodes.iter().filter_map(|n| n.core.as_ref().map(|c| c.disk())).collect();
        if disks.iter().any(|d| matches!(d, DiskState::Failed | DiskState::Diskless))
            || !disks.iter().any(|d| matches!(d, DiskState::UpToDate | DiskState::Consistent))
        {
            return Ok(());
        }
        self.stats.i2_checks += 1;
        if let Some(b) =
            (0..BLOCKS).find(|&b| sim.nodes[0].disk.block(b) != sim.nodes[1].disk.block(b))
        {
            return Err(self.v(
                "I2",
                format!("connected and quiescent but block {b} differs ({})", diff(sim, b)),
            ));
        }
        Ok(())
    }

    /// I3: every differing block is covered by durable metadata.
    fn check_i3(&mut self, sim: &Sim) -> Result<(), Violation> {
        let never = |n: usize| {
            let node = &sim.nodes[n];
            node.recreated_pending()
                || node.meta.at_start().is_none_or(|m| {
                    (m.gen.current == NEVER_SYNCED && !m.fresh) || m.disk == DiskState::Failed
                })
        };
        if never(0) || never(1) {
            // A full resync to that node follows any connect.
            return Ok(());
        }
        if let (Some(a), Some(b)) = (sim.nodes[0].meta.at_start(), sim.nodes[1].meta.at_start()) {
            let nothing_claimed = match decide(&a.gen, &b.gen) {
                // Never synced over (an operator forced a replaced disk
                // while the other held data): nothing is claimed; or the
                // next connect moves all of one disk to the other, if
                // anything (a split brain is resolved by a full sync; a
                // forced partly synced or failed disk marks every block,
                // and its record waits for that bitmap).
                Decision::Unrelated
                | Decision::SplitBrain
                | Decision::SyncSource { full: true }
                | Decision::SyncTarget { full: true } => true,
                // An Inconsistent disk whose generations say it is the
                // newer (a resync into a failed disk from an older
                // generation, cut short) takes a full sync too.
                Decision::SyncSource { .. } => a.disk == DiskState::Inconsistent,
                Decision::SyncTarget { .. } => b.disk == DiskState::Inconsistent,
                _ => false,
            };
            if nothing_claimed {
                return Ok(());
            }
        }
        for b in 0..BLOCKS {
            if sim.nodes[0].disk.block(b) == sim.nodes[1].disk.block(b) {
                continue;
            }
            self.stats.i3_diff_blocks += 1;
            let e = b as u64 * BLOCK / EXTENT;
            let covered = sim.nodes.iter().any(|n| n.meta.bit(b) || n.meta.al.contains(&e));
            if !covered {
                return Err(self.v(
                    "I3",
                    format!(
                        "block {b} differs ({}) and no durable bitmap bit or AL extent covers it",
                        diff(sim, b)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// I6: a Secondary holds a state of the Primary's apply history.
    fn check_i6(&mut self, sim: &Sim) -> Result<(), Violation> {
        for n in 0..2 {
            let p = 1 - n;
            let (sn, pn) = (&sim.nodes[n], &sim.nodes[p]);
            let primary_ok = pn
                .core
                .as_ref()
                .is_some_and(|c| c.role() == Role::Primary && c.disk() != DiskState::Failed);
            let sec = sn.core.as_ref().map(|c| (c.role(), c.disk(), c.replication()));
            let invalid = !primary_ok
                || matches!(sec, Some((Role::Primary, _, _)))
                || matches!(sec, Some((_, DiskState::Inconsistent | DiskState::Failed, _)))
                || matches!(sec, Some((_, _, Replication::SyncTarget)));
            if invalid {
                self.lineage[n] = None;
                continue;
            }
            if let Some(l) = &self.lineage[n] {
                if let Some((Role::Secondary, DiskState::UpToDate | DiskState::Consistent, _)) = sec
                {
                    self.stats.i6_checks += 1;
                    if sn.disk.cache != pn.disk.cache {
                        self.stats.i6_nontrivial += 1;
                    }
                    if !in_history(&l.base, &l.log, &sn.disk.cache) {
                        return Err(self.v(
                            "I6",
                            format!(
                                "{} holds no state of {}'s apply history ({} operations since they were identical)",
                                sn.name,
                                pn.name,
                                l.log.len()
                            ),
                        ));
                    }
                }
            }
            // (Re)base when identical and nothing is under way.
            let quiet = sn.core.as_ref().is_some_and(|c| c.quiescent())
                && pn.core.as_ref().is_some_and(|c| c.quiescent())
                && sim.idle();
            if quiet && sn.disk.cache == pn.disk.cache && sec.is_some() {
                self.lineage[n] =
                    Some(Lineage { primary: p, base: pn.disk.cache.clone(), log: Vec::new() });
            }
        }
        Ok(())
    }
}

/// Whether `content` equals `base` after some prefix of `log`.
fn in_history(base: &[u8], log: &[(u64, Vec<u8>)], content: &[u8]) -> bool {
    let bs = BLOCK as usize;
    let mut cur = base.to_vec();
    let mut mm: Vec<bool> =
        (0..BLOCKS).map(|b| cur[b * bs..(b + 1) * bs] != content[b * bs..(b + 1) * bs]).collect();
    let mut count = mm.iter().filter(|x| **x).count();
    if count == 0 {
        return true;
    }
    for (off, data) in log {
        let o = *off as usize;
        cur[o..o + data.len()].copy_from_slice(data);
        for b in blocks(*off, data.len() as u64) {
            let now = cur[b * bs..(b + 1) * bs] != content[b * bs..(b + 1) * bs];
            if now != mm[b] {
                if now {
                    count += 1;
                } else {
                    count -= 1;
                }
                mm[b] = now;
            }
        }
        if count == 0 {
            return true;
        }
    }
    false
}
