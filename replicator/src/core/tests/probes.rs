//! `twinblock bench` probes: numbered in the replication stream, written
//! to the scratch area, answered as the probed mode says.

use super::*;

fn replied(actions: &[Action], req: ReqId) -> Option<Result<(), ReplyError>> {
    actions.iter().find_map(|a| match a {
        Action::Reply { req: r, result } if *r == req => Some(*result),
        _ => None,
    })
}

/// Data frames among `acts`.
fn sent(acts: &[Action]) -> usize {
    acts.iter().filter(|a| matches!(a, Action::Send { msg: Message::Data { .. }, .. })).count()
}

fn sent_seq(actions: &[Action]) -> u64 {
    actions
        .iter()
        .find_map(|a| match a {
            Action::Send { msg: Message::Data { seq, op: Op::Bench { .. } }, .. } => Some(*seq),
            _ => None,
        })
        .expect("the probe is sent to the peer")
}

/// A connected Primary in protocol C (the mode of the resource does not
/// matter to a probe: it carries its own rule).
fn primary() -> Core {
    connected_primary(Protocol::C)
}

#[test]
fn each_mode_replies_exactly_when_its_rule_allows() {
    let t = Duration::ZERO;
    for (mode, after_local, after_received) in [
        (ProbeMode::A, true, true),
        (ProbeMode::B, false, true),
        (ProbeMode::C, false, false),
        (ProbeMode::Link, false, true),
    ] {
        let mut c = primary();
        c.bench_write(t, 7, mode, 4096, Bytes::from(vec![1u8; 4096]));
        let acts = run(&mut c, t); // the local scratch write completes
        assert!(!stores_written(&acts), "{mode:?}: a probe never writes the device");
        let seq = sent_seq(&acts);
        assert_eq!(replied(&acts, 7).is_some(), after_local, "{mode:?} after the local part");
        c.handle_frame(t, 1, Message::Ack { received: seq, done: seq - 1 });
        let acts2 = run(&mut c, t);
        let by_received = replied(&acts, 7).or(replied(&acts2, 7)).is_some();
        assert_eq!(by_received, after_received, "{mode:?} after received");
        c.handle_frame(t, 1, Message::Ack { received: seq, done: seq });
        let acts3 = run(&mut c, t);
        let all: Vec<Action> = acts.into_iter().chain(acts2).chain(acts3).collect();
        assert_eq!(replied(&all, 7), Some(Ok(())), "{mode:?} answered once done");
        assert_eq!(c.status().out_of_sync_bytes, 0);
        assert_eq!(c.status().counters.written_bytes, 0);
    }
}

#[test]
fn a_probe_is_refused_unless_a_connected_primary_is_established() {
    let t = Duration::ZERO;
    let mut c = core(Protocol::C, DiskState::UpToDate);
    assert!(c.bench_refusal().unwrap().contains("Primary"));
    c.promote(false, 1).unwrap();
    assert!(c.bench_refusal().unwrap().contains("not connected"));
    c.bench_write(t, 1, ProbeMode::C, 0, Bytes::from(vec![1u8; 64]));
    let acts = run(&mut c, t);
    assert_eq!(replied(&acts, 1), Some(Err(ReplyError::Io(ENOTCONN))));
    assert!(!acts.iter().any(|a| matches!(a, Action::Send { .. })));
    // Outside the scratch area.
    let mut c = primary();
    c.bench_write(t, 2, ProbeMode::C, wire::BENCH_AREA - 4096, Bytes::from(vec![1u8; 8192]));
    assert_eq!(replied(&run(&mut c, t), 2), Some(Err(ReplyError::OutOfRange)));
}

#[test]
fn a_lost_link_fails_waiting_probes_and_marks_nothing() {
    let t = Duration::ZERO;
    let mut c = primary();
    c.bench_write(t, 3, ProbeMode::C, 0, Bytes::from(vec![1u8; 4096]));
    run(&mut c, t);
    c.handle_link_down(t, 1, "cut");
    let acts = run(&mut c, t);
    assert_eq!(replied(&acts, 3), Some(Err(ReplyError::Io(ENOTCONN))));
    assert_eq!(c.status().out_of_sync_bytes, 0);
    // No write of the device was lost: the generation did not move.
    assert_eq!(c.status().gen.current, GEN);
}

#[test]
fn a_local_scratch_failure_fails_the_probe_not_the_disk() {
    let t = Duration::ZERO;
    let mut c = primary();
    c.bench_write(t, 4, ProbeMode::A, 0, Bytes::from(vec![1u8; 4096]));
    let mut replies = Vec::new();
    for a in drain(&mut c) {
        match a {
            Action::Store { io, op: StoreOp::Scratch { .. } } => {
                c.handle_io(t, io, Err(IoError::EIO))
            }
            other => replies.push(other),
        }
    }
    replies.extend(run(&mut c, t));
    assert_eq!(replied(&replies, 4), Some(Err(ReplyError::Io(IoError::EIO))));
    assert_eq!(c.disk(), DiskState::UpToDate);
    assert_eq!(c.connection(), Connection::Connected);
}

