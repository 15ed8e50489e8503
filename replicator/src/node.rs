//! One node of a replicated resource: role, disk state, the local store and
//! the current peer session. It is the [`BlockDevice`] the NBD server
//! exports, and the place where a write goes to the local store and to the
//! peer at the same time.
//!
//! Write path (Primary): under the ordering lock the operation is numbered
//! and queued for the peer, then written to the local store; outside the
//! lock the reply waits for what the protocol mode requires. Local apply
//! order therefore equals sequence order equals the peer's apply order, even
//! for concurrent overlapping writes.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::Instrument;
use twinblock_nbd::{BlockDevice, DeviceError, DeviceResult, Extent, ZeroFlags};

use crate::al::ActivityLog;
use crate::bitmap::Bitmap;
use crate::config::{NodeConfig, ResourceConfig};
use crate::meta::{Meta, MetaError};
use crate::protocol::genid::{
    decide, resolve_split_brain, Decision, GenIds, SplitSide, NEVER_SYNCED,
};
use crate::protocol::wire::{DiskState, Hello, Message, Op, Role, VERSION};
use crate::session::{Session, Ticket};
use crate::status::{Counters, PeerStatus, Status};
use crate::store::{Store, StoreError, StoreOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    StandAlone,
    Connecting,
    Connected,
}

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Connection::StandAlone => "StandAlone",
            Connection::Connecting => "Connecting",
            Connection::Connected => "Connected",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Meta(#[from] MetaError),
}

pub struct State {
    pub role: Role,
    pub disk: DiskState,
    fresh: bool,
    pub want_connected: bool,
    peer_role: Option<Role>,
    peer_disk: Option<DiskState>,
    pub session: Option<Arc<Session>>,
    dirty: Bitmap,
    rtt: Option<Duration>,
    last_error: Option<String>,
    /// SyncSource: the resync under way.
    sync: Option<SyncProgress>,
    /// SyncTarget: what the Primary last said is out of sync here.
    behind: u64,
    gen: GenIds,
    /// This process made a new current generation since the last sync.
    apart: bool,
    split_brain: bool,
    /// `discard-my-data`: become SyncTarget of a split-brain peer.
    discard: bool,
    /// Waiting for the peer's resync to finish.
    sync_target: bool,
    /// The handshake made this node SyncSource (whatever its role).
    sync_source: bool,
    al: ActivityLog,
    promoted_at: u64,
    /// Online verify under way, and its requests awaiting the peer's CRCs.
    verify: Option<SyncProgress>,
    verify_pending: std::collections::HashMap<u64, (u64, Vec<u32>)>,
    /// Checksum-mode resync: requests awaiting the peer's CRCs.
    csum_pending: std::collections::HashMap<u64, tokio::sync::oneshot::Sender<Vec<u32>>>,
}

/// CRC32 of each 4 KiB block of `data`.
fn block_crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(crate::bitmap::BLOCK as usize).map(crc32fast::hash).collect()
}

impl State {
    /// Derived: StandAlone when the operator (or a refusal) said so,
    /// Connected with a session, Connecting otherwise.
    pub fn connection(&self) -> Connection {
        match (self.want_connected, &self.session) {
            (false, _) => Connection::StandAlone,
            (true, Some(_)) => Connection::Connected,
            (true, None) => Connection::Connecting,
        }
    }
}

/// A new random generation id.
fn random_id() -> u64 {
    let mut id = 0u64;
    loop {
        // SAFETY: getrandom writes at most 8 bytes into `id`.
        let n = unsafe { libc::getrandom((&mut id as *mut u64).cast(), 8, 0) };
        if n == 8 && id > NEVER_SYNCED {
            return id;
        }
        if n < 0 {
            // Fall back on the clock; uniqueness is what matters.
            id = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ (std::process::id() as u64) << 32;
            if id > NEVER_SYNCED {
                return id;
            }
        }
    }
}

struct SyncProgress {
    total: u64,
    done: u64,
    started: std::time::Instant,
}

#[derive(Default)]
struct Stats {
    written: AtomicU64,
    replicated: AtomicU64,
    resynced: AtomicU64,
    verify_mismatches: AtomicU64,
}

/// Largest resync chunk, in 4 KiB blocks (1 MiB).
const RESYNC_CHUNK_BLOCKS: u64 = 256;
/// Resync chunks between checkpoints of the bitmap on disk (64 MiB).
const RESYNC_CHECKPOINT: u64 = 64;
/// Resync chunks in flight at once.
const RESYNC_WINDOW: usize = 16;

pub struct Node {
    pub res: ResourceConfig,
    pub me: NodeConfig,
    pub peer: NodeConfig,
    store: Arc<Store>,
    state: Mutex<State>,
    order: Mutex<()>,
    /// Wakes the link manager after connect/disconnect and role changes.
    pub changed: Notify,
    stats: Stats,
}

