//! The sync handshake: on every new link both nodes send a hello (identity,
//! role, disk state, generation ids) and their whole out-of-sync bitmap
//! (which includes a crashed node's activity-log extents), then run the
//! same decision on the same inputs (shared/DESIGN.md "Connecting").
//! Application writes wait while it runs.

use crate::protocol::genid::{
    decide, resolve_split_brain, Decision, GenIds, SplitBrainPolicy, SplitSide, NEVER_SYNCED,
};
use crate::protocol::wire::{self, DiskState, Hello, Lost, Message, Role};

use super::session::{Activity, Adoption, Phase, Session, SourceStart, SourceSync};
use super::types::{Linking, Plant, Progress, SessionId, Time};
use super::{Action, Core};

/// Blocks of the bitmap each frame of the exchange covers: one word
/// list's worth (a BIT-WORDS frame of 64 KiB).
pub(crate) const WINDOW: u64 = wire::MAX_BIT_WORDS as u64 * 64;
/// Runs a BITS frame carries at most: past it the window's blocks go as
/// the bitmap's words, which are no bigger.
const RUNS_PER_FRAME: usize = wire::MAX_BIT_WORDS / 2;

/// Which side's disk holds no usable data while the other's does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unusable {
    /// This node's: it takes a full sync. `lost`: the peer does not know
    /// this node's generation (newer, split or unrelated: it may have
    /// acknowledged writes the peer never got before its disk failed):
    /// after the sync it is Outdated.
    Mine { lost: bool },
    /// The peer's: it takes a full sync from this node.
    Peer,
    /// Neither holds usable data: nothing can move until an operator
    /// declares one disk good (`primary --force`).
    Both,
}

/// A disk with no usable data (Failed, or Inconsistent: a resync into it
/// did not finish) facing one with usable data takes a full sync when its
/// generations do not say it is the peer's target (they say it is newer,
/// split or unrelated), and always if it failed (a Failed disk keeps its
/// generation ids to know what it acknowledged; its blocks are not to be
/// trusted). The same answer, mirrored, on both sides: each applies the
/// rule to (mine, peer) in its own order, and `decide` is mirrored. Two
/// disks with no usable data wait for `primary --force`.
fn unusable_side(
    decision: Decision,
    mine: (DiskState, &GenIds),
    peer: (DiskState, &GenIds),
) -> Option<Unusable> {
    let (my_usable, peer_usable) = (disk_rank(mine.0) > 0, disk_rank(peer.0) > 0);
    if !my_usable && !peer_usable {
        return Some(Unusable::Both);
    }
    // (`toward`: the decision already moves data to that side.)
    let takes_full = |disk: DiskState, toward: bool| {
        disk == DiskState::Failed
            || (!toward && !matches!(decision, Decision::InSync | Decision::WaitForForce))
    };
    if !my_usable
        && peer.1.current != NEVER_SYNCED
        && takes_full(mine.0, matches!(decision, Decision::SyncTarget { .. }))
    {
        // Unless the peer's data descends from ours (or is ours), what
        // this node acknowledged in its own generation is not there.
        let lost = !matches!(decision, Decision::SyncTarget { .. } | Decision::InSync);
        return Some(Unusable::Mine { lost });
    }
    if !peer_usable
        && mine.1.current != NEVER_SYNCED
        && takes_full(peer.0, matches!(decision, Decision::SyncSource { .. }))
    {
        return Some(Unusable::Peer);
    }
    None
}

fn disk_rank(d: DiskState) -> u8 {
    match d {
        DiskState::UpToDate => 3,
        DiskState::Consistent => 2,
        DiskState::Outdated => 1,
        _ => 0,
    }
}

impl Core {
    /// A link to the peer is up (`sid`: the shell's number for it).
    pub fn handle_link_up(&mut self, now: Time, sid: SessionId) {
        self.now = self.now.max(now);
        if let Some(why) = self.link_refused() {
            self.actions.push_back(Action::Close { session: sid, reason: why.into() });
            return;
        }
        if let Some(old) = self.session_id() {
            self.close_session(old, "replaced by a new connection".into());
        }
        let mut session = Session::new(sid, self.now, &self.cfg);
        // (Not drawn from `random_id`'s sequence: a connection does not
        // move the generation ids the simulator's seeds reproduce.)
        let mut x = self.rng ^ sid.rotate_left(32) ^ 0x6e6f_6e63_6500_0000;
        session.nonce = super::splitmix(&mut x).max(1);
        self.session = Some(session);
        let hello = self.hello();
        if let Some(s) = self.session.as_mut() {
            // The decision uses what both sides were told, whatever the
            // operator does meanwhile: it stays the same on both sides.
            s.hello_role = hello.role;
            s.hello_disk = hello.disk;
            s.hello_promoted_at = hello.promoted_at;
            s.hello_lost = hello.lost;
            s.hello_full_sync = hello.full_sync;
            s.hello_discard = hello.discard;
        }
        if hello.fresh {
            // A fresh peer may take our generation at this handshake
            // (`untouched_apart`) without our learning it: the link can go
            // before we decide. Our next write without the peer starts a
            // new generation, so that one id never names two data (found
            // by review, simulator seed 9402788: a's acknowledged write
            // landed in the generation b held without it, and was lost).
            // Only while fresh: at most once.
            self.separated = false;
        }
        self.send(Message::Hello(hello));
        let mut frames = bitmap_frames(&self.dirty);
        match frames.last_mut() {
            Some(Message::Bits { last, .. } | Message::BitWords { last, .. }) => *last = true,
            _ => frames.push(Message::Bits { runs: Vec::new(), last: true }),
        }
        for f in frames {
            self.send(f);
        }
        self.pump();
    }

