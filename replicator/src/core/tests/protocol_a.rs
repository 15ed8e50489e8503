//! Protocol A: when a Secondary whose link went may lack writes its peer
//! acknowledged (Consistent), and when it cannot (UpToDate).

use super::*;

/// (From review, helper-77.) Protocol A, no controller. `a`, a SyncTarget that has just taken
/// SyncDone (UpToDate in memory, its record's update still on its way),
/// runs `primary`: its PromoteAsk goes out, then the record is saved and
/// `meta_saved` announces State(Secondary) AFTER the ask. `b` grants
/// (peer_promoting = true), then takes that State: peer_promoting is
/// cleared although `a` is about to promote on b's grant. `a` promotes,
/// acknowledges a write (A: on its local completion); the link fails
/// before State(Primary) reaches `b`. `b` kept UpToDate and `primary`
/// without --force was accepted on a disk that lacks the acknowledged
/// write (the grant is now remembered until a State says Primary).
#[test]
fn a_state_sent_before_the_grant_was_heard_leaves_an_a_secondary_consistent() {
    let mut p = Pair::new(Protocol::A, Plant::None);
    p.initial(); // a Primary (forced), b UpToDate
    p.core(0).demote().unwrap();
    p.settle();
    // b moves on alone, so that a becomes b's SyncTarget at the next link.
    p.cut();
    p.settle();
    p.core(1).promote(true, 10).unwrap();
    p.settle();
    p.write(1, 100, 0, 0x11, 4096);
    p.settle();
    p.core(1).demote().unwrap();
    p.settle();
    // Reconnect: a is b's SyncTarget; stop right after a took SyncDone.
    p.connect_steps_until(|p| {
        p.n[0].c.as_ref().unwrap().disk() == DiskState::UpToDate
            && p.n[0].meta.as_ref().is_some_and(|m| m.disk != DiskState::UpToDate)
    });
    assert_eq!(p.core(0).role(), Role::Secondary);
    // `primary` on a: asked of b (the record's save is still queued).
    p.core(0).promote(false, 20).unwrap();
    assert!(p.core(0).promotion_asked().is_some());
    // a performs its actions (record saved -> State(Secondary) after the
    // ask); b takes the ask and that State; b's answer waits.
    p.hold_to[0] = true;
    p.settle_now();
    // a hears the grant; nothing more reaches b.
    p.hold_to[0] = false;
    p.hold_to[1] = true;
    p.settle_now();
    assert_eq!(p.core(0).role(), Role::Primary, "a promoted on b's grant");
    p.write(0, 200, 8192, 0x22, 4096);
    p.settle_now();
    // (The reign's first write waits for b, as in C: b's record may not
    // say yet that it may be behind, `session::PeerBehind`.)
    assert_eq!(p.reply(0, 200), None, "answered before b could have saved that it is behind");
    // The link fails with State(Primary) and the write on their way to b.
    p.hold_to[1] = false;
    p.cut();
    p.settle();
    let bdisk = p.core(1).disk();
    let r = p.core(1).promote(false, 30);
    let has = p.n[1].cache[8192] == 0x22;
    eprintln!("b after the cut: {bdisk:?}; primary (no --force): {r:?}; holds the write: {has}");
    assert!(
        bdisk != DiskState::UpToDate || has,
        "b is UpToDate lacking a write a acknowledged (promote without --force: {r:?})"
    );
}

