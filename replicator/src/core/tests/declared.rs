//! What `primary --force` declared of a disk that was not UpToDate, and
//! its undoing when the record saying so is not saved (`core/declared.rs`):
//! adversarial cases (review, helper-149).

use super::*;

/// `primary --force` on b while its record's save hangs, then the verb's
/// wait ends and the shell undoes the force (`abandon_promotion`).
fn b_forced_on_a_hung_record_and_undone(p: &mut Pair) {
    p.n[1].hold_record = true;
    p.core(1).promote(true, 5).expect("primary --force");
    p.settle_now();
    p.core(1).abandon_promotion();
    p.settle_now();
}

/// The hung save lands, b dies before its next one and starts again:
/// the record b's restart found.
fn b_record_lands_and_b_crashes(p: &mut Pair) -> MetaRecord {
    p.land_held_records(1);
    let on_disk = p.n[1].meta.clone().expect("b's record");
    b_crashes_and_starts_again(p);
    on_disk
}

/// b's process dies (what it holds back never lands) and starts again on
/// what its metadata holds, its saves no longer held.
fn b_crashes_and_starts_again(p: &mut Pair) {
    p.crash(1, false);
    p.n[1].hold_record = false;
    p.restart(1);
}

/// b's restart took the record before the force (the first record,
/// landed, holds it), its generation `b_gen` and disk `b_disk` as they
/// were; a, demoted, meets it and is its sync source: a's write
/// acknowledged alone (`value` at `off`) ends on both disks.
fn b_back_as_before_the_force(
    p: &mut Pair,
    on_disk: &MetaRecord,
    (b_disk, b_gen): (DiskState, GenIds),
    (off, value): (usize, u8),
) {
    assert!(on_disk.pending.is_some(), "the landed record is not the force's first");
    assert_eq!(on_disk.disk, DiskState::UpToDate, "the landed record is not the force");
    assert_eq!((p.core(1).disk(), p.core(1).gen()), (b_disk, b_gen), "b came back forced");
    p.core(0).demote().expect("a secondary");
    p.core(0).connect();
    p.core(1).connect();
    p.connect();
    p.settle();
    let why = p.core(1).status().last_error.unwrap_or_default();
    assert_eq!(p.core(1).connection(), Connection::Connected, "{why}");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "{why}");
    assert_eq!(p.n[0].cache[off], value, "a's write acknowledged alone was overwritten");
    assert!(p.n[0].cache == p.n[1].cache, "b did not take a's data");
    // (The rolled-back record replaced the landed one.)
    assert!(p.n[1].meta.as_ref().is_some_and(|m| m.pending.is_none()));
}

/// b, Outdated by a's disconnect while a writes on alone, is forced on a
/// metadata volume that stops answering: `primary` times out and the
/// shell undoes the force (`abandon_promotion`). The hung save (it
/// carried the forced record) lands later, and the process dies before
/// the save that puts the old account back. Before, b's restart believed
/// the record on disk, the forced generation, UpToDate, though the
/// operator was told the promotion failed. Now that record is the
/// force's first, unconfirmed, and holds the one it replaced: b starts
/// Outdated on its old generation and takes a's data.
#[test]
fn a_hung_forced_record_that_lands_after_the_undo_is_rolled_back_at_a_restart() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    let b_gen = p.a_writes_alone_beside_outdated_b();
    // The verb's wait ends: the shell undoes the force.
    b_forced_on_a_hung_record_and_undone(&mut p);
    assert_eq!((p.core(1).role(), p.core(1).disk()), (Role::Secondary, DiskState::Outdated));
    assert_eq!(p.core(1).gen(), b_gen);
    // The hung save lands, and the process dies before the next one.
    let on_disk = b_record_lands_and_b_crashes(&mut p);
    b_back_as_before_the_force(&mut p, &on_disk, (DiskState::Outdated, b_gen), (4096, 2));
}