#[test]
fn the_secondary_writes_probes_to_scratch_and_a_failure_there_keeps_disk_and_link() {
    let t = Duration::ZERO;
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    c.handle_frame(
        t,
        1,
        Message::Data { seq: 1, op: Op::bench(0, Bytes::from(vec![5u8; 4096]), true) },
    );
    c.handle_frame(t, 1, Message::Data { seq: 2, op: Op::bench(0, Bytes::new(), false) });
    let mut out = Vec::new();
    for a in drain(&mut c) {
        match a {
            Action::Store { io, op } => {
                assert!(matches!(op, StoreOp::Scratch { .. }), "only the scratch area: {op:?}");
                c.handle_io(t, io, Err(IoError::EIO));
            }
            other => out.push(other),
        }
    }
    out.extend(run(&mut c, t));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Send { msg: Message::Failed { seq: 1, .. }, .. })));
    assert!(out
        .iter()
        .any(|a| matches!(a, Action::Send { msg: Message::Ack { received: 2, done: 2 }, .. })));
    assert!(!closed(&out));
    assert_eq!(c.disk(), DiskState::UpToDate);
    // A probe reaching past the scratch area is a link fault.
    c.handle_frame(
        t,
        1,
        Message::Data { seq: 3, op: Op::bench(wire::BENCH_AREA, Bytes::from(vec![1u8; 64]), true) },
    );
    assert!(closed(&run(&mut c, t)));
}

#[test]
fn protocol_a_probes_stay_within_max_lag() {
    let t = Duration::ZERO;
    let mut c = primary();
    for req in 0..300 {
        c.bench_write(t, 100 + req, ProbeMode::A, 0, Bytes::from(vec![1u8; 4096]));
    }
    let acts = run(&mut c, t);
    assert_eq!(sent(&acts), 256, "1 MiB of max_lag in 4 KiB probes");
    c.handle_frame(t, 1, Message::Ack { received: 256, done: 256 });
    assert_eq!(sent(&run(&mut c, t)), 44, "the rest goes once the peer caught up");
}

#[test]
fn probes_of_every_mode_keep_at_most_bench_lag_in_flight() {
    let t = Duration::ZERO;
    let mut c = primary();
    for req in 0..6 {
        c.bench_write(t, 200 + req, ProbeMode::Link, 0, Bytes::from(vec![1u8; 1 << 20]));
    }
    assert_eq!(sent(&run(&mut c, t)), 4, "4 MiB of 1 MiB probes");
    c.handle_frame(t, 1, Message::Ack { received: 1, done: 1 });
    assert_eq!(sent(&run(&mut c, t)), 1, "one more once one landed");
}

#[test]
fn a_peer_failure_of_a_probe_fails_it_and_keeps_the_link() {
    let t = Duration::ZERO;
    let mut c = primary();
    c.bench_write(t, 5, ProbeMode::C, 0, Bytes::from(vec![1u8; 4096]));
    let seq = sent_seq(&run(&mut c, t));
    c.handle_frame(t, 1, Message::Failed { seq, errno: 5 });
    let acts = run(&mut c, t);
    assert_eq!(replied(&acts, 5), Some(Err(ReplyError::Io(IoError::EIO))));
    c.handle_frame(t, 1, Message::Ack { received: seq, done: seq });
    assert!(!closed(&run(&mut c, t)));
    assert_eq!(c.status().out_of_sync_bytes, 0);
    assert_eq!(c.connection(), Connection::Connected);
}

/// `in_flight` counts the device's own operations, not the bench's probes
/// on the same stream (README walk-through: an idle device showed writes
/// in flight while a bench ran); the probes are `bench_in_flight`.
#[test]
fn in_flight_counts_the_devices_writes_not_the_probes() {
    let t = Duration::ZERO;
    let mut c = primary();
    c.bench_write(t, 7, ProbeMode::C, 0, Bytes::from(vec![1u8; 4096]));
    c.bench_write(t, 8, ProbeMode::C, 4096, Bytes::from(vec![1u8; 4096]));
    let probes = run(&mut c, t);
    assert_eq!(sent(&probes), 2);
    assert_eq!((c.status().in_flight, c.status().bench_in_flight), (0, 2), "an idle device");
    c.write(t, 9, 0, Bytes::from(vec![2u8; 4096]), false);
    let acts = run(&mut c, t);
    let seq = acts
        .iter()
        .find_map(|a| match a {
            Action::Send { msg: Message::Data { seq, op: Op::Write { .. } }, .. } => Some(*seq),
            _ => None,
        })
        .expect("the write is sent");
    assert_eq!((c.status().in_flight, c.status().bench_in_flight), (1, 2));
    // The peer applies all three: nothing is in flight either way.
    c.handle_frame(t, 1, Message::Ack { received: seq, done: seq });
    run(&mut c, t);
    assert_eq!((c.status().in_flight, c.status().bench_in_flight), (0, 0));
}
