//! A disk that fails, hangs or is replaced: what is answered, what the
//! node comes out as, `disk-timeout`.

use super::*;

#[test]
fn a_recreated_disk_with_surviving_metadata_is_failed_and_keeps_its_generation() {
    let rec = Recovered {
        meta: Some(meta(DiskState::UpToDate)),
        bitmap: None,
        al: Vec::new(),
        disk_created: true,
        boot: 0,
    };
    let c = Core::new(cfg(Protocol::C), rec, Duration::ZERO, 1);
    assert_eq!(c.disk(), DiskState::Failed);
    assert_eq!(c.gen().current, GEN, "what it acknowledged is forgotten");
    assert!(c.may_read().is_err());
}

/// A pair in C, a write replicated, then a FLUSH (request 2) that fails
/// on the Secondary's disk: b is detached.
fn a_flush_failed_on_the_peer() -> Pair {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 1, 0, 1, 64);
    p.settle();
    p.n[1].fail_flush = true;
    let now = p.now;
    p.core(0).flush(now, 2);
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::Failed);
    p
}

#[test]
fn a_peer_whose_flush_fails_is_detached_and_marked_before_the_reply() {
    let p = a_flush_failed_on_the_peer();
    // The reply went out only once the Primary's data was a new
    // generation on disk: the peer is known to lack it.
    assert!(p.reply(0, 2).is_some());
    let m = p.n[0].meta.clone().unwrap();
    assert_ne!(m.gen.bitmap, 0, "no new generation recorded before the FLUSH reply");
}

/// A Secondary whose disk fails a flush of its peer's says so: its
/// `last_error` named every failed operation of the peer's a "replicated
/// write", a FLUSH or a verify read too (found by review, helper-117).
#[test]
fn a_secondarys_failed_flush_is_named_a_flush() {
    let mut p = a_flush_failed_on_the_peer();
    let why = p.core(1).status().last_error.unwrap_or_default();
    assert!(why.contains("replicated flush"), "{why:?}");
}

/// Node a, Primary, acknowledges a write its peer never got (the link is
/// cut), then its disk fails (a flush) and it is demoted. Returns the pair
/// and the generation of that write.
fn primary_loses_its_disk_after_writing_alone() -> (Pair, u64) {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.cut();
    p.write(0, 1, 0, 9, 64);
    p.settle();
    assert_eq!(p.reply(0, 1), Some(Ok(())), "acknowledged alone");
    let acked_gen = p.core(0).gen().current;
    p.n[0].fail_flush = true;
    let now = p.now;
    p.core(0).flush(now, 2);
    p.settle();
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    p.n[0].fail_flush = false;
    p.core(0).demote().unwrap();
    (p, acked_gen)
}

/// A node forced after its disk failed names its peer's generation as
/// its bitmap's base only while that base is the one the force set.
/// Once it took the peer's data again (`discard-my-data`, or a rebuild)
/// and later parted from that very generation by writing alone, its data
/// did grow from the peer's: the new base is a plain one, and neither the
/// hello nor the saved record may say it only names the peer (else the
/// peer's told generations are dropped, and its claims refused by the
/// witness, as for data that did not grow from its own).
#[test]
fn a_base_the_force_set_taken_again_later_is_a_plain_one() {
    let (mut p, _) = primary_loses_its_disk_after_writing_alone();
    p.core(0).promote(true, 5).expect("primary --force");
    p.settle();
    let peer_gen = p.core(1).gen().current;
    assert_eq!(p.core(0).gen().bitmap, peer_gen);
    assert!(p.core(0).hello().forced_base);
    // a gives up what it was forced with and takes b's data.
    p.core(0).demote().expect("secondary");
    p.core(0).discard_my_data().expect("discard-my-data");
    p.core(1).promote(false, 6).expect("primary on b");
    p.connect();
    p.settle();
    assert_eq!(p.core(0).disk(), DiskState::UpToDate);
    assert_eq!(p.core(0).gen().current, peer_gen, "a did not take b's data");
    assert!(p.n[0].cache == p.n[1].cache);
    // Apart again: a, Primary, writes alone, parting from b's generation.
    p.cut();
    p.core(1).demote().expect("secondary on b");
    p.core(0).promote(false, 7).expect("primary on a");
    p.write(0, 5, 0, 3, 64);
    p.settle();
    assert_eq!(p.reply(0, 5), Some(Ok(())));
    assert_eq!(p.core(0).gen().bitmap, peer_gen, "the base of a write alone");
    assert!(!p.core(0).hello().forced_base, "a plain base said to only name the peer");
    let rec = p.n[0].meta.clone().expect("a record");
    assert_eq!(rec.forced_base, 0, "a plain base saved as a forced one");
}

/// The Primary acknowledges a write its peer never got, then its disk
/// fails. Its data comes back from the peer, which lacks that write: the
/// node must not come out UpToDate (promotable, and telling a witness
/// its peer is current), not after a reconnect, not after a restart, nor
/// when the resync into it is cut short; `primary --force` ends it.
#[test]
fn a_failed_disk_rebuilt_from_an_older_generation_stays_outdated() {
    let (mut p, acked_gen) = primary_loses_its_disk_after_writing_alone();
    assert_eq!(p.core(0).gen().current, acked_gen, "a failed disk forgot what it acknowledged");
    // The resync is cut short, the node restarts: it still knows.
    p.connect_partial(30);
    assert_eq!(p.core(0).disk(), DiskState::Inconsistent);
    p.crash(0, false);
    p.restart(0);
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache, "the full sync did not finish");
    assert_eq!(p.core(0).disk(), DiskState::Outdated, "the lost write was forgotten");
    let err = p.core(0).status().last_error.unwrap_or_default();
    assert!(err.contains("lost"), "{err}");
    assert!(p.core(0).promote(false, 5).is_err());
    // Same generation as the peer now: a reconnect must not upgrade it.
    p.cut();
    p.connect();
    assert_eq!(p.core(0).disk(), DiskState::Outdated);
    p.crash(0, true);
    p.restart(0);
    p.connect();
    assert_eq!(p.core(0).disk(), DiskState::Outdated, "forgotten across a restart");
    // The operator accepts the loss: the peer's data goes on as Primary,
    // and the Outdated node follows its new generation.
    p.core(1).promote(false, 6).unwrap();
    p.settle();
    assert_eq!(p.core(0).disk(), DiskState::UpToDate, "did not follow the Primary");
    p.write(1, 3, 256, 7, 64);
    p.settle();
    assert_eq!(p.reply(1, 3), Some(Ok(())));
    p.core(1).demote().unwrap();
    p.settle();
    p.cut();
    p.connect();
    assert_eq!(p.core(0).disk(), DiskState::UpToDate);
    assert_eq!(p.core(0).gen().current, p.core(1).gen().current);
    assert!(p.n[0].cache == p.n[1].cache);
}

/// A disk that failed while its peer held everything it acknowledged
/// (same generation) is simply resynced in full and UpToDate again.
#[test]
fn a_failed_disk_of_the_same_generation_is_uptodate_after_its_full_sync() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 1, 0, 9, 64);
    p.settle();
    p.n[1].fail_writes = true;
    p.write(0, 2, 128, 8, 64);
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::Failed);
    p.n[1].fail_writes = false;
    p.n[1].cache[4096] = 0x55; // what a failed disk may hold
    p.cut();
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache, "not a full sync");
}

