//! The failover controller's rules (shared/DESIGN.md "Failover
//! controller"), as part of the core: who may become Primary, and when a
//! Primary must stop acknowledging writes.
//!
//! The witness (`crate::arbiter`) is the only one that hands out the right
//! to be Primary; a Primary keeps it with *leases*:
//!
//! - the **peer lease**: a heartbeat sent at `s` that the peer answered
//!   while it was Secondary keeps quorum until `s + lease`;
//! - the **witness lease**: a request sent at `s` that the witness granted
//!   keeps quorum until `s + lease`.
//!
//! Both start at the *send* time on the Primary's own clock, so they end
//! no later than the moment the other side last heard from it plus
//! `lease`. With `lease = dead_time / 2` the ordering is:
//!
//! 1. the Primary stops acknowledging at most `lease` after the survivor
//!    and the witness last heard from it;
//! 2. the survivor asks the witness only after `dead_time` of silence from
//!    the Primary, and the witness grants it only after the Primary's
//!    witness lease ended plus a margin (`lease / 4`, for clock rate drift);
//!
//! so the old Primary has stopped before the new one can start. Writes the
//! peer may lack (the link is gone, or lost in flight) are acknowledged
//! only once the witness has recorded that the peer is not current, so an
//! outdated survivor is never promoted: the witness refuses it.
//!
//! Promotion needs a witness grant (quorum: itself + witness); the grant
//! goes to an UpToDate node (Consistent in protocol A) that has heard
//! nothing of its peer for `dead_time`, or whose peer is a connected
//! Secondary with no Primary around (first start, a handover). A Primary
//! keeps quorum with either lease (itself + peer, or itself + witness).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Protocol;
use crate::protocol::genid::NEVER_SYNCED;
use crate::protocol::wire::{DiskState, Role};

use super::session::Phase;
use super::types::{Action, IoError, Linking, Plant, Refused, ReplyError, Time};
use super::Core;

/// Why a node that may have lost what it confirmed to its peer is not
/// made Primary by the controller ([`Core::lost_since_synced`]).
pub(crate) const LOST_SINCE_SYNCED: &str = "this node may lack writes it confirmed to its peer \
     (its page cache was lost, or in protocol B writes it had received) and has not met the \
     peer since: the controller promotes it only once a session with the peer has brought \
     them back (`primary --force` accepts the loss)";

/// What a Primary that lost quorum does with writes (`on-no-quorum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoQuorum {
    /// Writes fail with EIO once the survivor may have taken over.
    #[default]
    IoError,
    /// Writes wait (frozen) until quorum returns or the node is demoted.
    Freeze,
}

/// What an application read does now ([`Core::read_gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadGate {
    /// Served from this node's data.
    Serve,
    /// Held: a Primary whose quorum ran out and that may not have been
    /// superseded yet (its renewal may come back), or that freezes
    /// (`on-no-quorum = freeze`) until quorum returns or it is demoted.
    Wait,
    /// Failed with EIO: the other node may be Primary and have
    /// acknowledged writes this node's data lacks.
    Fail,
}

/// The controller's settings (the `[controller]` table).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Silence from the Primary before the survivor may take over.
    pub dead_time: Duration,
    /// How often the witness and the peer are asked.
    pub heartbeat: Duration,
    pub on_no_quorum: NoQuorum,
}

impl ControllerConfig {
    /// How long one answered heartbeat keeps a Primary's quorum.
    pub fn lease(&self) -> Duration {
        self.dead_time / 2
    }
}

/// A request to the witness not answered yet, as sent.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Time,
    kind: VoteKind,
    peer_current: bool,
    /// The data's (saved) current generation it told.
    gen: u64,
    /// Granted, the witness keeps what a withdrawn release undoes: a
    /// claim (forced or not), or a renewal that said the grant is unused
    /// ([`VoteRequest::unused`]).
    undoable: bool,
}

/// The operator's `primary --force` waiting for the witness's answer.
#[derive(Debug, Clone, Copy)]
struct ForcedClaim {
    /// The Claim's request id.
    id: u64,
    /// The promotion's ask number (answered at the witness's reply).
    ask: u64,
    /// The wall clock at the verb (the promotion's time).
    wall_ms: u64,
}

/// A request to the witness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteRequest {
    pub id: u64,
    pub resource: String,
    pub node: String,
    pub peer: String,
    pub kind: VoteKind,
    /// Claim: the disk may be promoted (UpToDate, or Consistent in A).
    pub uptodate: bool,
    /// The peer holds everything this node acknowledged (connected,
    /// Established, its disk UpToDate). False: the witness records the peer
    /// as outdated and will not let it become Primary.
    pub peer_current: bool,
    /// How long the requester relies on a grant.
    pub lease_ms: u64,
    /// The generations of the requester's data, its current first (then
    /// the bitmap's and earlier ones): the witness tells data that ran
    /// without the peer from data rebuilt from the outdated peer.
    #[serde(default)]
    pub data: Vec<u64>,
    /// Renew: this Primary was forced by an operator and holds no grant of
    /// its reign yet. The witness renews it even if another node was
    /// granted the right since (the operator accepted what is missing);
    /// a lapsed grant's Renew is refused then (`arbiter`).
    /// Claim: the operator's `primary --force`: granted whatever the data
    /// (outdated, not vouched for), never while another node holds the
    /// right.
    #[serde(default)]
    pub forced: bool,
    /// The current generation (first in `data`) holds nothing this node
    /// acknowledged: it started it without its peer (writes in flight
    /// when the link went, held without quorum) and answered no write
    /// since. The witness without its record ranks a Renew by the
    /// generation before it (`arbiter`, `Refusal::Behind`): beside a
    /// node that acknowledged writes since that one, it is behind.
    #[serde(default)]
    pub unacked: bool,
    /// Release: this node never used the grant it gives back (it was not
    /// promoted on it: a forced claim whose answer was lost or came too
    /// late, a grant it declined). The witness undoes what a forced
    /// claim's grant recorded (the operator's verb failed: the other node
    /// is not outdated by it).
    #[serde(default)]
    pub withdrawn: bool,
    /// Renew: this Primary has used nothing of its grant yet (a forced
    /// claim whose record is not saved, or that failed and waits to be
    /// undone: no write was admitted, `core/declared.rs`). The witness
    /// keeps what it would undo at a `withdrawn` release (before, the
    /// first renewal dropped it, and a failed `primary --force` that had
    /// renewed while it waited for its record left the peer outdated at
    /// the witness; review, helper-149).
    #[serde(default)]
    pub unused: bool,
    /// Claim: this node acknowledges no write its peer lacks on the grant
    /// before a renewal that says it is used is granted
    /// ([`Core::may_run_alone`]), so the witness keeps the record before
    /// the grant to undo, as for a forced claim (`arbiter`). A node older
    /// than this field (false) took such writes at once after its claim:
    /// its claim is undone only if forced (an undone claim would promote
    /// its peer without them).
    #[serde(default)]
    pub undoable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VoteKind {
    /// A Secondary asks to become Primary.
    Claim,
    /// The Primary keeps its right.
    Renew,
    /// The Primary gives its right back (it is demoting).
    Release,
}

/// The witness's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteReply {
    pub id: u64,
    pub granted: bool,
    /// Who holds the right now, as far as the witness knows.
    pub holder: Option<String>,
    pub reason: String,
}

/// What the shell runs for the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// This node became Primary: move the service address, then run
    /// `on_promote`. Report with [`Core::hook_done`].
    Promoted,
    /// This node must stop being Primary: run `on_demote`, then report with
    /// [`Core::hook_done`]; the core demotes itself then.
    Demote,
}

