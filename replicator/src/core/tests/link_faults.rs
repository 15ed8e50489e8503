//! The link and what a peer sends: frames outside the device, sequence
//! gaps, acknowledgements of nothing, silent and slow peers, the reasons
//! a session ends with.

use super::*;

#[test]
fn data_outside_the_device_closes_the_link_and_applies_nothing() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    let op = Op::write(SIZE - 64, Bytes::from(vec![1u8; 128]), false);
    c.handle_frame(Duration::ZERO, 1, Message::Data { seq: 1, op });
    let a = drain(&mut c);
    assert!(closed(&a));
    assert!(!stores_written(&a));
}

#[test]
fn a_sequence_gap_closes_the_link() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    let op = Op::write(0, Bytes::from(vec![1u8; 64]), false);
    c.handle_frame(Duration::ZERO, 1, Message::Data { seq: 2, op });
    let a = drain(&mut c);
    assert!(closed(&a));
    assert!(!stores_written(&a));
}

#[test]
fn a_verify_larger_than_allowed_closes_the_link() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    let op = Op::Verify { offset: 0, len: wire::MAX_VERIFY + 64, online: true };
    c.handle_frame(Duration::ZERO, 1, Message::Data { seq: 1, op });
    assert!(closed(&drain(&mut c)));
}

/// Checksum requests cost the receiver a read each, and a peer that asks
/// for more than [`wire::VERIFY_IN_FLIGHT`] bytes not yet answered is a
/// link fault (before, a liar's 22-byte frames, each asking 32 MiB, were
/// all queued: a megabyte of them was a terabyte of reads). Requests that
/// are answered as they come, as an honest window's are, go on for ever.
#[test]
fn checksum_requests_past_the_bound_in_flight_close_the_link() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    let asked = wire::VERIFY_IN_FLIGHT / SIZE;
    for seq in 1..=asked {
        let op = Op::Verify { offset: 0, len: SIZE as u32, online: true };
        c.handle_frame(Duration::ZERO, 1, Message::Data { seq, op });
    }
    assert!(!closed(&drain(&mut c)), "closed within the bound");
    let op = Op::Verify { offset: 0, len: SIZE as u32, online: true };
    c.handle_frame(Duration::ZERO, 1, Message::Data { seq: asked + 1, op });
    let why = drain(&mut c).into_iter().find_map(|a| match a {
        Action::Close { reason, .. } => Some(reason),
        _ => None,
    });
    let why = why.expect("a request past the bound closes the link");
    assert!(why.contains("link fault") && why.contains("in flight"), "{why}");

    // Answered as they come: twice the bound's worth, and the link stays.
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    for seq in 1..=2 * asked {
        let op = Op::Verify { offset: 0, len: SIZE as u32, online: true };
        c.handle_frame(Duration::ZERO, 1, Message::Data { seq, op });
        if seq % 16 == 0 {
            assert!(!closed(&run(&mut c, Duration::ZERO)), "closed at {seq}");
        }
    }
    assert!(!closed(&run(&mut c, Duration::ZERO)));
}

#[test]
fn an_ack_for_nothing_sent_closes_the_link() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    c.handle_frame(Duration::ZERO, 1, Message::Ack { received: 5, done: 0 });
    assert!(closed(&drain(&mut c)));
}