/// (Review, helper-86.) Protocol A: both processes are killed, the
/// Secondary first, with a write the Primary acknowledged still on its
/// way. The Secondary's record said its peer was Primary, so it comes
/// back Consistent and `primary` without `--force` is refused, as when
/// the link goes first (before, it came back UpToDate and was promoted
/// lacking the write). A peer that demoted first sent every write before
/// saying so: then the Secondary comes back UpToDate.
#[test]
fn an_a_secondary_killed_while_its_peer_is_primary_comes_back_consistent() {
    let mut p = Pair::new(Protocol::A, Plant::None);
    p.initial();
    p.write(0, 100, 0, 0x11, 4096);
    p.settle();
    assert!(
        p.n[1].meta.as_ref().is_some_and(|m| m.behind_async_primary),
        "b's record does not say its peer is an A Primary"
    );
    // a answers a write that never reaches b; b's process dies, then a's.
    p.hold_to[1] = true;
    p.write(0, 101, 8192, 0x22, 4096);
    p.settle_now();
    assert_eq!(p.reply(0, 101), Some(Ok(())), "protocol A acknowledged the write");
    p.crash(1, false);
    p.hold_to[1] = false;
    p.crash(0, false);
    p.restart(1);
    assert_eq!(p.n[1].cache[8192], 0, "b holds the write: the case is not made");
    assert_eq!(p.core(1).disk(), DiskState::Consistent, "b came back UpToDate");
    let r = p.core(1).promote(false, 30);
    assert!(r.is_err(), "primary without --force accepted on b lacking a's write");
    // a returns: the write reaches b, which is UpToDate again.
    p.restart(0);
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    assert!(!p.n[1].meta.as_ref().is_some_and(|m| m.behind_async_primary));

    // a demotes first: every write it answered reached b before its State.
    p.core(0).promote(false, 40).unwrap();
    p.settle();
    p.write(0, 102, 4096, 0x33, 4096);
    p.settle();
    p.core(0).demote().unwrap();
    p.settle();
    assert!(
        !p.n[1].meta.as_ref().is_some_and(|m| m.behind_async_primary),
        "b's record still says its peer is Primary after the peer demoted"
    );
    p.crash(1, false);
    p.crash(0, false);
    p.restart(1);
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    p.core(1).promote(false, 50).unwrap();
    assert_eq!(p.core(1).role(), Role::Primary);
}

/// Protocol A, a handover: a answers W at once, then says it is
/// Secondary; b has received W and not yet written it (its store holds
/// it) when its process dies, then a's. Before, b's record stopped saying
/// it may be behind as soon as a said Secondary: b came back UpToDate
/// without W and `primary` without `--force` was accepted on it (a known
/// limit). Now the record says so until the peer's writes it received are
/// written: b comes back Consistent, and meeting a brings W.
#[test]
fn an_a_secondary_killed_with_a_demoted_peers_writes_unwritten_comes_back_consistent() {
    let mut p = Pair::new(Protocol::A, Plant::None);
    p.initial();
    p.prime_a(0, 0, 4096);
    p.n[1].hold_store = true;
    p.write(0, 101, 8192, 0x22, 4096);
    p.settle_now();
    assert_eq!(p.reply(0, 101), Some(Ok(())), "protocol A acknowledged the write");
    p.core(0).demote().unwrap();
    p.settle_now();
    assert_eq!(p.core(1).status().peer_role, Some(Role::Secondary), "b did not hear a demote");
    assert!(
        p.n[1].meta.as_ref().is_some_and(|m| m.behind_async_primary),
        "b's record no longer says it may be behind, with a's write still to write"
    );
    // b's process dies with the write unwritten (its store never did it).
    p.held.retain(|(i, _)| *i != 1);
    p.n[1].hold_store = false;
    p.crash(1, false);
    p.crash(0, false);
    p.restart(1);
    assert_eq!(p.n[1].cache[8192], 0, "b holds the write: the case is not made");
    assert_eq!(p.core(1).disk(), DiskState::Consistent, "b came back UpToDate without a's write");
    assert!(p.core(1).promote(false, 30).is_err(), "primary without --force accepted on b");
    // a returns: its write reaches b, which is UpToDate again.
    p.restart(0);
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    assert_eq!(p.n[1].cache[8192], 0x22);

    // Written before the process stops: the record is cleared again, and
    // b comes back UpToDate (nothing was lost).
    p.core(0).promote(false, 40).unwrap();
    p.settle();
    p.write(0, 102, 4096, 0x33, 4096);
    p.settle();
    p.core(0).demote().unwrap();
    p.settle();
    assert!(!p.n[1].meta.as_ref().is_some_and(|m| m.behind_async_primary));
    p.crash(1, false);
    p.restart(1);
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
}

