//! Store and metadata operations on the calling thread or the store
//! lane's ([`crate::lane`]), the bench's scratch area, and waits on the lane.

use super::*;

/// What performing a store operation left for the core to hear.
pub(super) enum Performed {
    Done(Result<Option<Bytes>, IoError>),
    /// A flush (or a FUA write's flush) runs; it reports when done.
    Flushing,
}

/// Performs one metadata update (durable on success).
pub(super) fn persist(
    files: &Mutex<MetaFiles>,
    node: &str,
    res: &ResourceConfig,
    what: Persist,
) -> Result<(), IoError> {
    let mut f = files.lock().unwrap_or_else(|e| e.into_inner());
    let file = match &what {
        Persist::Meta(_) => f.meta.clone(),
        Persist::Bitmap { .. } => crate::al::sibling(&f.meta, "bitmap"),
        Persist::Al { .. } => crate::al::sibling(&f.meta, "al"),
    };
    let r = match what {
        Persist::Meta(rec) => {
            let mut m = Meta::from_record(node, &res.name, res.size, &rec);
            m.bitmap_id = f.bitmap.id();
            m.save(&f.meta).map_err(|e| match e {
                MetaError::Io { source, .. } => source,
                other => io::Error::other(other.to_string()),
            })
        }
        Persist::Bitmap { pages } => f.bitmap.write_pages(&pages),
        Persist::Al { remove, add } => f.al.apply(&remove, &add),
    };
    r.map_err(|e| {
        tracing::error!("metadata update failed: {}: {e}", file.display());
        io_err(&e)
    })
}

impl Node {
    /// Performs one store operation on the calling thread (the node's lock
    /// held or not: the lane decides, see [`crate::lane`]).
    pub(super) fn perform(&self, op: StoreOp, io: IoId) -> Performed {
        let (result, then_flush) = match op {
            StoreOp::Write { offset, data, fua } => (self.store.write_now(offset, &data), fua),
            StoreOp::Zero { offset, len, punch, fua } => {
                (self.store.zero_now(offset, len, punch, false), fua)
            }
            StoreOp::Read { offset, len, holes } => {
                // A hole of a sparse disk is answered unread (the resync of
                // a mostly empty 16 TiB file read all of it). Here, in the
                // read's place in the core's order: every write issued
                // before it is in the page cache, which SEEK_DATA sees.
                if holes {
                    match self.store.is_hole(offset, len) {
                        Ok(true) => return Performed::Done(Ok(None)),
                        Ok(false) => {}
                        Err(e) => tracing::debug!(offset, len, "hole probe failed ({e}); reading"),
                    }
                }
                let r = self.store.read_now(offset, len as usize);
                return Performed::Done(r.map(Some).map_err(|e| io_err(&e)));
            }
            StoreOp::Flush => (Ok(()), true),
            StoreOp::Scratch { offset, data } => (self.scratch.write(offset, &data), false),
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
    pub(super) fn run_lane(&self) {
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
    pub(super) async fn lane_wait(&self, ok: impl Fn(&Shell) -> bool) {
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
}
