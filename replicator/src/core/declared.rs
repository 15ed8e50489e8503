//! What `primary --force` declared of a disk that was not UpToDate (or of
//! a node held back by a lost cache, `quorum.rs` `lost_since_synced`),
//! until the record saying so is durable, and its undoing when that save
//! fails.
//!
//! `primary --force` on an Outdated, Consistent, Inconsistent or Failed
//! disk declares the data good: UpToDate, a generation of its own, every
//! block marked for a disk that was not a whole copy
//! (`verbs.rs` `promote_inner`). Nothing of that is true on disk until the
//! record saying it is saved, and nothing is written or acknowledged on it
//! before (`write.rs` `meta_wait`). When that save fails (a full metadata
//! volume) or hangs, `primary` fails and the node is demoted again
//! (`node/verbs.rs` `promotion_durable`). Before, what the force declared
//! stayed in memory: saved once there was room, the node became its
//! returning peer's sync source and overwrote the peer's data with the
//! data the operator was told had not been promoted (review, helper-146,
//! finding 4). Now a node that is Secondary again before the record was
//! saved (the failed `primary`, `secondary`, a deposition) gets back the
//! account the force replaced, as on disk: nothing was acknowledged on
//! the declared one.
//!
//! Its record is saved in two phases, so that a force undone in memory
//! never comes back at a restart. The first record says what the force
//! declared and holds the one it replaces ([`MetaRecord::pending`]): a
//! start that finds it takes the one held, the force unconfirmed. A
//! `primary` told its force failed (a hung save) may see that first
//! record land later, and its process stop before the save that undoes
//! it: before, it came back forced, UpToDate on a generation of its own,
//! and was its peer's sync source or discarded its peer's writes as the
//! younger Primary (review, helper-149 and helper-161; `core::tests::declared`).
//! Once the first record is durable and the force still wanted, the
//! second, confirmed, is saved: the promotion stands from then on, even
//! if the verb gives up waiting for it (it is never undone), and writes
//! are admitted once it is durable.

use super::*;

/// The account a forced promotion replaced, kept until its record is
/// durable (then the declaration stands) or the node is Secondary again
/// before (then it comes back).
#[derive(Debug, Clone)]
pub(crate) struct Declared {
    /// The promotion (`promoted_at`) whose record is awaited.
    promoted_at: u64,
    stage: Stage,
    /// The record a start would take were the force never saved: the one
    /// in memory before it, for a node that had saved none yet (else the
    /// one on disk, [`Core::declared_before`]).
    before: MetaRecord,
    disk: DiskState,
    gen: GenIds,
    fresh: bool,
    lost: Lost,
    full_sync: u64,
    forced_base: u64,
    discard: bool,
    separated: bool,
    unacked_current: Option<u64>,
    /// [`MetaRecord::received`](super::MetaRecord::received): a Primary
    /// with no peer writes pending clears it at once (`settle_record_flags`),
    /// and with [`Core::lost`] it holds back a node that may lack writes it
    /// confirmed (`quorum.rs` `lost_since_synced`). Not restored, the undone
    /// node was claimable again and its controller promoted it without its
    /// peer's acknowledged write (review, helper-149, `core::tests::ctl`
    /// `a_failed_force_of_a_consistent_node_held_back_by_a_loss_leaves_it_held_back`).
    received: bool,
}

/// Where a forced promotion's two records stand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The first record (the force, holding the record it replaces) is
    /// to be saved, or its save is in flight: undone if the node is
    /// Secondary again before it is durable.
    Pending,
    /// The `primary` that made it failed (`abandon_promotion`) before its
    /// first record was durable: undone at Secondary even if that record
    /// lands meanwhile (a start would not take it), and no record is
    /// saved nor write admitted until then. With a controller the role
    /// changes only after `on_demote`, and a save retried in that window
    /// (room freed) made the failed force stand: b's controller then
    /// promoted it without a's write (review, helper-149).
    Abandoned,
    /// The first record is durable: the second, which confirms the force,
    /// is to be saved or in flight. The force stands from here on (its
    /// record may land whatever the verb said); writes wait for it.
    Confirming,
}

impl Core {
    /// Called by `promote_inner` before a disk that is not UpToDate is
    /// declared so (or a held-back node forced): what it replaces.
    pub(crate) fn declaring(&self) -> Declared {
        Declared {
            promoted_at: 0,
            stage: Stage::Pending,
            before: self.meta_record(),
            disk: self.disk,
            gen: self.gen,
            fresh: self.fresh,
            lost: self.lost,
            full_sync: self.full_sync,
            forced_base: self.forced_base,
            discard: self.discard,
            separated: self.separated,
            unacked_current: self.unacked_current,
            received: self.received,
        }
    }

    /// Called by `promote_inner` once the promotion is numbered.
    pub(crate) fn declare(&mut self, mut d: Declared) {
        d.promoted_at = self.promoted_at;
        self.declared = Some(d);
    }

    /// A forced declaration whose record is not durable yet: a handshake
    /// now would rank this node on a generation a crash forgets (the peer
    /// made its Inconsistent target, left beside a disk back on its old
    /// account; `query.rs` `link_refused`).
    pub fn declaration_unsaved(&self) -> bool {
        self.declared.is_some()
    }

    /// The grant of this reign was used for nothing: a forced declaration
    /// whose record is not saved (no write is admitted before,
    /// `write.rs` `meta_wait`), or that failed and waits to be undone
    /// (none is admitted at all). The witness may undo its forced claim
    /// (`quorum.rs` `VoteRequest::unused`, `withdrawn`).
    /// (A declaration is settled once its second record is durable: no
    /// write is admitted before, [`Core::declared_unconfirmed`]. So a force
    /// given up while Confirming gives its grant back unused too: its disk
    /// stays as forced, the witness counts it outdated again, and the peer,
    /// back, is its sync source; `core::tests::ctl`
    /// `a_force_given_up_while_confirming_is_given_back_and_the_peer_keeps_its_write`.)
    pub(crate) fn grant_unused(&self) -> bool {
        self.declared.is_some()
    }

