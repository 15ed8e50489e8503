//! The operator's verbs (control socket): `primary`, `secondary`,
//! `connect`/`disconnect`, `discard-my-data`, `verify`.

use super::*;

/// How long `secondary` waits for NBD clients that are leaving
/// ([`Node::demote_when_clients_left`]).
pub const CLIENTS_LEAVING: Duration = Duration::from_secs(1);

/// Where a `primary` that gave up waiting for its record left the node
/// (a save may still be in flight, and land: said, so that the operator
/// knows what is final on disk; review, helper-161).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GaveUp {
    /// A promotion that declared nothing: its record may land, and a
    /// process that stops before its next save starts on it (Secondary,
    /// with the promotion's time).
    Plain,
    /// A `--force` whose first record was not durable: undone, and a
    /// start rolls that record back should it land (`core/declared.rs`).
    ForceUndone,
    /// A `--force` whose first record is durable and whose second is in
    /// flight: the force stands (never undone past its first record).
    ForceConfirming,
    /// The same on a node with a controller: the grant, used for nothing
    /// (no write is admitted before the second record), goes back to the
    /// witness as unused, which undoes the claim (`core::tests::ctl`
    /// `a_force_given_up_while_confirming_is_given_back_and_the_peer_keeps_its_write`).
    ForceConfirmingControlled,
}

impl GaveUp {
    /// `in_flight`: the wait timed out, its save may still land; else
    /// the save failed (a full volume) and lands never (a failed save is
    /// not in flight: before, `primary` on a full volume said it might
    /// land; review, helper-162, `tests/disk_errors.rs`
    /// `primary_on_a_full_metadata_volume_fails_naming_the_file_and_stays_secondary`).
    fn says(self, in_flight: bool) -> Option<&'static str> {
        Some(match (self, in_flight) {
            (GaveUp::Plain, true) => {
                "that save is still in flight: should it land and this process stop before its \
                 next save, the node starts on the promotion's record (check `status` after a \
                 restart)"
            }
            (GaveUp::Plain, false) => return None,
            (GaveUp::ForceUndone, true) => {
                "the force is undone: the disk is as its record said before it (should the \
                 save in flight land, a start still takes the record before the force)"
            }
            (GaveUp::ForceUndone, false) => {
                "the force is undone: the disk is as its record said before it"
            }
            (GaveUp::ForceConfirming, true) => {
                "the first of the force's two records is saved and the one confirming it is \
                 still in flight: the force stands (the disk stays as forced, UpToDate on a \
                 generation of its own); should this process stop before that save lands, the \
                 node starts on the record before the force"
            }
            (GaveUp::ForceConfirming, false) => {
                "the first of the force's two records is saved and the one confirming it is \
                 not (tried again each second): the force stands (the disk stays as forced, \
                 UpToDate on a generation of its own); should this process stop before that \
                 save, the node starts on the record before the force"
            }
            (GaveUp::ForceConfirmingControlled, _) => {
                "the first of the force's two records is saved, the one confirming it is not: \
                 the disk stays as forced, but the witness gets its grant back unused and \
                 counts this node outdated again, so its controller does not promote it; the \
                 peer, back, keeps its data and this node takes it (should this process stop \
                 before that save, the node starts on the record before the force)"
            }
        })
    }
}

impl Node {
    /// Runs `f` on the core and performs what it asks.
    pub(super) fn with_core<T>(&self, f: impl FnOnce(&mut Core, Duration) -> T) -> T {
        let mut sh = self.lock();
        let now = self.now();
        // The core learns the time first: a verb stamps what it sends with
        // the core's clock, which the 20 ms timer task otherwise moves.
        sh.core.set_clock(now);
        let r = f(&mut sh.core, now);
        self.drain(&mut sh);
        r
    }