/// Protocol A: a answers W (8192, 0x22) at once while b's activity-log
/// update for it hangs (W stays queued on b); then the handover,
/// `secondary` on a and `primary` on b (granted by a), with W unwritten.
fn handed_over_with_w_queued() -> Pair {
    let mut p = Pair::new(Protocol::A, Plant::None);
    p.initial();
    p.prime_a(0, 0, 4096);
    p.settle();
    // b's activity-log update for W's extent hangs: W stays queued.
    p.n[1].hang_al = true;
    p.write(0, 101, 8192, 0x22, 1024);
    p.settle_now();
    assert_eq!(p.reply(0, 101), Some(Ok(())), "protocol A acknowledged the write");
    assert!(!p.held.is_empty(), "b's activity-log update is not held");
    // The handover: `secondary` on a, then `primary` on b (granted by a).
    p.core(0).demote().unwrap();
    p.settle_now();
    assert_eq!(p.core(1).status().peer_role, Some(Role::Secondary));
    p.core(1).promote(false, 50).unwrap();
    p.settle_now();
    assert_eq!(p.core(1).role(), Role::Primary, "b was not promoted");
    assert_eq!(p.n[1].cache[8192], 0, "b wrote W: the case is not made");
    p
}

/// (Review, helper-92.) Protocol A, a handover done the usual way:
/// `secondary` on a, then `primary` on b. a answered W at once; W waits
/// on b for b's activity-log update (slow) when b is promoted (the
/// promotion does not wait for the peer's writes to land; b's own writes
/// do). Before, promoted, b's record said nothing of W: b's process
/// killed, then a's, b came back UpToDate without W, `primary` without
/// `--force` was accepted on it, and meeting a, b (the last Primary) was
/// the resync's source and W was overwritten on a too. Now b's record
/// says it lost writes it received (as protocol B's does): it comes back
/// held back, and a is the source. Once W is written the record clears
/// before b answers a write of its own, and a crash after that brings b
/// back UpToDate and free to be promoted (held back, a would be the source
/// and its older copy would overwrite b's write).
#[test]
fn an_a_node_promoted_with_its_peers_write_queued_then_killed_is_held_back() {
    for kill in [true, false] {
        let mut p = handed_over_with_w_queued();
        assert!(
            p.n[1].meta.as_ref().is_some_and(|m| m.received_lost),
            "b, promoted with W unwritten, says nothing of it"
        );
        if kill {
            // b's process dies with W unwritten (its log update with it).
            p.held.retain(|(i, _)| *i != 1);
            p.n[1].hang_al = false;
            p.crash(1, false);
            p.crash(0, false);
            p.restart(1);
            assert_eq!(p.n[1].cache[8192], 0, "b holds the write: the case is not made");
            let disk = p.core(1).disk();
            let r = p.core(1).promote(false, 60);
            let Err(e) = r else { panic!("b ({disk:?}) promoted without --force lacking W") };
            assert!(e.0.contains("may lack writes it confirmed"), "{}", e.0);
            p.restart(0);
            p.connect();
            assert_eq!(p.core(1).disk(), DiskState::UpToDate);
            assert_eq!(p.n[0].cache[8192], 0x22, "a's acknowledged W overwritten by b's copy");
            assert!(p.n[0].cache == p.n[1].cache, "disks differ");
        } else {
            // W lands, the record clears; b's own write X is answered.
            // b killed: back as it was, with X, and promoted again.
            p.n[1].hang_al = false;
            p.release_held();
            p.settle();
            assert_eq!(p.n[1].cache[8192], 0x22);
            assert!(!p.n[1].meta.as_ref().is_some_and(|m| m.received_lost));
            p.write(1, 201, 4096, 0x44, 4096);
            p.settle();
            assert_eq!(p.reply(1, 201), Some(Ok(())), "X never answered");
            p.crash(1, false);
            p.crash(0, false);
            p.restart(1);
            assert_eq!(p.core(1).disk(), DiskState::UpToDate);
            assert_eq!(p.n[1].cache[4096], 0x44);
            p.core(1).promote(false, 60).expect("b, which lost nothing, held back");
        }
    }
}

