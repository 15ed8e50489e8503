//! The operator's verbs as the core takes them: `primary [--force]`,
//! `secondary`, `connect`, `disconnect`, `discard-my-data`, `verify`
//! (`primary` on a connected node asks the peer first: [`super::promotion`]).

use super::*;

impl Core {
    /// `primary [--force]` (`wall_ms`: the wall clock, for split-brain policies).
    pub fn promote(&mut self, force: bool, wall_ms: u64) -> Result<(), Refused> {
        if self.ctl.is_some() {
            if !force {
                return Err(Refused(
                    "the failover controller decides which node is Primary \
                     (`secondary` on the Primary hands over; `primary --force` overrides)"
                        .into(),
                ));
            }
            if self.role == Role::Primary {
                return Ok(());
            }
            // Not connected to a Secondary: the witness grants it first
            // (`quorum.rs`).
            let connected = self.session.as_ref().is_some_and(|s| {
                s.phase == session::Phase::Running && s.peer.role == Role::Secondary
            });
            if !connected {
                return self.ask_witness_forced(wall_ms);
            }
            // Forced beside a connected Secondary (its heartbeats give
            // quorum): the disk is declared UpToDate, the hooks run once
            // its record is saved; the witness is told at the next renewal
            // (or deposes us).
            let was = self.role;
            self.promote_inner(true, wall_ms)?;
            if was != Role::Primary {
                self.owe_promoted_hook();
            }
            return Ok(());
        }
        if self.role == Role::Primary {
            return Ok(());
        }
        // A node that may lack writes it confirmed to its peer and has not
        // met it since (`quorum.rs` `lost_since_synced`; the controller's
        // path checks it where the witness's grant arrives): promoted, the
        // service would run without them, and the resync from its new
        // generation would carry its activity log's extents over the
        // peer's copies (a known limit until 2026-12-05). DRBD's
        // Consistent disk after a crash needs `--force` the same way.
        if !force && self.held_back_by_loss() && self.cfg.plant != Plant::PromoteAfterLoss {
            return Err(Refused(format!(
                "this node may lack writes it confirmed to its peer (its page cache was lost, or \
                 writes it had received were not written) and has not met {} since: `connect` and \
                 let the resync bring them back first, or `primary --force` to accept the loss",
                self.cfg.peer
            )));
        }
        // Connected: the peer agrees first (`promotion.rs`). Ok here means
        // asked; `promotion_asked` and `promotion_answer` say the rest.
        if self.session.is_some() && self.cfg.plant != Plant::PromoteWithoutAsking {
            return self.ask_promotion(force, wall_ms);
        }
        self.promote_inner(force, wall_ms)
    }

    /// A Secondary's data stops being current (its Primary's graceful
    /// disconnect): an UpToDate or Consistent disk becomes Outdated, saved
    /// with the next metadata update.
    pub(super) fn outdate(&mut self, why: &str) -> bool {
        let current = matches!(self.disk, DiskState::UpToDate | DiskState::Consistent);
        if current {
            self.disk = DiskState::Outdated;
            tracing::warn!(
                "{why}: disk Outdated (the Primary's next writes will not be here; `connect` \
                 resyncs it, `primary --force` promotes it as it is)"
            );
        }
        current
    }

