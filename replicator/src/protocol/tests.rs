//! Deterministic tests of the replication protocol: no sockets, no sleeps.

use bytes::{Bytes, BytesMut};

use super::wire::{self, DiskState, Hello, Lost, Message, Op, Role, WireError};

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
            nonce: 0x1234_5678_9abc_def0,
            full_sync: 77,
            lost: Lost::Cache,
            protocol: crate::config::Protocol::B,
            split_brain_policy: super::genid::SplitBrainPolicy::DiscardLeastChanges,
            forced_base: true,
        }),
        Message::Data { seq: 1, op: w(4096, 7, 4096) },
        Message::Data { seq: 2, op: Op::write(0, Bytes::from_static(b"x"), true) },
        Message::Data { seq: 3, op: Op::Trim { offset: 8192, len: 1 << 30, fua: true } },
        Message::Data { seq: 4, op: Op::Zero { offset: 0, len: 4096, no_hole: true, fua: false } },
        Message::Data { seq: 5, op: Op::Flush },
        Message::Data { seq: 5, op: Op::resync(1 << 20, Bytes::from(vec![3u8; 8192])) },
        Message::Data { seq: 5, op: Op::ResyncZero { offset: 1 << 40, len: 1 << 20 } },
        Message::Data { seq: 6, op: Op::Verify { offset: 1 << 20, len: 1 << 20, online: true } },
        Message::Verified { seq: 6, sums: vec![1, 2, u64::MAX] },
        Message::Data { seq: 7, op: Op::bench(4096, Bytes::from(vec![9u8; 4096]), true) },
        Message::Data { seq: 8, op: Op::bench(0, Bytes::new(), false) },
        Message::Ack { received: 5, done: 3 },
        Message::Failed { seq: 9, errno: 5 },
        Message::Ping { id: 77 },
        Message::Pong { id: 77 },
        Message::Bits { runs: vec![(0, 3), (1 << 40, 1)], last: false },
        Message::Bits { runs: vec![], last: true },
        Message::BitWords { first: 7, words: vec![0, u64::MAX, 0x8000_0000_0000_0001], last: true },
        Message::BitWords { first: 0, words: vec![], last: false },
        Message::SyncDone { current: 0x1234 },
        Message::VerifyRequest,
        Message::Outdate,
        Message::OutdateDone,
        Message::State {
            role: Role::Secondary,
            disk: DiskState::Outdated,
            peer_out_of_sync: 8192,
            fresh: false,
            current: 99,
            promoted_at: 1_795_000_000_001,
        },
        Message::PromoteAsk { ask: 5 },
        Message::PromoteAnswer { ask: 5, granted: true, why: String::new() },
        Message::PromoteAnswer { ask: 6, granted: false, why: "a is Primary".into() },
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

/// A resync chunk of zeroes crosses the link as its range alone (a
/// 29-byte frame for 1 MiB); one with a byte of data keeps its bytes.
#[test]
fn a_resync_chunk_of_zeroes_is_sent_without_them() {
    let zeroes = Op::resync_chunk(1 << 20, Bytes::from(vec![0u8; 1 << 20]));
    assert_eq!(zeroes, Op::ResyncZero { offset: 1 << 20, len: 1 << 20 });
    assert_eq!(zeroes.wire_bytes(), 0);
    assert_eq!(zeroes.range(), Some((1 << 20, 1 << 20)));
    assert_eq!(Message::Data { seq: 1, op: zeroes }.to_bytes().len(), 4 + 1 + 8 + 8 + 4);
    let mut one = vec![0u8; 1 << 20];
    one[(1 << 20) - 1] = 1;
    let data = Op::resync_chunk(0, Bytes::from(one.clone()));
    assert_eq!(data, Op::resync(0, Bytes::from(one)));
    assert_eq!(Op::resync_chunk(0, Bytes::new()), Op::resync(0, Bytes::new()));
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
    // Resync zeroes cut short.
    let mut m = Message::Data { seq: 1, op: Op::ResyncZero { offset: 0, len: 4096 } }.to_bytes();
    let n = m.len();
    m.truncate(n - 1);
    m[..4].copy_from_slice(&((n - 1 - 4) as u32).to_be_bytes());
    assert_eq!(wire::decode(&mut m), Err(WireError::Malformed("resync-zero")));
    // A hello naming no protocol the wire knows (its last byte but two),
    // or no split-brain policy (its last byte but one; the last is
    // `forced_base`).
    for protocol in [crate::config::Protocol::A, crate::config::Protocol::Adaptive] {
        let mut h = hello_frame(protocol).to_bytes();
        let mut ok = h.clone();
        assert_eq!(wire::decode(&mut ok), Ok(Some(hello_frame(protocol))));
        let mut p = h.clone();
        let last = h.len() - 2; // (the policy's byte)
        h[last - 1] = 9;
        assert_eq!(wire::decode(&mut h), Err(WireError::Malformed("hello protocol")));
        p[last] = 9;
        assert_eq!(wire::decode(&mut p), Err(WireError::Malformed("hello split-brain policy")));
    }
    // Bitmap words whose count disagrees with the frame, or too many.
    let mut m = Message::BitWords { first: 0, words: vec![1, 2], last: true }.to_bytes();
    let n = m.len();
    m.truncate(n - 1);
    m[..4].copy_from_slice(&((n - 1 - 4) as u32).to_be_bytes());
    assert_eq!(wire::decode(&mut m), Err(WireError::Malformed("bit-words length")));
    let words = vec![0; wire::MAX_BIT_WORDS + 1];
    let mut m = Message::BitWords { first: 0, words, last: true }.to_bytes();
    assert_eq!(wire::decode(&mut m), Err(WireError::Malformed("bit-words length")));
}

fn hello_frame(protocol: crate::config::Protocol) -> Message {
    Message::Hello(Hello {
        version: wire::VERSION,
        node: "b".into(),
        resource: "r".into(),
        size: 1 << 20,
        role: Role::Secondary,
        disk: DiskState::UpToDate,
        peer_out_of_sync: 0,
        fresh: false,
        gen: super::genid::GenIds { current: 3, bitmap: 0, history: [0, 0] },
        discard: false,
        promoted_at: 0,
        nonce: 1,
        full_sync: 0,
        lost: Lost::None,
        protocol,
        split_brain_policy: super::genid::SplitBrainPolicy::Disconnect,
        forced_base: false,
    })
}