/// (Review, helper-93.) As
/// `an_a_node_promoted_with_its_peers_write_queued_then_killed_is_held_back`,
/// but the link drops and comes back while W still waits on b. Before, in
/// the handshake b (running) said it lost nothing (only its record said
/// `received_lost`), so as Primary it was the source and a, which holds W,
/// its Inconsistent SyncTarget; b killed before W landed came back held
/// back, met an Inconsistent a and was the source again: W, which a
/// acknowledged, was gone from both disks. Now b takes no link until W is
/// written: killed first, it meets an UpToDate a, which is the source.
/// Not killed, the link comes up once W lands, and the two are in sync.
#[test]
fn a_link_while_a_promoted_nodes_peer_writes_are_queued_waits_for_them() {
    for kill in [true, false] {
        let mut p = handed_over_with_w_queued();
        // The link drops and comes back; W still waits on b.
        p.cut();
        p.settle_now();
        let refused = p.core(1).link_refused();
        assert!(refused.as_ref().is_some_and(|w| w.contains("still being written")), "{refused:?}");
        p.connect_steps(2000, |_| {});
        assert_ne!(p.core(0).disk(), DiskState::Inconsistent, "a made b's SyncTarget");
        assert_eq!(p.n[1].cache[8192], 0, "b wrote W: the case is not made");
        if kill {
            p.cut();
            p.held.retain(|(i, _)| *i != 1);
            p.n[1].hang_al = false;
            p.crash(1, false);
            p.restart(1);
            assert_eq!(p.n[1].cache[8192], 0, "b holds the write: the case is not made");
            assert!(p.core(1).promote(false, 60).is_err(), "b promoted without --force lacking W");
        } else {
            p.n[1].hang_al = false;
            p.release_held();
            p.settle();
            assert!(p.core(1).link_refused().is_none());
        }
        p.connect();
        assert_eq!(p.core(1).connection(), Connection::Connected);
        assert_eq!(p.core(1).disk(), DiskState::UpToDate);
        assert_eq!(p.n[0].cache[8192], 0x22, "a's acknowledged W overwritten by b's copy");
        assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    }
}

/// (Review, helper-94.) The link's wait for a promoted node's queued peer
/// writes is not for a detached disk: b, promoted with two of a's writes
/// issued, fails one (EIO: detached) while the other never completes (the
/// disk answers nothing more). Before, every link was refused for ever
/// with "still being written", never true; now the link is taken and the
/// handshake judges it (a Failed Primary is no source).
#[test]
fn a_promoted_nodes_failed_disk_with_a_hung_peer_write_does_not_wait_for_it() {
    let mut p = Pair::new(Protocol::A, Plant::None);
    p.initial();
    p.prime_a(0, 0, 4096);
    p.settle();
    p.n[1].hold_store = true;
    p.write(0, 101, 8192, 0x22, 1024);
    p.write(0, 102, 9216, 0x33, 1024);
    p.settle_now();
    assert_eq!(p.reply(0, 101), Some(Ok(())));
    assert_eq!(p.reply(0, 102), Some(Ok(())));
    let is_write = |(i, a): &(usize, Action)| {
        *i == 1 && matches!(a, Action::Store { op: StoreOp::Write { .. }, .. })
    };
    // b's other store operations (its flushes) complete; its writes are held.
    for _ in 0..20 {
        let (w, o): (Vec<_>, Vec<_>) = std::mem::take(&mut p.held).into_iter().partition(is_write);
        if o.is_empty() {
            p.held = w;
            break;
        }
        p.held = o;
        p.n[1].hold_store = false;
        p.release_held();
        p.n[1].hold_store = true;
        let later = std::mem::take(&mut p.held);
        p.held = w;
        p.held.extend(later);
        p.settle_now();
    }
    assert_eq!(p.held.iter().filter(|x| is_write(x)).count(), 2, "a's writes not issued on b");
    p.core(0).demote().unwrap();
    p.settle_now();
    p.core(1).promote(false, 50).unwrap();
    p.settle_now();
    assert_eq!(p.core(1).role(), Role::Primary, "b was not promoted");
    assert_eq!(p.core(1).unwritten_peer_writes(), 2);
    // The first write hangs for ever; the second fails: b's disk detached.
    let k = p.held.iter().position(is_write).expect("a held write");
    let _hung = p.held.remove(k);
    p.n[1].hold_store = false;
    p.n[1].fail_writes = true;
    p.release_held();
    p.n[1].hang = true;
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::Failed, "b's disk not detached");
    assert_eq!(p.core(1).role(), Role::Primary);
    assert_eq!(p.core(1).unwritten_peer_writes(), 1, "the hung write still counted");
    let refused = p.core(1).link_refused();
    assert!(!refused.as_ref().is_some_and(|w| w.contains("still being written")), "{refused:?}");
}