/// The reason a disk is `Failed` stays in `status` (`last_error`) while
/// it is: the failure ends the session, and the handshake of the next
/// link cleared `last_error`, so a moment later the operator saw a
/// Failed disk, connected, and no reason (found by review, helper-117:
/// `primary --force` on a node whose disk's flush failed, beside a fresh
/// peer). Once the disk is good again, its error is no longer shown.
#[test]
fn a_failed_disks_reason_survives_the_next_handshake() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.connect();
    p.n[0].fail_flush = true;
    p.core(0).promote(true, 1).unwrap();
    p.settle();
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    p.cut();
    p.connect();
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    let why = p.core(0).status().last_error.unwrap_or_default();
    assert!(why.contains("local disk failed"), "Failed without a reason: {why:?}");
}

/// ... and once the full sync made the disk UpToDate again, its old
/// error is not shown.
#[test]
fn a_disk_good_again_shows_no_old_disk_error() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.n[1].fail_writes = true;
    p.write(0, 1, 0, 8, 64);
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::Failed);
    p.n[1].fail_writes = false;
    p.cut();
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert_eq!(p.core(1).status().last_error, None, "an old disk error shown on a good disk");
}

/// A local disk fails (EIO on one write) while other writes are in
/// flight: a write whose local part completed, before the failure or
/// after it, is answered OK only if the peer confirmed it — the failed
/// disk is detached and replaced by a full sync from the peer, so what
/// only it holds was never written. (Found by the simulator's rule at
/// the reply; before, such writes were answered OK once their lost peer
/// part was recorded.)
#[test]
fn writes_held_only_by_a_failed_disk_fail() {
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::C);
    let (mut held, mut acts) = (Vec::new(), Vec::new());
    // Writes 1..=5, one activity-log extent; the peer applies 1..=3.
    for (req, off) in [(1, 0), (2, 128), (3, 256), (4, 384), (5, 512)] {
        c.write(t, req, off, Bytes::from(vec![req as u8; 64]), false);
        acts.extend(issue(&mut c, t, &mut held));
    }
    assert_eq!(held.len(), 5, "{acts:?}");
    // 1 and 4 complete locally before the failure (their peer parts
    // pending).
    c.handle_io(t, held[0].0, Ok(None));
    c.handle_io(t, held[3].0, Ok(None));
    acts.extend(issue(&mut c, t, &mut held));
    c.handle_frame(t, 1, Message::Ack { received: 3, done: 3 });
    acts.extend(issue(&mut c, t, &mut held));
    // The peer applied 1..=3: 1 is answered, as the mode allows.
    assert_eq!(replies_to(&acts, 1), vec![Ok(())]);
    assert!(replies_to(&acts, 4).is_empty(), "4 answered before the peer confirmed it");
    // 2 fails on the local disk: detached, the link to the peer closed.
    c.handle_io(t, held[1].0, Err(IoError::EIO));
    acts.extend(issue(&mut c, t, &mut held));
    assert_eq!(c.disk(), DiskState::Failed);
    assert!(closed(&acts), "the session stays open on a detached disk");
    // 3 (the peer has it) and 5 (only the failed disk has it) complete
    // locally after the failure.
    c.handle_io(t, held[2].0, Ok(None));
    c.handle_io(t, held[4].0, Ok(None));
    acts.extend(issue(&mut c, t, &mut held));
    acts.extend(run(&mut c, t));
    let eio = vec![Err(ReplyError::Io(IoError::EIO))];
    assert_eq!(replies_to(&acts, 2), eio);
    assert_eq!(replies_to(&acts, 3), vec![Ok(())], "the peer holds 3");
    assert_eq!(replies_to(&acts, 4), eio, "only the failed disk holds 4 (done before)");
    assert_eq!(replies_to(&acts, 5), eio, "only the failed disk holds 5 (done after)");
    assert!(c.pending.is_empty(), "{:?}", c.pending);
}

/// A disk that hangs after its first error: writes whose local parts never
/// complete are answered all the same, from the peer's part alone (OK for
/// what the peer applied, EIO for the rest, a FLUSH included); a late
/// completion changes nothing. Before, they waited for the failed disk for
/// ever (the simulator's plant `wait-on-failed-disk` restores that).
#[test]
fn writes_a_failed_disk_never_completes_are_answered() {
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::C);
    let (mut held, mut acts) = (Vec::new(), Vec::new());
    for (req, off) in [(1, 0), (2, 128), (3, 256), (4, 384)] {
        c.write(t, req, off, Bytes::from(vec![req as u8; 64]), false);
        acts.extend(issue(&mut c, t, &mut held));
    }
    c.flush(t, 5);
    acts.extend(issue(&mut c, t, &mut held));
    assert_eq!(held.len(), 5, "{acts:?}");
    // The peer applied 1 and 2; nothing has completed locally.
    c.handle_frame(t, 1, Message::Ack { received: 2, done: 2 });
    acts.extend(issue(&mut c, t, &mut held));
    assert!(replies_to(&acts, 1).is_empty(), "1 answered before its local part");
    // 3 fails; 1, 2, 4 and the FLUSH never complete (the disk hangs).
    c.handle_io(t, held[2].0, Err(IoError::EIO));
    acts.extend(issue(&mut c, t, &mut held));
    acts.extend(run(&mut c, t));
    assert_eq!(c.disk(), DiskState::Failed);
    let eio = vec![Err(ReplyError::Io(IoError::EIO))];
    assert_eq!(replies_to(&acts, 1), vec![Ok(())], "the peer applied 1");
    assert_eq!(replies_to(&acts, 2), vec![Ok(())], "the peer applied 2");
    for req in [3, 4, 5] {
        assert_eq!(replies_to(&acts, req), eio, "request {req}: {acts:?}");
    }
    assert!(c.pending.is_empty(), "{:?}", c.pending);
    // The disk wakes up: its late answers are ignored.
    for (io, _) in [held[0], held[1], held[3], held[4]] {
        c.handle_io(t, io, Ok(None));
    }
    let late = run(&mut c, t);
    assert!(!late.iter().any(|a| matches!(a, Action::Reply { .. })), "{late:?}");
}

/// An UpToDate node in protocol C with a `disk-timeout` of `limit`.
fn core_with_disk_timeout(limit: Duration) -> Core {
    let mut cfg = cfg(Protocol::C);
    cfg.disk_timeout = Some(limit);
    let rec = recovered(DiskState::UpToDate);
    Core::new(cfg, rec, Duration::ZERO, 7)
}

