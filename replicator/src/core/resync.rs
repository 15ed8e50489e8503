//! Resync: the SyncSource sends its out-of-sync blocks in chunks while the
//! application keeps writing. A chunk is read with no application write
//! admitted in between and numbered right after the read, so a write to
//! the same blocks is either in the chunk or numbered after it. Its bits
//! are cleared only when a flush on the target, numbered after the chunk,
//! has completed: a crash or power loss of either side before that resends
//! it. When the bitmap is empty the source says SyncDone; the target then
//! takes the source's generation, is UpToDate, and says so; only then does
//! the source forget the bitmap's base generation.
//!
//! Checksum mode (`resync-checksum`): the source first asks the target for
//! the checksums of a run (a verify operation, numbered; 64 bits of each
//! block's SHA-256), and sends only blocks whose checksum differs from its
//! own read.

use bytes::Bytes;

use crate::protocol::wire::{DiskState, Message, Op, Role};

use super::apply::block_sums;
use super::session::{Activity, Need, OutKind, Phase, SourceStart, SourceSync};
use super::types::{IoError, Plant, Progress, SessionId, StoreOp};
use super::{Core, IoFor};

/// The first run of blocks set in `dirty` and not in `claimed`, at or after
/// block `from`, at most `max` blocks: (offset, len) in bytes.
fn next_unclaimed(
    dirty: &crate::bitmap::Bitmap,
    claimed: &crate::bitmap::Bitmap,
    from: u64,
    max: u64,
) -> Option<(u64, u64)> {
    // Claimed blocks are a subset of the dirty ones: all claimed, none left.
    if claimed.bytes() >= dirty.bytes() {
        return None;
    }
    let block = dirty.block();
    let mut b = from;
    loop {
        let (off, len) = dirty.next_run(b, max)?;
        let (first, end) = (off / block, (off + len) / block);
        let mut start = first;
        while start < end && claimed.is_set(start) {
            start += 1;
        }
        if start == end {
            b = end;
            continue;
        }
        let mut stop = start;
        while stop < end && stop - start < max && !claimed.is_set(stop) {
            stop += 1;
        }
        return Some((start * block, (stop - start) * block));
    }
}

