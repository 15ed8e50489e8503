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

/// The liar's side of a handshake b accepts: b's hello read, then a hello
/// of a's that mirrors b's data (Secondary, same generations: in sync) and
/// an empty bitmap. Returns b's hello.
async fn handshake_as_a(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
) -> twinblock_replicator::protocol::wire::Hello {
    use twinblock_replicator::protocol::wire::{self, Message, Role};
    // b sees the stream once bytes arrive on it, and only then sends its
    // hello: the hello's length goes first (it does not depend on what b
    // says, only on the names).
    let mut mine = wire::Hello {
        version: wire::VERSION,
        node: "a".into(),
        resource: "r0".into(),
        size: 0,
        role: Role::Secondary,
        disk: wire::DiskState::UpToDate,
        peer_out_of_sync: 0,
        fresh: false,
        gen: twinblock_replicator::protocol::genid::GenIds::never_synced(),
        discard: false,
        promoted_at: 0,
        nonce: 7,
        full_sync: 0,
        lost: wire::Lost::None,
        protocol: twinblock_replicator::config::Protocol::C,
        split_brain_policy: twinblock_replicator::protocol::genid::SplitBrainPolicy::Disconnect,
        forced_base: false,
    };
    let length = Message::Hello(mine.clone()).to_bytes()[..4].to_vec();
    send.write_all(&length).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let (mut hello, mut bits_done) = (None, false);
    while hello.is_none() || !bits_done {
        let mut chunk = [0u8; 65536];
        let n = recv.read(&mut chunk).await.unwrap().expect("b's handshake");
        buf.extend_from_slice(&chunk[..n]);
        while let Some(m) = wire::decode(&mut buf).unwrap() {
            match m {
                Message::Hello(h) => hello = Some(h),
                Message::Bits { last: true, .. } => bits_done = true,
                _ => {}
            }
        }
    }
    let theirs: wire::Hello = hello.unwrap();
    (mine.size, mine.fresh, mine.gen) = (theirs.size, theirs.fresh, theirs.gen);
    let frame = Message::Hello(mine).to_bytes();
    assert_eq!(frame[..4], length[..], "the hello's length changed");
    send.write_all(&frame[4..]).await.unwrap();
    send.write_all(&Message::Bits { runs: Vec::new(), last: true }.to_bytes()).await.unwrap();
    theirs
}

