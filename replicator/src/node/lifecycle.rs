//! Opening a node (its disk, metadata and core, the store lane's thread,
//! the core's timer) and the end of its life (the final flush's failure,
//! a clean stop).

use super::scratch::Scratch;
use super::*;

/// How long a stop whose final flush failed waits for the record saying
/// so ([`Node::final_flush_failed`]).
const FAILED_RECORD_WAIT: Duration = Duration::from_secs(3);

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
        if meta.is_none() {
            // No record, but a bitmap or activity log marking blocks: the
            // record was lost, not never made. Starting afresh would take
            // this node for a new one and silently give up what it alone
            // holds (writes it acknowledged while its peer was away; found
            // by review). Siblings that mark nothing (a first start that
            // failed before its record was saved, found by the review of
            // this) say nothing a full sync from the peer would lose.
            if let Some(found) = crate::al::marking_sibling(&mine.meta) {
                return Err(NodeError::MetaLost { meta: mine.meta.clone(), found });
            }
        }
        // A disk path missing may be a disk that is not there yet, not
        // one gone: a block device not yet appeared (a volume still
        // attaching, udev at boot), or a file whose file system is not
        // mounted yet. Taken for gone, the metadata was saved Failed for
        // good, giving up the data on it, and a regular file made at its
        // path (found by review). The start is refused until it is there.
        let id_path = crate::disk_id::id_path(&mine.meta);
        if meta.is_some() && Store::missing(&mine.disk) {
            let elsewhere = crate::disk_id::recorded_elsewhere(&mine.meta, &mine.disk)
                .map_err(|source| MetaError::Io { path: id_path.clone(), source })?;
            if let Some(was) = elsewhere {
                let block = was == crate::disk_id::Elsewhere::Block;
                return Err(NodeError::DiskAbsent { disk: mine.disk.clone(), id: id_path, block });
            }
        }
        if let Some(m) = meta.as_mut().filter(|_| Store::makes_anew(&mine.disk)) {
            // The disk is gone (or emptied) but its metadata is not: record
            // that the data is gone (as if the disk had failed: a full sync
            // follows) before a new file exists, so a crash in between
            // cannot make an empty disk look UpToDate. The generation ids
            // stay (see Core::new).
            m.save_failed(&mine.meta)?;
        }
        let store = Store::open(&mine.disk, Some(res.size), opts)?;
        // Errors name the file they are about.
        let file_io =
            |path: std::path::PathBuf| move |source| MetaError::Io { path: path.clone(), source };
        let id_io = file_io(crate::disk_id::id_path(&mine.meta));
        let bitmap_io = file_io(crate::al::sibling(&mine.meta, "bitmap"));
        let al_io = file_io(crate::al::sibling(&mine.meta, "al"));
        // A disk replaced at the same path (an operator's new empty file,
        // a new volume under the same name) is not the one the metadata
        // describes: recorded Failed (a full sync from the peer follows)
        // before its identity replaces the old one.
        let check = match crate::disk_id::check(&mine.meta, &mine.disk).map_err(&id_io)? {
            // Metadata saved with an identity recorded, and none now (the
            // file lost): nothing says this is the disk it describes (found
            // by review: a new empty disk was recorded and trusted). Older
            // metadata, from before identities, has its disk recorded.
            Check::Unrecorded(found) if meta.as_ref().is_some_and(|m| m.disk_identified) => {
                let was =
                    format!("none ({} is missing)", crate::disk_id::id_path(&mine.meta).display());
                Check::Replaced { was, found }
            }
            check => check,
        };
        match check {
            Check::Same => {}
            Check::Unrecorded(id) => crate::disk_id::record(&mine.meta, &id).map_err(&id_io)?,
            Check::Replaced { was, found } => {
                if let Some(m) = meta.as_mut().filter(|m| !m.failed_at_start()) {
                    tracing::warn!(
                        disk = %mine.disk.display(), recorded = %was, %found,
                        "the disk is not the one the metadata describes (replaced): Failed, a \
                         full sync from the peer follows"
                    );
                    m.save_failed(&mine.meta)?;
                }
                crate::disk_id::record(&mine.meta, &found).map_err(&id_io)?;
            }
        }
        let cfg = CoreConfig::from_resource(&res, me, &peer.name);
        let words = crate::bitmap::Bitmap::with_block(cfg.size, cfg.block).words().len();
        let ident = crate::al::BitmapIdent {
            resource: res.name.clone(),
            node: me.to_owned(),
            size: cfg.size,
            block: cfg.block,
            words: words as u64,
        };
        let bitmap_path = crate::al::sibling(&mine.meta, "bitmap");
        let refused = |e| match e {
            BitmapError::Io(e) => bitmap_io(e),
            BitmapError::Refused(reason) => {
                MetaError::Refused { path: bitmap_path.clone(), reason }
            }
        };
        // The metadata survives but its bitmap or activity log does not (a
        // file lost, or a bitmap that cannot say which blocks are in sync:
        // of another size, cut short, its header corrupt, or not the one
        // the record was saved with): nothing may be taken as in sync on no
        // evidence, so every block is out of sync (a full resync, in the
        // direction the generations say). Decided before either file is
        // created, and the bitmap of ones replaces the old one atomically
        // before the log is created: a crash or error in between leaves the
        // sign of the loss for the next start. A bitmap of another node or
        // resource, or of a newer format, refuses the start (an operator's
        // mistake, with the right file maybe at hand).
        let al_path = crate::al::sibling(&mine.meta, "al");
        let al_refused = |e| match e {
            BitmapError::Io(e) => al_io(e),
            BitmapError::Refused(reason) => MetaError::Refused { path: al_path.clone(), reason },
        };
        let meta_id = meta.as_ref().map_or(0, |m| m.bitmap_id);
        let (al_saved, saved) = match &meta {
            Some(_) => (
                AlJournal::load(&mine.meta, me, &res.name, meta_id).map_err(al_refused)?,
                BitmapFile::load(&mine.meta, &ident, meta_id).map_err(refused)?,
            ),
            None => (AlSaved::Missing, Saved::Missing),
        };
        let (held, al_lost) = match al_saved {
            AlSaved::Held(held) => (held, None),
            AlSaved::Missing => (Default::default(), Some("it is missing".to_owned())),
            AlSaved::Unfit(why) => (Default::default(), Some(why)),
        };
        let al_exists = al_lost.is_none();
        let (bitmap, saved) = match (meta.is_some(), saved, al_exists) {
            // A first start (or one anew): a bitmap of zeroes.
            (false, ..) => {
                let zero = vec![0u64; words];
                (BitmapFile::create(&mine.meta, &ident, &zero).map_err(&bitmap_io)?, None)
            }
            (true, Saved::Checked { words, id, bad_pages }, true) => {
                let file = BitmapFile::open(&mine.meta, &ident, id).map_err(&bitmap_io)?;
                if !bad_pages.is_empty() {
                    tracing::error!(
                        file = %bitmap_path.display(), pages = ?bad_pages,
                        "bitmap pages fail their checksum (a torn write in a crash, or \
                         corruption): every block they cover counts as out of sync (resynced)"
                    );
                    let ones: Vec<(u64, Vec<u64>)> = bad_pages
                        .iter()
                        .map(|&p| {
                            let at = p as usize * crate::core::PAGE_WORDS;
                            let end = (at + crate::core::PAGE_WORDS).min(words.len());
                            (p, words[at..end].to_vec())
                        })
                        .collect();
                    file.write_pages(&ones).map_err(&bitmap_io)?;
                }
                (file, Some(words))
            }
            // The format before headers: read as before (nothing can check
            // it) and rewritten with a header and checksums.
            (true, Saved::Legacy(words), true) => {
                tracing::info!(
                    file = %bitmap_path.display(),
                    "bitmap saved without a header (an older twinblock): upgraded"
                );
                (BitmapFile::create(&mine.meta, &ident, &words).map_err(&bitmap_io)?, Some(words))
            }
            (true, saved, _) => {
                let (file, why) = match (saved, &al_lost) {
                    (Saved::Missing, _) => (&bitmap_path, "it is missing".to_owned()),
                    (Saved::Unfit(why), _) => (&bitmap_path, why),
                    (_, why) => (&al_path, why.clone().unwrap_or_default()),
                };
                tracing::error!(
                    file = %file.display(),
                    "the out-of-sync bitmap or the activity log cannot be trusted ({why}): every \
                     block counts as out of sync (a full resync follows)"
                );
                let mut all = crate::bitmap::Bitmap::with_block(cfg.size, cfg.block);
                all.mark_all();
                let file =
                    BitmapFile::create(&mine.meta, &ident, all.words()).map_err(&bitmap_io)?;
                (file, Some(all.words().to_vec()))
            }
        };
        // The log is rewritten naming the bitmap, then the record names it
        // (a crash in between: the record's older id makes both unfit at
        // the next start, a full resync; or it named none).
        let al = AlJournal::open(&mine.meta, me, &res.name, bitmap.id(), held.clone())
            .map_err(&al_io)?;
        let held: Vec<u64> = held.into_iter().collect();
        if let Some(m) = meta.as_mut().filter(|m| m.bitmap_id != bitmap.id()) {
            m.bitmap_id = bitmap.id();
            m.save(&mine.meta)?;
        }
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
            if let Some(m) = meta.as_mut().filter(|m| !m.failed_at_start()) {
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
        let origin = super::clock::boot_time();
        let core = Core::new(cfg, rec, Duration::ZERO, crate::random::random_u64());
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
            nbd_writers: AtomicUsize::new(0),
            changed: Notify::new(),
            observer: std::sync::OnceLock::new(),
            transitions: tokio::sync::broadcast::channel(256).0,
            scratch: Arc::new(Scratch::new(&mine.meta, opts, tokio::runtime::Handle::current())),
            rt: tokio::runtime::Handle::current(),
            lane_wake,
            lane_progress: Arc::new(Notify::new()),
            link_tally: Mutex::new(LinkTally::default()),
            link_refusal: Mutex::new(None),
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

    /// `down` (or SIGTERM): a Primary demotes before its link closes, as
    /// DRBD's `down` runs `secondary`, so the link closes as a Secondary's.
    /// (Closed as a Primary's, the session's end started a new generation
    /// here for a write still in flight, which then failed: once the peer
    /// took over and wrote, the next handshake found a split brain; found
    /// by a live test.) Without a controller, once the export has answered
    /// everything; with one, before the export closes (`on_demote` stops
    /// the service and unmounts through it), and the witness gets the right
    /// back, so the peer may take over at once rather than after
    /// `dead_time`. A demotion not done within `wait` is given up: the node
    /// stops as Primary, as before. Then, for at most `drain`, the writes
    /// the peer was sent and has not applied (protocol A answered them
    /// already) reach it before the link closes.
    pub async fn demote_for_stop(&self, wait: Duration, drain: Duration) {
        // (A Secondary stopping beside its Primary's `down` would take
        // the right it gives back in its own last moments.)
        self.with_core(|c, _| c.stopping());
        if self.role() != Role::Primary {
            return;
        }
        tracing::info!("stopping as Primary: demoting first");
        // (Adaptive mode: what it answered alone while Ahead goes to the
        // peer before the link closes, below.)
        let owed = self.lock().core.owes_peer();
        self.demote_forced();
        let deadline = tokio::time::Instant::now() + wait;
        let busy = || self.role() == Role::Primary || self.lock().core.releasing();
        super::poll_until(deadline, Duration::from_millis(10), || !busy()).await;
        if self.role() == Role::Primary {
            tracing::warn!("stopping as Primary: the demotion did not finish within {wait:?}");
            return;
        }
        // Protocol A answered writes its peer may not have yet: they reach
        // it before the link closes (a crash may lose them; a planned stop
        // does not). A link that fails ends the session, and the wait.
        //
        // So do the blocks adaptive mode answered alone while Ahead: the
        // demotion ends the run (or, mid-catch-up, the session: the
        // handshake then resyncs them from this node as a Secondary), and
        // the wait lasts until the peer says it holds them all (its
        // State after the SyncDone: the bitmap being empty here is not
        // enough, the SyncDone may still be unsent). Before, `down`
        // returned at once and left the peer Outdated (found by review);
        // a first fix waited for the bitmap alone and could close the
        // link before the SyncDone left (the peer then Inconsistent;
        // found by review of it). Without a link for 3 s the wait ends.
        let pending = || {
            let sh = self.lock();
            let c = &sh.core;
            // (Linked: a running session. A handshake that keeps failing
            // does not hold the stop for the whole limit; found by review.)
            let linked = c.connection() == crate::core::Connection::Connected;
            (c.unconfirmed_writes(), owed && !c.peer_in_sync(), linked)
        };
        let (left, behind, _) = pending();
        if left > 0 || behind {
            tracing::info!(
                left,
                behind,
                "waiting for the peer to confirm the writes it was sent and take the blocks \
                 answered alone"
            );
        }
        let deadline = tokio::time::Instant::now() + drain;
        let mut unlinked_since = None;
        loop {
            let (left, behind, linked) = pending();
            let now = tokio::time::Instant::now();
            if left == 0 && !behind {
                break;
            }
            let unlinked = *unlinked_since.get_or_insert(now);
            if linked {
                unlinked_since = None;
            }
            let gone = !linked && now.duration_since(unlinked) >= Duration::from_secs(3);
            if now >= deadline || gone {
                tracing::warn!(
                    left,
                    behind,
                    "stopping with writes the peer has not confirmed or blocks it has not taken \
                     ({})",
                    if gone { "no link for 3 s" } else { "waited the limit" }
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The final flush at stop failed: the disk is detached and recorded
    /// so. Its page cache may have dropped writes the failed sync
    /// covered; recorded `UpToDate`, the next start would take what is
    /// left for data, and as the crashed Primary's, send its activity-log
    /// extents over the peer's copy.
    ///
    /// Returns once that record is on disk, or after
    /// [`FAILED_RECORD_WAIT`]: a record save issued before (on its own
    /// task) may still be under way, and the one saying Failed follows it
    /// only when it completes, from that task; one that failed shortly
    /// before is tried again by the timer. Returned at once, the process
    /// ended with the task and left the record as it was, `UpToDate`
    /// (found by review; `node::tests`). False: the record could not be
    /// saved, and still says what it said (the caller says so: the next
    /// start would trust the disk).
    pub async fn final_flush_failed(&self, e: &io::Error) -> bool {
        {
            // (Saved on a blocking thread, as while running, not in place
            // under the node's lock: on a metadata volume that hangs, the
            // stop hung with it, past the wait; found by review.)
            let mut sh = self.lock();
            let now = self.now();
            sh.core.handle_disk_error(now, io_err(e), "the final flush");
            self.drain(&mut sh);
        }
        let deadline = tokio::time::Instant::now() + FAILED_RECORD_WAIT;
        loop {
            let saved = self.lock().core.meta_durable();
            if saved {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::error!(
                    "the failed final flush could not be recorded within {FAILED_RECORD_WAIT:?}"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Clean stop, after the final flush: the bitmap on disk and the
    /// activity log emptied of every idle extent.
    pub fn close(&self) {
        self.scratch.give_back();
        let mut sh = self.lock();
        sh.persist_async = false; // the process ends next: update in place
        sh.core.prepare_stop();
        self.drain(&mut sh);
    }
}