    /// Why this node may not become Primary now, if it may not. `asking`:
    /// the peer is about to be asked (`promotion.rs`), and its own answer
    /// says whether it is Primary (what this node last heard of its role
    /// may be a moment old: a `secondary` there just before).
    pub(super) fn promotion_refused(&self, force: bool, asking: bool) -> Result<(), Refused> {
        if let Some(s) = &self.session {
            if s.phase == Phase::Running && s.peer.role == Role::Primary && !asking {
                return Err(Refused(format!("peer {} is Primary; demote it first", self.cfg.peer)));
            }
            if s.peer_promoting {
                return Err(Refused(format!("peer {} is becoming Primary", self.cfg.peer)));
            }
            // Forcing a disk that is not UpToDate while the peer holds
            // UpToDate data would make this one the truth and replace the
            // peer's by a full sync: refused (found by review: an
            // Inconsistent SyncTarget forced so overwrote what the pair
            // had acknowledged). Disconnected, it is the operator's choice
            // and the next handshake finds a split brain.
            if force
                && s.phase == Phase::Running
                && self.disk != DiskState::UpToDate
                && s.peer.disk == DiskState::UpToDate
            {
                return Err(Refused(format!(
                    "peer {peer} holds UpToDate data and this disk is {:?}: `primary --force` \
                     here would replace {peer}'s data by a full sync from this one (make \
                     {peer} Primary instead, or `disconnect` first to declare this node's \
                     data the truth)",
                    self.disk,
                    peer = self.cfg.peer
                )));
            }
        }
        // A Failed disk may be declared good only by force (a disk file
        // recreated by the operator to start over, or one whose error was
        // transient and that holds the only copy of what was acknowledged).
        if self.disk == DiskState::Diskless || (self.disk == DiskState::Failed && !force) {
            return Err(Refused(format!(
                "disk is {:?}: it cannot become Primary (it takes a full sync from its peer \
                 at connect; `primary --force` declares its data good)",
                self.disk
            )));
        }
        if self.disk != DiskState::UpToDate && !force {
            return Err(Refused(format!(
                "disk is {:?}; only an UpToDate disk can become Primary \
                 (primary --force declares this node's data UpToDate)",
                self.disk
            )));
        }
        Ok(())
    }

    pub(crate) fn promote_inner(&mut self, force: bool, wall_ms: u64) -> Result<(), Refused> {
        self.promote_as(force, false, wall_ms)
    }

    /// [`Core::promote_inner`]; `account`: the account the promotion
    /// replaces is kept whatever the disk (an operator's forced claim at
    /// the witness, `quorum.rs` `claimed`), so that it is undone with the
    /// witness's record if its record cannot be saved.
    pub(crate) fn promote_as(
        &mut self,
        force: bool,
        account: bool,
        wall_ms: u64,
    ) -> Result<(), Refused> {
        if self.role == Role::Primary {
            return Ok(());
        }
        self.promotion_refused(force, false)?;
        self.promoted_from = self.disk;
        let mut bounce = false;
        // Undone if its record cannot be saved (`declared.rs`): a disk
        // declared UpToDate, and a node forced past what held it back (a
        // lost cache beside writes it confirmed: a Primary clears
        // `received`; review, helper-149, `core::tests::ctl`
        // `a_failed_force_of_a_node_held_back_by_a_loss_leaves_it_held_back`).
        let declared = (self.disk != DiskState::UpToDate || self.lost_since_synced() || account)
            .then(|| self.declaring());
        if self.disk != DiskState::UpToDate {
            let was = self.disk;
            self.disk = DiskState::UpToDate;
            let id = self.random_id();
            self.gen.new_current(id);
            // The operator declared this data the truth, a generation of
            // its own. (Not an UpToDate disk forced: it keeps its
            // generation, and its peer's copies of what it lost with its
            // cache stay the ones to keep, found by review.)
            self.lost = Lost::None;
            // Data declared good here is no longer a part of any full sync:
            // none resumes into it.
            self.full_sync = 0;
            if matches!(was, DiskState::Inconsistent | DiskState::Failed) {
                self.forced_unmapped();
            }
            bounce = self.session.is_some();
        } else if self.gen.current == NEVER_SYNCED {
            let id = self.random_id();
            self.gen.new_current(id);
        }
        // A pending `discard-my-data` (or a deposition's) gave up the data
        // as it stood then; what this node acknowledges as Primary from now
        // on was never given up (simulator seed 203066 at 5,000 steps: a
        // node promoted with the flag set was later overwritten in full).
        self.discard = false;
        self.ctl_promoted();
        self.role = Role::Primary;
        // Later than the peer's reigns it heard of, and than this node's
        // own last one: a promotion's record is known by its time (its
        // hooks, `primary`'s answer, a force's undo), and one equal to the
        // record on disk passed for saved at once (a clock stepped back,
        // or a last reign at the peer's time + 1 by a peer's clock ahead;
        // review, helper-156).
        let after = self.peer_promoted_at.max(self.promoted_at).saturating_add(1);
        self.reign_from(wall_ms.max(after));
        if let Some(d) = declared {
            self.declare(d);
        }
        if let Some(s) = self.session.as_mut().filter(|s| s.phase == session::Phase::Running) {
            s.reigned = Some(self.promoted_at);
            // (What the peer saved of an earlier reign was cleared when it
            // heard this node demote.)
            s.peer_behind = session::PeerBehind::Unknown { from: s.next_seq };
        }
        tracing::info!(force, "promoted to Primary");
        if bounce {
            // The declared data is a new generation: let the handshake
            // decide again (a full sync to the peer).
            if let Some(sid) = self.session_id() {
                self.close_session(sid, "primary --force: renegotiating with the peer".into());
            }
        } else {
            self.announce();
        }
        self.pump();
        Ok(())
    }