/// A peer (a's certificate) that sends a burst of two million pings and
/// reads what comes back: every one is answered, within seconds, and b
/// keeps the session. (Before, each pong went to QUIC as a segment of its
/// own, and quinn walks the segments of its send buffer for every piece
/// of every packet: b's link thread spent seconds per packet, took no
/// frame for its `timeout`, and gave the peer up, "no sign of life".)
#[test]
fn a_burst_of_small_frames_is_answered_and_keeps_the_session() {
    use twinblock_replicator::protocol::wire::{self, Message};
    let mut p = Pair::prepare("C", "64M");
    p.up(1);
    p.ok(&["primary", "--force"], 1);
    let b_addr: std::net::SocketAddr = p.b_address().parse().unwrap();
    const PINGS: u64 = 2_000_000;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (pongs, took) = rt.block_on(async {
        let liar = common::quic::link_endpoint(&p.dir.path().join("certs"), "a", "r0");
        let conn = liar.connect(b_addr, "b").unwrap().await.expect("mutual TLS as a");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        handshake_as_a(&mut send, &mut recv).await;
        let t = std::time::Instant::now();
        let writer = tokio::spawn(async move {
            let mut batch = bytes::BytesMut::new();
            for id in 0..PINGS {
                batch.extend_from_slice(&Message::Ping { id }.to_bytes());
                if batch.len() >= 1 << 20 || id + 1 == PINGS {
                    send.write_all(&batch.split()).await.expect("b takes the pings");
                }
            }
            send
        });
        let mut buf = bytes::BytesMut::new();
        let mut pongs = 0u64;
        let read = async {
            while pongs < PINGS {
                let mut chunk = vec![0u8; 1 << 20];
                let Some(n) = recv.read(&mut chunk).await.expect("b's pongs") else { break };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(m) = wire::decode(&mut buf).unwrap() {
                    if matches!(m, Message::Pong { .. }) {
                        pongs += 1;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(30), read).await;
        let took = t.elapsed();
        let _send = writer.await;
        (pongs, took)
    });
    eprintln!("{pongs} of {PINGS} pings answered in {took:?}");
    assert_eq!(pongs, PINGS, "b answered {pongs} of {PINGS} pings in {took:?}");
    assert!(took < Duration::from_secs(20), "b took {took:?} to answer {PINGS} pings");
    let b = p.status(1);
    assert_eq!(b["connection"], "Connected", "b gave the peer up: {b}");
    p.down(1);
}
/// A peer with a's certificate that finishes the handshake, then sends
/// pings and never reads what b sends back: b's answers must not pile up
/// in its memory. b holds 8 MiB of them at most, then takes no more of
/// the liar's frames (QUIC's flow control holds the liar), says why in
/// its log, gives the peer up after its `timeout`, and keeps serving.
/// (Before, each pong went to an unbounded queue: 64 MiB of pings grew b
/// by more than 250 MiB, and more pings by more.)
#[test]
fn a_peer_that_reads_nothing_cannot_grow_the_nodes_memory() {
    use std::sync::atomic::Ordering;
    use twinblock_replicator::protocol::wire::Message;
    let mut p = Pair::prepare("C", "64M");
    p.up(1);
    p.ok(&["primary", "--force"], 1);
    let b_addr: std::net::SocketAddr = p.b_address().parse().unwrap();
    let pid = p.nodes[1].child.as_ref().unwrap().id();
    let rss = || common::nbd::proc_kib(pid, "VmRSS") * 1024;
    let before = rss();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (peak, sent) = rt.block_on(async {
        let liar = common::quic::link_endpoint(&p.dir.path().join("certs"), "a", "r0");
        let conn = liar.connect(b_addr, "b").unwrap().await.expect("mutual TLS as a");
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        handshake_as_a(&mut send, &mut recv).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let b = p.status(1);
        assert_eq!(b["connection"], "Connected", "b took the liar's handshake: {b}");
        // From here on nothing is read: up to 64 MiB of pings (5 million),
        // from a task of their own (a write is never cut short).
        let mut batch = bytes::BytesMut::new();
        for id in 0..65536u64 {
            batch.extend_from_slice(&Message::Ping { id }.to_bytes());
        }
        let batch = batch.freeze();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = sent.clone();
        let writer = tokio::spawn(async move {
            while counted.load(Ordering::Relaxed) < 64 << 20 {
                if let Err(e) = send.write_all(&batch).await {
                    return format!("{e} ({:?})", conn.close_reason());
                }
                counted.fetch_add(batch.len() as u64, Ordering::Relaxed);
            }
            "all sent".to_string()
        });
        let mut peak = 0u64;
        let t = std::time::Instant::now();
        while !writer.is_finished() && t.elapsed() < Duration::from_secs(30) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            peak = peak.max(rss());
        }
        let end = if writer.is_finished() { writer.await.unwrap() } else { "held".into() };
        eprintln!("the liar's writer: {end} after {:?}", t.elapsed());
        let sent = sent.load(Ordering::Relaxed);
        drop(recv);
        (peak.max(rss()), sent)
    });
    let grew = peak.saturating_sub(before);
    eprintln!("sent {} MiB of pings; b's memory grew by {} MiB", sent >> 20, grew >> 20);
    // The answers' 8 MiB, QUIC's windows (16 MiB each way) and the
    // allocator's slack (65 MiB measured).
    assert!(
        grew < 128 << 20,
        "b's memory grew by {} MiB for a peer that reads nothing ({} MiB of pings taken)",
        grew >> 20,
        sent >> 20
    );
    assert!(sent < 64 << 20, "b took all 64 MiB of pings from a peer that reads nothing");

    // b gives the peer up, says why, and keeps serving.
    p.wait_one(1, "b to give the silent peer up", |s| s["connection"] != "Connected");
    let log = p.log(1);
    assert!(log.contains("the peer reads nothing of what this node answers"), "b's log:\n{log}");
    p.qemu_io(1, "write -P 0x11 0 64k");
    p.down(1);
}

/// Two nodes whose resource files name different `split-brain-policy`s
/// (a `discard-younger-primary`, b `discard-least-changes`). Each decides
/// a split brain by its own, so they may disagree: after a split brain in
/// which a was promoted last and b changed less, each gave up its own
/// data: both became SyncTarget of the other, both disks Inconsistent, a
/// sync that never moved and no node that could be promoted (and the
/// other way round, both SyncSource, the session failed as a "split
/// brain"). As DRBD refuses differing `after-sb-*` settings, the
/// handshake refuses the pair at once, each saying both values; a keeps
/// serving alone, and once b runs a's policy the pair connects and b
/// catches up.
#[test]
fn nodes_configured_with_different_split_brain_policies_refuse_each_other() {
    if !common::have("qemu-io") {
        return;
    }
    let mut p = Pair::prepare("C", "16M");
    p.configure("split-brain-policy = \"discard-younger-primary\"");
    let same = p.config.clone();
    let edited = p.dir.path().join("r0-b.toml");
    let text = std::fs::read_to_string(&same).unwrap();
    let b_text = text.replacen("discard-younger-primary", "discard-least-changes", 1);
    std::fs::write(&edited, b_text).unwrap();
    p.up(0);
    p.config = edited;
    p.up(1);
    p.config = same;
    p.ok(&["primary", "--force"], 0);
    refused_and_a_serves(&p, "the other's policy", |why| {
        why.contains("split-brain-policy")
            && why.contains("discard-younger-primary")
            && why.contains("discard-least-changes")
    });
    p.down(1);
    p.up(1);
    p.wait_synced("b synced once both run one policy", Duration::from_secs(30));
    p.down(0);
    p.down(1);
    assert!(
        std::fs::read(&p.nodes[0].disk).unwrap() == std::fs::read(&p.nodes[1].disk).unwrap(),
        "the disks differ after the sync"
    );
}

/// A pair whose node b runs a resource file that `edit` changed from a's
/// (both started, a made Primary with `--force`); nothing waited for.
fn pair_with_b_edited(protocol: &str, size: &str, edit: impl Fn(&str) -> String) -> Pair {
    let mut p = Pair::prepare(protocol, size);
    let same = p.config.clone();
    let edited = p.dir.path().join("r0-b.toml");
    let mut text = std::fs::read_to_string(&same).unwrap();
    if protocol == "adaptive" {
        text = format!("{text}\n[adaptive]\nlatency_budget = \"3ms\"\n");
        std::fs::write(&same, &text).unwrap();
    }
    let b_text = edit(&text);
    assert_ne!(b_text, text, "the edit changed nothing");
    std::fs::write(&edited, b_text).unwrap();
    p.up(0);
    p.config = edited;
    p.up(1);
    p.config = same;
    p.ok(&["primary", "--force"], 0);
    p
}

/// Two nodes whose resource files name different resources (`name`: a
/// `r0`, b `r1`): the link's TLS refuses the pair (the application
/// protocol names the resource), nothing moves, a keeps serving. Each
/// says why in `link_refusal`, naming the key and its own name; before,
/// both said only "the cryptographic handshake failed: error 120: peer
/// doesn't support any known protocol".
#[test]
fn nodes_configured_with_different_resource_names_say_so() {
    if !common::have("qemu-io") {
        return;
    }
    let p = pair_with_b_edited("C", "16M", |t| t.replacen("name = \"r0\"", "name = \"r1\"", 1));
    let says = |s: &serde_json::Value, mine: &str| {
        let why = s["link_refusal"].as_str().unwrap_or_default();
        s["connection"] != "Connected"
            && why.contains(&format!("resource \"{mine}\""))
            && why.contains("`name`")
    };
    p.wait("both nodes to say the names differ", Duration::from_secs(20), |a, b| {
        says(a, "r0") && says(b, "r1")
    });
    let out = p.qemu_io(0, "write -P 0x5a 1M 1M");
    assert!(out.contains("wrote 1048576/1048576"), "{out}");
    let (a, b) = (p.status(0), p.status(1));
    eprintln!("a: {}\nb: {}", a["link_refusal"], b["link_refusal"]);
    assert_eq!(a["role"], "Primary", "{a}");
    assert_eq!(b["disk"], "Inconsistent", "{b}");
}

/// Two nodes whose resource files give different `size`s (a 16M, b 32M,
/// b's disk new): the handshake refuses the pair, each status naming the
/// key and both sizes (before: "the peer's size is 33554432 bytes, ours
/// 16777216", the key unnamed and no word of what to do), a keeps
/// serving, b's disk is left as it was (nothing synced onto it).
#[test]
fn nodes_configured_with_different_sizes_refuse_each_other_naming_both() {
    if !common::have("qemu-io") {
        return;
    }
    let p = pair_with_b_edited("C", "16M", |t| t.replacen("size = \"16M\"", "size = \"32M\"", 1));
    refused_and_a_serves(&p, "the other's size", |why| {
        why.contains("`size`") && why.contains("16777216") && why.contains("33554432")
    });
    let disk_b = std::fs::read(&p.nodes[1].disk).unwrap();
    assert_eq!(disk_b.len(), 32 << 20);
    assert!(disk_b.iter().all(|&x| x == 0), "b's disk was written");
}

/// Both nodes refuse each other at the handshake, each `last_error`
/// saying so as `says` checks (and as a refused handshake, no link
/// fault), and stay so while a, Primary, serves a write; b, never linked,
/// took nothing (Inconsistent).
fn refused_and_a_serves(p: &Pair, what: &str, says: impl Fn(&str) -> bool) {
    let refused = |s: &serde_json::Value| {
        let why = s["last_error"].as_str().unwrap_or_default();
        s["connection"] != "Connected" && !why.contains("link fault") && says(why)
    };
    p.wait(&format!("both nodes to refuse {what}"), Duration::from_secs(20), |a, b| {
        refused(a) && refused(b)
    });
    let out = p.qemu_io(0, "write -P 0x5a 1M 1M");
    assert!(out.contains("wrote 1048576/1048576"), "{out}");
    std::thread::sleep(Duration::from_secs(1));
    let (a, b) = (p.status(0), p.status(1));
    assert!(refused(&a) && refused(&b), "linked with {what}\na: {a}\nb: {b}");
    assert_eq!(a["role"], "Primary", "{a}");
    assert_eq!(b["disk"], "Inconsistent", "b took data from a without a link: {b}");
}

/// A node told a wrong address for its peer (`nodes.b.connect` in a's
/// file names a port nothing listens on): it dials there for ever, and
/// `status` shows where, so the operator sees the mistake. Before, it
/// showed only `Connecting`, with no address anywhere (as DRBD's status).
#[test]
fn a_node_dialing_a_wrong_address_shows_it_in_status() {
    let mut p = Pair::prepare("C", "16M");
    let same = p.config.clone();
    let text = std::fs::read_to_string(&same).unwrap();
    let wrong = "127.0.0.1:9";
    let edited = text.replacen("[nodes.b]\n", &format!("[nodes.b]\nconnect = \"{wrong}\"\n"), 1);
    assert_ne!(edited, text, "no [nodes.b] table to edit");
    let a_config = p.dir.path().join("r0-a.toml");
    std::fs::write(&a_config, edited).unwrap();
    p.config = a_config;
    p.up(0);
    let a = p.status(0);
    let out = p.cli("status", &[], 0);
    p.config = same;
    p.up(1);
    let b = p.status(1);
    assert_eq!(a["peer"]["address"], wrong, "{a}");
    let human = String::from_utf8_lossy(&out.stdout);
    assert!(human.contains(&format!("peer b at {wrong}:")), "{human}");
    // b dials a where a's file says a is.
    let a_address = text
        .split("[nodes.a]")
        .nth(1)
        .and_then(|t| t.lines().find(|l| l.starts_with("address")))
        .and_then(|l| l.split('"').nth(1))
        .expect("a's address")
        .to_string();
    assert_eq!(b["peer"]["address"], a_address.as_str(), "{b}");
    std::thread::sleep(Duration::from_secs(2));
    let a = p.status(0);
    assert_eq!(a["connection"], "Connecting", "{a}");
}
