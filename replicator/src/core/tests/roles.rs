//! Roles: promotion (asked of the peer, forced, refused), demotion,
//! discards, what a Secondary may not do.

use super::*;

#[test]
fn a_secondary_never_replicates_its_flush_nor_starts_a_generation() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    c.flush(Duration::ZERO, 1);
    let a = drain(&mut c);
    assert!(!a.iter().any(|a| matches!(a, Action::Send { msg: Message::Data { .. }, .. })));
    for a in a {
        if let Action::Store { io, .. } = a {
            c.handle_io(Duration::ZERO, io, Ok(None));
        }
    }
    c.handle_link_down(Duration::ZERO, 1, "gone");
    run(&mut c, Duration::ZERO);
    assert_eq!(c.gen().current, GEN);
}

#[test]
fn primary_force_of_an_inconsistent_disk_syncs_the_peer_fully() {
    let mut c = core(Protocol::C, DiskState::Inconsistent);
    assert!(c.promote(false, 1).is_err(), "Inconsistent promoted without --force");
    c.promote(true, 1).unwrap();
    let g = c.gen();
    assert_ne!(g.current, GEN);
    // The peer is recognised by the bitmap's base, and takes every block.
    assert_eq!(
        crate::protocol::genid::decide(&g, &meta(DiskState::UpToDate).gen),
        crate::protocol::genid::Decision::SyncSource { full: false }
    );
    assert_eq!(c.dirty().bytes(), SIZE, "a bitmap-only resync of a partly synced disk");
    assert!(c.hello().forced_base, "the base is taken for data that grew from the peer's");
}

#[test]
fn reads_are_refused_on_unusable_disks() {
    for d in [DiskState::Inconsistent, DiskState::Outdated, DiskState::Failed] {
        assert!(core(Protocol::C, d).may_read().is_err(), "{d:?} serves reads");
    }
}

#[test]
fn primary_force_on_a_connected_never_synced_pair_starts_the_full_sync() {
    let mut p = Pair::with(Protocol::C, Plant::None, false);
    p.n[0].cache[100] = 7; // data that twinblock did not write
    p.connect();
    p.core(0).promote(true, 1).unwrap();
    p.settle();
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache);
}

/// The sync decision uses the roles the hellos announced: promoting a node
/// between its hello and the decision must not make both nodes SyncSource.
/// (Now such a promotion is refused: the peer's role is not known yet,
/// `promotion.rs`.)
#[test]
fn a_promotion_during_the_handshake_does_not_make_two_sources() {
    let mut c = cfg(Protocol::C);
    c.me = "b".into();
    c.peer = "a".into();
    let rec = recovered(DiskState::UpToDate);
    let mut b = Core::new(c, rec, Duration::ZERO, 3);
    run(&mut b, Duration::ZERO);
    b.handle_link_up(Duration::ZERO, 1);
    let g = GenIds { current: GEN, bitmap: 0, history: [0, 0] };
    let mut h = hello(Role::Secondary, DiskState::UpToDate, g);
    h.node = "a".into();
    b.handle_frame(Duration::ZERO, 1, Message::Hello(h));
    // Between the hello and the decision.
    let r = b.promote(false, 1);
    assert!(r.is_err_and(|e| e.0.contains("being set up")));
    assert_eq!(b.role(), Role::Secondary);
    // The peer's bitmap holds bits: same generation, a resync decided by
    // the tie-break, which the peer ("a", both Secondary) wins.
    b.handle_frame(Duration::ZERO, 1, Message::Bits { runs: vec![(0, 4)], last: true });
    run(&mut b, Duration::ZERO);
    assert_ne!(b.replication(), Replication::SyncSource);
}

