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
use twinblock_nbd::consts::{STATE_HOLE, STATE_ZERO};
use twinblock_nbd::{BlockDevice, DeviceError, DeviceResult, Extent, ZeroFlags};

use crate::bitmap::Bitmap;
use crate::config::{NodeConfig, ResourceConfig};
use crate::meta::{Meta, MetaError};
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
    pub connection: Connection,
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
}

/// Largest resync chunk, in 4 KiB blocks (1 MiB).
const RESYNC_CHUNK_BLOCKS: u64 = 256;
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
                connection: Connection::Connecting,
                peer_role: None,
                peer_disk: None,
                session: None,
                dirty: Bitmap::new(size),
                rtt: None,
                last_error: None,
                sync: None,
                behind: 0,
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
        }
        .save(&self.me.meta)
    }

    fn state_message(st: &State) -> Message {
        Message::State {
            role: st.role,
            disk: st.disk,
            peer_out_of_sync: if st.role == Role::Primary { st.dirty.bytes() } else { 0 },
            fresh: st.fresh,
        }
    }

    fn announce(&self, st: &State) {
        if let Some(s) = &st.session {
            s.send(Self::state_message(st));
        }
    }

    /// What a Secondary concludes about its own disk from a Primary peer's
    /// disk state, out-of-sync count and freshness.
    fn follow_primary(&self, st: &mut State, disk: DiskState, peer_out_of_sync: u64, fresh: bool) {
        let before = st.disk;
        st.behind = peer_out_of_sync;
        let in_sync = disk == DiskState::UpToDate && peer_out_of_sync == 0;
        if in_sync
            && (matches!(st.disk, DiskState::UpToDate | DiskState::Outdated) || (st.fresh && fresh))
        {
            // Up to date, resynced after being Outdated, or both disks
            // still all zeroes as created.
            st.disk = DiskState::UpToDate;
        } else if peer_out_of_sync > 0 && st.disk == DiskState::UpToDate {
            st.disk = DiskState::Outdated;
        }
        if st.disk != before {
            tracing::info!(from = ?before, to = ?st.disk, "disk state");
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
        }
        st.role = Role::Primary;
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
        if !want {
            st.connection = Connection::StandAlone;
        } else if st.session.is_none() {
            st.connection = Connection::Connecting;
        }
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
            peer_out_of_sync: if st.role == Role::Primary { st.dirty.bytes() } else { 0 },
            fresh: st.fresh,
        }
    }

    /// The link is up and the peer said hello: install the session, or
    /// refuse it (both Primary).
    pub fn connected(&self, peer: &Hello, session: Arc<Session>) -> Result<(), String> {
        let mut st = self.state();
        if !st.want_connected {
            return Err("disconnected by the operator".into());
        }
        if peer.role == Role::Primary && st.role == Role::Primary {
            return Err(format!(
                "both {} and {} are Primary: refusing the connection",
                self.me.name, peer.node
            ));
        }
        if peer.role == Role::Primary && st.role == Role::Secondary {
            self.follow_primary(&mut st, peer.disk, peer.peer_out_of_sync, peer.fresh);
        }
        st.peer_role = Some(peer.role);
        st.peer_disk = Some(peer.disk);
        st.session = Some(session.clone());
        st.connection = Connection::Connected;
        st.last_error = None;
        session.send(Self::state_message(&st));
        tracing::info!(peer = %peer.node, peer_role = ?peer.role, peer_disk = ?peer.disk, "connected");
        Ok(())
    }

    pub fn peer_state(&self, role: Role, disk: DiskState, peer_out_of_sync: u64, fresh: bool) {
        let mut st = self.state();
        let changed = st.peer_role != Some(role);
        st.peer_role = Some(role);
        st.peer_disk = Some(disk);
        if role == Role::Primary && st.role == Role::Secondary {
            let before = st.disk;
            self.follow_primary(&mut st, disk, peer_out_of_sync, fresh);
            if st.disk != before || changed {
                self.announce(&st);
            }
        }
    }

    /// The session ended: every unconfirmed range is marked out of sync
    /// before any waiting reply is released.
    pub fn session_lost(&self, session: &Arc<Session>, why: &str) {
        let mut st = self.state();
        let st = &mut *st;
        session.lose(|unconfirmed| {
            for u in unconfirmed {
                if let Some((off, len)) = u.range {
                    st.dirty.mark(off, len);
                }
            }
        });
        if st.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, session)) {
            st.session = None;
            st.peer_role = None;
            st.peer_disk = None;
            st.rtt = None;
            st.sync = None;
            st.behind = 0;
            st.connection =
                if st.want_connected { Connection::Connecting } else { Connection::StandAlone };
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
            self.state().dirty.mark(off, len);
        }
    }

    /// Applies an operation from the peer (Secondary), in sequence order.
    pub async fn apply(&self, op: &Op) -> io::Result<()> {
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
            Op::Trim { offset, len } => self.store.zero_now(*offset, *len as u64, true)?,
            Op::Zero { offset, len, no_hole } => {
                self.store.zero_now(*offset, *len as u64, !no_hole)?
            }
            Op::Flush => self.store.flush().await?,
        }
        self.stats.replicated.fetch_add(op.wire_bytes(), Ordering::Relaxed);
        Ok(())
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
            let ticket = match &st.session {
                Some(s) => s.submit(&op, lag),
                None => Ticket::Alone,
            };
            if matches!(ticket, Ticket::Alone) {
                if let Some((off, len)) = op.range() {
                    st.dirty.mark(off, len);
                }
            }
            drop(st);
            local(&self.store)?;
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
            if total == 0 {
                return;
            }
            st.sync = Some(SyncProgress { total, done: 0, started: std::time::Instant::now() });
            self.announce(&st);
            tracing::info!(bytes = total, "resync started (SyncSource)");
        }
        let mut window = std::collections::VecDeque::new();
        let mut cursor = 0u64;
        loop {
            let next = {
                let _order = self.order.lock().unwrap_or_else(|e| e.into_inner());
                let mut st = self.state();
                let current = st.session.as_ref().is_some_and(|s| Arc::ptr_eq(s, &session));
                if !current || st.role != Role::Primary {
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
                                Some((session.submit_resync(&Op::write(off, data, false)), len))
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
            window.push_back(ticket);
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
            // The peer hears it is in sync (peer_out_of_sync = 0).
            self.announce(&st);
        }
    }

    /// Whether a resync should start now (Primary, connected, blocks out of
    /// sync, none running).
    pub fn needs_resync(&self) -> Option<Arc<Session>> {
        let st = self.state();
        if st.role == Role::Primary && st.sync.is_none() && st.dirty.bytes() > 0 {
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
            connection: match (&st.sync, st.connection) {
                (Some(_), Connection::Connected) => "SyncSource".into(),
                (None, Connection::Connected) if st.role == Role::Secondary && st.behind > 0 => {
                    "SyncTarget".into()
                }
                (_, c) => c.to_string(),
            },
            protocol: self.res.protocol.to_string(),
            peer: PeerStatus { node: self.peer.name.clone(), role: st.peer_role, disk: peer_disk },
            out_of_sync_bytes: st.dirty.bytes(),
            split_brain: false,
            rtt_us: st.rtt.map(|d| d.as_micros() as u64),
            sync: st.sync.as_ref().map(|p| {
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
        let op = Op::Trim { offset, len: len as u32 };
        self.replicate(op, |s| s.zero_now(offset, len, true), fua).await
    }

    async fn write_zeroes(&self, offset: u64, len: u64, flags: ZeroFlags) -> DeviceResult<()> {
        let op = Op::Zero { offset, len: len as u32, no_hole: flags.no_hole };
        self.replicate(op, |s| s.zero_now(offset, len, !flags.no_hole), flags.fua).await
    }

    async fn cache(&self, offset: u64, len: u64) -> DeviceResult<()> {
        Ok(self.store.prefetch(offset, len)?)
    }

    async fn block_status(&self, offset: u64, len: u32) -> DeviceResult<Vec<Extent>> {
        let runs = self.store.extents(offset, len as u64)?;
        Ok(runs
            .into_iter()
            .map(|(length, hole)| Extent {
                length: length.min(u32::MAX as u64) as u32,
                flags: if hole { STATE_HOLE | STATE_ZERO } else { 0 },
            })
            .collect())
    }
}