/// The same window for a partly synced disk (every block marked by the
/// force) under `discard-least-changes`: before, b, back on the forced
/// record, counted every block changed, a only its write alone, and the
/// policy made a the one to discard (review, helper-149). Now b starts
/// Inconsistent, as before the force, and takes a's data.
#[test]
fn a_hung_forced_record_of_a_partly_synced_disk_that_lands_after_the_undo() {
    let mut p = least_changes_pair();
    b_partly_synced(&mut p);
    p.write(0, 2, 4096, 2, 64);
    p.settle();
    assert_eq!(p.reply(0, 2), Some(Ok(())), "a writes alone");
    let b_gen = p.core(1).gen();
    let b_disk = p.core(1).disk();
    b_forced_on_a_hung_record_and_undone(&mut p);
    assert_eq!((p.core(1).disk(), p.core(1).gen()), (b_disk, b_gen), "undone");
    let on_disk = b_record_lands_and_b_crashes(&mut p);
    b_back_as_before_the_force(&mut p, &on_disk, (b_disk, b_gen), (4096, 2));
}

/// `primary --force` on b: its first record lands, the second (which
/// confirms it) is held.
fn b_forced_and_first_record_landed(p: &mut Pair) {
    p.n[1].hold_record = true;
    p.core(1).promote(true, 5).expect("primary --force");
    p.settle_now();
    p.land_held_records(1);
    p.settle_now();
}

/// The force's first record is durable, the second (which confirms it)
/// hangs, and `primary` gives up waiting: the force is not undone (the
/// second record may land at any time), the node is demoted on its forced
/// disk, and no write was answered on it. Should the process stop before
/// the second lands, it starts on the record before the force.
#[test]
fn a_force_whose_confirming_record_hangs_stands_and_a_crash_rolls_it_back() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    let b_gen = p.a_writes_alone_beside_outdated_b();
    b_forced_and_first_record_landed(&mut p);
    let first = p.n[1].meta.clone().expect("b's first record");
    assert!(first.pending.is_some(), "{first:?}");
    assert!(p.core(1).declaration_confirming());
    p.write(1, 3, 8192, 3, 64);
    p.settle_now();
    assert_eq!(p.reply(1, 3), None, "a write answered before the force is confirmed");
    p.core(1).abandon_promotion();
    p.settle_now();
    assert_eq!(p.core(1).role(), Role::Secondary);
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "a force being confirmed was undone");
    assert_ne!(p.core(1).gen(), b_gen);
    b_crashes_and_starts_again(&mut p);
    b_back_as_before_the_force(&mut p, &first, (DiskState::Outdated, b_gen), (4096, 2));
}

/// The record before a force is the last one saved, or the last whose
/// save failed since: a failed save may land all the same. b's disk fails
/// and its record saying `Failed` fails (ENOSPC) but lands; b is then
/// forced, its first record lands, and b crashes before the second: it
/// starts `Failed`, as that record says, and is rebuilt from a. (Before,
/// the first record held the last one saved, `Outdated`: b started on a
/// disk that had failed, as good; simulator seed 35411499, I3.)
#[test]
fn a_force_after_a_failed_record_that_landed_rolls_back_to_that_record() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 1, 8192, 5, 4096);
    p.settle();
    let b_gen = p.a_writes_alone_beside_outdated_b();
    p.n[1].fail_record = true;
    p.n[1].land_failed_record = true;
    p.n[1].fail_flush = true;
    let now = p.now;
    p.core(1).flush(now, 1);
    p.settle_now();
    assert_eq!(p.core(1).disk(), DiskState::Failed);
    assert_eq!(p.n[1].meta.as_ref().map(|m| m.disk), Some(DiskState::Failed), "landed");
    p.n[1].fail_record = false;
    p.n[1].fail_flush = false;
    // Forced before the failed save is tried again (once a second): the
    // retry saves the force's first record.
    p.n[1].hold_record = true;
    p.core(1).promote(true, 5).expect("primary --force");
    let issued = p.tick_until(3000, |p| !p.held.is_empty());
    assert!(issued, "the force's first record was never saved");
    p.land_held_records(1);
    p.settle_now();
    let first = p.n[1].meta.clone().expect("b's first record");
    b_crashes_and_starts_again(&mut p);
    // (What the failed disk lost.)
    p.n[1].cache[8192] = 0xee;
    b_back_as_before_the_force(&mut p, &first, (DiskState::Failed, b_gen), (8192, 5));
}

