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