/// `disk-timeout`: a store operation without a completion for that long
/// detaches the disk (Failed, the session closed), and the writes that
/// waited for it are answered from the peer's part; the timer is armed
/// only while something is in flight, and not at all without the setting.
#[test]
fn a_disk_that_stops_answering_fails_after_disk_timeout() {
    let t = Duration::ZERO;
    let mut c = core_with_disk_timeout(Duration::from_secs(1));
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    assert_eq!(c.disk_deadline(), None, "nothing in flight, no deadline");
    let (mut held, mut acts) = (Vec::new(), Vec::new());
    for (req, off) in [(1, 0), (2, 128)] {
        c.write(t, req, off, Bytes::from(vec![req as u8; 64]), false);
        acts.extend(issue(&mut c, t, &mut held));
    }
    c.handle_frame(t, 1, Message::Ack { received: 1, done: 1 });
    acts.extend(issue(&mut c, t, &mut held));
    assert_eq!(c.disk_deadline(), Some(Duration::from_secs(1)));
    let half = Duration::from_millis(999);
    c.handle_timeout(half);
    acts.extend(issue(&mut c, half, &mut held));
    assert_eq!(c.disk(), DiskState::UpToDate, "failed before the timeout");
    let late = Duration::from_secs(1);
    c.handle_timeout(late);
    acts.extend(issue(&mut c, late, &mut held));
    acts.extend(run(&mut c, late));
    assert_eq!(c.disk(), DiskState::Failed);
    assert!(closed(&acts), "the session stays open on a detached disk");
    assert!(c.status().last_error.unwrap_or_default().contains("no completion for 1s"));
    assert_eq!(replies_to(&acts, 1), vec![Ok(())], "the peer applied 1");
    assert_eq!(replies_to(&acts, 2), vec![Err(ReplyError::Io(IoError::EIO))]);
    assert_eq!(c.disk_deadline(), None, "a detached disk has no deadline");
    // Without the setting, nothing ever times out.
    let mut c = connected_primary(Protocol::C);
    c.write(t, 1, 0, Bytes::from(vec![1u8; 64]), false);
    issue(&mut c, t, &mut Vec::new());
    assert_eq!(c.disk_deadline(), None);
    c.handle_timeout(Duration::from_secs(3600));
    assert_eq!(c.disk(), DiskState::UpToDate);
}

/// A Secondary whose disk stopped answering (detached by `disk-timeout`,
/// its replicated write still outstanding) takes no link, so no sync onto
/// that disk, until the operation returns: a sync would time out on it
/// again at once (and each time cost the healthy Primary a full bitmap).
/// (From a review: the node reconnected and failed again every 20 ms.)
#[test]
fn a_secondary_whose_disk_hangs_takes_no_sync_until_it_answers() {
    let t0 = Duration::ZERO;
    let mut c = core_with_disk_timeout(Duration::from_secs(1));
    connect(&mut c, 1, Role::Primary);
    let write = Op::write(0, Bytes::from(vec![1u8; 64]), false);
    c.handle_frame(t0, 1, Message::Data { seq: 1, op: write });
    let mut held = Vec::new();
    issue(&mut c, t0, &mut held);
    assert_eq!(held.len(), 1, "the apply is issued (and hangs)");
    let t1 = Duration::from_secs(1);
    c.handle_timeout(t1);
    assert!(closed(&run(&mut c, t1)));
    assert_eq!(c.disk(), DiskState::Failed);
    assert!(!c.wants_link(), "a detached disk with a hung operation wants a link");
    c.handle_link_up(t1, 2);
    assert!(closed(&drain(&mut c)), "a link to a hung disk's node is kept");
    assert_eq!(c.disk(), DiskState::Failed);
    // The disk answers at last: the node links again (and takes its sync).
    c.handle_io(t1, held[0].0, Ok(None));
    run(&mut c, t1);
    assert!(c.wants_link());
}

/// Protocol B on a disk that fails with writes outstanding: a plain write
/// the peer received is answered OK (B's promise), a FUA write is not — the
/// peer confirmed receipt, not durability, and only the detached disk was
/// to make it durable. (From a review.)
#[test]
fn protocol_b_fua_writes_on_a_failed_disk_fail() {
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::B);
    let (mut held, mut acts) = (Vec::new(), Vec::new());
    c.write(t, 1, 0, Bytes::from(vec![1u8; 64]), false);
    c.write(t, 2, 128, Bytes::from(vec![2u8; 64]), true);
    c.write(t, 3, 256, Bytes::from(vec![3u8; 64]), false);
    acts.extend(issue(&mut c, t, &mut held));
    assert_eq!(held.len(), 3, "{acts:?}");
    c.handle_frame(t, 1, Message::Ack { received: 3, done: 0 });
    acts.extend(issue(&mut c, t, &mut held));
    // 3 fails; 1 and 2 never complete locally.
    c.handle_io(t, held[2].0, Err(IoError::EIO));
    acts.extend(issue(&mut c, t, &mut held));
    acts.extend(run(&mut c, t));
    assert_eq!(c.disk(), DiskState::Failed);
    let eio = vec![Err(ReplyError::Io(IoError::EIO))];
    assert_eq!(replies_to(&acts, 1), vec![Ok(())], "the peer received 1");
    assert_eq!(replies_to(&acts, 2), eio, "FUA 2 is durable nowhere");
    assert_eq!(replies_to(&acts, 3), eio);
}

/// A metadata update the disk never completes (the activity log's, for a
/// write to a cold extent) detaches the disk after `disk-timeout` too:
/// the metadata is often on the same device, and the write waits for it.
#[test]
fn a_metadata_update_that_hangs_fails_the_disk_after_disk_timeout() {
    let t = Duration::ZERO;
    let mut c = core_with_disk_timeout(Duration::from_secs(1));
    c.promote(false, 1).unwrap();
    run(&mut c, t);
    c.write(t, 1, 0, Bytes::from(vec![1u8; 64]), false);
    let acts = drain(&mut c);
    assert!(acts.iter().any(|a| matches!(a, Action::Persist { .. })), "{acts:?}");
    assert_eq!(c.disk_deadline(), Some(Duration::from_secs(1)));
    let late = Duration::from_secs(1);
    c.handle_timeout(late);
    let acts = drain(&mut c);
    assert_eq!(c.disk(), DiskState::Failed);
    assert_eq!(replies_to(&acts, 1), vec![Err(ReplyError::Io(IoError::EIO))]);
}

/// A read the shell performs itself (the core does not issue application
/// reads) that the disk never answers: the shell tells the core, which
/// detaches the disk with the reason; without `disk-timeout` it is ignored.
#[test]
fn a_stalled_read_detaches_the_disk_only_with_disk_timeout() {
    let t = Duration::from_secs(2);
    let mut c = core_with_disk_timeout(Duration::from_secs(1));
    c.promote(false, 1).unwrap();
    c.handle_disk_stalled(t, "a read");
    assert_eq!(c.disk(), DiskState::Failed);
    let why = c.status().last_error.unwrap_or_default();
    assert!(why.contains("a read: no completion for 1s"), "{why}");
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.handle_disk_stalled(t, "a read");
    assert_eq!(c.disk(), DiskState::UpToDate);
}

/// The same in protocol A, where nothing waits for the peer: a write and
/// a FLUSH whose local parts complete after the disk failed are answered
/// EIO (the peer promised nothing).
#[test]
fn protocol_a_writes_and_flushes_completing_on_a_failed_disk_fail() {
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::A);
    let (mut held, mut acts) = (Vec::new(), Vec::new());
    c.write(t, 1, 0, Bytes::from(vec![1u8; 64]), false);
    c.write(t, 2, 128, Bytes::from(vec![2u8; 64]), false);
    acts.extend(issue(&mut c, t, &mut held));
    c.flush(t, 3);
    acts.extend(issue(&mut c, t, &mut held));
    let flush = held.iter().find(|h| h.1 == u64::MAX).expect("the FLUSH reaches the disk").0;
    c.handle_io(t, held[1].0, Err(IoError::EIO));
    acts.extend(issue(&mut c, t, &mut held));
    assert_eq!(c.disk(), DiskState::Failed);
    c.handle_io(t, held[0].0, Ok(None));
    c.handle_io(t, flush, Ok(None));
    acts.extend(run(&mut c, t));
    let eio = vec![Err(ReplyError::Io(IoError::EIO))];
    for req in [1, 2, 3] {
        assert_eq!(replies_to(&acts, req), eio, "request {req}: {acts:?}");
    }
}

