//! The floor of a replicated write: the work the design requires of a
//! replicated write beyond what the standalone export does, each part
//! alone on one core with nothing else around it (no QUIC state, no
//! runtime, no wake-ups). `scripts/bench-floor.sh` adds these to the
//! standalone export's measured cost and prints the best ratio any
//! implementation of the design could reach on this machine.
//!
//! Per write of 4 KiB and of 1 MiB:
//! - `seal` / `open`: AES-128-GCM over the payload cut into jumbo QUIC
//!   packets (8,900 bytes of payload each; the link's cipher suite and
//!   datagram size), both directions of the link (a 4 KiB write is timed
//!   as a packet of its own, though at depth two share one);
//! - `copy`: one copy of the payload into the packets before sealing them
//!   in place (the sender's; the receiver can open in place);
//! - `crc32`: the wire CRC (computed by the Primary, checked by the
//!   Secondary: counted twice by the script);
//! - `udp`: the datagrams through a loopback UDP socket, sent and
//!   received as the link does (segmentation offload, seven datagrams per
//!   send; receive offload): both copies and the per-datagram work;
//! - `pwrite`: the Secondary's buffered write into a file's page cache
//!   (the file written once before, as `bench-latency.sh` prefills).

use std::fs::File;
use std::hint::black_box;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};

/// QUIC payload bytes per jumbo datagram (MTU discovery's bound, less
/// the packet's header and tag).
const PACKET: usize = 8_900;
/// The page-cache file's size: written at offsets that cycle through it.
const FILE: u64 = 32 << 20;

fn sizes() -> [(&'static str, usize); 2] {
    [("4k", 4096), ("1m", 1 << 20)]
}

fn aead(c: &mut Criterion) {
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[7u8; 16]).expect("16-byte key"));
    for (name, len) in sizes() {
        let mut g = c.benchmark_group(format!("floor_{name}"));
        g.throughput(Throughput::Bytes(len as u64));
        let src = vec![0x5au8; len];
        let mut packets: Vec<Vec<u8>> = src.chunks(PACKET).map(|c| c.to_vec()).collect();
        g.bench_function("copy", |b| {
            b.iter(|| {
                for (p, s) in packets.iter_mut().zip(src.chunks(PACKET)) {
                    p.copy_from_slice(black_box(s));
                }
                black_box(&packets);
            })
        });
        let mut n = 0u64;
        g.bench_function("seal", |b| {
            b.iter(|| {
                for p in packets.iter_mut() {
                    n += 1;
                    let mut iv = [0u8; 12];
                    iv[4..].copy_from_slice(&n.to_be_bytes());
                    let tag = key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(iv),
                            Aad::empty(),
                            p,
                        )
                        .expect("seal");
                    black_box(tag.as_ref()[0]);
                }
            })
        });
        // Sealed packets, restored before each iteration outside the
        // timing (a failed open would zero them; these all verify).
        let sealed: Vec<Vec<u8>> = src
            .chunks(PACKET)
            .map(|c| {
                let mut p = c.to_vec();
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([1; 12]),
                        Aad::empty(),
                        &mut p,
                    )
                    .expect("seal");
                p.extend_from_slice(tag.as_ref());
                p
            })
            .collect();
        g.bench_function("open", |b| {
            b.iter_batched_ref(
                || sealed.clone(),
                |work| {
                    for w in work.iter_mut() {
                        let plain = key
                            .open_in_place(Nonce::assume_unique_for_key([1; 12]), Aad::empty(), w)
                            .expect("open");
                        black_box(plain.len());
                    }
                },
                BatchSize::SmallInput,
            )
        });
        g.bench_function("crc32", |b| b.iter(|| black_box(crc32fast::hash(black_box(&src)))));
        g.finish();
    }
}

/// Datagrams per send, as the link's socket cuts quinn's batches
/// (`replicator/src/udp.rs`: what one 64 KiB send can carry).
const GSO_BATCH: usize = 7;

fn set_opt(fd: &impl AsRawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) {
    // SAFETY: setsockopt with a valid descriptor and a pointer to an int.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            opt,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "setsockopt({level}, {opt}): {}", std::io::Error::last_os_error());
}

fn udp(c: &mut Criterion) {
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    tx.connect(rx.local_addr().expect("addr")).expect("connect");
    // What the link does: segmentation offload on the sender (one send
    // of up to seven datagrams), receive offload on the receiver (one
    // recv of what arrived together), and buffers that hold a batch.
    set_opt(&tx, libc::SOL_UDP, libc::UDP_SEGMENT, PACKET as libc::c_int);
    set_opt(&rx, libc::SOL_UDP, libc::UDP_GRO, 1);
    twinblock_replicator::link::set_socket_buffers(&rx, 4 << 20);
    rx.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    for (name, len) in sizes() {
        let mut g = c.benchmark_group(format!("floor_{name}"));
        g.throughput(Throughput::Bytes(len as u64));
        let src = vec![0x5au8; len];
        let mut buf = vec![0u8; 1 << 16];
        g.bench_function("udp", |b| {
            b.iter(|| {
                for batch in src.chunks(PACKET * GSO_BATCH) {
                    tx.send(batch).expect("send");
                    let mut got = 0;
                    while got < batch.len() {
                        got += rx.recv(&mut buf).expect("recv (a datagram lost on loopback?)");
                    }
                    black_box(&buf);
                }
            })
        });
        g.finish();
    }
}

fn pwrite(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("floor.img");
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("file");
    let chunk = vec![0xa5u8; 1 << 20];
    for off in (0..FILE).step_by(chunk.len()) {
        file.write_all_at(&chunk, off).expect("prefill");
    }
    file.sync_all().expect("sync");
    // SAFETY: posix_fadvise on a valid descriptor.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    for (name, len) in sizes() {
        let mut g = c.benchmark_group(format!("floor_{name}"));
        g.throughput(Throughput::Bytes(len as u64));
        let data = vec![0x3cu8; len];
        let slots = FILE / len as u64;
        // A scattered walk for 4 KiB (random writes), in order for 1 MiB.
        let step = if len == 4096 { 7919 } else { 1 };
        let mut i = 0u64;
        g.bench_function("pwrite", |b| {
            b.iter(|| {
                i = (i + step) % slots;
                file.write_all_at(black_box(&data), i * len as u64).expect("pwrite");
            })
        });
        g.finish();
    }
}

criterion_group!(benches, aead, udp, pwrite);
criterion_main!(benches);
