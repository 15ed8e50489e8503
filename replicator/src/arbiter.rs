//! The witness's decisions, sans-IO (`twinblock witness` is the shell that
//! carries requests to it). The witness hands out the right to be Primary
//! for a resource to at most one node at a time, under a lease, and
//! remembers which node is outdated (its peer ran without it), so an
//! outdated node is never promoted. It keeps no data.
//!
//! Rules (see `core::quorum` for the node's side):
//! - `Renew` from the holder: granted, the lease extended.
//! - `Claim`, or `Renew` from a node that is not the holder: granted only
//!   if no other node's lease may still run (its end plus a margin for
//!   clock drift has passed), the witness is past its start-up quiet period
//!   (a holder it forgot in a restart may still hold a lease; a `Renew`
//!   re-establishes such a holder at once, unless the witness lost its
//!   record and the renewing node runs alone: it may be a Primary cut off
//!   whose peer was granted since), and the node is not outdated
//!   and, for a claim, says its disk may be promoted.
//! - Every granted request records whether the requester's peer is
//!   current; a node recorded as not current is outdated.
//! - A claim is granted only if the claimant's data is the data that ran
//!   without its outdated peer, by their generations (a node whose disk
//!   and metadata were replaced, then rebuilt from its outdated peer,
//!   keeps its name but not its data): it must descend from the
//!   generation the claimant last ran alone with. A node acknowledges
//!   writes its peer may lack only in a generation a grant carried
//!   (`core::quorum`), so data rebuilt from the outdated peer lacks that
//!   generation exactly when it lacks such writes. (A Renew is not
//!   checked: a Primary the witness does not know as holder was forced
//!   by an operator, who accepted what is missing; an outdated node's
//!   Renew is refused all the same.)
//! - A witness without its record (`complete` false: it lost its state)
//!   renews no Primary that runs alone while the data the other node
//!   told it since its start descends from the renewer's current
//!   generation and is newer: the other node acknowledged writes the
//!   renewer lacks (it was granted the right while the renewer was cut
//!   off; `Refusal::Behind`). The witness remembers what each node told
//!   in memory only: a node it has not heard since its start is no
//!   evidence (the residual limit, README).
//! - `Release` from the holder: no holder any more. A claim's grant
//!   (forced or not) the holder gives back unused (`withdrawn`: it was
//!   not promoted on it, e.g. its answer was lost and the operator's verb
//!   failed, or a Primary peer was alive when it came) is
//!   undone: the record is as before the claim. So is one whose holder
//!   claims again without having said it used it (it restarted while its
//!   record waited), or whose lease ran out unused when the other node
//!   claims or renews: the request is judged on the record before (the
//!   other node's, refused there, leaves the grant as it was: its holder
//!   may be alive and merely slow).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::{Plant, Time, VoteKind, VoteReply, VoteRequest};
use crate::protocol::genid::NEVER_SYNCED;

/// What the witness keeps across restarts (saved before a reply that
/// changed it goes out): who holds the right, and who is outdated. The
/// lease's end is not kept: after a restart the holder is assumed to hold
/// it for the quiet period.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    pub holder: Option<String>,
    pub outdated: BTreeSet<String>,
    /// The outdated set is complete: the witness granted a request since
    /// it last started without this record (each grant says of both
    /// nodes whether they are current). A witness without it cannot tell
    /// a stale node from a current one.
    #[serde(default)]
    pub complete: bool,
    /// Per node that runs without its outdated peer: the generation its
    /// data had at its last granted request.
    #[serde(default)]
    pub alone_with: BTreeMap<String, u64>,
    /// The node last granted the right (kept after its release): a
    /// Primary whose lease ran out may renew it only if no other node was
    /// granted it since.
    #[serde(default)]
    pub last_holder: Option<String>,
    /// The record before the holder's grant, if that grant was a claim
    /// (forced or not) it has not used yet (no renewal that says it is
    /// used since): a release that says the grant was not used
    /// (`VoteRequest::withdrawn`) restores it, so a `primary --force` that
    /// failed, or a claim given back, outdates nobody.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undo: Option<Box<Durable>>,
}

/// What the witness decided: granted (how), or refused (why).
pub type Verdict = Result<Grant, Refusal>;

/// How a request was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Granted,
    Renewed,
    Released,
}

impl Grant {
    /// Its kind, as a metric's label (and the reason the node reads).
    pub fn label(&self) -> &'static str {
        match self {
            Grant::Granted => "granted",
            Grant::Renewed => "renewed",
            Grant::Released => "released",
        }
    }
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// Why a request was refused; its text is the reason the node reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this witness serves {serves:?}")]
    OtherResource { serves: String },
    #[error("{node} names itself as its peer")]
    NamesItself { node: String },
    #[error("{holder} holds the Primary right")]
    Held { holder: String },
    #[error("{holder} was granted the Primary right after {node}'s lease ran out: {node} may not resume as Primary")]
    HeldSince { node: String, holder: String },
    #[error("{node} is outdated: its peer acknowledged writes without it")]
    Outdated { node: String },
    #[error("{node}'s disk may not be promoted")]
    NotPromotable { node: String },
    /// The claimant ran alone, and its claim carries no generations.
    #[error(
        "{node} ran without {peer} and its claim does not say what its data is (a node older \
         than this witness): it cannot tell whether {node} holds those writes (`primary \
         --force` on {node} accepts what may be missing)"
    )]
    DataUnknown { node: String, peer: String },
    /// The claimant's data lacks the generation it ran alone with.
    #[error(
        "{node}'s data does not descend from generation {alone:x}, which it ran without \
         {peer} with: it was replaced or rebuilt from its outdated peer, and may lack writes \
         acknowledged without {peer} (`primary --force` on {node} accepts that)"
    )]
    DataNotDescended { node: String, peer: String, alone: u64 },
    #[error(
        "the witness has no record of who is outdated (restarted without its state): it cannot \
         tell whether {node} is current"
    )]
    NoRecord { node: String },
    #[error("the witness just started: waiting for a lease it may have forgotten")]
    JustStarted,
    /// A witness without its record: the renewing Primary runs alone and
    /// the other node's data, as it told it since the witness started,
    /// is newer and descends from the renewer's (writes it acknowledged
    /// without the renewer).
    #[error(
        "{other}'s data (generation {other_gen:x}) descends from {node}'s (generation \
         {gen:x}) and is newer: {other} acknowledged writes {node} lacks, and the witness lost \
         its record of who holds the right; {node} may not resume as Primary (`primary \
         --force` on {node} accepts what it lacks)"
    )]
    Behind { node: String, other: String, gen: u64, other_gen: u64 },
    /// A witness without its record: the renewing Primary runs alone and
    /// the other node last told its data as a renewing Primary in the
    /// quiet period, under a lease the witness may have forgotten: it may
    /// have written on since (not final). Asked again once it tells.
    #[error(
        "{other} last renewed as Primary while a lease the witness lost may have run: it may \
         have acknowledged writes since that {node} lacks; {node} is not renewed until {other} \
         is heard again (`primary --force` on {node} accepts what it may lack)"
    )]
    Unsettled { node: String, other: String },
}