impl Node {
    /// Opens (creating if needed) the disk and metadata of node `me`.
    /// Starts Secondary and StandAlone-until-linked.
    pub fn open(
        res: ResourceConfig,
        me: &str,
        opts: &StoreOptions,
    ) -> Result<Arc<Node>, NodeError> {
        let (mine, peer) = res.pair(me)?;
        let (mine, peer) = (mine.clone(), peer.clone());
        let store = Store::open(&mine.disk, Some(res.size), opts)?;
        let meta = Meta::load_or_create(&mine.meta, me, &res.name, res.size, store.created())?;
        let size = res.size;
        let mut dirty = Bitmap::new(size);
        let (al, recovered) = ActivityLog::open(&mine.meta, res.al_extents, &mut dirty)
            .map_err(|source| MetaError::Io { path: mine.meta.clone(), source })?;
        if recovered > 0 {
            tracing::warn!(
                extents = recovered,
                bytes = dirty.bytes(),
                "unclean shutdown: the activity log's extents are out of sync"
            );
        }
        Ok(Arc::new(Node {
            res,
            me: mine,
            peer,
            store: Arc::new(store),
            state: Mutex::new(State {
                role: Role::Secondary,
                disk: meta.disk,
                fresh: meta.fresh,
                want_connected: true,
                peer_role: None,
                peer_disk: None,
                session: None,
                dirty,
                rtt: None,
                last_error: None,
                sync: None,
                behind: 0,
                gen: meta.gen,
                apart: false,
                split_brain: false,
                discard: false,
                sync_target: false,
                sync_source: false,
                al,
                promoted_at: meta.promoted_at,
                verify: None,
                verify_pending: std::collections::HashMap::new(),
                csum_pending: std::collections::HashMap::new(),
            }),
            order: Mutex::new(()),
            changed: Notify::new(),
            stats: Stats::default(),
        }))
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn save_meta(&self, st: &State) -> Result<(), MetaError> {
        Meta {
            version: 1,
            node: self.me.name.clone(),
            resource: self.res.name.clone(),
            size: self.res.size,
            disk: st.disk,
            fresh: st.fresh,
            gen: st.gen,
            promoted_at: st.promoted_at,
        }
        .save(&self.me.meta)
    }

    fn state_message(st: &State) -> Message {
        Message::State {
            role: st.role,
            disk: st.disk,
            peer_out_of_sync: st.dirty.bytes(),
            fresh: st.fresh,
            current: st.gen.current,
        }
    }

    /// Writes the out-of-sync bitmap to disk (bits set outside the activity
    /// log's cover must not be lost in a crash).
    fn persist_bitmap(&self, st: &State) {
        if let Err(e) = st.al.save_bitmap(&st.dirty) {
            tracing::error!("cannot save the out-of-sync bitmap: {e}");
        }
    }

    /// Clean stop: bitmap on disk, activity log empty.
    pub fn close(&self) {
        let mut st = self.state();
        let st = &mut *st;
        if let Err(e) = st.al.close(&st.dirty) {
            tracing::error!("cannot close the activity log: {e}");
        }
    }

    /// The data starts to differ from the peer's (a write it will not get,
    /// or may not have got): a new current generation, persisted before the
    /// write lands. Once per separation.
    fn diverge(&self, st: &mut State) {
        if st.apart {
            return;
        }
        st.gen.new_current(random_id());
        st.apart = true;
        tracing::info!(current = format!("{:016x}", st.gen.current), "new data generation");
        if let Err(e) = self.save_meta(st) {
            tracing::error!("cannot save metadata: {e}");
        }
    }

    fn announce(&self, st: &State) {
        if let Some(s) = &st.session {
            s.send(Self::state_message(st));
        }
    }

    /// What a Secondary concludes about its own disk from a Primary peer's
    /// disk state, out-of-sync count and freshness.
    fn follow_primary(
        &self,
        st: &mut State,
        disk: DiskState,
        peer_out_of_sync: u64,
        fresh: bool,
        current: u64,
    ) {
        let before = (st.disk, st.gen);
        st.behind = peer_out_of_sync;
        let in_sync = disk == DiskState::UpToDate && peer_out_of_sync == 0;
        if in_sync
            && (matches!(st.disk, DiskState::UpToDate | DiskState::Outdated) || (st.fresh && fresh))
        {
            // Up to date, resynced after being Outdated, or both disks
            // still all zeroes as created.
            st.disk = DiskState::UpToDate;
            if st.gen.current != current {
                st.gen.synced_to(current);
            }
        } else if peer_out_of_sync > 0 && st.disk == DiskState::UpToDate {
            st.disk = DiskState::Outdated;
        }
        if (st.disk, st.gen) != before {
            tracing::info!(from = ?before.0, to = ?st.disk, "disk state");
            if let Err(e) = self.save_meta(st) {
                tracing::error!("cannot save metadata: {e}");
            }
        }
    }

    /// `primary [--force]`.
    pub fn promote(&self, force: bool) -> Result<(), String> {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.state();
        if st.role == Role::Primary {
            return Ok(());
        }
        if st.session.is_some() && st.peer_role == Some(Role::Primary) {
            return Err(format!("peer {} is Primary; demote it first", self.peer.name));
        }
        if st.disk != DiskState::UpToDate {
            if !force {
                return Err(format!(
                    "disk is {:?}; only an UpToDate disk can become Primary \
                     (primary --force declares this node's data UpToDate)",
                    st.disk
                ));
            }
            st.disk = DiskState::UpToDate;
            // Declared data is a generation of its own.
            st.gen.new_current(random_id());
        } else if st.gen.current == NEVER_SYNCED {
            st.gen.new_current(random_id());
        }
        st.role = Role::Primary;
        st.promoted_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.save_meta(&st).map_err(|e| e.to_string())?;
        tracing::info!(force, "promoted to Primary");
        self.announce(&st);
        self.changed.notify_waiters();
        Ok(())
    }

    /// `secondary`.
    pub fn demote(&self) -> Result<(), String> {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.state();
        if st.role == Role::Secondary {
            return Ok(());
        }
        st.role = Role::Secondary;
        tracing::info!("demoted to Secondary");
        self.announce(&st);
        self.changed.notify_waiters();
        Ok(())
    }

    /// `connect` / `disconnect`.
    pub fn set_want_connected(&self, want: bool) {
        let mut st = self.state();
        st.want_connected = want;
        drop(st);
        self.changed.notify_waiters();
    }

    pub fn set_rtt(&self, rtt: Option<Duration>) {
        self.state().rtt = rtt;
    }

    pub fn set_error(&self, e: String) {
        self.state().last_error = Some(e);
    }

    pub fn hello(&self) -> Hello {
        let st = self.state();
        Hello {
            version: VERSION,
            node: self.me.name.clone(),
            resource: self.res.name.clone(),
            size: self.res.size,
            role: st.role,
            disk: st.disk,
            peer_out_of_sync: st.dirty.bytes(),
            fresh: st.fresh,
            gen: st.gen,
            discard: st.discard,
            promoted_at: st.promoted_at,
        }
    }

    /// `discard-my-data`: after a split brain, this node (a Secondary) gives
    /// up its changes and takes the peer's data by a full resync.
    pub fn discard_my_data(&self) -> Result<(), String> {
        let mut st = self.state();
        if st.role != Role::Secondary {
            return Err("only a Secondary can discard its data".into());
        }
        st.discard = true;
        st.split_brain = false;
        st.want_connected = true;
        tracing::warn!("discard-my-data: this node's changes will be overwritten by the peer");
        drop(st);
        self.changed.notify_waiters();
        Ok(())
    }

    /// The link is up and the peer said hello: install the session, or
    /// refuse it (both Primary).
    pub fn connected(&self, peer: &Hello, session: Arc<Session>) -> Result<(), String> {
        let mut st = self.state();
        if !st.want_connected {
            return Err("disconnected by the operator".into());
        }
        let mut decision = decide(&st.gen, &peer.gen);
        // Two disks as twinblock created them, never written: identical.
        if st.fresh
            && peer.fresh
            && matches!(decision, Decision::SyncSource { .. } | Decision::SyncTarget { .. })
        {
            decision = Decision::InSync;
        }
        if decision == Decision::SplitBrain && !st.discard && !peer.discard {
            let mine = SplitSide {
                changes: st.dirty.bytes(),
                promoted_at: st.promoted_at,
                secondary: st.role == Role::Secondary,
            };
            let theirs = SplitSide {
                changes: peer.peer_out_of_sync,
                promoted_at: peer.promoted_at,
                secondary: peer.role == Role::Secondary,
            };
            if let Some(i_discard) = resolve_split_brain(self.res.split_brain_policy, mine, theirs)
            {
                tracing::warn!(
                    policy = ?self.res.split_brain_policy,
                    discarding = if i_discard { self.me.name.as_str() } else { peer.node.as_str() },
                    "split brain resolved by policy"
                );
                decision = if i_discard {
                    Decision::SyncTarget { full: true }
                } else {
                    Decision::SyncSource { full: true }
                };
            }
        }
        if decision == Decision::SplitBrain {
            if st.discard && st.role == Role::Secondary {
                decision = Decision::SyncTarget { full: true };
            } else if peer.discard && peer.role == Role::Secondary {
                decision = Decision::SyncSource { full: true };
            } else {
                st.split_brain = true;
                st.want_connected = false;
                tracing::error!(
                    mine = format!("{:016x}", st.gen.current),
                    peer = format!("{:016x}", peer.gen.current),
                    "split brain: both nodes changed the data while apart; nothing was overwritten"
                );
                return Err("split brain: both nodes changed the data while apart; nothing was \
                     overwritten (resolve with `twinblock discard-my-data` on the node whose \
                     changes to drop, then `connect` on both)"
                    .into());
            }
        }
        if decision == Decision::Unrelated {
            st.want_connected = false;
            return Err(
                "the peer's data shares no history with ours (unrelated devices): refusing".into(),
            );
        }
        if peer.role == Role::Primary && st.role == Role::Primary {
            return Err(format!(
                "both {} and {} are Primary: refusing the connection",
                self.me.name, peer.node
            ));
        }
        match decision {
            Decision::SyncTarget { .. } if st.role == Role::Primary => {
                return Err("the peer's data is newer than this Primary's: refusing".into());
            }
            Decision::SyncTarget { full } => {
                tracing::info!(full, "SyncTarget: the peer's data is newer");
                st.sync_target = true;
                st.disk = DiskState::Inconsistent;
                st.discard = false;
                // The peer's data wins: nothing of ours is to be sent.
                st.dirty.clear();
                self.persist_bitmap(&st);
                self.save_meta(&st).map_err(|e| e.to_string())?;
            }
            Decision::SyncSource { full } => {
                // A bitmap resync uses the bitmap as loaded: on disk plus
                // the activity log it covers every change since `gen.bitmap`.
                if full {
                    st.dirty.mark(0, self.res.size);
                }
                st.sync_source = true;
                tracing::info!(full, bytes = st.dirty.bytes(), "SyncSource");
            }
            _ => {}
        }
        if peer.role == Role::Primary && st.role == Role::Secondary && !st.sync_target {
            self.follow_primary(
                &mut st,
                peer.disk,
                peer.peer_out_of_sync,
                peer.fresh,
                peer.gen.current,
            );
        }
        st.peer_role = Some(peer.role);
        st.peer_disk = Some(peer.disk);
        st.session = Some(session.clone());
        st.last_error = None;
        st.split_brain = false;
        session.send(Self::state_message(&st));
        tracing::info!(peer = %peer.node, peer_role = ?peer.role, peer_disk = ?peer.disk, ?decision, "connected");
        Ok(())
    }

    pub fn peer_state(
        &self,
        role: Role,
        disk: DiskState,
        peer_out_of_sync: u64,
        fresh: bool,
        current: u64,
    ) {
        let mut st = self.state();
        let changed = st.peer_role != Some(role);
        st.peer_role = Some(role);
        st.peer_disk = Some(disk);
        let before = st.disk;
        if st.sync_target {
            st.behind = peer_out_of_sync;
            if peer_out_of_sync == 0 && disk == DiskState::UpToDate {
                // The peer's resync is complete: its data is ours now.
                st.sync_target = false;
                st.disk = DiskState::UpToDate;
                st.gen.synced_to(current);
                st.apart = false;
                tracing::info!("resync complete (SyncTarget): UpToDate");
                if let Err(e) = self.save_meta(&st) {
                    tracing::error!("cannot save metadata: {e}");
                }
            }
        } else if role == Role::Primary && st.role == Role::Secondary {
            self.follow_primary(&mut st, disk, peer_out_of_sync, fresh, current);
        }
        if st.disk != before || changed {
            self.announce(&st);
        }
    }

    /// The session ended: every unconfirmed range is marked out of sync
    /// before any waiting reply is released.
    pub fn session_lost(&self, session: &Arc<Session>, why: &str) {
        let mut st = self.state();
        let st = &mut *st;
        let mut marked = false;
        session.lose(|unconfirmed| {
            for u in unconfirmed {
                if let Some((off, len)) = u.range {
                    st.dirty.mark(off, len);
                    marked = true;
                }
            }
        });
        if marked {
            // The peer may lack these writes: our data is a new generation.
            self.diverge(st);
            self.persist_bitmap(st);
        }
        st.sync_target = false;
        st.sync_source = false;
        if st.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            st.session = None;
            st.peer_role = None;
            st.peer_disk = None;
            st.rtt = None;
            st.sync = None;
            st.verify = None;
            st.verify_pending.clear();
            st.csum_pending.clear();
            st.behind = 0;
            st.last_error = Some(why.to_owned());
            // Protocol A may leave this Secondary behind: freshness unknown.
            if st.role == Role::Secondary
                && st.disk == DiskState::UpToDate
                && self.res.protocol == crate::config::Protocol::A
            {
                st.disk = DiskState::Consistent;
                let _ = self.save_meta(st);
            }
            tracing::warn!(%why, out_of_sync = st.dirty.bytes(), "peer lost");
        }
    }

