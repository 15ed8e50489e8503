//! The controller's rules between two cores and the real arbiter (the
//! `ctl` harness): claims, leases, handovers, depositions.

use super::*;

/// A claim sent while the peer was silent, granted after the peer came
/// back as a Primary on a running session: the claimant answered that
/// Primary's heartbeats meanwhile, so the Primary holds a peer lease, and
/// must not be deposed by closing the session: both would accept writes.
#[test]
fn a_claim_granted_after_the_primary_came_back_is_not_used() {
    use ctl::Duo;
    let mut d = Duo::new(Protocol::A);
    d.connect();
    d.witness_up(0, true);
    d.votes[1].clear(); // b's witness link is not up yet
    d.vote_all(0);
    assert_eq!(d.c[0].role(), Role::Primary);
    d.hooks_done(0);
    d.witness_up(1, true);
    d.vote_all(1);
    d.vote_all(0);
    assert!(d.c[0].accepts_writes());
    // a loses the witness, and the link to b goes.
    d.witness_up(0, false);
    d.cut();
    let mut claimed = false;
    for _ in 0..40 {
        d.tick(Duration::from_millis(100));
        if !d.votes[1].is_empty() {
            claimed = true;
            break;
        }
        d.vote_all(0);
    }
    assert!(claimed, "b never claimed");
    assert!(!d.c[0].accepts_writes(), "a has no quorum while apart");
    // The link comes back before the witness answers b: a's heartbeats,
    // answered by b, give it quorum again.
    d.connect();
    for _ in 0..2 {
        d.tick(Duration::from_millis(150));
        d.flow();
    }
    assert_eq!(d.c[0].connection(), Connection::Connected);
    assert!(d.c[0].accepts_writes(), "a regained quorum through b");
    // Now the witness answers b's claim (a's witness lease is long over).
    d.lazy_close[1] = true;
    d.vote_all(1);
    if d.c[1].role() == Role::Primary {
        d.hooks_done(1);
        d.vote_all(1);
    }
    // Each node's client writes before a notices anything.
    d.write(0, 1, 0, 0xaa);
    d.write(1, 2, 64, 0xbb);
    d.vote_all(1);
    let acked_a = d.reply(0, 1) == Some(Ok(()));
    let acked_b = d.reply(1, 2) == Some(Ok(()));
    assert!(
        !(d.c[0].accepts_writes() && d.c[1].accepts_writes() || acked_a && acked_b),
        "both accept writes (acknowledged: a {acked_a}, b {acked_b})"
    );
}

/// The Primary told the witness its peer is current again (after a
/// resync); until that request is answered the witness may already have
/// dropped the peer from its outdated set, so writes the peer lacks must
/// not be acknowledged on the strength of the older "peer outdated" grant.
#[test]
fn a_request_saying_the_peer_is_current_ends_running_alone_at_once() {
    use ctl::Duo;
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    // Apart: a writes alone once the witness outdated b.
    d.cut();
    d.write(0, 1, 0, 0x11);
    d.vote_all(0);
    assert_eq!(d.reply(0, 1), Some(Ok(())));
    assert!(d.w.outdated().any(|n| n == "b"));
    // Back together: b resyncs; a tells the witness b is current.
    d.connect();
    for _ in 0..10 {
        d.tick(Duration::from_millis(50));
        d.flow();
        d.vote_all(1);
    }
    assert_eq!(d.c[1].disk(), DiskState::UpToDate);
    assert_eq!(d.c[1].replication(), Replication::Established);
    let r = d.decide(0).expect("a's renew: b is current");
    assert!(r.granted);
    assert!(!d.w.outdated().any(|n| n == "b"), "the witness counts b current again");
    d.votes[0].clear();
    // Before that answer reaches a, a writes; the write never reaches b,
    // the link goes.
    d.mute[0] = true;
    d.write(0, 2, 64, 0x22);
    d.cut();
    d.vote_all(0);
    // a loses the witness (the answer is lost) and stops; b takes over.
    d.witness_up(0, false);
    d.votes[0].clear();
    let mut promoted = false;
    for _ in 0..50 {
        d.tick(Duration::from_millis(100));
        d.vote_all(1);
        if d.c[1].role() == Role::Primary {
            promoted = true;
            break;
        }
    }
    assert!(
        !(d.reply(0, 2) == Some(Ok(())) && promoted),
        "a acknowledged a write b never got, and the witness promoted b"
    );
}

/// A Primary deposed by the witness discards its changes since it went
/// apart (full resync from the new Primary) — that is only sound if none
/// of them was acknowledged. A witness that lost its state (no `meta`)
/// promoted a stale peer (no more: it refuses claims until a grant told it
/// who is current); one restored from an old backup still can, and the
/// deposed Primary must then keep the writes it acknowledged alone (a
/// split brain for the operator), not overwrite them silently.
///
/// The same for a FLUSH acknowledged alone (it promised what `a` alone
/// made durable; b may have lost it with its power): before, the deposed
/// node kept only writes acknowledged apart, and gave the FLUSH's data up
/// in full (review).
#[test]
fn a_deposed_primary_keeps_changes_it_acknowledged_alone() {
    for flush in [false, true] {
        deposed_after_acknowledging_alone(flush);
    }
}

fn deposed_after_acknowledging_alone(flush: bool) {
    use ctl::Duo;
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    // Apart: a acknowledges a write b lacks, or a FLUSH alone (the
    // witness outdated b).
    if flush {
        d.write(0, 9, 0, 0x11);
        d.flow();
        assert_eq!(d.reply(0, 9), Some(Ok(())));
    }
    d.cut();
    d.write_or_flush(flush, 0, 1, 0, 0x11);
    d.vote_all(0);
    assert_eq!(d.reply(0, 1), Some(Ok(())));
    // a loses the witness; the witness restarts without saved state.
    d.witness_up(0, false);
    d.votes[0].clear();
    d.w = crate::arbiter::Arbiter::new("r", d.now, ctl::DEAD, Default::default());
    d.witness_up(1, false);
    d.witness_up(1, true);
    let promote = |d: &mut Duo| {
        for _ in 0..60 {
            d.tick(Duration::from_millis(100));
            d.votes[0].clear();
            d.vote_all(1);
            if d.c[1].role() == Role::Primary {
                return true;
            }
        }
        false
    };
    assert!(!promote(&mut d), "a witness without its record promotes b, which a ran without");
    // Its state restored from an old backup (b not outdated yet) does.
    let old = crate::arbiter::Durable { complete: true, ..Default::default() };
    d.w = crate::arbiter::Arbiter::new("r", d.now, ctl::DEAD, old);
    d.witness_up(1, false);
    d.witness_up(1, true);
    assert!(promote(&mut d), "the witness restored from a backup promotes b");
    d.hooks_done(1);
    d.vote_all(1);
    // a comes back to the witness: deposed.
    d.witness_up(0, true);
    d.vote_all(0);
    d.hooks_done(0);
    d.vote_all(0);
    assert_eq!(d.c[0].role(), Role::Secondary);
    // The link returns: a must not become b's SyncTarget.
    d.connect();
    assert_ne!(
        d.c[0].disk(),
        DiskState::Inconsistent,
        "a's acknowledged write is overwritten by a full sync from the stale b"
    );
    // For the operator: the refusal of further links says why (it said
    // "disconnected by the operator").
    let why = d.c[0].link_refused().or(d.c[1].link_refused()).unwrap_or_default();
    assert_eq!(why, "StandAlone: the peer's data is newer than this Primary's");
}