impl Core {
    /// Moves the resync along as far as the window, the rate and the
    /// barrier allow; ends it when everything is durable on the target.
    pub(crate) fn resync_pump(&mut self) {
        self.maybe_start_source();
        let block = self.cfg.block;
        let (chunk_bytes, window, checksum) =
            (self.cfg.chunk_blocks * block, self.cfg.window, self.cfg.resync_checksum);
        let bitmap_ready = self.bitmap_clean() && self.meta_durable();
        let queued = self.peer_writes_queued() && self.cfg.plant != Plant::ResyncBeforeReceived;
        let now = self.now;
        let Some(s) = self.session.as_mut().filter(|s| s.phase == Phase::Running) else { return };
        let sid = s.id;
        let Activity::Source(src) = &mut s.activity else { return };
        if src.start == SourceStart::Bitmap {
            if !bitmap_ready {
                self.p.want_bitmap = true;
                return;
            }
            src.start = SourceStart::Flush { epoch: self.write_epoch };
            if src.token != 0 {
                // Every block is marked, durably: from now on this node's
                // bitmap covers all the target lacks, and a sync cut short
                // may resume from it.
                self.full_sync = src.token;
            }
        }
        if let SourceStart::Flush { epoch } = src.start {
            if self.flushed_epoch < epoch {
                self.flush_written();
                return;
            }
            src.start = SourceStart::Running;
            src.progress = Progress { total: self.dirty.bytes(), done: 0, started: now };
            tracing::info!(bytes = self.dirty.bytes(), "resync started (SyncSource)");
        }
        if src.done_sent {
            return;
        }
        // The source reads once every write it received from its peer is
        // issued (a node promoted, or one that became a source, with
        // writes of an earlier session still queued): read before, the
        // target would get the older block and the queued write land on
        // the source alone (review: both UpToDate, in sync, and differing).
        if queued {
            return;
        }
        let mut to_read = None;
        let mut probes = Vec::new();
        loop {
            if src.reading.is_some() {
                break;
            }
            if let Some((off, len, sums)) = src.probed.pop_front() {
                src.reading = Some((off, len, Some(sums)));
                to_read = Some((off, len, false));
                break;
            }
            if src.chunks >= window || s.tokens <= 0.0 {
                break;
            }
            let run = next_unclaimed(&self.dirty, &src.claimed, src.cursor, self.cfg.chunk_blocks)
                .or_else(|| {
                    if src.cursor > 0 {
                        next_unclaimed(&self.dirty, &src.claimed, 0, self.cfg.chunk_blocks)
                    } else {
                        None
                    }
                });
            let Some((off, len)) = run else { break };
            debug_assert!(len <= chunk_bytes);
            src.claimed.mark(off, len);
            src.cursor = (off + len) / block;
            if checksum {
                src.chunks += 1;
                probes.push((off, len));
                continue;
            }
            src.reading = Some((off, len, None));
            // A hole of a sparse disk goes as zeroes, unread (a 16 TiB
            // disk holding little was read whole to find its zeroes). The
            // probe is the read itself: performed in the read's place, it
            // sees every write issued before it, and none is admitted
            // until it completes (`barrier`), as for a read.
            to_read = Some((off, len, u32::try_from(len).is_ok()));
            break;
        }
        for (off, len) in probes {
            let s = self.session.as_mut().expect("session");
            let seq = s.submit(OutKind::Probe { offset: off, len }, Need::Done, None, 0, now);
            self.send(Message::Data {
                seq,
                op: Op::Verify { offset: off, len: len as u32, online: false },
            });
        }
        if let Some((off, len, holes)) = to_read {
            self.barrier += 1;
            self.store(IoFor::SourceRead { sid }, StoreOp::Read { offset: off, len, holes });
            return;
        }
        // Nothing more to send now: is it finished?
        let s = self.session.as_mut().expect("session");
        let Activity::Source(src) = &mut s.activity else { return };
        let chunks_out = src.chunks > 0 || src.reading.is_some() || !src.probed.is_empty();
        let flush_out = s.out.values().any(|o| matches!(o.kind, OutKind::ResyncFlush(_)));
        if chunks_out || flush_out {
            return;
        }
        if !src.unflushed.is_empty() {
            let ranges = std::mem::take(&mut src.unflushed);
            let seq = s.submit(OutKind::ResyncFlush(ranges), Need::Done, None, 0, now);
            self.send(Message::Data { seq, op: Op::Flush });
            return;
        }
        if self.dirty.bytes() == 0 && bitmap_ready {
            src.done_sent = true;
            let current = self.gen.current;
            self.send(Message::SyncDone { current });
        }
    }

    /// A Primary that is connected and holds out-of-sync blocks (a failed
    /// write on the peer, verify mismatches) resyncs them.
    fn maybe_start_source(&mut self) {
        if self.role != Role::Primary || self.dirty.bytes() == 0 || !self.disk_usable() {
            return;
        }
        let now = self.now;
        let total = self.dirty.bytes();
        if let Some(s) = self.session.as_mut() {
            if s.phase == Phase::Running
                && matches!(s.activity, Activity::Idle)
                && !matches!(s.peer.disk, DiskState::Failed | DiskState::Diskless)
            {
                // Made only here: this runs at every step of the node, and
                // a bitmap the device's size made (and zeroed) at each one
                // cost a Primary alone with out-of-sync blocks 95% of its
                // write rate on a 1 TiB device (review).
                let claimed = crate::bitmap::Bitmap::with_block(self.cfg.size, self.cfg.block);
                s.activity = Activity::Source(SourceSync::new(claimed, total, now));
            }
        }
    }