    /// `primary`. On a connected node the peer is asked first
    /// (`core/promotion.rs`): waits for its answer, at most `timeout` and
    /// a second (then the ask is withdrawn: a late grant changes nothing).
    /// Answered once the record saying this node is Primary is saved
    /// ([`Node::promotion_durable`]).
    /// A node already Primary answers at once, unless what a `primary
    /// --force` declared is not saved yet (`core/declared.rs`): then this
    /// verb waits for that record as the first one does. (Before, a second
    /// `primary --force`, or a retry after the client gave up, answered OK
    /// while the first still waited; that one then failed and undid the
    /// force: review, helper-149, `node::tests`
    /// `a_second_primary_force_is_not_answered_before_the_first_ones_record`.)
    pub async fn promote(&self, force: bool) -> Result<(), Refused> {
        let (since, was, unsaved) =
            self.with_core(|c, now| (now, c.role(), c.declaration_unsaved()));
        self.promote_asked(force).await?;
        if was == Role::Primary && !unsaved {
            return Ok(());
        }
        self.promotion_durable(since).await
    }

    /// A promotion this verb made stands once the record that says so is
    /// durable. If the save fails (a full metadata volume: ENOSPC), or
    /// does not end within `timeout` and a second (a disk that hangs),
    /// the verb fails and the node is demoted again, as `secondary` (with
    /// a controller, `secondary --force`) would: it is not Primary. (As
    /// `drbdadm primary` fails when DRBD cannot write its meta data.
    /// Before, `primary` answered OK on a full volume.) What `--force`
    /// declared of the disk (UpToDate, a generation of its own) is undone
    /// with it (`core/declared.rs`): the disk is as its saved record says.
    /// (Before, it stayed and was saved once there was room: the node
    /// became its peer's sync source with data the operator was told had
    /// not been promoted; review, helper-146.)
    async fn promotion_durable(&self, since: Duration) -> Result<(), Refused> {
        let wait = self.res.timeout + Duration::from_secs(1);
        let mut deadline = tokio::time::Instant::now() + wait;
        // (A forced failed disk's record waits for its bitmap, every block
        // marked: while pages are saved the wait goes on.)
        let mut pages_left = None;
        loop {
            let why = {
                let sh = self.lock();
                let left = sh.core.record_waits_for_pages();
                if left.is_some_and(|n| pages_left.is_none_or(|was| n < was)) {
                    pages_left = left;
                    deadline = tokio::time::Instant::now() + wait;
                }
                match sh.core.promotion_saved(since) {
                    // (Deposed meanwhile, say: the promotion did not
                    // stand. Before, answered OK; review, helper-146.)
                    // (Its record may have landed in the moment before a
                    // `secondary --force` or a deposition ended: the
                    // promotion stood, and is over; review, helper-152.)
                    Ok(true) if sh.core.role() != Role::Primary => {
                        return Err(Refused(
                            "was Primary (its record saved), then demoted again before this \
                             answer (see `status`: last_error, controller.last_refusal)"
                                .into(),
                        ))
                    }
                    _ if sh.core.role() != Role::Primary => {
                        return Err(Refused(
                            "demoted again before the record saying it is Primary was saved \
                             (see `status`: last_error, controller.last_refusal)"
                                .into(),
                        ))
                    }
                    Ok(true) => return Ok(()),
                    Err(why) => Some(why),
                    Ok(false) => None,
                }
            };
            let (why, in_flight) = match why {
                Some(why) => (why, false),
                None if tokio::time::Instant::now() > deadline => (
                    format!(
                        "the metadata record saying this node is Primary was not saved within \
                         {wait:?} (its disk does not answer?)"
                    ),
                    true,
                ),
                None => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
            };
            // (Asked again under the lock that abandons: a record that
            // landed since the look above makes the promotion stand, writes
            // may have been answered on it; before, `primary` then said
            // "demoted again" of a node that stayed Primary; review,
            // helper-152.)
            let gave_up = self.with_core(|c, _| {
                if c.role() == Role::Primary && c.promotion_saved(since) == Ok(true) {
                    return None;
                }
                let was = if c.declaration_confirming() && c.has_controller() {
                    GaveUp::ForceConfirmingControlled
                } else if c.declaration_confirming() {
                    GaveUp::ForceConfirming
                } else if c.declaration_unsaved() {
                    GaveUp::ForceUndone
                } else {
                    GaveUp::Plain
                };
                c.abandon_promotion();
                Some(was)
            });
            self.changed.notify_waiters();
            let Some(gave_up) = gave_up else { return Ok(()) };
            let why = match gave_up.says(in_flight) {
                None => why,
                Some(says) => format!("{why}; {says}"),
            };
            tracing::error!("primary: {why}: demoted again, not Primary");
            return Err(Refused(format!("{why}: not Primary (demoted again)")));
        }
    }

