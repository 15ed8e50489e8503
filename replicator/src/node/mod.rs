//! The tokio shell around the node [`Core`]: it owns the store, the
//! metadata files and the peer links, feeds the core what happens, and
//! performs what the core asks for (shared/DESIGN.md "The node core").
//!
//! Every call into the core is made under one mutex and followed by
//! [`Shell::drain`], which performs the core's actions in order: store
//! operations go to the store lane ([`crate::lane`]: small ones land in
//! the page cache right there, large ones on the lane's thread off the
//! lock, in the core's order either way), metadata updates are made
//! durable (on a blocking thread), flushes run on the async store and
//! report back later, frames go to the link's writer task, replies wake
//! the NBD request that waits.
//!
//! Its parts: `lifecycle.rs` (open, the final flush, a clean stop),
//! `device.rs` (the NBD export: application requests in, replies out),
//! `drain.rs` (the core's actions, frames held and handed to the link),
//! `store_ops.rs` (store and metadata operations, the store lane's
//! thread), `scratch.rs` (the bench's scratch area), `peer.rs` (the
//! link's sessions and frames), `verbs.rs` (the
//! operator's verbs), `controller.rs` (votes, hooks, the witness, the
//! health check), `status.rs` (`status` and state changes).

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::Instrument;
use twinblock_nbd::{BlockDevice, DeviceError, DeviceResult, Extent, ZeroFlags};

use crate::al::{AlJournal, AlSaved, BitmapError, BitmapFile, Saved};
use crate::config::{NodeConfig, ResourceConfig};
use crate::core::{
    Action, Core, CoreConfig, IoError, IoId, Persist, ReadGate, Recovered, Refused, ReplyError,
    ReqId, SessionId, StoreOp,
};
use crate::disk_id::Check;
use crate::lane::{Lane, Offer};
use crate::link_stats::LinkTally;
use crate::meta::{Meta, MetaError};
use crate::protocol::wire::{DiskState, Message, Role};
use crate::status::{Counters, LinkStatus, PeerStatus, Status, SyncStatus};
use crate::store::{Store, StoreError, StoreOptions};
use twinblock_timeline::{mark, Point};

mod clock;
mod controller;
mod device;
mod drain;
mod lifecycle;
mod peer;
pub mod scratch;
mod status;
mod store_ops;
#[cfg(test)]
mod tests;
mod verbs;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("cannot start the node's store thread: {0}")]
    LaneThread(io::Error),
    #[error("after an unclean stop, the disk did not complete a sync (disk-timeout): {0}")]
    UncleanSync(io::Error),
    #[error(
        "{} is missing but {} marks blocks: this node's metadata was lost, and starting afresh would \
         give up what only this node holds. Restore it, or remove all of {}.* to start the node \
         anew (it then takes a full sync from its peer)",
        meta.display(), found.display(), meta.display()
    )]
    MetaLost { meta: std::path::PathBuf, found: std::path::PathBuf },
    #[error("{}", disk_absent(disk, id, *block))]
    DiskAbsent { disk: std::path::PathBuf, id: std::path::PathBuf, block: bool },
}

/// What a link's writer task is told.
#[derive(Debug)]
pub enum Outbound {
    Frame(Message),
    Close(String),
}

/// Where a session's frames go: its writer's queue, and the bell rung
/// once a close is queued (the writer may be held by QUIC's flow control
/// behind frames the peer does not read: it then gives them a moment and
/// closes, see `link::write_frames`).
pub struct LinkTx {
    pub queue: mpsc::UnboundedSender<Outbound>,
    pub closing: Arc<Notify>,
    /// What this node's answers to the peer hold in `queue`.
    pub answers: Arc<Answers>,
}

/// The memory a session's queue holds in answers to the peer: frames the
/// peer's own frames cause (acknowledgements, pongs, verify checksums,
/// failures), not data (the core's windows bound that) nor the handshake
/// (this node's bitmap). A peer that sends and reads nothing would grow it
/// without end; the link's reader takes no frame from the peer while it
/// is over [`Answers::LIMIT`] (`link::run_session`), so QUIC's flow
/// control holds the peer, and the peer is given up after `timeout`
/// without a frame taken.
#[derive(Debug, Default)]
pub struct Answers {
    bytes: std::sync::atomic::AtomicUsize,
    /// Rung when the writer takes answers while over the limit.
    taken: Notify,
}

impl Answers {
    /// Queued answers the reader waits for (bytes of memory): an honest
    /// peer's never come near it (its requests in flight are bounded:
    /// verify checksums of 16 ranges are 1 MiB).
    pub const LIMIT: usize = 8 << 20;

