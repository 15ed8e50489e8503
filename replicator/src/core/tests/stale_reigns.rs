//! From review: what else a reign older than this node's own may send
//! (its State as Primary, a resync chunk, an Ahead catch-up), and when a
//! node's pending `discard-my-data` (or deposition) is settled.

use super::*;
use ctl::Duo;

fn claims(d: &Duo, i: usize) -> usize {
    d.votes[i].iter().filter(|v| v.kind == VoteKind::Claim).count()
}

/// a Primary, deposed with unacknowledged changes (discard set). b, the
/// new Primary, writes nothing and steps down; when the link returns with
/// b Secondary the generations make a the SyncSource. That handshake
/// settles a's discard (its data stands), so a claims again once b, later
/// Primary on a's data, is gone (before, it never did).
#[test]
fn a_deposed_node_made_the_source_claims_again() {
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    // a loses both the peer and the witness; its write is not acknowledged.
    d.mute[0] = true;
    d.write(0, 1, 0, 0x11);
    d.votes[0].clear();
    d.witness_up(0, false);
    d.cut();
    d.votes[0].clear();
    assert_ne!(d.reply(0, 1), Some(Ok(())));
    eprintln!("a after write: {:?}", d.c[0].status());
    // b is granted after a's lease.
    let mut ok = false;
    for _ in 0..80 {
        d.tick(Duration::from_millis(100));
        d.votes[0].clear();
        d.vote_all(1);
        d.hooks_done(1);
        if d.c[1].role() == Role::Primary {
            ok = true;
            break;
        }
    }
    assert!(ok, "b never promoted");
    d.vote_all(1);
    // a comes back to the witness: deposed.
    d.witness_up(0, true);
    for _ in 0..10 {
        d.vote_all(0);
        d.hooks_done(0);
        d.tick(Duration::from_millis(50));
        d.vote_all(1);
    }
    assert_eq!(d.c[0].role(), Role::Secondary);
    eprintln!("a status after deposition: {:?}", d.c[0].status());
    // b steps down (`secondary --force`) before the link returns.
    d.secondary_forced(1);
    assert_eq!(d.c[1].role(), Role::Secondary);
    d.connect();
    for _ in 0..50 {
        d.tick(Duration::from_millis(100));
        d.flow();
        d.vote_all(0);
        d.vote_all(1);
        d.hooks_done(0);
        d.hooks_done(1);
        d.flow();
    }
    eprintln!(
        "a: {:?} {:?}\nb: {:?} {:?}",
        d.c[0].role(),
        d.c[0].status(),
        d.c[1].role(),
        d.c[1].status()
    );
    // b (whichever) Primary now; it goes away for good.
    let primary = if d.c[0].role() == Role::Primary { 0 } else { 1 };
    eprintln!("primary after reconnect: {primary}");
    let other = 1 - primary;
    d.cut();
    d.witness_up(primary, false);
    d.votes[primary].clear();
    let mut promoted = false;
    let mut claimed = 0;
    for _ in 0..100 {
        d.tick(Duration::from_millis(100));
        d.votes[primary].clear();
        claimed += claims(&d, other);
        d.vote_all(other);
        d.hooks_done(other);
        if d.c[other].role() == Role::Primary {
            promoted = true;
            break;
        }
    }
    eprintln!("other: {:?}", d.c[other].status());
    assert!(promoted, "node {other} (UpToDate, in sync with the lost Primary) never became Primary; claims {claimed}");
}

/// A Primary also resyncs its own out-of-sync blocks to a connected
/// Secondary that is not its SyncTarget (a failed write there, a verify
/// mismatch): such a chunk, sent before a stall of seed 9102746's kind,
/// arrives after this node's own reign (promoted, wrote, demoted); it was
/// applied over the newer block. The stale State before it ends the
/// session now.
#[test]
fn a_resync_chunk_of_an_older_reign_is_refused() {
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
    // The peer's State as Primary of an older reign (sent before it heard
    // of ours), then a resync chunk of its own out-of-sync block.
    c.handle_frame(
        t,
        1,
        Message::State {
            role: Role::Primary,
            disk: DiskState::UpToDate,
            peer_out_of_sync: 4096,
            fresh: false,
            current: GEN,
            promoted_at: 100,
        },
    );
    c.handle_frame(
        t,
        1,
        Message::Data { seq: 1, op: Op::resync(4096, Bytes::from(vec![0xbb; 4096])) },
    );
    let (a, applied) = run_applied(&mut c, t);
    assert!(
        closed(&a) || applied.is_empty(),
        "a resync chunk of the peer's older reign (100 < ours) was applied ({} store writes)",
        applied.len()
    );
}