#[test]
fn a_repeated_ack_is_harmless() {
    let mut c = core(Protocol::B, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    c.write(Duration::ZERO, 1, 0, Bytes::from(vec![1u8; 64]), false);
    run(&mut c, Duration::ZERO);
    c.handle_frame(Duration::ZERO, 1, Message::Ack { received: 1, done: 0 });
    c.handle_frame(Duration::ZERO, 1, Message::Ack { received: 1, done: 1 });
    assert!(!closed(&run(&mut c, Duration::ZERO)));
}

#[test]
fn a_peer_that_answers_pings_but_never_acks_is_lost_after_timeout() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    c.write(Duration::ZERO, 1, 0, Bytes::from(vec![1u8; 64]), false);
    run(&mut c, Duration::ZERO);
    let mut t = Duration::ZERO;
    let mut lost = false;
    while t < Duration::from_secs(3) && !lost {
        t += Duration::from_millis(100);
        c.handle_timeout(t);
        for a in run(&mut c, t) {
            match a {
                Action::Send { msg: Message::Ping { id }, .. } => {
                    c.handle_frame(t, 1, Message::Pong { id });
                }
                Action::Close { .. } => lost = true,
                _ => {}
            }
        }
        // The peer keeps talking.
        if !lost {
            c.handle_frame(t, 1, Message::Ping { id: 99 });
            lost = closed(&run(&mut c, t));
        }
    }
    assert!(lost, "never declared lost");
    assert!(t >= Duration::from_secs(2) && t <= Duration::from_millis(2200), "lost at {t:?}");
}

/// A Primary with 200 writes sent at once to a peer that completes one of
/// them every 100 ms (the backlog grows older than `timeout`) until
/// `stop` and none after: when it gives the peer up, and why.
fn slow_peer(stop: Duration) -> (Time, String) {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    for i in 0..200u64 {
        c.write(Duration::ZERO, i + 1, (i % 16) * 64, Bytes::from(vec![1u8; 64]), false);
    }
    let (mut t, mut sent, mut done) = (Duration::ZERO, 0, 0);
    while t < Duration::from_secs(30) {
        c.handle_timeout(t);
        for a in run(&mut c, t) {
            match a {
                Action::Send { msg: Message::Data { seq, .. }, .. } => sent = sent.max(seq),
                Action::Send { msg: Message::Ping { id }, .. } => {
                    c.handle_frame(t, 1, Message::Pong { id })
                }
                Action::Close { reason, .. } => return (t, reason),
                _ => {}
            }
        }
        t += Duration::from_millis(100);
        if t <= stop && done < sent {
            done += 1;
        }
        c.handle_frame(t, 1, Message::Ack { received: sent, done });
        c.handle_frame(t, 1, Message::Ping { id: 99 });
    }
    panic!("the peer was never given up ({done} of {sent} completed)");
}

/// A peer that keeps completing operations is slow, not lost, however old
/// the backlog (a slow link or disk: a resync window, protocol A's lag):
/// before, the Primary gave it up once its oldest operation was `timeout`
/// old, and a resync over a link slower than its window per `timeout`
/// restarted for ever. One that stops completing them is lost `timeout`
/// after its last completion; one operation waits at most KO_COUNT
/// timeouts.
#[test]
fn a_slow_peer_is_waited_for_and_a_stalled_one_is_lost() {
    let timeout = Duration::from_secs(2);
    let (t, why) = slow_peer(Duration::from_secs(3));
    assert!(
        t >= Duration::from_secs(5) && t <= Duration::from_millis(5200),
        "lost at {t:?}: {why}"
    );
    assert!(why.contains("completed no operation"), "{why}");
    let (t, why) = slow_peer(Duration::from_secs(60));
    let ko = timeout * session::KO_COUNT;
    assert!(t >= ko && t <= ko + Duration::from_millis(200), "lost at {t:?}: {why}");
    assert!(why.contains("has not completed operation"), "{why}");
}

/// The reason a silent peer is given up for, after `secs` of silence.
fn silent_for(c: &mut Core, secs: u64) -> Option<String> {
    let mut t = Duration::ZERO;
    while t < Duration::from_secs(secs) {
        t += Duration::from_millis(100);
        c.handle_timeout(t);
        for a in drain(c) {
            if let Action::Close { reason, .. } = a {
                return Some(reason);
            }
        }
    }
    None
}

