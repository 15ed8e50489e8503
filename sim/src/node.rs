//! A simulated node (its core, disk, metadata, the I/O in flight and the
//! application requests outstanding) and the link between the two.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use twinblock_replicator::core::{Core, IoError, IoId, Persist, ReqId, SessionId, Time};
use twinblock_replicator::protocol::wire::{Message, Role};

use crate::checker;
use crate::disk::{Disk, Durable};
use crate::meta::Meta;

/// An I/O the shell performed, waiting to report its completion.
pub(crate) struct PendingIo {
    pub(crate) io: IoId,
    pub(crate) at: Time,
    pub(crate) result: Result<Option<Bytes>, IoError>,
    pub(crate) durable: Durable,
    pub(crate) persist: Option<Persist>,
    /// An application write, zero or flush of a Primary: once the disk
    /// has failed, it may hang (never complete; see `Node::hung`).
    pub(crate) may_hang: bool,
}

/// An application request outstanding on a node.
#[derive(Clone)]
pub(crate) struct AppReq {
    pub kind: AppKind,
    /// Peer confirmation can be trusted for it: the node was connected
    /// (Running) when it was submitted and the link never changed since.
    pub linked: Option<(SessionId, u64)>,
    /// For flushes: the floors at submission.
    pub snapshot: Option<checker::FlushSnap>,
    /// Adaptive mode: the node's mode switches at submission (a switch
    /// before the reply, or a reply while Ahead: not confirmed by the peer).
    pub switches: u64,
    /// The peer's power losses at submission.
    pub peer_power: u64,
    /// When it was submitted.
    pub at: Time,
    /// Submitted to a Primary (a Secondary's FLUSH promises only its own
    /// disk, and nothing once both nodes lost power).
    pub primary: bool,
}

#[derive(Clone, Debug)]
pub(crate) enum AppKind {
    Write {
        id: u64,
        off: u64,
        len: u64,
        fua: bool,
    },
    Zero {
        id: u64,
        off: u64,
        len: u64,
        fua: bool,
    },
    Flush,
    /// A `twinblock bench` probe (scratch area: no device change to check).
    Probe(twinblock_replicator::core::ProbeMode),
}

pub struct Node {
    pub name: &'static str,
    pub core: Option<Core>,
    pub disk: Disk,
    pub meta: Meta,
    pub(crate) ios: Vec<PendingIo>,
    /// I/O of a failed disk that never completes (until the process
    /// ends): a disk that hangs after its first error.
    pub(crate) hung: Vec<PendingIo>,
    /// Since when the core's disk is Failed (this process).
    pub(crate) failed_since: Option<Time>,
    /// The disk stalled: no store operation completes any more (until
    /// the process ends).
    pub(crate) stalled: bool,
    /// When the first store operation issued to the stalled disk was.
    pub(crate) first_hung: Option<Time>,
    /// Ordered by request: a report names the first issued, in every run.
    pub(crate) reqs: BTreeMap<ReqId, AppReq>,
    /// Every request answered (a second answer is a violation).
    pub(crate) answered: std::collections::HashSet<ReqId>,
    /// Counts link changes (up or down) seen by this node.
    pub link_gen: u64,
    /// The disk file was recreated and no metadata was saved since.
    pub(crate) recreated: bool,
    /// The node was replaced in this run (a new disk, no metadata): what it
    /// knew of its past is gone, its word on its peer's data included.
    pub(crate) was_replaced: bool,
    pub(crate) restart_at: Option<Time>,
    /// The whole process is paused (SIGSTOP, a VM's steal time, a long
    /// stall) until then: it keeps its state and handles no event, timer,
    /// frame, witness answer, hook result or request meanwhile; what
    /// arrives waits, and it handles all of it at once when it resumes,
    /// its clock jumped ([`crate::world::Sim`]'s pause fault).
    pub(crate) paused_until: Option<Time>,
    /// What the shell would have told the paused core (in order), told
    /// at its resume.
    pub(crate) held: Vec<Held>,
    /// Application requests that reached the paused node's NBD socket:
    /// the core receives them at its resume.
    pub(crate) queued_submits: u32,
    /// When it last resumed from a pause: its deadlines (a disk
    /// timeout, a failed disk's answers) count from then at the earliest.
    pub(crate) resumed_at: Time,
    /// The promotion (`promoted_at`) this process last sent its hooks for
    /// (`Hook::Promoted`), and since when its record on disk has named
    /// the node's current promotion while no hook went out for it: the
    /// rule `hooks` (both ways).
    pub(crate) hooked: Option<u64>,
    pub(crate) unhooked_since: Option<(u64, Time)>,
    /// The promotion it reigned on at the last check, if Primary then: a
    /// handshake raises a reigning Primary's time past its peer's
    /// (`handshake.rs` `reign_from`), the same reign whose hooks went out
    /// already (seed 35701007: both promoted in the same millisecond, the
    /// peer's force given up; the raise was taken for a new promotion
    /// whose hooks never ran).
    pub(crate) reigned_at: Option<u64>,
}

/// A notification for a paused core, told at its resume.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Held {
    LinkDown(SessionId),
    WitnessLink(bool),
}

impl Node {
    pub(crate) fn new(name: &'static str) -> Node {
        Node {
            name,
            core: None,
            disk: Disk::new(),
            meta: Meta::default(),
            ios: Vec::new(),
            hung: Vec::new(),
            failed_since: None,
            stalled: false,
            first_hung: None,
            reqs: BTreeMap::new(),
            hooked: None,
            reigned_at: None,
            unhooked_since: None,
            answered: Default::default(),
            link_gen: 0,
            recreated: true,
            was_replaced: false,
            restart_at: None,
            paused_until: None,
            held: Vec::new(),
            queued_submits: 0,
            resumed_at: Time::ZERO,
        }
    }

    pub fn alive(&self) -> bool {
        self.core.is_some()
    }

    /// The disk was recreated and no metadata record was saved since (the
    /// shell reports `disk_created` until then).
    pub fn recreated_pending(&self) -> bool {
        self.recreated
    }

    /// The process is paused (it handles nothing now).
    pub fn paused(&self) -> bool {
        self.paused_until.is_some()
    }

    pub fn is_primary(&self) -> bool {
        self.core.as_ref().is_some_and(|c| c.role() == Role::Primary)
    }
}

/// The link between the nodes.
pub(crate) struct Link {
    pub(crate) sid: SessionId,
    /// Frames in flight, per direction (index: the receiving node).
    pub(crate) queue: [VecDeque<(Time, Message)>; 2],
    /// Silently partitioned: nothing moves (the stream stalls, as a
    /// reliable stream does), nobody is told; it heals, or a timeout
    /// breaks the link and what was in flight is lost.
    pub(crate) partitioned: bool,
}