/// (Review, helper-90.) Protocol A: b's record saying it may be behind
/// its Primary is still being saved when a, promoted on b's grant, writes
/// W; b's process dies, then a's. Before, a answered W at once: b came
/// back UpToDate from its old record and `primary` without `--force`
/// was accepted on it lacking W. Now a's first write of its reign waits
/// for b's completion (b applies nothing before its record is saved), so
/// W is not answered.
#[test]
fn a_reigns_first_write_waits_until_the_peer_saved_that_it_may_be_behind() {
    for via_hello in [false, true] {
        let mut p = Pair::new(Protocol::A, Plant::None);
        p.initial();
        p.core(0).demote().unwrap();
        p.settle();
        if via_hello {
            // a promoted apart without writing; b learns it from a's hello.
            p.cut();
            p.settle();
            p.core(0).promote(false, 20).unwrap();
            p.settle();
            p.n[1].hang_record = true;
            p.connect_steps_until(|p| {
                p.n[0].c.as_ref().unwrap().connection() == Connection::Connected
            });
        } else {
            p.n[1].hang_record = true;
            p.core(0).promote(false, 20).unwrap();
            p.settle_now();
        }
        assert_eq!(p.core(0).role(), Role::Primary);
        assert!(!p.n[1].meta.as_ref().unwrap().behind_async_primary, "the case is not made");
        p.write(0, 101, 8192, 0x22, 4096);
        p.settle_now();
        let answered = p.reply(0, 101) == Some(Ok(()));
        p.crash(1, false);
        p.n[1].hang_record = false;
        p.crash(0, false);
        p.restart(1);
        let has = p.n[1].cache[8192] == 0x22;
        let r = p.core(1).promote(false, 30);
        assert!(
            !answered || has || r.is_err(),
            "b promoted without --force lacking a write a acknowledged (via hello: {via_hello})"
        );
        assert!(!answered, "a answered before b's record said it may be behind");
    }
}

/// (Review, helper-91.) The completion of a write a sent in its previous
/// reign arrives after a demoted and was promoted again. Before, b cleared
/// its record's flag when it heard a demote, the record setting it again
/// after its grant was still being saved, and a took that completion for
/// proof of it: W2 was answered at once, and b, killed, came back
/// UpToDate without W2 and was promoted without `--force`. Now only a
/// completion of a write of this reign counts, and b's record no longer
/// clears while W1 is unwritten (since 2026-12-06): either way W2 is never
/// lost to a promotion without `--force`.
#[test]
fn a_completion_from_an_earlier_reign_proves_nothing_of_the_peers_record() {
    let mut p = Pair::new(Protocol::A, Plant::None);
    p.initial();
    assert!(p.n[1].meta.as_ref().unwrap().behind_async_primary);
    // W1, sent in a's first reign: b's disk is slow to complete it.
    p.n[1].hold_store = true;
    p.write(0, 101, 0, 0x11, 4096);
    p.settle_now();
    assert_eq!(p.reply(0, 101), None, "W1 waits for b");
    // a demotes (W1 still in flight) and is promoted again on b's grant;
    // b's record saying it is behind again hangs.
    p.core(0).demote().unwrap();
    p.settle_now();
    assert!(
        p.n[1].meta.as_ref().unwrap().behind_async_primary,
        "b's record cleared with W1 still to write"
    );
    p.n[1].hang_record = true;
    p.core(0).promote(false, 50).unwrap();
    p.settle_now();
    assert_eq!(p.core(0).role(), Role::Primary);
    // b's disk completes W1: its Ack reaches a in the new reign.
    p.n[1].hold_store = false;
    p.release_held();
    p.settle_now();
    assert_eq!(p.reply(0, 101), Some(Ok(())));
    p.write(0, 102, 8192, 0x22, 4096);
    p.settle_now();
    let answered = p.reply(0, 102) == Some(Ok(()));
    p.crash(1, false);
    p.n[1].hang_record = false;
    p.crash(0, false);
    p.restart(1);
    let has = p.n[1].cache[8192] == 0x22;
    let disk = p.core(1).disk();
    let r = p.core(1).promote(false, 60);
    assert!(
        !answered || has || r.is_err(),
        "b ({disk:?}) promoted without --force lacking W2, which a acknowledged: {r:?}"
    );
}