/// ... and once it lands, the force is what b holds, as it would be had
/// `primary` waited: b is UpToDate on its own generation at a restart.
#[test]
fn a_force_whose_confirming_record_lands_late_is_what_a_restart_finds() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    let b_gen = p.a_writes_alone_beside_outdated_b();
    b_forced_and_first_record_landed(&mut p);
    p.core(1).abandon_promotion();
    p.settle_now();
    let forced = p.core(1).gen();
    p.land_held_records(1);
    assert!(p.n[1].meta.as_ref().is_some_and(|m| m.pending.is_none() && m.gen == forced));
    b_crashes_and_starts_again(&mut p);
    assert_eq!((p.core(1).disk(), p.core(1).gen()), (DiskState::UpToDate, forced));
    assert_ne!(forced, b_gen);
}

/// `discard-least-changes` beside a node forced Primary on a partly
/// synced disk that did write: the forced side's bitmap marks every block,
/// so it "changed more" whatever it wrote, and the other side's writes
/// alone were always the ones discarded. Now neither is: the split brain
/// waits for the operator, and both sides keep their data.
#[test]
fn discard_least_changes_does_not_judge_a_side_forced_on_an_incomplete_copy() {
    let mut p = least_changes_pair();
    dlc_forced_split(&mut p);
    assert_eq!(p.reply(1, 60), Some(Ok(())), "b writes as forced Primary");
    let why = p.core(0).status().last_error.unwrap_or_default();
    assert_ne!(p.core(0).connection(), Connection::Connected, "{why}");
    assert!(why.contains("split brain"), "{why}");
    for k in 0..16 {
        assert_eq!(p.reply(0, 30 + k), Some(Ok(())), "a writes alone");
    }
    assert_eq!(p.n[0].cache[8192], 7, "a's writes alone were discarded");
    assert_eq!(p.n[1].cache[4096], 9, "b's write was discarded");
}

/// b's disk fails while its forced record cannot be saved (the flush the
/// promotion's record waits for fails): `primary` fails and the force is
/// undone, the disk staying Failed on its old generation. Met again, b is
/// rebuilt from a in full and is UpToDate with a's data (no loss of its
/// own is pinned: it acknowledged nothing on the forced generation).
#[test]
fn a_forced_disk_that_fails_while_its_record_waits_is_rebuilt_as_before() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 1, 0, 1, 64);
    p.settle();
    let b_gen = p.a_writes_alone_beside_outdated_b();
    p.n[1].fail_record = true;
    p.n[1].fail_flush = true;
    p.n[1].fail_writes = true;
    p.core(1).promote(true, 5).expect("primary --force");
    p.write(1, 3, 8192, 3, 64);
    p.settle_now();
    assert_ne!(p.reply(1, 3), Some(Ok(())), "a write answered on an unsaved force");
    p.core(1).abandon_promotion();
    p.settle_now();
    let (disk, gen) = (p.core(1).disk(), p.core(1).gen());
    assert_eq!(p.core(1).role(), Role::Secondary);
    assert_eq!(disk, DiskState::Failed, "the disk failed during the wait");
    assert_eq!(gen, b_gen);
    p.n[1].fail_record = false;
    p.n[1].fail_flush = false;
    p.n[1].fail_writes = false;
    p.tick_until(200, |_| false);
    p.core(0).demote().expect("a secondary");
    p.core(0).connect();
    p.core(1).connect();
    p.connect();
    let why = p.core(1).status().last_error.unwrap_or_default();
    assert_eq!(p.core(1).connection(), Connection::Connected, "{disk:?}: {why}");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "{disk:?}: {why}");
    assert!(p.n[0].cache == p.n[1].cache, "b did not take a's data");
}