/// A Renew granted after the Primary demoted and released the right must
/// not give it quorum: forced Primary again at once (the operator), it
/// would accept writes while the witness hands the right to its peer.
#[test]
fn a_late_renew_grant_after_the_release_gives_no_quorum() {
    use ctl::Duo;
    let mut d = Duo::new(Protocol::C);
    d.connect();
    d.witness_up(0, true);
    d.votes[1].clear();
    d.vote_all(0);
    d.hooks_done(0);
    d.vote_all(0);
    assert_eq!(d.c[0].role(), Role::Primary);
    // a renews; the request is on its way when the operator demotes a.
    d.tick(Duration::from_millis(250));
    d.flow();
    assert!(!d.votes[0].is_empty(), "a renews");
    d.c[0].demote().unwrap();
    d.act(0);
    d.hooks_done(0);
    assert_eq!(d.c[0].role(), Role::Secondary);
    d.flow();
    // The witness answers the renew, then reads the release.
    d.vote_all(0);
    assert_eq!(d.w.holder(), None);
    // The operator forces a back at once.
    d.c[0].promote(true, 1).unwrap();
    d.act(0);
    d.votes[0].clear();
    // b had claimed (it saw a Secondary); the witness, holding no one,
    // grants it.
    d.witness_up(1, true);
    let g = d.decide(1).expect("b claims");
    assert!(g.granted, "{g:?}");
    assert!(
        !d.c[0].accepts_writes(),
        "a has quorum from a renew granted before its release while the witness gave b the right"
    );
}

/// A forced Primary that the witness refuses (it is recorded outdated)
/// asks again at the heartbeat, not on every refusal (a request storm).
#[test]
fn a_refused_renewal_is_not_resent_before_the_heartbeat() {
    use ctl::Duo;
    let mut d = Duo::new(Protocol::C);
    // b ran without a (the witness recorded a outdated), then released.
    let req = |id, kind| VoteRequest {
        id,
        resource: "r".into(),
        node: "b".into(),
        peer: "a".into(),
        kind,
        uptodate: true,
        peer_current: false,
        lease_ms: 1000,
        data: Vec::new(),
        forced: true,
        unacked: false,
        withdrawn: false,
        unused: false,
        undoable: false,
    };
    assert!(d.w.handle(d.now, &req(1, VoteKind::Renew)).granted);
    assert!(d.w.handle(d.now, &req(2, VoteKind::Release)).granted);
    // Forced beside its connected Secondary (apart, the witness would be
    // asked first, and grant a forced claim).
    d.connect();
    d.witness_up(0, true);
    d.c[0].promote(true, 1).unwrap();
    d.act(0);
    d.hooks_done(0);
    let mut asked = 0;
    for _ in 0..15 {
        while let Some(r) = d.decide(0) {
            asked += 1;
            assert!(!r.granted, "{r:?}");
            d.answer(0, r);
        }
        d.tick(Duration::from_millis(10));
    }
    assert!(asked <= 2, "{asked} renewals in 150 ms (heartbeat 200 ms)");
}

/// a, Primary with the witness's right, hands over (`secondary`): b's
/// claim and the witness's grant, not yet answered to b.
fn handed_over_to_b() -> (ctl::Duo, VoteReply) {
    let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
    for _ in 0..4 {
        d.tick(Duration::from_millis(100));
        d.flow();
        d.vote_all(0);
        d.vote_all(1);
    }
    d.c[0].demote().unwrap();
    d.act(0);
    d.hooks_done(0);
    d.flow();
    d.vote_all(0);
    d.tick(Duration::from_millis(10));
    d.flow();
    let g = d.decide(1).expect("b claims at once");
    assert!(g.granted, "{g:?}");
    (d, g)
}

/// A handover is not delayed by the heartbeats the new Primary answered
/// while the old one was Primary (it said Secondary since).
#[test]
fn a_handover_promotes_the_peer_at_its_first_grant() {
    let (mut d, g) = handed_over_to_b();
    d.answer(1, g);
    assert_eq!(d.c[1].role(), Role::Primary);
}

/// Both nodes stopped together (`down` on each, or the machines shut
/// down): the Secondary, stopping, does not take the right its Primary
/// gives back at its own `down` (it would move the address and run
/// `on_promote` in its last moments, then demote), and a grant that comes
/// anyway is given back.
#[test]
fn a_stopping_secondary_does_not_take_over() {
    use ctl::Duo;
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    d.c[1].stopping();
    d.c[0].demote().unwrap();
    d.act(0);
    d.hooks_done(0);
    d.flow();
    d.vote_all(0);
    for _ in 0..30 {
        d.tick(Duration::from_millis(100));
        d.flow();
        d.votes[0].clear();
        assert!(
            d.votes[1].iter().all(|v| v.kind != VoteKind::Claim),
            "the stopping b claims: {:?}",
            d.votes[1]
        );
        d.vote_all(1);
    }
    assert_eq!(d.c[1].role(), Role::Secondary);
    // A claim it sent just before it began to stop, granted after.
    let (mut d, g) = handed_over_to_b();
    d.c[1].stopping();
    d.answer(1, g);
    assert_eq!(d.c[1].role(), Role::Secondary, "promoted while stopping");
    assert!(d.hooks[1].is_empty(), "hooks while stopping: {:?}", d.hooks[1]);
    assert!(
        d.votes[1].iter().any(|v| v.kind == VoteKind::Release),
        "the grant is not given back: {:?}",
        d.votes[1]
    );
}