    /// `primary --force` on a partly synced (or failed) disk, its new
    /// generation started: no bitmap says where this data differs from
    /// the peer's, so the peer takes all of it. Connected, the peer agreed
    /// to this: its generation is one ours supersedes, not a split brain
    /// or an unrelated device.
    ///
    /// The peer is named by the bitmap's base with every block marked
    /// (the generation this data parted from the peer's, as
    /// [`GenIds::new_current`] keeps it, or the connected peer's): a base
    /// outlives the generations this node then starts alone (each write
    /// alone after a restart starts one), where the two-deep history
    /// forgets it. (Before, with no base, a node forced after its disk
    /// failed, that wrote alone and restarted, met its peer as an
    /// unrelated device.) This data does not descend from that base: the
    /// record says so (`forced_base`), and the hello, so that neither
    /// node takes it for data that grew from the peer's. The record naming that base is saved only once
    /// every marked page is (`PersistState::record_after_bitmap`): the
    /// bitmap it had is no account of anything, and a crash in between
    /// would leave a record claiming the old bits hold every difference.
    fn forced_unmapped(&mut self) {
        let peer =
            self.session.as_ref().map(|s| s.peer.current).filter(|&g| g != NEVER_SYNCED && g != 0);
        if let Some(peer) = peer {
            if !self.gen.history.contains(&peer) {
                self.gen.history = [peer, self.gen.history[0]];
            }
            self.gen.bitmap = peer;
        }
        if self.gen.bitmap == 0 {
            // Never synced (nothing to name): the peer is unrelated, or
            // meets a fresh generation it takes in full.
            return;
        }
        self.forced_base = self.gen.bitmap;
        // A bitmap save that failed before (a full metadata volume, room
        // freed since) is tried again now, not at the next retry: its old
        // error failed this force at once (review, helper-146).
        self.p.bitmap_failed = None;
        self.dirty.mark_all();
        self.p.all_pages_dirty(&self.dirty);
        if self.cfg.plant != Plant::ForcedRecordBeforeBitmap {
            self.p.record_after_bitmap = true;
        }
    }

    /// `secondary`.
    pub fn demote(&mut self) -> Result<(), Refused> {
        if self.role == Role::Secondary {
            return Ok(());
        }
        if self.ctl.is_some() {
            // on_demote runs first; the role changes when it is done.
            let r = self.operator_demote();
            self.pump();
            return r;
        }
        self.demote_now();
        Ok(())
    }

    /// `secondary --force`, and `down`: a Primary demotes even where
    /// `secondary` is refused (with a controller: no peer could take over;
    /// nobody is Primary until the controller promotes this node again).
    pub fn demote_forced(&mut self) {
        if self.role == Role::Secondary {
            return;
        }
        if self.ctl.is_some() {
            self.forced_demote();
            self.pump();
            return;
        }
        self.demote_now();
    }

    fn demote_now(&mut self) {
        self.role = Role::Secondary;
        tracing::info!("demoted to Secondary");
        self.announce();
        self.resync_after_demotion();
        self.pump();
    }