    /// The peer could not apply an operation.
    pub fn peer_failed(&self, range: Option<(u64, u64)>) {
        if let Some((off, len)) = range {
            let mut st = self.state();
            st.dirty.mark(off, len);
            self.diverge(&mut st);
            self.persist_bitmap(&st);
        }
    }

    /// Applies an operation from the peer (Secondary), in sequence order.
    pub async fn apply(&self, seq: u64, op: &Op) -> io::Result<Option<Message>> {
        if op.range().is_some() {
            let mut st = self.state();
            if st.fresh {
                st.fresh = false;
                self.save_meta(&st).map_err(io::Error::other)?;
            }
        }
        match op {
            Op::Write { offset, data, fua, .. } => {
                self.store.write_now(*offset, data)?;
                if *fua {
                    self.store.flush().await?;
                }
            }
            Op::Trim { offset, len, .. } => self.store.zero_now(*offset, *len as u64, true, false)?,
            Op::Zero { offset, len, no_hole, .. } => {
                self.store.zero_now(*offset, *len as u64, !no_hole, false)?
            }
            Op::Flush => self.store.flush().await?,
            Op::Verify { offset, len } => {
                let data = self.store.read_now(*offset, *len as usize)?;
                return Ok(Some(Message::Verified { seq, crcs: block_crcs(&data) }));
            }
        }
        self.stats.replicated.fetch_add(op.wire_bytes(), Ordering::Relaxed);
        Ok(None)
    }

