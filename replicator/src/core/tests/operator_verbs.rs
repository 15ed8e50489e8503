//! A Primary's graceful disconnect outdates its Secondary; `primary --force` never
//! replaces an UpToDate connected peer's data; a promotion asks the peer
//! even when this node last heard it was Primary (found by review, an
//! operator's wrong or hasty verbs on a live pair).

use super::*;

/// A Secondary connected to its Primary (session 1).
fn connected_secondary() -> Core {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    c
}

fn persisted_disk(c: &mut Core) -> Option<DiskState> {
    let mut disk = None;
    while let Some(a) = c.poll_action() {
        match a {
            Action::Persist { io, what } => {
                if let Persist::Meta(m) = &what {
                    disk = Some(m.disk);
                }
                c.handle_io(Duration::ZERO, io, Ok(None));
            }
            Action::Store { io, .. } => c.handle_io(Duration::ZERO, io, Ok(None)),
            _ => {}
        }
    }
    disk
}

/// `disconnect` on the Primary tells its Secondary first, and closes the
/// session once the Secondary says its record holds Outdated, or after
/// `timeout` without that answer.
#[test]
fn disconnect_on_the_primary_closes_once_the_secondary_is_outdated() {
    let mut a = connected_primary(Protocol::C);
    a.disconnect();
    let acts = drain(&mut a);
    assert!(
        acts.iter().any(|x| matches!(x, Action::Send { msg: Message::Outdate, .. })),
        "{acts:?}"
    );
    assert!(!acts.iter().any(|x| matches!(x, Action::Close { .. })), "closed before the answer");
    a.handle_frame(Duration::from_millis(5), 1, Message::OutdateDone);
    let acts = drain(&mut a);
    assert!(acts.iter().any(|x| matches!(x, Action::Close { .. })), "{acts:?}");

    let mut a = connected_primary(Protocol::C);
    a.disconnect();
    drain(&mut a);
    let timeout = super::super::session::outdate_wait(&a.cfg);
    // (The peer is alive: it answers pings, not the Outdate.)
    a.handle_frame(timeout / 2, 1, Message::Ping { id: 7 });
    a.handle_timeout(timeout / 2);
    assert!(!drain(&mut a).iter().any(|x| matches!(x, Action::Close { .. })));
    a.handle_timeout(timeout);
    let acts = drain(&mut a);
    assert!(
        acts.iter().any(
            |x| matches!(x, Action::Close { reason, .. } if reason.contains("did not confirm"))
        ),
        "{acts:?}"
    );
}

/// The Secondary answers `OutdateDone` only once the record saying
/// Outdated is durable: a crash before it brought it back UpToDate while
/// its Primary wrote on alone (found by the simulator's rule that tracks
/// the outdate apart from the core).
#[test]
fn the_secondary_answers_outdate_once_its_record_is_durable() {
    let mut b = connected_secondary();
    b.handle_frame(Duration::ZERO, 1, Message::Outdate);
    let mut answered_before_saved = false;
    let mut saved = false;
    while let Some(a) = b.poll_action() {
        match a {
            Action::Send { msg: Message::OutdateDone, .. } => answered_before_saved |= !saved,
            Action::Persist { io, what } => {
                if matches!(&what, Persist::Meta(m) if m.disk == DiskState::Outdated) {
                    saved = true;
                }
                b.handle_io(Duration::ZERO, io, Ok(None));
            }
            Action::Store { io, .. } => b.handle_io(Duration::ZERO, io, Ok(None)),
            _ => {}
        }
    }
    assert!(saved, "Outdated never saved");
    assert!(!answered_before_saved, "answered before the record was durable");
    // (Answered after it: drained above.)
    let mut b = connected_secondary();
    b.handle_frame(Duration::ZERO, 1, Message::Outdate);
    let acts = drain(&mut b);
    assert!(!acts.iter().any(|x| matches!(x, Action::Send { msg: Message::OutdateDone, .. })));
}

/// The Secondary told so is Outdated, durably, and refuses `primary`
/// without `--force` (before: UpToDate, and `primary` served data without
/// the writes its Primary acknowledged after the disconnect).
#[test]
fn a_secondary_told_outdate_is_outdated_durably_and_not_promoted_without_force() {
    let mut b = connected_secondary();
    b.handle_frame(Duration::ZERO, 1, Message::Outdate);
    assert_eq!(b.disk(), DiskState::Outdated);
    assert_eq!(persisted_disk(&mut b), Some(DiskState::Outdated), "not saved");
    b.handle_link_down(Duration::ZERO, 1, "closed");
    run(&mut b, Duration::ZERO);
    let e = b.promote(false, 1).unwrap_err();
    assert!(e.0.contains("Outdated"), "{e}");
    b.promote(true, 2).expect("--force promotes it as it is");
}

/// `disconnect` on the Secondary leaves it as it was (its Primary may be
/// dead: disconnecting the survivor to promote it is the failover path),
/// and so does a link that fails; an Outdate from a peer that is not
/// Primary changes nothing.
#[test]
fn disconnect_on_the_secondary_or_a_failed_link_does_not_outdate_it() {
    let mut b = connected_secondary();
    b.disconnect();
    run(&mut b, Duration::ZERO);
    assert_eq!(b.disk(), DiskState::UpToDate);
    b.promote(false, 1).expect("promoted");

    let mut b = connected_secondary();
    b.handle_link_down(Duration::ZERO, 1, "timed out");
    run(&mut b, Duration::ZERO);
    assert_eq!(b.disk(), DiskState::UpToDate, "a crashed Primary's survivor must be promotable");
    b.promote(false, 1).expect("promoted");

    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Secondary);
    c.handle_frame(Duration::ZERO, 1, Message::Outdate);
    assert_eq!(c.disk(), DiskState::UpToDate);
}