/// Heartbeat ids start again at 1 in each session; the peer lease must
/// keep working after a reconnect (a Primary without the witness relies
/// on it), not lose every new heartbeat to the old session's higher ids.
#[test]
fn the_peer_lease_works_after_a_reconnect() {
    use ctl::Duo;
    let mut d = Duo::new(Protocol::C);
    d.connect();
    d.witness_up(0, true);
    d.votes[1].clear();
    d.vote_all(0);
    d.hooks_done(0);
    d.vote_all(0);
    assert_eq!(d.c[0].role(), Role::Primary);
    // A flapping link: long sessions, each cut with a heartbeat out.
    for k in 0..9 {
        for _ in 0..90 - 8 * k {
            d.tick(Duration::from_millis(100));
            d.flow();
            d.vote_all(0);
        }
        d.tick(Duration::from_millis(300));
        d.cut();
        d.connect();
        d.vote_all(0);
    }
    d.witness_up(0, false);
    d.votes[0].clear();
    // Two seconds on the new session, the peer answering every heartbeat.
    for _ in 0..20 {
        d.tick(Duration::from_millis(100));
        d.flow();
    }
    assert_eq!(d.c[0].connection(), Connection::Connected);
    assert!(d.c[0].accepts_writes(), "the peer lease of the new session does not count");
}

/// The Primary's disk fails (detached): it cannot serve a write any more,
/// while its UpToDate peer could. It must not keep the Primary right for
/// good (renewing it forever), or the service never comes back.
#[test]
fn a_primary_whose_disk_failed_does_not_hold_the_right_for_good() {
    use ctl::Duo;
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    d.fail_writes[0] = true;
    d.write(0, 1, 0, 0x11);
    d.flow();
    assert_eq!(d.c[0].disk(), DiskState::Failed);
    for _ in 0..200 {
        d.tick(Duration::from_millis(100));
        if d.sid.is_none() {
            d.connect();
        }
        d.flow();
        d.vote_all(0);
        d.vote_all(1);
        d.hooks_done(0);
        d.hooks_done(1);
    }
    assert_eq!(
        d.c[1].role(),
        Role::Primary,
        "20 s later b still is not Primary; a is {:?}",
        d.c[0].role()
    );
}

/// The old Primary cannot reach the witness but comes back to its peer,
/// which the witness promoted meanwhile: the peer's Hello proves it lost
/// the right. It must step down (and resync from the new Primary), not
/// stay a Primary without quorum refusing every handshake for good.
#[test]
fn an_old_primary_that_meets_the_new_one_steps_down() {
    use ctl::Duo;
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    // a is cut off from the witness and from b; b takes over.
    d.witness_up(0, false);
    d.votes[0].clear();
    d.cut();
    let mut promoted = false;
    for _ in 0..60 {
        d.tick(Duration::from_millis(100));
        d.vote_all(1);
        d.hooks_done(1);
        if d.c[1].role() == Role::Primary {
            promoted = true;
            break;
        }
    }
    assert!(promoted);
    d.vote_all(1);
    d.write(1, 1, 0, 0x11);
    d.vote_all(1);
    assert_eq!(d.reply(1, 1), Some(Ok(())));
    // a meets b again (still no witness for a).
    for _ in 0..50 {
        d.tick(Duration::from_millis(100));
        if d.sid.is_none() {
            d.connect();
        }
        d.flow();
        d.hooks_done(0);
        d.vote_all(1);
        d.votes[0].clear();
    }
    assert_eq!(d.c[0].role(), Role::Secondary, "a stays a Primary without quorum");
    assert_eq!(d.c[0].connection(), Connection::Connected);
}

/// The Primary, cut off from the witness and its peer, keeps the role
/// (its writes wait); the peer is promoted by the witness and hands the
/// role back; the link returns: the old Primary must not acknowledge
/// again on the strength of the peer's heartbeat answers (simulator seed
/// 20099 at 5,000 steps: I4).
#[test]
fn a_primary_whose_peer_reigned_meanwhile_steps_down_when_they_meet() {
    use ctl::Duo;
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    d.witness_up(0, false);
    d.votes[0].clear();
    d.cut();
    let mut promoted = false;
    for _ in 0..60 {
        d.tick(Duration::from_millis(100));
        d.vote_all(1);
        d.hooks_done(1);
        if d.c[1].role() == Role::Primary {
            promoted = true;
            break;
        }
    }
    assert!(promoted, "b was not promoted");
    // (No peer could take over: `secondary` is refused, `--force` demotes.)
    assert!(d.c[1].demote().is_err());
    d.secondary_forced(1);
    assert_eq!(d.c[1].role(), Role::Secondary);
    assert_eq!(d.c[0].role(), Role::Primary, "a stayed Primary (no witness, no peer)");
    d.connect();
    for _ in 0..10 {
        d.tick(Duration::from_millis(100));
        d.flow();
        d.hooks_done(0);
        d.votes[0].clear();
        d.votes[1].clear();
    }
    d.write(0, 77, 0, 0x42);
    for _ in 0..5 {
        d.tick(Duration::from_millis(100));
        d.flow();
        d.votes[0].clear();
        d.votes[1].clear();
    }
    assert_ne!(d.reply(0, 77), Some(Ok(())), "a acknowledged a write after b's reign");
    assert_eq!(d.c[0].role(), Role::Secondary, "a did not step down");
}

/// With a controller, `discard-younger-primary` (or least-changes) does
/// not resolve a split brain: the witness let one side acknowledge writes
/// apart and the policy cannot tell which (simulator seeds 203954,
/// 401402). Without one it still does.
#[test]
fn with_a_controller_only_discard_zero_changes_resolves_a_split_brain() {
    for controller in [false, true] {
        let mut c = cfg(Protocol::C);
        c.split_brain_policy = SplitBrainPolicy::DiscardYoungerPrimary;
        if controller {
            c.controller = Some(ControllerConfig {
                dead_time: Duration::from_secs(2),
                heartbeat: Duration::from_millis(200),
                on_no_quorum: Default::default(),
            });
        }
        let mut m = meta(DiskState::UpToDate);
        m.gen = GenIds { current: 0x111, bitmap: GEN, history: [GEN, 0] };
        m.promoted_at = 50;
        let rec =
            Recovered { meta: Some(m), bitmap: None, al: Vec::new(), disk_created: false, boot: 0 };
        let mut core = Core::new(c, rec, Duration::ZERO, 7);
        core.handle_link_up(Duration::ZERO, 1);
        let mut h = hello(
            Role::Secondary,
            DiskState::UpToDate,
            GenIds { current: 0x222, bitmap: GEN, history: [GEN, 0] },
        );
        h.promoted_at = 10; // this node was promoted last: the policy's loser
        h.split_brain_policy = SplitBrainPolicy::DiscardYoungerPrimary;
        core.handle_frame(Duration::ZERO, 1, Message::Hello(h));
        core.handle_frame(Duration::ZERO, 1, Message::Bits { runs: Vec::new(), last: true });
        run(&mut core, Duration::ZERO);
        if controller {
            assert!(core.status().split_brain, "resolved by policy with a controller");
        } else {
            assert_eq!(core.replication(), Replication::SyncTarget, "the policy did not apply");
        }
    }
}