    /// What this node tells the peer when a link comes up.
    pub fn hello(&self) -> Hello {
        Hello {
            version: wire::VERSION,
            node: self.cfg.me.clone(),
            resource: self.cfg.resource.clone(),
            size: self.cfg.size,
            role: self.role,
            disk: self.disk,
            peer_out_of_sync: self.dirty.bytes(),
            fresh: self.fresh,
            gen: self.gen,
            discard: self.discard,
            promoted_at: self.promoted_at,
            nonce: self.session.as_ref().map_or(0, |s| s.nonce),
            full_sync: self.full_sync,
            lost: self.lost,
            protocol: self.cfg.protocol,
            split_brain_policy: self.cfg.split_brain_policy,
            forced_base: self.base_forced(),
        }
    }

    pub(crate) fn on_hello(&mut self, sid: SessionId, h: Hello) -> Result<(), String> {
        let s = self.session.as_mut().filter(|s| s.id == sid).ok_or("no session")?;
        if s.phase != Phase::Handshake || s.peer_hello.is_some() {
            return Err("unexpected hello".into());
        }
        if h.version != wire::VERSION {
            return Err(format!(
                "the peer speaks protocol version {}, this node {}: run the same twinblock \
                 version on both nodes (upgrade both nodes of a pair together)",
                h.version,
                wire::VERSION
            ));
        }
        if h.resource != self.cfg.resource || h.node != self.cfg.peer {
            return Err(format!(
                "the peer is {}/{}, expected {}/{}",
                h.node, h.resource, self.cfg.peer, self.cfg.resource
            ));
        }
        if h.size != self.cfg.size {
            return Err(format!(
                "{} has size = {} bytes and {} {}: both nodes of a resource must have the same \
                 `size` (twinblock does not resize)",
                h.node, h.size, self.cfg.me, self.cfg.size
            ));
        }
        if h.protocol != self.cfg.protocol {
            // What a node must remember of a write after a crash depends on
            // when its Primary answered it: a B Primary's writes are
            // acknowledged on a receipt a C Secondary does not flag as lost
            // when its process stops (simulator seed 2200234's course with
            // mixed protocols, from review). DRBD refuses the same.
            return Err(format!(
                "{} runs protocol {} and {} protocol {}: both nodes of a resource must have the \
                 same protocol",
                h.node, h.protocol, self.cfg.me, self.cfg.protocol
            ));
        }
        if h.split_brain_policy != self.cfg.split_brain_policy {
            // Each node resolves a split brain alone, by its own rule: two
            // rules may each give up their own data (both SyncTarget, both
            // Inconsistent, nothing to sync from) or neither. DRBD refuses
            // differing `after-sb-*` settings the same way.
            return Err(format!(
                "{} resolves a split brain by split-brain-policy = \"{}\" and {} by \"{}\": \
                 both nodes of a resource must have the same split-brain-policy",
                h.node,
                h.split_brain_policy.name(),
                self.cfg.me,
                self.cfg.split_brain_policy.name()
            ));
        }
        s.peer.role = h.role;
        s.peer.disk = h.disk;
        s.peer.current = h.gen.current;
        s.peer.out_of_sync = h.peer_out_of_sync;
        s.peer.promoted_at = h.promoted_at;
        let primary_on = (h.role == Role::Primary).then_some(h.gen.current);
        let promoted_at = h.promoted_at;
        s.peer_hello = Some(h);
        if let Some(current) = primary_on {
            self.unpin_for_primary_peer(current);
        }
        self.peer_promoted_at = self.peer_promoted_at.max(promoted_at);
        self.ctl_peer_reigned(promoted_at);
        Ok(())
    }

    pub(crate) fn on_bits(
        &mut self,
        sid: SessionId,
        runs: Vec<(u64, u64)>,
        last: bool,
    ) -> Result<(), String> {
        let s = self.session.as_mut().filter(|s| s.id == sid).ok_or("no session")?;
        if s.phase != Phase::Handshake || s.peer_hello.is_none() || s.peer_bits_done {
            return Err("unexpected bitmap".into());
        }
        let blocks = s.peer_bits.blocks();
        for (first, n) in runs {
            if first.checked_add(n).is_none_or(|end| end > blocks) {
                return Err(format!("bitmap run {first}+{n} is outside the device"));
            }
            s.peer_bits.mark_blocks(first, n);
        }
        if last {
            s.peer_bits_done = true;
            self.decide_sync(sid)?;
        }
        Ok(())
    }

    pub(crate) fn on_bit_words(
        &mut self,
        sid: SessionId,
        first: u64,
        words: Vec<u64>,
        last: bool,
    ) -> Result<(), String> {
        let s = self.session.as_mut().filter(|s| s.id == sid).ok_or("no session")?;
        if s.phase != Phase::Handshake || s.peer_hello.is_none() || s.peer_bits_done {
            return Err("unexpected bitmap".into());
        }
        if !s.peer_bits.or_words_at(first, &words) {
            return Err(format!("bitmap words {first}+{} reach outside the device", words.len()));
        }
        if last {
            s.peer_bits_done = true;
            self.decide_sync(sid)?;
        }
        Ok(())
    }