/// Reconnected to its Primary with nothing written apart, the outdated
/// Secondary is UpToDate again; with writes apart, after the resync.
#[test]
fn an_outdated_secondary_is_uptodate_again_after_the_reconnect() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    // (The harness cuts a link at its close: the frame the Primary sends
    // before it, `disconnect_on_the_primary_sends_outdate_before_the_close`,
    // is handed over here.)
    let outdate = |p: &mut Pair| p.outdate_by_disconnect();
    outdate(&mut p);
    assert_eq!(p.core(1).disk(), DiskState::Outdated);
    assert_eq!(p.n[1].meta.as_ref().map(|m| m.disk), Some(DiskState::Outdated));
    p.core(0).connect();
    p.connect();
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);

    outdate(&mut p);
    p.write(0, 7, 8192, 5, 4096);
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::Outdated);
    assert!(p.core(1).promote(false, 3).is_err());
    p.core(0).connect();
    p.connect();
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache);
}

/// Found by review: a Primary that lost its page cache after its graceful
/// disconnect met the Secondary it had outdated on one generation, and the
/// union resync went from the Primary (UpToDate ranked above Outdated): a
/// write it had acknowledged and not flushed was lost on both. On one
/// generation neither wrote since the outdate, so the Secondary holds every
/// acknowledged write, and the node that lost less is the source.
#[test]
fn an_outdated_secondary_is_the_source_after_its_primary_lost_its_cache() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 7, 8192, 5, 4096);
    p.settle();
    assert_eq!(p.reply(0, 7), Some(Ok(())));
    p.outdate_by_disconnect();
    assert_eq!(p.core(1).disk(), DiskState::Outdated);
    p.crash(0, true);
    assert_ne!(p.n[0].cache[8192], 5, "the write was flushed: the case is not made");
    p.restart(0);
    p.connect();
    p.settle();
    assert!(p.n[0].cache[8192..8192 + 4096] == [5; 4096], "a lacks its acknowledged write");
    assert!(p.n[1].cache[8192..8192 + 4096] == [5; 4096], "b lost a's acknowledged write");
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
}

/// Found by review: the outdated Secondary, source of a full sync into
/// its Primary's failed disk after the Primary had written alone, was made
/// UpToDate when the sync finished, and `primary` on it (no `--force`)
/// served data without the Primary's acknowledged write. Both stay
/// Outdated: only `primary --force` accepts the loss.
#[test]
fn an_outdated_source_of_a_failed_peers_rebuild_stays_outdated() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.outdate_by_disconnect();
    assert_eq!(p.core(1).disk(), DiskState::Outdated);
    p.write(0, 7, 8192, 5, 4096);
    p.settle();
    assert_eq!(p.reply(0, 7), Some(Ok(())), "not acknowledged");
    // a's disk is found failed (its record says so, its generations kept).
    p.crash(0, false);
    p.n[0].meta.as_mut().unwrap().disk = DiskState::Failed;
    p.restart(0);
    p.core(0).connect();
    p.core(1).connect();
    p.connect();
    p.settle();
    assert_eq!(p.core(0).disk(), DiskState::Outdated, "a not pinned");
    assert!(p.n[1].cache[8192..8192 + 4096] != [5; 4096], "b got the write: the case is not made");
    assert_eq!(p.core(1).disk(), DiskState::Outdated, "b made UpToDate without a's write");
    assert!(p.core(1).promote(false, 9).is_err(), "b promoted without --force over a lost write");
}

/// `primary --force` on a connected node whose disk is not UpToDate while
/// the peer's is: refused, naming the peer (it replaced the peer's data by
/// a full sync: what the pair acknowledged was lost on both).
#[test]
fn force_is_refused_while_the_connected_peer_is_uptodate() {
    let mut c = core(Protocol::C, DiskState::Inconsistent);
    connect(&mut c, 1, Role::Secondary);
    assert_eq!(c.disk(), DiskState::Inconsistent);
    let e = c.promote(true, 1).unwrap_err();
    assert!(e.0.contains("peer b holds UpToDate data"), "{e}");
    assert_eq!(c.role(), Role::Secondary);
    // Disconnected, it is the operator's choice.
    c.disconnect();
    run(&mut c, Duration::ZERO);
    c.promote(true, 2).expect("forced while StandAlone");
    assert_eq!(c.role(), Role::Primary);
}

/// This node last heard its peer was Primary (the peer's `secondary` is on
/// its way): `primary` asks the peer instead of refusing, and the peer's
/// answer decides.
#[test]
fn primary_asks_a_peer_last_seen_primary() {
    let mut b = connected_secondary();
    b.promote(false, 1).expect("asked, not refused on a stale view");
    let acts = run(&mut b, Duration::ZERO);
    assert!(acts.iter().any(|x| matches!(x, Action::Send { msg: Message::PromoteAsk { .. }, .. })));
    assert_eq!(b.role(), Role::Secondary);
}