/// A renewal the witness granted, answered only after the Primary was
/// demoted and gave the right back: the witness may hand the right on
/// as soon as it hears of the release, so that grant is void. Delivered
/// to the node after the operator forced it Primary again, it gave the
/// node a lease while its peer held the right (simulator seed 10264532
/// at 20,000 steps: both accepted writes).
#[test]
fn a_grant_answered_after_the_release_gives_no_lease() {
    use ctl::Duo;
    let mut d = Duo::new(Protocol::C);
    d.connect();
    d.witness_up(0, true);
    d.votes[1].clear();
    d.vote_all(0);
    assert_eq!(d.c[0].role(), Role::Primary);
    d.hooks_done(0);
    d.vote_all(0);
    d.cut();
    // a renews; the witness grants, but its answer is late.
    let mut late = None;
    for _ in 0..20 {
        d.tick(Duration::from_millis(100));
        if let Some(r) = d.decide(0) {
            late = Some(r);
            break;
        }
    }
    let late = late.expect("a never renewed");
    assert!(late.granted, "{late:?}");
    // The operator demotes a (`secondary --force`: no peer to take over):
    // it gives the right back.
    d.c[0].demote_forced();
    d.act(0);
    d.hooks_done(0);
    assert_eq!(d.c[0].role(), Role::Secondary);
    // The witness hears the release; its answer is late too.
    let released = d.decide(0).expect("no release");
    assert!(released.granted, "{released:?}");
    // ... and forces it Primary again (apart, that asks the witness now,
    // or is refused so soon after the start); then the late grant arrives.
    let now = d.now;
    let _ = d.c[0].promote(true, now.as_millis() as u64);
    d.act(0);
    d.hooks_done(0);
    d.votes[0].clear(); // its new request is not answered yet
    d.answer(0, late);
    assert!(!d.c[0].accepts_writes(), "a lease from a grant older than the release");
}

/// What a Primary answers while it is its peer's SyncSource reaches the
/// peer: it is not acknowledged apart. `a` writes apart, reconnects and
/// answers a FLUSH (or a write) during the resync; in sync again, it is
/// cut off with a write in flight (a new generation, nothing answered);
/// the witness promotes `b` and `a` is deposed: it gives up its
/// unacknowledged change and resyncs from `b`. Counted as acknowledged
/// apart (a reply while `apart()`, which a SyncSource is until the resync
/// ends), it kept them, and `b` refused the link (review).
#[test]
fn what_a_sync_source_answers_is_not_acknowledged_apart() {
    use ctl::Duo;
    for flush in [false, true] {
        let mut d = Duo::a_primary_with_witness(Protocol::C);
        d.cut();
        d.write(0, 1, 0, 0x11); // acknowledged without b
        d.vote_all(0);
        d.act(0);
        d.vote_all(0);
        assert_eq!(d.reply(0, 1), Some(Ok(())));
        d.link_up();
        d.act_all(); // a is b's SyncSource
        d.write_or_flush(flush, 0, 2, 256, 0x33);
        d.flow();
        assert_eq!(d.reply(0, 2), Some(Ok(())));
        for _ in 0..20 {
            d.tick(Duration::from_millis(100));
            d.flow();
            d.vote_all(0);
            d.vote_all(1);
            d.flow();
        }
        assert!(!d.c[0].apart(), "the resync did not end ({flush})");
        // Cut off with a write in flight to b.
        d.mute[0] = true;
        d.write(0, 3, 128, 0x22);
        d.cut();
        d.mute[0] = false;
        d.witness_up(0, false);
        d.votes[0].clear();
        assert!(d.witness_promotes_b(), "b was not promoted ({flush})");
        assert_ne!(d.reply(0, 3), Some(Ok(())));
        d.vote_all(1);
        d.witness_up(0, true);
        d.vote_all(0);
        d.hooks_done(0);
        d.vote_all(0);
        d.hooks_done(0);
        assert_eq!(d.c[0].role(), Role::Secondary, "a was not deposed ({flush})");
        d.connect();
        assert!(
            matches!(d.c[0].replication(), Replication::SyncTarget | Replication::Established),
            "the deposed a kept changes it never acknowledged ({flush}): {:?}",
            d.c[0].replication()
        );
    }
}

/// A Primary resyncing its own out-of-sync blocks (here verify
/// mismatches) to a peer that is not its SyncTarget, demoted through the
/// controller: it renegotiates the session, as a demotion without a
/// controller does (the peer takes resync chunks only from a Primary or
/// its sync source; before, the demoted node went on sending them and the
/// peer dropped the link). The pair then meets again in sync.
#[test]
fn a_primary_demoted_by_the_controller_during_its_own_resync_renegotiates() {
    use ctl::Duo;
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    // b's disk differs: the Primary's verify marks those blocks and
    // resyncs them from a.
    d.read_fill[1] = 0xee;
    d.c[0].verify().unwrap();
    for _ in 0..100 {
        d.act_all();
        d.deliver(1);
        d.deliver(0);
        if d.c[0].replication() == Replication::SyncSource {
            break;
        }
    }
    assert_eq!(d.c[0].replication(), Replication::SyncSource, "no resync of a's own blocks");
    assert_eq!(d.c[1].replication(), Replication::Established, "b is not a SyncTarget");
    // The operator demotes a, through the controller (its demote hook).
    d.c[0].demote().unwrap();
    d.act(0);
    d.hooks_done(0);
    d.act(0);
    assert_eq!(d.c[0].role(), Role::Secondary);
    assert!(d.sid.is_none(), "the demoted node kept the session of its own resync");
    // The link returns: in sync, b's blocks resynced by the handshake.
    d.read_fill[1] = 0;
    d.connect();
    for _ in 0..20 {
        d.flow();
        d.tick(Duration::from_millis(100));
    }
    for i in 0..2 {
        assert_eq!(d.c[i].replication(), Replication::Established, "node {i}");
        assert_eq!(d.c[i].disk(), DiskState::UpToDate, "node {i}");
    }
}