/// Where the controller stands (status `controller.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Standing {
    /// Secondary, a Primary is around (or this node may not take over).
    Watching,
    /// Secondary, asked the witness to become Primary.
    Claiming,
    /// Primary with quorum.
    Holding,
    /// Primary without quorum: replies wait.
    Suspended,
    /// Primary without quorum since the survivor may have taken over:
    /// writes fail (io-error) or wait for good (freeze).
    Fenced,
    /// Primary, running `on_demote` before demoting (handover, deposed).
    Demoting,
}

/// Why a Primary demotes itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DemoteWhy {
    /// The health check failed: hand over cleanly.
    Health,
    /// The witness says another node holds the right.
    Deposed,
    /// The operator's `secondary`.
    Operator,
}

#[derive(Debug, Clone)]
pub(crate) struct Ctl {
    pub cfg: ControllerConfig,
    /// The witness granted this node the right since it last released it
    /// (its reign as Primary): a Renew without it comes from a Primary
    /// forced by an operator (`VoteRequest::forced`).
    granted_reign: bool,
    /// A reign an operator forced, no grant of it heard: its renewals say
    /// `forced` until then (a lease from the promotion). Past it, what the
    /// force accepted is stale: the witness may have granted the other
    /// node since (this one's grants' answers lost, the node cut off), and
    /// a witness without its record must judge this one's data as any
    /// renewing Primary's (simulator seed 30300455: renewed as forced
    /// seconds later, beside the other node's newer data, it served reads
    /// without them).
    forced_until: Time,
    /// End of the peer lease (ZERO: none).
    peer_until: Time,
    /// End of the witness lease.
    witness_until: Time,
    /// The last granted request said the peer is not current.
    witness_fenced_peer: bool,
    /// The last request that told the witness the peer is current. The
    /// witness may have applied it even if its answer never comes, so no
    /// answer to an earlier request may fence the peer again.
    unfenced_id: u64,
    witness_up: bool,
    /// The last granted request left the witness able to undo this
    /// reign's grant (a claim, forced or not, renewed as unused since;
    /// the controller's own claims too since review helper-163, `arbiter`
    /// `Arbiter::judge`): a
    /// release that says `withdrawn` restores the record before it (the
    /// peer current). No write the peer lacks is acknowledged until a
    /// renewal that says the grant is used is granted
    /// ([`Core::may_run_alone`]). Before, a forced claim that told a
    /// generation already apart from the peer's took writes alone as
    /// soon as its record landed: the node crashed before its next
    /// renewal, a withdrawn release (a second `primary --force` given up)
    /// restored its peer as current, and the controller promoted the
    /// peer without those writes (review, helper-152, `core::tests::ctl`
    /// `a_write_alone_on_a_forced_claim_is_not_undone_at_the_witness`).
    witness_may_undo: bool,
    /// The data generation the last granted request carried (0: none).
    /// Writes the peer may lack are acknowledged only in that generation:
    /// the witness knows every generation this node ran alone with before
    /// it acknowledged a write in it, so it can tell that data from data
    /// rebuilt from the outdated peer (`arbiter`).
    witness_gen: u64,
    /// Requests sent and not answered, by id.
    sent: BTreeMap<u64, Sent>,
    next_id: u64,
    last_request: Time,
    /// Heartbeats to the peer: ping id -> sent, to start the peer lease.
    /// Last frame from the peer (any session).
    pub peer_heard: Time,
    /// A Claim is out (its id).
    claim: Option<u64>,
    /// The operator's `primary --force` asked the witness.
    forced_claim: Option<ForcedClaim>,
    demoting: Option<DemoteWhy>,
    /// The node is stopping (`down`, SIGTERM): it claims nothing more.
    stopping: bool,
    /// After a handover or a refusal: no claim (nor, for a Primary whose
    /// renewal was refused, a renewal out of turn) before this.
    quiet_until: Time,
    /// The last health verdict (None: not checked yet).
    health_ok: Option<bool>,
    /// Since when quorum is missing (Primary).
    lost_since: Option<Time>,
    /// The witness's last refusal since its last grant (None once a
    /// request is granted), or why this node does not claim
    /// ([`LOST_SINCE_SYNCED`], until the hold lifts).
    pub last_refusal: Option<String>,
    /// The peer lease's heartbeat: sent at (ids of session `ping_sid`:
    /// each session numbers its heartbeats from 1).
    ping_sent: BTreeMap<u64, Time>,
    ping_sid: Option<super::types::SessionId>,
    /// Last time this node answered a Primary's heartbeat (that Primary
    /// may hold a peer lease until about then plus `lease`).
    answered_primary: Time,
    /// When this controller started (a process before it may have answered
    /// a Primary's heartbeats just before).
    since: Time,
    /// The core's last timer (plant `gate-on-timer-clock` only).
    pub(crate) timer_at: Time,
    /// Demoted from Primary without quorum (deposed, or the operator's
    /// `secondary --force` on a fenced Primary) and no session with the
    /// peer has run since: another node may be Primary and have
    /// acknowledged writes this copy lacks, so it serves no read
    /// ([`Core::read_gate`]) until it meets the peer (a resync then takes
    /// the peer's data, the disk Inconsistent until done).
    pub(crate) superseded: bool,
    /// A session with the peer reached Running since the demotion under
    /// way began (or last became a deposition): its handshake judged this
    /// node's data against the peer's after it lost the right.
    pub(crate) met_while_demoting: bool,
    /// A promotion's hooks wait for its record (`promoted_hook.rs`).
    pub(crate) promoted_hook: super::promoted_hook::PromotedHook,
}

impl Ctl {
    /// The witness granted request `id` (a claim or a renewal, sent at
    /// `sent` with the peer current or not, telling generation `gen`):
    /// the right is held a lease from when it was asked.
    fn granted(&mut self, sent: &Sent, id: u64) {
        let Sent { at: sent, peer_current, gen, undoable, .. } = *sent;
        self.granted_reign = true;
        self.witness_may_undo = undoable;
        self.witness_until = self.witness_until.max(sent + self.cfg.lease());
        self.witness_fenced_peer = !peer_current && id > self.unfenced_id;
        self.witness_gen = gen;
    }

    /// A demotion is under way (`on_demote` runs).
    pub(crate) fn demoting(&self) -> bool {
        self.demoting.is_some()
    }

    /// Not deposed: a Primary that holds its right may acknowledge writes
    /// (also while `on_demote` runs for a handover or a stop: see
    /// `may_run_alone`).
    fn serving(&self) -> bool {
        self.demoting != Some(DemoteWhy::Deposed)
    }

    pub fn new(cfg: ControllerConfig, now: Time) -> Ctl {
        Ctl {
            cfg,
            granted_reign: false,
            forced_until: Time::ZERO,
            peer_until: Time::ZERO,
            witness_until: Time::ZERO,
            witness_fenced_peer: false,
            unfenced_id: 0,
            witness_gen: 0,
            witness_may_undo: false,
            witness_up: false,
            sent: BTreeMap::new(),
            next_id: 1,
            last_request: Time::ZERO,
            peer_heard: now,
            claim: None,
            forced_claim: None,
            demoting: None,
            stopping: false,
            quiet_until: Time::ZERO,
            health_ok: None,
            lost_since: None,
            last_refusal: None,
            ping_sent: BTreeMap::new(),
            ping_sid: None,
            answered_primary: Time::ZERO,
            since: now,
            timer_at: now,
            superseded: false,
            met_while_demoting: false,
            promoted_hook: super::promoted_hook::PromotedHook::Settled,
        }
    }
}