impl Refusal {
    /// A refusal by the claimant's data (not by its name or the lease).
    pub fn by_data(&self) -> bool {
        matches!(self, Refusal::DataUnknown { .. } | Refusal::DataNotDescended { .. })
    }

    /// Its kind, as a metric's label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::OtherResource { .. } => "other_resource",
            Refusal::NamesItself { .. } => "names_itself",
            Refusal::Held { .. } => "held",
            Refusal::HeldSince { .. } => "held_since",
            Refusal::Outdated { .. } => "outdated",
            Refusal::NotPromotable { .. } => "not_promotable",
            Refusal::DataUnknown { .. } => "data_unknown",
            Refusal::DataNotDescended { .. } => "data_not_descended",
            Refusal::NoRecord { .. } => "no_record",
            Refusal::JustStarted => "just_started",
            Refusal::Behind { .. } => "behind",
            Refusal::Unsettled { .. } => "unsettled",
        }
    }
}

/// What a node last told the witness of its data.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Told {
    /// Its generations, current first ([`VoteRequest::data`]).
    data: Vec<u64>,
    /// Its disk was good ([`VoteRequest::uptodate`]): not a resync
    /// target, whose list names the generation it is being rebuilt to.
    uptodate: bool,
    /// Told in a Renew during the quiet period: the node was Primary
    /// under a lease the witness may have forgotten, and may have written
    /// on after telling (its data not final).
    unsettled: bool,
}

/// One resource's arbitration.
#[derive(Debug, Clone)]
pub struct Arbiter {
    /// The resource this witness serves.
    pub resource: String,
    started: Time,
    /// No new holder before this (a forgotten lease may still run).
    quiet: Duration,
    holder: Option<String>,
    /// End of the holder's lease (witness clock), margin included.
    until: Time,
    outdated: BTreeSet<String>,
    complete: bool,
    alone_with: BTreeMap<String, u64>,
    last_holder: Option<String>,
    /// The record before an unused forced claim's grant ([`Durable::undo`]).
    undo: Option<Box<Durable>>,
    /// The last save of the state failed: the file may hold a decision
    /// undone here (an error after the rename), which a restart would
    /// bring back. Not saved; a restart clears it.
    unsaved: bool,
    /// Last time each node was heard (for status).
    pub heard: BTreeMap<String, Time>,
    /// What each node last told of its data since this start, refused or
    /// not (in memory only: evidence for [`Refusal::Behind`]).
    told: BTreeMap<String, Told>,
    /// A planted mistake (the simulator's; `Plant::None` elsewhere).
    pub plant: Plant,
}

impl Arbiter {
    /// `quiet`: how long after start no new holder is granted (the longest
    /// lease a forgotten holder may have; `dead_time` is safe).
    pub fn new(resource: &str, now: Time, quiet: Duration, saved: Durable) -> Arbiter {
        Arbiter {
            resource: resource.into(),
            started: now,
            quiet,
            // A holder from before the restart may hold its lease until
            // the quiet period ends.
            until: if saved.holder.is_some() { now + quiet } else { Time::ZERO },
            holder: saved.holder,
            outdated: saved.outdated,
            complete: saved.complete,
            alone_with: saved.alone_with,
            last_holder: saved.last_holder,
            undo: saved.undo,
            unsaved: false,
            heard: BTreeMap::new(),
            told: BTreeMap::new(),
            plant: Plant::None,
        }
    }

    /// What must be saved (compare before and after `handle`).
    pub fn durable(&self) -> Durable {
        Durable {
            holder: self.holder.clone(),
            outdated: self.outdated.clone(),
            complete: self.complete,
            alone_with: self.alone_with.clone(),
            last_holder: self.last_holder.clone(),
            undo: self.undo.clone(),
        }
    }

    pub fn holder(&self) -> Option<&str> {
        self.holder.as_deref()
    }

    /// How long the holder's lease may still run (margin included), if
    /// anyone holds the right.
    pub fn lease_left(&self, now: Time) -> Option<Duration> {
        self.holder.as_ref().map(|_| self.until.saturating_sub(now))
    }

    /// The nodes that run without their outdated peer (the witness holds
    /// the generation of their data).
    pub fn running_alone(&self) -> impl Iterator<Item = &str> {
        self.alone_with.keys().map(String::as_str)
    }

    pub fn outdated(&self) -> impl Iterator<Item = &str> {
        self.outdated.iter().map(String::as_str)
    }

    /// A restart: only what was saved remains.
    pub fn restart(&mut self, now: Time) {
        self.restart_from(now, self.durable());
    }

    /// A restart from `saved`, what its file holds.
    pub fn restart_from(&mut self, now: Time, saved: Durable) {
        let plant = self.plant;
        *self = Arbiter::new(&self.resource.clone(), now, self.quiet, saved);
        self.plant = plant;
    }

    /// What to save after a decision (`before`: [`Arbiter::durable`]
    /// before it) before its answer goes out: the state if it changed,
    /// and after a failed save whatever it is (the file may hold a
    /// decision undone since: the answers from now on rely on this state).
    pub fn to_save(&self, before: &Durable) -> Option<Durable> {
        let after = self.durable();
        (self.unsaved || *before != after).then_some(after)
    }

    /// The save [`Arbiter::to_save`] asked for is done (`ok`), or it
    /// failed: the decision is undone (`prev`: the arbiter before it; the
    /// shell refuses the request) and the next decision saves the state
    /// whatever it is.
    pub fn saved(&mut self, prev: Arbiter, ok: bool) {
        if !ok {
            *self = prev;
        }
        self.unsaved = !ok;
    }

    /// Decides one request, as the reply the node reads.
    pub fn handle(&mut self, now: Time, req: &VoteRequest) -> VoteReply {
        let verdict = self.judge(now, req);
        self.reply(req, &verdict)
    }