/// `primary --force` with a controller and no session: the witness is
/// asked first. While the other node holds the right the verb fails with
/// the witness's reason, and nothing of a promotion happened (no role, no
/// hook: the address stays); once nobody holds it, the outdated node is
/// granted (the operator accepts what it lacks) and promoted, its hooks
/// run after. Before, the node was promoted, moved the address and ran
/// `on_promote` at once, then demoted at the refusal (found by a live
/// test).
#[test]
fn primary_force_asks_the_witness_before_anything_happens() {
    use ctl::Duo;
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    // Apart: a runs alone, the witness outdates b.
    d.cut();
    d.write(0, 1, 0, 0x11);
    d.vote_all(0);
    assert_eq!(d.reply(0, 1), Some(Ok(())));
    assert!(d.w.outdated().any(|n| n == "b"));
    d.hooks[1].clear();
    // b forced while a holds the right (a lease after b last answered
    // a's heartbeats: before, b refuses by itself).
    let e = d.c[1].promote(true, 1).expect_err("b answered a's heartbeats just now");
    assert!(e.0.contains("may still hold a lease"), "{e}");
    for _ in 0..20 {
        d.tick(Duration::from_millis(100));
        d.vote_all(0);
        d.votes[1].clear();
    }
    d.c[1].promote(true, 1).expect("asked");
    d.act(1);
    let ask = d.c[1].promotion_asked().expect("an ask is out");
    assert_eq!(d.c[1].role(), Role::Secondary, "nothing before the witness answers");
    assert!(d.hooks[1].is_empty(), "no hook before the witness answers");
    d.vote_all(1);
    let r = d.c[1].promotion_answer(ask).expect("answered");
    let e = r.expect_err("refused while a holds the right");
    assert!(e.0.contains("the witness refused") && e.0.contains('a'), "{e}");
    assert_eq!(d.c[1].role(), Role::Secondary);
    assert!(d.hooks[1].is_empty(), "no hook after a refusal: {:?}", d.hooks[1]);
    // a dies; its lease runs out; b forced again is granted, outdated as it is.
    d.witness_up(0, false);
    d.votes[0].clear();
    d.tick(ctl::DEAD * 2);
    d.c[1].promote(true, 2).expect("asked");
    d.act(1);
    let ask = d.c[1].promotion_asked().expect("an ask is out");
    d.vote_all(1);
    assert_eq!(d.c[1].promotion_answer(ask), Some(Ok(())));
    assert_eq!(d.c[1].role(), Role::Primary);
    assert_eq!(d.hooks[1], vec![Hook::Promoted], "the hooks run after the grant");
    assert_eq!(d.w.holder(), Some("b"));
    assert!(d.w.outdated().any(|n| n == "a"), "a is the outdated one now");
}

/// `primary --force` with a controller, no peer and no witness: refused at
/// once (a Primary could acknowledge nothing); a witness that never
/// answers fails the ask after a lease, and a grant that comes later is
/// given back.
#[test]
fn primary_force_without_quorum_is_refused() {
    use ctl::Duo;
    let mut d = Duo::new(Protocol::C);
    let e = d.c[0].promote(true, 1).expect_err("no peer, no witness");
    assert!(e.0.contains("no quorum"), "{e}");
    assert_eq!(d.c[0].role(), Role::Secondary);
    d.witness_up(0, true);
    // Just started: a Primary peer may hold a lease from before.
    let e = d.c[0].promote(true, 2).expect_err("just started");
    assert!(e.0.contains("started"), "{e}");
    d.tick(ctl::DEAD);
    d.votes[0].clear(); // whatever the controller asks by itself
    d.c[0].promote(true, 2).expect("asked");
    d.act(0);
    let ask = d.c[0].promotion_asked().expect("an ask is out");
    let lost = d.votes[0].pop_back().expect("the forced claim");
    assert!(lost.forced && lost.kind == VoteKind::Claim, "{lost:?}");
    for _ in 0..10 {
        d.tick(Duration::from_millis(200));
    }
    let r = d.c[0].promotion_answer(ask).expect("answered");
    assert!(r.expect_err("lost").0.contains("did not answer"));
    assert_eq!(d.c[0].role(), Role::Secondary);
    // The witness saw the claim after all: a release follows it.
    let verdict = d.w.handle(d.now, &lost);
    assert!(verdict.granted);
    assert!(
        d.votes[0].iter().any(|v| v.kind == VoteKind::Release),
        "the lost claim is given back: {:?}",
        d.votes[0]
    );
}

/// The course of the two tests below: a is cut off from b and from the
/// witness; b takes over and acknowledges a write alone.
fn b_took_over_and_wrote_alone() -> ctl::Duo {
    let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
    d.cut();
    d.witness_up(0, false);
    d.votes[0].clear();
    assert!(d.witness_promotes_b(), "b is not promoted");
    d.hooks_done(1);
    d.vote_all(1);
    d.write(1, 1, 0, 0xbb);
    d.vote_all(1);
    assert_eq!(d.reply(1, 1), Some(Ok(())), "b acknowledges alone");
    d
}

/// A witness that lost its state (run without `meta`, or its file lost
/// or deleted) restarts while b runs alone as the Primary it granted;
/// a, the Primary b took over from, cut off with its lease run out,
/// reaches the witness again first. Its renewal must not give it a lease
/// while b's may still run: both would accept writes.
#[test]
fn a_witness_without_its_state_does_not_renew_a_lapsed_primary_beside_a_running_lease() {
    let mut d = b_took_over_and_wrote_alone();
    assert_eq!(d.c[0].role(), Role::Primary);
    assert!(!d.c[0].accepts_writes());
    // b renews; then the witness restarts without its state.
    d.tick(Duration::from_millis(200));
    d.vote_all(1);
    d.votes[0].clear();
    assert!(d.c[1].accepts_writes());
    d.w = crate::arbiter::Arbiter::new("r", d.now, ctl::DEAD, Default::default());
    d.witness_up(1, false);
    d.votes[1].clear();
    // a reaches the restarted witness and renews.
    d.witness_up(0, true);
    for _ in 0..3 {
        d.tick(Duration::from_millis(100));
        d.vote_all(0);
        d.votes[1].clear();
    }
    assert!(
        !(d.c[0].accepts_writes() && d.c[1].accepts_writes()),
        "a, renewed by the witness that lost its state, accepts writes while b's lease runs"
    );
    // Once the quiet period is over, b's lease (not renewed since) has
    // run out: a's renewal is granted, and a alone accepts writes. (It
    // lacks b's write: the witness that lost its state cannot tell; see
    // the README.)
    for _ in 0..25 {
        d.tick(Duration::from_millis(100));
        d.vote_all(0);
        d.votes[1].clear();
        assert!(!(d.c[0].accepts_writes() && d.c[1].accepts_writes()), "both at {:?}", d.now);
    }
    assert!(d.c[0].accepts_writes());
}