    /// The memory `msg` holds in the queue, if it is an answer.
    pub fn cost(msg: &Message) -> Option<usize> {
        let heap = match msg {
            Message::Data { .. }
            | Message::Hello(_)
            | Message::Bits { .. }
            | Message::BitWords { .. } => return None,
            Message::Verified { sums, .. } => sums.len() * 8,
            Message::PromoteAnswer { why, .. } => why.len(),
            _ => 0,
        };
        Some(std::mem::size_of::<Outbound>() + heap)
    }

    /// `msg` goes into the queue.
    pub fn queued(&self, msg: &Message) {
        if let Some(n) = Self::cost(msg) {
            self.bytes.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The writer took `msg` from the queue.
    pub fn taken(&self, msg: &Message) {
        if let Some(n) = Self::cost(msg) {
            let before = self.bytes.fetch_sub(n, Ordering::Relaxed);
            if before > Self::LIMIT && before - n <= Self::LIMIT {
                self.taken.notify_waiters();
            }
        }
    }

    /// Bytes of answers queued.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Whether the reader may take more of the peer's frames.
    pub fn has_room(&self) -> bool {
        self.bytes() <= Self::LIMIT
    }

    /// Until the queued answers are within the limit.
    pub async fn room(&self) {
        loop {
            let taken = self.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            if self.has_room() {
                return;
            }
            taken.await;
        }
    }
}

/// Checks `done` every `every` until it holds or `deadline` passes (the
/// verbs' and the stop's waits for the node to change its role); whether
/// it holds.
pub async fn poll_until(
    deadline: tokio::time::Instant,
    every: Duration,
    mut done: impl FnMut() -> bool,
) -> bool {
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(every).await;
    }
}

/// What the core asks of the controller's task (votes for the witness,
/// hooks to run).
#[derive(Debug)]
pub enum ControllerOut {
    Vote(crate::core::VoteRequest),
    Hook(crate::core::Hook),
}

/// The kinds of application request the shell answers (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    Write,
    Flush,
    Trim,
    WriteZeroes,
    Read,
    BlockStatus,
}

/// Told of every application request the node answered: its kind, how long
/// it took from submission to reply, and whether it succeeded. Called on
/// the request's task, outside the node's lock: keep it cheap.
pub trait RequestObserver: Send + Sync {
    fn completed(&self, kind: RequestKind, latency: Duration, ok: bool);
}

/// The states a node is in, as the shell saw them after a call into the
/// core. Every change is broadcast ([`Node::transitions`]), so a watcher
/// sees states that came and went between two looks at [`Node::status`]
/// (a resync of a few blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateKey {
    pub role: Role,
    pub disk: crate::protocol::wire::DiskState,
    pub connection: crate::core::Connection,
    pub replication: crate::core::Replication,
}

impl StateKey {
    /// The connection state as `status` shows it (Connected, SyncSource, ...).
    pub fn connection_name(&self) -> String {
        use crate::core::{Connection, Replication};
        match (self.connection, self.replication) {
            (Connection::Connected, r) => match r {
                Replication::SyncSource => "SyncSource".to_string(),
                Replication::SyncTarget => "SyncTarget".to_string(),
                Replication::VerifySource | Replication::VerifyTarget => "Verifying".to_string(),
                Replication::Ahead => "Ahead".to_string(),
                Replication::Behind => "Behind".to_string(),
                _ => "Connected".to_string(),
            },
            (c, _) => c.to_string(),
        }
    }
}

/// The metadata files.
struct MetaFiles {
    meta: std::path::PathBuf,
    al: AlJournal,
    bitmap: BitmapFile,
}

/// Where an application request's reply goes.
pub(crate) type ReplyTx = oneshot::Sender<Result<(), ReplyError>>;

/// Everything behind the node's mutex.
pub struct Shell {
    pub(crate) core: Core,
    pub(crate) replies: HashMap<ReqId, ReplyTx>,
    /// Replies the core made under the lock, sent once it is released
    /// ([`ShellGuard`]).
    answered: Vec<(ReplyTx, Result<(), ReplyError>)>,
    /// The node's state changed under the lock: waits on the lane (which
    /// end on a detached disk too) are woken once it is released (a woken
    /// request may run right there, and take the lock).
    state_changed: Option<Arc<Notify>>,
    links: HashMap<SessionId, LinkTx>,
    /// Metadata updates run on a blocking thread, off the node's mutex
    /// (false while opening: they run in place, and a failure fails `open`).
    persist_async: bool,
    /// The controller's task, when one runs.
    controller: Option<mpsc::UnboundedSender<ControllerOut>>,
    /// The states after the last call into the core.
    last_key: Option<StateKey>,
    /// Store operations queued for the lane's thread.
    lane: Lane,
    /// Frames held while an NBD connection's thread issues the requests
    /// of one read (more follow): handed to the link together when the
    /// last is issued, or before any other frame (`send_frame`).
    held: Vec<(SessionId, Message)>,
    /// When the first of them was held.
    held_since: Option<Instant>,
}