    /// The reply that carries a verdict.
    pub fn reply(&self, req: &VoteRequest, verdict: &Verdict) -> VoteReply {
        let (granted, reason) = match verdict {
            Ok(g) => (true, g.to_string()),
            Err(r) => (false, r.to_string()),
        };
        // A Primary refused its renewal because another node held the
        // right since is told that node: it steps down (`core::quorum`),
        // and may claim again as any node (its data checked then).
        // So is one refused because the other node's data is newer (the
        // witness lost its record of the grant: that node took over).
        // Too early to say (a restarted witness's quiet start): no
        // holder named, which would depose a renewing Primary.
        let holder = match verdict {
            Err(Refusal::HeldSince { holder, .. }) => Some(holder.clone()),
            Err(Refusal::Behind { other, .. }) => Some(other.clone()),
            Err(Refusal::JustStarted) => None,
            _ => self.holder.clone(),
        };
        VoteReply { id: req.id, granted, holder, reason }
    }

    /// Decides one request.
    pub fn judge(&mut self, now: Time, req: &VoteRequest) -> Verdict {
        if req.resource != self.resource {
            return Err(Refusal::OtherResource { serves: self.resource.clone() });
        }
        if req.peer == req.node {
            // The node would outdate itself and clear that at once: its
            // real peer would stay current while it runs alone.
            return Err(Refusal::NamesItself { node: req.node.clone() });
        }
        self.heard.insert(req.node.clone(), now);
        let in_quiet = now < self.started + self.quiet;
        self.told.insert(
            req.node.clone(),
            Told {
                data: req.data.clone(),
                uptodate: req.uptodate,
                unsettled: req.kind == VoteKind::Renew && in_quiet,
            },
        );
        self.follow_lineage(req);
        let lease = Duration::from_millis(req.lease_ms);
        let margin = lease / 4 + Duration::from_millis(10);
        let mine = self.holder.as_deref() == Some(req.node.as_str());
        match req.kind {
            VoteKind::Release => {
                if mine {
                    match self.undo.take().filter(|_| req.withdrawn) {
                        Some(before) => self.undo_claim(&req.node, *before),
                        None => self.holder = None,
                    }
                    self.until = Time::ZERO;
                }
                return Ok(Grant::Released);
            }
            VoteKind::Claim | VoteKind::Renew
                if self.undo.is_some()
                    && if mine { req.kind == VoteKind::Claim } else { now >= self.until } =>
            {
                // The holder of a forced claim it never said it used
                // claims again, or its lease ran out and the other node
                // claims or renews: it is no Primary on that grant any
                // more (it restarted, or is gone, its record never
                // saved), and no write its peer lacks was acknowledged
                // on it (a node waits for a renewal that says the grant
                // is used first, `core::quorum` `witness_may_undo`).
                // Undone, as at a withdrawn release, and the request
                // judged on the record before (else the peer of a force
                // that failed by a crash stayed outdated: `core::tests::ctl`
                // `a_forced_claim_crashed_before_its_record_leaves_its_peer_promotable`).
                // Before, the claim was judged on the forced claim's
                // record (its peer outdated): b, crashed while its forced
                // record waited, came back on its old data and its
                // controller was granted Primary without a's acknowledged
                // write (review, helper-152, `core::tests::ctl`
                // `a_forced_claim_crashed_before_its_record_does_not_promote_the_node_later`).
                // A renewal of the other node too: a Primary cut off from
                // the witness longer than its lease, alive, forced past by
                // an operator who took it for dead, whose force then
                // failed by a crash; judged on the forced record, its
                // renewal was refused naming the holder gone, and it was
                // deposed (review, helper-153, `core::tests::ctl`
                // `a_primary_back_at_the_witness_is_not_deposed_by_a_forced_claim_that_went_unused`).
                // The other node's request refused on that record leaves
                // the grant as it was: its holder may be alive and merely
                // slow, cut off from the witness while its record waited,
                // and it resumes (before, a refused claim undid it all the
                // same, and the holder, its record landed, was refused its
                // renewal and deposed; review, helper-153, `arbiter` test
                // `a_claim_refused_on_the_record_before_leaves_the_forced_claim_standing`).
                let (granted, until) = (self.durable(), self.until);
                if let Some(before) = self.undo.take() {
                    self.undo_claim(&req.node, *before);
                }
                self.until = Time::ZERO;
                let verdict = self.judge(now, req);
                if verdict.is_err() && !mine {
                    tracing::info!(
                        resource = %self.resource,
                        node = %req.node,
                        "refused on the record before the forced claim: the forced claim's grant is kept"
                    );
                    self.set_record(granted);
                    self.until = until;
                }
                return verdict;
            }
            VoteKind::Renew if mine => {
                // The holder serves on its grant: nothing to undo (unless
                // it says it has used nothing of it yet: a forced claim
                // waiting for its record, which may still fail).
                if !req.unused {
                    self.undo = None;
                }
                self.until = self.until.max(now + lease + margin);
                self.record(req);
                return Ok(Grant::Renewed);
            }
            VoteKind::Renew if self.undo.is_some() && in_quiet => {
                // The other node renews while a forced claim's grant that
                // was never said used stands, in the quiet start of a
                // restarted witness: its holder's lease may run (the
                // witness forgot when), or it may be gone, its record
                // never saved. Too early to say, and no holder named: the
                // renewing Primary waits as it was (no quorum), and past
                // the quiet period the grant is undone if still unused
                // (above). Before, the refusal named the forced holder,
                // and a Primary alive beside a force that failed was
                // deposed (helper-153's open note, `core::tests::ctl`
                // `a_primary_back_at_a_restarted_witness_is_not_deposed_by_a_forced_claim_that_went_unused`).
                return Err(Refusal::JustStarted);
            }
            _ => {}
        }
        if let Some(h) = &self.holder {
            if !mine && now < self.until {
                return Err(Refusal::Held { holder: h.clone() });
            }
        }
        // The operator's `primary --force`: whatever the data (the operator
        // accepts what it lacks), but never while another node holds the
        // right, nor in the quiet start (a holder may be around).
        let forced_claim = req.kind == VoteKind::Claim && req.forced;
        if self.outdated.contains(&req.node) && !forced_claim {
            return Err(Refusal::Outdated { node: req.node.clone() });
        }
        match req.kind {
            VoteKind::Claim if forced_claim => {
                if in_quiet {
                    return Err(Refusal::JustStarted);
                }
            }
            VoteKind::Claim => {
                if !req.uptodate {
                    return Err(Refusal::NotPromotable { node: req.node.clone() });
                }
                self.data_vouched(req)?;
                if !self.complete && !req.peer_current {
                    // It lost (or never had) its record: the claimant may be
                    // the node its peer ran without.
                    return Err(Refusal::NoRecord { node: req.node.clone() });
                }
                if in_quiet {
                    return Err(Refusal::JustStarted);
                }
            }
            VoteKind::Renew if !self.complete && !req.peer_current && in_quiet => {
                // Without its record (it lost its state) the witness cannot
                // tell the Primary it granted last, running alone, from one
                // cut off whose lease ran out and whose peer was granted
                // since: a lease it forgot may still run until the quiet
                // period ends (before, the first to renew got a lease at
                // once, the other's still running: both accepted writes;
                // review, helper-100, `core::tests::controller`
                // `a_witness_without_its_state_does_not_renew_a_lapsed_primary_beside_a_running_lease`).
                return Err(Refusal::JustStarted);
            }
            VoteKind::Renew if !self.complete && !req.peer_current && !req.forced => {
                // Past the quiet period, without its record: the renewer
                // may be the Primary cut off whose peer was granted since
                // (before, the first of the two to renew kept the right,
                // the other's acknowledged writes missing). The other
                // node's data, if it told it since this start, says.
                self.behind(req)?;
                self.held_since(req)?;
            }
            VoteKind::Renew => {
                // A Primary the witness does not know as holder (it
                // restarted, or the holder's lease ran out): it keeps the
                // right if nobody else holds it, nor was granted it since
                // (a node granted and gone again may have served in
                // between; writes it acknowledged alone have outdated the
                // renewing node here already, this covers the rest:
                // simulator seed 11129).
                // (Not a Primary an operator forced, which holds no grant
                // of its reign: it accepted what is missing.)
                self.held_since(req)?;
            }
            VoteKind::Release => unreachable!("handled above"),
        }
        // A claim may be given back unused: what it changes is kept to
        // undo (a holder before it had lost its lease: restored so, it
        // may renew as before). Every claim, not only a forced one: the
        // controller's own claim, granted when the other node's lease had
        // run out, may be answered after the link to that node, a live
        // Primary, is back; the claimant gives it back unused, and its
        // record had outdated the live Primary for good (its renewals
        // refused, it held on its peer's heartbeats alone and lost the
        // service when the peer went; review, helper-163, `core::tests::ctl`
        // `a_claim_declined_beside_a_live_primary_leaves_it_current_at_the_witness`).
        // A node acknowledges no write its peer lacks before a renewal
        // that says its grant is used (`core::quorum` `witness_may_undo`);
        // one older than that says nothing (`VoteRequest::undoable`), and
        // only its forced claims are undone, as before.
        let undoable = forced_claim || (req.kind == VoteKind::Claim && req.undoable);
        self.undo = undoable.then(|| {
            let mut before = self.durable();
            before.undo = None;
            Box::new(before)
        });
        self.holder = Some(req.node.clone());
        self.last_holder = Some(req.node.clone());
        self.until = now + lease + margin;
        self.record(req);
        tracing::info!(resource = %self.resource, holder = %req.node, kind = ?req.kind, "Primary right granted");
        Ok(Grant::Granted)
    }