#[test]
fn a_silent_peer_whose_writes_this_disk_holds_is_lost_with_this_disk_named() {
    // A Secondary whose disk has not completed the peer's write: the
    // peer's frames may be unread because of it (a full store lane).
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    let op = Op::write(0, Bytes::from(vec![1u8; 64]), false);
    c.handle_frame(Duration::ZERO, 1, Message::Data { seq: 1, op });
    // Metadata updates complete; the write never does.
    let mut written = false;
    while let Some(a) = c.poll_action() {
        match a {
            Action::Persist { io, .. } => c.handle_io(Duration::ZERO, io, Ok(None)),
            Action::Store { op: StoreOp::Write { .. }, .. } => written = true,
            _ => {}
        }
    }
    assert!(written, "the peer's write was not issued");
    let why = silent_for(&mut c, 5).expect("never declared lost");
    assert!(why.starts_with("no sign of life from the peer for 2s"), "{why}");
    assert!(why.ends_with(", while a's disk has operations of b not completed"), "{why}");
    // With nothing of the peer's on this disk, the peer alone is named.
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    let why = silent_for(&mut c, 5).expect("never declared lost");
    assert_eq!(why, "no sign of life from the peer for 2s");
}

/// The peer's reason for a session that ended when its stream did comes
/// after the end: it replaces "the peer closed the link" in `last_error`,
/// unless a new session is up by then (its reason is about an old one).
#[test]
fn the_peers_reason_for_an_ended_session_is_the_last_error() {
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::C);
    c.handle_link_down(t, 1, PEER_FINISHED);
    assert_eq!(c.status().last_error.as_deref(), Some(PEER_FINISHED));
    c.handle_peer_reason(1, "b closed the link: the local disk failed".into());
    assert_eq!(c.status().last_error.as_deref(), Some("b closed the link: the local disk failed"));
    // Only once, and only over the shell's words.
    c.handle_peer_reason(1, "b closed the link: again".into());
    assert_eq!(c.status().last_error.as_deref(), Some("b closed the link: the local disk failed"));
    connect(&mut c, 2, Role::Secondary);
    c.handle_link_down(t, 2, PEER_FINISHED);
    connect(&mut c, 3, Role::Secondary);
    let before = c.status().last_error;
    c.handle_peer_reason(2, "b closed the link: replaced by a new connection".into());
    assert_eq!(c.status().last_error, before, "a reason about an old session, a new one up");
    // Session 3 ends too before session 2's reason arrives: that reason
    // is about 2, not 3.
    c.handle_link_down(t, 3, PEER_FINISHED);
    c.handle_peer_reason(2, "b closed the link: replaced by a new connection".into());
    assert_eq!(c.status().last_error.as_deref(), Some(PEER_FINISHED), "an older session's reason");
    c.handle_peer_reason(3, "b closed the link: the node is stopping".into());
    assert_eq!(c.status().last_error.as_deref(), Some("b closed the link: the node is stopping"));
}