/// A pair under `discard-least-changes`, its disks as created.
fn least_changes_pair() -> Pair {
    let mut c = cfg(Protocol::C);
    c.split_brain_policy = SplitBrainPolicy::DiscardLeastChanges;
    Pair::with_cfg(c, true)
}

/// a Primary writes while b is Outdated apart, and b's resync of them is
/// cut short: b Inconsistent, a partial copy.
fn b_partly_synced(p: &mut Pair) {
    p.initial();
    p.outdate_by_disconnect();
    for k in 0..8 {
        p.write(0, 10 + k, k * 1024, 3, 512);
    }
    p.settle();
    p.core(0).connect();
    p.connect_partial(8);
    assert_eq!(p.core(1).disk(), DiskState::Inconsistent, "b's resync cut short");
}

/// A split brain `discard-least-changes` leaves to the operator beside a
/// side forced on a partly synced disk (both wrote apart: a 16 blocks of
/// 7 from 8192, b one of 9 at 4096, requests 30.. and 60).
fn dlc_forced_split(p: &mut Pair) {
    b_partly_synced(p);
    for k in 0..16 {
        p.write(0, 30 + k, 8192 + k * 64, 7, 64);
    }
    p.settle();
    p.core(1).promote(true, 5).expect("primary --force");
    p.settle();
    p.write(1, 60, 4096, 9, 64);
    p.settle();
    p.core(0).demote().expect("a secondary");
    p.core(0).connect();
    p.core(1).connect();
    p.connect();
    assert!(p.core(0).status().split_brain);
}

/// The way out of that split brain: `discard-my-data` on the side not
/// forced, then `connect` (it takes the forced side's data).
#[test]
fn a_split_brain_left_beside_a_forced_side_is_resolved_by_discarding_the_other() {
    let p = discarded_beside_a_forced_side(0);
    assert_eq!(p.n[0].cache[4096], 9, "b's write as forced Primary is not on a");
}

/// ... or on the forced side, once Secondary (it takes the other's).
#[test]
fn a_split_brain_left_beside_a_forced_side_is_resolved_by_discarding_it() {
    let p = discarded_beside_a_forced_side(1);
    assert_eq!(p.n[1].cache[8192], 7, "a's writes apart are not on b");
}

/// [`dlc_forced_split`], then `discard-my-data` on node `i` (b, the forced
/// side, demoted first) and `connect`: `i` took the other's data in full.
fn discarded_beside_a_forced_side(i: usize) -> Pair {
    let mut p = least_changes_pair();
    dlc_forced_split(&mut p);
    if i == 1 {
        p.core(1).demote().expect("b secondary");
    }
    p.core(i).discard_my_data().expect("discard");
    p.core(0).connect();
    p.core(1).connect();
    p.connect();
    p.settle();
    assert_eq!(p.core(i).connection(), Connection::Connected);
    assert_eq!(p.core(i).disk(), DiskState::UpToDate, "the resync did not end");
    assert!(p.n[0].cache == p.n[1].cache, "node {i} did not take its peer's data");
    p
}

