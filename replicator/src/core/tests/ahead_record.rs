//! An Ahead Primary answers nothing alone before its peer's saved record
//! says Outdated (`adaptive::PeerRecord`). Found by review (helper-78),
//! without a controller: writes acknowledged Ahead while the peer had not
//! heard of it, or had not yet saved Outdated, were lost when the Primary
//! died, and `primary` without `--force` promoted the peer, still (or
//! again, after its power loss) UpToDate. Both courses below failed so.

use super::writes::{adaptive_pair, adaptive_pair_holding, write_past_the_budget};
use super::*;

/// a goes Ahead while its frames to b are held (a slow link); write 1
/// waited the budget, write 2 is written Ahead.
fn ahead_with_frames_held(p: &mut Pair) {
    p.initial();
    let x0 = p.core(0).gen().current;
    write_past_the_budget(p, 1, 0, 7);
    assert_ne!(p.core(0).gen().current, x0, "a did not go Ahead");
    assert_eq!(p.core(0).replication(), Replication::Ahead);
    p.write(0, 2, 1024, 9, 64);
    p.settle_now();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "b has not heard yet");
}

/// b hears it is Behind (Outdated in memory), its metadata device hung:
/// its record still says UpToDate.
fn behind_in_memory_only(p: &mut Pair) {
    p.n[1].hang_meta = true;
    p.hold_to[1] = false;
    p.settle_now();
    assert_eq!(p.core(1).disk(), DiskState::Outdated, "b went Behind (in memory)");
}

/// The Primary dies while b has not heard it went Ahead: b, UpToDate, is
/// promoted without `--force`, and nothing a acknowledged is lost.
#[test]
fn an_ahead_primary_that_dies_before_its_peer_hears_acknowledged_nothing_alone() {
    let mut p = adaptive_pair(Duration::from_millis(3));
    ahead_with_frames_held(&mut p);
    assert_eq!(p.reply(0, 1), None, "write 1 answered before b's record says Outdated");
    assert_eq!(p.reply(0, 2), None, "write 2 answered before b's record says Outdated");
    p.crash(0, true);
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.core(1).promote(false, 5).is_ok());
}

/// b heard (Outdated in memory) but its record is not saved when both
/// lose power: b comes back UpToDate; a answered nothing alone meanwhile.
#[test]
fn an_ahead_primary_waits_for_its_peers_saved_record_not_its_word() {
    let mut p = adaptive_pair(Duration::from_millis(3));
    ahead_with_frames_held(&mut p);
    behind_in_memory_only(&mut p);
    assert_eq!(p.n[1].meta.as_ref().map(|m| m.disk), Some(DiskState::UpToDate));
    assert_eq!(p.reply(0, 1), None, "write 1 answered before b's record says Outdated");
    assert_eq!(p.reply(0, 2), None, "write 2 answered before b's record says Outdated");
    p.crash(1, true);
    p.n[1].hang_meta = false;
    p.crash(0, true);
    p.restart(1);
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
}

/// Once b's record says Outdated, a answers both; a dies, and b (its
/// record Outdated, also after a restart) is not promoted without
/// `--force`.
#[test]
fn once_the_peers_record_says_outdated_ahead_writes_are_answered() {
    let mut p = adaptive_pair(Duration::from_millis(3));
    ahead_with_frames_held(&mut p);
    p.hold_to[1] = false;
    p.settle_now();
    assert_eq!(p.n[1].meta.as_ref().map(|m| m.disk), Some(DiskState::Outdated));
    assert_eq!(p.reply(0, 1), Some(Ok(())), "write 1 (released at the switch)");
    assert_eq!(p.reply(0, 2), Some(Ok(())), "write 2 (written Ahead)");
    p.crash(0, true);
    assert!(p.core(1).promote(false, 5).is_err(), "b promoted without --force");
    p.crash(1, true);
    p.restart(1);
    assert_eq!(p.core(1).disk(), DiskState::Outdated);
}

/// (From review, helper-79.) The Ahead run ends (the link is good for
/// `hold`) while the peer's record is still being saved: the write
/// released at the switch was then answered although b's record never
/// said Outdated; both lost power and b came back UpToDate without it,
/// promotable without --force. It waits for the record now, Ahead or not.
#[test]
fn leaving_ahead_before_the_peers_record_is_saved_answers_nothing_alone() {
    let mut p = adaptive_pair(Duration::from_millis(3));
    ahead_with_frames_held(&mut p);
    behind_in_memory_only(&mut p);
    assert_eq!(p.reply(0, 1), None);
    p.tick_until(5000, |p| p.core(0).replication() != Replication::Ahead);
    assert_eq!(p.n[1].meta.as_ref().map(|m| m.disk), Some(DiskState::UpToDate));
    assert_ne!(
        p.reply(0, 1),
        Some(Ok(())),
        "write 1 acknowledged before b's record said Outdated ({:?}): after both lose power b \
         comes back UpToDate without it, promotable without --force",
        p.core(0).replication()
    );
}

/// The peer's metadata record stops being saved (its pings pass, its
/// data writes land): the Ahead Primary does not wait for ever for
/// `OutdateDone` (review): after the peer `timeout` the session ends, as
/// for an operation the peer does not complete, and the Primary goes on as
/// after any link loss.
#[test]
fn a_peer_that_never_saves_outdated_ends_the_session_after_timeout() {
    // (Ahead for 10 s: nothing else ends the session first.)
    let mut p = adaptive_pair_holding(Duration::from_millis(3), Duration::from_secs(10));
    p.initial();
    // b has taken in a write of this session (its record says so already).
    p.write(0, 10, 4096, 5, 64);
    p.settle_now();
    assert_eq!(p.reply(0, 10), Some(Ok(())));
    p.n[1].hang_record = true;
    write_past_the_budget(&mut p, 1, 0, 7);
    assert_eq!(p.core(0).replication(), Replication::Ahead);
    let switched = p.now;
    p.hold_to[1] = false;
    p.settle_now();
    assert_eq!(p.reply(0, 1), None, "answered before b's record says Outdated");
    let ended = p.tick_until(4000, |p| p.core(0).session_id().is_none());
    assert!(ended, "the session outlived 4 s without the peer's OutdateDone");
    let ended = p.now - switched;
    let timeout = p.core(0).cfg.timeout;
    let why = p.core(0).status().last_error.unwrap_or_default();
    assert!(ended < timeout + Duration::from_millis(500), "{ended:?}: {why}");
    assert!(why.contains("did not confirm"), "{ended:?}: {why}");
}
