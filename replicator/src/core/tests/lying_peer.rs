//! A peer that lies (valid certificate, wrong frames), from a lying-peer
//! property test: one real core fed adversarial frames in each phase.

use super::*;

const G2: u64 = 0x2222_3333_4444_5555;

/// A core made the SyncTarget of a peer in `role` whose generation G2
/// holds everything (the whole device out of sync); with the time.
pub(super) fn sync_target_of(role: Role) -> (Core, Time) {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    run(&mut c, Duration::ZERO);
    let t = Duration::ZERO;
    c.handle_link_up(t, 1);
    let mut h =
        hello(role, DiskState::UpToDate, GenIds { current: G2, bitmap: GEN, history: [GEN, 0] });
    h.peer_out_of_sync = SIZE;
    c.handle_frame(t, 1, Message::Hello(h));
    c.handle_frame(t, 1, Message::Bits { runs: vec![(0, SIZE / 64)], last: true });
    run_applied(&mut c, Duration::ZERO);
    assert_eq!(c.replication(), Replication::SyncTarget);
    (c, t)
}

/// A SyncTarget given a SyncDone before the chunks it received are
/// flushed (here: one chunk, not yet applied) does not take it: it would
/// be UpToDate over data not on its disk.
#[test]
fn a_sync_done_before_the_chunks_are_flushed_is_a_link_fault() {
    let (mut c, t) = sync_target_of(Role::Secondary);
    c.handle_frame(t, 1, Message::Data { seq: 1, op: Op::resync(0, Bytes::from(vec![9u8; 256])) });
    c.handle_frame(t, 1, Message::SyncDone { current: G2 });
    let (acts, _) = run_applied(&mut c, Duration::ZERO);
    assert!(closed(&acts), "{acts:?}");
    assert_ne!(c.disk(), DiskState::UpToDate);
}

/// An honest source's SyncDone comes once its resync flush (after the last
/// chunk) is done here; an application flush sent after that one may
/// still be running. The SyncDone is taken. (Before, the target checked
/// the last flush received, not the first after the last chunk, and took
/// such a SyncDone for a lie: the link dropped, the Primary started a new
/// generation and the target stayed Inconsistent until another resync; a
/// live test hit it in 1 of 10 resyncs beside FUA writes and flushes.)
#[test]
fn a_sync_done_while_a_later_flush_runs_here_is_taken() {
    let (mut c, t) = sync_target_of(Role::Primary);
    c.handle_frame(t, 1, Message::Data { seq: 1, op: Op::resync(0, Bytes::from(vec![9u8; 256])) });
    c.handle_frame(t, 1, Message::Data { seq: 2, op: Op::Flush });
    let (acts, _) = run_applied(&mut c, Duration::ZERO);
    assert!(!closed(&acts), "{acts:?}");
    // The application's flush, numbered after the resync flush: here it
    // has not finished when the SyncDone comes.
    c.handle_frame(t, 1, Message::Data { seq: 3, op: Op::Flush });
    let mut running = Vec::new();
    while let Some(a) = c.poll_action() {
        match a {
            Action::Store { io, op: StoreOp::Flush } => running.push(io),
            Action::Persist { io, .. } => c.handle_io(t, io, Ok(None)),
            other => assert!(!matches!(other, Action::Close { .. }), "{other:?}"),
        }
    }
    assert_eq!(running.len(), 1, "the application's flush is running");
    c.handle_frame(t, 1, Message::SyncDone { current: G2 });
    let (acts, _) = run_applied(&mut c, Duration::ZERO);
    assert!(!closed(&acts), "an honest SyncDone refused: {acts:?}");
    for io in running {
        c.handle_io(t, io, Ok(None));
    }
    let (acts, _) = run_applied(&mut c, Duration::ZERO);
    assert!(!closed(&acts), "{acts:?}");
    assert_eq!(c.disk(), DiskState::UpToDate);
}

/// A SyncSource (Secondary, the newer data) does not apply writes its
/// SyncTarget sends: the authoritative copy would be overwritten by the
/// stale side, and carried back by the next chunk read from it.
#[test]
fn a_sync_source_applies_no_data_from_its_target() {
    let meta = MetaRecord {
        disk: DiskState::UpToDate,
        fresh: false,
        gen: GenIds { current: G2, bitmap: GEN, history: [GEN, 0] },
        promoted_at: 0,
        lost_acked: 0,
        told: Vec::new(),
        full_sync: 0,
        forced_base: 0,
        boot: 0,
        cache_lost: false,
        received_lost: false,
        received: false,
        async_acks: false,
        receipt_acks: false,
        behind_async_primary: false,
        pending: None,
    };
    let mut words = vec![0u64; (SIZE / 64).div_ceil(64) as usize];
    words[0] = 0xff;
    let rec = Recovered {
        meta: Some(meta),
        bitmap: Some(words),
        al: Vec::new(),
        disk_created: false,
        boot: 0,
    };
    let mut c = Core::new(cfg(Protocol::C), rec, Duration::ZERO, 7);
    run(&mut c, Duration::ZERO);
    let t = Duration::ZERO;
    c.handle_link_up(t, 1);
    let g = GenIds { current: GEN, bitmap: 0, history: [0, 0] };
    c.handle_frame(t, 1, Message::Hello(hello(Role::Secondary, DiskState::UpToDate, g)));
    c.handle_frame(t, 1, Message::Bits { runs: vec![], last: true });
    let _ = std::iter::from_fn(|| c.poll_action()).count();
    assert_eq!(c.replication(), Replication::SyncSource);
    let op = Op::write(0, Bytes::from(vec![0xEE; 64]), false);
    c.handle_frame(t, 1, Message::Data { seq: 1, op });
    let (acts, applied) = run_applied(&mut c, Duration::ZERO);
    assert!(closed(&acts));
    assert!(applied.is_empty(), "the SyncSource applied its target's write: {applied:?}");
}

/// Two Secondaries in sync: a peer that says it is Secondary and sends a
/// write, or a resync chunk, has it refused (the link drops).
#[test]
fn a_secondary_applies_no_data_from_a_secondary_peer() {
    for op in [
        Op::write(0, Bytes::from(vec![0xEE; 64]), false),
        Op::resync(64, Bytes::from(vec![0xEE; 64])),
        Op::ResyncZero { offset: 64, len: 64 },
    ] {
        let mut c = core(Protocol::C, DiskState::UpToDate);
        run(&mut c, Duration::ZERO);
        connect(&mut c, 1, Role::Secondary);
        assert_eq!(c.replication(), Replication::Established);
        c.handle_frame(Duration::ZERO, 1, Message::Data { seq: 1, op });
        let (acts, applied) = run_applied(&mut c, Duration::ZERO);
        assert!(closed(&acts));
        assert!(applied.is_empty(), "applied {applied:?} from a Secondary peer");
    }
}