/// The address mover asks before each change (review, helper-103: a
/// deposed node's retried move landed after its successor's and took the
/// address back). A Primary with quorum may move it; one whose lease ran
/// out waits (it may renew, or be deposed); a demoting one never, nor a
/// Secondary; the caller's clock counts, not the core's last event.
#[test]
fn the_address_moves_only_for_a_primary_that_holds_its_lease() {
    let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
    assert_eq!(d.c[0].address_permit(d.now), Ok(()));
    assert_eq!(d.c[1].address_permit(d.now), Err((false, "no longer Primary")));
    d.cut();
    d.witness_up(0, false);
    // No event since: the lease ran out all the same.
    let later = d.now + ctl::DEAD;
    assert_eq!(d.c[0].address_permit(later), Err((true, "Primary without quorum")));
    let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
    d.c[0].demote().unwrap();
    d.act(0);
    assert_eq!(d.c[0].address_permit(d.now), Err((false, "demoting")));
}

/// Checked by review (helper-106): the address never moves to a Primary
/// that refuses writes (`accepts_writes`): a failed disk starts the
/// demotion in the same event, so the mover is told to stop at once (no
/// window in which a re-check would move the address there).
#[test]
fn the_address_does_not_move_to_a_primary_that_refuses_writes() {
    let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
    d.fail_writes[0] = true;
    d.write(0, 1, 0, 0x11);
    d.flow();
    assert_eq!(d.c[0].disk(), DiskState::Failed);
    assert_eq!(d.c[0].role(), Role::Primary);
    assert!(!d.c[0].accepts_writes());
    assert_eq!(d.c[0].address_permit(d.now), Err((false, "demoting")));
}

/// The known limit left by the test above (README): the witness without
/// its state hears b, the Primary it granted before its restart, during
/// its quiet period, and a, cut off from b with its lease run out, after
/// it. Before, whichever renewed first after the quiet period got the
/// right: a, whose data lacks the write b acknowledged alone (b's data
/// descends from a's current generation), resumed as the Primary. The
/// witness that heard b's data refuses a's renewal (`Refusal::Behind`),
/// a steps down, and b, renewed, serves on.
#[test]
fn a_witness_without_its_state_does_not_renew_a_primary_behind_the_other() {
    let mut d = b_took_over_and_wrote_alone();
    d.tick(Duration::from_millis(200));
    d.vote_all(1);
    assert!(d.c[1].accepts_writes());
    // The witness restarts without its state; both reach it again, b
    // still cut from a. Each heartbeat a asks first (before, it won the
    // race once the quiet period was over).
    d.w = crate::arbiter::Arbiter::new("r", d.now, ctl::DEAD, Default::default());
    d.witness_up(1, false);
    d.witness_up(1, true);
    d.witness_up(0, true);
    let mut said = Vec::new();
    for _ in 0..60 {
        d.tick(Duration::from_millis(100));
        d.vote_all(0);
        d.hooks_done(0);
        d.vote_all(0);
        d.vote_all(1);
        assert!(!(d.c[0].accepts_writes() && d.c[1].accepts_writes()), "both at {:?}", d.now);
        said.extend(d.c[0].controller().and_then(|c| c.last_refusal));
    }
    assert!(
        !d.c[0].accepts_writes(),
        "a, whose data lacks b's acknowledged write, was renewed (its last refusal: {:?})",
        d.c[0].controller().and_then(|c| c.last_refusal)
    );
    assert!(d.c[1].accepts_writes(), "b, the Primary with the newer data, lost the right");
    assert_eq!(d.w.holder(), Some("b"));
    assert!(
        said.iter().any(|why| why.contains("descends from")),
        "status does not say why: {said:?}"
    );
    assert_ne!(d.c[0].role(), Role::Primary, "a did not step down");
}

/// Reads under the controller's rules (`Core::read_gate`; found by review,
/// helper-105): a Primary cut off from its peer and the witness served its
/// own data for good, also after the survivor took over and acknowledged
/// writes it lacks. Now it serves reads while its lease runs, holds them
/// once the lease has run out, and fails them (`on-no-quorum = io-error`)
/// once the survivor may take over; never Serve while b is Primary; nor
/// once deposed, apart from b.
#[test]
fn a_primary_cut_off_stops_serving_reads_before_the_survivor_writes() {
    let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
    assert_eq!(d.c[0].read_gate(d.now, true), ReadGate::Serve);
    assert_eq!(d.c[1].read_gate(d.now, false), ReadGate::Serve);
    d.cut();
    d.witness_up(0, false);
    d.votes[0].clear();
    assert_eq!(d.c[0].read_gate(d.now, true), ReadGate::Serve, "within the lease");
    let mut held = false;
    for _ in 0..200 {
        d.tick(Duration::from_millis(100));
        d.votes[0].clear();
        d.vote_all(1);
        d.hooks_done(1);
        d.vote_all(1);
        let g = d.c[0].read_gate(d.now, true);
        held |= g == ReadGate::Wait;
        if d.c[1].role() == Role::Primary {
            assert_ne!(g, ReadGate::Serve, "a serves reads at {:?}, b Primary", d.now);
            break;
        }
    }
    assert!(held, "a's reads were never held between its lease's end and b's promotion");
    assert_eq!(d.c[1].role(), Role::Primary, "b is not promoted");
    d.write(1, 1, 0, 0xbb);
    d.vote_all(1);
    assert_eq!(d.reply(1, 1), Some(Ok(())), "b acknowledges alone");
    // (The core's own clock may lag: the caller's counts.)
    let later = d.now + ctl::DEAD;
    assert_eq!(d.c[0].read_gate(later, true), ReadGate::Fail, "io-error: a's reads fail");
    // a hears the witness again: refused, deposed, it steps down.
    d.witness_up(0, true);
    for _ in 0..20 {
        d.tick(Duration::from_millis(100));
        d.vote_all(0);
        d.hooks_done(0);
        d.vote_all(1);
        assert_ne!(d.c[0].read_gate(d.now, true), ReadGate::Serve, "deposed a serves a read");
    }
    assert_eq!(d.c[0].role(), Role::Secondary, "a is not deposed");
    // A read that came in while a was Primary fails; so does one on its
    // export as a Secondary while it has not met b (b's data is newer:
    // `a_deposed_primary_serves_no_reads_until_it_meets_its_peer`).
    assert_eq!(d.c[0].read_gate(d.now, true), ReadGate::Fail);
    assert_eq!(d.c[0].read_gate(d.now, false), ReadGate::Fail);
}