    /// Both hellos and bitmaps are in: the decision, the same on both sides.
    fn decide_sync(&mut self, sid: SessionId) -> Result<(), String> {
        let s = self.session.as_mut().filter(|s| s.id == sid).ok_or("no session")?;
        let h = s.peer_hello.clone().ok_or("no hello")?;
        let (my_role, my_disk, my_promoted_at, my_lost) =
            (s.hello_role, s.hello_disk, s.hello_promoted_at, s.hello_lost);
        // The discard this node's hello told the peer, which the peer
        // decides on: a `discard-my-data` run since then waits for the next
        // handshake, or the two decide differently (both discarding after
        // the hellos went out became each other's target: review).
        let told_discard = s.hello_discard;
        let mut peer_bits =
            std::mem::replace(&mut s.peer_bits, crate::bitmap::Bitmap::with_block(0, 1));
        if self.cfg.plant == Plant::SkipBitmapExchange {
            peer_bits.clear();
        }
        if h.role == Role::Primary && (self.role == Role::Primary || my_role == Role::Primary) {
            return Err(format!(
                "both {} and {} are Primary: refusing",
                self.cfg.me, self.cfg.peer
            ));
        }
        if my_role == Role::Primary
            && self.role == Role::Primary
            && h.promoted_at >= self.promoted_at
            && self.cfg.plant != Plant::UnionByName
        {
            // This node reigns now: its promotion is the pair's latest,
            // whatever the clocks said (a peer promoted earlier by a clock
            // ahead of ours, or before this process learned of it, may
            // name a later time). Saved before its next write, so that a
            // union resync on this generation goes from it (below).
            self.reign_from(h.promoted_at.saturating_add(1));
        }
        let mut decision = decide(&self.gen, &h.gen);
        // Two disks as twinblock created them, never written: identical,
        // though their generations differ (one forced, or a generation
        // started for a FLUSH that changed no block).
        let untouched_apart = self.fresh
            && (h.fresh || self.cfg.plant == Plant::AdoptAnyPeer)
            && matches!(decision, Decision::SyncSource { .. } | Decision::SyncTarget { .. });
        if untouched_apart {
            decision = Decision::InSync;
        }
        let unusable = unusable_side(decision, (my_disk, &self.gen), (h.disk, &h.gen));
        let mut lost = false;
        // The peer's data grew from ours: the generations this node told
        // the witness it ran alone with still hold for what it receives.
        // So it is for a rebuild that grew from ours, cut short before the
        // source's nonce for it was durable (the source's power failed):
        // the rebuild put the peer's generation first among the told ones,
        // and a peer still on it holds what ours descended from (else a
        // node rebuilt from the very generation it made was refused by the
        // witness once the rebuild started over: simulator seed 11400671).
        // (A peer that moved on from that generation since, its history
        // naming it, holds it too: review, helper-90.)
        let mut grew_from_ours = self.gen.current == NEVER_SYNCED
            && self.told.first().is_some_and(|t| h.gen.descent(h.forced_base).contains(t));
        match unusable {
            Some(Unusable::Mine { lost: l }) => {
                decision = Decision::SyncTarget { full: true };
                // A generation this process started and answered no write
                // or FLUSH on (its disk failed as the link went, with
                // writes in flight, each then answered EIO) holds nothing
                // the peer lacks (found by review, helper-120: a Primary
                // whose disk filled while connected was rebuilt Outdated,
                // "those writes are lost", `primary --force` needed).
                // Only where the generation before it is the peer's: one
                // the node ran on alone before (a restart, then the first
                // write a new generation) may hold writes it acknowledged
                // (it came out UpToDate without them, no error said:
                // found by review, helper-150).
                lost = l
                    && (self.unacked_current != Some(self.gen.current)
                        || self.gen.history[0] != h.gen.current);
                if !l {
                    // Nothing this node acknowledged is missing from the
                    // peer: what it had is forgotten, so a resync cut
                    // short goes on in full, never from a bitmap of its
                    // own. A peer on our very generation holds what ours
                    // descends from: what this node told the witness
                    // stays true of the copy (clearing it left a node
                    // whose failed disk was rebuilt from its peer's same
                    // generation refused by the witness for data it
                    // holds: simulator seed 102896 at 5,000 steps). Not
                    // a peer whose history merely names ours: a node
                    // forced while connected to us writes our generation
                    // into its history without our writes (found by
                    // review).
                    grew_from_ours |= h.gen.current == self.gen.current;
                    // Nor a peer that parted from our very generation and
                    // moved on alone: its bitmap's base is our current (it
                    // held our data when its bitmap began), so its data
                    // grew from ours (else a node that ran alone without
                    // writing, its disk failed, was refused by the witness
                    // once rebuilt from a peer that wrote, or flushed,
                    // alone since: simulator seed 10746239). Not a base
                    // that `primary --force` of a failed or partly synced
                    // disk set only to name our generation
                    // (`MetaRecord::forced_base`): that data did not grow
                    // from ours.
                    grew_from_ours |= self.gen.current != NEVER_SYNCED
                        && h.gen.bitmap == self.gen.current
                        && !h.forced_base;
                    // A rebuild that grew from ours, cut short by this disk
                    // failing again: the peer still runs the very full sync
                    // (the source's nonce both name) that began on our
                    // generation, and its data still grew from it (else a
                    // rebuilt node whose disk failed mid-rebuild was refused
                    // by the witness: simulator seed 10753625).
                    grew_from_ours |= self.gen.current == NEVER_SYNCED
                        && self.full_sync != 0
                        && h.full_sync == self.full_sync;
                    if untouched_apart {
                        // Two disks never written: this node's generation
                        // holds no write its peer's data lacks, so the copy
                        // still holds all it ran with, and says so to the
                        // witness (a Failed disk on a generation it started
                        // as Primary and never wrote was refused by the
                        // witness once rebuilt: simulator seed 8509334).
                        grew_from_ours = true;
                        self.told_also(self.gen.current);
                    }
                    self.gen = GenIds::never_synced();
                    if grew_from_ours {
                        self.told_first(h.gen.current);
                    } else {
                        self.data_from_peer();
                    }
                } else if !lost {
                    // The peer is on the very generation this node left
                    // when its disk failed (the one before its current),
                    // and the current, started by this process, holds
                    // nothing it answered (`lost`): the copy is this node's own
                    // data, which still descends from what it told the
                    // witness. Only the failed generation is not in it.
                    // (They were forgotten, the peer's history, its own,
                    // not naming them: a Primary whose disk failed while
                    // connected was refused by the witness once rebuilt,
                    // and the pair had no Primary: simulator seed
                    // 31401593.)
                    grew_from_ours = true;
                    // (The failed generation stays among the told ones:
                    // the witness may hold it as what this node ran alone
                    // with, told in the renewal that fenced the peer when
                    // the disk failed, and the copy holds all that was
                    // acknowledged in it, nothing. Dropped, the rebuilt
                    // node's claim was refused by its data: simulator seed
                    // 33100262.)
                    let failed = self.gen.current;
                    self.told_also(failed);
                    self.told_first(h.gen.current);
                    // The failed generation is dropped from the data's
                    // account now, as where the peer's data grew from ours
                    // (`!l`, above): the rebuild's record names no
                    // generation, the peer's first among the told ones.
                    // "Answered nothing on it" is known only to this
                    // process (`unacked_current`, not saved): a rebuild cut
                    // short by a restart, or by a link the peer went on
                    // without (a new generation grown from this one), met
                    // the failed generation again, judged it to hold
                    // acknowledged writes, and the node came out Outdated,
                    // `primary --force` needed though it lost nothing
                    // (review, helper-150; failed_disk
                    // a_rebuild_that_lost_nothing_cut_short_by_a_restart_ends_uptodate).
                    // Now it meets its peer as a plain rebuild that grew
                    // from ours. (A restart before this record is durable
                    // finds the failed disk on its failed generation, and
                    // it is Outdated once rebuilt, as after a restart
                    // before the rebuild began. A node judged `lost` keeps
                    // its generation through the rebuild, and a restart
                    // judges it so again.)
                    self.gen = GenIds::never_synced();
                } else {
                    tracing::error!(
                        mine = ?self.gen, peer = ?h.gen,
                        "this node's disk holds no usable data and the peer's generation is \
                         older than what this node acknowledged: those writes are lost; after \
                         the full sync this node stays Outdated (`primary --force` accepts the loss)"
                    );
                }
            }
            Some(Unusable::Peer) => decision = Decision::SyncSource { full: true },
            Some(Unusable::Both) => decision = Decision::WaitForForce,
            None => {}
        }
        // A Secondary that gives up its changes (`discard-my-data`, or a
        // Primary the controller deposed) takes the peer's data whatever
        // the generations say.
        if decision != Decision::InSync && unusable.is_none() {
            if told_discard && my_role == Role::Secondary && h.role == Role::Primary {
                decision = Decision::SyncTarget { full: true };
            } else if h.discard && h.role == Role::Secondary && my_role == Role::Primary {
                decision = Decision::SyncSource { full: true };
            }
        }
        if decision == Decision::SplitBrain && !told_discard && !h.discard {
            let mine = SplitSide {
                changes: self.dirty.bytes(),
                promoted_at: my_promoted_at,
                secondary: my_role == Role::Secondary,
            };
            let theirs = SplitSide {
                changes: h.peer_out_of_sync,
                promoted_at: h.promoted_at,
                secondary: h.role == Role::Secondary,
            };
            // With a controller the witness let one of the two acknowledge
            // writes apart, and neither the promotion times nor the amount
            // of change say which: only a side that changed nothing may be
            // discarded without an operator (simulator seeds 203954 and
            // 401402 at 5,000 steps lost acknowledged writes).
            let policy = match self.cfg.split_brain_policy {
                SplitBrainPolicy::DiscardYoungerPrimary | SplitBrainPolicy::DiscardLeastChanges
                    if self.ctl.is_some() =>
                {
                    tracing::warn!(
                        policy = ?self.cfg.split_brain_policy,
                        "split-brain-policy other than discard-zero-changes is not applied with \
                         a controller: resolve by hand"
                    );
                    SplitBrainPolicy::Disconnect
                }
                // A side that lost its page cache (or, in B, writes it had
                // received) counts its activity log's extents as changes:
                // they may be losses, and the side with none may hold what
                // a FLUSH it acknowledged alone made durable (review: the
                // flushed side was discarded and the write lost).
                SplitBrainPolicy::DiscardZeroChanges | SplitBrainPolicy::DiscardLeastChanges
                    if my_lost != Lost::None || h.lost != Lost::None =>
                {
                    tracing::warn!(
                        policy = ?self.cfg.split_brain_policy,
                        "split brain with a node that lost its page cache since the two were \
                         in sync: its changes may be losses; resolve by hand"
                    );
                    SplitBrainPolicy::Disconnect
                }
                // A side forced Primary on a disk that was not a whole
                // copy marks every block (`verbs.rs` `promote_inner`): its
                // count is the device, not its changes, and it always
                // "changed more". Its force may even have failed (a record
                // that landed after `primary` was told it failed and
                // undid it, then a crash: `core::tests::declared`), and
                // the other side's acknowledged writes were overwritten
                // (review, helper-149). Which side changed less is not
                // known: resolve by hand, unless a side changed nothing,
                // which `discard-zero-changes` gives up beside a forced
                // side too (left to the operator, `discard-least-changes`
                // resolved less than `discard-zero-changes`; review,
                // helper-161, `core::tests::resync`
                // `discard_least_changes_beside_a_forced_disk_still_discards_zero_changes`).
                SplitBrainPolicy::DiscardLeastChanges if self.base_forced() || h.forced_base => {
                    tracing::warn!(
                        "split brain with a node forced Primary on an incomplete copy: its \
                         bitmap marks every block, not what it changed; discard-least-changes \
                         cannot compare them: only a side with no changes is discarded"
                    );
                    SplitBrainPolicy::DiscardZeroChanges
                }
                p => p,
            };
            if let Some(i_discard) = resolve_split_brain(policy, mine, theirs) {
                tracing::warn!(policy = ?self.cfg.split_brain_policy, i_discard, "split brain resolved by policy");
                decision = if i_discard {
                    Decision::SyncTarget { full: true }
                } else {
                    Decision::SyncSource { full: true }
                };
            }
        }
        if decision == Decision::SplitBrain {
            let i_discard = told_discard && my_role == Role::Secondary;
            let peer_discards = h.discard && h.role == Role::Secondary;
            if i_discard && peer_discards {
                // Both told to give up their changes: each would be the
                // other's target and neither a source (DRBD refuses it
                // too). Nothing is overwritten; both withdraw the discard
                // and stay split, for the operator to choose one.
                self.discard = false;
                self.split_brain = true;
                self.linking = Linking::StandAlone(
                    "StandAlone after a split brain: both nodes were told to discard their data \
                     (run `discard-my-data` on one node only, then `connect` on both)",
                );
                return Err("split brain: both nodes were told to discard their data, so neither \
                     is a source; nothing was overwritten and both discards are withdrawn (run \
                     `twinblock discard-my-data` on one node only, then `connect` on both)"
                    .into());
            } else if i_discard {
                decision = Decision::SyncTarget { full: true };
            } else if peer_discards {
                decision = Decision::SyncSource { full: true };
            } else if self.discard && my_role == Role::Secondary {
                // A `discard-my-data` run after this node's hello went
                // out: the next handshake carries it.
                return Err("split brain: discard-my-data came after this handshake began; \
                     connecting again with it"
                    .into());
            } else {
                self.split_brain = true;
                self.linking = Linking::StandAlone(
                    "StandAlone after a split brain (resolve with `discard-my-data` on one node, \
                     then `connect` on both)",
                );
                return Err("split brain: both nodes changed the data while apart; nothing was \
                     overwritten (resolve with `twinblock discard-my-data` on the node whose \
                     changes to drop, then `connect` on both)"
                    .into());
            }
        }
        if decision == Decision::Unrelated {
            self.linking =
                Linking::StandAlone("StandAlone: the peer's data shares no history with ours");
            return Err(
                "the peer's data shares no history with ours (unrelated devices): refusing".into(),
            );
        }
        // Same generation: the union of both bitmaps (a crashed node's
        // activity log, failed writes, verify mismatches) still moves, from
        // the better side, ranked alike from both sides' hellos:
        // 1. the usable disk (UpToDate, Consistent and Outdated alike: on
        //    one generation Consistent only says the node lost its peer
        //    not knowing whether the peer went on, Outdated that its peer
        //    may go on without it (a Primary's graceful disconnect, or data
        //    rebuilt after its own acknowledged writes were lost); neither
        //    wrote since. Outdated ranked below, the Primary that outdated
        //    its Secondary and then lost its page cache was the source, and
        //    a write it had acknowledged and not flushed was lost on both:
        //    found by review);
        // 2. the node that lost less of what it held (`Lost`: after a power
        //    loss writes it had not flushed may be gone; in B a Secondary
        //    whose process stopped lost only writes received and not
        //    written; its peer holds them, in B and C every one the Primary
        //    acknowledged; a Primary that lost any is refused below rather
        //    than made the target);
        // 3. the Primary;
        // 4. the node that was Primary last (`promoted_at`): what it
        //    acknowledged that the peer may lack is in its activity log or
        //    bitmap, and the peer's bits are blocks it failed to write or
        //    found different (DRBD's crashed primary is the sync source;
        //    by name, a protocol-A Primary demoted with its lag unsent had
        //    its acknowledged writes overwritten);
        // 5. the name.
        // The better side also keeps its generation when two untouched
        // disks end on one, below.
        let by_name = self.cfg.plant == Plant::UnionByName;
        let rank =
            |disk: DiskState, lost: Lost, role: Role, promoted_at: u64, first_by_name: bool| {
                let disk = match disk {
                    DiskState::Consistent | DiskState::Outdated if !by_name => {
                        disk_rank(DiskState::UpToDate)
                    }
                    d => disk_rank(d),
                };
                let ignore_lost = by_name || self.cfg.plant == Plant::IgnoreLostCache;
                let lost = if ignore_lost { Lost::None } else { lost };
                (disk, std::cmp::Reverse(lost), role == Role::Primary, promoted_at, first_by_name)
            };
        let (mine, theirs) = if by_name { (0, 0) } else { (my_promoted_at, h.promoted_at) };
        let union_source = rank(my_disk, my_lost, my_role, mine, self.cfg.me < self.cfg.peer)
            > rank(h.disk, h.lost, h.role, theirs, self.cfg.peer < self.cfg.me);
        if decision == Decision::InSync && (self.dirty.bytes() > 0 || peer_bits.bytes() > 0) {
            decision = if union_source {
                Decision::SyncSource { full: false }
            } else {
                Decision::SyncTarget { full: false }
            };
        }
        // A full sync cut short (a lost link, a crash of either side)
        // resumes where it was: the target's data is what it made durable
        // of that very sync (and of the replication since), and the
        // source's bitmap, set in full when the sync started, was cleared
        // only where the target had made the blocks durable. Both sides
        // name the sync by its source's nonce; a replaced or forced
        // target, another sync or a discard starts over in full.
        // (What our hello said, as the peer decides on it.)
        let (my_full_sync, my_discard) = self
            .session
            .as_ref()
            .filter(|s| s.id == sid)
            .map_or((0, self.discard), |s| (s.hello_full_sync, s.hello_discard));
        let any = self.cfg.plant == Plant::ResumeAnyFullSync;
        let resumes = |source: u64, target: u64, target_disk: DiskState, target_discard: bool| {
            source != 0
                && (source == target || any)
                && target_disk == DiskState::Inconsistent
                && !target_discard
        };
        let resumed = match decision {
            Decision::SyncSource { full: true } => {
                resumes(my_full_sync, h.full_sync, h.disk, h.discard)
            }
            Decision::SyncTarget { full: true } => {
                resumes(h.full_sync, my_full_sync, my_disk, my_discard)
            }
            _ => false,
        };
        if resumed {
            tracing::info!(
                full_sync = format!("{my_full_sync:016x}"),
                "the full sync cut short resumes from the source's bitmap"
            );
            decision = match decision {
                Decision::SyncSource { .. } => Decision::SyncSource { full: false },
                _ => Decision::SyncTarget { full: false },
            };
        }
        let now = self.now;
        match decision {
            Decision::SyncTarget { .. }
                if (self.role == Role::Primary || my_role == Role::Primary)
                    && (disk_rank(my_disk) == 0 || disk_rank(self.disk) == 0) =>
            {
                // (Its disk failed, say after it wrote alone: the peer's
                // data is not newer, and may be Outdated. Before, this
                // said "the peer's data is newer than this Primary's";
                // noted by review, helper-148.)
                self.linking = Linking::StandAlone(
                    "StandAlone: this Primary's disk holds no whole copy, and a Primary takes no resync",
                );
                return Err(format!(
                    "this Primary's disk is {:?}: it would have to take the peer's data ({:?}), \
                     and a Primary takes no resync: refusing (run `secondary` here and \
                     `connect`: an UpToDate peer then rebuilds this disk; an Outdated one is \
                     only promoted with `primary --force`, accepting what it lacks)",
                    if disk_rank(self.disk) == 0 { self.disk } else { my_disk },
                    h.disk
                ));
            }
            Decision::SyncTarget { .. }
                if self.role == Role::Primary || my_role == Role::Primary =>
            {
                self.linking =
                    Linking::StandAlone("StandAlone: the peer's data is newer than this Primary's");
                if my_lost != Lost::None && h.gen.current == self.gen.current {
                    return Err(
                        "this Primary may have lost writes since its data was last in sync \
                         with the peer (its machine restarted, or in protocol B its process \
                         stopped with writes received but not written), and the peer holds \
                         them: refusing to overwrite them (run `secondary` here and `connect`: \
                         they resync from the peer)"
                            .into(),
                    );
                }
                return Err("the peer's data is newer than this Primary's: refusing (run \
                            `secondary` here: the resync then takes the peer's data)"
                    .into());
            }
            Decision::SyncSource { .. } if disk_rank(my_disk) == 0 || disk_rank(self.disk) == 0 => {
                return Err(format!(
                    "this node should be the resync source but its disk is {:?}",
                    self.disk
                ));
            }
            Decision::SyncTarget { .. } if disk_rank(h.disk) == 0 => {
                return Err(format!(
                    "the peer should be the resync source but its disk is {:?}",
                    h.disk
                ));
            }
            Decision::SyncTarget { full } => {
                tracing::info!(full, "SyncTarget: the peer's data is newer");
                self.disk = DiskState::Inconsistent;
                let keeps_told = grew_from_ours
                    || resumed
                    || h.gen.descent(h.forced_base).contains(&self.gen.current);
                if !keeps_told {
                    // (A peer whose data grew from ours holds whatever
                    // ours descends from; any other replaces it. A
                    // resumed sync was judged so when it started.)
                    self.data_from_peer();
                }
                if self.discard {
                    // The data is given up now: a resync cut short starts
                    // over as a plain full sync, instead of meeting the peer
                    // again as a split brain or as a failed disk that lost
                    // acknowledged writes (found by review).
                    self.gen = GenIds::never_synced();
                    if keeps_told && !resumed {
                        // From a peer whose data grew from ours: its
                        // generation first among the told ones, as for a
                        // rebuild (above), so that a full sync cut short
                        // and started over still knows the peer's data
                        // holds what ours descended from (else a node that
                        // gave up its data to a peer that parted from it,
                        // rebuilt from it across the peer's restart, was
                        // refused by the witness: simulator seed 15810362
                        // at 20,000 steps).
                        self.told_first(h.gen.current);
                    }
                }
                self.discard = false;
                // What the source will send: every block, or the union of
                // both bitmaps (it merges ours into its own).
                let total = if full { self.cfg.size } else { self.dirty.union_bytes(&peer_bits) };
                // This node's data is now a part of the peer's full sync
                // (named by the peer's nonce), or of none.
                if !resumed {
                    self.full_sync = if full { h.nonce } else { 0 };
                }
                let progress = Progress { total, done: 0, started: now };
                let s = self.session.as_mut().expect("session");
                s.activity = Activity::Target { behind: h.peer_out_of_sync, progress, lost };
            }
            Decision::SyncSource { .. }
                if self.discard
                    && !told_discard
                    && h.role == Role::Primary
                    && unusable.is_none() =>
            {
                // `discard-my-data` run after our hello, which the peer
                // decided on without it: this node would be the source of
                // the data it was told to give up (the Primary refuses
                // this handshake: StandAlone). The discard is kept for the
                // next one, which the operator's `connect` on the Primary
                // starts; dropped here, the pair met the same refusal
                // again. (Not where the Primary's disk is unusable: no
                // discard applies then, and a pending one would keep the
                // only good copy from claiming; found by review.)
                self.close_session(
                    sid,
                    "discard-my-data came after this node's hello, which the Primary refused: \
                     kept for the next handshake (run `connect` on the Primary)"
                        .into(),
                );
                return Ok(());
            }
            Decision::SyncSource { full } => {
                if full {
                    self.dirty.mark_all();
                } else {
                    self.dirty.merge(&peer_bits);
                }
                self.p.all_pages_dirty(&self.dirty);
                tracing::info!(full, bytes = self.dirty.bytes(), "SyncSource");
                // This node's data stands (and becomes the peer's): nothing
                // is left to give up, and a pending discard would keep it
                // from claiming for good (from review).
                self.discard = false;
                let claimed = crate::bitmap::Bitmap::with_block(self.cfg.size, self.cfg.block);
                let total = self.dirty.bytes();
                if !full && !resumed {
                    self.full_sync = 0;
                }
                let s = self.session.as_mut().expect("session");
                let mut src = SourceSync::new(claimed, total, now);
                if full {
                    // Named once the bitmap set in full is durable.
                    src.token = s.nonce;
                }
                s.activity = Activity::Source(src);
            }
            Decision::InSync => {
                // Identical: nothing this node lost with a page cache is
                // missing from it.
                // (Identical: nothing is given up; a pending discard would
                // keep this node from claiming for good, from review.)
                self.discard = false;
                self.lost = Lost::None;
                // Nothing to move: a Secondary facing an UpToDate peer of
                // the same generation is UpToDate.
                if self.role == Role::Secondary
                    && h.disk == DiskState::UpToDate
                    && matches!(self.disk, DiskState::Consistent | DiskState::Outdated)
                    && !self.lost_pinned()
                {
                    self.disk = DiskState::UpToDate;
                }
            }
            Decision::WaitForForce => {}
            Decision::SplitBrain | Decision::Unrelated => unreachable!("refused above"),
        }
        if self.gen.current == NEVER_SYNCED
            && decision == Decision::InSync
            && h.gen.current != NEVER_SYNCED
        {
            // Both fresh: we hold the peer's generation. (A rebuild from a
            // peer whose data grew from ours, started over, finds the two
            // disks untouched: what this node told stays, as above.)
            self.gen = GenIds { current: h.gen.current, bitmap: 0, history: [0, 0] };
            if !grew_from_ours {
                self.data_from_peer();
            }
            if h.disk == DiskState::UpToDate {
                self.disk = DiskState::UpToDate;
            }
        } else if untouched_apart && decision == Decision::InSync && h.gen.current != NEVER_SYNCED {
            // The same data under two generations, nothing to move: both
            // end on one, as a sync would have left them (else an adaptive
            // Secondary would see the Primary on a generation it does not
            // hold and wait Behind for a catch-up that never comes:
            // simulator seed 500836). The side a sync of the union would
            // have made the source keeps its generation (its bitmap base
            // ends when the peer's State says it holds it, `Adoption`);
            // the other takes it.
            let giving = union_source;
            let s = self.session.as_mut().expect("session");
            s.adoption = if giving { Adoption::Giving } else { Adoption::Taking };
            if !giving {
                // (A node pinned Outdated for writes it lost stays so.)
                let pinned = self.lost_pinned();
                self.gen.synced_to(h.gen.current);
                self.data_from_peer();
                if pinned {
                    self.lost_acked = h.gen.current;
                } else if h.disk == DiskState::UpToDate {
                    self.disk = DiskState::UpToDate;
                }
            }
        }
        if decision == Decision::InSync && h.gen.current == self.gen.current {
            // On one generation with nothing to move, a bitmap's base that
            // names an older one is done with once the peer holds ours: an
            // adoption or a resync whose last State was lost with a link
            // ends here (else every generation started alone pushed the
            // peer's out of our short history: a full resync, and after
            // three a split brain refused; found by review).
            let saved = self.saved_record().map(|m| m.gen.current);
            let current = self.gen.current;
            let base = self.gen.bitmap;
            let s = self.session.as_mut().expect("session");
            if s.adoption == Adoption::None {
                if h.gen.bitmap != 0 && saved != Some(current) {
                    s.adoption = Adoption::Taking;
                } else if base != 0 && saved == Some(current) {
                    s.adoption = Adoption::Giving;
                }
            }
        }
        let s = self.session.as_mut().expect("session");
        s.phase = Phase::Running;
        // A demoted Primary's copy that may have been superseded is the
        // pair's again: a resync takes the peer's data (`read_gate`). Not
        // where this node is the source of a Primary: that Primary refuses
        // to be a sync target (above, on its side) and closes the session,
        // taking nothing and giving nothing, and goes on acknowledging
        // writes this copy lacks (simulator seed 27050525: the deposed
        // node, its unacknowledged write making it the newer, served the
        // blocks the new Primary overwrote after the refusal).
        let refused = h.role == Role::Primary && matches!(decision, Decision::SyncSource { .. });
        if let Some(c) = self.ctl.as_mut().filter(|_| !refused) {
            c.superseded = false;
            c.met_while_demoting = c.demoting();
        }
        self.separated = false;
        self.acked_apart = false;
        self.split_brain = false;
        self.last_error = None;
        tracing::info!(peer = %h.node, peer_role = ?h.role, peer_disk = ?h.disk, ?decision, "connected");
        self.announce();
        Ok(())
    }
}

