//! Deterministic tests of the replication protocol: no sockets, no sleeps.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::liveness::Liveness;
use super::receiver::{LinkFault, Receiver};
use super::sender::{Need, Sender};
use super::wire::{self, DiskState, Hello, Message, Op, Role, WireError};
use crate::config::Protocol;

fn w(offset: u64, fill: u8, len: usize) -> Op {
    Op::write(offset, Bytes::from(vec![fill; len]), false)
}

#[test]
fn every_message_round_trips_even_byte_by_byte() {
    let msgs = vec![
        Message::Hello(Hello {
            version: wire::VERSION,
            node: "a".into(),
            resource: "ldap".into(),
            size: 1 << 30,
            role: Role::Primary,
            disk: DiskState::UpToDate,
            peer_out_of_sync: 4096,
            fresh: true,
            gen: super::genid::GenIds { current: 11, bitmap: 10, history: [10, 7] },
            discard: true,
            promoted_at: 1_795_000_000_000,
        }),
        Message::Data { seq: 1, op: w(4096, 7, 4096) },
        Message::Data { seq: 2, op: Op::write(0, Bytes::from_static(b"x"), true) },
        Message::Data { seq: 3, op: Op::Trim { offset: 8192, len: 1 << 30, fua: true } },
        Message::Data { seq: 4, op: Op::Zero { offset: 0, len: 4096, no_hole: true, fua: false } },
        Message::Data { seq: 5, op: Op::Flush },
        Message::Data { seq: 6, op: Op::Verify { offset: 1 << 20, len: 1 << 20 } },
        Message::Verified { seq: 6, crcs: vec![1, 2, 0xffff_ffff] },
        Message::Ack { received: 5, done: 3 },
        Message::Failed { seq: 9, errno: 5 },
        Message::Ping { id: 77 },
        Message::Pong { id: 77 },
        Message::Bits { runs: vec![(0, 3), (1 << 40, 1)], last: false },
        Message::Bits { runs: vec![], last: true },
        Message::SyncDone { current: 0x1234 },
        Message::VerifyRequest,
        Message::State {
            role: Role::Secondary,
            disk: DiskState::Outdated,
            peer_out_of_sync: 8192,
            fresh: false,
            current: 99,
        },
    ];
    let stream: Vec<u8> = msgs.iter().flat_map(|m| m.to_bytes().to_vec()).collect();
    let mut input = BytesMut::new();
    let mut got = Vec::new();
    for b in stream {
        input.extend_from_slice(&[b]);
        while let Some(m) = wire::decode(&mut input).unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, msgs);
}

#[test]
fn malformed_frames_are_errors() {
    let mut input = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
    assert!(matches!(wire::decode(&mut input), Err(WireError::TooLarge(_))));
    let mut input = BytesMut::from(&[0, 0, 0, 1, 99][..]);
    assert_eq!(wire::decode(&mut input), Err(WireError::UnknownType(99)));
    // A write whose length field disagrees with the frame.
    let mut m = Message::Data { seq: 1, op: w(0, 1, 16) }.to_bytes();
    let n = m.len();
    m.truncate(n - 1);
    let body = (n - 1 - 4) as u32;
    m[..4].copy_from_slice(&body.to_be_bytes());
    assert_eq!(wire::decode(&mut m), Err(WireError::Malformed("write length")));
}

#[test]
fn receiver_applies_in_sequence_order_whatever_the_arrival_order() {
    let mut r = Receiver::new();
    r.on_data(3, w(0, 3, 512)).unwrap();
    r.on_data(2, w(0, 2, 512)).unwrap();
    assert_eq!(r.next_ready(), None, "1 has not arrived: nothing may be applied");
    assert_eq!(r.ack(), None);
    r.on_data(1, w(0, 1, 512)).unwrap();
    let order: Vec<u64> = std::iter::from_fn(|| r.next_ready()).map(|(s, _)| s).collect();
    assert_eq!(order, vec![1, 2, 3]);
    assert_eq!(r.ack(), Some(Message::Ack { received: 3, done: 0 }));
    r.applied(1);
    r.applied(2);
    assert_eq!(r.ack(), Some(Message::Ack { received: 3, done: 2 }));
    assert_eq!(r.ack(), None, "acks only when something changed");
    // Duplicates (retransmitted or replayed) are ignored.
    r.on_data(2, w(0, 9, 512)).unwrap();
    r.on_data(3, w(0, 9, 512)).unwrap();
    assert_eq!(r.next_ready(), None);
}

#[test]
fn crc_mismatch_is_a_link_fault_and_nothing_is_applied() {
    let mut r = Receiver::new();
    let Op::Write { offset, mut data, fua, crc } = w(8192, 5, 4096) else { unreachable!() };
    let mut bad = data.to_vec();
    bad[100] ^= 1;
    data = Bytes::from(bad);
    let fault = r.on_data(1, Op::Write { offset, data, fua, crc }).unwrap_err();
    assert_eq!(fault, LinkFault::Crc { seq: 1, offset: 8192, len: 4096 });
    assert_eq!(r.next_ready(), None);
    assert_eq!(r.ack(), None);
}