/// Protocol B: the peer confirmed a write on receipt, then failed to
/// apply it; the local disk fails too before the write's local part is
/// done. Neither disk holds it: EIO, not the OK its receipt once allowed.
#[test]
fn a_received_write_the_peer_failed_is_not_confirmed_any_more() {
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::B);
    let (mut held, mut acts) = (Vec::new(), Vec::new());
    for (req, off) in [(1, 0), (2, 128)] {
        c.write(t, req, off, Bytes::from(vec![req as u8; 64]), false);
        acts.extend(issue(&mut c, t, &mut held));
    }
    c.handle_frame(t, 1, Message::Ack { received: 2, done: 0 });
    c.handle_frame(t, 1, Message::Failed { seq: 1, errno: 5 });
    acts.extend(issue(&mut c, t, &mut held));
    c.handle_io(t, held[1].0, Err(IoError::EIO));
    c.handle_io(t, held[0].0, Ok(None));
    acts.extend(issue(&mut c, t, &mut held));
    acts.extend(run(&mut c, t));
    assert_eq!(c.disk(), DiskState::Failed);
    let eio = vec![Err(ReplyError::Io(IoError::EIO))];
    assert_eq!(replies_to(&acts, 1), eio, "held by no disk: {acts:?}");
    assert_eq!(replies_to(&acts, 2), eio);
}

#[test]
fn a_failed_replicated_write_marks_the_range_durably_before_the_reply() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.n[1].fail_writes = true;
    p.write(0, 1, 2048, 1, 64);
    p.settle();
    assert_eq!(p.reply(0, 1), Some(Ok(())));
    assert_eq!(p.core(1).disk(), DiskState::Failed);
    let bm = p.n[0].bitmap.clone().expect("bitmap saved");
    assert!(bm[0] & (1 << 32) != 0, "block 32 not durably out of sync");
}

/// The node that lost its disk (holding writes it acknowledged alone) is
/// resynced by a peer the operator already made Primary on that data: the
/// loss is accepted, the node is UpToDate at once, not Outdated under a
/// Primary until the link drops.
#[test]
fn a_failed_disk_resynced_by_a_primary_on_that_data_is_uptodate() {
    let (mut p, _) = primary_loses_its_disk_after_writing_alone();
    p.core(1).promote(false, 5).unwrap();
    p.settle();
    p.connect();
    assert_eq!(p.core(0).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache);
}

/// `disk-timeout` on a Primary whose disk hangs: the disk is detached,
/// and a write and a FLUSH its UpToDate peer completed may be answered OK
/// from the peer's copy only once the node's `Failed` record is on disk.
/// With the metadata on a healthy device it is: both are OK, and after a
/// power loss the node comes back Failed and takes the peer's data in
/// full. With the metadata on the hung disk too it never gets there (a
/// power loss would bring the node back UpToDate, the same generation as
/// the peer, over a disk that lacks them, and its activity-log extents
/// would have moved from it over the peer's flushed data, were its hello
/// not saying that its cache was lost): both get EIO after
/// `disk-timeout`. Either way the acknowledged data survives, whichever
/// node is Primary afterwards, and the two disks end identical.
#[test]
fn a_hung_primary_disk_after_a_power_loss_takes_the_peers_copy() {
    for (meta_hangs, plant) in
        [(false, Plant::None), (true, Plant::None), (true, Plant::AckBeforeFailedRecord)]
    {
        for promote_after in [None, Some(0), Some(1)] {
            let case = format!("metadata hangs {meta_hangs}, {plant:?}, promote {promote_after:?}");
            let mut ca = cfg(Protocol::C);
            ca.disk_timeout = Some(Duration::from_secs(1));
            ca.plant = plant;
            let mut p = Pair::with_cfg(ca, true);
            p.initial();
            p.write(0, 1, 0, 1, 64);
            p.settle();
            assert_eq!(p.reply(0, 1), Some(Ok(())));
            p.n[0].hang = true;
            p.n[0].hang_meta = meta_hangs;
            // (In the extent of write 1: no activity-log update waits.)
            p.write(0, 2, 64, 2, 64);
            let now = p.now;
            p.core(0).flush(now, 3);
            p.settle();
            assert_eq!(p.core(0).disk(), DiskState::Failed, "{case}: not detached");
            assert_eq!(p.core(1).disk(), DiskState::UpToDate);
            let (r2, r3) = (p.reply(0, 2), p.reply(0, 3));
            if meta_hangs && plant == Plant::None {
                let eio = Some(Err(ReplyError::Io(IoError::EIO)));
                assert_eq!((r2, r3), (eio, eio), "{case}: answered from the peer alone");
            } else {
                assert_eq!((r2, r3), (Some(Ok(())), Some(Ok(()))), "{case}: the peer has them");
            }
            // Power loss of the node with the hung disk; the disk answers again.
            p.crash(0, true);
            p.n[0].hang = false;
            p.n[0].hang_meta = false;
            p.restart(0);
            if plant == Plant::AckBeforeFailedRecord {
                // The plant is caught: the node is back UpToDate over a
                // disk that lacks a write and a FLUSH it answered OK. (Its
                // hello says its cache was lost, so the reconnect takes its
                // activity log from the peer; promoted alone, it would
                // serve the stale blocks.)
                let stale = p.core(0).disk() == DiskState::UpToDate
                    && p.n[0].cache[64..128].iter().any(|&x| x != 2);
                assert!(stale, "{case}: the planted mistake went unseen");
                continue;
            }
            p.connect();
            if let Some(i) = promote_after {
                let _ = p.core(i).promote(false, 9);
                p.settle();
            }
            let (a, b) = (p.core(0).disk(), p.core(1).disk());
            assert_eq!(b, DiskState::UpToDate, "{case}");
            let flushed = r3 == Some(Ok(()));
            let mut found = true;
            for (i, disk) in [(0, a), (1, b)] {
                if flushed && disk == DiskState::UpToDate {
                    for (off, byte) in [(0usize, 1u8), (64, 2)] {
                        found &= p.n[i].cache[off..off + 64].iter().all(|&x| x == byte);
                    }
                }
            }
            assert!(found, "{case}: an UpToDate node lacks a flushed write (a {a:?}, b {b:?})");
            assert!(p.n[0].cache == p.n[1].cache, "{case}: the disks differ");
        }
    }
}

/// Without `disk-timeout`: a Primary's write hangs on its disk while the
/// peer applies it, then the disk fails with an error (a FLUSH) and is
/// detached, and the save of its `Failed` record hangs on the same dying
/// device. The write is not left waiting for that record for ever: after
/// `RECORD_WAIT` it gets EIO (the peer holds it, but this node's saved
/// record would still call its own disk good). (From a review.)
#[test]
fn a_detached_disks_record_that_never_saves_fails_the_replies_waiting_for_it() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 1, 0, 1, 64);
    p.settle();
    p.n[0].hang = true;
    p.write(0, 2, 64, 2, 64);
    p.settle_now();
    assert_eq!(p.reply(0, 2), None, "answered while its disk holds it");
    p.n[0].hang = false;
    p.n[0].fail_flush = true;
    p.n[0].hang_meta = true;
    let t0 = p.now;
    p.core(0).flush(t0, 3);
    p.settle();
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    let eio = Some(Err(ReplyError::Io(IoError::EIO)));
    assert_eq!(p.reply(0, 3), eio, "the FLUSH its disk failed");
    assert_eq!(p.reply(0, 2), eio, "the write waited for ever, or was answered OK");
    assert!(p.now >= t0 + super::disk_timeout::RECORD_WAIT, "answered before RECORD_WAIT");
    assert_eq!(p.core(0).poll_timeout(), None, "a deadline left behind");
}

