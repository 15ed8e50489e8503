//! What the core says of itself: its states, what it accepts, its
//! status and the metadata record it should have on disk.

use std::borrow::Cow;

use super::*;

impl Core {
    pub fn role(&self) -> Role {
        self.role
    }

    pub fn disk(&self) -> DiskState {
        self.disk
    }

    /// The peer's writes received here and not yet written (queued or
    /// with the store).
    pub fn unwritten_peer_writes(&self) -> usize {
        self.unwritten_peer_writes
    }

    /// The disk state this node's last promotion started from: not
    /// UpToDate, it declared the data good (forced, or the controller
    /// taking over a protocol-A disk left Consistent by its Primary's
    /// loss, which may happen within the grant's own event).
    pub fn promoted_from(&self) -> DiskState {
        self.promoted_from
    }

    pub fn gen(&self) -> GenIds {
        self.gen
    }

    /// This node's last promotion (ms since the epoch, raised past the
    /// peer's; 0: never).
    pub fn promoted_at(&self) -> u64 {
        self.promoted_at
    }

    /// The record naming this node's last promotion is durable.
    pub(crate) fn reign_saved(&self) -> bool {
        self.p
            .durable_meta
            .as_ref()
            .is_some_and(|m| m.promoted_at == self.promoted_at && m.pending.is_none())
    }

    /// A failover controller runs on this node (`[controller]`).
    pub fn has_controller(&self) -> bool {
        self.ctl.is_some()
    }

    /// Where the record that says this node is Primary (its last
    /// promotion's `promoted_at`) stands: `Ok(true)` once saved,
    /// `Ok(false)` while its save is to come, `Err(why)` when a metadata
    /// save issued at or after `since` (the core's clock) failed and it
    /// is not saved (`why` names the file and the system's text). The
    /// shell answers `primary` by it.
    pub fn promotion_saved(&self, since: Duration) -> Result<bool, String> {
        let saved = self.reign_saved();
        match (self.p.meta_failed, self.p.bitmap_failed) {
            (Some(e), _) if !saved && self.p.meta_since >= since => {
                Err(format!("cannot save metadata {}: {}", self.meta_file(""), e.describe()))
            }
            // (The record of a forced failed disk waits for its bitmap.)
            (_, Some(e)) if !saved && self.p.record_after_bitmap => Err(format!(
                "cannot save the out-of-sync bitmap {}: {}",
                self.meta_file(".bitmap"),
                e.describe()
            )),
            _ => Ok(saved),
        }
    }

    /// Bitmap pages still to be saved before the metadata record may be
    /// (`primary --force` of a failed or partly synced disk marks every
    /// block; a large device's bitmap takes a while): `None` when the
    /// record waits for no bitmap. The shell's `primary` waits as long as
    /// this goes down.
    pub fn record_waits_for_pages(&self) -> Option<usize> {
        self.p
            .record_after_bitmap
            .then(|| self.p.dirty_pages.len() + usize::from(self.p.bitmap_saving))
    }

    pub fn connection(&self) -> Connection {
        match &self.session {
            Some(s) if s.phase == Phase::Running => Connection::Connected,
            _ if self.linking != Linking::Wanted => Connection::StandAlone,
            _ => Connection::Connecting,
        }
    }

    pub fn replication(&self) -> Replication {
        match &self.session {
            Some(s) if s.phase == Phase::Running => s.repl(),
            _ => Replication::Off,
        }
    }

    /// The node wants a link to its peer (see [`Core::link_refused`]).
    pub fn wants_link(&self) -> bool {
        self.link_refused().is_none()
    }