#[test]
fn each_mode_acknowledges_as_the_design_says() {
    // C: only when the peer has applied it.
    let mut s = Sender::new();
    let (seq, now) = s.submit(&w(0, 1, 4096), Protocol::C);
    assert!(!now);
    assert_eq!(s.on_ack(seq, 0), Vec::<u64>::new(), "received is not enough in C");
    assert_eq!(s.on_ack(seq, seq), vec![seq]);
    assert_eq!(s.in_flight(), 0);

    // B: when the peer has received it; a flush still waits for done.
    let mut s = Sender::new();
    let (w1, _) = s.submit(&w(0, 1, 4096), Protocol::B);
    let (f, _) = s.submit(&Op::Flush, Protocol::B);
    assert_eq!(Need::of(&Op::Flush, Protocol::B), Need::Done);
    assert_eq!(s.on_ack(f, 0), vec![w1]);
    assert_eq!(s.on_ack(f, w1), Vec::<u64>::new(), "already answered; the flush is not done");
    assert_eq!(s.on_ack(f, f), vec![f]);

    // A: at once, but the op stays in flight (and counts as lag) until done.
    let mut s = Sender::new();
    let (a1, now) = s.submit(&w(0, 1, 65536), Protocol::A);
    assert!(now);
    assert_eq!(s.in_flight_bytes(), 65536);
    assert_eq!(s.on_ack(a1, a1), Vec::<u64>::new(), "nothing was waiting");
    assert_eq!(s.in_flight_bytes(), 0);
}

#[test]
fn link_loss_mid_write_returns_every_unconfirmed_range() {
    let mut s = Sender::new();
    let (s1, _) = s.submit(&w(0, 1, 4096), Protocol::B);
    let (s2, _) = s.submit(&w(8192, 2, 4096), Protocol::B);
    let (s3, _) = s.submit(&Op::Trim { offset: 1 << 20, len: 4096, fua: false }, Protocol::B);
    // The peer received the first two and applied the first.
    assert_eq!(s.on_ack(s2, s1), vec![s1, s2]);
    let lost = s.lose();
    let ranges: Vec<_> = lost.iter().map(|u| (u.seq, u.range, u.was_waiting)).collect();
    assert_eq!(
        ranges,
        vec![(s2, Some((8192, 4096)), false), (s3, Some((1 << 20, 4096)), true)],
        "s2 was answered (B) but is not on the peer's disk yet: still out of sync"
    );
    assert_eq!(s.in_flight_bytes(), 0);
}

/// A full session through a link that reorders and duplicates: the secondary
/// applies exactly the primary's order, every write completes exactly once.
#[test]
fn session_over_a_reordering_duplicating_link() {
    let mut s = Sender::new();
    let mut r = Receiver::new();
    let mut disk_p = vec![0u8; 64];
    let mut disk_s = vec![0u8; 64];
    let mut wire_frames = Vec::new();
    // Overlapping writes to the same bytes, in order.
    for i in 0..40u64 {
        let off = (i * 7) % 56;
        let op = Op::write(off, Bytes::from(vec![i as u8 + 1; 8]), false);
        disk_p[off as usize..off as usize + 8].fill(i as u8 + 1);
        let (seq, _) = s.submit(&op, Protocol::C);
        wire_frames.push(Message::Data { seq, op }.to_bytes());
    }
    // Deterministic shuffle, plus every fifth frame twice.
    let mut order: Vec<usize> = (0..wire_frames.len()).collect();
    let mut x = 12345u64;
    for i in (1..order.len()).rev() {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        order.swap(i, (x >> 33) as usize % (i + 1));
    }
    let dups: Vec<usize> = order.iter().copied().filter(|i| i % 5 == 0).collect();
    order.extend(dups);
    let mut completed = Vec::new();
    for i in order {
        let mut buf = wire_frames[i].clone();
        let Message::Data { seq, op } = wire::decode(&mut buf).unwrap().unwrap() else { panic!() };
        r.on_data(seq, op).unwrap();
        while let Some((seq, op)) = r.next_ready() {
            if let Op::Write { offset, data, .. } = op {
                disk_s[offset as usize..offset as usize + data.len()].copy_from_slice(&data);
            }
            r.applied(seq);
        }
        if let Some(Message::Ack { received, done }) = r.ack() {
            completed.extend(s.on_ack(received, done));
        }
    }
    assert_eq!(disk_s, disk_p);
    assert_eq!(completed, (1..=40).collect::<Vec<_>>());
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn liveness_times_out_and_measures_rtt() {
    let t0 = Instant::now();
    let mut l = Liveness::new(t0, Duration::from_secs(2));
    let id = l.ping(t0).unwrap();
    assert_eq!(l.ping(t0), None, "one ping at a time");
    l.pong(id, t0 + Duration::from_millis(10));
    assert_eq!(l.rtt(), Some(Duration::from_millis(10)));
    let id = l.ping(t0 + Duration::from_millis(500)).unwrap();
    l.pong(id, t0 + Duration::from_millis(502));
    assert_eq!(l.rtt(), Some((Duration::from_millis(10) * 7 + Duration::from_millis(2)) / 8));
    assert!(!l.expired(t0 + Duration::from_millis(2400)));
    assert!(l.expired(t0 + Duration::from_millis(2502)));
    // A blip shorter than the timeout is not a loss.
    l.heard(t0 + Duration::from_millis(2400));
    assert!(!l.expired(t0 + Duration::from_millis(4000)));
}