impl SourceSync {
    /// `total`: the bytes out of sync now, so a sync that waits for its
    /// bitmap to be durable before it starts shows 0 %, not 100 %.
    pub fn new(claimed: crate::bitmap::Bitmap, total: u64, now: Time) -> SourceSync {
        SourceSync {
            cursor: 0,
            claimed,
            unflushed: Vec::new(),
            reading: None,
            probed: Default::default(),
            chunks: 0,
            start: SourceStart::Bitmap,
            done_sent: false,
            token: 0,
            progress: Progress { total, done: 0, started: now },
        }
    }
}

/// The bitmap as the handshake sends it, none of them `last`: window by
/// window of `WINDOW` blocks, those with a set block as a BITS frame of
/// their runs, or, when the runs would take more bytes than the window's
/// words, as a BIT-WORDS frame of those words. At most the bitmap's own size
/// in all, built a window at a time (before, every run of the device was
/// listed at once: 16 bytes per run, gigabytes for a fragmented bitmap of
/// a large device; review, helper-128).
pub(crate) fn bitmap_frames(map: &crate::bitmap::Bitmap) -> Vec<Message> {
    let (block, blocks) = (map.block(), map.blocks());
    let mut frames = Vec::new();
    let mut from = 0;
    while let Some((off, _)) = map.next_run(from, 1) {
        let start = off / block;
        let window = start / WINDOW * WINDOW;
        let end = (window + WINDOW).min(blocks);
        // Runs cost 16 bytes, a word 8: words once runs would cost more.
        let limit = ((end - window).div_ceil(64) as usize / 2).min(RUNS_PER_FRAME);
        let mut runs = Vec::new();
        let mut at = start;
        while at < end {
            let Some((o, l)) = map.next_run(at, end - at) else { break };
            let first = o / block;
            if first >= end {
                break;
            }
            let n = (l / block).min(end - first);
            runs.push((first, n));
            at = first + n;
            if runs.len() > limit {
                break;
            }
        }
        if runs.len() > limit {
            let words = &map.words()[(window / 64) as usize..end.div_ceil(64) as usize];
            frames.push(Message::BitWords {
                first: window / 64,
                words: words.to_vec(),
                last: false,
            });
        } else {
            frames.push(Message::Bits { runs, last: false });
        }
        from = end;
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    /// Both sides reach the same answer from their own point of view, for
    /// every pair of disk states and every decision.
    #[test]
    fn the_unusable_side_rule_is_the_same_from_both_sides() {
        use DiskState::*;
        let disks = [UpToDate, Consistent, Outdated, Inconsistent, Failed, Diskless];
        let decisions = [
            InSync,
            SyncSource { full: false },
            SyncSource { full: true },
            SyncTarget { full: false },
            SyncTarget { full: true },
            WaitForForce,
            SplitBrain,
            Unrelated,
        ];
        let real = GenIds { current: 7, bitmap: 0, history: [0, 0] };
        let never = GenIds::never_synced();
        for (g1, g2) in [(real, real), (real, never), (never, real)] {
            for d1 in disks {
                for d2 in disks {
                    for dec in decisions {
                        let a = unusable_side(dec, (d1, &g1), (d2, &g2));
                        let b = unusable_side(dec.mirrored(), (d2, &g2), (d1, &g1));
                        let agree = matches!(
                            (a, b),
                            (Some(Unusable::Mine { .. }), Some(Unusable::Peer))
                                | (Some(Unusable::Peer), Some(Unusable::Mine { .. }))
                                | (Some(Unusable::Both), Some(Unusable::Both))
                                | (None, None)
                        );
                        assert!(agree, "{d1:?}/{d2:?} {dec:?}: {a:?} vs {b:?}");
                    }
                }
            }
        }
        // A failed disk whose generation the peer does not know lost what
        // it acknowledged; one the peer's data descends from did not.
        let failed = |dec| unusable_side(dec, (Failed, &real), (UpToDate, &real));
        assert_eq!(failed(SyncSource { full: false }), Some(Unusable::Mine { lost: true }));
        assert_eq!(failed(Unrelated), Some(Unusable::Mine { lost: true }));
        assert_eq!(failed(SyncTarget { full: false }), Some(Unusable::Mine { lost: false }));
        assert_eq!(failed(InSync), Some(Unusable::Mine { lost: false }));
    }
}