/// A FLUSH that a Primary queued (behind writes waiting for the
/// handshake) and that is admitted after the role is gone fails like the
/// writes queued with it: turned into a Secondary's local flush, it would
/// be acknowledged as covering the peer without reaching it (simulator
/// seed 11037 at 5,000 steps, protocol B).
#[test]
fn a_flush_queued_on_a_primary_fails_if_the_role_is_gone_at_admission() {
    let mut c = core(Protocol::B, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    run(&mut c, Duration::ZERO);
    c.handle_link_up(Duration::ZERO, 1);
    run(&mut c, Duration::ZERO);
    c.write(Duration::ZERO, 1, 0, Bytes::from(vec![1u8; 64]), false);
    c.flush(Duration::ZERO, 2);
    let queued = run(&mut c, Duration::ZERO);
    assert!(!queued.iter().any(|a| matches!(a, Action::Reply { .. })), "{queued:?}");
    c.demote().unwrap();
    let acts = run(&mut c, Duration::ZERO);
    let reply = |req| {
        acts.iter().find_map(|a| match a {
            Action::Reply { req: r, result } if *r == req => Some(*result),
            _ => None,
        })
    };
    assert_eq!(reply(1), Some(Err(ReplyError::ReadOnly)));
    assert_eq!(reply(2), Some(Err(ReplyError::ReadOnly)), "the FLUSH became a local one");
}

/// A disk recreated under surviving metadata (Failed) can still be
/// declared good by `primary --force` (starting a pair over, or the peer
/// is gone for good); its peer then takes all of it.
#[test]
fn a_recreated_disk_can_be_forced() {
    let rec = Recovered {
        meta: Some(meta(DiskState::UpToDate)),
        bitmap: None,
        al: Vec::new(),
        disk_created: true,
        boot: 0,
    };
    let mut c = Core::new(cfg(Protocol::C), rec, Duration::ZERO, 1);
    assert_eq!(c.disk(), DiskState::Failed);
    assert!(c.promote(false, 1).is_err(), "a Failed disk promoted without force");
    c.promote(true, 1).unwrap();
    assert_eq!(c.disk(), DiskState::UpToDate);
    assert_ne!(c.gen().current, GEN);
    assert_eq!(c.dirty().bytes(), SIZE, "the peer must take all of it");
    assert!(c.hello().forced_base, "its data did not grow from the peer's");
}

/// `discard-my-data` gives up the data as it stands; a node promoted
/// afterwards acknowledges writes that were never given up, so its next
/// hello must not ask the peer to overwrite it (simulator seed 203066 at
/// 5,000 steps: promoted by the controller with the flag still set, its
/// acknowledged writes were later overwritten by a full sync).
#[test]
fn a_discard_does_not_outlive_a_promotion() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.discard_my_data().unwrap();
    assert!(c.hello().discard);
    c.promote(false, 1).unwrap();
    c.demote().unwrap();
    assert!(!c.hello().discard, "the discard outlived the promotion");
}

/// A connected pair in sync, both Secondary.
fn two_secondaries() -> Pair {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.core(0).demote().unwrap();
    p.settle();
    p
}

/// `primary` on both nodes of a connected pair at once: the peer agrees
/// to a promotion first, so exactly one becomes Primary (the name that
/// sorts first, both asking), and the other's `primary` fails with why.
/// Before, both State frames crossed, both became Primary and accepted
/// writes, and each refused the link (a split brain of a healthy pair;
/// found in review).
#[test]
fn primary_on_both_connected_nodes_at_once_makes_one_primary() {
    let mut p = two_secondaries();
    assert_eq!((p.core(0).role(), p.core(1).role()), (Role::Secondary, Role::Secondary));
    // Both asked before either hears of the other.
    p.core(0).promote(false, 2).unwrap();
    p.core(1).promote(false, 2).unwrap();
    let (ask_a, ask_b) =
        (p.core(0).promotion_asked().unwrap(), p.core(1).promotion_asked().unwrap());
    assert_eq!((p.core(0).role(), p.core(1).role()), (Role::Secondary, Role::Secondary));
    p.settle();
    assert_eq!(p.core(0).promotion_answer(ask_a), Some(Ok(())));
    let b = p.core(1).promotion_answer(ask_b).unwrap().unwrap_err();
    assert!(b.0.contains("a asked to become Primary at the same time"), "{b}");
    assert_eq!((p.core(0).role(), p.core(1).role()), (Role::Primary, Role::Secondary));
    assert!(p.core(0).accepts_writes() && !p.core(1).accepts_writes());
    assert_eq!(p.core(1).connection(), Connection::Connected, "the link stays up");
    // And the other way round: b asks alone and is granted once a is
    // Secondary; a's ask while b's is granted but not yet done is refused.
    p.core(0).demote().unwrap();
    p.settle();
    p.core(1).promote(false, 3).unwrap();
    p.hold_to[1] = true; // a's grant waits on its way to b
    p.settle_now();
    let r = p.core(0).promote(false, 3);
    assert!(r.is_err_and(|e| e.0.contains("b is becoming Primary")));
    p.hold_to[1] = false;
    p.settle();
    assert_eq!((p.core(0).role(), p.core(1).role()), (Role::Secondary, Role::Primary));
    // a asks (what it heard of b's role may be a moment old); b refuses.
    p.core(0).promote(false, 4).unwrap();
    let ask = p.core(0).promotion_asked().unwrap();
    p.settle();
    let e = p.core(0).promotion_answer(ask).unwrap().unwrap_err();
    assert!(e.0.contains("b is Primary; demote it first"), "{e}");
    assert_eq!((p.core(0).role(), p.core(1).role()), (Role::Secondary, Role::Primary));
}