/// A damaged activity log (`meta.al`, a line `+99999999999999`: a bit
/// flipped, or a file from elsewhere) names an extent past any device:
/// it covers no block of this one. The start took its offset as
/// extent × extent size, which overflowed: a panic ("attempt to multiply
/// with overflow") instead of a start (found by review, helper-117).
#[test]
fn an_activity_log_extent_past_any_device_is_not_a_panic() {
    let rec = Recovered {
        meta: Some(meta(DiskState::UpToDate)),
        bitmap: None,
        al: vec![1, 99_999_999_999_999, u64::MAX],
        disk_created: false,
        boot: 0,
    };
    let c = Core::new(cfg(Protocol::C), rec, Duration::ZERO, 1);
    // Extent 1 alone is marked: the others hold no block of this device.
    assert_eq!(c.status().out_of_sync_bytes, 1024);
    assert_eq!(c.disk(), DiskState::UpToDate);
}

/// A Primary's disk fails (a full file system, EIO) while its peer is
/// connected in protocol C: the write that hit it is answered EIO, the
/// link goes with it, and the node starts a generation its peer lacks,
/// on which it answers nothing more (its disk is Failed). Switched to
/// Secondary and reconnected, it is rebuilt from its peer and UpToDate:
/// nothing it acknowledged is missing. Found by review (helper-120):
/// rebuilt Outdated, `last_error` "those writes are lost", and only
/// `primary --force` on a node ended it. After a restart this node cannot
/// know that it answered nothing on that generation: Outdated then, as
/// before.
#[test]
fn a_primary_whose_disk_fails_while_connected_is_rebuilt_uptodate() {
    for restart in [false, true] {
        let mut p = Pair::new(Protocol::C, Plant::None);
        p.initial();
        p.write(0, 1, 0, 9, 64);
        p.settle();
        assert_eq!(p.reply(0, 1), Some(Ok(())));
        p.n[0].fail_writes = true;
        p.write(0, 2, 128, 8, 64);
        p.settle();
        assert!(matches!(p.reply(0, 2), Some(Err(_))), "{:?}", p.reply(0, 2));
        assert_eq!(p.core(0).disk(), DiskState::Failed);
        p.n[0].fail_writes = false;
        p.core(0).demote().unwrap();
        if restart {
            p.crash(0, true);
            p.restart(0);
        }
        p.core(0).connect();
        p.cut();
        p.connect();
        assert!(p.n[0].cache == p.n[1].cache, "not rebuilt from the peer");
        let s = p.core(0).status();
        if restart {
            assert_eq!(s.disk, DiskState::Outdated);
            continue;
        }
        assert_eq!(s.disk, DiskState::UpToDate, "{:?}", s.last_error);
        assert_eq!(s.last_error, None);
        assert!(p.core(0).promote(false, 5).is_ok(), "the rebuilt node is not promotable");
    }
}

/// As above, the Primary having told the witness it ran alone (its told
/// generations, here 0xabcdef, that its data descends from): rebuilt
/// from the peer on the very generation it left when its disk failed
/// (the peer's current is this node's own, its bitmap's base and the
/// generation before its current), its data still descends from what it
/// told, and it keeps them. It forgot them all, and the witness refused
/// its claim for data it holds, the pair without a Primary (simulator
/// seed 31401593 at 5,000 steps: the peer's history, its own, did not
/// name them). The generation started at the failure stays told too: the
/// witness may hold it as what the node ran alone with (the renewal that
/// fenced the peer as the disk failed), and the copy holds all that was
/// acknowledged in it, nothing (dropped once the rebuild also dropped it
/// from the record, the witness refused the rebuilt node: simulator seed
/// 33100262, review helper-153).
#[test]
fn a_primary_whose_disk_fails_while_connected_keeps_what_it_told() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 1, 0, 9, 64);
    p.settle();
    assert_eq!(p.reply(0, 1), Some(Ok(())));
    let g = p.core(0).gen().current;
    p.core(0).told = vec![g, 0xabcdef];
    p.n[0].fail_writes = true;
    p.write(0, 2, 128, 8, 64);
    p.settle();
    assert!(matches!(p.reply(0, 2), Some(Err(_))), "{:?}", p.reply(0, 2));
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    let failed = p.core(0).gen();
    assert_ne!(failed.current, g, "no generation started at the failure");
    assert_eq!((failed.bitmap, failed.history[0]), (g, g), "{failed:x?}");
    assert_eq!(p.core(1).gen().current, g);
    p.n[0].fail_writes = false;
    p.core(0).demote().unwrap();
    p.core(0).connect();
    p.cut();
    p.connect();
    assert!(p.n[0].cache == p.n[1].cache, "not rebuilt from the peer");
    assert_eq!(p.core(0).disk(), DiskState::UpToDate);
    let told = p.core(0).told.clone();
    assert!(told.contains(&0xabcdef), "what the node told the witness forgotten: {told:x?}");
    assert!(told.contains(&g), "{told:x?}");
    assert!(told.contains(&failed.current), "the failed generation forgotten: {told:x?}");
    assert!(p.core(0).promote(false, 5).is_ok(), "the rebuilt node is not promotable");
}

/// A disk that fails every write is rebuilt again and again: each rebuild
/// that fails in its turn makes the next wait longer (at once, then 2 s,
/// doubling up to 60 s), the node refusing links until then and saying
/// why and when; `connect` on it retries at once, and a completed rebuild
/// clears the count. Before, a cause that persists (a full file system)
/// repeated the full sync about once a second for ever (review,
/// helper-120's known limit).
#[test]
fn failed_rebuilds_back_off_and_connect_or_a_completed_rebuild_resets_them() {
    use crate::core::rebuild_backoff::{delay, MAX};
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.n[1].fail_writes = true;
    p.write(0, 1, 0, 8, 64);
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::Failed);
    assert_eq!(p.core(1).rebuild_failures(), 0, "a failure outside a rebuild is none");
    // Rebuilds that fail: the n-th waits delay(n) before the next one.
    let mut waits = Vec::new();
    for n in 1..=8u32 {
        p.cut();
        p.connect();
        assert_eq!(p.core(1).disk(), DiskState::Failed);
        assert_eq!(p.core(1).rebuild_failures(), n, "rebuild {n} did not fail as one");
        let now = p.now;
        let at = p.core(1).rebuild_retry_at();
        waits.push(at.map_or(Duration::ZERO, |at| at - now));
        if let Some(at) = at {
            // Refused until then, with the reason and the time.
            let why = p.core(1).link_refused().unwrap_or_default().into_owned();
            assert!(
                why.contains("failed again while being rebuilt") && why.contains("next rebuild in"),
                "{why}"
            );
            let shown = p.core(1).status().last_error.unwrap_or_default();
            assert!(shown.contains("next rebuild in") && shown.contains("os error"), "{shown}");
            assert_eq!(
                p.core(1).poll_timeout().map(|t| t <= at),
                Some(true),
                "no timer for the retry"
            );
            p.cut();
            p.connect();
            assert!(p.core(1).session_id().is_none(), "a link taken during the wait");
            assert_eq!(p.core(1).rebuild_failures(), n, "a refused link counted");
            // The wait over, the node wants its link again.
            p.now = at;
            p.core(1).handle_timeout(at);
            assert!(p.core(1).wants_link(), "the wait did not end");
        }
    }
    assert_eq!(
        waits,
        (1..=8).map(delay).collect::<Vec<_>>(),
        "the waits after failed rebuilds 1..=8"
    );
    assert_eq!(waits[0], Duration::ZERO, "the first retry waits");
    assert_eq!(waits[1], Duration::from_secs(2));
    assert_eq!(waits[7], MAX, "not capped");
    // One more failure: waiting; the operator fixes the disk and runs
    // `connect`: the rebuild starts at once and completes.
    p.cut();
    p.connect();
    assert!(p.core(1).rebuild_retry_at().is_some());
    p.n[1].fail_writes = false;
    p.core(1).connect();
    assert!(p.core(1).wants_link(), "`connect` did not retry at once");
    p.cut();
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache);
    assert_eq!(p.core(1).rebuild_failures(), 0);
    // A completed rebuild clears the count too: the disk fails again, and
    // so do two rebuilds: the first retried at once, the second waits 2 s.
    p.n[1].fail_writes = true;
    p.write(0, 2, 0, 9, 64);
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::Failed);
    p.cut();
    p.connect();
    assert_eq!(p.core(1).rebuild_failures(), 1);
    assert!(p.core(1).wants_link());
    // (Without `connect`: a rebuild that completes after a wait clears it.)
    p.cut();
    p.connect();
    assert_eq!(p.core(1).rebuild_failures(), 2);
    let at = p.core(1).rebuild_retry_at().expect("waits");
    p.n[1].fail_writes = false;
    p.now = at;
    p.core(1).handle_timeout(at);
    p.cut();
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "not rebuilt once the wait ended");
    assert_eq!(p.core(1).rebuild_failures(), 0, "a completed rebuild kept the count");
}