/// A blip: a Primary whose leases ran out holds reads (it may not fail
/// them before the survivor may take over), and serves them again once
/// the witness renews it. With `on-no-quorum = freeze` its reads wait on
/// past the moment `io-error` fails them.
#[test]
fn a_primary_without_quorum_holds_reads_until_it_is_renewed() {
    for freeze in [false, true] {
        let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
        if freeze {
            if let Some(c) = d.c[0].ctl.as_mut() {
                c.cfg.on_no_quorum = NoQuorum::Freeze;
            }
        }
        d.cut();
        d.witness_up(0, false);
        d.votes[0].clear();
        let lease = ctl::DEAD / 2;
        d.tick(lease + Duration::from_millis(100));
        assert_eq!(d.c[0].read_gate(d.now, true), ReadGate::Wait, "freeze {freeze}");
        let fenced = d.now + ctl::DEAD;
        let want = if freeze { ReadGate::Wait } else { ReadGate::Fail };
        assert_eq!(d.c[0].read_gate(fenced, true), want, "freeze {freeze}");
        // The witness is back before the survivor claimed: renewed.
        d.witness_up(0, true);
        d.vote_all(0);
        assert_eq!(d.c[0].role(), Role::Primary);
        assert_eq!(d.c[0].read_gate(d.now, true), ReadGate::Serve, "freeze {freeze}");
    }
}

/// A deposed Primary, still cut off from its peer, no longer serves
/// reads from its copy (found by review, helper-108): the witness told it
/// another node holds the right, that node acknowledged writes its data
/// lacks, and the application that read from the Primary (its NBD
/// connection, opened writable, stays open across the demotion; or a new
/// read-only one) read what the survivor had overwritten, as Secondary.
/// Nor does a Primary the operator demotes (`secondary --force`) while it
/// has no quorum. Their reads come back once a session with the peer runs
/// (a resync then takes the peer's data, the disk Inconsistent until
/// done). A Secondary demoted by a handover (its peer current) serves its
/// copy as before.
#[test]
fn a_deposed_primary_serves_no_reads_until_it_meets_its_peer() {
    for forced in [false, true] {
        let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
        d.cut();
        d.witness_up(0, false);
        d.votes[0].clear();
        assert!(d.witness_promotes_b(), "forced {forced}: b is not promoted");
        d.write(1, 1, 0, 0xbb);
        d.vote_all(1);
        assert_eq!(d.reply(1, 1), Some(Ok(())), "b acknowledges alone");
        if forced {
            // The operator's `secondary --force` on the fenced a.
            d.c[0].demote_forced();
            d.act(0);
            d.hooks_done(0);
        } else {
            // a hears the witness again: refused, deposed, it steps down.
            d.witness_up(0, true);
            for _ in 0..20 {
                d.tick(Duration::from_millis(100));
                d.vote_all(0);
                d.hooks_done(0);
                d.vote_all(1);
            }
        }
        assert_eq!(d.c[0].role(), Role::Secondary, "forced {forced}: a is not demoted");
        assert!(d.c[0].may_read().is_ok(), "forced {forced}: a's disk is not readable anyway");
        assert_eq!(
            d.c[0].read_gate(d.now, false),
            ReadGate::Fail,
            "forced {forced}: a, superseded by b, serves a read from its copy"
        );
        // a meets b: a session runs, a takes b's data.
        d.witness_up(0, true);
        d.connect();
        d.run_together(50, false);
        assert_eq!(d.c[0].role(), Role::Secondary);
        assert_eq!(d.c[0].disk(), DiskState::UpToDate, "forced {forced}: a is not in sync");
        assert_eq!(d.c[0].read_gate(d.now, false), ReadGate::Serve, "forced {forced}");
    }
}

/// A superseded node whose copy is newer than the new Primary's (it
/// wrote on after the link went, that write unacknowledged) meets it: it
/// judges itself the sync source, the Primary refuses to be a sync
/// target and closes the session at once. Nothing was reconciled: the
/// new Primary goes on acknowledging writes this copy lacks, and its
/// reads still fail. Before, the session's start on this node's side
/// (the peer's hello and bitmap in, the decision made) cleared
/// `superseded`, and apart from the Primary it served the blocks that
/// Primary overwrote (simulator seed 27050525, I4).
#[test]
fn a_superseded_node_the_new_primary_refuses_serves_no_reads() {
    let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
    // a's write is on its disk, not on b's, as the link goes: its copy
    // moves past b's (the write is never acknowledged).
    d.write(0, 1, 0, 0xaa);
    d.cut();
    d.witness_up(0, false);
    d.votes[0].clear();
    assert!(d.witness_promotes_b(), "b is not promoted");
    d.c[0].demote_forced();
    d.act(0);
    d.hooks_done(0);
    assert_eq!(d.c[0].role(), Role::Secondary, "a is not demoted");
    assert_eq!(d.c[0].read_gate(d.now, false), ReadGate::Fail, "a, superseded, serves reads");
    // a meets b: a judges itself the source, b (Primary) refuses.
    d.connect();
    assert!(d.sid.is_none(), "b did not refuse the session");
    assert_ne!(d.c[0].connection(), Connection::Connected);
    // b acknowledges alone.
    d.write(1, 2, 0, 0xbb);
    d.vote_all(1);
    assert_eq!(d.reply(1, 2), Some(Ok(())), "b acknowledges alone");
    assert!(d.c[0].may_read().is_ok(), "a's disk is not readable anyway");
    assert_eq!(
        d.c[0].read_gate(d.now, false),
        ReadGate::Fail,
        "a, apart from b whose data it never took, serves a read from its copy"
    );
}

/// A Primary deposed by what its peer's hello says (the peer reigned
/// after it, acknowledged nothing and stepped down) runs `on_demote` while
/// the handshake goes on: the session runs before the hook is done, in
/// sync. Demoted then, the node is a connected, UpToDate Secondary whose
/// session with its peer has run: nothing another node acknowledged is
/// missing from its copy, and its reads are served. Before, the demotion
/// marked it superseded after the session had started, and its reads
/// failed for as long as that session lasted (found by review,
/// helper-110).
#[test]
fn a_primary_deposed_while_its_session_starts_serves_reads_once_demoted() {
    let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
    d.cut();
    d.witness_up(0, false);
    d.votes[0].clear();
    assert!(d.witness_promotes_b(), "b is not promoted");
    // b reigns, acknowledges nothing, and steps down.
    d.secondary_forced(1);
    assert_eq!(d.c[1].role(), Role::Secondary);
    // a meets b: deposed by b's hello, its `on_demote` still runs when
    // the session starts.
    d.connect();
    assert_eq!(d.c[0].role(), Role::Primary);
    assert!(d.hooks[0].contains(&Hook::Demote), "a is not deposed: {:?}", d.hooks[0]);
    assert_eq!(d.c[0].connection(), Connection::Connected, "the session does not run");
    d.hooks_done(0);
    d.flow();
    assert_eq!(d.c[0].role(), Role::Secondary);
    assert_eq!(d.c[0].connection(), Connection::Connected);
    assert_eq!(d.c[0].disk(), DiskState::UpToDate);
    assert_eq!(
        d.c[0].read_gate(d.now, false),
        ReadGate::Serve,
        "a, connected and in sync with b, fails its reads"
    );
}

