//! A peer that lies on the replication link: it holds the configured
//! peer's certificate (so it passes mutual TLS and the name check) but
//! sends a frame no node sends. The node ends that session at once with
//! the fault as the reason the peer reads, keeps serving, says why in its
//! status, and takes the honest peer's link afterwards.

mod common;

use std::time::Duration;

use common::pair::Pair;

#[test]
fn a_peer_that_sends_an_undecodable_frame_is_closed_with_the_reason() {
    let mut p = Pair::prepare("C", "64M");
    p.up(1);
    let b_addr: std::net::SocketAddr = p.b_address().parse().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (reason, waited) = rt.block_on(async {
        let liar = common::quic::link_endpoint(&p.dir.path().join("certs"), "a", "r0");
        let conn = liar.connect(b_addr, "b").unwrap().await.expect("mutual TLS as a");
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        // A frame of 5 bytes whose type no version of the protocol has.
        send.write_all(&[0, 0, 0, 5, 0xee, 1, 2, 3, 4]).await.unwrap();
        let t = std::time::Instant::now();
        let closed = tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("b did not close the lying session within 10 s");
        (closed, t.elapsed())
    });
    eprintln!("b closed the lying session after {waited:?}: {reason}");
    let quinn::ConnectionError::ApplicationClosed(close) = &reason else {
        panic!("b did not close the connection itself: {reason}");
    };
    let words = String::from_utf8_lossy(&close.reason);
    assert!(
        words.contains("link fault") && words.contains("frame type"),
        "b's reason for the peer: {words:?}"
    );

    // b is still up, and says why the session ended.
    let b = p.status(1);
    assert_eq!(b["connection"], "Connecting", "{b}");
    let last = b["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("link fault"), "b's last_error: {b}");
    assert!(
        p.log(1).contains("replication session ended: link fault"),
        "b's log does not say why the session ended:\n{}",
        p.log(1)
    );

    // The honest a links up and replicates.
    p.up(0);
    p.ok(&["primary", "--force"], 0);
    p.wait_synced("the honest pair in sync", Duration::from_secs(30));
    p.down(0);
    p.down(1);
}

/// Two nodes whose resource files name different protocols (a file edited
/// on one node only): each refuses the other at the handshake and says
/// why in its status, the Primary keeps serving alone, and once b runs a's
/// protocol the pair connects and b catches up with what a wrote meanwhile.
#[test]
fn nodes_configured_with_different_protocols_refuse_each_other_until_they_agree() {
    if !common::have("qemu-io") {
        return;
    }
    let mut p = Pair::start("C", "64M");
    p.wait_synced("the pair in sync", Duration::from_secs(30));
    p.down(1);
    let same = p.config.clone();
    let edited = p.dir.path().join("r0-b.toml");
    let text = std::fs::read_to_string(&same).unwrap();
    std::fs::write(&edited, text.replacen("protocol = \"C\"", "protocol = \"B\"", 1)).unwrap();
    p.config = edited;
    p.up(1);
    p.config = same;
    let refused = |s: &serde_json::Value| {
        let why = s["last_error"].as_str().unwrap_or_default();
        s["connection"] != "Connected"
            && why.contains("protocol C")
            && why.contains("protocol B")
            && why.contains("same protocol")
    };
    p.wait("both nodes to refuse the other's protocol", Duration::from_secs(20), |a, b| {
        refused(a) && refused(b)
    });
    p.qemu_io(0, "write -P 0x5a 1M 1M");
    std::thread::sleep(Duration::from_secs(1));
    let (a, b) = (p.status(0), p.status(1));
    assert!(refused(&a) && refused(&b), "connected with two protocols\na: {a}\nb: {b}");
    assert!(a["out_of_sync_bytes"].as_u64().unwrap_or(0) >= 1 << 20, "{a}");
    p.down(1);
    p.up(1);
    p.wait_synced("b caught up once both run protocol C", Duration::from_secs(30));
    p.down(0);
    p.down(1);
    assert!(
        std::fs::read(&p.nodes[0].disk).unwrap() == std::fs::read(&p.nodes[1].disk).unwrap(),
        "the disks differ after the catch-up"
    );
}
