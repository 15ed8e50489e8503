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

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::Instrument;
use twinblock_nbd::{BlockDevice, DeviceError, DeviceResult, Extent, ZeroFlags};

use crate::al::{AlJournal, BitmapFile};
use crate::config::{NodeConfig, ResourceConfig};
use crate::core::{
    Action, Core, CoreConfig, IoError, IoId, Persist, Recovered, Refused, ReplyError, ReqId,
    SessionId, StoreOp,
};
use crate::disk_id::Check;
use crate::lane::{Lane, Offer};
use crate::link_stats::LinkTally;
use crate::meta::{Meta, MetaError};
use crate::protocol::wire::{DiskState, Message, Role};
use crate::status::{Counters, LinkStatus, PeerStatus, Status, SyncStatus};
use crate::store::{Store, StoreError, StoreOptions};
use twinblock_timeline::{mark, Point};

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

/// The most frames held for one hand-over ([`Node::send_frame`]): about a
/// 64 KiB read of 4 KiB writes.
const HOLD_FRAMES: usize = 16;

/// The longest the first held frame waits for the others.
const HOLD_TIME: Duration = Duration::from_micros(200);

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
    origin: Instant,
    pub(crate) next_req: AtomicU64,
    next_session: AtomicU64,
    /// This node, for tasks the shell spawns (flush completions).
    this: std::sync::Weak<Node>,
    /// Wakes the link manager after connect/disconnect and link changes.
    pub changed: Notify,
    /// Told of every answered application request (metrics), once set.
    observer: std::sync::OnceLock<Arc<dyn RequestObserver>>,
    /// Every change of [`StateKey`].
    transitions: tokio::sync::broadcast::Sender<StateKey>,
    /// `twinblock bench`'s scratch area (`META.bench`), opened on first use.
    scratch: std::sync::OnceLock<Arc<Store>>,
    opts: StoreOptions,
    /// The runtime the node's tasks run on (flushes the lane's thread starts).
    rt: tokio::runtime::Handle,
    /// Wakes the lane's thread ([`crate::lane`]).
    lane_wake: std::sync::mpsc::Sender<()>,
    /// Told each time the lane performed an operation or went idle.
    lane_progress: Arc<Notify>,
    /// The link's transport counters (status `link`). `status` takes it
    /// under the node's lock; nothing takes them the other way round.
    link_tally: Mutex<LinkTally>,
}

/// What performing a store operation left for the core to hear.
enum Performed {
    Done(Result<Option<Bytes>, IoError>),
    /// A flush (or a FUA write's flush) runs; it reports when done.
    Flushing,
}

fn io_err(e: &io::Error) -> IoError {
    IoError(e.raw_os_error().unwrap_or(libc::EIO))
}