/// The controller part of `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerStatus {
    pub standing: Standing,
    pub quorum: bool,
    pub witness_connected: bool,
    pub last_refusal: Option<String>,
    /// Demoted without quorum and not met its peer since: its reads fail
    /// (`Ctl::superseded`).
    pub superseded: bool,
    /// Promoted, its hooks (the address move, `on_promote`) waiting for
    /// the record saying it is Primary (`promoted_hook.rs`): a slow or
    /// full metadata volume. Before, `status` showed such a node Holding,
    /// as one whose service had started.
    pub hooks_await_record: bool,
}

impl Core {
    /// The controller's standing, if a controller runs.
    pub fn controller(&self) -> Option<ControllerStatus> {
        let c = self.ctl.as_ref()?;
        Some(ControllerStatus {
            standing: self.standing(),
            quorum: self.has_quorum(),
            witness_connected: c.witness_up,
            last_refusal: c.last_refusal.clone(),
            superseded: c.superseded,
            hooks_await_record: self.role == Role::Primary && c.promoted_hook.owed(),
        })
    }

    fn standing(&self) -> Standing {
        let Some(c) = &self.ctl else { return Standing::Watching };
        if self.role == Role::Primary {
            if c.demoting.is_some() {
                Standing::Demoting
            } else if self.has_quorum() {
                Standing::Holding
            } else if self.fenced() {
                Standing::Fenced
            } else {
                Standing::Suspended
            }
        } else if c.claim.is_some() {
            Standing::Claiming
        } else {
            Standing::Watching
        }
    }

    /// May the shell move the service address to this node at `now`? The
    /// mover asks before every change it makes (and between retries), as a
    /// move runs for seconds. `Ok`: Primary with quorum, not demoting.
    /// `Err((true, why))`: wait, a Primary without quorum (its renewal may
    /// come back, or it is being deposed; it does not know yet).
    /// `Err((false, why))`: stop, no longer a Primary that keeps the role:
    /// another node may be promoted and hold the address, and a late retry
    /// would take it away (found by review, helper-103: a deposed node's
    /// retried `AssociateAddress` landed after its successor's move).
    /// `now` is the caller's clock: the lease may have run out since the
    /// core's last event.
    pub fn address_permit(&self, now: Time) -> Result<(), (bool, &'static str)> {
        let Some(c) = &self.ctl else { return Ok(()) };
        if self.role != Role::Primary {
            return Err((false, "no longer Primary"));
        }
        if c.demoting.is_some() {
            return Err((false, "demoting"));
        }
        // Its promotion's hooks wait for its record (`promoted_hook.rs`):
        // so does the address (a re-check moved it to a forced node whose
        // record was never saved; review, helper-156).
        if c.promoted_hook.owed() {
            return Err((true, "the record saying it is Primary is not saved yet"));
        }
        if self.has_quorum_at(now) {
            Ok(())
        } else {
            Err((true, "Primary without quorum"))
        }
    }

    /// When this node's witness lease ends by its own count (None without
    /// a controller or a lease). For the simulator's lease check: it must
    /// not end after the witness's own count of the grant.
    pub fn witness_lease_end(&self) -> Option<Time> {
        self.ctl.as_ref().map(|c| c.witness_until).filter(|t| *t != Time::ZERO)
    }

    /// Quorum now (true without a controller).
    pub(crate) fn has_quorum(&self) -> bool {
        self.has_quorum_at(self.now)
    }

    /// Quorum at `now` (the caller's clock, no earlier than the core's:
    /// a lease may have run out since the core's last event).
    fn has_quorum_at(&self, now: Time) -> bool {
        let Some(c) = &self.ctl else { return true };
        if self.cfg.plant == Plant::IgnoreQuorum {
            return true;
        }
        let now = now.max(self.now);
        c.serving() && (c.peer_until > now || c.witness_until > now)
    }

    /// Writes the peer may lack may be acknowledged: the witness recorded
    /// the peer as outdated, under a lease still running, and knows the
    /// generation of this node's data (the one such writes are in). Also
    /// while `on_demote` runs for a handover or a stop (not deposed): the
    /// peer, outdated, cannot be promoted while this node holds its lease,
    /// renewed meanwhile (before, the hook's writes failed with EIO and an
    /// unmount left ext4's journal to replay; review, helper-122).
    pub(crate) fn may_run_alone(&self) -> bool {
        let Some(c) = &self.ctl else { return true };
        if matches!(self.cfg.plant, Plant::IgnoreQuorum | Plant::NoPeerFence) {
            return self.has_quorum();
        }
        c.serving()
            && c.witness_until > self.now
            && c.witness_fenced_peer
            && c.witness_gen == self.gen.current
            && !c.witness_may_undo
    }

    /// Adaptive mode: the Primary may go (or stay) Ahead only where writes
    /// its peer lacks can be acknowledged at all: no controller, or the
    /// witness reachable under a running lease (it must record the peer as
    /// outdated first). Otherwise it replicates as C: the peer is there.
    pub(crate) fn may_go_ahead(&self) -> bool {
        self.ctl
            .as_ref()
            .is_none_or(|c| c.witness_up && c.witness_until > self.now && c.demoting.is_none())
    }

    /// The generations the witness is told: the saved ones (a generation
    /// only in memory may be lost with the process; once saved it is
    /// told, and writes in it wait for that, see `may_run_alone`). A
    /// forced promotion's unconfirmed first record is not saved in that
    /// sense: a start rolls it back (`MetaRecord::at_start`).
    fn told_gen(&self) -> super::GenIds {
        self.saved_record().map_or(self.gen, |m| m.gen)
    }

    /// The told generations' bitmap base only names the peer's
    /// ([`MetaRecord::forced_base`](super::MetaRecord::forced_base)).
    fn told_forced(&self) -> bool {
        self.saved_record().map_or(self.base_forced(), super::MetaRecord::base_forced)
    }

    /// Quorum has been missing for `dead_time`: the survivor may be Primary.
    fn fenced(&self) -> bool {
        self.fenced_at(self.now)
    }

    /// [`Core::fenced`] at `now` (the caller's clock, as `has_quorum_at`).
    fn fenced_at(&self, now: Time) -> bool {
        let Some(c) = &self.ctl else { return false };
        let now = now.max(self.now);
        c.lost_since.is_some_and(|t| now >= t + c.cfg.dead_time.saturating_sub(c.cfg.lease()))
    }

    /// What happens to a write or flush reply that is ready: `None` send it,
    /// `Some(Ok)` hold it, `Some(Err)` fail it.
    /// `write`: the reply is a write's (a former Primary's writes that
    /// finish after it demoted fail: the new Primary may have overwritten
    /// them).
    pub(crate) fn reply_gate(
        &self,
        needs_alone: bool,
        write: bool,
    ) -> Option<Result<(), ReplyError>> {
        let c = self.ctl.as_ref()?;
        if self.role != Role::Primary {
            return write.then_some(Err(ReplyError::Io(IoError::EIO)));
        }
        let open = if needs_alone {
            self.may_run_alone()
        } else if self.cfg.plant == Plant::GateOnTimerClock {
            // (The plant: quorum as the core's last timer saw it, a lease
            // counted to a clock from before a pause.)
            let t = c.timer_at;
            c.serving() && (c.peer_until > t || c.witness_until > t)
        } else {
            self.has_quorum()
        };
        if open {
            return None;
        }
        if !c.serving() || (self.fenced() && c.cfg.on_no_quorum == NoQuorum::IoError) {
            return Some(Err(ReplyError::Io(IoError::EIO)));
        }
        Some(Ok(()))
    }

