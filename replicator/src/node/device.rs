//! The node as the NBD export (`BlockDevice`): application requests in,
//! replies out; writable only while Primary, reads only from current data.

use super::*;

/// How often a read held by [`Core::read_gate`] looks again.
const READ_GATE_POLL: Duration = Duration::from_millis(20);

impl Node {
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
        self.observe(kind, start, matches!(reply, Ok(Ok(()))));
        match reply {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ReplyError::ReadOnly)) => Err(DeviceError::ReadOnly),
            Ok(Err(ReplyError::OutOfRange)) => Err(DeviceError::NoSpace),
            Ok(Err(ReplyError::Io(e))) => Err(DeviceError::Io(io::Error::from_raw_os_error(e.0))),
            Err(_) => Err(DeviceError::Shutdown),
        }
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
    /// a pending request waits on its reply channel (no sockets), or on a
    /// store read, whose engines complete outside their locks. The timers
    /// a read waits on (a held read's poll, `disk-timeout`) are armed in
    /// the node's runtime: the request may be polled on a thread outside
    /// it.
    fn finish_on_wake(&self) -> bool {
        true
    }

    /// Clients of a read-write export are counted: `secondary` (without
    /// a controller) is refused while one is connected ([`Node::demote`]).
    fn client_opened(&self, writable: bool) {
        if writable {
            self.nbd_writers.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn client_closed(&self, writable: bool) {
        if writable {
            self.nbd_writers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Reads what every write issued before it left ([`Node::readable`]).
    async fn read(&self, offset: u64, len: u32) -> DeviceResult<Bytes> {
        let start = Instant::now();
        let r = self.read_now(offset, len).await;
        self.observe(RequestKind::Read, start, r.is_ok());
        r
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
        let start = Instant::now();
        let r = match self.readable().await {
            Ok(()) => crate::local::allocation(&self.store, offset, len),
            Err(e) => Err(e),
        };
        self.observe(RequestKind::BlockStatus, start, r.is_ok());
        r
    }
}

impl Node {
    /// [`BlockDevice::read`]'s work, counted by its caller.
    async fn read_now(&self, offset: u64, len: u32) -> DeviceResult<Bytes> {
        self.readable().await?;
        let read = self.store.read(offset, len);
        let Some(limit) = self.res.disk_timeout else { return self.read_done(read.await) };
        // Armed in the node's runtime: this may run on the thread that
        // woke the read, outside it (`finish_on_wake`; found by review,
        // helper-108: tokio panicked there).
        let read = {
            let _rt = self.rt.enter();
            tokio::time::timeout(limit, read)
        };
        match read.await {
            Ok(r) => self.read_done(r),
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

    /// Tells the observer of an answered application request.
    fn observe(&self, kind: RequestKind, start: Instant, ok: bool) {
        if let Some(o) = self.observer.get() {
            o.completed(kind, start.elapsed(), ok);
        }
    }

    /// An application read's result: one that failed detaches the disk, as
    /// a failed write does (found by review: the node stayed UpToDate and
    /// promotable with a disk whose every read failed, where a resync or
    /// verify read error detached it). The read itself fails.
    fn read_done(&self, r: io::Result<Bytes>) -> DeviceResult<Bytes> {
        r.map_err(|e| {
            if e.raw_os_error() != Some(libc::EINVAL) {
                let mut sh = self.lock();
                let now = self.now();
                sh.core.handle_disk_error(now, io_err(&e), &format!("application read: {e}"));
                self.drain(&mut sh);
            }
            DeviceError::Io(e)
        })
    }

    /// Whether this node's data may be read now (UpToDate or Consistent),
    /// once every write received from the peer is issued (a Primary just
    /// promoted) and every write issued before the call is performed: a
    /// write still on the store lane (a Secondary's backlog of peer writes,
    /// acknowledged as received in protocol B, when it has just been
    /// promoted) first. What a READ and a BLOCK_STATUS answer both wait
    /// for: a status of "zeroes" where a read would fail (an Inconsistent
    /// disk is mostly holes) had backup tools copy zeroes and succeed.
    ///
    /// First, the controller's rules ([`Core::read_gate`]): a Primary whose
    /// quorum ran out holds the read until quorum comes back, and fails it
    /// once the survivor may have taken over (`on-no-quorum = io-error`) or
    /// it is deposed. The core names no wake-up for a change of quorum, so
    /// a held read looks again every [`READ_GATE_POLL`] (and at each change
    /// of state). Checked under the same lock as the rest: one lock per
    /// read on the common path.
    async fn readable(&self) -> DeviceResult<()> {
        let mut issued_as_primary = None;
        let mut held = false;
        let may_read = |sh: &Shell| match sh.core.may_read() {
            Err(ReplyError::Io(e)) => Err(DeviceError::Io(io::Error::from_raw_os_error(e.0))),
            _ => Ok(()),
        };
        // A Primary just promoted may still hold writes of its peer's
        // that wait to be issued (`Core::reads_settled`): they go first.
        // (Or the disk is detached meanwhile: they never will be.)
        let settled = |sh: &Shell| sh.core.reads_settled() || sh.detached();
        loop {
            let progress = self.lane_progress.notified();
            let step = {
                let sh = self.lock();
                let primary =
                    *issued_as_primary.get_or_insert_with(|| sh.core.role() == Role::Primary);
                match sh.core.read_gate(self.now(), primary) {
                    ReadGate::Serve => {
                        may_read(&sh)?;
                        if settled(&sh) {
                            let mark = sh.lane.mark();
                            if sh.lane.caught_up(mark) {
                                return Ok(());
                            }
                            Ok(Some(mark))
                        } else {
                            Ok(None)
                        }
                    }
                    held => Err(held),
                }
            };
            let mark = match step {
                Ok(mark) => mark,
                Err(ReadGate::Fail) => {
                    // (Per read, so debug: the loss of quorum and
                    // `Fenced` are logged and are events; a client that
                    // retries its reads would flood the log.)
                    tracing::debug!(
                        "a read failed: another node may be Primary with writes this node's \
                         data lacks (quorum lost, or demoted without it)"
                    );
                    return Err(DeviceError::Io(io::Error::from_raw_os_error(libc::EIO)));
                }
                Err(_) => {
                    if !held {
                        tracing::debug!("a read waits: this Primary has no quorum");
                        held = true;
                    }
                    // (Woken by a change of state since `notified()`, or
                    // after the poll: quorum changes wake nobody.) Armed in
                    // the node's runtime: this may run on the thread that
                    // woke the read, outside it (an NBD request is polled
                    // where it is woken, `finish_on_wake`), and tokio
                    // panics arming a timer there (found by review,
                    // helper-108).
                    let wait = {
                        let _rt = self.rt.enter();
                        tokio::time::timeout(READ_GATE_POLL, progress)
                    };
                    let _ = wait.await;
                    continue;
                }
            };
            let Some(mark) = mark else {
                self.lane_wait(settled).await;
                continue;
            };
            // (Or the disk is detached meanwhile: a write it never
            // completes would hold the read for ever.)
            self.lane_wait(|sh| sh.lane.caught_up(mark) || sh.detached()).await;
            may_read(&self.lock())?;
            return Ok(());
        }
    }
}