fn random_seed() -> u64 {
    let mut seed = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `seed`.
    let n = unsafe { libc::getrandom((&mut seed as *mut u64).cast(), 8, 0) };
    if n != 8 {
        seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 32);
    }
    seed
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Performs one metadata update (durable on success).
fn persist(
    files: &Mutex<MetaFiles>,
    node: &str,
    res: &ResourceConfig,
    what: Persist,
) -> Result<(), IoError> {
    let mut f = files.lock().unwrap_or_else(|e| e.into_inner());
    let r = match what {
        Persist::Meta(rec) => {
            Meta::from_record(node, &res.name, res.size, &rec).save(&f.meta).map_err(|e| match e {
                MetaError::Io { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })
        }
        Persist::Bitmap { pages } => f.bitmap.write_pages(&pages),
        Persist::Al { remove, add } => f.al.apply(&remove, &add),
    };
    r.map_err(|e| {
        tracing::error!("metadata update failed: {e}");
        io_err(&e)
    })
}

impl Node {
    /// Opens (creating if needed) the disk and metadata of node `me`, and
    /// starts the core's timer. Starts Secondary. Must run inside tokio.
    pub fn open(
        res: ResourceConfig,
        me: &str,
        opts: &StoreOptions,
    ) -> Result<Arc<Node>, NodeError> {
        let (mine, peer) = res.pair(me)?;
        let (mine, peer) = (mine.clone(), peer.clone());
        let mut meta = Meta::load(&mine.meta, me, &res.name, res.size)?;
        if let Some(m) = meta.as_mut().filter(|_| !mine.disk.exists()) {
            // The disk is gone but its metadata is not: record that the data
            // is gone (as if the disk had failed: a full sync follows) before
            // a new file exists, so a crash in between cannot make an empty
            // disk look UpToDate. The generation ids stay (see Core::new).
            m.save_failed(&mine.meta)?;
        }
        let store = Store::open(&mine.disk, Some(res.size), opts)?;
        let meta_io = |source| MetaError::Io { path: mine.meta.clone(), source };
        // A disk replaced at the same path (an operator's new empty file,
        // a new volume under the same name) is not the one the metadata
        // describes: recorded Failed (a full sync from the peer follows)
        // before its identity replaces the old one.
        match crate::disk_id::check(&mine.meta, &mine.disk).map_err(meta_io)? {
            Check::Same => {}
            Check::Unrecorded(id) => crate::disk_id::record(&mine.meta, &id).map_err(meta_io)?,
            Check::Replaced { was, found } => {
                if let Some(m) = meta.as_mut().filter(|m| m.disk != DiskState::Failed) {
                    tracing::warn!(
                        disk = %mine.disk.display(), recorded = %was, %found,
                        "the disk is not the one the metadata describes (replaced): Failed, a \
                         full sync from the peer follows"
                    );
                    m.save_failed(&mine.meta)?;
                }
                crate::disk_id::record(&mine.meta, &found).map_err(meta_io)?;
            }
        }
        let cfg = CoreConfig::from_resource(&res, me, &peer.name);
        let words = crate::bitmap::Bitmap::with_block(cfg.size, cfg.block).words().len();
        // The metadata survives but its bitmap or activity log does not (a
        // file lost, or the bitmap of another size): nothing may be taken
        // as in sync on no evidence, so every block is out of sync (a full
        // resync, in the direction the generations say). Decided before
        // either file is created, and the bitmap of ones replaces the old
        // one atomically before the log is created: a crash or error in
        // between leaves the sign of the loss for the next start.
        let bitmap_fits = BitmapFile::fits(&mine.meta, words).map_err(meta_io)?;
        let al_exists = AlJournal::exists(&mine.meta).map_err(meta_io)?;
        if meta.is_some() && !(bitmap_fits && al_exists) {
            tracing::warn!(
                bitmap_lost = !bitmap_fits,
                activity_log_lost = !al_exists,
                "the out-of-sync bitmap or the activity log is missing (or the bitmap does not \
                 fit the device): every block counts as out of sync (a full resync follows)"
            );
            let mut all = crate::bitmap::Bitmap::with_block(cfg.size, cfg.block);
            all.mark_all();
            BitmapFile::replace(&mine.meta, all.words()).map_err(meta_io)?;
        }
        let (bitmap, saved) = BitmapFile::open(&mine.meta, words).map_err(meta_io)?;
        let (al, held) = AlJournal::open(&mine.meta).map_err(meta_io)?;
        if !held.is_empty() {
            tracing::warn!(
                extents = held.len(),
                "unclean shutdown: the activity log's extents are out of sync"
            );
        }
        if !held.is_empty() && !store.created() {
            // An unclean stop (a crash, or a final flush that did not
            // complete): the activity log's extents hold what the page
            // cache kept, and a resync may send it over the peer's copy.
            // If its writeback failed, the kernel let it go and the disk
            // holds older data. The core's recovery flush would hear of it
            // too, but only once the node runs, racing the handshake: a
            // peer that became this node's SyncTarget meanwhile is left
            // Inconsistent beside a Failed disk. So it is asked here, and
            // the disk is recorded Failed (a full sync from the peer).
            if let Some(m) = meta.as_mut().filter(|m| m.disk != DiskState::Failed) {
                match store.sync_unseen(res.disk_timeout) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                        return Err(NodeError::UncleanSync(e));
                    }
                    Err(e) => {
                        tracing::error!(
                            "after an unclean stop the disk's writeback failed ({e}): its data \
                             is not trusted (Failed; a full sync from the peer follows)"
                        );
                        m.save_failed(&mine.meta)?;
                    }
                }
            }
        }
        if store.created() && meta.is_some() {
            tracing::warn!(disk = %mine.disk.display(), "the disk file is new but its metadata is not: Inconsistent, a full sync from the peer follows");
        }
        let rec = Recovered {
            meta: meta.as_ref().map(Meta::record),
            bitmap: saved,
            al: held,
            disk_created: store.created(),
            boot: crate::boot::boot(),
        };
        let origin = Instant::now();
        let core = Core::new(cfg, rec, Duration::ZERO, random_seed());
        let (lane_wake, lane_woken) = std::sync::mpsc::channel();
        // A disk that stops answering must not hold the node's lock.
        let lane = if res.disk_timeout.is_some() { Lane::all() } else { Lane::default() };
        let node = Arc::new_cyclic(|this| Node {
            this: this.clone(),
            res,
            me: mine.clone(),
            peer,
            store: Arc::new(store),
            shell: Mutex::new(Shell {
                core,
                replies: HashMap::new(),
                answered: Vec::new(),
                state_changed: None,
                links: HashMap::new(),
                persist_async: false,
                controller: None,
                last_key: None,
                lane,
                held: Vec::new(),
                held_since: None,
            }),
            files: Arc::new(Mutex::new(MetaFiles { meta: mine.meta.clone(), al, bitmap })),
            origin,
            next_req: AtomicU64::new(1),
            next_session: AtomicU64::new(1),
            changed: Notify::new(),
            observer: std::sync::OnceLock::new(),
            transitions: tokio::sync::broadcast::channel(256).0,
            scratch: std::sync::OnceLock::new(),
            opts: opts.clone(),
            rt: tokio::runtime::Handle::current(),
            lane_wake,
            lane_progress: Arc::new(Notify::new()),
            link_tally: Mutex::new(LinkTally::default()),
        });
        let lane = Arc::downgrade(&node);
        let span = tracing::Span::current();
        let rt = node.rt.clone();
        std::thread::Builder::new()
            .name("twinblock-store".into())
            .spawn(move || {
                // What the completions lead to (metadata updates, flushes,
                // NBD requests finished here) may spawn onto the runtime.
                let _rt = rt.enter();
                let _span = span.enter();
                // Ends when the node is gone (its sender dropped).
                while lane_woken.recv().is_ok() {
                    let Some(node) = lane.upgrade() else { return };
                    let run = std::panic::AssertUnwindSafe(|| node.run_lane());
                    if std::panic::catch_unwind(run).is_err() {
                        // Every store operation from now on would wait
                        // behind the lost one for ever: stop the process
                        // (a restart recovers from the activity log).
                        tracing::error!("the store thread failed: stopping the node");
                        std::process::abort();
                    }
                }
            })
            .map_err(NodeError::LaneThread)?;
        {
            let mut sh = node.lock();
            node.drain(&mut sh);
            if let Some(e) = sh.core.status().last_error {
                return Err(NodeError::Meta(MetaError::Io {
                    path: mine.meta.clone(),
                    source: io::Error::other(e),
                }));
            }
            sh.persist_async = true;
        }
        let timer = Arc::downgrade(&node);
        tokio::spawn(
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let Some(node) = timer.upgrade() else { return };
                    let mut sh = node.lock();
                    let now = node.now();
                    sh.core.handle_timeout(now);
                    node.drain(&mut sh);
                }
            }
            .in_current_span(),
        );
        Ok(node)
    }

    pub(crate) fn lock(&self) -> ShellGuard<'_> {
        ShellGuard(Some(self.shell.lock().unwrap_or_else(|e| e.into_inner())))
    }

    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Performs the core's actions until it has none.
    ///
    /// Acknowledgements are cumulative: of those the core emits during one
    /// drain (one per frame applied, when a batch of frames arrived), only
    /// the last goes out, in the place of the first that was held back
    /// (before any later frame to the same session).
    pub(crate) fn drain(&self, sh: &mut Shell) {
        let mut ack: Option<(SessionId, Message)> = None;
        while let Some(a) = sh.core.poll_action() {
            match a {
                Action::Send { session, msg: msg @ Message::Ack { .. } } => {
                    if let Some((s, held)) = ack.take().filter(|(s, _)| *s != session) {
                        self.send_frame(sh, s, held);
                    }
                    ack = Some((session, msg));
                    continue;
                }
                Action::Send { session, .. } | Action::Close { session, .. }
                    if ack.as_ref().is_some_and(|(s, _)| *s == session) =>
                {
                    if let Some((s, held)) = ack.take() {
                        self.send_frame(sh, s, held);
                    }
                }
                _ => {}
            }
            match a {
                Action::Store { io, op } => match sh.lane.offer(io, op) {
                    Offer::InPlace(io, op) => {
                        if let Performed::Done(r) = self.perform(op, io) {
                            let now = self.now();
                            sh.core.handle_io(now, io, r);
                        }
                    }
                    Offer::Queued => {}
                    Offer::Wake => {
                        let _ = self.lane_wake.send(());
                    }
                },
                Action::Persist { io, what } => {
                    if !sh.persist_async {
                        let r = persist(&self.files, &self.me.name, &self.res, what);
                        let now = self.now();
                        sh.core.handle_io(now, io, r.map(|()| None));
                        continue;
                    }
                    let Some(node) = self.this.upgrade() else { continue };
                    self.rt.spawn(
                        async move {
                            let files = node.files.clone();
                            let (name, res) = (node.me.name.clone(), node.res.clone());
                            let r = tokio::task::spawn_blocking(move || {
                                persist(&files, &name, &res, what)
                            })
                            .await
                            .unwrap_or(Err(IoError::EIO));
                            let mut sh = node.lock();
                            let now = node.now();
                            sh.core.handle_io(now, io, r.map(|()| None));
                            node.drain(&mut sh);
                        }
                        .in_current_span(),
                    );
                }
                Action::Send { session, msg } => self.send_frame(sh, session, msg),
                Action::Close { session, reason } => {
                    // Frames held for the link go before its close.
                    Self::release_held(sh);
                    if let Some(l) = sh.links.remove(&session) {
                        let _ = l.queue.send(Outbound::Close(reason));
                        l.closing.notify_one();
                    }
                    self.changed.notify_waiters();
                }
                Action::Reply { req, result } => {
                    if let Some(tx) = sh.replies.remove(&req) {
                        sh.answered.push((tx, result));
                    }
                }
                Action::Vote(v) => {
                    if let Some(tx) = &sh.controller {
                        let _ = tx.send(ControllerOut::Vote(v));
                    }
                }
                Action::Hook(h) => match &sh.controller {
                    Some(tx) => {
                        let _ = tx.send(ControllerOut::Hook(h));
                    }
                    None => {
                        let now = self.now();
                        sh.core.hook_done(now, h, Ok(()));
                    }
                },
            }
        }
        if let Some((s, held)) = ack {
            self.send_frame(sh, s, held);
        }
        let c = &sh.core;
        let key = StateKey {
            role: c.role(),
            disk: c.disk(),
            connection: c.connection(),
            replication: c.replication(),
        };
        if sh.last_key != Some(key) {
            // A disk that leaves Failed (the target of a full sync that
            // rewrites every block, or declared good by `primary --force`)
            // may sync again: what a failed writeback dropped is rewritten
            // or given up (`store::syncer`). Only on that transition: the
            // latch is set before the core hears of the failure.
            if sh.last_key.is_some_and(|k| k.disk == DiskState::Failed)
                && key.disk != DiskState::Failed
            {
                self.store.sync_recovered();
            }
            sh.last_key = Some(key);
            let _ = self.transitions.send(key);
            sh.state_changed = Some(self.lane_progress.clone());
        }
    }

    /// Hands a frame to the writer task of session `session`'s link.
    ///
    /// While an NBD connection's thread issues the requests of one read
    /// and more of them follow (`twinblock_nbd::issuing`), the frame is
    /// held and handed over with the others when the last is issued: one
    /// wake-up of the link's thread for them all, and they leave together
    /// (fuller packets, fewer sends; the peer applies and acknowledges them
    /// in one go). Frames keep their order: any frame not held, from any
    /// thread, and any close, first hands over those held. At most
    /// [`HOLD_FRAMES`] frames, for at most [`HOLD_TIME`]: a read of many
    /// small writes, or local writes that sleep (dirty-page throttling),
    /// do not hold the first of them back for long (in adaptive mode the
    /// wait would count against the link); and the connection's budget
    /// (at least 34 units) is never all in held frames.
    fn send_frame(&self, sh: &mut Shell, session: SessionId, msg: Message) {
        if let Message::Data { seq, .. } = &msg {
            mark(Point::Frame, *seq);
        }
        if twinblock_nbd::issuing::issuing_more()
            && sh.held.len() < HOLD_FRAMES
            && sh.held_since.is_none_or(|t| t.elapsed() < HOLD_TIME)
        {
            let node = self.this.clone();
            let release = Box::new(move || {
                if let Some(node) = node.upgrade() {
                    Self::release_held(&mut node.lock());
                }
            });
            if twinblock_nbd::issuing::when_issued(self as *const Node as usize, release).is_ok() {
                sh.held_since.get_or_insert_with(Instant::now);
                sh.held.push((session, msg));
                return;
            }
        }
        Self::release_held(sh);
        Self::hand_over(sh, session, msg);
    }

    /// Hands the held frames to their links, in order.
    fn release_held(sh: &mut Shell) {
        sh.held_since = None;
        for (session, msg) in std::mem::take(&mut sh.held) {
            Self::hand_over(sh, session, msg);
        }
    }

    fn hand_over(sh: &Shell, session: SessionId, msg: Message) {
        match &msg {
            Message::Data { seq, .. } => mark(Point::Handed, *seq),
            Message::Ack { done, .. } => mark(Point::AckHanded, *done),
            _ => {}
        }
        if let Some(l) = sh.links.get(&session) {
            let _ = l.queue.send(Outbound::Frame(msg));
        }
    }

    /// Every state change from now on (see [`StateKey`]).
    pub fn transitions(&self) -> tokio::sync::broadcast::Receiver<StateKey> {
        self.transitions.subscribe()
    }

    /// Performs one store operation on the calling thread (the node's lock
    /// held or not: the lane decides, see [`crate::lane`]).
    fn perform(&self, op: StoreOp, io: IoId) -> Performed {
        let (result, then_flush) = match op {
            StoreOp::Write { offset, data, fua } => (self.store.write_now(offset, &data), fua),
            StoreOp::Zero { offset, len, punch, fua } => {
                (self.store.zero_now(offset, len, punch, false), fua)
            }
            StoreOp::Read { offset, len } => {
                let r = self.store.read_now(offset, len as usize);
                return Performed::Done(r.map(Some).map_err(|e| io_err(&e)));
            }
            StoreOp::Flush => (Ok(()), true),
            StoreOp::Scratch { offset, data } => match self.scratch() {
                Ok(s) => (s.write_now(offset, &data), false),
                Err(e) => (Err(e), false),
            },
        };
        match result {
            Err(e) => Performed::Done(Err(io_err(&e))),
            Ok(()) if !then_flush => Performed::Done(Ok(None)),
            Ok(()) => {
                let Some(node) = self.this.upgrade() else { return Performed::Flushing };
                self.rt.spawn(
                    async move {
                        let r = node.store.flush().await;
                        let mut sh = node.lock();
                        let now = node.now();
                        sh.core.handle_io(now, io, r.map(|()| None).map_err(|e| io_err(&e)));
                        node.drain(&mut sh);
                    }
                    .in_current_span(),
                );
                Performed::Flushing
            }
        }
    }

    /// The lane's thread: performs the queued store operations in order,
    /// outside the lock, each completion reported as it comes, until the
    /// queue is empty (operations the completions cause are queued too).
    fn run_lane(&self) {
        let mut next = self.lock().lane.take_next();
        while let Some((io, op)) = next {
            let performed = self.perform(op, io);
            let mut sh = self.lock();
            sh.lane.performed();
            if let Performed::Done(r) = performed {
                let now = self.now();
                sh.core.handle_io(now, io, r);
                self.drain(&mut sh);
            }
            next = sh.lane.take_next();
            drop(sh);
            self.lane_progress.notify_waiters();
        }
    }

    /// Until `ok` holds of the lane (checked now and after each operation
    /// it performs).
    async fn lane_wait(&self, ok: impl Fn(&Shell) -> bool) {
        loop {
            let progress = self.lane_progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if ok(&self.lock()) {
                return;
            }
            progress.await;
        }
    }

    /// Until the lane's backlog is within [`crate::lane::LANE_BACKLOG`]:
    /// the link's reader waits here before it takes in more frames.
    pub async fn lane_room(&self) {
        self.lane_wait(|sh| sh.lane.has_room()).await
    }

    /// Until every store operation issued so far (and any they lead to) is
    /// performed: before the final flush at stop. False if the disk is
    /// detached (Failed) first: what the lane still holds may never be
    /// performed (a disk that stopped answering), and nothing waits for it.
    pub async fn lane_idle(&self) -> bool {
        self.lane_wait(|sh| sh.lane.state() == crate::lane::LaneState::Idle || sh.detached()).await;
        !self.lock().detached()
    }

    /// The bench scratch area, opened (created sparse) on first use.
    fn scratch(&self) -> io::Result<&Arc<Store>> {
        if let Some(s) = self.scratch.get() {
            return Ok(s);
        }
        let path = crate::bench::scratch_path(&self.me.meta);
        // Opened under the node's lock: never wait there for a lock an
        // exited process left (a failed probe is all it costs).
        let opts = StoreOptions { lock_wait: Duration::ZERO, ..self.opts.clone() };
        // (Every probe tries again; the core warns of the failed writes,
        // at most every 10 s, with their errno.)
        let store =
            Store::open(&path, Some(crate::protocol::wire::BENCH_AREA), &opts).map_err(|e| {
                // The errno travels to the bench's report (and the peer's
                // Failed frame): "Is a directory", not an anonymous EIO.
                match e {
                    StoreError::Open { source, .. } => source,
                    other => io::Error::other(other.to_string()),
                }
            })?;
        Ok(self.scratch.get_or_init(|| Arc::new(store)))
    }

    /// Runs `f` on the core and performs what it asks.
    fn with_core<T>(&self, f: impl FnOnce(&mut Core, Duration) -> T) -> T {
        let mut sh = self.lock();
        let now = self.now();
        let r = f(&mut sh.core, now);
        self.drain(&mut sh);
        r
    }

    /// Sets who is told of every answered application request (once).
    pub fn set_observer(&self, observer: Arc<dyn RequestObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Submits an application request and waits for its reply.
    async fn request(
        &self,
        kind: RequestKind,
        f: impl FnOnce(&mut Core, Duration, ReqId),
    ) -> DeviceResult<()> {
        let start = Instant::now();
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        mark(Point::Admitted, req);
        let (tx, rx) = oneshot::channel();
        {
            let mut sh = self.lock();
            sh.replies.insert(req, tx);
            let now = self.now();
            f(&mut sh.core, now, req);
            self.drain(&mut sh);
        }
        let reply = rx.await;
        mark(Point::Answered, req);
        if let Some(o) = self.observer.get() {
            o.completed(kind, start.elapsed(), matches!(reply, Ok(Ok(()))));
        }
        match reply {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ReplyError::ReadOnly)) => Err(DeviceError::ReadOnly),
            Ok(Err(ReplyError::OutOfRange)) => Err(DeviceError::NoSpace),
            Ok(Err(ReplyError::Io(e))) => Err(DeviceError::Io(io::Error::from_raw_os_error(e.0))),
            Err(_) => Err(DeviceError::Shutdown),
        }
    }

    // ----- operator verbs (control socket) -----

    /// `primary`. On a connected node the peer is asked first
    /// (`core/promotion.rs`): waits for its answer, at most `timeout` and
    /// a second (then the ask is withdrawn: a late grant changes nothing).
    pub async fn promote(&self, force: bool) -> Result<(), Refused> {
        let wait = self.res.timeout + Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + wait;
        // A link in its handshake first says what the peer is.
        while self.lock().core.handshaking() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (r, ask) = self.with_core(|c, _| (c.promote(force, wall_ms()), c.promotion_asked()));
        self.changed.notify_waiters();
        r?;
        let Some(ask) = ask else { return Ok(()) };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let answer = self.lock().core.promotion_answer(ask);
            if let Some(r) = answer {
                self.changed.notify_waiters();
                return r;
            }
            if tokio::time::Instant::now() > deadline {
                // (An answer that came meanwhile stands.)
                return self.with_core(|c, _| c.withdraw_promotion(ask)).map_err(|_| {
                    Refused(format!(
                        "the peer did not answer within {wait:?}: not promoted (`primary` again)"
                    ))
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn demote(&self) -> Result<(), Refused> {
        let r = self.with_core(|c, _| c.demote());
        self.changed.notify_waiters();
        r
    }

    pub fn set_want_connected(&self, want: bool) {
        self.with_core(|c, _| if want { c.connect() } else { c.disconnect() });
        self.changed.notify_waiters();
    }

    pub fn discard_my_data(&self) -> Result<(), Refused> {
        let r = self.with_core(|c, _| c.discard_my_data());
        self.changed.notify_waiters();
        r
    }

    pub fn start_verify(&self) -> Result<(), Refused> {
        self.with_core(|c, _| c.verify())
    }

    // ----- the link (crate::link) -----

    /// The shell should have a link to the peer.
    pub fn wants_link(&self) -> bool {
        self.lock().core.wants_link()
    }

    /// Why the node takes no link now, if it takes none
    /// ([`Core::link_refused`]).
    pub fn link_refused(&self) -> Option<&'static str> {
        self.lock().core.link_refused()
    }

    /// Session `sid` is the one in force.
    pub fn has_session(&self, sid: SessionId) -> bool {
        self.lock().core.session_id() == Some(sid)
    }

    /// Session `sid` is in force and past its handshake.
    pub fn session_running(&self, sid: SessionId) -> bool {
        self.lock().core.session_running(sid)
    }

    /// A session is in force (handshaking or running).
    pub fn has_link(&self) -> bool {
        self.lock().core.session_id().is_some()
    }

    /// A new link is up: returns its session number; frames for the peer
    /// arrive on `out`'s queue.
    pub fn link_up(&self, out: LinkTx) -> SessionId {
        let sid = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut sh = self.lock();
        sh.links.insert(sid, out);
        let now = self.now();
        sh.core.handle_link_up(now, sid);
        self.drain(&mut sh);
        drop(sh);
        self.changed.notify_waiters();
        sid
    }

    /// Frames that arrived on link `sid`, in order. Returns whether the
    /// store lane has room for more ([`Node::lane_room`] waits for it).
    pub fn frames(&self, sid: SessionId, msgs: Vec<Message>) -> bool {
        let mut sh = self.lock();
        for m in msgs {
            let now = self.now();
            sh.core.handle_frame(now, sid, m);
        }
        self.drain(&mut sh);
        sh.lane.has_room()
    }

    /// The link's reader could not decode the peer's frames: the core
    /// ends the session with `why` (its writer then closes the link).
    /// False if the core had ended that session already.
    pub fn link_fault(&self, sid: SessionId, why: String) -> bool {
        self.with_core(|c, now| c.handle_link_fault(now, sid, why))
    }

    pub fn link_down(&self, sid: SessionId, why: &str) {
        let mut sh = self.lock();
        sh.links.remove(&sid);
        let now = self.now();
        sh.core.handle_link_down(now, sid, why);
        self.drain(&mut sh);
        drop(sh);
        self.changed.notify_waiters();
    }

    // ----- the failover controller -----

    /// Starts routing the core's votes and hooks to the caller.
    pub fn attach_controller(&self) -> mpsc::UnboundedReceiver<ControllerOut> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().controller = Some(tx);
        rx
    }

    pub fn witness_link(&self, up: bool) {
        self.with_core(|c, now| c.handle_witness_link(now, up));
    }

    pub fn vote(&self, reply: crate::core::VoteReply) {
        self.with_core(|c, now| c.handle_vote(now, wall_ms(), reply));
        self.changed.notify_waiters();
    }

    pub fn hook_done(&self, hook: crate::core::Hook, result: Result<(), String>) {
        self.with_core(|c, now| c.hook_done(now, hook, result));
        self.changed.notify_waiters();
    }

    pub fn health(&self, ok: bool) {
        self.with_core(|c, now| c.health(now, ok));
    }

    /// What the peer said when it closed session `sid`, which already
    /// ended here (its reason comes after its stream's end).
    pub fn peer_said(&self, sid: SessionId, why: String) {
        self.lock().core.handle_peer_reason(sid, why);
    }

    fn link_tally(&self) -> std::sync::MutexGuard<'_, LinkTally> {
        self.link_tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Session `sid`'s transport counters now.
    pub fn link_look(&self, sid: SessionId, c: LinkStatus) {
        self.link_tally().update(sid, c);
    }

    /// Session `sid` ended with these transport counters.
    pub fn link_ended(&self, sid: SessionId, c: &LinkStatus) {
        self.link_tally().end(sid, c);
    }

    pub fn set_rtt(&self, rtt: Duration) {
        self.lock().core.set_rtt(rtt);
    }

    /// The final flush at stop failed: the disk is detached and recorded
    /// so (in place: the process ends next). Its page cache may have
    /// dropped writes the failed sync covered; recorded `UpToDate`, the
    /// next start would take what is left for data, and as the crashed
    /// Primary's, send its activity-log extents over the peer's copy.
    pub fn final_flush_failed(&self, e: &io::Error) {
        let mut sh = self.lock();
        sh.persist_async = false;
        let now = self.now();
        sh.core.handle_disk_error(now, io_err(e), "the final flush");
        self.drain(&mut sh);
    }

    /// Clean stop, after the final flush: the bitmap on disk and the
    /// activity log emptied of every idle extent.
    pub fn close(&self) {
        let mut sh = self.lock();
        sh.persist_async = false; // the process ends next: update in place
        sh.core.prepare_stop();
        self.drain(&mut sh);
    }

    pub fn status(&self) -> Status {
        self.status_locked(&self.lock())
    }

    /// The state changes `rx` has not seen yet, and the status right after
    /// the last of them (taken together: nothing falls in between).
    pub fn status_since(
        &self,
        rx: &mut tokio::sync::broadcast::Receiver<StateKey>,
    ) -> (Vec<StateKey>, Status) {
        let sh = self.lock();
        let mut keys = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(k) => keys.push(k),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        (keys, self.status_locked(&sh))
    }

    fn status_locked(&self, sh: &Shell) -> Status {
        let st = sh.core.status();
        let connection = StateKey {
            role: st.role,
            disk: st.disk,
            connection: st.connection,
            replication: st.replication,
        }
        .connection_name();
        let now = self.now();
        Status {
            resource: self.res.name.clone(),
            node: self.me.name.clone(),
            role: st.role,
            disk: st.disk,
            connection,
            replication: st.replication.to_string(),
            protocol: self.res.protocol.to_string(),
            peer: PeerStatus {
                node: self.peer.name.clone(),
                role: st.peer_role,
                disk: st.peer_disk,
            },
            out_of_sync_bytes: st.out_of_sync_bytes,
            split_brain: st.split_brain,
            rtt_us: st.rtt.map(|d| d.as_micros() as u64),
            sync: st.sync.map(|p| {
                let secs = now.saturating_sub(p.started).as_secs_f64().max(1e-3);
                let rate = p.done as f64 / secs;
                let left = p.total.saturating_sub(p.done);
                SyncStatus {
                    percent: if p.total == 0 {
                        100.0
                    } else {
                        p.done as f64 * 100.0 / p.total as f64
                    },
                    bytes_total: p.total,
                    eta_s: (rate > 0.0).then(|| left as f64 / rate),
                }
            }),
            counters: Counters {
                written_bytes: st.counters.written_bytes,
                replicated_bytes: st.counters.replicated_bytes,
                resync_bytes: st.counters.resync_bytes,
                verify_mismatches: st.counters.verify_mismatches,
                mode_switches: st.counters.mode_switches,
            },
            link: self.link_tally().view(),
            in_flight: st.in_flight,
            activity_log_extents: st.al_extents,
            io_backend: self.store.backend().to_string(),
            last_error: st.last_error,
            generation: format!("{:016x}", st.gen.current),
            controller: sh.core.controller().map(|c| crate::status::ControllerView {
                state: format!("{:?}", c.standing),
                quorum: c.quorum,
                witness_connected: c.witness_connected,
                last_refusal: c.last_refusal,
            }),
        }
    }

    pub fn role(&self) -> Role {
        self.lock().core.role()
    }
}

/// The NBD export of a node: writable only while Primary; reads only from
/// current data.
impl BlockDevice for Node {
    fn size(&self) -> u64 {
        self.res.size
    }

    fn read_only(&self) -> bool {
        self.role() != Role::Primary
    }

    fn description(&self) -> String {
        format!("twinblock resource {} on node {}", self.res.name, self.me.name)
    }

    /// Replies are sent after the node's lock is released ([`ShellGuard`]);
    /// a pending request waits on its reply channel (no timers or sockets),
    /// or on a store read, whose engines complete outside their locks.
    fn finish_on_wake(&self) -> bool {
        true
    }

    /// Reads what every write issued before it left ([`Node::readable`]).
    async fn read(&self, offset: u64, len: u32) -> DeviceResult<Bytes> {
        self.readable().await?;
        let read = self.store.read(offset, len);
        let Some(limit) = self.res.disk_timeout else { return Ok(read.await?) };
        match tokio::time::timeout(limit, read).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                // A disk that stopped answering reads: detached, as for a
                // write (the read itself fails).
                let mut sh = self.lock();
                let now = self.now();
                sh.core.handle_disk_stalled(now, "a read");
                self.drain(&mut sh);
                Err(DeviceError::Io(io::Error::from_raw_os_error(libc::ETIMEDOUT)))
            }
        }
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceResult<()> {
        self.request(RequestKind::Write, |c, now, req| c.write(now, req, offset, data, fua)).await
    }

    async fn flush(&self) -> DeviceResult<()> {
        self.request(RequestKind::Flush, |c, now, req| c.flush(now, req)).await
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> DeviceResult<()> {
        let len = u32::try_from(len).map_err(|_| DeviceError::Invalid("trim longer than 4 GiB"))?;
        self.request(RequestKind::Trim, |c, now, req| c.trim(now, req, offset, len, fua)).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceResult<()> {
        if flags.fast {
            // Zeroing here is replicated; it cannot promise to be fast.
            return Err(DeviceError::NotSupported);
        }
        let len = u32::try_from(len).map_err(|_| DeviceError::Invalid("zero longer than 4 GiB"))?;
        self.request(RequestKind::WriteZeroes, |c, now, req| {
            c.write_zeroes(now, req, offset, len, flags.no_hole, flags.fua)
        })
        .await
    }

    async fn cache(&self, offset: u64, len: u64) -> DeviceResult<()> {
        Ok(self.store.prefetch(offset, len)?)
    }

    async fn block_status(&self, offset: u64, len: u32) -> DeviceResult<Vec<Extent>> {
        self.readable().await?;
        crate::local::allocation(&self.store, offset, len)
    }
}

impl Node {
    /// Whether this node's data may be read now (UpToDate or Consistent),
    /// once every write issued before the call is performed: a write still
    /// on the store lane (a Secondary's backlog of peer writes,
    /// acknowledged as received in protocol B, when it has just been
    /// promoted) first. What a READ and a BLOCK_STATUS answer both wait
    /// for: a status of "zeroes" where a read would fail (an Inconsistent
    /// disk is mostly holes) had backup tools copy zeroes and succeed.
    async fn readable(&self) -> DeviceResult<()> {
        let may_read = |sh: &Shell| match sh.core.may_read() {
            Err(ReplyError::Io(e)) => Err(DeviceError::Io(io::Error::from_raw_os_error(e.0))),
            _ => Ok(()),
        };
        let mark = {
            let sh = self.lock();
            may_read(&sh)?;
            let mark = sh.lane.mark();
            (!sh.lane.caught_up(mark)).then_some(mark)
        };
        if let Some(mark) = mark {
            // (Or the disk is detached meanwhile: a write it never
            // completes would hold the read for ever.)
            self.lane_wait(|sh| sh.lane.caught_up(mark) || sh.detached()).await;
            may_read(&self.lock())?;
        }
        Ok(())
    }
}
