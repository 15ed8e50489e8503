//! Hot paths of the NBD codec: decoding requests, encoding replies.

use bytes::{BufMut, Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use twinblock_nbd::consts::*;
use twinblock_nbd::{reply, Negotiated, RequestDecoder};

fn negotiated() -> Negotiated {
    Negotiated {
        structured: true,
        base_allocation: true,
        flags: TFLAG_HAS_FLAGS,
        size: 1 << 40,
        export_name: String::new(),
    }
}

fn request(kind: u16, cookie: u64, offset: u64, len: u32, payload: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(28 + payload);
    b.put_u32(REQUEST_MAGIC);
    b.put_u16(0);
    b.put_u16(kind);
    b.put_u64(cookie);
    b.put_u64(offset);
    b.put_u32(len);
    b.put_bytes(0x5a, payload);
    b
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    // 64 pipelined 4 KiB writes, as one read() from the socket brings them.
    let batch: Vec<u8> =
        (0..64).flat_map(|i| request(CMD_WRITE, i, i * 4096, 4096, 4096)).collect();
    g.throughput(Throughput::Elements(64));
    g.bench_function("write_4k_x64", |b| {
        b.iter(|| {
            let mut dec = RequestDecoder::new(&negotiated());
            let mut buf = BytesMut::from(&batch[..]);
            let mut n = 0;
            while let Ok(Some(d)) = dec.decode(&mut buf) {
                black_box(d);
                n += 1;
            }
            assert_eq!(n, 64);
        })
    });
    let reads: Vec<u8> = (0..64).flat_map(|i| request(CMD_READ, i, i * 4096, 4096, 0)).collect();
    g.bench_function("read_x64", |b| {
        b.iter(|| {
            let mut dec = RequestDecoder::new(&negotiated());
            let mut buf = BytesMut::from(&reads[..]);
            while let Ok(Some(d)) = dec.decode(&mut buf) {
                black_box(d);
            }
        })
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let data = Bytes::from(vec![0u8; 4096]);
    g.throughput(Throughput::Elements(1));
    g.bench_function("read_reply_structured_4k", |b| {
        b.iter(|| black_box(reply::read(true, black_box(7), 4096, data.clone())))
    });
    g.bench_function("ok_reply", |b| b.iter(|| black_box(reply::ok(black_box(7)))));
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