    /// `verify`: compares the CRC32 of every 4 KiB block with the peer's.
    /// Each chunk is read here and numbered under the ordering lock, and the
    /// peer reads it when it reaches that number: both see the same writes.
    /// Mismatches are marked out of sync and counted; a resync follows.
    pub fn start_verify(self: &Arc<Self>) -> Result<(), String> {
        let st = self.state();
        let Some(session) = st.session.clone() else {
            return Err("not connected to the peer".into());
        };
        if st.verify.is_some() || st.sync.is_some() || st.sync_target {
            return Err("a resync or verify is already running".into());
        }
        drop(st);
        let node = self.clone();
        tokio::spawn(async move { node.verify(session).await }.in_current_span());
        Ok(())
    }

    async fn verify(self: Arc<Self>, session: Arc<Session>) {
        let size = self.res.size;
        self.state().verify =
            Some(SyncProgress { total: size, done: 0, started: std::time::Instant::now() });
        tracing::info!(bytes = size, "online verify started");
        let mut window = std::collections::VecDeque::new();
        let mut offset = 0u64;
        let mut ok = true;
        while offset < size {
            let len = (size - offset).min(RESYNC_CHUNK_BLOCKS * crate::bitmap::BLOCK);
            let ticket = {
                let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
                let mut st = self.state();
                if !st.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, &session)) {
                    ok = false;
                    break;
                }
                let data = match self.store.read_now(offset, len as usize) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(offset, "verify read failed: {e}");
                        ok = false;
                        break;
                    }
                };
                let (seq, ticket) = session.submit_resync(&Op::Verify { offset, len: len as u32 });
                st.verify_pending.insert(seq, (offset, block_crcs(&data)));
                ticket
            };
            offset += len;
            window.push_back(ticket);
            if window.len() >= RESYNC_WINDOW {
                if let Some(Ticket::Wait(rx)) = window.pop_front() {
                    if rx.await.is_err() {
                        ok = false;
                        break;
                    }
                }
            }
        }
        for t in window {
            if let Ticket::Wait(rx) = t {
                ok &= rx.await.is_ok();
            }
        }
        // Replies arrive before the acks that release the tickets (one
        // stream, in order), so every answer is in.
        let mut st = self.state();
        st.verify = None;
        st.verify_pending.clear();
        let found = self.stats.verify_mismatches.load(Ordering::Relaxed);
        tracing::info!(
            complete = ok,
            mismatches = found,
            out_of_sync = st.dirty.bytes(),
            "online verify finished"
        );
        drop(st);
        if let Some(s) = self.needs_resync() {
            tokio::spawn(self.clone().resync(s).in_current_span());
        }
    }

    /// The peer's CRCs for verify request `seq`.
    pub fn verified(&self, seq: u64, crcs: &[u32]) {
        let mut st = self.state();
        if let Some(tx) = st.csum_pending.remove(&seq) {
            let _ = tx.send(crcs.to_vec());
            return;
        }
        let Some((offset, mine)) = st.verify_pending.remove(&seq) else { return };
        let mut bad = 0;
        for (i, (a, b)) in mine.iter().zip(crcs).enumerate() {
            if a != b {
                st.dirty.mark(offset + i as u64 * crate::bitmap::BLOCK, crate::bitmap::BLOCK);
                bad += 1;
            }
        }
        if mine.len() != crcs.len() {
            tracing::warn!(seq, "verify answer has {} CRCs, expected {}", crcs.len(), mine.len());
        }
        if bad > 0 {
            // Out of sync on purpose-built evidence: a new generation, so a
            // restart cannot forget these blocks.
            self.diverge(&mut st);
            self.persist_bitmap(&st);
            tracing::warn!(offset, blocks = bad, "verify: blocks differ from the peer's");
            self.stats.verify_mismatches.fetch_add(bad, Ordering::Relaxed);
        }
        let len = mine.len() as u64 * crate::bitmap::BLOCK;
        if let Some(v) = st.verify.as_mut() {
            v.done += len;
        }
    }

    /// The replicated write path (Primary only): numbered and queued for the
    /// peer, applied locally by `local`, both under the ordering lock; then
    /// the reply waits as the protocol mode says. `flush_after`: the
    /// operation must be durable locally before the reply (FUA).
    async fn replicate(
        &self,
        op: Op,
        local: impl FnOnce(&Store) -> io::Result<()>,
        flush_after: bool,
    ) -> DeviceResult<()> {
        let session = self.state().session.clone();
        let lag = match &session {
            Some(s) => s.lag_permit(op.wire_bytes()).await,
            None => None,
        };
        let ticket = {
            let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
            let mut st = self.state();
            if st.role != Role::Primary {
                return Err(DeviceError::ReadOnly);
            }
            if st.fresh && op.range().is_some() {
                // Persist "written" before the first write lands.
                st.fresh = false;
                self.save_meta(&st).map_err(|e| DeviceError::Io(io::Error::other(e)))?;
            }
            if let Some((off, len)) = op.range() {
                // The extent is in the activity log on disk before the write
                // lands (no I/O while it stays hot).
                let st = &mut *st;
                st.al.touch(off, len, &st.dirty).map_err(DeviceError::Io)?;
            }
            let ticket = match &st.session {
                Some(s) => s.submit(&op, lag),
                None => Ticket::Alone,
            };
            if matches!(ticket, Ticket::Alone) {
                if let Some((off, len)) = op.range() {
                    self.diverge(&mut st);
                    st.dirty.mark(off, len);
                }
            }
            drop(st);
            if let Err(e) = local(&self.store) {
                // The peer may have it and we do not: out of sync.
                if let Some((off, len)) = op.range() {
                    let mut st = self.state();
                    self.diverge(&mut st);
                    st.dirty.mark(off, len);
                }
                return Err(e.into());
            }
            ticket
        };
        if let Some((_, len)) = op.range() {
            self.stats.written.fetch_add(len, Ordering::Relaxed);
        }
        if !matches!(ticket, Ticket::Alone) {
            self.stats.replicated.fetch_add(op.wire_bytes(), Ordering::Relaxed);
        }
        let peer = async {
            if let Ticket::Wait(rx) = ticket {
                // Err: the link was lost first; the range is already marked.
                let _ = rx.await;
            }
        };
        let local_flush = async {
            if flush_after {
                self.store.flush().await
            } else {
                Ok(())
            }
        };
        let ((), flushed) = tokio::join!(peer, local_flush);
        flushed?;
        Ok(())
    }

    /// SyncSource: sends every out-of-sync block to the peer, in chunks of up
    /// to 1 MiB, while the application keeps writing. Each chunk is read and
    /// numbered under the ordering lock, so an application write to the same
    /// blocks is either in the chunk or numbered after it. A chunk's bits are
    /// cleared when it is queued; if the link drops first, the session's
    /// loss marks them again. Ends when the bitmap is clean or the session
    /// is gone.
    pub async fn resync(self: Arc<Self>, session: Arc<Session>) {
        {
            let mut st = self.state();
            let total = st.dirty.bytes();
            if total == 0 || st.sync.is_some() {
                return;
            }
            st.sync = Some(SyncProgress { total, done: 0, started: std::time::Instant::now() });
            self.announce(&st);
            tracing::info!(bytes = total, "resync started (SyncSource)");
        }
        let mut window = std::collections::VecDeque::new();
        let mut cursor = 0u64;
        let mut chunks = 0u64;
        let mut last_written = self.stats.written.load(Ordering::Relaxed);
        let mut throttled = 0u64;
        let mut throttle_start = std::time::Instant::now();
        loop {
            // Checksum mode: first ask the peer for the CRCs of the next
            // run; only blocks that differ are sent.
            let peer_crcs = if self.res.resync_checksum {
                let rx = {
                    let mut st = self.state();
                    let current = st.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, &session));
                    let run = st
                        .dirty
                        .next_run(cursor, RESYNC_CHUNK_BLOCKS)
                        .or_else(|| st.dirty.next_run(0, RESYNC_CHUNK_BLOCKS));
                    match (current, run) {
                        (true, Some((off, len))) => {
                            let (seq, _) =
                                session.submit_resync(&Op::Verify { offset: off, len: len as u32 });
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            st.csum_pending.insert(seq, tx);
                            Some((off, rx))
                        }
                        _ => None,
                    }
                };
                match rx {
                    Some((off, rx)) => match rx.await {
                        Ok(crcs) => Some((off, crcs)),
                        Err(_) => break,
                    },
                    None => None,
                }
            } else {
                None
            };
            let next = {
                let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
                let mut st = self.state();
                let current = st.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, &session));
                if !current {
                    None
                } else {
                    let run = st
                        .dirty
                        .next_run(cursor, RESYNC_CHUNK_BLOCKS)
                        .or_else(|| st.dirty.next_run(0, RESYNC_CHUNK_BLOCKS));
                    match run {
                        None => None,
                        Some((off, len)) => match self.store.read_now(off, len as usize) {
                            Ok(data) => {
                                st.dirty.clear_range(off, len);
                                cursor = (off + len) / crate::bitmap::BLOCK;
                                let left = st.dirty.bytes();
                                if let Some(p) = st.sync.as_mut() {
                                    p.done += len;
                                    p.total = p.total.max(p.done + left);
                                }
                                match &peer_crcs {
                                    Some((at, theirs))
                                        if *at == off
                                            && theirs.len() as u64 * crate::bitmap::BLOCK
                                                == len =>
                                    {
                                        let ours = block_crcs(&data);
                                        let bs = crate::bitmap::BLOCK as usize;
                                        let mut ticket = Ticket::Queued;
                                        let mut sent = 0u64;
                                        let mut i = 0;
                                        while i < ours.len() {
                                            if ours[i] == theirs[i] {
                                                i += 1;
                                                continue;
                                            }
                                            let start = i;
                                            while i < ours.len() && ours[i] != theirs[i] {
                                                i += 1;
                                            }
                                            let part = data.slice(start * bs..i * bs);
                                            sent += part.len() as u64;
                                            let op =
                                                Op::write(off + (start * bs) as u64, part, false);
                                            ticket = session.submit_resync(&op).1;
                                        }
                                        Some((ticket, sent))
                                    }
                                    _ => Some((
                                        session.submit_resync(&Op::write(off, data, false)).1,
                                        len,
                                    )),
                                }
                            }
                            Err(e) => {
                                tracing::error!(off, "resync read failed: {e}");
                                None
                            }
                        },
                    }
                }
            };
            let Some((ticket, len)) = next else { break };
            self.stats.resynced.fetch_add(len, Ordering::Relaxed);
            // Rate control: while the application writes, resync runs at
            // `resync-rate` and the application gets the rest; idle, it
            // runs flat out.
            let written = self.stats.written.load(Ordering::Relaxed);
            let busy = written != last_written;
            last_written = written;
            if busy {
                throttled += len;
                let due = std::time::Duration::from_secs_f64(
                    throttled as f64 / self.res.resync_rate as f64,
                );
                let spent = throttle_start.elapsed();
                if due > spent {
                    tokio::time::sleep(due - spent).await;
                }
            } else {
                throttled = 0;
                throttle_start = std::time::Instant::now();
            }
            window.push_back(ticket);
            chunks += 1;
            if chunks.is_multiple_of(RESYNC_CHECKPOINT) {
                // Checkpoint: once every chunk sent so far is applied, the
                // bitmap on disk may forget them; a crash resumes here.
                let mut lost = false;
                for t in window.drain(..) {
                    if let Ticket::Wait(rx) = t {
                        lost |= rx.await.is_err();
                    }
                }
                if lost {
                    break;
                }
                self.checkpoint(&session);
            }
            if window.len() >= RESYNC_WINDOW {
                if let Some(Ticket::Wait(rx)) = window.pop_front() {
                    if rx.await.is_err() {
                        break; // link lost: the session re-marked the rest
                    }
                }
            }
        }
        for t in window {
            if let Ticket::Wait(rx) = t {
                let _ = rx.await;
            }
        }
        let mut st = self.state();
        let current = st.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, &session));
        if current {
            if let Some(p) = st.sync.take() {
                tracing::info!(
                    bytes = p.done,
                    secs = p.started.elapsed().as_secs_f64(),
                    remaining = st.dirty.bytes(),
                    "resync finished"
                );
            }
            if st.dirty.bytes() == 0 {
                // Both hold this generation now; the bitmap starts afresh.
                let current = st.gen.current;
                st.gen.synced_to(current);
                st.apart = false;
                st.sync_source = false;
                drop(st);
                self.checkpoint(&session);
                st = self.state();
                if let Err(e) = self.save_meta(&st) {
                    tracing::error!("cannot save metadata: {e}");
                }
            }
            // The peer hears it is in sync (peer_out_of_sync = 0).
            self.announce(&st);
        }
    }

    /// Saves the bitmap and, when no replicated write is in flight, empties
    /// the activity log: a crash after this point resyncs only what the
    /// bitmap still holds (a resync resumes here).
    fn checkpoint(&self, session: &Arc<Session>) {
        let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = self.state();
        let st = &mut *st;
        // Local writes complete under the ordering lock; the peer's are the
        // session's in-flight operations.
        let result = if session.in_flight() == 0 {
            st.al.trim(&st.dirty)
        } else {
            st.al.save_bitmap(&st.dirty)
        };
        if let Err(e) = result {
            tracing::error!("resync checkpoint: {e}");
        }
    }

    /// Whether a resync should start now (Primary, connected, blocks out of
    /// sync, none running).
    pub fn needs_resync(&self) -> Option<Arc<Session>> {
        let st = self.state();
        if st.sync.is_none()
            && st.dirty.bytes() > 0
            && !st.sync_target
            && (st.role == Role::Primary || st.sync_source)
        {
            return st.session.clone();
        }
        None
    }

    pub fn status(&self) -> Status {
        let st = self.state();
        let mut peer_disk = st.peer_disk;
        if st.role == Role::Primary
            && st.dirty.bytes() > 0
            && peer_disk == Some(DiskState::UpToDate)
        {
            peer_disk = Some(DiskState::Outdated);
        }
        Status {
            resource: self.res.name.clone(),
            node: self.me.name.clone(),
            role: st.role,
            disk: st.disk,
            connection: match (&st.sync, st.connection()) {
                (_, Connection::Connected) if st.verify.is_some() => "Verifying".into(),
                (Some(_), Connection::Connected) => "SyncSource".into(),
                (None, Connection::Connected) if st.role == Role::Secondary && st.behind > 0 => {
                    "SyncTarget".into()
                }
                (_, c) => c.to_string(),
            },
            protocol: self.res.protocol.to_string(),
            peer: PeerStatus { node: self.peer.name.clone(), role: st.peer_role, disk: peer_disk },
            out_of_sync_bytes: st.dirty.bytes(),
            split_brain: st.split_brain,
            rtt_us: st.rtt.map(|d| d.as_micros() as u64),
            sync: st.sync.as_ref().or(st.verify.as_ref()).map(|p| {
                let rate = p.done as f64 / p.started.elapsed().as_secs_f64().max(1e-3);
                let left = p.total.saturating_sub(p.done);
                crate::status::SyncStatus {
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
                written_bytes: self.stats.written.load(Ordering::Relaxed),
                replicated_bytes: self.stats.replicated.load(Ordering::Relaxed),
                resync_bytes: self.stats.resynced.load(Ordering::Relaxed),
                verify_mismatches: self.stats.verify_mismatches.load(Ordering::Relaxed),
                ..Counters::default()
            },
            in_flight: st.session.as_ref().map_or(0, |s| s.in_flight()),
            io_backend: self.store.backend().to_string(),
            last_error: st.last_error.clone(),
        }
    }
}

/// The NBD export of a node: writable only while Primary.
impl BlockDevice for Node {
    fn size(&self) -> u64 {
        self.res.size
    }

    fn read_only(&self) -> bool {
        self.state().role != Role::Primary
    }

    fn description(&self) -> String {
        format!("twinblock resource {} on node {}", self.res.name, self.me.name)
    }

    async fn read(&self, offset: u64, len: u32) -> DeviceResult<Bytes> {
        Ok(self.store.read(offset, len).await?)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> DeviceResult<()> {
        let op = Op::write(offset, data.clone(), fua);
        self.replicate(op, |s| s.write_now(offset, &data), fua).await
    }

    async fn flush(&self) -> DeviceResult<()> {
        let ticket = {
            let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
            let st = self.state();
            match (&st.session, st.role) {
                (Some(s), Role::Primary) => s.submit(&Op::Flush, None),
                _ => Ticket::Alone,
            }
        };
        let peer = async {
            if let Ticket::Wait(rx) = ticket {
                let _ = rx.await;
            }
        };
        let ((), local) = tokio::join!(peer, self.store.flush());
        Ok(local?)
    }

    async fn trim(&self, offset: u64, len: u64, fua: bool) -> DeviceResult<()> {
        let op = Op::Trim { offset, len: len as u32, fua };
        self.replicate(op, |s| s.zero_now(offset, len, true, false), fua).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceResult<()> {
        let op = Op::Zero { offset, len: len as u32, no_hole: flags.no_hole, fua: flags.fua };
        let result = self
            .replicate(op, |s| s.zero_now(offset, len, !flags.no_hole, flags.fast), flags.fua)
            .await;
        match result {
            // FAST_ZERO that cannot be fast: ENOTSUP, as the spec asks.
            Err(DeviceError::Io(e)) if flags.fast && e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                Err(DeviceError::NotSupported)
            }
            other => other,
        }
    }

    async fn cache(&self, offset: u64, len: u64) -> DeviceResult<()> {
        Ok(self.store.prefetch(offset, len)?)
    }

    async fn block_status(&self, offset: u64, len: u32) -> DeviceResult<Vec<Extent>> {
        crate::local::allocation(&self.store, offset, len)
    }
}