/// An ask whose link goes down before the answer fails (the node stays
/// Secondary); `primary` again, disconnected, decides alone. A grant
/// that comes after the ask was withdrawn promotes nothing.
#[test]
fn an_unanswered_promotion_fails_and_a_late_grant_changes_nothing() {
    let mut p = two_secondaries();
    p.core(1).promote(false, 2).unwrap();
    let ask = p.core(1).promotion_asked().unwrap();
    p.hold_to[0] = true; // the ask waits on its way to a
    p.settle_now();
    assert!(p.core(1).withdraw_promotion(ask).is_err());
    assert!(p.core(1).promotion_answer(ask).unwrap().is_err());
    p.hold_to[0] = false;
    p.settle();
    assert_eq!((p.core(0).role(), p.core(1).role()), (Role::Secondary, Role::Secondary));
    assert!(p.core(0).promote(false, 3).is_ok(), "a, no longer counting b as promoting");
    p.settle();
    assert_eq!(p.core(0).role(), Role::Primary);
    p.core(0).demote().unwrap();
    p.settle();
    p.core(1).promote(false, 4).unwrap();
    let ask = p.core(1).promotion_asked().unwrap();
    p.drop_to[0] = true;
    p.settle_now();
    p.cut();
    let e = p.core(1).promotion_answer(ask).unwrap().unwrap_err();
    assert!(e.0.contains("went down before it answered"), "{e}");
    assert_eq!(p.core(1).role(), Role::Secondary);
    p.core(1).promote(false, 5).unwrap();
    assert_eq!(p.core(1).role(), Role::Primary, "disconnected: decided alone");
}

/// `primary --force` on a SyncTarget mid bitmap-resync, its SyncSource a
/// connected UpToDate Secondary. It used to be granted and make the
/// forced node the truth: the peer took a full sync from a partly synced
/// disk, and what the pair had acknowledged was gone from both (found by
/// review: an operator's hasty `primary --force` on the wrong node). It is
/// refused now, naming the peer; the resync runs to its end and the disks
/// match.
#[test]
fn force_on_a_connected_sync_target_is_refused_and_the_resync_completes() {
    let mut p = Pair::with(Protocol::C, Plant::None, false);
    p.initial();
    // (The harness seeds both cores' id generators alike: b restarts with
    // its own seed, or its first new generation would repeat a's.)
    p.crash(1, false);
    p.restart(1);
    p.cut();
    for k in 0..32u64 {
        p.write(0, 100 + k, k * 256, 9, 256); // a writes apart: a bitmap resync
    }
    p.settle();
    p.core(0).demote().unwrap();
    p.settle();
    p.connect_steps_until(|p| p.n[1].c.as_ref().unwrap().replication() == Replication::SyncTarget);
    assert!(p.core(0).dirty().bytes() > 0, "the resync is over");
    let e = p.core(1).promote(true, 5).unwrap_err();
    assert!(e.0.contains("peer a holds UpToDate data"), "{e}");
    p.settle();
    assert_eq!((p.core(0).role(), p.core(1).role()), (Role::Secondary, Role::Secondary));
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache);
}

/// Full-resync flavour of the above: b's disk was replaced (never synced),
/// a is an UpToDate Secondary SyncSource; forcing b mid-sync is refused,
/// and the full sync completes.
#[test]
fn force_on_a_connected_full_sync_target_is_refused() {
    let mut p = Pair::with(Protocol::C, Plant::None, false);
    for (i, x) in p.n[0].cache.iter_mut().enumerate() {
        *x = (i % 251) as u8 + 1;
    }
    p.n[0].durable = p.n[0].cache.clone();
    p.core(0).promote(true, 1).unwrap();
    p.settle();
    p.core(0).demote().unwrap();
    p.settle();
    p.crash(1, false); // (b's own id seed, see above)
    p.restart(1);
    p.connect_steps_until(|p| p.n[1].c.as_ref().unwrap().replication() == Replication::SyncTarget);
    let e = p.core(1).promote(true, 5).unwrap_err();
    assert!(e.0.contains("peer a holds UpToDate data"), "{e}");
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache);
}