    async fn promote_asked(&self, force: bool) -> Result<(), Refused> {
        let wait = self.res.timeout + Duration::from_secs(1);
        let deadline = tokio::time::Instant::now() + wait;
        // A link in its handshake first says what the peer is; a
        // promotion already being asked (another `primary` at once) ends
        // first, and this one then answers as the node is (before, it was
        // refused though the node became Primary: found by review).
        // The wait's end and the promotion under one lock: two `primary`
        // at once both saw no ask in flight, and the second was refused
        // (CI: "a promotion is already being asked of the peer").
        let (r, ask) = loop {
            let late = tokio::time::Instant::now() >= deadline;
            let done = self.with_core(|c, _| {
                let busy = c.handshaking() || c.promotion_asked().is_some();
                (late || !busy).then(|| (c.promote(force, wall_ms()), c.promotion_asked()))
            });
            if let Some(done) = done {
                break done;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
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

    /// `secondary`. Without a controller, refused while NBD clients that
    /// opened the export read-write are connected: their writes would
    /// fail from then on, and a file system mounted on it aborts its
    /// journal (found by helper-155: ext4 on a's export, `secondary` on a
    /// answered 0). DRBD refuses the same ("held open"). `secondary
    /// --force` demotes all the same. (With a controller, `secondary`
    /// hands over: `on_demote` unmounts before the role changes.)
    pub fn demote(&self) -> Result<(), Refused> {
        let writers = self.nbd_writers.load(Ordering::SeqCst);
        let r = self.with_core(|c, _| {
            if writers > 0 && c.role() == Role::Primary && !c.has_controller() {
                return Err(Refused(format!(
                    "{writers} NBD connection(s) have this Primary's export open for writing (a \
                     mounted file system?): as Secondary their writes would fail; unmount or \
                     disconnect them first, or `secondary --force`"
                )));
            }
            c.demote()
        });
        self.changed.notify_waiters();
        r
    }

    /// [`Node::demote`] once the NBD clients that are leaving have left:
    /// it waits up to [`CLIENTS_LEAVING`] for the count of read-write
    /// clients to reach zero. A client that sent its disconnect and
    /// closed (`qemu-io` exited, `nbdfuse` unmounted) is counted until
    /// its connection's thread has finished its requests and its writer,
    /// a few milliseconds on: a script's `secondary` right after was
    /// refused (CI, `split_brain_is_detected_and_resolved_by_discard_my_data`:
    /// refused 0.3 ms before the connection closed). A client that stays
    /// (a mounted file system) is refused as before, a second later.
    pub async fn demote_when_clients_left(&self) -> Result<(), Refused> {
        let deadline = tokio::time::Instant::now() + CLIENTS_LEAVING;
        while self.nbd_writers.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.demote()
    }

    /// `secondary --force` (and `down`): demoted even where `secondary`
    /// is refused.
    pub fn demote_forced(&self) {
        self.with_core(|c, _| c.demote_forced());
        self.changed.notify_waiters();
    }

    pub fn set_want_connected(&self, want: bool) {
        self.with_core(|c, _| if want { c.connect() } else { c.disconnect() });
        self.changed.notify_waiters();
    }

    /// `disconnect`, answered once the session has ended: a Primary's ends
    /// when its Secondary confirms it is Outdated, or after
    /// `core::session::outdate_wait` (2 s at most), as `drbdadm
    /// disconnect` returns once disconnected.
    pub async fn disconnect(&self) {
        self.set_want_connected(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while self.lock().core.session_id().is_some() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn discard_my_data(&self) -> Result<(), Refused> {
        let r = self.with_core(|c, _| c.discard_my_data());
        self.changed.notify_waiters();
        r
    }

    pub fn start_verify(&self) -> Result<(), Refused> {
        self.with_core(|c, _| c.verify())
    }
}