    /// A forced claim's grant, unused, is undone: the record is as before it.
    fn undo_claim(&mut self, node: &str, before: Durable) {
        tracing::warn!(
            resource = %self.resource,
            node,
            "a forced claim given back unused: its record is undone"
        );
        self.set_record(Durable { undo: None, ..before });
    }

    /// The record is `d` (what [`Arbiter::durable`] says).
    fn set_record(&mut self, d: Durable) {
        self.holder = d.holder;
        self.outdated = d.outdated;
        self.complete = d.complete;
        self.alone_with = d.alone_with;
        self.last_holder = d.last_holder;
        self.undo = d.undo;
    }

    /// A renewing Primary the witness does not know as holder may not
    /// resume once another node was granted the right since.
    fn held_since(&self, req: &VoteRequest) -> Result<(), Refusal> {
        match &self.last_holder {
            Some(last) if !req.forced && *last != req.node => {
                Err(Refusal::HeldSince { node: req.node.clone(), holder: last.clone() })
            }
            _ => Ok(()),
        }
    }

    /// The renewer's data is not behind the other node's, as that node
    /// told it since this start: the other's (good) data must not be a
    /// newer generation grown from the renewer's current one. Data that
    /// grew apart on both sides (a split brain), or that either node did
    /// not tell (an older node; a node not heard since the start), is no
    /// evidence: renewed as before.
    fn behind(&self, req: &VoteRequest) -> Result<(), Refusal> {
        if self.plant == Plant::WitnessRenewsBehind {
            return Ok(());
        }
        // (A current generation that holds nothing the renewer
        // acknowledged says nothing of it: the one before does. Unless
        // the other node went on from that very generation: then it has
        // all of it and more, whatever came before.)
        let Some(other) = self.told.get(&req.peer).filter(|t| t.uptodate) else {
            return Ok(());
        };
        let lineage = match &req.data[..] {
            [cur, rest @ ..] if req.unacked && !rest.is_empty() && !other.data.contains(cur) => {
                rest
            }
            all => all,
        };
        let Some(&gen) = lineage.first().filter(|g| **g != NEVER_SYNCED) else {
            return Ok(());
        };
        let Some(&other_gen) = other.data.first() else { return Ok(()) };
        // Newer: the other's current is not in the renewer's lineage
        // (which holds the generations its own data went through).
        if other.data.contains(&gen) && !req.data.contains(&other_gen) {
            tracing::warn!(
                resource = %self.resource,
                node = %req.node,
                other = %req.peer,
                gen = format!("{gen:x}"),
                other_gen = format!("{other_gen:x}"),
                "no record: the renewing Primary's data is behind the other node's, renewal refused"
            );
            return Err(Refusal::Behind {
                node: req.node.clone(),
                other: req.peer.clone(),
                gen,
                other_gen,
            });
        }
        if other.unsettled {
            // Not behind by its word from the quiet period: a Primary
            // then, which may have acknowledged writes after it under the
            // lease the witness forgot (its first write alone a new
            // generation), then fallen silent. Asked again once it tells.
            return Err(Refusal::Unsettled { node: req.node.clone(), other: req.peer.clone() });
        }
        Ok(())
    }

    /// A claimant's data is the data that ran without its outdated peer
    /// (see the module's rules).
    fn data_vouched(&self, req: &VoteRequest) -> Result<(), Refusal> {
        if self.plant == Plant::WitnessIgnoresData {
            return Ok(());
        }
        let names = || (req.node.clone(), req.peer.clone());
        match self.alone_with.get(&req.node) {
            Some(_) if req.data.is_empty() => {
                let (node, peer) = names();
                Err(Refusal::DataUnknown { node, peer })
            }
            Some(&alone) if !req.data.contains(&alone) => {
                let (node, peer) = names();
                Err(Refusal::DataNotDescended { node, peer, alone })
            }
            _ => Ok(()),
        }
    }

