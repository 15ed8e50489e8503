//! Hot paths of the replication protocol: framing a write, decoding a batch
//! of frames, and the receiver's CRC check and sequencing.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use twinblock_replicator::config::Protocol;
use twinblock_replicator::protocol::receiver::Receiver;
use twinblock_replicator::protocol::sender::Sender;
use twinblock_replicator::protocol::wire::{self, Message, Op};

fn codec(c: &mut Criterion) {
    let data = Bytes::from(vec![0x5au8; 4096]);
    let mut g = c.benchmark_group("replication");
    g.throughput(Throughput::Bytes(4096));
    g.bench_function("crc32_4k", |b| b.iter(|| black_box(crc32fast::hash(black_box(&data)))));
    g.bench_function("encode_write_4k", |b| {
        b.iter(|| {
            let op = Op::write(4096, data.clone(), false);
            black_box(Message::Data { seq: 7, op }.encode())
        })
    });
    let frames: Vec<u8> = (1..=64u64)
        .flat_map(|seq| {
            Message::Data { seq, op: Op::write(seq * 4096, data.clone(), false) }
                .to_bytes()
                .to_vec()
        })
        .collect();
    g.throughput(Throughput::Bytes(64 * 4096));
    g.bench_function("decode_and_sequence_64x4k", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&frames[..]);
            let mut r = Receiver::new();
            while let Ok(Some(Message::Data { seq, op })) = wire::decode(&mut buf) {
                r.on_data(seq, op).unwrap();
                while let Some((seq, op)) = r.next_ready() {
                    black_box(&op);
                    r.applied(seq);
                }
            }
            black_box(r.ack())
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("sender_submit_ack_64", |b| {
        let op = Op::write(0, data.clone(), false);
        b.iter(|| {
            let mut s = Sender::new();
            for _ in 0..64 {
                black_box(s.submit(&op, Protocol::C));
            }
            black_box(s.on_ack(64, 64))
        })
    });
    g.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