    /// A failed force waits to be undone (`abandon_promotion`): no record
    /// is saved (`persist.rs`) and no write admitted (`write.rs`) until then.
    pub(crate) fn declaration_abandoned(&self) -> bool {
        self.declared.as_ref().is_some_and(|d| d.stage == Stage::Abandoned)
    }

    /// The generation ids a forced declaration replaced, while it is
    /// unsettled: the simulator's checker learns which generation a force
    /// made (a force given up before its first record was durable must
    /// never come back).
    pub fn declared_over(&self) -> Option<GenIds> {
        self.declared.as_ref().map(|d| d.gen)
    }

    /// A forced promotion's second record is awaited: the force stands
    /// (its first record is durable), and the node may not be undone any
    /// more. What a `primary` that gives up waiting says.
    pub fn declaration_confirming(&self) -> bool {
        self.declared.as_ref().is_some_and(|d| d.stage == Stage::Confirming)
    }

    /// The record in memory is a forced promotion's first
    /// ([`MetaRecord::pending`]): no write may be admitted on it.
    pub(crate) fn declared_unconfirmed(&self) -> bool {
        self.declared.as_ref().is_some_and(|d| d.stage != Stage::Confirming)
    }

    /// What the record in memory holds as [`MetaRecord::pending`]: while
    /// the force is unconfirmed, the record a start would take were it
    /// never saved (the one on disk, or the one it holds; for a node that
    /// saved none, the one in memory before the force). The one on disk is
    /// that of the last save that failed, if one did since the last that
    /// succeeded: it may have landed (simulator seed 35411499: a record
    /// saying a replaced disk `Failed` failed with ENOSPC and landed; the
    /// force's first record held the one before it, UpToDate, and a start
    /// would have taken the blank disk for good data).
    pub(crate) fn declared_before(&self) -> Option<Box<MetaRecord>> {
        let d = self.declared.as_ref().filter(|d| d.stage != Stage::Confirming)?;
        let on_disk =
            self.p.failed_record.as_ref().map(MetaRecord::at_start).or(self.saved_record());
        Some(Box::new(on_disk.unwrap_or(&d.before).clone()))
    }

    /// `primary` failed because the record saying this node is Primary
    /// could not be saved: demoted again (as `secondary --force`), and
    /// what a force declared of the disk is undone once the node is
    /// Secondary (with a controller, after the demotion's hooks), even if
    /// that record lands meanwhile (the restored one is then saved over
    /// it): the operator was told the force failed.
    ///
    /// A force whose first record is durable is not undone: its second
    /// record may land at any time after (`Stage::Confirming`). The node
    /// is demoted, its disk as forced.
    pub fn abandon_promotion(&mut self) {
        if let Some(d) = self.declared.as_mut().filter(|d| d.stage == Stage::Pending) {
            d.stage = Stage::Abandoned;
        }
        self.demote_forced();
        self.pump();
    }

    /// Settles the declaration at each pump: confirming once its first
    /// record is durable, forgotten once its second is; undone once the
    /// node is Secondary before the first. (A Primary acknowledges nothing
    /// before the second, `write.rs` `meta_wait`: nothing answered rests
    /// on what is undone, nor on what a start rolls back.)
    pub(super) fn settle_declared(&mut self) {
        let Some(d) = &mut self.declared else { return };
        // A record confirming the force may name a later promotion: given
        // up while Confirming, the node was demoted on its forced disk and
        // `primary` again needs no `--force`; a second record that failed
        // (a full volume) is retried with the new time. Before, only the
        // force's own time counted, and the declaration never settled: the
        // link refused for ever (review, helper-162, `core::tests::declared`
        // `a_force_confirmed_by_a_later_promotions_record_settles`). Every
        // record before the force names an earlier time (`promote_as`).
        let saved = self.p.durable_meta.as_ref().filter(|m| match d.stage {
            Stage::Confirming => m.promoted_at >= d.promoted_at,
            _ => m.promoted_at == d.promoted_at,
        });
        match (d.stage, saved.map(|m| m.pending.is_some())) {
            (Stage::Pending, Some(true)) => {
                // (The second record is saved by `persist_pump`: the one
                // in memory no longer holds a pending one.)
                d.stage = Stage::Confirming;
                return;
            }
            (Stage::Confirming, Some(false)) => {
                self.declared = None;
                return;
            }
            (Stage::Confirming, _) => return,
            _ => {}
        }
        if self.role != Role::Secondary {
            return;
        }
        let Some(d) = self.declared.take() else { return };
        let declared = self.disk;
        // (A disk that failed again meanwhile stays Failed.)
        if self.disk == DiskState::UpToDate {
            self.disk = d.disk;
        }
        self.gen = d.gen;
        self.fresh = d.fresh;
        self.lost = d.lost;
        self.full_sync = d.full_sync;
        self.forced_base = d.forced_base;
        self.discard = d.discard;
        self.separated = d.separated;
        self.unacked_current = d.unacked_current;
        // (No peer write was taken in meanwhile: the link was refused.)
        self.received |= d.received;
        // The marks stay (more blocks to resync than needed, never fewer);
        // the record no longer waits for them.
        self.p.record_after_bitmap = false;
        tracing::warn!(
            was = ?declared,
            now = ?self.disk,
            current = format!("{:016x}", self.gen.current),
            "primary --force undone: its record was never saved, the disk is as it was before"
        );
        self.announce();
    }
}