/// (Review of helper-93's open question.) Protocol A: a, Primary, answers
/// W, which b never gets; a's process is killed (b, whose Primary went,
/// is Consistent), and a comes back on a new disk: under its old
/// metadata (Failed, the generation b holds) or as a new node. The full
/// sync from b rebuilds it without W. Before, a came out UpToDate and
/// `primary` without `--force` was accepted on it over W's loss, while
/// on b, holding the very same data, it was refused; now a is Consistent
/// as b is, and only `--force` (which accepts the loss) promotes either.
/// A union resync between the two later (a bit of b's) leaves both so.
#[test]
fn an_a_primary_rebuilt_from_its_consistent_peer_is_consistent_too() {
    for keep_meta in [true, false] {
        let mut p = Pair::new(Protocol::A, Plant::None);
        p.initial();
        p.prime_a(0, 0, 4096);
        p.hold_to[1] = true;
        p.write(0, 101, 8192, 0x22, 1024);
        p.settle_now();
        assert_eq!(p.reply(0, 101), Some(Ok(())), "protocol A answered W");
        p.crash(0, false);
        p.hold_to[1] = false;
        assert_eq!(p.core(1).disk(), DiskState::Consistent);
        assert_eq!(p.n[1].cache[8192], 0, "b holds W: the case is not made");
        p.restart_on_a_new_disk(0, keep_meta);
        let was = p.core(0).disk();
        p.connect();
        assert_eq!(p.core(0).connection(), Connection::Connected, "{keep_meta}");
        assert!(p.n[0].cache == p.n[1].cache, "a not rebuilt from b ({was:?})");
        for i in [0, 1] {
            assert_eq!(
                p.core(i).disk(),
                DiskState::Consistent,
                "node {i} (new metadata: {})",
                !keep_meta
            );
            let r = p.core(i).promote(false, 60);
            assert!(r.is_err(), "node {i} promoted without --force lacking W, which a answered");
        }
        // A union on that generation later (a bit of b's after its
        // restart): neither comes out UpToDate.
        p.crash(1, false);
        p.n[1].bitmap.get_or_insert_with(|| vec![0])[0] |= 1 << 2;
        p.restart(1);
        let before = p.core(0).status().counters.resync_bytes;
        p.connect();
        let moved = p.core(0).status().counters.resync_bytes - before;
        assert!(moved > 0, "not a union of b's bit, from a");
        assert!(p.n[0].cache == p.n[1].cache, "disks differ");
        for i in [0, 1] {
            assert_eq!(p.core(i).disk(), DiskState::Consistent, "node {i} after the union");
        }
        // The operator accepts the loss on a: b follows, UpToDate.
        p.core(0).promote(true, 70).expect("--force");
        p.settle();
        p.connect();
        assert_eq!(p.core(0).disk(), DiskState::UpToDate);
        assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    }
}

/// (Review of helper-93's open question.) The killed course of
/// `a_link_while_a_promoted_nodes_peer_writes_are_queued_waits_for_them`:
/// a, Consistent (its Primary b went), is the source of the union resync
/// into b, which came back UpToDate but lost W, received from a and not
/// written (`received_lost`: it answered nothing of its own meanwhile).
/// Both end holding a's data, W included, and b UpToDate. Before, a
/// stayed Consistent beside it (`primary` without `--force` refused on
/// the node that holds every write either answered, accepted on its copy);
/// now the source is UpToDate on its target's word, as an Outdated
/// source is.
#[test]
fn a_consistent_source_of_a_union_into_an_uptodate_peer_ends_uptodate() {
    let mut p = handed_over_with_w_queued();
    p.cut();
    p.held.retain(|(i, _)| *i != 1);
    p.n[1].hang_al = false;
    p.crash(1, false);
    p.restart(1);
    assert_eq!(p.core(0).disk(), DiskState::Consistent, "a left Consistent by its Primary's loss");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.core(1).lost_since_synced(), "b does not say it lost W");
    let before = p.core(0).status().counters.resync_bytes;
    p.connect();
    assert!(p.core(0).status().counters.resync_bytes > before, "a was not the source");
    assert_eq!(p.n[1].cache[8192], 0x22);
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert_eq!(p.core(0).disk(), DiskState::UpToDate, "a, holding what b holds, left Consistent");
    assert_eq!(p.core(1).status().peer_disk, Some(DiskState::UpToDate), "b not told");
    p.core(0).promote(false, 70).expect("a refused without --force");
    p.settle();
    assert_eq!(p.core(0).role(), Role::Primary);
}