    /// Any request tells what the node's data descends from: a later
    /// generation of the data it ran alone with takes that one's place
    /// (a node's saved history is short, and a resync from its peer
    /// forgets it, while the data still holds what it acknowledged).
    fn follow_lineage(&mut self, req: &VoteRequest) {
        if let (Some(alone), Some(&current)) =
            (self.alone_with.get_mut(&req.node), req.data.first())
        {
            if current != *alone && req.data.contains(alone) {
                *alone = current;
            }
        }
    }

    fn record(&mut self, req: &VoteRequest) {
        self.complete = true;
        if req.peer_current {
            // Linked and in sync: one data, whichever claims.
            self.outdated.remove(&req.peer);
            self.alone_with.remove(&req.node);
            self.alone_with.remove(&req.peer);
        } else {
            if self.outdated.insert(req.peer.clone()) {
                tracing::info!(resource = %self.resource, node = %req.peer, "outdated: its peer runs without it");
            }
            // (Data never synced holds nothing acknowledged: a forced
            // first Primary tells it before its own generation is saved.)
            if let Some(&g) = req.data.first().filter(|g| **g != NEVER_SYNCED) {
                self.alone_with.insert(req.node.clone(), g);
            }
            self.alone_with.remove(&req.peer);
        }
        self.outdated.remove(&req.node);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(node: &str, peer: &str, kind: VoteKind, peer_current: bool) -> VoteRequest {
        VoteRequest {
            id: 1,
            resource: "r".into(),
            node: node.into(),
            peer: peer.into(),
            kind,
            uptodate: true,
            peer_current,
            lease_ms: 1000,
            data: Vec::new(),
            forced: false,
            unacked: false,
            withdrawn: false,
            unused: false,
            undoable: false,
        }
    }

    /// A forced claim's grant given back unused (`withdrawn`) is undone,
    /// a restart in between included: the node it outdated is current
    /// again and the former holder may renew. Used (renewed once), or
    /// given back without `withdrawn`, it stands.
    #[test]
    fn a_claim_given_back_unused_is_undone_unless_its_node_is_older() {
        // (Review, helper-163: the controller's own claim, declined beside
        // a live Primary, left that Primary outdated.)
        let t = Duration::from_secs(100);
        for undoable in [true, false] {
            let mut w = Arbiter::new(
                "r",
                Duration::ZERO,
                Duration::from_secs(2),
                Durable { complete: true, ..Durable::default() },
            );
            assert!(w.handle(t, &req("a", "b", VoteKind::Claim, true)).granted);
            assert!(w.handle(t, &req("a", "b", VoteKind::Renew, true)).granted);
            let before = w.durable();
            let later = t + Duration::from_secs(3);
            let claim = VoteRequest { undoable, ..req("b", "a", VoteKind::Claim, false) };
            assert!(w.handle(later, &claim).granted);
            assert!(w.durable().outdated.contains("a"));
            let back = VoteRequest { withdrawn: true, ..req("b", "a", VoteKind::Release, false) };
            assert!(w.handle(later, &back).granted);
            if undoable {
                assert_eq!(w.durable(), before, "b's claim given back unused is undone");
                let r = w.handle(later, &req("a", "b", VoteKind::Renew, true));
                assert!(r.granted, "the live Primary a renews: {r:?}");
            } else {
                // A node older than `undoable` may have taken writes alone
                // on it: a stays outdated, as before.
                assert!(w.durable().outdated.contains("a"), "{:?}", w.durable());
            }
        }
    }

    #[test]
    fn a_forced_claim_given_back_unused_is_undone() {
        let saved = Durable { complete: true, ..Durable::default() };
        let mut w = Arbiter::new("r", Duration::ZERO, Duration::from_secs(2), saved);
        let t = Duration::from_secs(100);
        // a holds the right alone: b is outdated.
        assert!(w.handle(t, &req("a", "b", VoteKind::Claim, true)).granted);
        assert!(w.handle(t, &req("a", "b", VoteKind::Renew, false)).granted);
        let before = w.durable();
        assert!(before.outdated.contains("b"));
        // a's lease runs out; the operator forces b.
        let t = t + Duration::from_secs(3);
        let forced = VoteRequest { forced: true, ..req("b", "a", VoteKind::Claim, false) };
        assert!(w.handle(t, &forced).granted);
        assert!(w.durable().outdated.contains("a"));
        // Restarted (the undo is saved), b gives it back unused.
        let mut w = Arbiter::new("r", t, Duration::from_secs(2), w.durable());
        let back = VoteRequest { withdrawn: true, ..req("b", "a", VoteKind::Release, false) };
        assert!(w.handle(t, &back).granted);
        assert_eq!(w.durable(), before, "the forced claim's record is undone");
        // The same claim used (b renewed once): a release keeps it.
        let mut w = Arbiter::new("r", t, Duration::from_secs(2), before.clone());
        let t = t + Duration::from_secs(3);
        assert!(w.handle(t, &forced).granted);
        assert!(w.handle(t, &req("b", "a", VoteKind::Renew, false)).granted);
        assert!(w.handle(t, &back).granted);
        assert!(w.durable().outdated.contains("a") && !w.durable().outdated.contains("b"));
        // Renewed while it says it used nothing of the grant (a forced
        // record still to be saved), then withdrawn: undone.
        let mut w = Arbiter::new("r", t, Duration::from_secs(2), before.clone());
        let t = t + Duration::from_secs(3);
        assert!(w.handle(t, &forced).granted);
        let unused = VoteRequest { unused: true, ..req("b", "a", VoteKind::Renew, false) };
        assert!(w.handle(t, &unused).granted);
        assert!(w.handle(t, &back).granted);
        assert_eq!(w.durable(), before, "an unused renewal ended the undo");
        // Not withdrawn: it stands too.
        let mut w = Arbiter::new("r", t, Duration::from_secs(2), before);
        let t = t + Duration::from_secs(3);
        assert!(w.handle(t, &forced).granted);
        assert!(w.handle(t, &req("b", "a", VoteKind::Release, false)).granted);
        assert!(w.durable().outdated.contains("a") && w.durable().undo.is_none());
    }

    /// A Primary whose lease ran out (cut from the witness) may not renew
    /// it once another node was granted the right since, even if that
    /// node released it again: it may have taken writes in between (found
    /// by the simulator: b resumed after a's short reign, two writers one
    /// after the other). Without such a grant its renewal is granted, and
    /// after a restart that lost the witness's state too.
    #[test]
    fn a_lapsed_primary_may_not_renew_after_another_node_was_granted() {
        let saved = Durable { complete: true, ..Durable::default() };
        let mut w = Arbiter::new("r", Duration::ZERO, Duration::from_secs(2), saved);
        let t = Duration::from_secs(100);
        assert!(w.handle(t, &req("b", "a", VoteKind::Claim, true)).granted);
        // b's lease (1 s and its margin) runs out; nobody claims: b renews.
        let t = t + Duration::from_secs(3);
        assert!(w.handle(t, &req("b", "a", VoteKind::Renew, true)).granted);
        // It runs out again; a claims and releases.
        let t = t + Duration::from_secs(3);
        assert!(w.handle(t, &req("a", "b", VoteKind::Claim, true)).granted);
        assert!(w.handle(t, &req("a", "b", VoteKind::Release, true)).granted);
        let r = w.handle(t + Duration::from_millis(1), &req("b", "a", VoteKind::Renew, true));
        assert!(!r.granted, "{r:?}");
        assert!(
            r.reason.contains("a was granted the Primary right after b's lease"),
            "{}",
            r.reason
        );
        // (Named as the holder: b's core steps down on it.)
        assert_eq!(r.holder.as_deref(), Some("a"));
        // Saved and restarted, the witness still refuses it.
        let mut w2 = Arbiter::new("r", t, Duration::from_secs(2), w.durable());
        let r = w2.handle(t + Duration::from_secs(3), &req("b", "a", VoteKind::Renew, true));
        assert!(!r.granted, "{r:?}");
        // b claims as any node would: granted (a is not outdated).
        assert!(
            w.handle(t + Duration::from_millis(2), &req("b", "a", VoteKind::Claim, true)).granted
        );
        // A witness that lost its state re-establishes a renewing Primary.
        let mut w3 = Arbiter::new("r", t, Duration::from_secs(2), Durable::default());
        assert!(w3.handle(t, &req("b", "a", VoteKind::Renew, true)).granted);
        // A Primary an operator forced, with no grant of its reign, is
        // renewed (it accepted what is missing), as before.
        let forced = VoteRequest { forced: true, ..req("b", "a", VoteKind::Renew, true) };
        assert!(w2.handle(t + Duration::from_secs(4), &forced).granted);
    }

    /// A request whose peer is the requester itself outdates nobody: it
    /// must not be granted (the real peer would stay promotable while the
    /// requester acknowledges writes it lacks).
    #[test]
    fn a_node_naming_itself_as_peer_is_refused() {
        let t = Duration::from_secs(100);
        let saved = Durable { complete: true, ..Durable::default() };
        let mut a = Arbiter::new("r", Duration::ZERO, Duration::from_secs(2), saved);
        let r = a.handle(t, &req("a", "a", VoteKind::Claim, false));
        assert!(!r.granted, "{r:?}");
        assert_eq!(a.outdated().count(), 0);
        // A proper claim outdates the peer.
        let r = a.handle(t, &req("a", "b", VoteKind::Claim, false));
        assert!(r.granted);
        assert_eq!(a.outdated().collect::<Vec<_>>(), vec!["b"]);
        // The holder cannot clear its peer by naming itself.
        let r = a.handle(t, &req("a", "a", VoteKind::Renew, true));
        assert!(!r.granted);
        assert_eq!(a.outdated().collect::<Vec<_>>(), vec!["b"]);
    }

    /// a runs without b (b outdated at generation 1, the data they
    /// shared), writes alone (generation 2), and is lost with its disk
    /// and metadata. Its replacement, synced from b, claims under a's name
    /// with b's data: refused (its generation is where b was left, or not
    /// a descendant of 2). a's own data after a restart is granted, also
    /// when the witness saw only generation 1 before a crashed. An
    /// operator's forced Primary (a Renew) is not checked.
    /// A request of `node` (peer b) telling its data's generations.
    fn data(node: &str, kind: VoteKind, peer_current: bool, data: &[u64]) -> VoteRequest {
        VoteRequest { data: data.to_vec(), ..req(node, "b", kind, peer_current) }
    }

    #[test]
    fn a_node_rebuilt_from_its_outdated_peer_is_not_granted_by_name() {
        let t = Duration::from_secs(100);
        let fresh = |saved: &Durable| {
            Arbiter::new("r", Duration::ZERO, Duration::from_secs(2), saved.clone())
        };
        let mut w = fresh(&Durable { complete: true, ..Durable::default() });
        assert!(w.handle(t, &data("a", VoteKind::Claim, true, &[1])).granted);
        assert!(w.handle(t, &data("a", VoteKind::Renew, false, &[1])).granted);
        let seen_one = w.durable();
        assert!(w.handle(t, &data("a", VoteKind::Renew, false, &[2, 1])).granted);
        assert!(w.handle(t, &data("a", VoteKind::Release, false, &[2, 1])).granted);
        let saved = w.durable();
        for (what, d) in [("b's data", &[1u64][..]), ("an older generation", &[7, 6][..])] {
            for peer_current in [true, false] {
                let r = fresh(&saved).judge(
                    t + Duration::from_secs(5),
                    &data("a", VoteKind::Claim, peer_current, d),
                );
                assert!(
                    matches!(r, Err(Refusal::DataNotDescended { alone: 2, .. })),
                    "{what}, peer_current {peer_current}: {r:?}"
                );
                assert!(r.is_err_and(|e| e.to_string().contains("primary --force")));
            }
        }
        let later = t + Duration::from_secs(5);
        let r = fresh(&saved).handle(later, &data("a", VoteKind::Claim, false, &[2, 1]));
        assert!(r.granted, "a's own data: {r:?}");
        let r = fresh(&seen_one).handle(later, &data("a", VoteKind::Claim, false, &[2, 1]));
        assert!(r.granted, "a's own data, generation 2 not seen: {r:?}");
        let r = fresh(&saved).handle(later, &data("a", VoteKind::Renew, false, &[1]));
        assert!(r.granted, "a forced Primary: {r:?}");
        // Once a says b is current again (b resynced from a), nothing is
        // held against either.
        let mut w = fresh(&saved);
        assert!(w.handle(later, &data("a", VoteKind::Claim, true, &[2, 1])).granted);
        assert_eq!(w.durable().alone_with.len(), 0);
    }

    /// The claims of an ordinary failover are granted again and again: a
    /// survivor granted at its data's generation that claims again (the
    /// grant unused, a restart before any write) at the same one; a node
    /// whose later generation the witness heard only in a release (and
    /// whose saved history a resync from its peer then cut to that one).
    #[test]
    fn a_node_with_its_own_data_is_granted_again() {
        let t = Duration::from_secs(100);
        let mut w = Arbiter::new(
            "r",
            Duration::ZERO,
            Duration::from_secs(2),
            Durable { complete: true, ..Durable::default() },
        );
        assert!(w.handle(t, &data("a", VoteKind::Claim, false, &[5])).granted);
        assert!(w.handle(t, &data("a", VoteKind::Release, false, &[5])).granted);
        assert!(w.handle(t, &data("a", VoteKind::Claim, false, &[5])).granted, "a reclaim");
        // a moved on to generation 6 (its release says so), then took
        // generation 6 back from b with no history.
        assert!(w.handle(t, &data("a", VoteKind::Release, false, &[6, 5])).granted);
        let r = w.handle(t, &data("a", VoteKind::Claim, false, &[6]));
        assert!(r.granted, "{r:?}");
        // Data at the generation before it (b's) is not a's.
        assert!(w.handle(t, &data("a", VoteKind::Release, false, &[6])).granted);
        let r = w.judge(t, &data("a", VoteKind::Claim, false, &[5]));
        assert!(matches!(r, Err(Refusal::DataNotDescended { alone: 6, .. })), "{r:?}");
        // A claim that does not say what its data is (an older node).
        let r = w.judge(t, &data("a", VoteKind::Claim, false, &[]));
        assert!(matches!(r, Err(Refusal::DataUnknown { .. })), "{r:?}");
    }

    /// A witness without its record, past its quiet period, renews a
    /// Primary running alone unless the other node told it, since the
    /// witness started, good data newer than the renewer's and grown from
    /// it (`Behind`, the reply naming that node so the renewer steps
    /// down). Anything else renews as before: the other node not heard,
    /// its data behind, equal, grown apart (a split brain), untold (an
    /// older node) or being rebuilt; a forced Primary; a renewer whose
    /// peer is current; a witness with its record.
    #[test]
    fn a_witness_without_its_record_refuses_a_renewer_behind_the_other() {
        let quiet = Duration::from_secs(2);
        let t = Duration::from_secs(100);
        let later = t + Duration::from_secs(3);
        let a = |pc: bool, d: &[u64]| VoteRequest {
            data: d.to_vec(),
            ..req("a", "b", VoteKind::Renew, pc)
        };
        let b =
            |d: &[u64]| VoteRequest { data: d.to_vec(), ..req("b", "a", VoteKind::Renew, false) };
        // b heard in the quiet period (refused then), a after it.
        let judge = |told_b: Option<VoteRequest>, saved: Durable, renew: VoteRequest| {
            let mut w = Arbiter::new("r", t, quiet, saved);
            if let Some(tb) = told_b {
                let r = w.judge(t, &tb);
                assert!(r.is_err(), "{r:?}");
                if tb.kind == VoteKind::Renew {
                    // (Its word from the quiet period is not final: heard
                    // again past it, `Unsettled` otherwise.)
                    let r = w.judge(later, &VoteRequest { kind: VoteKind::Claim, ..tb });
                    assert!(r.is_err(), "{r:?}");
                }
            }
            let reply = w.handle(later, &renew);
            (w, reply)
        };
        let (w, r) = judge(Some(b(&[2, 1])), Durable::default(), a(false, &[1]));
        assert!(!r.granted, "{r:?}");
        assert_eq!(r.holder.as_deref(), Some("b"), "a is not told to step down");
        assert!(r.reason.contains("primary --force"), "{}", r.reason);
        assert_eq!(w.holder(), None);
        let mut w = w;
        let r = w.judge(later, &a(false, &[1]));
        assert!(matches!(r, Err(Refusal::Behind { gen: 1, other_gen: 2, .. })), "{r:?}");
        assert_eq!(r.unwrap_err().label(), "behind");
        // b renews: granted, the record complete again (a outdated).
        assert!(w.handle(later, &b(&[2, 1])).granted);
        assert!(matches!(w.judge(later, &a(false, &[1])), Err(Refusal::Held { .. })));
        let not_b = VoteRequest { uptodate: false, ..b(&[2, 1]) };
        let forced = VoteRequest { forced: true, ..a(false, &[1]) };
        let complete = Durable { complete: true, ..Durable::default() };
        // (Refused in the quiet period, as b's renewal would be granted.)
        let claim_b = VoteRequest { kind: VoteKind::Claim, ..b(&[2, 1]) };
        for (what, told_b, saved, renew) in [
            ("b not heard", None, Durable::default(), a(false, &[1])),
            ("b behind", Some(b(&[1])), Durable::default(), a(false, &[2, 1])),
            ("b equal", Some(b(&[1])), Durable::default(), a(false, &[1])),
            ("grown apart", Some(b(&[3, 1])), Durable::default(), a(false, &[2, 1])),
            ("b untold", Some(b(&[])), Durable::default(), a(false, &[1])),
            ("a untold", Some(b(&[2, 1])), Durable::default(), a(false, &[])),
            ("b rebuilt", Some(not_b), Durable::default(), a(false, &[1])),
            ("a forced", Some(b(&[2, 1])), Durable::default(), forced),
            ("a with b current", Some(b(&[2, 1])), Durable::default(), a(true, &[1])),
            ("with its record", Some(claim_b), complete, a(false, &[1])),
        ] {
            let (_, r) = judge(told_b, saved, renew);
            assert!(r.granted, "{what}: {r:?}");
        }
    }

    /// A Primary's data told in the witness's quiet period is not final:
    /// the lease the witness forgot may still run, and the Primary write
    /// on under it (its first write alone starts a new generation) after
    /// its refused renewal, then fall silent (cut off from the witness).
    /// Renewing the other Primary past the quiet period on that stale
    /// word resumes it without those writes: both acknowledged writes,
    /// one after the other's takeover. It is refused until the other
    /// node tells again (not named: it does not step down for it); a
    /// word after the quiet period, or from a node that is no Primary (a
    /// claim), is final.
    #[test]
    fn a_witness_without_its_record_does_not_trust_a_primary_word_from_its_quiet_period() {
        let quiet = Duration::from_secs(2);
        let t = Duration::from_secs(100);
        let later = t + Duration::from_secs(3);
        let data = |r: VoteRequest, d: &[u64]| VoteRequest { data: d.to_vec(), ..r };
        let mut w = Arbiter::new("r", t, quiet, Durable::default());
        // b, granted before the restart, renews in the quiet period on the
        // generation it shares with a (it wrote nothing alone yet).
        let r = w.judge(
            t + Duration::from_millis(100),
            &data(req("b", "a", VoteKind::Renew, false), &[1]),
        );
        assert!(matches!(r, Err(Refusal::JustStarted)), "{r:?}");
        // (b writes on, generation 2, and is cut off from the witness.)
        let r = w.handle(later, &data(req("a", "b", VoteKind::Renew, false), &[1]));
        assert!(!r.granted, "a renewed on b's word from the quiet period: {r:?}");
        assert_eq!(r.holder, None, "a is not told to step down");
        // b heard again, past the quiet period: its word is final.
        let r = w.judge(later, &data(req("b", "a", VoteKind::Claim, false), &[2, 1]));
        assert!(r.is_err(), "{r:?}");
        let r = w.judge(later, &data(req("a", "b", VoteKind::Renew, false), &[1]));
        assert!(matches!(r, Err(Refusal::Behind { .. })), "{r:?}");
        // Had b written nothing, a is renewed.
        let mut w = Arbiter::new("r", t, quiet, Durable::default());
        let _ = w.judge(t, &data(req("b", "a", VoteKind::Renew, false), &[1]));
        let _ = w.judge(later, &data(req("b", "a", VoteKind::Claim, false), &[1]));
        assert!(w.handle(later, &data(req("a", "b", VoteKind::Renew, false), &[1])).granted);
    }

    /// A renewer whose current generation holds nothing it acknowledged
    /// (`unacked`: started when its link went with writes in flight, held
    /// without quorum) is ranked by the generation before it: beside the
    /// other node's newer data grown from that one, it is behind, not a
    /// split brain (simulator seed 17300435: renewed, it answered its held
    /// writes after the other's). With writes acknowledged on it, the two
    /// grew apart: renewed as before.
    #[test]
    fn a_renewer_whose_generation_holds_nothing_acknowledged_is_ranked_by_the_one_before() {
        let quiet = Duration::from_secs(2);
        let t = Duration::from_secs(100);
        let later = t + Duration::from_secs(3);
        for (unacked, refused) in [(true, true), (false, false)] {
            let mut w = Arbiter::new("r", t, quiet, Durable::default());
            let a = VoteRequest { data: vec![2, 1], ..req("a", "b", VoteKind::Claim, false) };
            assert!(w.judge(later, &a).is_err());
            let b =
                VoteRequest { data: vec![3, 1], unacked, ..req("b", "a", VoteKind::Renew, false) };
            let r = w.judge(later, &b);
            assert_eq!(
                matches!(r, Err(Refusal::Behind { gen: 1, other_gen: 2, .. })),
                refused,
                "{r:?}"
            );
            assert_eq!(r.is_ok(), !refused, "{r:?}");
        }
    }

    /// A renewer whose current generation holds nothing it acknowledged,
    /// the other node having gone on from that very generation: behind,
    /// whatever the generation before it (simulator seed 8006 once a
    /// restarted node no longer got its previous process's answers: b,
    /// Primary on a failed disk, told [X, 5, 3] unacked; a, which took
    /// over from X and acknowledged writes, told [Y, X]; ranked by 5, which
    /// a's list does not name, b was renewed and served reads without a's
    /// writes, I4).
    #[test]
    fn an_unacked_renewer_whose_current_generation_the_other_went_on_from_is_behind() {
        let quiet = Duration::from_secs(2);
        let t = Duration::from_secs(100);
        let later = t + Duration::from_secs(3);
        let mut w = Arbiter::new("r", t, quiet, Durable::default());
        let a = VoteRequest { data: vec![9, 7], ..req("a", "b", VoteKind::Claim, false) };
        assert!(w.judge(later, &a).is_err());
        let b = VoteRequest {
            data: vec![7, 5, 3],
            unacked: true,
            ..req("b", "a", VoteKind::Renew, false)
        };
        let r = w.judge(later, &b);
        assert!(matches!(r, Err(Refusal::Behind { gen: 7, other_gen: 9, .. })), "{r:?}");
    }

    /// Attack (review, helper-153): the undo of a forced claim whose lease
    /// ran out, at the other node's claim, is for a grant its holder
    /// will never use; a claim refused on the record before must leave
    /// the grant as it was, since its holder may be alive and merely slow
    /// (cut off from the witness while its record waited). The witness
    /// lost its state; a ran alone and went; the operator forces b. b's
    /// lease runs out; a, back, claims: refused (no record), but the
    /// undo stayed applied, and b's renewal once its record landed was
    /// refused (the witness's word on a's newer data, naming a): b was
    /// deposed, the force an operator was told had succeeded undone, and
    /// the pair had no Primary.
    #[test]
    fn a_claim_refused_on_the_record_before_leaves_the_forced_claim_standing() {
        let t = Duration::from_secs(100);
        let mut w = Arbiter::new("r", Duration::ZERO, Duration::from_secs(2), Durable::default());
        let forced = VoteRequest { forced: true, ..data("b", VoteKind::Claim, false, &[1]) };
        let forced = VoteRequest { peer: "a".into(), ..forced };
        assert!(w.handle(t, &forced).granted);
        let granted = w.durable();
        // b's lease runs out; a claims with its data: refused.
        let later = t + Duration::from_secs(3);
        let r = w.handle(later, &data("a", VoteKind::Claim, false, &[2, 1]));
        assert!(!r.granted, "{r:?}");
        assert_eq!(w.durable(), granted, "a refused claim undid b's forced grant");
        // b's record lands: its renewal says the grant is used.
        let renew = VoteRequest { peer: "a".into(), ..data("b", VoteKind::Renew, false, &[1]) };
        let r = w.handle(later, &renew);
        assert!(r.granted, "b's force undone by a refused claim: {r:?}");
        assert_eq!(w.outdated().collect::<Vec<_>>(), vec!["a"]);
        // A claim granted on the record before still undoes it (b crashed
        // for good while its record waited): see `core::tests::ctl`
        // `a_forced_claim_crashed_before_its_record_leaves_its_peer_promotable`.
    }

    /// A witness without its record (no `meta`, or the file lost) does
    /// not know that `b` was outdated: it must not promote `b` on a claim
    /// that says nothing of `a`, only once a grant told it who is current.
    #[test]
    fn a_witness_without_its_record_does_not_promote_a_node_it_cannot_vouch_for() {
        let t = Duration::from_secs(100);
        let mut w = Arbiter::new("r", Duration::ZERO, Duration::from_secs(2), Durable::default());
        let r = w.judge(t, &req("b", "a", VoteKind::Claim, false));
        assert!(matches!(r, Err(Refusal::NoRecord { .. })), "{r:?}");
        // A pair together: the claim says the peer is current.
        let r = w.handle(t, &req("b", "a", VoteKind::Claim, true));
        assert!(r.granted, "{r:?}");
        assert!(w.durable().complete);
        // From then on it knows.
        w.handle(t, &req("b", "a", VoteKind::Renew, false));
        w.restart(t);
        let r = w.judge(t + Duration::from_secs(5), &req("a", "b", VoteKind::Claim, false));
        assert!(matches!(r, Err(Refusal::Outdated { .. })), "a is outdated: {r:?}");
    }
}