    /// A Primary demoted while it resyncs its own out-of-sync blocks (a
    /// peer's failed write, verify mismatches) to a peer that is not its
    /// SyncTarget: the peer takes resync chunks only from a Primary or its
    /// sync source, so the handshake decides again (as DRBD renegotiates
    /// a resync across a role change).
    pub(crate) fn resync_after_demotion(&mut self) {
        let source = self
            .session
            .as_ref()
            .filter(|s| matches!(s.activity, session::Activity::Source(_)))
            .map(|s| s.id);
        if let Some(sid) = source {
            self.close_session(sid, "demoted during a resync: renegotiating with the peer".into());
        }
    }

    /// `connect`.
    /// `connect`. On a disk whose rebuilds failed, the next one starts
    /// now (the operator fixed the disk: `rebuild_backoff`).
    pub fn connect(&mut self) {
        self.linking = Linking::Wanted;
        self.rebuild_retry_now();
    }

    /// `disconnect`: drops the link and stays StandAlone.
    ///
    /// `disconnect` on a Primary leaves its Secondary Outdated (as DRBD
    /// outdates the peer of a Primary's graceful disconnect): the Primary's
    /// writes from now on will not reach it, so promoting it takes
    /// `--force`. The Secondary is told first (`Message::Outdate`), and the
    /// session closes once it answers that its record says so
    /// (`Message::OutdateDone`), or after `session::outdate_wait` (a
    /// Secondary that crashed before saving it came back UpToDate: found
    /// by the simulator). `disconnect` on the Secondary, or a link that fails,
    /// leaves it as it was: its Primary may be dead, and disconnecting the
    /// survivor to promote it is the failover path (the failover
    /// controller's witness covers a Primary that runs on alone).
    pub fn disconnect(&mut self) {
        self.linking = Linking::StandAlone("StandAlone: disconnected by the operator");
        let now = self.now;
        if let Some(s) = self.session.as_mut().filter(|s| s.phase == Phase::Running) {
            if self.role == Role::Primary && s.peer.role == Role::Secondary {
                if s.outdating.is_none() {
                    s.outdating = Some(now);
                    self.send(Message::Outdate);
                }
                self.pump();
                return;
            }
        }
        if let Some(sid) = self.session_id() {
            self.close_session(sid, "disconnected by the operator".into());
        }
        self.pump();
    }

    /// `discard-my-data`: after a split brain, this Secondary gives up its
    /// changes and takes the peer's data by a full resync.
    pub fn discard_my_data(&mut self) -> Result<(), Refused> {
        if self.role != Role::Secondary {
            return Err(Refused(
                "only a Secondary can discard its data (`secondary` here first, then \
                 `discard-my-data`)"
                    .into(),
            ));
        }
        // Connected, there is no split brain and nothing to give up: the
        // flag would wait for some later handshake, and meanwhile (with a
        // controller) keep this node from taking over from a Primary that
        // dies (found by review, helper-114).
        if self.session.as_ref().is_some_and(|s| s.phase == Phase::Running) {
            return Err(Refused(format!(
                "connected to {peer}: there is no split brain and nothing to discard \
                 (`discard-my-data` resolves a split brain); to repair this node's data \
                 from {peer}'s, run `verify`: the blocks that differ are resynced",
                peer = self.cfg.peer
            )));
        }
        self.discard = true;
        self.split_brain = false;
        self.linking = Linking::Wanted;
        tracing::warn!("discard-my-data: this node's changes will be overwritten by the peer");
        Ok(())
    }

    /// `verify`: online verify. On a Secondary whose peer is Primary, the
    /// Primary is asked to run it (it numbers the data).
    pub fn verify(&mut self) -> Result<(), Refused> {
        const APART: &str = "not connected to the peer (verify compares the two nodes' data: \
                             `connect` first, and wait for Connected)";
        let Some(s) = &self.session else { return Err(Refused(APART.into())) };
        if s.phase != Phase::Running {
            return Err(Refused(APART.into()));
        }
        if s.repl() != Replication::Established {
            return Err(Refused(format!("the replication is {}, not Established", s.repl())));
        }
        if self.role == Role::Secondary && s.peer.role == Role::Primary {
            self.send(Message::VerifyRequest);
            return Ok(());
        }
        self.start_verify();
        self.pump();
        Ok(())
    }
}