/// The window above under `discard-younger-primary`: b, Outdated, is
/// forced on a hung record and undone, the operator promotes a again
/// (told b's promotion failed) and a writes; the record lands, b crashes.
/// Before, b came back naming a promotion older than a's, and the policy
/// discarded the younger, a: a's write acknowledged alone was overwritten
/// by the data whose promotion failed (review, helper-161). Now b starts
/// Outdated, as before the force, and takes a's data.
#[test]
fn a_hung_forced_record_that_lands_after_the_undo_under_discard_younger_primary() {
    let mut c = cfg(Protocol::C);
    c.split_brain_policy = SplitBrainPolicy::DiscardYoungerPrimary;
    let mut p = Pair::with_cfg(c, true);
    p.initial();
    p.outdate_by_disconnect();
    p.core(0).demote().expect("a secondary");
    p.settle();
    let b_gen = p.core(1).gen();
    b_forced_on_a_hung_record_and_undone(&mut p);
    assert_eq!(p.core(1).gen(), b_gen);
    p.core(0).promote(false, 1_000_000).expect("a primary");
    p.settle_now();
    p.write(0, 2, 4096, 2, 64);
    p.settle_now();
    assert_eq!(p.reply(0, 2), Some(Ok(())), "a writes alone");
    let on_disk = b_record_lands_and_b_crashes(&mut p);
    b_back_as_before_the_force(&mut p, &on_disk, (DiskState::Outdated, b_gen), (4096, 2));
}

/// The window above for a disk forced after it failed, its peer having
/// done nothing apart (no write, no flush): before, back on the forced
/// record, b named a's generation as its base and was a's sync source
/// whatever the policy, and a's copy was overwritten by what the failed
/// disk holds (review, helper-161). Now b starts Failed, as before the
/// force, and is rebuilt from a.
#[test]
fn a_hung_forced_record_of_a_failed_disk_that_lands_after_the_undo_leaves_an_idle_peer_be() {
    let mut p = Pair::with_cfg(cfg(Protocol::C), false);
    p.initial();
    p.write(0, 1, 8192, 5, 4096);
    p.settle();
    assert_eq!(p.reply(0, 1), Some(Ok(())));
    p.cut();
    p.n[1].fail_flush = true;
    let now = p.now;
    p.core(1).flush(now, 1);
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::Failed);
    p.n[1].fail_flush = false;
    let b_gen = p.core(1).gen();
    b_forced_on_a_hung_record_and_undone(&mut p);
    assert_eq!((p.core(1).disk(), p.core(1).gen()), (DiskState::Failed, b_gen), "undone");
    let on_disk = b_record_lands_and_b_crashes(&mut p);
    // What the failed disk lost.
    p.n[1].cache[8192] = 0xee;
    b_back_as_before_the_force(&mut p, &on_disk, (DiskState::Failed, b_gen), (8192, 5));
}

/// The force's first record is durable, the second (which confirms it)
/// fails (a full metadata volume): `primary` gives up, the node is
/// demoted on its forced disk (the force stands), and the operator runs
/// `primary` again (the disk is UpToDate: no `--force` needed). Room is
/// freed: the retried save carries the new promotion's time and no
/// pending record, the force confirmed with it. The declaration must
/// settle then: before, it waited for a record with the first
/// promotion's time that would never be saved, and b refused every
/// handshake for ever ("still saving ... record").
#[test]
fn a_force_confirmed_by_a_later_promotions_record_settles() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.a_writes_alone_beside_outdated_b();
    b_forced_and_first_record_landed(&mut p);
    assert!(p.core(1).declaration_confirming());
    // The second record fails.
    p.n[1].fail_record = true;
    p.land_held_records(1);
    p.n[1].hold_record = false;
    p.settle_now();
    assert!(p.n[1].meta.as_ref().is_some_and(|m| m.pending.is_some()));
    p.core(1).abandon_promotion();
    p.settle_now();
    assert_eq!(p.core(1).role(), Role::Secondary);
    p.core(1).promote(false, 10_000).expect("primary");
    p.settle_now();
    // Room freed: the retry lands.
    p.n[1].fail_record = false;
    p.now += Duration::from_secs(2);
    let now = p.now;
    p.core(1).handle_timeout(now);
    p.settle_now();
    let m = p.n[1].meta.clone().expect("b's record");
    assert!(m.pending.is_none() && m.disk == DiskState::UpToDate, "{m:?}");
    assert_eq!(p.core(1).link_refused(), None, "b refuses its peer for ever");
    assert!(!p.core(1).declaration_unsaved());
}