/// The node's lock. Replies made under it are sent when it is released:
/// the NBD request a reply wakes is finished, and its reply sent, on the
/// waking thread ([`BlockDevice::finish_on_wake`]), which must not hold
/// the lock while it does (and the lock is held for less time).
pub(crate) struct ShellGuard<'a>(Option<MutexGuard<'a, Shell>>);

impl std::ops::Deref for ShellGuard<'_> {
    type Target = Shell;
    fn deref(&self) -> &Shell {
        self.0.as_deref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for ShellGuard<'_> {
    fn deref_mut(&mut self) -> &mut Shell {
        self.0.as_deref_mut().expect("held until dropped")
    }
}

impl Shell {
    /// The local disk is detached (Failed): waits on the lane end.
    fn detached(&self) -> bool {
        self.core.disk() == DiskState::Failed
    }
}

impl Drop for ShellGuard<'_> {
    fn drop(&mut self) {
        let Some(mut guard) = self.0.take() else { return };
        let answered = std::mem::take(&mut guard.answered);
        let changed = guard.state_changed.take();
        drop(guard);
        if let Some(n) = changed {
            n.notify_waiters();
        }
        let many = answered.len() > 1;
        let send = || {
            for (tx, result) in answered {
                let _ = tx.send(result);
            }
        };
        if many {
            // The requests they finish answer in one write per connection.
            twinblock_nbd::batch(send);
        } else {
            send();
        }
    }
}

pub struct Node {
    pub res: ResourceConfig,
    pub me: NodeConfig,
    pub peer: NodeConfig,
    store: Arc<Store>,
    shell: Mutex<Shell>,
    /// The metadata files: one update of each kind at a time (the core's rule).
    files: Arc<Mutex<MetaFiles>>,
    /// The boot clock at the start ([`clock::boot_time`]).
    origin: Duration,
    pub(crate) next_req: AtomicU64,
    next_session: AtomicU64,
    /// NBD clients connected to this node's export while it was offered
    /// read-write ([`Node::demote`]).
    pub(crate) nbd_writers: AtomicUsize,
    /// This node, for tasks the shell spawns (flush completions).
    this: std::sync::Weak<Node>,
    /// Wakes the link manager after connect/disconnect and link changes.
    pub changed: Notify,
    /// Told of every answered application request (metrics), once set.
    observer: std::sync::OnceLock<Arc<dyn RequestObserver>>,
    /// Every change of [`StateKey`].
    transitions: tokio::sync::broadcast::Sender<StateKey>,
    /// `twinblock bench`'s scratch area (`META.bench`), opened on first use.
    pub(crate) scratch: Arc<scratch::Scratch>,
    /// The runtime the node's tasks run on (flushes the lane's thread starts).
    rt: tokio::runtime::Handle,
    /// Wakes the lane's thread ([`crate::lane`]).
    lane_wake: std::sync::mpsc::Sender<()>,
    /// Told each time the lane performed an operation or went idle.
    lane_progress: Arc<Notify>,
    /// The link's transport counters (status `link`). `status` takes it
    /// under the node's lock; nothing takes them the other way round.
    link_tally: Mutex<LinkTally>,
    /// The last replication handshake refused (status `link_refusal`).
    link_refusal: Mutex<Option<String>>,
}

/// [`NodeError::DiskAbsent`]'s message. A block device gone for good is
/// answered by its replacement at the path (taken for a replaced disk:
/// Failed, a full sync), not by removing its identity: the start then made
/// a regular file at the device's path (on /dev; review).
fn disk_absent(disk: &std::path::Path, id: &std::path::Path, block: bool) -> String {
    let (disk, id) = (disk.display(), id.display());
    if block {
        format!(
            "{disk} is missing, and the metadata's disk was a block device ({id} records it): \
             not started, it may not be there yet (a device not appeared). Start again once it \
             is; if it is gone for good, attach its replacement at {disk}, or set `disk` to the \
             new device (the node then takes a full sync from its peer)"
        )
    } else {
        format!(
            "{disk} is missing, and the metadata's disk was a file on another file system ({id} \
             records it): not started, it may not be there yet (a file system not mounted). \
             Start again once it is; if it is gone for good, remove {id} (the node then takes a \
             full sync from its peer)"
        )
    }
}

fn io_err(e: &io::Error) -> IoError {
    IoError(e.raw_os_error().unwrap_or(libc::EIO))
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Node {
    pub(crate) fn lock(&self) -> ShellGuard<'_> {
        ShellGuard(Some(self.shell.lock().unwrap_or_else(|e| e.into_inner())))
    }

    /// The core's time: the boot clock since the start, suspensions of
    /// the host included ([`clock`]).
    pub(crate) fn now(&self) -> Duration {
        clock::boot_time().saturating_sub(self.origin)
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}
