//! Hot paths of replication: framing a write, decoding a batch of frames,
//! and the node core's write path (admission, numbering, the store action,
//! the peer's cumulative ack, the reply) for a pipelined batch.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use twinblock_replicator::config::Protocol;
use twinblock_replicator::core::{Action, Core, CoreConfig, Plant, Recovered};
use twinblock_replicator::protocol::genid::{GenIds, SplitBrainPolicy};
use twinblock_replicator::protocol::wire::{self, DiskState, Hello, Message, Op, Role};

/// A Primary of `size` bytes alone (no peer ever connected).
fn primary_core_of(size: u64) -> Core {
    let mut core = Core::new(
        CoreConfig { size, ..config() },
        Recovered { disk_created: true, ..Recovered::default() },
        Duration::ZERO,
        1,
    );
    drain(&mut core, 0);
    core.promote(true, 1).unwrap();
    drain(&mut core, 0);
    core
}

fn config() -> CoreConfig {
    CoreConfig {
        resource: "r".into(),
        me: "a".into(),
        peer: "b".into(),
        size: 1 << 30,
        block: 4096,
        extent: 4 << 20,
        protocol: Protocol::C,
        max_lag: 64 << 20,
        al_extents: 1237,
        timeout: Duration::from_secs(3600),
        ping_interval: Duration::from_secs(3600),
        disk_timeout: None,
        resync_rate: 100 << 20,
        resync_checksum: false,
        split_brain_policy: SplitBrainPolicy::Disconnect,
        chunk_blocks: 256,
        window: 16,
        checkpoint_chunks: 64,
        controller: None,
        adaptive: Default::default(),
        plant: Plant::None,
        files: Default::default(),
    }
}

fn primary_core() -> Core {
    let cfg = config();
    let mut core =
        Core::new(cfg, Recovered { disk_created: true, ..Recovered::default() }, Duration::ZERO, 1);
    drain(&mut core, 0);
    core.promote(true, 1).unwrap();
    core.handle_link_up(Duration::ZERO, 1);
    let hello = Hello {
        version: wire::VERSION,
        node: "b".into(),
        resource: "r".into(),
        size: 1 << 30,
        role: Role::Secondary,
        disk: DiskState::Inconsistent,
        peer_out_of_sync: 0,
        fresh: true,
        gen: GenIds::never_synced(),
        discard: false,
        promoted_at: 0,
        nonce: 1,
        full_sync: 0,
        lost: wire::Lost::None,
        protocol: Protocol::C,
        split_brain_policy: twinblock_replicator::protocol::genid::SplitBrainPolicy::Disconnect,
        forced_base: false,
    };
    core.handle_frame(Duration::ZERO, 1, Message::Hello(hello));
    core.handle_frame(Duration::ZERO, 1, Message::Bits { runs: vec![], last: true });
    drain(&mut core, 0);
    core
}

/// Completes every I/O at once; returns the replies seen.
fn drain(core: &mut Core, mut replies: usize) -> usize {
    while let Some(a) = core.poll_action() {
        match a {
            Action::Store { io, .. } | Action::Persist { io, .. } => {
                core.handle_io(Duration::ZERO, io, Ok(None))
            }
            Action::Reply { .. } => replies += 1,
            Action::Vote(_) | Action::Hook(_) => {}
            Action::Send { msg, .. } => {
                black_box(msg);
            }
            Action::Close { .. } => {}
        }
    }
    replies
}

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
    g.bench_function("decode_64x4k", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(&frames[..]);
            let mut n = 0;
            while let Ok(Some(m)) = wire::decode(&mut buf) {
                black_box(&m);
                n += 1;
            }
            n
        })
    });
    g.throughput(Throughput::Elements(64));
    g.bench_function("core_write_ack_64x4k", |b| {
        let mut core = primary_core();
        let mut seq = 0u64;
        let mut req = 0u64;
        b.iter(|| {
            for i in 0..64u64 {
                req += 1;
                core.write(Duration::ZERO, req, (i % 1024) * 4096, data.clone(), false);
            }
            let mut replies = drain(&mut core, 0);
            seq += 64;
            core.handle_frame(Duration::ZERO, 1, Message::Ack { received: seq, done: seq });
            replies = drain(&mut core, replies);
            assert_eq!(replies, 64);
        })
    });
    g.finish();
}