/// What the shell could not decode ends the session as this node's own
/// decision: the Close carries the fault as the reason for the peer, a
/// write the peer had not confirmed is marked out of sync and answered
/// only once the mark is durable, and a fault reported for an older
/// session changes nothing.
#[test]
fn a_link_fault_closes_the_session_with_its_reason() {
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::C);
    let mut held = Vec::new();
    c.write(t, 1, 0, Bytes::from(vec![1u8; 64]), false);
    let mut acts = issue(&mut c, t, &mut held);
    c.handle_link_fault(t, 7, "link fault: unknown frame type 238".into());
    assert!(!closed(&drain(&mut c)), "a fault of another session closed this one");
    c.handle_link_fault(t, 1, "link fault: unknown frame type 238".into());
    // Metadata updates held, the local write completed.
    let mut persists = Vec::new();
    let step = |c: &mut Core, persists: &mut Vec<IoId>, acts: &mut Vec<Action>| {
        while let Some(a) = c.poll_action() {
            match a {
                Action::Persist { io, .. } => persists.push(io),
                Action::Store { io, .. } => c.handle_io(t, io, Ok(None)),
                other => acts.push(other),
            }
        }
    };
    step(&mut c, &mut persists, &mut acts);
    for (io, _) in held.drain(..) {
        c.handle_io(t, io, Ok(None));
    }
    step(&mut c, &mut persists, &mut acts);
    let reason = acts.iter().find_map(|a| match a {
        Action::Close { session: 1, reason } => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(reason.as_deref(), Some("link fault: unknown frame type 238"), "{acts:?}");
    assert_eq!(c.status().last_error.as_deref(), Some("link fault: unknown frame type 238"));
    assert!(c.status().out_of_sync_bytes > 0, "the unconfirmed write is not marked");
    assert!(!persists.is_empty(), "the mark is never made durable: {acts:?}");
    assert!(replies_to(&acts, 1).is_empty(), "answered before its mark is durable");
    while !persists.is_empty() {
        for io in std::mem::take(&mut persists) {
            c.handle_io(t, io, Ok(None));
        }
        step(&mut c, &mut persists, &mut acts);
    }
    assert_eq!(replies_to(&acts, 1), vec![Ok(())]);
}

/// Two nodes configured with different protocols (a config edited on one
/// node only, or a rolling change half done) are refused at the handshake,
/// each naming both protocols, and nothing moves between them; once both
/// run the same protocol they connect and catch up. (From review: with a
/// B Primary and a C Secondary, a B-acknowledged write the Secondary had
/// received and not written was not flagged as lost by its process
/// crash, seed 2200234's course.)
#[test]
fn nodes_with_different_protocols_are_refused_until_they_agree() {
    for (pa, pb) in
        [(Protocol::B, Protocol::C), (Protocol::C, Protocol::A), (Protocol::Adaptive, Protocol::C)]
    {
        let mut p = Pair::new(pa, Plant::None);
        p.cfg[1].protocol = pb;
        p.crash(1, false);
        p.restart(1);
        p.core(0).promote(true, 1).unwrap();
        p.settle();
        p.connect();
        p.settle();
        for i in 0..2 {
            assert_ne!(p.core(i).connection(), Connection::Connected, "{pa}/{pb}");
            let e = p.core(i).status().last_error.unwrap_or_default();
            assert!(
                e.contains(&format!("protocol {pa}"))
                    && e.contains(&format!("protocol {pb}"))
                    && e.contains("same protocol"),
                "{pa}/{pb}: node {i}: {e}"
            );
        }
        let since = p.log.len();
        let now = p.now;
        p.core(0).write(now, 7, 8192, Bytes::from(vec![0x5au8; 4096]), false);
        p.settle();
        assert_eq!(p.reply(0, 7), Some(Ok(())), "{pa}/{pb}: the Primary goes on alone");
        assert_eq!(p.written_to(1, since), 0, "{pa}/{pb}: data moved to a refused peer");
        p.cfg[1].protocol = pa;
        p.crash(1, false);
        p.restart(1);
        p.connect();
        p.settle();
        assert_eq!(p.core(0).connection(), Connection::Connected, "{pa}/{pb}");
        assert_eq!(p.core(1).disk(), DiskState::UpToDate, "{pa}/{pb}");
        assert!(p.n[0].cache == p.n[1].cache, "{pa}/{pb}: not caught up");
    }
}

/// A peer of another protocol version is refused naming both versions and
/// what to do (before: "the peer speaks protocol version 11", which named
/// neither this node's nor the fix).
#[test]
fn a_peer_of_another_version_is_refused_naming_both_and_the_fix() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.handle_link_up(Duration::ZERO, 1);
    let g = GenIds { current: GEN, bitmap: 0, history: [0, 0] };
    let mut h = hello(Role::Secondary, DiskState::UpToDate, g);
    h.version = wire::VERSION - 1;
    c.handle_frame(Duration::ZERO, 1, Message::Hello(h));
    let why = drain(&mut c).into_iter().find_map(|a| match a {
        Action::Close { reason, .. } => Some(reason),
        _ => None,
    });
    let why = why.expect("refused");
    let want = format!(
        "the peer speaks protocol version {}, this node {}: run the same twinblock version on \
         both nodes",
        wire::VERSION - 1,
        wire::VERSION
    );
    assert!(why.contains(&want), "{why}");
    assert_ne!(c.connection(), Connection::Connected);
}