    /// What an application read on this node does at `now` (the caller's
    /// clock: the lease may have run out since the core's last event).
    /// `issued_as_primary`: the node was Primary when the read came in.
    ///
    /// A Primary serves reads while it holds quorum: no other node can be
    /// Primary before its leases end. Once they have ended, the other node
    /// may be promoted and acknowledge writes; a read served from here
    /// would miss them (a stale read after a failover). Such a read waits,
    /// as a write's reply does: quorum may come back (a blip), and once the
    /// survivor may have taken over it fails with EIO (`on-no-quorum =
    /// io-error`) or waits on (`freeze`); a deposed Primary fails it. A read
    /// that came in while Primary and finds the node demoted fails too: it
    /// was issued when another node may already have been Primary. A
    /// Secondary's reads are served from its copy, as before (its read-only
    /// export follows its peer), unless it was demoted without quorum
    /// (deposed, or `secondary --force` on a fenced Primary) and has not met
    /// its peer since (`Ctl::superseded`). Found by review (helper-105): a
    /// Primary cut off from its peer and the witness served reads for good
    /// after the survivor took over; and (helper-108) once deposed, as a
    /// Secondary still apart from the new Primary, it served them again
    /// (its application's connection stays open across the demotion).
    pub fn read_gate(&self, now: Time, issued_as_primary: bool) -> ReadGate {
        let Some(c) = &self.ctl else { return ReadGate::Serve };
        if self.role != Role::Primary {
            let superseded = c.superseded && self.cfg.plant != Plant::ReadsWhenSuperseded;
            return if issued_as_primary || superseded { ReadGate::Fail } else { ReadGate::Serve };
        }
        if matches!(self.cfg.plant, Plant::IgnoreQuorum | Plant::ReadsWithoutQuorum) {
            return ReadGate::Serve;
        }
        if !c.serving() {
            return ReadGate::Fail;
        }
        if self.has_quorum_at(now) {
            return ReadGate::Serve;
        }
        if self.fenced_at(now) && c.cfg.on_no_quorum == NoQuorum::IoError {
            ReadGate::Fail
        } else {
            ReadGate::Wait
        }
    }

    /// The peer is current: everything acknowledged is on it.
    pub(crate) fn peer_current(&self) -> bool {
        self.session.as_ref().is_some_and(|s| {
            s.phase == Phase::Running
                && s.repl() == super::Replication::Established
                && s.peer.disk == DiskState::UpToDate
                && s.peer.role == Role::Secondary
        }) && self.dirty.bytes() == 0
    }