/// Whole-device bitmap work (a full sync's marking, the runs it sends,
/// the clearing as chunks land) on a 16 TiB device's bitmap scale (2^28
/// one-byte blocks; bit-by-bit this was seconds, past `timeout`), and a
/// Primary alone on a 512 GiB device with blocks out of sync writing
/// (it once built a device-sized bitmap at every step): the speed
/// `bitmap::tests` and `core::tests::writes` check only for correctness.
fn scale(c: &mut Criterion) {
    use twinblock_replicator::bitmap::Bitmap;
    let mut g = c.benchmark_group("scale");
    g.sample_size(10);
    let blocks = 1u64 << 28;
    g.bench_function("bitmap_mark_runs_clear_2^28", |b| {
        b.iter(|| {
            let mut map = Bitmap::with_block(blocks, 1);
            map.mark_all();
            black_box(map.runs());
            map.clear_range(0, blocks);
            black_box(map.bytes())
        })
    });
    g.bench_function("core_write_alone_512g", |b| {
        let mut core = primary_core_of(1 << 39);
        let data = Bytes::from(vec![1u8; 4096]);
        let mut req = 0u64;
        b.iter(|| {
            req += 1;
            core.write(Duration::ZERO, req, (req % 64) * 4096, data.clone(), false);
            assert_eq!(drain(&mut core, 0), 1);
        })
    });
    // The saved bitmap of a 1 TiB device (32 MiB, 8192 pages each with its
    // CRC32): read and checked whole at a start, and the largest save
    // (1024 pages, 4 MiB, checksummed) with its fdatasync.
    {
        use twinblock_replicator::al::{BitmapFile, BitmapIdent, Saved};
        use twinblock_replicator::core::PAGE_WORDS;
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = dir.path().join("bench.meta");
        let words = 1usize << 22;
        let ident = BitmapIdent {
            resource: "r0".into(),
            node: "a".into(),
            size: 1 << 40,
            block: 4096,
            words: words as u64,
        };
        let file = BitmapFile::create(&meta, &ident, &vec![0x5a5a; words]).expect("create");
        let id = file.id();
        g.throughput(Throughput::Bytes(words as u64 * 8));
        g.bench_function("bitmap_file_load_1t", |b| {
            b.iter(|| {
                let saved = BitmapFile::load(&meta, &ident, id).expect("load");
                assert!(matches!(&saved, Saved::Checked { bad_pages, .. } if bad_pages.is_empty()));
                black_box(saved)
            })
        });
        let pages: Vec<(u64, Vec<u64>)> =
            (0..1024u64).map(|p| (p * 8, vec![7; PAGE_WORDS])).collect();
        g.throughput(Throughput::Bytes(1024 * PAGE_WORDS as u64 * 8));
        g.bench_function("bitmap_file_save_1024_pages", |b| {
            b.iter(|| file.write_pages(black_box(&pages)).expect("save"))
        });
    }
    // The activity log's append (an extent leaving, another joining: two
    // checksummed lines in one write, with its fdatasync) and a start's
    // reading of a log of 16384 checksummed lines (its longest).
    {
        use twinblock_replicator::al::{AlJournal, AlSaved};
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = dir.path().join("bench.meta");
        let mut j = AlJournal::open(&meta, "a", "r0", 9, Default::default()).expect("open");
        let mut e = 0u64;
        g.throughput(Throughput::Elements(1));
        g.bench_function("al_append_leave_join", |b| {
            b.iter(|| {
                j.apply(&[e], &[e + 1]).expect("append");
                e += 1;
            })
        });
        let mut j = AlJournal::open(&meta, "a", "r0", 9, Default::default()).expect("open");
        let all: Vec<u64> = (0..8192).collect();
        j.apply(&[], &all).expect("append");
        j.apply(&all[..8191], &[]).expect("append");
        g.throughput(Throughput::Elements(16384));
        g.bench_function("al_load_16k_lines", |b| {
            b.iter(|| {
                let saved = AlJournal::load(&meta, "a", "r0", 9).expect("load");
                assert!(matches!(&saved, AlSaved::Held(h) if h.len() == 1));
                black_box(saved)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, codec, scale);
criterion_main!(benches);