/// A Primary that acknowledged writes alone and whose disk then failed
/// (a full file system) is trusted again with `secondary` and `primary
/// --force` (README "A full file system (ENOSPC)"), and goes on alone:
/// it writes, restarts, writes again. Its peer never left the generation
/// this data parted from: it must still be recognised and take every
/// block. Before, each generation started alone pushed the peer's out of
/// the node's two-deep history, and the peer was refused as an unrelated
/// device (known limit until 2026-12-07).
#[test]
fn a_disk_forced_after_failing_and_written_alone_still_knows_its_peer() {
    let (mut p, _) = primary_loses_its_disk_after_writing_alone();
    p.core(0).promote(true, 5).expect("primary --force");
    p.settle();
    assert_eq!(p.core(0).disk(), DiskState::UpToDate);
    p.write(0, 3, 512, 7, 64);
    p.settle();
    assert_eq!(p.reply(0, 3), Some(Ok(())), "a write after the force");
    p.crash(0, false);
    p.restart(0);
    p.core(0).promote(false, 6).expect("primary");
    p.settle();
    p.write(0, 4, 1024, 6, 64);
    p.settle();
    assert_eq!(p.reply(0, 4), Some(Ok(())), "a write after the restart");
    p.connect();
    p.settle();
    let why = p.core(1).status().last_error.unwrap_or_default();
    assert_eq!(p.core(1).connection(), Connection::Connected, "peer refused: {why}");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "{why}");
    assert_eq!(p.core(0).gen().current, p.core(1).gen().current);
    assert!(p.n[0].cache == p.n[1].cache, "the peer did not take every block");
    assert_eq!(p.n[1].cache[0], 9, "the write acknowledged before the failure");
}

/// The record of a disk forced after it failed names a bitmap base with
/// every block marked: it is saved only once the marked bitmap is on
/// disk, and no write is answered before. A crash in between brings the
/// node back as it was (Failed, its old generation), never UpToDate over
/// a bitmap that misses blocks (plant `forced-record-before-bitmap`).
#[test]
fn a_forced_failed_disk_saves_its_record_only_after_its_marked_bitmap() {
    let (mut p, acked_gen) = primary_loses_its_disk_after_writing_alone();
    p.n[0].hang_bitmap = true;
    p.core(0).promote(true, 5).expect("primary --force");
    p.settle_now();
    p.write(0, 3, 512, 7, 64);
    p.settle_now();
    let rec = p.n[0].meta.clone().expect("a record");
    assert_eq!(rec.disk, DiskState::Failed, "the record went before the bitmap it names");
    assert_eq!(p.reply(0, 3), None, "a write answered before its record was saved");
    p.n[0].hang_bitmap = false;
    p.crash(0, true);
    p.restart(0);
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    assert_eq!(p.core(0).gen().current, acked_gen);
    // Forced again, the bitmap saves, and the record follows it.
    p.core(0).promote(true, 6).expect("primary --force");
    p.settle();
    let rec = p.n[0].meta.clone().expect("a record");
    assert_eq!(rec.disk, DiskState::UpToDate);
    assert_ne!(rec.gen.bitmap, 0, "no base names the peer");
    let bits = p.n[0].bitmap.clone().expect("a bitmap");
    assert!(bits.iter().all(|&w| w == u64::MAX), "not every block marked: {bits:x?}");
}

/// The marked bitmap of a disk forced after it failed cannot be saved (a
/// full metadata volume): the record waits, writes fail with that error,
/// and `primary` (which waits for the record) is told why, naming the
/// bitmap file; once it saves, the record follows.
#[test]
fn a_forced_failed_disk_whose_bitmap_cannot_be_saved_says_so() {
    let (mut p, _) = primary_loses_its_disk_after_writing_alone();
    p.n[0].fail_bitmap = true;
    p.core(0).promote(true, 5).expect("primary --force");
    p.settle_now();
    assert!(p.core(0).record_waits_for_pages().is_some());
    let why = p.core(0).promotion_saved(Duration::ZERO).expect_err("not told");
    assert!(why.contains("bitmap") && why.contains("No space left"), "{why}");
    p.write(0, 3, 512, 7, 64);
    p.settle_now();
    assert!(matches!(p.reply(0, 3), Some(Err(_))), "a write on a record not saved");
    p.n[0].fail_bitmap = false;
    p.tick_until(3000, |p| p.n[0].meta.as_ref().is_some_and(|m| m.disk == DiskState::UpToDate));
    assert_eq!(p.n[0].meta.as_ref().map(|m| m.disk), Some(DiskState::UpToDate));
    assert_eq!(p.core(0).record_waits_for_pages(), None);
    assert_eq!(p.core(0).promotion_saved(Duration::ZERO), Ok(true));
}

/// A disk forced after it failed, whose marked bitmap is still being
/// saved (its record waits for it), meets its UpToDate peer: the peer
/// must not become its Inconsistent sync target on the strength of a
/// generation a crash of the forced node forgets. Crashed before its
/// record is saved, the forced node comes back Failed on its old
/// generation: the peer must still be UpToDate (before, it was left
/// Inconsistent beside a Failed disk, no data on either side usable
/// without another `primary --force`).
#[test]
fn a_forced_disk_whose_record_waits_does_not_make_its_peer_inconsistent() {
    let (mut p, acked_gen) = primary_loses_its_disk_after_writing_alone();
    p.n[0].hang_bitmap = true;
    p.core(0).promote(true, 5).expect("primary --force");
    p.settle_now();
    p.connect_steps(2_000, |_| {});
    p.n[0].hang_bitmap = false;
    p.crash(0, true);
    p.restart(0);
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    assert_eq!(p.core(0).gen().current, acked_gen);
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "the peer's good copy was given up");
    let rec = p.n[1].meta.clone().expect("b's record");
    assert_eq!(rec.disk, DiskState::UpToDate, "the peer's record gave up its good copy");
    // Forced again, its record saved: the link is taken, the peer takes
    // all of it.
    p.core(0).promote(true, 6).expect("primary --force");
    p.settle();
    p.connect();
    let why = p.core(1).status().last_error.unwrap_or_default();
    assert_eq!(p.core(1).connection(), Connection::Connected, "{why}");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "{why}");
    assert!(p.n[0].cache == p.n[1].cache, "the peer did not take every block");
}

