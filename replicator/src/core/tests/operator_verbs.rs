//! `primary --force` never replaces an UpToDate connected peer's data; a
//! promotion asks the peer even when this node last heard it was Primary
//! (found by an adversarial test of the operator's verbs on a live pair).

use super::*;

/// A Secondary connected to its Primary (session 1).
fn connected_secondary() -> Core {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    c
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