    /// A session runs with a Secondary peer (no Primary around).
    fn secondary_peer_running(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Running && s.peer.role == Role::Secondary)
    }

    /// This node may lack writes it confirmed to its peer since the two
    /// were last reconciled: it took in its peer's writes as a Secondary
    /// (`received`: since it was last Primary with nothing pending), and
    /// then lost its page cache (a power loss or reboot with writes in its
    /// activity log) or, in protocol B, writes it had received and not
    /// written. Its peer may hold writes acknowledged on that confirmation,
    /// and the witness cannot know (the peer never ran alone), so the
    /// controller does not take over for it while the peer is away; a
    /// session with the peer reconciles the two (the handshake takes the
    /// peer's copies), and `primary --force` accepts the loss. Simulator
    /// seed 14940551: a Secondary that confirmed a C write and lost its
    /// power was promoted once its Primary crashed, without that write. A
    /// Primary that lost its own cache confirmed nothing and is not held
    /// back (the first version held back every lost cache: a lone Primary
    /// back from a power loss, or a node forced after one, was never
    /// promoted again; review).
    pub(crate) fn lost_since_synced(&self) -> bool {
        self.lost != crate::protocol::wire::Lost::None
            && self.received
            && self.cfg.plant != Plant::ClaimAfterLoss
    }

    /// [`Core::lost_since_synced`] with no session running beside a
    /// Secondary peer: a promotion (the controller's grant, an operator's
    /// `primary`) waits for the peer unless forced.
    pub fn held_back_by_loss(&self) -> bool {
        self.lost_since_synced() && !self.secondary_peer_running()
    }

    fn may_claim(&self) -> bool {
        match self.disk {
            DiskState::UpToDate => true,
            DiskState::Consistent => self.cfg.protocol == Protocol::A,
            _ => false,
        }
    }

    // ----- events -----

    /// The link to the witness came up or went down.
    pub fn handle_witness_link(&mut self, now: Time, up: bool) {
        self.now = self.now.max(now);
        if let Some(c) = &mut self.ctl {
            c.witness_up = up;
            if !up {
                c.sent.clear();
                c.claim = None;
            }
            c.last_request = Time::ZERO;
        }
        self.forced_claim_lost("the link to the witness went down");
        self.ctl_tick();
        self.pump();
    }

    /// The witness answered (`wall_ms`: the wall clock, recorded if this
    /// node becomes Primary).
    pub fn handle_vote(&mut self, now: Time, wall_ms: u64, reply: VoteReply) {
        self.now = self.now.max(now);
        let Some(c) = &mut self.ctl else { return };
        let Some(sent) = c.sent.remove(&reply.id) else {
            return;
        };
        let kind = sent.kind;
        // Older requests than this one will not be answered any more.
        c.sent.retain(|id, _| *id > reply.id);
        // A granted claim or renewal supersedes the refusals before it:
        // `status` showed a node Holding beside the refusal of its first
        // claim (review, helper-158). (Not a release's: the refusal that
        // made the node step down is what its status must say.)
        if !reply.granted {
            c.last_refusal = Some(reply.reason.clone());
        } else if kind != VoteKind::Release {
            c.last_refusal = None;
        }
        let forced = c.forced_claim.filter(|f| f.id == reply.id);
        if forced.is_some() {
            c.forced_claim = None;
        }
        match kind {
            VoteKind::Claim => {
                // Only the answer to the claim out (or a later one) ends
                // it: an earlier claim refused while the operator's forced
                // one was out left the node free to claim again before
                // the force's grant came, and the witness, hearing its
                // holder claim, undid the grant the node then reigned on
                // (simulator seed 35800592 of 20,000 steps, I4: b counted
                // a lease the witness had ended).
                if c.claim.is_some_and(|id| id <= reply.id) {
                    c.claim = None;
                }
                if reply.granted {
                    c.granted(&sent, reply.id);
                    c.lost_since = None;
                }
                if let Some(f) = forced {
                    let r = if reply.granted {
                        self.claimed(f.wall_ms, &reply, true)
                    } else {
                        Err(Refused(format!("the witness refused: {}", reply.reason)))
                    };
                    self.answered(f.ask, r);
                } else if reply.granted {
                    let _ = self.claimed(wall_ms, &reply, false);
                } else {
                    // Ask again a heartbeat later.
                    c.quiet_until = self.now + c.cfg.heartbeat;
                    tracing::info!(reason = %reply.reason, "the witness refused the claim");
                }
            }
            VoteKind::Renew => {
                if !reply.granted {
                    // Asked again at the heartbeat, not at once: news for
                    // the witness (the peer fell behind or caught up) that
                    // it refused would otherwise be resent on every answer.
                    c.quiet_until = self.now + c.cfg.heartbeat;
                }
                // (A late grant to a node that demoted since is not here:
                // its release forgot every request, see `release`.)
                if reply.granted {
                    // (The plant counts the lease from the grant's arrival.)
                    let at =
                        if self.cfg.plant == Plant::LeaseFromReply { self.now } else { sent.at };
                    c.granted(&Sent { at, ..sent }, reply.id);
                } else if reply.holder.as_deref().is_some_and(|h| h != self.cfg.me)
                    && self.role == Role::Primary
                {
                    c.witness_until = Time::ZERO;
                    tracing::warn!(holder = ?reply.holder, "another node holds the Primary right: demoting");
                    self.start_demote(DemoteWhy::Deposed);
                }
            }
            VoteKind::Release => {}
        }
        self.pump();
    }

    /// The granted claim: become Primary (`forced`: the operator's
    /// `primary --force`, whatever the disk). Err: why not.
    fn claimed(&mut self, wall_ms: u64, reply: &VoteReply, forced: bool) -> Result<(), Refused> {
        if self.role == Role::Primary {
            return Ok(());
        }
        if self.ctl.as_ref().is_some_and(|c| c.stopping) {
            tracing::info!("granted Primary while stopping: giving the right back");
            self.withdraw();
            return Err(Refused("the node is stopping".into()));
        }
        if !self.may_claim() && !forced {
            self.withdraw();
            return Err(Refused(format!("the disk is {:?} now", self.disk)));
        }
        if !forced && self.held_back_by_loss() {
            self.withdraw();
            return Err(Refused(LOST_SINCE_SYNCED.into()));
        }
        // The claim went out while the peer was silent (or a Secondary),
        // but since then this node answered the heartbeats of a Primary
        // peer: that Primary holds a peer lease, the grant is not used.
        if let Some(c) = &mut self.ctl {
            let lease = c.cfg.lease();
            if c.answered_primary != Time::ZERO && self.now < c.answered_primary + lease + lease / 4
            {
                tracing::warn!(
                    "granted Primary, but a Primary peer is alive: giving the right back"
                );
                c.quiet_until = self.now + c.cfg.heartbeat;
                self.withdraw();
                return Err(Refused(format!("peer {} is Primary", self.cfg.peer)));
            }
        }
        // The peer is declared dead (or is a Secondary that agreed): a
        // session that still says it is Primary goes.
        if let Some(s) = &self.session {
            if s.peer.role == Role::Primary || s.phase != Phase::Running {
                let sid = s.id;
                self.close_session(sid, "the controller declared the peer dead".into());
            }
        }
        let force = self.disk != DiskState::UpToDate;
        // An operator's claim outdates the peer at the witness whatever
        // the disk: its account is kept to undo with the witness's record
        // if this promotion's record cannot be saved (`declared.rs`).
        // (Kept by `promote_as` before it pumps: declared after, a renewal
        // sent from that pump said the grant was used, and the witness
        // dropped its undo; review, helper-152, `core::tests::ctl`
        // `a_forced_claim_answered_after_a_heartbeat_is_undone_at_the_witness`.)
        match self.promote_as(force, forced, wall_ms) {
            Ok(()) => {
                tracing::info!(reason = %reply.reason, forced, "the witness granted Primary: promoted");
                self.owe_promoted_hook();
                Ok(())
            }
            Err(e) => {
                tracing::warn!("granted Primary but the promotion was refused: {e}");
                self.withdraw();
                Err(e)
            }
        }
    }

    /// `primary --force` while a controller runs and no session does: the
    /// witness is asked first (a Claim that says so), and the node is
    /// promoted, the address moved and `on_promote` run only once it
    /// grants (before, all of that happened at once and the node demoted
    /// itself at the witness's refusal; found by a live test). Ok: asked
    /// ([`Core::promotion_asked`], [`Core::promotion_answer`]).
    pub(super) fn ask_witness_forced(&mut self, wall_ms: u64) -> Result<(), Refused> {
        let Some(c) = &self.ctl else { return Err(Refused("no controller".into())) };
        if !c.witness_up {
            return Err(Refused(format!(
                "peer {} is not connected and the witness is not reachable: a Primary could \
                 acknowledge no write (no quorum)",
                self.cfg.peer
            )));
        }
        if c.forced_claim.is_some() {
            return Err(Refused("a forced promotion is already being asked of the witness".into()));
        }
        // The witness cannot see a peer lease: a Primary whose heartbeats
        // this node answered lately (this process, or one before a
        // restart) may still acknowledge writes on it, and a grant would
        // also outdate it at the witness for nothing. (Found by review:
        // forced right after a restart, both accepted writes in protocol
        // A; a declined grant left the live Primary outdated.)
        let lease = c.cfg.lease();
        let guard = lease + lease / 4;
        let peer = &self.cfg.peer;
        if self.session.as_ref().is_some_and(|s| s.peer.role == Role::Primary) {
            return Err(Refused(format!("peer {peer} is Primary; demote it first")));
        }
        if c.answered_primary != Time::ZERO && self.now < c.answered_primary + guard {
            return Err(Refused(format!(
                "this node answered Primary {peer}'s heartbeats {:?} ago: it may still hold a \
                 lease (`primary --force` again in {:?})",
                self.now - c.answered_primary,
                c.answered_primary + guard - self.now
            )));
        }
        if self.now < c.since + guard {
            return Err(Refused(format!(
                "this node started {:?} ago: a Primary {peer} may still hold a lease from \
                 before (`primary --force` again in {:?})",
                self.now - c.since,
                c.since + guard - self.now
            )));
        }
        if self.disk == DiskState::Diskless {
            return Err(Refused("no disk: nothing to promote".into()));
        }
        let mut req = self.vote_request(VoteKind::Claim);
        req.forced = true;
        req.uptodate = true;
        // (Granted, the witness keeps the record before it to undo, as
        // for any claim: `vote_request`.)
        self.next_ask += 1;
        let ask = self.next_ask;
        self.asked_last = Some((ask, None));
        if let Some(c) = &mut self.ctl {
            c.claim = Some(req.id);
            c.forced_claim = Some(ForcedClaim { id: req.id, ask, wall_ms });
        }
        tracing::info!(ask, "primary --force: asking the witness first");
        self.actions.push_back(Action::Vote(req));
        Ok(())
    }

    /// The forced claim out, if any (its ask number).
    pub(super) fn forced_claim_ask(&self) -> Option<u64> {
        self.ctl.as_ref().and_then(|c| c.forced_claim).map(|f| f.ask)
    }

    /// A forced claim whose request is lost fails (`why`).
    fn forced_claim_lost(&mut self, why: &str) {
        let Some(c) = &mut self.ctl else { return };
        let Some(ForcedClaim { id, ask, .. }) = c.forced_claim else { return };
        if c.sent.contains_key(&id) {
            return;
        }
        c.forced_claim = None;
        // (A grant whose answer was lost: given back, and undone.)
        self.withdraw();
        self.answered(ask, Err(Refused(format!("not promoted: {why}"))));
    }

    /// The shell gave up waiting for the forced claim: a grant the witness
    /// may give is given back.
    pub(super) fn withdraw_forced_claim(&mut self) {
        if let Some(c) = &mut self.ctl {
            if let Some(ForcedClaim { id, .. }) = c.forced_claim.take() {
                if c.claim == Some(id) {
                    c.claim = None;
                }
                self.withdraw();
            }
        }
    }

    /// A failure of the controller's own (the start's `on_demote` after a
    /// crash) for `status`'s `last_error`, kept as a hook's failure is
    /// (`hook_error`); the node's state is untouched.
    pub fn note_hook_failure(&mut self, e: String) {
        self.hook_failed(Hook::Demote, &e);
    }

    fn hook_failed(&mut self, hook: Hook, e: &str) {
        let e = format!("{hook:?} hook failed: {e}");
        self.hook_error = Some((hook, e.clone()));
        self.error(e);
    }

    /// The shell finished a hook.
    pub fn hook_done(&mut self, now: Time, hook: Hook, result: Result<(), String>) {
        self.now = self.now.max(now);
        match &result {
            Err(e) => self.hook_failed(hook, e),
            // The same hook failed last and now succeeds (`on_promote` run
            // by the re-check that moved the address after a failed move):
            // the condition `last_error` reported is gone. A newer error is
            // kept. Before, `status` showed the failure for good (review,
            // helper-107).
            // A demotion that went well also ends what a failed
            // promotion hook reported: the promotion is over.
            // (Every hook failure is in `hook_error`, the last one: a
            // `last_error` that says a hook failed is that one.)
            Ok(()) => {
                let ended =
                    self.hook_error.take_if(|(failed, _)| *failed == hook || hook == Hook::Demote);
                if let Some((_, text)) = ended {
                    tracing::info!(?hook, "the hook succeeded: its earlier failure is cleared");
                    if self.last_error.as_ref() == Some(&text) {
                        self.last_error = None;
                    }
                }
            }
        }
        if hook == Hook::Demote {
            // (Asked before the demotion below undoes a failed force.)
            let unused = self.grant_unused();
            let Some(c) = &mut self.ctl else { return };
            if c.demoting.is_none() {
                return;
            }
            let why = c.demoting.take();
            c.quiet_until = self.now + c.cfg.dead_time;
            if self.role == Role::Primary {
                // Without quorum (deposed: not serving), another node may
                // be Primary already: this copy serves no read until the
                // peer is met (`read_gate`). Met already (a session that
                // started while `on_demote` ran: its handshake judged the
                // data), it serves as any connected Secondary (before, it
                // failed reads for the whole session; found by review,
                // helper-110).
                let quorum = self.has_quorum();
                // (A session that ran before the demotion began does not
                // count: a half-dead link's, say, whose peer took over.)
                let running = self.connection() == super::Connection::Connected;
                if let Some(c) = &mut self.ctl {
                    let met = running && c.met_while_demoting;
                    c.superseded = !quorum && !met;
                }
                self.role = Role::Secondary;
                tracing::info!(?why, "demoted to Secondary by the controller");
                self.announce();
                // As a demotion without a controller: a resync of our own
                // blocks is renegotiated (the peer drops it otherwise).
                self.resync_after_demotion();
                // A handover kept replies waiting for quorum: a Secondary
                // releases none, so they are answered now (a write fails).
                // (Simulator seed 12708947: one waited for ever.)
                self.fail_held();
            }
            if why == Some(DemoteWhy::Deposed) && self.apart() && self.acked_apart {
                tracing::error!(
                    "deposed, but this node acknowledged writes its peer lacks: they are kept \
                     (the witness may have lost its state; resolve the split brain by hand)"
                );
            } else if why == Some(DemoteWhy::Deposed) && self.apart() {
                // Our data moved on without the peer, and none of it was
                // acknowledged since: the new Primary's data wins.
                tracing::warn!("deposed with unacknowledged changes: they are discarded (full resync from the peer)");
                self.discard = true;
                self.split_brain = false;
                self.linking = Linking::Wanted;
            }
            // A failed `primary --force` gives its grant back unused: the
            // witness undoes what its claim recorded (the peer outdated).
            self.release_as(unused);
        }
        self.pump();
    }

    /// The service's health check on this node (only a Primary's counts).
    pub fn health(&mut self, now: Time, ok: bool) {
        self.now = self.now.max(now);
        // (Not while its promotion's hooks wait for its record:
        // `promoted_hook.rs` `promotion_starting`.)
        let starting = self.promotion_starting();
        let Some(c) = &mut self.ctl else { return };
        c.health_ok = Some(ok);
        if !ok && self.role == Role::Primary && c.demoting.is_none() && !starting {
            // Hand over only to a peer that can take over.
            if self.no_handover().is_none() {
                tracing::warn!("health check failed: handing over to the peer");
                self.start_demote(DemoteWhy::Health);
            }
        }
        self.pump();
    }

    /// `on_demote` runs, then the node demotes (`hook_done`). A handover
    /// (the operator's `secondary`, a failed health check) still holds
    /// the right meanwhile: writes are acknowledged as before (the hook
    /// stops the service and unmounts, which writes; before, they failed
    /// with EIO; found by review). A deposed node acknowledges nothing
    /// more, and a deposition during a handover makes it one.
    fn start_demote(&mut self, why: DemoteWhy) {
        if let Some(c) = &mut self.ctl {
            match c.demoting {
                None => {
                    c.demoting = Some(why);
                    c.met_while_demoting = false;
                }
                Some(DemoteWhy::Deposed) => return,
                Some(_) if why != DemoteWhy::Deposed => return,
                Some(_) => {
                    // Its hook is queued already.
                    c.demoting = Some(why);
                    c.met_while_demoting = false;
                    self.fail_held();
                    return;
                }
            }
        }
        if why == DemoteWhy::Deposed {
            // What waits fails (it never was acknowledged).
            self.fail_held();
        }
        self.actions.push_back(Action::Hook(Hook::Demote));
    }

    /// The node is stopping (`down`, SIGTERM): its controller claims
    /// nothing more, and a grant that comes is given back. (Both nodes
    /// stopped together: the Secondary took over from its Primary's `down`
    /// in its own last moments, moving the address and running
    /// `on_promote` only to demote at once; found by review.) A bench
    /// under way stops saying so, not naming the stop's demotion.
    pub fn stopping(&mut self) {
        self.stopping = true;
        if let Some(c) = &mut self.ctl {
            if !c.stopping {
                tracing::info!("stopping: no claim for the Primary role from now on");
            }
            c.stopping = true;
        }
    }

    /// The operator's `secondary`: `on_demote` first. Refused while the
    /// peer cannot take over: the pair would have no Primary until the
    /// controller promoted this node again, `dead_time` later (before, it
    /// was done and answered OK; found by a live test).
    pub(crate) fn operator_demote(&mut self) -> Result<(), Refused> {
        if let Some(why) = self.no_handover() {
            return Err(Refused(format!(
                "{why}: nobody could take over, so this node stays Primary (`secondary --force` \
                 demotes it anyway)"
            )));
        }
        self.start_demote(DemoteWhy::Operator);
        Ok(())
    }

    /// `secondary --force` (or `down`): demoted whether or not the peer
    /// can take over (`on_demote` first).
    pub(crate) fn forced_demote(&mut self) {
        self.start_demote(DemoteWhy::Operator);
    }

    /// Why the peer could not take over from this Primary now, if it
    /// could not: it must be a connected Secondary whose disk is UpToDate
    /// (the witness grants nothing else), and the witness must hear the
    /// release.
    fn no_handover(&self) -> Option<String> {
        let peer = &self.cfg.peer;
        let Some(s) = self.session.as_ref().filter(|s| s.phase == Phase::Running) else {
            return Some(format!("peer {peer} is not connected"));
        };
        if s.peer.disk != DiskState::UpToDate || s.peer.role != Role::Secondary {
            return Some(format!(
                "peer {peer} is {:?} {:?}, not an UpToDate Secondary",
                s.peer.role, s.peer.disk
            ));
        }
        if !self.ctl.as_ref().is_some_and(|c| c.witness_up) {
            return Some("the witness is not reachable from this node".into());
        }
        None
    }

    /// Replies that are ready and waited for quorum go out once it is back.
    pub(crate) fn release_held(&mut self) {
        if self.ctl.is_none() || self.role != Role::Primary || !self.maybe_held {
            return;
        }
        if self.has_quorum() || self.fenced() || self.ctl.as_ref().is_some_and(|c| !c.serving()) {
            // Raised again by `try_reply` for each one still held.
            self.maybe_held = false;
            let detached = self.answers_alone();
            let ready: Vec<_> =
                self.pending.iter().filter(|(_, p)| p.decided(detached)).map(|(r, _)| *r).collect();
            for req in ready {
                self.try_reply(req);
            }
        }
    }

    /// A release to the witness is out and not answered yet (nor given
    /// up for lost, after a lease).
    pub fn releasing(&self) -> bool {
        self.ctl.as_ref().is_some_and(|c| c.sent.values().any(|s| s.kind == VoteKind::Release))
    }

    /// Gives back a grant this node did not use (not promoted on it, or
    /// nothing admitted on it): the witness undoes a forced claim's
    /// record (`VoteRequest::withdrawn`).
    fn withdraw(&mut self) {
        self.release_as(self.role != Role::Primary || self.grant_unused());
    }

    fn release_as(&mut self, withdrawn: bool) {
        let Some(c) = &mut self.ctl else { return };
        c.granted_reign = false;
        c.witness_may_undo = false;
        c.witness_until = Time::ZERO;
        c.peer_until = Time::ZERO;
        // A grant the witness gave before it hears of the release is
        // void, though its answer may come after: the witness may hand
        // the right on at once. (Every demotion releases. Before, only a
        // grant answered while the node was still Secondary was dropped;
        // answered after the operator forced it Primary again, one gave
        // the node a lease while its peer held the right: simulator seed
        // 10264532 at 20,000 steps, both accepted writes.)
        c.sent.clear();
        if c.witness_up {
            let mut req = self.vote_request(VoteKind::Release);
            req.withdrawn = withdrawn;
            self.actions.push_back(Action::Vote(req));
        }
    }

    fn vote_request(&mut self, kind: VoteKind) -> VoteRequest {
        let peer_current = self.peer_current() || self.cfg.plant == Plant::NoPeerFence;
        let uptodate = self.may_claim();
        let now = self.now;
        let told = self.told_gen();
        let data = self.tell_data(&told, self.told_forced());
        let unacked =
            self.unacked_current.is_some_and(|g| g == told.current && g == self.gen.current);
        let unused = kind == VoteKind::Renew && self.grant_unused();
        let c = self.ctl.as_mut().expect("controller");
        let id = c.next_id;
        c.next_id += 1;
        c.last_request = now;
        // (Granted, a claim leaves the witness able to undo it until a
        // renewal says it is used: `arbiter`, `witness_may_undo`.)
        let undoable = unused || kind == VoteKind::Claim;
        c.sent.insert(id, Sent { at: now, kind, peer_current, gen: told.current, undoable });
        if peer_current {
            // From the moment the witness may read this, it may count the
            // peer current again: no more writes the peer lacks.
            c.witness_fenced_peer = false;
            c.unfenced_id = id;
        }
        VoteRequest {
            id,
            resource: self.cfg.resource.clone(),
            node: self.cfg.me.clone(),
            peer: self.cfg.peer.clone(),
            kind,
            uptodate,
            peer_current,
            lease_ms: c.cfg.lease().as_millis() as u64,
            data,
            forced: kind == VoteKind::Renew && !c.granted_reign && now < c.forced_until,
            unacked,
            withdrawn: false,
            unused,
            undoable: kind == VoteKind::Claim,
        }
    }

    /// What a request says this node's data descends from: the saved
    /// generations, then those told before that the data still descends
    /// from (the saved history is short: a few separations the witness
    /// did not hear of push the one it holds out of it). The saved current
    /// one joins the told ones (kept with the next metadata update) if the
    /// data is good and in memory still descends from it (not while it is
    /// being replaced by data that did not grow from it, whose record may
    /// not be saved yet).
    fn tell_data(&mut self, saved: &super::GenIds, saved_forced: bool) -> Vec<u64> {
        let mut data = saved.descent(saved_forced);
        if saved.current != NEVER_SYNCED && self.cfg.plant != Plant::ForgetTold {
            let good = self.disk == DiskState::UpToDate
                && self.gen.descent(self.base_forced()).contains(&saved.current);
            if good {
                self.told_also(saved.current);
            }
            for &g in &self.told {
                if !data.contains(&g) {
                    data.push(g);
                }
            }
        }
        data
    }

    /// The data descends from generation `g` (kept with the next metadata
    /// update, the newest first, at most `TOLD_KEPT`).
    pub(crate) fn told_also(&mut self, g: u64) {
        if g != NEVER_SYNCED && self.cfg.plant != Plant::ForgetTold && !self.told.contains(&g) {
            self.told.insert(0, g);
            self.told.truncate(super::types::TOLD_KEPT);
        }
    }

    /// The data is being rebuilt from a peer on generation `g` whose data
    /// grew from this node's: `g` first among the told ones, so a rebuild
    /// that starts over knows a peer still on it (`handshake`).
    pub(crate) fn told_first(&mut self, g: u64) {
        if self.cfg.plant != Plant::ForgetTold {
            self.told.retain(|&t| t != g);
        }
        self.told_also(g);
    }

    /// A heartbeat to the peer went out (the peer lease starts at its send).
    /// Only a Primary's heartbeats on a running session count: the State
    /// that announced the promotion went before them on the same stream,
    /// so the peer that answers one knows a Primary is around (it will not
    /// claim before `dead_time` of silence). A heartbeat sent while this
    /// node was Secondary was answered by a peer that may claim at once.
    pub(crate) fn ctl_ping_sent(&mut self, id: u64) {
        let now = self.now;
        let running = self.session.as_ref().is_some_and(|s| s.phase == Phase::Running);
        if self.role != Role::Primary || !running {
            return;
        }
        let sid = self.session_id();
        if let Some(c) = &mut self.ctl {
            if c.ping_sid != sid {
                c.ping_sent.clear();
                c.ping_sid = sid;
            }
            c.ping_sent.insert(id, now);
            while c.ping_sent.len() > 8 {
                c.ping_sent.pop_first();
            }
        }
    }

    /// This node becomes Primary: no peer lease from before counts.
    pub(crate) fn ctl_promoted(&mut self) {
        let now = self.now;
        if let Some(c) = &mut self.ctl {
            c.forced_until = now + c.cfg.lease();
            c.ping_sent.clear();
            c.peer_until = Time::ZERO;
            c.superseded = false;
        }
    }

    /// The peer answered heartbeat `id`.
    pub(crate) fn ctl_pong(&mut self, id: u64) {
        let peer_secondary = self
            .session
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Running && s.peer.role == Role::Secondary);
        let sid = self.session_id();
        if let Some(c) = &mut self.ctl {
            if c.ping_sid != sid {
                return;
            }
            if let Some(sent) = c.ping_sent.remove(&id) {
                if peer_secondary {
                    c.peer_until = c.peer_until.max(sent + c.cfg.lease());
                }
            }
        }
    }

    /// This node answered the peer's heartbeat.
    pub(crate) fn ctl_answered(&mut self) {
        let now = self.now;
        let primary = self
            .session
            .as_ref()
            .is_some_and(|s| s.phase == Phase::Running && s.peer.role == Role::Primary);
        if let Some(c) = &mut self.ctl {
            if primary {
                c.answered_primary = now;
            }
        }
    }

    /// Something arrived from the peer.
    pub(crate) fn ctl_heard(&mut self) {
        let now = self.now;
        if let Some(c) = &mut self.ctl {
            c.peer_heard = c.peer_heard.max(now);
        }
    }

    /// The peer says it is Secondary: it holds no peer lease from the
    /// heartbeats this node answered (it voids its own at its demotion).
    pub(crate) fn ctl_peer_secondary(&mut self) {
        if let Some(c) = &mut self.ctl {
            c.answered_primary = Time::ZERO;
        }
    }

    /// The peer says it is Primary: our peer lease is void.
    pub(crate) fn ctl_peer_primary(&mut self) {
        if let Some(c) = &mut self.ctl {
            c.peer_until = Time::ZERO;
        }
    }

    /// The peer says it is Primary while this node is one without quorum:
    /// the peer holds the right (the witness granted it once this node's
    /// leases ended). Step down as if deposed, rather than stay a Primary
    /// that refuses every handshake while the witness is out of reach.
    pub(crate) fn ctl_met_primary(&mut self) {
        let serving = self.ctl.as_ref().is_some_and(Ctl::serving);
        if serving && self.role == Role::Primary && !self.has_quorum() {
            tracing::warn!("the peer is Primary and this node has no quorum: stepping down");
            self.start_demote(DemoteWhy::Deposed);
        }
    }

    /// The peer's hello says it was promoted after this node was: it
    /// reigned while this Primary was cut off (and has stepped down since,
    /// or `ctl_met_primary` would see it). This node must not acknowledge
    /// another write, whatever lease the peer's answers would give it.
    pub(crate) fn ctl_peer_reigned(&mut self, peer_promoted_at: u64) {
        let serving = self.ctl.as_ref().is_some_and(Ctl::serving);
        if serving && self.role == Role::Primary && peer_promoted_at > self.promoted_at {
            tracing::warn!(
                peer_promoted_at,
                promoted_at = self.promoted_at,
                "the peer was Primary after this node's promotion: stepping down"
            );
            self.start_demote(DemoteWhy::Deposed);
        }
    }

    /// Fails the replies that wait for quorum (they were never acknowledged).
    fn fail_held(&mut self) {
        let detached = self.answers_alone();
        let held: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| p.local.is_some() || p.decided(detached))
            .map(|(r, _)| *r)
            .collect();
        for req in held {
            self.try_reply(req);
        }
    }

    /// The controller's timer work: requests to the witness, the claim,
    /// quorum loss. Runs after every event (`pump`).
    pub(crate) fn ctl_tick(&mut self) {
        let now = self.now;
        let Some(c) = &mut self.ctl else { return };
        // Requests unanswered for a lease are lost (a silent witness).
        let lease = c.cfg.lease();
        c.sent.retain(|_, s| now < s.at + lease);
        if c.claim.is_some_and(|id| !c.sent.contains_key(&id)) {
            c.claim = None;
        }
        self.forced_claim_lost("the witness did not answer");
        let Some(c) = &self.ctl else { return };
        if self.role == Role::Primary && c.demoting.is_none() && !self.disk_usable() {
            // The disk failed: this node serves nothing any more, and
            // renewing would keep the right from the peer for good.
            tracing::warn!("the disk failed: giving up the Primary role");
            self.start_demote(DemoteWhy::Health);
        }
        let Some(c) = &self.ctl else { return };
        if self.role == Role::Primary {
            let quorum = self.has_quorum();
            let current = self.peer_current();
            let c = self.ctl.as_mut().expect("controller");
            c.claim = None;
            match (quorum, c.lost_since) {
                (false, None) => {
                    c.lost_since = Some(now);
                    tracing::warn!(
                        "quorum lost (no answer from the peer or the witness): replies wait"
                    );
                }
                (true, Some(_)) => {
                    c.lost_since = None;
                    tracing::info!("quorum regained");
                }
                _ => {}
            }
            let due = c.last_request == Time::ZERO || c.last_request + c.cfg.heartbeat <= now;
            // The witness must learn at once that the peer fell behind
            // (writes wait for it), or that it caught up.
            let gen = self.told_gen().current;
            let unused = self.grant_unused();
            let c = self.ctl.as_mut().expect("controller");
            let renewing = |f: &dyn Fn(&Sent) -> bool| {
                c.sent.values().any(|s| s.kind == VoteKind::Renew && f(s))
            };
            let fence_news =
                c.witness_fenced_peer == current && !renewing(&|s| s.peer_current == current);
            // Or a new generation while running alone (writes in it wait
            // until the witness knows it).
            let gen_news = c.witness_fenced_peer
                && !current
                && c.witness_gen != gen
                && !renewing(&|s| s.gen == gen);
            // Or a forced claim's record saved: writes alone wait until
            // the witness may no longer undo the grant (`witness_may_undo`).
            let used_news = c.witness_may_undo && !unused && !renewing(&|s| !s.undoable);
            let news = now >= c.quiet_until && (fence_news || gen_news || used_news);
            // (Handing over, only with the peer current: a renewal that
            // says otherwise would outdate the peer about to take over.
            // Or with the peer outdated already, as when a Primary alone
            // stops: its `on_demote` may write for longer than a lease.)
            let renew = c.demoting.is_none() || (c.serving() && (current || c.witness_fenced_peer));
            if c.witness_up && renew && (due || news) && c.sent.len() < 8 {
                let req = self.vote_request(VoteKind::Renew);
                self.actions.push_back(Action::Vote(req));
            }
            return;
        }
        let blocked = c.claim.is_some()
            || c.forced_claim.is_some()
            || c.stopping
            || !c.witness_up
            || now < c.quiet_until
            || !self.may_claim()
            // (What the claim tells of the data must be what a restart
            // would find: a sync's end, say, saved.)
            || !self.meta_durable()
            || self.split_brain
            // Data this node gives up to its peer on the next handshake
            // (`discard-my-data`, or a deposed Primary's): claimed, the
            // witness recorded what it ran with, and the peer it then
            // took its data from was outdated, leaving the pair without
            // a Primary (simulator seed 9147131).
            || self.discard
            || self.linking != Linking::Wanted;
        let peer_gone = now >= c.peer_heard + c.cfg.dead_time;
        // A connected Secondary peer, no Primary around: the first start,
        // or a handover. The witness picks one claimant.
        let nobody_primary = self.secondary_peer_running();
        if let Some(c) = self.ctl.as_mut() {
            c.lost_since = None;
        }
        // (With the peer connected, a Secondary, the handshake has ranked
        // the two: a node that lost what it confirmed is the peer's target
        // on one generation, Inconsistent; a source, its data the pair's.)
        let held_back = peer_gone && self.lost_since_synced();
        // The hold lifted (the peer met since, or back): no longer the
        // reason (it stayed in `status` after it stopped being true;
        // review, helper-158).
        if !self.lost_since_synced() {
            if let Some(c) = self.ctl.as_mut() {
                if c.last_refusal.as_deref() == Some(LOST_SINCE_SYNCED) {
                    c.last_refusal = None;
                }
            }
        }
        if held_back && !blocked {
            // Said where `status` shows it (the controller's last refusal).
            if let Some(c) = self.ctl.as_mut() {
                if c.last_refusal.as_deref() != Some(LOST_SINCE_SYNCED) {
                    tracing::warn!("not taking over: {LOST_SINCE_SYNCED}");
                    c.last_refusal = Some(LOST_SINCE_SYNCED.into());
                }
            }
        }
        if !blocked && ((peer_gone && !held_back) || nobody_primary) {
            let req = self.vote_request(VoteKind::Claim);
            if let Some(c) = &mut self.ctl {
                c.claim = Some(req.id);
            }
            tracing::info!(peer_gone, "asking the witness to become Primary");
            self.actions.push_back(Action::Vote(req));
        }
    }

    /// The controller's next deadline (strictly after now).
    pub(crate) fn ctl_deadline(&self) -> Option<Time> {
        let c = self.ctl.as_ref()?;
        let now = self.now;
        let mut t: Option<Time> = None;
        let mut at = |x: Time| {
            if x > now {
                t = Some(t.map_or(x, |y: Time| y.min(x)));
            }
        };
        for s in c.sent.values() {
            at(s.at + c.cfg.lease());
        }
        if self.role == Role::Primary {
            if c.witness_up && c.serving() {
                at((c.last_request + c.cfg.heartbeat).max(now + Time::from_millis(1)));
            }
            at(c.peer_until);
            at(c.witness_until);
            if let Some(l) = c.lost_since {
                at(l + c.cfg.dead_time.saturating_sub(c.cfg.lease()));
            }
        } else if c.witness_up && c.claim.is_none() && self.may_claim() {
            at(c.peer_heard + c.cfg.dead_time);
            at(c.quiet_until);
        }
        t
    }
}