/// Simulator seed 9102746 (witness controller, adaptive): the link stalled
/// across two reigns on one session. b was promoted, wrote W and demoted
/// while its frames to a waited in the stalled link; a, promoted without
/// knowing of b's reign (the controller asks the witness, not the peer),
/// wrote to the same block. When the link came back a received b's State
/// (Primary) and W: applied over a's newer data, the disks differed while
/// both said they were in sync. Here a's side, fed by hand: a write of a
/// reign that began before a's own, during one session, ends the session
/// (the handshake's resync then decides); one of a later reign is applied.
#[test]
fn a_write_of_a_reign_older_than_this_nodes_is_refused() {
    for (peer_reign, refused) in [(100, true), (200, true), (300, false)] {
        let t = Duration::ZERO;
        let mut c = core(Protocol::C, DiskState::UpToDate);
        connect(&mut c, 1, Role::Secondary);
        c.promote(false, 200).unwrap();
        run(&mut c, t);
        let ask = c.promotion_asked().expect("asked");
        c.handle_frame(t, 1, Message::PromoteAnswer { ask, granted: true, why: String::new() });
        run(&mut c, t);
        assert_eq!(c.role(), Role::Primary);
        c.demote().unwrap();
        run(&mut c, t);
        let state = |role| Message::State {
            role,
            disk: DiskState::UpToDate,
            peer_out_of_sync: 0,
            fresh: false,
            current: GEN,
            promoted_at: peer_reign,
        };
        c.handle_frame(t, 1, state(Role::Primary));
        let op = Op::write(4096, Bytes::from(vec![0xbb; 1024]), false);
        c.handle_frame(t, 1, Message::Data { seq: 1, op });
        let (a, applied) = run_applied(&mut c, t);
        let why = c.status().last_error;
        assert_eq!(closed(&a), refused, "peer's reign {peer_reign}: {why:?}");
        assert_eq!(applied.is_empty(), refused, "peer's reign {peer_reign}");
        if refused {
            let why = c.status().last_error.unwrap_or_default();
            assert!(why.contains("reign"), "{why}");
        }
    }
}

/// `discard-my-data` on a Secondary whose data is newer than the
/// Primary's, run after its hello went out: the handshake decides on
/// the hello (the Secondary would be the source, which the Primary
/// refuses: StandAlone). The discard is not dropped: the Secondary
/// renegotiates, and once the operator connects the Primary again the
/// Secondary takes the Primary's data (before, the discard was dropped
/// and the pair met the same refusal again).
#[test]
fn a_discard_run_after_the_hello_is_carried_by_the_next_handshake() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.cut();
    p.settle();
    // b, promoted alone, writes: its data is newer than Primary a's.
    p.core(1).promote(false, 5).unwrap();
    p.settle();
    p.write(1, 50, 0, 9, 1024);
    p.settle();
    p.core(1).demote().unwrap();
    p.settle();
    let a_data = p.n[0].cache.clone();
    assert_ne!(p.n[1].cache, a_data);
    // The link returns; b's hello is out when the operator discards b.
    p.connect_steps(0, |_| {});
    p.core(1).discard_my_data().unwrap();
    p.settle();
    assert_eq!(p.core(0).role(), Role::Primary);
    // The operator connects a again.
    p.core(0).connect();
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate, "{:?}", p.core(1).status().last_error);
    assert!(p.n[1].cache == a_data, "b did not take a's data: the discard was dropped");
    assert_eq!(p.core(0).connection(), Connection::Connected, "{:?}", p.core(0).status());
}

/// The same late discard facing a Primary whose disk failed: no discard
/// applies there (the Secondary holds the only good copy and is the
/// source whatever its hello said), so it is not kept pending, which
/// under a controller would keep that copy from claiming (found by
/// review: it was kept, one more handshake, then cleared).
#[test]
fn a_discard_after_the_hello_facing_a_failed_primary_is_not_kept() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 10, 0, 7, 1024);
    p.settle();
    p.n[0].fail_writes = true;
    p.write(0, 11, 1024, 8, 1024);
    p.settle();
    assert_eq!(p.core(0).disk(), DiskState::Failed);
    p.cut();
    p.settle();
    p.connect_steps(0, |_| {});
    p.core(1).discard_my_data().unwrap();
    p.settle();
    assert!(!p.core(1).discard, "a discard that cannot apply is kept pending");
}