    /// Why the node takes no link to its peer now, if it takes none:
    /// StandAlone, or a detached disk that still holds operations it never
    /// completed (a disk that stopped answering takes no sync until they
    /// return: each sync would time out on them again at once), or a disk
    /// whose rebuilds failed waits for the next one's time
    /// (`rebuild_backoff`: the reason says when).
    pub fn link_refused(&self) -> Option<Cow<'static, str>> {
        if let Linking::StandAlone(why) = self.linking {
            Some(why.into())
        } else if self.disk_hung() {
            Some("the local disk is detached with operations it never completed".into())
        } else if let Some(why) = self.rebuild_wait() {
            Some(why.into())
        } else if self.a_primary_with_peer_writes_unwritten() && self.disk_usable() {
            // A handshake now would rank this Primary the source (in memory
            // it lost nothing) and make the peer, which holds those writes,
            // its Inconsistent target: this process killed before they land,
            // the peer was unusable and this node's older copies overwrote
            // them on both disks (review, helper-93; `core::tests::protocol_a`
            // `a_link_while_a_promoted_nodes_peer_writes_are_queued_waits_for_them`).
            // They land in moments; the link is taken after. (Not on a
            // detached disk, which is no source: a write it never completes
            // would refuse the link for ever, with a reason never true;
            // review, helper-94.)
            Some(
                "writes received from the peer before this node's promotion are still being \
                 written here (protocol A): the link waits for them"
                    .into(),
            )
        } else if self.declaration_unsaved() {
            // `primary --force` of a disk that was not UpToDate: its new
            // generation is not saved yet (a failed or partly synced
            // disk's record waits for the marked bitmap, and names its
            // forced base). A handshake now
            // would make an UpToDate peer this node's Inconsistent target
            // on a generation a crash here forgets: back on its old
            // account, neither disk was usable (review, helper-145;
            // `core::tests::failed_disk`
            // `a_forced_disk_whose_record_waits_does_not_make_its_peer_inconsistent`;
            // any forced disk's record that cannot be saved says so here,
            // not as a handshake waiting for ever:
            // `a_forced_node_whose_record_cannot_be_saved_says_why_it_takes_no_link`).
            // The link is taken once the record is saved, or the force is
            // undone (`declared.rs`).
            // (With a controller, plain `secondary` is refused here: the
            // peer, whose link this refuses, is not connected to take
            // over; review, helper-149, `core::tests::ctl`
            // `a_forced_primary_whose_record_cannot_be_saved_names_a_way_out_that_works`.)
            let undo = if self.ctl.is_some() { "secondary --force" } else { "secondary" };
            Some(match self.p.meta_failed.or(self.p.bitmap_failed) {
                // (Past its first record a force stands: `secondary` does
                // not undo it.)
                Some(e) if self.declaration_confirming() => format!(
                    "`primary --force` declared this node's data good, but the record \
                     confirming it cannot be saved ({}): the link waits for that save",
                    e.describe()
                )
                .into(),
                Some(e) => format!(
                    "`primary --force` declared this node's data good, but its metadata cannot \
                     be saved ({}): the link waits for that save (or for `{undo}`, which \
                     undoes the force)",
                    e.describe()
                )
                .into(),
                None => "`primary --force` is still saving this node's out-of-sync bitmap and \
                         record: the link waits for them"
                    .into(),
            })
        } else {
            None
        }
    }

    /// Session `sid` is in force and past its handshake.
    pub fn session_running(&self, sid: SessionId) -> bool {
        self.session.as_ref().is_some_and(|s| s.id == sid && s.phase == session::Phase::Running)
    }

    /// The session in force, if any (handshaking or running).
    pub fn session_id(&self) -> Option<SessionId> {
        self.session.as_ref().map(|s| s.id)
    }

    /// Accepts application writes now (Primary with a usable disk, and
    /// quorum when a controller runs).
    pub fn accepts_writes(&self) -> bool {
        self.role == Role::Primary && self.disk_usable() && self.has_quorum()
    }

    /// Whether reads may be served: the data here is current (never from
    /// an Inconsistent, Outdated or Failed disk).
    pub fn may_read(&self) -> Result<(), ReplyError> {
        match self.disk {
            DiskState::UpToDate | DiskState::Consistent => Ok(()),
            _ => Err(ReplyError::Io(IoError::EIO)),
        }
    }

    /// Whether a Primary's read now sees every write received from the
    /// peer, once the store operations issued so far are performed: false
    /// while received writes wait in the receive queue to be issued (for
    /// their activity-log extents or the metadata record). A Secondary
    /// promoted right after its link dropped may still hold such writes; a
    /// read before them would see older data, and the peer's write would
    /// land after it (`Node::readable` waits for this, then for the store
    /// lane). Once Primary, nothing more arrives from the peer's stream, so
    /// the wait ends. A Secondary's reads do not wait: its data moves with
    /// its peer's writes anyway, and while they stream in the queue may
    /// never be empty.
    pub fn reads_settled(&self) -> bool {
        self.role != Role::Primary
            || !self.peer_writes_queued()
            || self.cfg.plant == Plant::ReadsBeforeReceived
    }

    /// The out-of-sync bitmap in memory.
    pub fn dirty(&self) -> &Bitmap {
        &self.dirty
    }

    /// Extents durably in the activity log.
    pub fn al_extents(&self) -> impl Iterator<Item = u64> + '_ {
        self.al.durable.iter().copied()
    }

    /// Checks that what the core keeps to spare itself work agrees with
    /// the state it stands for (the simulator calls it after every step).
    pub fn check_caches(&self) -> Result<(), String> {
        if !self.maybe_lost {
            if let Some((req, _)) = self.pending.iter().find(|(_, p)| p.peer == PeerPart::Lost) {
                return Err(format!(
                    "request {req} lost its peer part but `maybe_lost` is clear: \
                     it would never be released"
                ));
            }
        }
        if !self.maybe_held {
            // After a step every operation that may be answered was: one
            // complete on both sides and still pending is held for quorum.
            let detached = self.answers_alone();
            // (Or it waits for this detached disk's record, whose save is
            // under way: its end, or its deadline, tries it again.)
            let record = detached
                && self.failed_record() == disk_timeout::FailedRecord::Saving
                && self.failed_record_deadline().is_some();
            if let Some((req, _)) =
                self.pending.iter().find(|(_, p)| p.decided(detached) && !record)
            {
                return Err(format!(
                    "request {req} is complete and unanswered but `maybe_held` is clear: \
                     it would never be answered"
                ));
            }
        }
        Ok(())
    }

    /// Application operations sent to the peer on the running session
    /// that it has not applied yet (protocol A answers writes before
    /// that: a planned stop waits for them, see `Node::demote_for_stop`).
    pub fn unconfirmed_writes(&self) -> usize {
        self.session.as_ref().filter(|s| s.phase == Phase::Running).map_or(0, |s| {
            s.out.values().filter(|o| matches!(o.kind, session::OutKind::App(_))).count()
        })
    }

    /// Adaptive mode: this node holds data its peer lacks (it is Ahead,
    /// or resyncs the blocks it marked then, or still has them marked),
    /// and the peer has not said it holds it all. A planned stop waits for
    /// that, as for protocol A's writes: without it the peer stays
    /// Outdated (or Inconsistent mid-resync), and only `primary --force`
    /// would promote it, losing those writes.
    ///
    /// Only with the peer connected: a Primary that wrote while its peer
    /// was away owes it nothing a stop could hand over (before, `down`
    /// then waited 3 s for a link; found by review).
    pub fn owes_peer(&self) -> bool {
        let Some(s) = self.session.as_ref().filter(|s| s.phase == Phase::Running) else {
            return false;
        };
        let marked_or_moving = self.dirty.bytes() > 0
            || matches!(s.activity, session::Activity::Ahead(_) | session::Activity::Source(_));
        self.adaptive() && marked_or_moving && !self.peer_in_sync()
    }

    /// The running session's peer said it is UpToDate (its State, sent
    /// once it took the SyncDone and saved itself so), nothing is marked
    /// out of sync and no resync is under way.
    pub fn peer_in_sync(&self) -> bool {
        self.dirty.bytes() == 0
            && self.session.as_ref().is_some_and(|s| {
                s.phase == Phase::Running
                    && matches!(s.activity, session::Activity::Idle)
                    && s.peer.disk == DiskState::UpToDate
            })
    }

    /// No I/O in flight, nothing waiting, no resync or verify under way.
    pub fn quiescent(&self) -> bool {
        self.app.is_empty()
            && self.probes.is_empty()
            && self.pending.is_empty()
            && self.incoming.is_empty()
            && self.applying == 0
            && self.ios.is_empty()
            && self.session.as_ref().is_none_or(|s| s.idle())
    }

    pub fn status(&self) -> CoreStatus {
        let s = self.session.as_ref().filter(|s| s.phase == Phase::Running);
        CoreStatus {
            role: self.role,
            disk: self.disk,
            connection: self.connection(),
            replication: self.replication(),
            peer_role: s.map(|s| s.peer.role),
            peer_disk: s.map(|s| {
                if self.role == Role::Primary
                    && self.dirty.bytes() > 0
                    && s.peer.disk == DiskState::UpToDate
                {
                    DiskState::Outdated
                } else {
                    s.peer.disk
                }
            }),
            out_of_sync_bytes: self.dirty.bytes(),
            split_brain: self.split_brain,
            lost_since_synced: self.lost_since_synced(),
            discard_pending: self.discard,
            rtt: s.and_then(|s| s.rtt),
            sync: s.and_then(|s| s.progress()),
            counters: self.counters,
            // (The bench's probes share the stream: counted in `in_flight`,
            // an idle device showed writes in flight while a bench ran;
            // README walk-through.)
            in_flight: s.map_or(0, |s| s.out.len() - s.probes_out),
            bench_in_flight: s.map_or(0, |s| s.probes_out),
            al_extents: self.al.durable.len(),
            // (While a failed rebuild's successor waits, that says why
            // and when.)
            last_error: self.rebuild_wait().or_else(|| {
                self.last_error
                    .clone()
                    .or_else(|| self.hook_error.as_ref().map(|(_, e)| e.clone()))
                    .or_else(|| self.disk_error.clone().filter(|_| self.disk == DiskState::Failed))
            }),
            gen: self.gen,
        }
    }
}
