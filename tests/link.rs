//! The peer link's QUIC endpoint (`twinblock_replicator::link::endpoint`)
//! on real sockets with real certificates: a burst of replicated data keeps
//! the jumbo datagrams MTU discovery found, and loses none of them.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

fn certs(dir: &std::path::Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_twinblock"))
        .args(["gen-certs", "--out"])
        .arg(dir)
        .args(["a", "b"])
        .output()
        .expect("twinblock gen-certs");
    assert!(out.status.success(), "gen-certs: {}", String::from_utf8_lossy(&out.stderr));
}

fn endpoint(dir: &std::path::Path, name: &str) -> quinn::Endpoint {
    common::quic::link_endpoint(dir, name, "linktest")
}

/// quinn sends up to ten datagrams of the path MTU per `sendmsg`; at jumbo
/// sizes that is more than one UDP send may carry (64 KiB), and the kernel
/// refuses the whole batch. The link's socket cuts such batches: a 64 MiB
/// burst then crosses with jumbo datagrams and no loss, where uncut
/// batches are lost, and their loss reads as an MTU black hole (1200-byte
/// datagrams for the next 10 s).
#[test]
fn a_burst_keeps_jumbo_datagrams_and_loses_none() {
    // Socket buffers beyond net.core.rmem_max (SO_RCVBUFFORCE) hold the
    // burst; without them a loopback receiver drops under load anyway.
    if !common::root("socket buffers beyond rmem_max") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let a = endpoint(dir.path(), "a");
        let b = endpoint(dir.path(), "b");
        let b_addr = b.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let conn = b.accept().await.unwrap().await.unwrap();
            let (_send, mut recv) = conn.accept_bi().await.unwrap();
            let mut total = 0usize;
            while let Some(chunk) = recv.read_chunk(1 << 20, true).await.unwrap() {
                total += chunk.bytes.len();
            }
            (total, b)
        });
        let conn = a.connect(b_addr, "b").unwrap().await.unwrap();
        // MTU discovery first (probes of its own, a few round trips).
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.stats().path.current_mtu < 8000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mtu = conn.stats().path.current_mtu;
        assert!(mtu >= 8000, "MTU discovery found only {mtu} bytes on loopback");
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        let block = vec![0x5a; 1 << 20];
        for _ in 0..64 {
            send.write_all(&block).await.unwrap();
        }
        send.finish().unwrap();
        let (total, _b) = accept.await.unwrap();
        assert_eq!(total, 64 << 20);
        let path = conn.stats().path;
        assert_eq!(path.black_holes_detected, 0, "{path:?}");
        assert!(path.current_mtu >= mtu, "MTU fell from {mtu} to {}", path.current_mtu);
        assert_eq!(path.lost_packets, 0, "{path:?}");
    });
}