/// `discard-my-data` on a Secondary whose generation equals its peer's
/// (InSync handshake): the flag was never cleared (only a SyncTarget
/// decision or a promotion did), so once its peer reigned and vanished,
/// the node holding every replicated write never claimed. It does now.
#[test]
fn a_discard_is_settled_by_an_in_sync_handshake() {
    let mut d = Duo::new(Protocol::C);
    d.c[1].discard_my_data().unwrap();
    d.connect();
    d.witness_up(0, true);
    d.witness_up(1, true);
    d.vote_all(0);
    d.hooks_done(0);
    d.vote_all(0);
    d.vote_all(1);
    d.flow();
    assert_eq!(d.c[0].role(), Role::Primary);
    d.write(0, 1, 0, 0x42);
    d.flow();
    d.vote_all(0);
    assert_eq!(d.reply(0, 1), Some(Ok(())), "a's write acknowledged (b has it)");
    // a dies for good.
    d.cut();
    d.witness_up(0, false);
    d.votes[0].clear();
    let mut claimed = 0;
    for _ in 0..100 {
        d.tick(Duration::from_millis(100));
        d.votes[0].clear();
        claimed += claims(&d, 1);
        d.vote_all(1);
        d.hooks_done(1);
    }
    assert_eq!(
        d.c[1].role(),
        Role::Primary,
        "b holds every acknowledged write but never became Primary (claims: {claimed})"
    );
}

/// Seed 9102746's course through adaptive mode instead of a plain write:
/// the peer, Primary in a reign older than this node's (its State stalled),
/// went Ahead; its State naming the Ahead generation makes this node,
/// after its own reign, Behind (Outdated) and the catch-up resync chunks
/// of the older reign overwrote its newer blocks. The stale State ends
/// the session now.
#[test]
fn an_older_reigns_ahead_catch_up_is_refused() {
    let t = Duration::ZERO;
    let mut c = core(Protocol::Adaptive, DiskState::UpToDate);
    connect(&mut c, 1, Role::Secondary);
    c.promote(false, 200).unwrap();
    run(&mut c, t);
    let ask = c.promotion_asked().expect("asked");
    c.handle_frame(t, 1, Message::PromoteAnswer { ask, granted: true, why: String::new() });
    run(&mut c, t);
    assert_eq!(c.role(), Role::Primary);
    c.demote().unwrap();
    run(&mut c, t);
    // The stalled frames of the peer's older reign: Primary, then Ahead
    // (a generation of its own), then the catch-up chunk.
    let state = |current| Message::State {
        role: Role::Primary,
        disk: DiskState::UpToDate,
        peer_out_of_sync: 4096,
        fresh: false,
        current,
        promoted_at: 100,
    };
    c.handle_frame(t, 1, state(GEN));
    c.handle_frame(t, 1, state(0xa4ead));
    run(&mut c, t);
    let behind = c.disk();
    c.handle_frame(
        t,
        1,
        Message::Data { seq: 1, op: Op::resync(4096, Bytes::from(vec![0xbb; 4096])) },
    );
    let (a, applied) = run_applied(&mut c, t);
    assert!(
        closed(&a) || applied.is_empty(),
        "the older reign's catch-up chunk was applied over this node's newer data \
         (disk {behind:?} after the Ahead State, {:?} now; {} store writes)",
        c.disk(),
        applied.len()
    );
}

/// Found by review (helper-114, the wrong verb at the wrong time):
/// `discard-my-data` on the Secondary of a healthy connected pair (no
/// split brain, nothing to discard) answered Ok and left the discard
/// pending until a next handshake; under the controller a node with a
/// pending discard does not claim, so when its Primary then died the
/// node holding every replicated write never took over. Refused while
/// connected: it says why and what to do.
#[test]
fn discard_my_data_on_a_connected_secondary_is_refused_and_failover_still_works() {
    let mut d = Duo::a_primary_with_witness(Protocol::C);
    d.write(0, 1, 0, 0x42);
    d.flow();
    d.vote_all(0);
    assert_eq!(d.reply(0, 1), Some(Ok(())), "a's write acknowledged (b has it)");
    let r = d.c[1].discard_my_data();
    let Err(why) = r else { panic!("discard-my-data on a connected in-sync Secondary: Ok") };
    assert!(why.0.contains("`verify`"), "the refusal says what to do: {why}");
    d.act(1);
    // a dies for good.
    d.cut();
    d.witness_up(0, false);
    d.votes[0].clear();
    assert!(d.witness_promotes_b(), "b holds every acknowledged write but never became Primary");
}