/// b, Outdated by a's graceful disconnect, a writing on alone: b is
/// forced Primary on a full metadata volume. `primary` fails (the shell
/// calls `abandon_promotion`): b must be as its saved record says, not
/// UpToDate on a generation of its own. Before, the declaration stayed in
/// memory and was saved once room was freed: b met a as a split brain
/// (or, had a not written, as the newer data, its sync source), over the
/// writes a acknowledged (review, helper-146, finding 4).
#[test]
fn a_forced_promotion_whose_record_cannot_be_saved_is_undone() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 1, 0, 1, 64);
    p.settle();
    let b_gen = p.a_writes_alone_beside_outdated_b();
    p.n[1].fail_record = true;
    p.core(1).promote(true, 5).expect("primary --force");
    p.settle_now();
    assert_eq!(p.core(1).role(), Role::Primary);
    let why = p.core(1).promotion_saved(Duration::ZERO).expect_err("not told");
    assert!(why.contains("No space left"), "{why}");
    p.core(1).abandon_promotion();
    p.settle_now();
    assert_eq!(p.core(1).role(), Role::Secondary);
    assert_eq!(p.core(1).disk(), DiskState::Outdated, "the force stayed");
    assert_eq!(p.core(1).gen(), b_gen, "the force's generation stayed");
    // Room freed: what b saves is what it was.
    p.n[1].fail_record = false;
    p.tick_until(200, |_| false);
    assert_eq!(p.n[1].meta.as_ref().map(|m| m.disk), Some(DiskState::Outdated));
    assert!(p.core(1).wants_link(), "{:?}", p.core(1).link_refused());
    p.core(0).demote().expect("a secondary");
    p.core(0).connect();
    p.connect();
    let why = p.core(1).status().last_error.unwrap_or_default();
    assert_eq!(p.core(1).connection(), Connection::Connected, "{why}");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "{why}");
    assert!(p.n[0].cache == p.n[1].cache, "b did not take a's data");
    assert_eq!(p.n[1].cache[4096], 2, "a's write acknowledged alone is lost");
}

/// The same force whose record hangs rather than fails, undone by
/// `secondary`: nothing was acknowledged on it, so it is undone too.
/// Once the hung save ends (it carried the forced record), the next one
/// puts the record back as it was.
#[test]
fn a_forced_promotion_demoted_before_its_record_is_saved_is_undone() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.outdate_by_disconnect();
    let b_gen = p.core(1).gen();
    p.n[1].hang_record = true;
    p.core(1).promote(true, 5).expect("primary --force");
    p.write(1, 3, 0, 3, 64);
    p.settle_now();
    assert_eq!(p.reply(1, 3), None, "a write answered on a record not saved");
    p.core(1).demote().expect("secondary");
    p.settle_now();
    assert!(matches!(p.reply(1, 3), Some(Err(_))), "the write must fail, demoted");
    assert_eq!(p.core(1).disk(), DiskState::Outdated);
    assert_eq!(p.core(1).gen(), b_gen);
    p.n[1].hang_record = false;
    p.tick_until(200, |_| false);
    let rec = p.n[1].meta.clone().expect("b's record");
    assert_eq!((rec.disk, rec.gen), (DiskState::Outdated, b_gen));
}

/// An Outdated disk forced while its peer is away, on a full metadata
/// volume (the verb not answered yet, or its client gone): its peer
/// comes back. The link is refused naming why, and the peer keeps its
/// good copy. (Before, the link was taken and its handshake waited for a
/// record that could not be saved, `status` saying only `Connecting`.)
#[test]
fn a_forced_node_whose_record_cannot_be_saved_says_why_it_takes_no_link() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.outdate_by_disconnect();
    p.core(0).demote().expect("a secondary");
    let b_gen = p.core(1).gen();
    p.n[1].fail_record = true;
    p.core(1).promote(true, 5).expect("primary --force");
    p.settle_now();
    p.core(0).connect();
    p.connect_steps(2_000, |_| {});
    let why = p.core(1).link_refused().unwrap_or_default().into_owned();
    assert!(why.contains("primary --force") && why.contains("No space left"), "{why}");
    assert_eq!(p.core(0).disk(), DiskState::UpToDate, "the peer's good copy was given up");
    // The operator frees room, or gives up the force: `secondary` undoes
    // it, and the link is taken with b the target.
    p.core(1).demote().expect("secondary");
    p.n[1].fail_record = false;
    p.settle_now();
    assert_eq!(p.core(1).gen(), b_gen);
    p.connect();
    let why = p.core(1).status().last_error.unwrap_or_default();
    assert_eq!(p.core(1).connection(), Connection::Connected, "{why}");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "{why}");
    assert!(p.n[0].cache == p.n[1].cache);
}

/// A Primary whose disk failed after it wrote alone meets its Outdated
/// peer: neither side holds a whole current copy, and the link is
/// refused. The reason names the failed disk, not "the peer's data is
/// newer", which it is not (noted by review, helper-148).
#[test]
fn a_failed_primary_meeting_its_outdated_peer_names_its_failed_disk() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.outdate_by_disconnect();
    p.write(0, 1, 0, 9, 64);
    p.settle();
    p.n[0].fail_flush = true;
    let now = p.now;
    p.core(0).flush(now, 2);
    p.settle();
    p.n[0].fail_flush = false;
    assert_eq!((p.core(0).role(), p.core(0).disk()), (Role::Primary, DiskState::Failed));
    p.core(0).connect();
    p.connect();
    let why = p.core(0).status().last_error.unwrap_or_default();
    assert!(!why.contains("newer"), "{why}");
    assert!(why.starts_with("handshake: this Primary's disk is Failed"), "{why}");
    assert!(why.contains("(Outdated)"), "{why}");
    assert_eq!(p.core(1).disk(), DiskState::Outdated, "b's copy was given up");
}

/// Not so a node that had acknowledged writes alone before the generation
/// its disk failed on: a ran alone and acknowledged a write (generation
/// P), restarted, was promoted again, and its disk failed on its next
/// write (a new generation, on which it answered nothing). Rebuilt from b,
/// still on the generation a left before P, a lacks that write: it stays
/// Outdated and says so. Before, only the failed generation was asked
/// about, and a came out UpToDate, promotable, with no error, its
/// acknowledged write gone (found by review of the fix above, helper-150).
#[test]
fn a_disk_failed_after_writes_acknowledged_alone_stays_outdated_once_rebuilt() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    let g = p.core(0).gen().current;
    p.cut();
    p.settle();
    p.write(0, 1, 0, 9, 64);
    p.settle();
    assert_eq!(p.reply(0, 1), Some(Ok(())), "a's write alone not acknowledged");
    let alone = p.core(0).gen().current;
    assert_ne!(alone, g);
    p.crash(0, false);
    p.restart(0);
    p.core(0).told = vec![alone];
    p.core(0).promote(true, 7).unwrap();
    p.settle();
    p.n[0].fail_writes = true;
    p.write(0, 2, 128, 8, 64);
    p.settle();
    assert!(matches!(p.reply(0, 2), Some(Err(_))), "{:?}", p.reply(0, 2));
    let failed = p.core(0).gen();
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    assert_eq!((failed.bitmap, failed.history[0]), (g, alone), "{failed:x?}");
    p.n[0].fail_writes = false;
    p.core(0).demote().unwrap();
    p.core(0).connect();
    p.connect();
    assert!(p.n[0].cache == p.n[1].cache, "not rebuilt from the peer");
    let s = p.core(0).status();
    assert_eq!(s.disk, DiskState::Outdated, "rebuilt without its acknowledged write");
    assert!(s.last_error.is_some_and(|e| e.contains("lost")), "not said");
    assert!(p.core(0).promote(false, 9).is_err(), "promotable without its write");
    let told = &p.core(0).told;
    assert!(!told.contains(&alone), "told data it lacks: {told:x?}");
}