    /// A resync or verify read completed.
    pub(crate) fn source_read_done(
        &mut self,
        sid: SessionId,
        result: Result<Option<Bytes>, IoError>,
    ) {
        // `None`: a read that could be answered as a hole was (all of it
        // reads as zeroes, and none of it was read).
        let data = match result {
            Ok(d) => d,
            Err(e) => {
                self.disk_failed(e, "resync/verify read");
                self.close_session(sid, "the local disk failed: detached".into());
                return;
            }
        };
        let now = self.now;
        let block = self.cfg.block;
        let checkpoint = self.cfg.checkpoint_chunks as usize;
        let plant = self.cfg.plant;
        let Some(s) = self.session.as_mut().filter(|s| s.id == sid) else { return };
        match &mut s.activity {
            Activity::Source(src) => {
                let Some((off, len, sums)) = src.reading.take() else { return };
                let read = data.as_ref().map_or(0, |d| d.len() as u64);
                let mut writes = Vec::new();
                match (data, sums) {
                    // The planted mistake: a hole is not sent, as if the
                    // target's blocks were holes too (a new disk's are);
                    // its bits go with the next flush all the same.
                    (None, _) if plant == Plant::HolesNotSent => {}
                    // A hole: its range alone crosses the link.
                    (None, _) => match u32::try_from(len) {
                        Ok(n) => writes.push(Op::ResyncZero { offset: off, len: n }),
                        // (Not asked for: a chunk this large is read.)
                        Err(_) => writes.push(Op::resync(off, vec![0; len as usize].into())),
                    },
                    (Some(data), Some(theirs)) if theirs.len() as u64 * block == len => {
                        let ours = block_sums(&data, block);
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
                            let b = block as usize;
                            let at = off + start as u64 * block;
                            // All zeroes: only their range crosses the link.
                            writes.push(Op::resync_chunk(at, data.slice(start * b..i * b)));
                        }
                    }
                    (Some(data), _) => writes.push(Op::resync_chunk(off, data)),
                }
                src.unflushed.push((off, len));
                src.progress.done += len;
                src.progress.total = src.progress.total.max(src.progress.done);
                src.chunks += writes.len();
                let flush = if src.unflushed.len() >= checkpoint {
                    Some(std::mem::take(&mut src.unflushed))
                } else {
                    None
                };
                let (mut sent, mut payload) = (0, 0);
                for op in writes {
                    let range = op.range();
                    sent += range.map_or(0, |(_, n)| n);
                    payload += op.wire_bytes();
                    let seq = s.submit(OutKind::Resync, Need::Done, range, op.wire_bytes(), now);
                    self.actions.push_back(super::Action::Send {
                        session: sid,
                        msg: Message::Data { seq, op },
                    });
                }
                // `resync-rate` limits what the resync costs the
                // application: its disk's reads and the link's bytes. A
                // chunk costs what it read, or its payload if that is
                // more; a hole sent unread costs nothing (before, its full
                // length: a mostly empty disk's sync was throttled as if
                // it sent data: 32 GiB at the default 100M took minutes
                // while the application wrote). Known limit (review,
                // helper-143): a target on a block device without
                // write-zeroes offload then zeroes those ranges at full
                // speed (charging holes their length was tried and undone
                // the same day for that cost).
                s.tokens -= read.max(payload) as f64;
                self.counters.resync_bytes += sent;
                self.counters.resync_read_bytes += read;
                if let Some(ranges) = flush {
                    let seq = s.submit(OutKind::ResyncFlush(ranges), Need::Done, None, 0, now);
                    self.actions.push_back(super::Action::Send {
                        session: sid,
                        msg: Message::Data { seq, op: Op::Flush },
                    });
                }
            }
            Activity::Verify(v) => {
                let data = data.unwrap_or_default();
                v.reading = false;
                let offset = v.cursor;
                let sums = block_sums(&data, block);
                v.cursor += data.len() as u64;
                v.chunks += 1;
                let len = data.len() as u32;
                let seq = s.submit(OutKind::Verify { offset, sums }, Need::Done, None, 0, now);
                self.actions.push_back(super::Action::Send {
                    session: sid,
                    msg: Message::Data { seq, op: Op::Verify { offset, len, online: true } },
                });
            }
            _ => {}
        }
    }

    /// A resync or verify operation the peer applied.
    pub(crate) fn source_retired(&mut self, kind: OutKind, range: Option<(u64, u64)>) {
        let plant = self.cfg.plant;
        let block = self.cfg.block;
        let Some(s) = self.session.as_mut() else { return };
        let mut clear = Vec::new();
        let mut mark = None;
        match kind {
            OutKind::Resync => {
                if let Activity::Source(src) = &mut s.activity {
                    src.chunks = src.chunks.saturating_sub(1);
                }
                if plant == Plant::ClearBeforeDurable {
                    // The planted mistake: forget (and save) the bits as
                    // soon as the target applied the chunk, not once it is
                    // durable there.
                    clear.extend(range);
                    self.p.want_bitmap = true;
                }
            }
            OutKind::Probe { offset, len } => {
                // Answered by a Verified before this ack; if not, the peer
                // skipped it: send the run as it is.
                if let Activity::Source(src) = &mut s.activity {
                    src.chunks = src.chunks.saturating_sub(1);
                    src.probed.push_back((offset, len, Vec::new()));
                }
            }
            OutKind::ResyncFlush(ranges) => {
                // Durable on the target: these bits may go.
                if let Activity::Source(src) = &mut s.activity {
                    for &(off, len) in &ranges {
                        src.claimed.clear_range(off, len);
                    }
                }
                clear = ranges;
                // Checkpoint: the bitmap on disk, and the activity log
                // emptied of idle extents, so a crash resumes from here.
                self.p.want_bitmap = true;
                self.p.al_trim_wanted = true;
            }
            OutKind::Verify { offset, sums } => {
                // Not answered before its ack: count it as differing.
                mark = Some((offset, sums.len() as u64 * block));
                if let Activity::Verify(v) = &mut s.activity {
                    v.chunks = v.chunks.saturating_sub(1);
                }
            }
            OutKind::App(_) | OutKind::Bench(_) => {}
        }
        for (off, len) in clear {
            self.clear(off, len);
        }
        if let Some((off, len)) = mark {
            self.mark(off, len);
            self.p.want_bitmap = true;
        }
    }

    /// The peer's checksums for a verify operation (probe or online verify).
    pub(crate) fn on_verified(&mut self, seq: u64, sums: Vec<u64>) -> Result<(), String> {
        let block = self.cfg.block;
        let s = self.session.as_mut().ok_or("no session")?;
        let o = s
            .out
            .get_mut(&seq)
            .ok_or_else(|| format!("checksums for operation {seq}, which was not asked"))?;
        match std::mem::replace(&mut o.kind, OutKind::App(u64::MAX)) {
            OutKind::Probe { offset, len } => {
                if sums.len() as u64 * block != len {
                    return Err(format!("{} checksums for {len} bytes", sums.len()));
                }
                // Kept out of `chunks`' count by the retire of the
                // placeholder kind; the read takes over the slot.
                o.kind = OutKind::App(u64::MAX);
                if let Activity::Source(src) = &mut s.activity {
                    src.chunks = src.chunks.saturating_sub(1);
                    src.probed.push_back((offset, len, sums));
                }
            }
            OutKind::Verify { offset, sums: mine } => {
                if sums.len() != mine.len() {
                    return Err(format!("{} checksums, expected {}", sums.len(), mine.len()));
                }
                let len = mine.len() as u64 * block;
                if let Activity::Verify(v) = &mut s.activity {
                    v.chunks = v.chunks.saturating_sub(1);
                    v.progress.done += len;
                }
                let bad: Vec<u64> = mine
                    .iter()
                    .zip(&sums)
                    .enumerate()
                    .filter(|(_, (a, b))| a != b)
                    .map(|(i, _)| offset + i as u64 * block)
                    .collect();
                for &at in &bad {
                    self.mark(at, block);
                }
                if !bad.is_empty() {
                    tracing::warn!(
                        offset,
                        blocks = bad.len(),
                        "verify: blocks differ from the peer's"
                    );
                    self.counters.verify_mismatches += bad.len() as u64;
                    self.p.want_bitmap = true;
                }
            }
            other => {
                o.kind = other;
                return Err(format!("checksums for operation {seq}, which was not a verify"));
            }
        }
        Ok(())
    }

    /// SyncTarget: every block was sent and is durable here.
    pub(crate) fn on_sync_done(&mut self, current: u64) -> Result<(), String> {
        if current == crate::protocol::genid::NEVER_SYNCED || current == 0 {
            return Err("SyncDone for data that was never synced".into());
        }
        // An honest source sends it once a flush numbered after its last
        // chunk is done here: chunks not yet on disk (or never applied)
        // would be declared UpToDate (found by a lying-peer test).
        if let Some(s) = &self.session {
            if s.last_resync > 0 && (s.flush_after_resync == 0 || s.done < s.flush_after_resync) {
                return Err(format!(
                    "SyncDone before the resync data up to operation {} was flushed here",
                    s.last_resync
                ));
            }
        }
        // (Adaptive mode: a Behind node that got no chunk is a target too.)
        let lost = match self.session.as_ref().map(|s| &s.activity) {
            Some(Activity::Target { lost, .. }) => *lost,
            Some(Activity::Behind) => false,
            // An Outdated Secondary (its own acknowledged writes lost, see
            // `lost_acked`) that a Primary's new generation reached: it
            // received every write of it, and the rest was just resynced.
            Some(_)
                if self.role == Role::Secondary
                    && self.disk == DiskState::Outdated
                    && current != self.gen.current
                    && self.primary_peer_current().is_some() =>
            {
                false
            }
            _ if current != self.gen.current => {
                // The source holds a generation this node was never made
                // the target of (a Primary that went Ahead and was demoted
                // before its peer fell Behind): it would wait for ever for
                // a state saying we hold it. The handshake decides again.
                return Err(format!(
                    "SyncDone for generation {current:x}, which this node (at {:x}) is not \
                     the target of: renegotiating",
                    self.gen.current
                ));
            }
            _ => {
                // We were in sync already (a resync of the Primary's own
                // bits): say so again, the source finishes on it.
                self.announce();
                return Ok(());
            }
        };
        // A full sync (a new or replaced disk) from a Secondary whose
        // disk is Outdated: the data is that node's, which lacks what its
        // Primary acknowledged after outdating it, so this node is
        // Outdated too (found by review, helper-79: made UpToDate, it was
        // promoted without `--force`, and its source, lifted on its word,
        // later too, over writes an Ahead Primary acknowledged before it
        // lost its disk; simulator seed 14000646).
        // So is a union on one generation from such a peer into a node that
        // was not UpToDate at the handshake (review, helper-97: a Consistent
        // or Outdated node took the blocks of a peer pinned Outdated for the
        // writes it had answered and lost with its disk, and came out
        // UpToDate, `primary` without `--force` accepted over their loss;
        // without a bit to move, the two stayed as they were).
        // (Both rules: the data is the source's, not this node's own kept
        // outside the blocks that moved.)
        let took_sources = |s: &super::session::Session| {
            self.full_sync != 0 || s.hello_disk != DiskState::UpToDate
        };
        let from_outdated = self.session.as_ref().is_some_and(|s| {
            s.peer.disk == DiskState::Outdated && s.peer.role == Role::Secondary && took_sources(s)
        });
        // A sync from a Consistent peer (protocol A: a Secondary that lost
        // its Primary, and may lack writes that Primary answered alone)
        // leaves this node holding that peer's data: Consistent too, unless
        // this node was UpToDate itself and kept its own data outside the
        // blocks that moved (a union on one generation, the source ranked
        // first because this node lost writes it had received, before it
        // answered any of its own). Made UpToDate, a node whose disk was
        // replaced after it answered writes as a protocol-A Primary took
        // `primary` without `--force` over their loss (review: the open
        // question of helper-93's course, a source left Consistent beside
        // an UpToDate target).
        let from_consistent = self
            .session
            .as_ref()
            .is_some_and(|s| s.peer.disk == DiskState::Consistent && took_sources(s));
        self.gen.synced_to(current);
        self.full_sync = 0;
        // A rebuild completed: the next failure retries at once.
        self.rebuild_completed();
        // The data is the source's now.
        self.lost = crate::protocol::wire::Lost::None;
        let pin = (lost || self.lost_pinned()) && self.cfg.plant != Plant::ForgetLost;
        self.lost_acked = if pin { current } else { 0 };
        // (A source that is Primary on this very generation already made
        // it the truth.)
        if let Some(primary) = self.primary_peer_current() {
            self.unpin_for_primary_peer(primary);
        }
        if self.lost_pinned() {
            // Writes this node acknowledged before its disk failed are not
            // in the data it now holds: it must not be promoted (nor vouch
            // to the witness for its peer) until an operator accepts that.
            self.disk = DiskState::Outdated;
            self.error(
                "resync complete, but the peer's data is older than writes this node \
                 acknowledged before its disk failed: those writes are lost; Outdated until \
                 `primary --force` on a node accepts the loss"
                    .into(),
            );
        } else if from_outdated {
            self.disk = DiskState::Outdated;
            self.error(
                "resync complete from an Outdated peer: Outdated too (writes its Primary \
                 acknowledged after outdating it are on neither node; `primary --force` on a \
                 node accepts that)"
                    .into(),
            );
        } else if from_consistent {
            self.disk = DiskState::Consistent;
            self.error(
                "resync complete from a Consistent peer: Consistent too (writes its protocol-A \
                 Primary answered before the two parted may be on neither node; `primary --force` \
                 on a node accepts that)"
                    .into(),
            );
        } else {
            tracing::info!("resync complete (SyncTarget): UpToDate");
            self.disk = DiskState::UpToDate;
        }
        self.dirty.clear();
        self.p.all_pages_dirty(&self.dirty);
        if let Some(s) = self.session.as_mut() {
            s.activity = super::session::Activity::Idle;
        }
        // The State that tells the source goes out when the record is
        // durable (`meta_saved`).
        Ok(())
    }

    /// SyncSource: the target holds our generation.
    pub(crate) fn sync_finished_source(&mut self, peer_disk: DiskState) {
        tracing::info!(remaining = self.dirty.bytes(), "resync finished");
        self.full_sync = 0;
        // The peer holds our data now: whatever we lost, it lacks too.
        self.lost = crate::protocol::wire::Lost::None;
        // It holds our generation too: what goes on without it from now
        // (Ahead again in this session) is a new one, as after a session
        // that ends once the SyncDone went out (`lose_session`). With
        // blocks still marked the bitmap's base stays, and `diverge` would
        // otherwise take this for the separation it already numbered
        // (review: writes Ahead in a generation the peer holds without
        // them).
        self.separated = false;
        if self.disk == DiskState::Outdated
            && !self.lost_pinned()
            && (peer_disk == DiskState::UpToDate || self.cfg.plant == Plant::LiftOutdatedSource)
        {
            // An outdated Secondary that was the better side of a union
            // resync on its generation (its Primary lost its page cache):
            // both hold its data now. Only on the target's word that it is
            // UpToDate: a target rebuilt after it lost writes it had
            // acknowledged (a Primary that wrote alone after outdating us,
            // then lost its disk) stays Outdated, and so must we, who lack
            // them too (found by review: made UpToDate, this node was
            // promoted without `--force` over the lost writes).
            tracing::info!("the peer holds our data: UpToDate");
            self.disk = DiskState::UpToDate;
        }
        if self.disk == DiskState::Consistent
            && self.role == Role::Secondary
            && peer_disk == DiskState::UpToDate
        {
            // A protocol-A Secondary left Consistent by its Primary's loss,
            // the source of a union resync on one generation into that
            // Primary (ranked below: it lost writes it had received, and
            // answered none of its own since): the two hold one data, and
            // the target, UpToDate before and after, says nothing it
            // answered is missing from it. (A target that was not UpToDate
            // before, or took a full sync, stays Consistent: see
            // `on_sync_done`.) Before, this node stayed Consistent beside an
            // UpToDate peer holding the very same data (review: the killed
            // course of `a_link_while_a_promoted_nodes_peer_writes_are_queued_waits_for_them`).
            tracing::info!("the peer holds our data and is UpToDate: UpToDate");
            self.disk = DiskState::UpToDate;
        }
        if self.dirty.bytes() == 0 {
            let current = self.gen.current;
            self.gen.synced_to(current);
            self.p.al_trim_wanted = true;
        }
    }
}