/// A handover (the operator's `secondary` with the peer connected and
/// current): the former Primary's copy follows the new Primary, and its
/// read-only export serves it.
#[test]
fn a_primary_handed_over_serves_reads_as_secondary() {
    let mut d = ctl::Duo::a_primary_with_witness(Protocol::C);
    d.c[0].demote().expect("secondary");
    d.act(0);
    d.hooks_done(0);
    d.flow();
    assert_eq!(d.c[0].role(), Role::Secondary);
    assert_eq!(d.c[0].read_gate(d.now, false), ReadGate::Serve);
}

/// A Primary running alone (its peer stopped, the witness recorded it
/// outdated) that is stopped itself (`down`, or `secondary --force`):
/// `on_demote` stops the service and unmounts, which writes. Those
/// writes are acknowledged as the node's writes alone were a moment
/// before: it still holds its lease and the peer cannot be promoted.
/// Before, each failed with EIO (the node held its right "only outside a
/// demotion"), so ext4's unmount left a journal to replay (review,
/// helper-122). Its lease is renewed meanwhile (a hook may run for longer
/// than a lease); once the lease has run out they fail, and after the
/// demotion, too.
#[test]
fn a_primary_alone_acknowledges_on_demotes_writes() {
    use ctl::Duo;
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    d.cut();
    d.write(0, 1, 0, 0x11);
    d.vote_all(0);
    assert_eq!(d.reply(0, 1), Some(Ok(())), "a writes alone");
    // `down`: stopping, then demoted whatever the peer can do.
    d.c[0].stopping();
    d.c[0].demote_forced();
    d.act(0);
    assert!(d.hooks[0].contains(&Hook::Demote), "on_demote runs: {:?}", d.hooks[0]);
    assert_eq!(d.c[0].role(), Role::Primary, "still Primary while on_demote runs");
    d.write(0, 2, 64, 0x22);
    assert_eq!(d.reply(0, 2), Some(Ok(())), "on_demote's write is acknowledged");
    let now = d.now;
    d.c[0].flush(now, 3);
    d.act(0);
    assert_eq!(d.reply(0, 3), Some(Ok(())), "on_demote's flush is acknowledged");
    // The hook runs for longer than a lease: renewed meanwhile (the peer
    // is outdated already), the node acknowledges on.
    for i in 0..40 {
        d.tick(Duration::from_millis(250));
        d.vote_all(0);
        d.write(0, 100 + i, 192, 0x44);
        assert_eq!(
            d.reply(0, 100 + i),
            Some(Ok(())),
            "a write {} ms into on_demote",
            250 * (i + 1)
        );
    }
    // Cut from the witness, its lease runs out: what comes after is not
    // acknowledged.
    d.witness_up(0, false);
    d.tick(Duration::from_secs(30));
    d.write(0, 4, 128, 0x33);
    assert_ne!(d.reply(0, 4), Some(Ok(())), "acknowledged past the witness lease");
    d.hooks_done(0);
    d.vote_all(0);
    assert_eq!(d.c[0].role(), Role::Secondary);
    assert!(matches!(d.reply(0, 4), Some(Err(_))), "{:?}", d.reply(0, 4));
}

/// The witness lost its state; b, which had run alone (generation B1 from
/// a's G), told it its data in a refused claim; b's disk then died and
/// was replaced, and is rebuilt from a; the operator forces a Primary
/// beside it (the controller's only manual promotion), accepting the loss
/// of B1. a's forced renewal (its peer not current: b is still a
/// SyncTarget) must not be judged by b's word from its destroyed disk:
/// a stays Primary (review, helper-146: a witness that judged forced
/// renewals like any other deposed a, and the pair had no Primary until
/// the rebuild ended).
#[test]
fn a_forced_primary_beside_a_rebuilt_peer_is_not_deposed_by_its_stale_word() {
    let mut d = b_took_over_and_wrote_alone();
    d.secondary_forced(0);
    d.tick(Duration::from_millis(200));
    d.secondary_forced(1);
    d.votes = Default::default();
    d.w = crate::arbiter::Arbiter::new("r", d.now, ctl::DEAD, Default::default());
    for i in 0..2 {
        d.witness_up(i, false);
        d.witness_up(i, true);
    }
    // Past the quiet period both claim and are refused (no record); the
    // witness heard b's data [B1, G].
    for _ in 0..60 {
        d.tick(Duration::from_millis(100));
        d.vote_all(0);
        d.vote_all(1);
    }
    assert!(d.w.durable() == Default::default(), "nothing granted since the restart");
    // b's disk dies; b restarts on a blank one and is rebuilt from a.
    let mut bc = cfg(Protocol::C);
    bc.me = "b".into();
    bc.peer = "a".into();
    bc.controller = d.c[0].cfg.controller.clone();
    let blank = Recovered { meta: None, bitmap: None, al: Vec::new(), disk_created: true, boot: 0 };
    d.c[1] = Core::new(bc, blank, d.now, 77);
    d.act(1);
    d.votes[1].clear();
    d.link_up();
    for _ in 0..40 {
        d.act_all();
        d.deliver(0);
        d.deliver(1);
        if d.c[0].connection() == Connection::Connected && d.c[1].disk() == DiskState::Inconsistent
        {
            break;
        }
    }
    assert_eq!(d.c[1].disk(), DiskState::Inconsistent, "b is not being rebuilt");
    // primary --force on a, beside the connected SyncTarget b (no witness
    // claim on that path); the rebuild goes on for this second (no frame
    // delivered: a whole device takes a while).
    d.c[0].promote(true, d.now.as_millis() as u64).expect("primary --force");
    d.act(0);
    d.hooks_done(0);
    assert_eq!(d.c[0].role(), Role::Primary);
    for _ in 0..10 {
        d.tick(Duration::from_millis(100));
        d.votes[1].clear();
        d.vote_all(0);
        d.hooks_done(0);
        d.vote_all(0);
    }
    let why = d.c[0].controller().and_then(|c| c.last_refusal).unwrap_or_default();
    assert_eq!(
        d.c[0].role(),
        Role::Primary,
        "the forced Primary a, holding the pair's only data, was deposed: {why}"
    );
}
