//! What a Primary's reads may see: every write its peer sent before the
//! promotion, so that none lands after a read saw the older data.

use super::*;

/// A Secondary promoted right after its link dropped, a write it received
/// still waiting to be issued (here for its metadata record: the first
/// write received is recorded first). A read then would see the older
/// data, and the write would land after it: `reads_settled` says to wait
/// until it is issued (the shell then waits for the store lane).
#[test]
fn a_primary_promoted_with_a_received_write_unissued_reads_after_it() {
    let t0 = Duration::ZERO;
    let mut c = core(Protocol::B, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    assert!(c.reads_settled(), "a Secondary's reads wait for nothing");
    let write = Op::write(0, Bytes::from(vec![7u8; 64]), false);
    c.handle_frame(t0, 1, Message::Data { seq: 1, op: write });
    let held: Vec<IoId> = drain(&mut c)
        .into_iter()
        .filter_map(|a| match a {
            Action::Persist { io, .. } => Some(io),
            _ => None,
        })
        .collect();
    assert_eq!(held.len(), 1, "the write waits for its metadata record");
    c.handle_link_down(t0, 1, "cut");
    c.promote(false, 1).expect("an UpToDate Secondary whose Primary went away");
    assert_eq!(c.role(), Role::Primary);
    assert!(!stores_written(&drain(&mut c)), "the received write is not issued yet");
    assert!(!c.reads_settled(), "a read now would see the data before the peer's write");
    c.handle_io(t0, held[0], Ok(None));
    let (_, applied) = run_applied(&mut c, t0);
    assert_eq!(applied.len(), 1, "the peer's write is issued once its record is saved");
    assert!(c.reads_settled());
}

/// What happens to a (the Primary) while b holds a received write in its
/// queue (its activity-log transaction not saved).
#[derive(Clone, Copy)]
enum Meanwhile {
    /// a's process dies and b is promoted; a comes back.
    BPromoted,
    /// a's disk is replaced (zeroes, no metadata); b stays Secondary.
    AReplaced,
}

/// b becomes a's sync source on reconnect, with the write still queued;
/// it is saved at last. Whether the disks end identical, and a's byte at
/// the write.
fn source_with_a_write_queued(meanwhile: Meanwhile, plant: Plant) -> (bool, u8) {
    let mut p = Pair::new(Protocol::C, plant);
    p.initial();
    const AT: u64 = 8 * 1024;
    p.n[1].hang_al = true;
    p.write(0, 1, AT, 0x22, 64);
    p.settle_now();
    assert!(!p.held.is_empty(), "b's activity-log update is held");
    p.n[0].c = None;
    p.cut();
    p.settle_now();
    match meanwhile {
        Meanwhile::BPromoted => {
            p.core(1).promote(false, 5).expect("promote b");
            p.settle_now();
            assert!(!p.core(1).reads_settled());
        }
        Meanwhile::AReplaced => {
            p.n[0].cache = vec![0; p.n[0].cache.len()];
            p.n[0].durable = p.n[0].cache.clone();
            p.n[0].meta = None;
            p.n[0].bitmap = None;
            p.n[0].al.clear();
            p.n[0].boot += 1;
        }
    }
    p.restart_now(0);
    p.sid = Some(99);
    let now = p.now;
    p.core(0).handle_link_up(now, 99);
    p.core(1).handle_link_up(now, 99);
    p.settle_now();
    p.tick_until(2000, |p| p.core(0).disk() == DiskState::UpToDate);
    p.release_held();
    p.settle_now();
    assert!(
        p.tick_until(5000, |p| p.core(0).disk() == DiskState::UpToDate
            && p.core(1).replication() == Replication::Established
            && p.core(1).quiescent()),
        "the sync did not end"
    );
    assert_eq!(p.n[1].cache[AT as usize], 0x22, "b lacks the write it received");
    (p.n[0].cache == p.n[1].cache, p.n[0].cache[AT as usize])
}

/// A node promoted with a received write still queued becomes its old
/// Primary's sync source when that one comes back: its resync reads the
/// block only once the queued write is issued. Before, the target got the
/// older block and the write landed on the source alone: both UpToDate,
/// in sync, and differing (review). With the plant, again.
#[test]
fn a_sync_source_reads_after_the_writes_it_received() {
    let (same, at) = source_with_a_write_queued(Meanwhile::BPromoted, Plant::None);
    assert!(same, "the disks differ: a holds {at}");
    let (same, _) = source_with_a_write_queued(Meanwhile::BPromoted, Plant::ResyncBeforeReceived);
    assert!(!same, "the plant is not seen by this test");
}

/// The same on a Secondary never promoted: its Primary's disk is replaced
/// while a received write waits in its queue; it becomes the new disk's
/// full-sync source.
#[test]
fn a_secondary_source_for_a_replaced_peer_reads_after_the_writes_it_received() {
    let (same, at) = source_with_a_write_queued(Meanwhile::AReplaced, Plant::None);
    assert!(same, "the disks differ: a holds {at}");
    let (same, _) = source_with_a_write_queued(Meanwhile::AReplaced, Plant::ResyncBeforeReceived);
    assert!(!same, "the plant is not seen by this test");
}