/// a Primary's disk fails while b is connected (as in
/// `a_primary_whose_disk_fails_while_connected_is_rebuilt_uptodate`): a
/// started a generation on which it answered nothing, b is on the one a
/// left. a is switched to Secondary and reconnected: the rebuild from b
/// starts. Returns the pair and a's generation before the failure (b's).
fn a_rebuild_after_a_failure_that_lost_nothing() -> (Pair, u64) {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 1, 0, 9, 64);
    p.settle();
    assert_eq!(p.reply(0, 1), Some(Ok(())));
    let g = p.core(0).gen().current;
    p.n[0].fail_writes = true;
    p.write(0, 2, 128, 8, 64);
    p.settle();
    assert!(matches!(p.reply(0, 2), Some(Err(_))), "{:?}", p.reply(0, 2));
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    assert_eq!(p.core(0).gen().history[0], g);
    assert_eq!(p.core(1).gen().current, g);
    p.n[0].fail_writes = false;
    // What a failed disk may hold, where the rebuild reaches last.
    let end = p.n[0].cache.len() - 1;
    (p.n[0].cache[end], p.n[0].durable[end]) = (0x55, 0x55);
    p.core(0).demote().unwrap();
    p.core(0).connect();
    p.cut();
    (p, g)
}

/// The rebuild of a disk that failed holding nothing the peer lacks (its
/// generation, started by this process, answered nothing) is cut short
/// by a restart of the node (a kill, a power loss): once it completes
/// the node is UpToDate, promotable without `--force`, keeping what it
/// told the witness. Before, "answered nothing" lived only in the
/// process's memory: the resumed rebuild judged the failed generation
/// to hold acknowledged writes, and the node stayed Outdated, "those
/// writes are lost" (review, helper-150; task of helper-151).
#[test]
fn a_rebuild_that_lost_nothing_cut_short_by_a_restart_ends_uptodate() {
    for power in [false, true] {
        let (mut p, g) = a_rebuild_after_a_failure_that_lost_nothing();
        p.core(0).told = vec![g, 0xabcdef];
        rebuild_cut_short_by_a_restart(&mut p, power);
        let s = p.core(0).status();
        assert_eq!(s.disk, DiskState::UpToDate, "power {power}: {:?}", s.last_error);
        assert_eq!(s.last_error, None);
        assert_eq!(p.core(0).gen().current, g);
        let told = p.core(0).told.clone();
        assert!(told.contains(&0xabcdef), "what the node told forgotten: {told:x?}");
        assert!(p.core(0).promote(false, 5).is_ok(), "the rebuilt node is not promotable");
    }
}

/// As above, the link cut mid-rebuild, and b, promoted meanwhile, writes
/// on a new generation: a's data still lost nothing b lacks, and b's
/// data grew from the generation a left. Demoted again before the pair
/// meets, b is no Primary to make the data the truth: a must come out
/// UpToDate on its own judgement. Before, the resumed handshake compared
/// b's new generation with the one a left, judged a to have lost
/// acknowledged writes, and pinned it Outdated (found with the test
/// above, helper-151).
#[test]
fn a_rebuild_that_lost_nothing_ends_uptodate_though_the_peer_moved_on() {
    let (mut p, g) = a_rebuild_after_a_failure_that_lost_nothing();
    p.connect_partial(30);
    assert_eq!(p.core(0).disk(), DiskState::Inconsistent, "the rebuild did not start");
    p.core(1).promote(false, 6).unwrap();
    p.write(1, 3, 256, 7, 64);
    p.settle();
    assert_eq!(p.reply(1, 3), Some(Ok(())));
    let moved = p.core(1).gen().current;
    assert_ne!(moved, g, "b started no generation alone");
    p.core(1).demote().unwrap();
    p.settle();
    p.connect();
    assert!(p.n[0].cache == p.n[1].cache, "not rebuilt from the peer");
    let s = p.core(0).status();
    assert_eq!(s.disk, DiskState::UpToDate, "{:?}", s.last_error);
    assert_eq!(p.core(0).gen().current, moved);
    assert!(p.core(0).promote(false, 7).is_ok(), "the rebuilt node is not promotable");
}

/// The counterpart: a node that may have lost acknowledged writes (as in
/// `a_disk_failed_after_writes_acknowledged_alone_stays_outdated_once_rebuilt`:
/// written alone, restarted, its disk failed on the next generation)
/// whose rebuild is cut short by a restart stays Outdated once rebuilt.
#[test]
fn a_rebuild_that_lost_writes_cut_short_by_a_restart_stays_outdated() {
    for power in [false, true] {
        let mut p = Pair::new(Protocol::C, Plant::None);
        p.initial();
        p.cut();
        p.settle();
        p.write(0, 1, 0, 9, 64);
        p.settle();
        assert_eq!(p.reply(0, 1), Some(Ok(())), "a's write alone not acknowledged");
        let alone = p.core(0).gen().current;
        p.crash(0, false);
        p.restart(0);
        p.core(0).promote(true, 7).unwrap();
        p.settle();
        p.n[0].fail_writes = true;
        p.write(0, 2, 128, 8, 64);
        p.settle();
        assert!(matches!(p.reply(0, 2), Some(Err(_))), "{:?}", p.reply(0, 2));
        assert_eq!(p.core(0).disk(), DiskState::Failed);
        assert_eq!(p.core(0).gen().history[0], alone);
        p.n[0].fail_writes = false;
        let end = p.n[0].cache.len() - 1;
        (p.n[0].cache[end], p.n[0].durable[end]) = (0x55, 0x55);
        p.core(0).demote().unwrap();
        p.core(0).connect();
        rebuild_cut_short_by_a_restart(&mut p, power);
        let s = p.core(0).status();
        assert_eq!(s.disk, DiskState::Outdated, "power {power}: rebuilt without its write");
        assert!(s.last_error.is_some_and(|e| e.contains("lost")), "not said");
        assert!(p.core(0).promote(false, 9).is_err(), "promotable without its write");
    }
}

/// a's rebuild from b starts and is cut short by a's process ending (a
/// kill, or a power loss when `power`); restarted, it meets b again and
/// the rebuild completes.
fn rebuild_cut_short_by_a_restart(p: &mut Pair, power: bool) {
    p.connect_partial(30);
    assert_eq!(p.core(0).disk(), DiskState::Inconsistent, "the rebuild did not start");
    assert!(p.n[0].cache != p.n[1].cache, "the rebuild was not cut short");
    p.crash(0, power);
    p.restart(0);
    p.connect();
    assert!(p.n[0].cache == p.n[1].cache, "not rebuilt from the peer");
}