/// (Review, helper-97.) Protocol A: a, Primary, cut from b (b Consistent:
/// its Primary went), answers W alone (a new generation), and its disk
/// is replaced under its metadata: the full sync from b leaves a Outdated
/// (pinned: W, which it answered, is on neither node). A union on that
/// generation later, a the source (it reigned last), moves a's data, W
/// still missing, into b: b must not come out of it UpToDate (promotable
/// without `--force` over W's loss) when it went in Consistent.
#[test]
fn a_union_from_an_outdated_source_does_not_lift_a_consistent_target() {
    let mut p = Pair::new(Protocol::A, Plant::None);
    p.initial();
    p.prime_a(0, 0, 4096);
    p.cut();
    assert_eq!(p.core(1).disk(), DiskState::Consistent);
    p.write(0, 101, 8192, 0x22, 4096);
    p.settle();
    assert_eq!(p.reply(0, 101), Some(Ok(())), "a answered W alone");
    p.crash(0, false);
    p.restart_on_a_new_disk(0, true);
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    p.connect();
    assert!(p.n[0].cache == p.n[1].cache, "a not rebuilt from b");
    assert_eq!(p.core(0).disk(), DiskState::Outdated, "a lost W");
    assert_eq!(p.core(1).disk(), DiskState::Consistent);
    // A union on that generation (a bit of b's after its restart).
    restart_b_with_a_bit(&mut p);
    assert_eq!(p.core(1).disk(), DiskState::Consistent);
    union_from_a_leaves_b_without_w(&mut p);
}

/// (Review, helper-97.) The same in protocol C, with an Outdated target:
/// a, Primary, outdates b (a graceful disconnect), answers W alone, and
/// its disk is replaced under its metadata; rebuilt from b it is
/// Outdated (pinned). A union later from a into b must not make b
/// UpToDate, which it was not going in, lacking W.
#[test]
fn a_union_from_an_outdated_source_does_not_lift_an_outdated_target() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.outdate_by_disconnect();
    assert_eq!(p.core(1).disk(), DiskState::Outdated);
    p.write(0, 101, 8192, 0x22, 4096);
    p.settle();
    assert_eq!(p.reply(0, 101), Some(Ok(())), "a answered W alone");
    p.crash(0, false);
    p.restart_on_a_new_disk(0, true);
    p.connect();
    assert!(p.n[0].cache == p.n[1].cache, "a not rebuilt from b");
    assert_eq!(p.core(0).disk(), DiskState::Outdated, "a lost W");
    assert_eq!(p.core(1).disk(), DiskState::Outdated);
    restart_b_with_a_bit(&mut p);
    union_from_a_leaves_b_without_w(&mut p);
}

/// b restarted with a bit of its own set: the next link is a union on
/// one generation.
fn restart_b_with_a_bit(p: &mut Pair) {
    p.crash(1, false);
    p.n[1].bitmap.get_or_insert_with(|| vec![0])[0] |= 1 << 2;
    p.restart(1);
}

/// The union from a into b: both end with a's data, W (at 8192) on
/// neither, and b is not promotable without `--force`.
fn union_from_a_leaves_b_without_w(p: &mut Pair) {
    let before = p.core(0).status().counters.resync_bytes;
    p.connect();
    let moved = p.core(0).status().counters.resync_bytes - before;
    eprintln!("moved {moved}; a {:?} b {:?}", p.core(0).disk(), p.core(1).disk());
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    assert_ne!(p.n[1].cache[8192], 0x22, "b holds W: the case is not made");
    let bdisk = p.core(1).disk();
    let r = p.core(1).promote(false, 60);
    assert!(
        bdisk != DiskState::UpToDate && r.is_err(),
        "b ({bdisk:?}) promotable without --force lacking W, which a answered: {r:?}"
    );
}
