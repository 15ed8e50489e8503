//! Two real `twinblock up` processes on loopback, replicating over QUIC with
//! mutual TLS, driven by real NBD clients.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fusedisk::FuseDisk;
use common::nbd::Client;
use common::pair::{tail, Pair};
use common::*;

fn read_file(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

#[test]
fn nbdcopy_to_the_primary_lands_byte_identical_on_the_secondary() {
    if !have("nbdcopy") {
        return;
    }
    let p = Pair::start("C", "128M");
    let src = p.dir.path().join("src.bin");
    let data = pattern(64 << 20, 3);
    std::fs::write(&src, &data).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(p.uri(0)));
    p.wait_drained();
    let b = read_file(&p.nodes[1].disk);
    assert!(b[..64 << 20] == data[..], "secondary differs from what was written");
    assert!(read_file(&p.nodes[0].disk) == b, "the two disks differ");
    let a = p.status(0);
    assert_eq!(a["out_of_sync_bytes"], 0);
    assert_eq!(a["peer"]["disk"], "UpToDate");
    assert!(a["counters"]["replicated_bytes"].as_u64().unwrap() >= 64 << 20);
    assert!(a["rtt_us"].as_u64().is_some());
}

#[test]
fn flush_fua_trim_and_zeroes_replicate() {
    if !have("qemu-io") {
        return;
    }
    let p = Pair::start("B", "64M");
    let out = run_qemu_io(
        &p.uri(0),
        &[
            "write -P 0x11 0 1M",
            "write -f -P 0x22 1M 64k",
            "write -P 0x33 2M 1M",
            "discard 2M 256k",
            "write -z 2304k 128k",
            "flush",
            "aio_write -P 0x44 8M 64k",
            "aio_write -P 0x45 8M 4k",
            "aio_flush",
        ],
    );
    assert!(!out.contains("fail"), "{out}");
    p.wait_drained();
    let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
    assert!(a == b, "disks differ after flush/FUA/trim/zeroes");
    assert!(b[(2 << 20)..(2 << 20) + (384 << 10)].iter().all(|&x| x == 0));
    assert!(b[(2 << 20) + (384 << 10)..3 << 20].iter().all(|&x| x == 0x33));
}

/// A pipelined writer against the primary: each write fills block `cookie`
/// with a pattern of its own; returns the cookies acknowledged before the
/// primary was killed.
fn write_until_killed(p: &mut Pair, qd: usize, kill_after: usize) -> BTreeSet<u64> {
    let mut c = Client::go_addr(p.nodes[0].nbd, false);
    let mut rd = c.s.try_clone().unwrap();
    rd.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let reader = {
        let (acked, in_flight, dead) = (acked.clone(), in_flight.clone(), dead.clone());
        std::thread::spawn(move || {
            let mut head = [0u8; 16];
            while rd.read_exact(&mut head).is_ok() {
                let errno = u32::from_be_bytes(head[4..8].try_into().unwrap());
                let cookie = u64::from_be_bytes(head[8..].try_into().unwrap());
                assert_eq!(errno, 0, "write {cookie} failed");
                acked.lock().unwrap().insert(cookie);
                in_flight.fetch_sub(1, Ordering::SeqCst);
            }
            dead.store(true, Ordering::SeqCst);
        })
    };
    let blocks = 16384u64;
    let mut cookie = 0u64;
    let mut killed = false;
    while cookie < blocks && !dead.load(Ordering::SeqCst) {
        if in_flight.load(Ordering::SeqCst) >= qd {
            std::thread::yield_now();
        } else {
            in_flight.fetch_add(1, Ordering::SeqCst);
            c.request(0, 1, cookie, cookie * 4096, 4096, &cookie_block(cookie));
            cookie += 1;
        }
        if !killed && acked.lock().unwrap().len() >= kill_after {
            p.kill(0);
            killed = true;
        }
    }
    assert!(killed, "the writer finished before the primary was killed");
    reader.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= kill_after);
    acked
}

/// A client that sends many more writes at once than its connection's
/// in-flight budget (128 units): the server issues a read's writes one
/// after the other (a 64 KiB read holds 230 of these 256-byte writes) and
/// the node holds their frames for the link. Were every unit of the
/// budget in held frames while the thread waits for units, the replies
/// that would free them would never come. Two things prevent it: the node
/// holds at most 16 frames, and the thread hands held frames over before
/// it waits (with neither, this test hung: 230 of 4,000 answered when its
/// read timeout ended). Every write is answered OK, and the Secondary
/// holds them all.
#[test]
fn a_burst_past_the_in_flight_budget_is_replicated_and_answered() {
    const LEN: usize = 256;
    // Pings a minute apart: a frame the link's thread sends would hand
    // over what the connection's thread holds, and hide a hang.
    let p = Pair::prepare("C", "64M");
    let text = std::fs::read_to_string(&p.config).unwrap();
    let text = text.replacen(
        "timeout = \"3s\"\nping-interval = \"250ms\"",
        "timeout = \"300s\"\nping-interval = \"60s\"",
        1,
    );
    assert!(text.contains("ping-interval = \"60s\""), "{text}");
    std::fs::write(&p.config, text).unwrap();
    let p = p.bring_up();
    let mut c = Client::go_addr(p.nodes[0].nbd, false);
    let mut rd = c.s.try_clone().unwrap();
    rd.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let writes = 4000u64;
    let reader = std::thread::spawn(move || {
        let mut answered = BTreeSet::new();
        let mut head = [0u8; 16];
        while (answered.len() as u64) < writes {
            if let Err(e) = rd.read_exact(&mut head) {
                return Err(format!("{} of {writes} answered, then: {e}", answered.len()));
            }
            let errno = u32::from_be_bytes(head[4..8].try_into().unwrap());
            let cookie = u64::from_be_bytes(head[8..].try_into().unwrap());
            if errno != 0 {
                return Err(format!("write {cookie} failed: errno {errno}"));
            }
            answered.insert(cookie);
        }
        Ok(answered)
    });
    // All of them in one go: the server reads them 64 KiB at a time.
    let mut burst = Vec::new();
    for cookie in 0..writes {
        let data = &cookie_block(cookie)[..LEN];
        common::nbd::request_bytes(&mut burst, 0, 1, cookie, cookie * 4096, LEN as u32, data);
    }
    c.send(&burst);
    let answered = reader.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(answered.len() as u64, writes);
    p.wait_drained();
    let disk = read_file(&p.nodes[1].disk);
    let missing: Vec<u64> = (0..writes)
        .filter(|&c| disk[(c * 4096) as usize..][..LEN] != cookie_block(c)[..LEN])
        .collect();
    assert!(missing.is_empty(), "{} answered writes missing on the Secondary", missing.len());
}

fn acked_writes_survive_sigkill(protocol: &str) {
    let mut p = Pair::start(protocol, "64M");
    let acked = write_until_killed(&mut p, 16, 400);
    // The secondary notices, then holds everything it had received.
    p.wait_unlinked(1);
    let disk = read_file(&p.nodes[1].disk);
    let missing = cookie_blocks_missing(&disk, &acked);
    assert!(
        missing.is_empty(),
        "{} acknowledged writes missing on the secondary: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    eprintln!("protocol {protocol}: {} acknowledged writes all on the secondary", acked.len());
}

#[test]
fn acked_writes_survive_sigkill_of_the_primary_in_c() {
    acked_writes_survive_sigkill("C");
}

#[test]
fn acked_writes_survive_sigkill_of_the_primary_in_b() {
    acked_writes_survive_sigkill("B");
}

#[test]
fn protocol_a_leaves_a_prefix_on_the_secondary() {
    let mut p = Pair::start("A", "64M");
    // One write at a time: the submission order is the sequence order.
    let acked = write_until_killed(&mut p, 1, 300);
    p.wait_unlinked(1);
    let disk = read_file(&p.nodes[1].disk);
    let present: Vec<bool> = (0..16384u64)
        .map(|c| disk[(c * 4096) as usize..(c * 4096 + 4096) as usize] == cookie_block(c)[..])
        .collect();
    let k = present.iter().take_while(|&&x| x).count();
    assert!(
        present[k..].iter().all(|&x| !x),
        "not a prefix: first gap at {k}, later writes present"
    );
    let zero = vec![0u8; 4096];
    assert!((k as u64..16384)
        .all(|c| disk[(c * 4096) as usize..(c * 4096 + 4096) as usize] == zero[..]));
    eprintln!(
        "protocol A: secondary holds the first {k} writes; {} were acknowledged",
        acked.len()
    );
}

/// An Inconsistent SyncTarget serves no reads (EIO); once UpToDate it does.
#[test]
fn a_sync_target_does_not_serve_reads_until_it_is_up_to_date() {
    if !have("fio") {
        return;
    }
    let mut p = Pair::start("C", "512M");
    assert!(p.down(1).success());
    p.wait_unlinked(0);
    run_ok(Command::new("fio").args([
        "--name=w",
        "--ioengine=nbd",
        &format!("--uri={}", p.uri(0)),
        "--rw=write",
        "--bs=1M",
        "--iodepth=8",
        "--size=384M",
        "--output=/dev/null",
    ]));
    p.up(1);
    p.wait("b to be SyncTarget", Duration::from_secs(20), |_, b| b["connection"] == "SyncTarget");
    let mut c = Client::go_addr(p.nodes[1].nbd, false);
    c.request(0, 0, 9, 0, 4096, &[]); // READ
    let (errno, cookie) = c.simple_reply();
    assert_eq!(cookie, 9);
    assert_eq!(errno, 5, "an Inconsistent SyncTarget answered a read with data");
    p.wait_synced("the resync", Duration::from_secs(120));
    let mut c = Client::go_addr(p.nodes[1].nbd, false);
    c.request(0, 0, 10, 0, 4096, &[]);
    assert_eq!(c.simple_reply(), (0, 10), "an UpToDate Secondary refused a read");
}

/// A node whose data may not be read says so to a copy too: BLOCK_STATUS
/// fails as READ does. A new node alone is Inconsistent and its disk all
/// holes; block status described them as "reads as zeroes", so `nbdcopy`
/// (and `qemu-img convert`) skipped every read and wrote a copy of
/// zeroes, exiting 0 (found in review). Once in sync the copy is the data.
#[test]
fn a_copy_of_data_that_may_not_be_read_fails() {
    if !(have("nbdcopy") && have("nbdinfo")) {
        return;
    }
    let mut p = Pair::prepare("C", "16M");
    p.up(0);
    assert_eq!(p.status(0)["disk"], "Inconsistent");
    let copy = p.dir.path().join("copy.img");
    let out = Command::new("nbdcopy").arg(p.uri(0)).arg(&copy).output().unwrap();
    assert!(
        !out.status.success(),
        "nbdcopy of an Inconsistent node's export succeeded: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("nbdinfo").arg("--map").arg(p.uri(0)).output().unwrap();
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    p.up(1);
    p.ok(&["primary", "--force"], 0);
    p.wait_connected();
    p.wait_synced("the first sync", Duration::from_secs(60));
    p.qemu_io(0, "write -P 0x5a 1M 64k");
    p.wait_drained();
    run_ok(Command::new("nbdcopy").arg(p.uri(1)).arg(&copy));
    assert_eq!(read_file(&copy), read_file(&p.nodes[1].disk), "the copy is b's data");
    assert!(read_file(&copy)[1 << 20..(1 << 20) + 65536].iter().all(|&x| x == 0x5a));
}

/// `primary` on both nodes of a connected pair at the same moment makes
/// exactly one of them Primary; the other's `primary` fails and says why,
/// and the link stays up. Before, both became Primary and accepted writes
/// (their State frames crossed; found in review).
#[test]
fn primary_on_both_nodes_at_once_makes_one_primary() {
    let p = Pair::start("C", "16M");
    for round in 0..5 {
        p.ok(&["secondary"], 0);
        p.ok(&["secondary"], 1);
        p.wait("both Secondary", Duration::from_secs(20), |a, b| {
            a["role"] == "Secondary" && b["role"] == "Secondary" && a["peer"]["role"] == "Secondary"
        });
        let spawn = |i: usize| {
            Command::new(common::BIN)
                .args(["primary", "--config"])
                .arg(&p.config)
                .args(["--node", &p.nodes[i].name])
                .output()
        };
        let (ra, rb) = std::thread::scope(|s| {
            let a = s.spawn(|| spawn(0).unwrap());
            let b = s.spawn(|| spawn(1).unwrap());
            (a.join().unwrap(), b.join().unwrap())
        });
        let ok = [ra.status.success(), rb.status.success()];
        assert_eq!(
            ok.iter().filter(|x| **x).count(),
            1,
            "round {round}: both or neither: {ra:?} {rb:?}"
        );
        let (won, lost) = if ok[0] { (0, &rb) } else { (1, &ra) };
        assert!(String::from_utf8_lossy(&lost.stderr).contains("Primary"), "{lost:?}");
        let (a, b) = (p.status(0), p.status(1));
        let roles = [a["role"].clone(), b["role"].clone()];
        assert_eq!(roles.iter().filter(|r| **r == "Primary").count(), 1, "{roles:?}");
        assert_eq!(roles[won], "Primary");
        p.wait_connected();
        // The Primary's writes reach the other.
        p.qemu_io(won, &format!("write -P 0x{:x} 0 64k", 0x40 + round));
        p.wait_drained();
        let other = read_file(&p.nodes[1 - won].disk);
        assert!(other[..65536].iter().all(|&x| x == 0x40 + round as u8), "round {round}");
        let refused = p.cli("status", &[], 1 - won);
        assert!(refused.status.success());
    }
}

#[test]
fn secondary_refuses_nbd_writes() {
    let p = Pair::start("C", "16M");
    if have("nbdinfo") {
        let out = run_ok(Command::new("nbdinfo").arg("--json").arg(p.uri(1)));
        assert!(out.contains("\"is_read_only\": true"), "{out}");
    }
    let mut c = Client::go_addr(p.nodes[1].nbd, false);
    c.request(0, 1, 7, 0, 4096, &[0xee; 4096]);
    assert_eq!(c.simple_reply(), (1, 7), "EPERM");
    assert!(read_file(&p.nodes[1].disk)[..4096].iter().all(|&x| x == 0));
    // Promotion while the peer is Primary is refused.
    let out = p.cli("primary", &[], 1);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Primary"));
}

#[test]
fn a_lost_peer_never_hangs_the_primary() {
    if !have("qemu-io") {
        return;
    }
    let mut p = Pair::start("C", "16M");
    // (b adopted a's data as both disks were new; killed before its record
    // says so, it comes back as created and takes a full sync: CI once.)
    p.wait_saved(1, "UpToDate");
    p.kill(1);
    let t0 = Instant::now();
    p.qemu_io(0, "write -P 0x5 0 64k");
    // Answered after at most the timeout (3 s here), not never.
    assert!(t0.elapsed() < Duration::from_secs(15), "write took {:?}", t0.elapsed());
    let a = p.status(0);
    assert_ne!(a["connection"], "Connected");
    assert_eq!(a["out_of_sync_bytes"], 65536, "{a}");
    // More writes while alone are tracked too, and answered at once.
    let t1 = Instant::now();
    p.qemu_io(0, "write -P 0x6 1M 4k");
    assert!(t1.elapsed() < Duration::from_secs(2));
    assert_eq!(p.status(0)["out_of_sync_bytes"], 65536 + 4096);
    // The peer comes back: exactly the blocks written apart are resynced.
    p.up(1);
    p.wait_connected();
    p.wait("the bitmap resync", Duration::from_secs(20), |a, b| {
        a["out_of_sync_bytes"] == 0
            && a["sync"].is_null()
            && b["disk"] == "UpToDate"
            && a["in_flight"] == 0
    });
    assert_eq!(p.status(0)["counters"]["resync_bytes"], 65536 + 4096);
    assert!(read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk));
}

/// A peer of another CA, with another name, or of another resource is
/// refused, each saying why. A certificate of another CA names `tls.ca`
/// and its file in the log and the status, on the node that refused it
/// (as the dialer, the listener's certificate; as the listener, the
/// dialer's) and on the node refused (README walk-through: both said only
/// rustls's "invalid peer certificate: BadSignature", kept at the end).
#[test]
fn a_peer_from_another_ca_or_with_another_name_is_refused() {
    let mut p = Pair::prepare("C", "16M");
    let dir = p.dir.path().to_owned();
    // Another CA entirely, and a certificate of the right CA for another name.
    run_ok(Command::new(BIN).args(["gen-certs", "--out"]).arg(dir.join("rogue")).args(["a", "b"]));
    run_ok(Command::new(BIN).args(["gen-certs", "--out"]).arg(dir.join("certs")).arg("c"));
    let good = std::fs::read_to_string(&p.config).unwrap();
    // The good node's own CA file, as its messages name it.
    let our_ca = format!("not signed by the CA in tls.ca ({})", dir.join("certs/ca.pem").display());
    let rogue_up = |cfg: &str, node: &str, label: &str| {
        let rogue_cfg = dir.join("rogue.toml");
        std::fs::write(&rogue_cfg, cfg).unwrap();
        let log = dir.join(format!("rogue-{}.log", label.replace(' ', "-")));
        let rogue = KillOnDrop(
            Command::new(BIN)
                .args(["up", "--config"])
                .arg(&rogue_cfg)
                .args(["--node", node])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        (rogue, log)
    };
    p.up(0);
    for (label, cert, key, ca, needle) in [
        // a dials: it refuses b's certificate.
        ("foreign CA", "rogue/b.pem", "rogue/b.key", "rogue/ca.pem", "BadSignature"),
        ("wrong name", "certs/c.pem", "certs/c.key", "certs/ca.pem", "not valid for name"),
        // The right CA and name, but a node of another resource.
        (
            "another resource",
            "certs/b.pem",
            "certs/b.key",
            "certs/ca.pem",
            "support any known protocol",
        ),
    ] {
        let mut bad = good
            .replace("cert = \"certs/b.pem\"", &format!("cert = \"{cert}\""))
            .replace("key = \"certs/b.key\"", &format!("key = \"{key}\""))
            .replace("ca = \"certs/ca.pem\"", &format!("ca = \"{ca}\""));
        if label == "another resource" {
            bad = bad
                .replace("name = \"r0\"", "name = \"r1\"")
                .replace("disk = \"b.img\"", "disk = \"b-r1.img\"")
                .replace("meta = \"b.meta\"", "meta = \"b-r1.meta\"");
        }
        let (rogue, rogue_log) = rogue_up(&bad, "b", label);
        std::thread::sleep(Duration::from_secs(3));
        let a = p.status(0);
        assert_ne!(a["connection"], "Connected", "{label}: connected to a rogue peer");
        assert_eq!(a["peer"]["role"], serde_json::Value::Null);
        let log_a = p.log(0);
        assert!(
            log_a.contains(needle),
            "{label}: a's log does not say why ({needle}):\n{}",
            tail(&log_a)
        );
        if label == "foreign CA" {
            // a, the dialer, refused b's certificate: its log and status
            // name its tls.ca; b, refused, says its certificate was.
            let refusal = a["link_refusal"].as_str().unwrap_or_default();
            assert!(refusal.contains(&our_ca) && refusal.contains("BadSignature"), "{a}");
            assert!(log_a.contains(&our_ca), "a's log:\n{}", tail(&log_a));
            let log_b = std::fs::read_to_string(&rogue_log).unwrap();
            assert!(
                log_b.contains(
                    "the peer refused this node's certificate, not signed by the CA in its tls.ca"
                ),
                "b's log:\n{}",
                tail(&log_b)
            );
        }
        drop(rogue);
    }
    // The other way round: a dials with a certificate of another CA (its
    // tls.ca trusts b's), and b, the listener, refuses it.
    assert!(p.down(0).success());
    p.up(1);
    let bad = good
        .replace("cert = \"certs/a.pem\"", "cert = \"rogue/a.pem\"")
        .replace("key = \"certs/a.key\"", "key = \"rogue/a.key\"");
    let (rogue, rogue_log) = rogue_up(&bad, "a", "foreign CA dialing");
    let deadline = Instant::now() + Duration::from_secs(20);
    let b = loop {
        let b = p.status(1);
        if b["link_refusal"].as_str().is_some_and(|r| r.contains(&our_ca)) {
            break b;
        }
        assert!(Instant::now() < deadline, "b does not say why it refuses a: {b}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_ne!(b["connection"], "Connected", "connected to a rogue peer: {b}");
    assert!(b["link_refusal"].as_str().unwrap().contains("BadSignature"), "{b}");
    let log_b = p.log(1);
    assert!(log_b.contains(&our_ca), "b's log:\n{}", tail(&log_b));
    // a, refused, says so in its log and its status.
    let said = "the peer refused this node's certificate, not signed by the CA in its tls.ca";
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&rogue_log).unwrap().contains(said) {
        assert!(
            Instant::now() < deadline,
            "a's log does not say it was refused:\n{}",
            tail(&std::fs::read_to_string(&rogue_log).unwrap())
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(rogue);
    // The real a connects.
    p.up(0);
    p.wait_connected();
}

/// The metadata survives but the out-of-sync bitmap does not (its file
/// lost): a Primary that wrote while its peer was down restarts, and every
/// block counts as out of sync, so the returning peer gets them all and the
/// disks end identical. (Before, a lost bitmap read as all in sync: the
/// handshake moved nothing, and the peer silently lacked those writes.)
/// Likewise for a lost activity-log file.
#[test]
fn a_lost_bitmap_file_makes_a_full_resync_not_a_silent_difference() {
    if !have("qemu-io") {
        return;
    }
    let mut p = Pair::start("C", "16M");
    p.wait_synced("the first sync", Duration::from_secs(60));
    assert!(p.down(1).success());
    p.wait_unlinked(0);
    let out = p.qemu_io(0, "write -P 0x5a 1M 1M");
    assert!(out.contains("wrote"), "{out}");
    assert!(p.status(0)["out_of_sync_bytes"].as_u64().unwrap() >= 1 << 20);
    assert!(p.down(0).success());
    std::fs::remove_file(p.dir.path().join("a.meta.bitmap")).unwrap();
    p.up(0);
    p.up(1);
    p.wait("the pair to resync", Duration::from_secs(60), |a, b| {
        [a, b].iter().all(|s| {
            s["connection"] == "Connected"
                && s["sync"].is_null()
                && s["out_of_sync_bytes"] == 0
                && s["disk"] == "UpToDate"
        })
    });
    let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
    assert!(b[1 << 20..2 << 20].iter().all(|&x| x == 0x5a), "b lacks the writes made apart");
    assert!(a == b, "the disks differ");
    assert!(p.log(0).contains("every block counts as out of sync"), "{}", tail(&p.log(0)));
    // The same for a lost activity log (what a crash left in flight is
    // unknown): b, restarted without it, takes a full resync from a.
    let before = p.status(0)["counters"]["resync_bytes"].as_u64().unwrap();
    assert!(p.down(1).success());
    std::fs::remove_file(p.dir.path().join("b.meta.al")).unwrap();
    p.up(1);
    p.wait("the pair to resync again", Duration::from_secs(60), |a, b| {
        let moved = a["counters"]["resync_bytes"].as_u64().unwrap_or(0).saturating_sub(before);
        let whole = moved >= 16 << 20;
        whole && [a, b].iter().all(|s| s["connection"] == "Connected" && s["sync"].is_null())
    });
    assert!(p.log(1).contains("every block counts as out of sync"), "{}", tail(&p.log(1)));
    assert!(read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk), "the disks differ");
}

#[test]
fn down_stops_a_node_cleanly() {
    let mut p = Pair::start("C", "16M");
    assert!(p.down(1).success());
    p.wait_unlinked(0);
    // The peer says why it went.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let a = p.status(0);
        if a["last_error"] == "b closed the link: the node is stopping" {
            break;
        }
        assert!(Instant::now() < deadline, "a does not give b's reason: {a}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = p.cli("status", &[], 1);
    assert_eq!(out.status.code(), Some(3), "status of a stopped node exits 3");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

/// A protocol-A pair in sync, b behind a `netem` relay of 150 ms each way
/// (kept while the guard lives), and `count` 1 MiB writes (pattern 0x40 +
/// i at i MiB) acknowledged by a, most still on their way to b.
fn a_pair_with_writes_in_flight(count: u64) -> (Pair, KillOnDrop) {
    let mut p = Pair::prepare("A", "32M");
    let netem = p.relay_b("150ms");
    p.up_in_sync("the initial sync", Duration::from_secs(120));
    let writes: Vec<String> =
        (0..count).map(|i| format!("write -P {} {} 1M", 0x40 + i, i * 1024 * 1024)).collect();
    run_qemu_io(&p.uri(0), &writes);
    (p, netem)
}

/// Protocol A answers a write before the peer has it. A planned `down` of
/// the Primary (`drbdadm down` runs `secondary` first) waits until the
/// peer has confirmed every write it acknowledged before the link closes:
/// the Secondary, promoted next, holds all of them. (A crash may lose
/// them: that is protocol A. A stop the operator asked for need not.)
#[test]
fn down_in_protocol_a_hands_every_acknowledged_write_to_the_peer_first() {
    if !have("qemu-io") {
        return;
    }
    // 150 ms each way: the writes are still on their way at `down`, more
    // than two seconds of them (the demotion's own bound without a
    // controller; review).
    let (mut p, _netem) = a_pair_with_writes_in_flight(24);
    let t0 = Instant::now();
    assert!(p.down(0).success());
    let log = p.log(0);
    assert!(
        !log.contains("stopping with writes the peer has not confirmed"),
        "down gave up after {:?} with writes unconfirmed",
        t0.elapsed()
    );
    // b, promoted without --force: every acknowledged write is there.
    p.ok(&["primary"], 1);
    let reads: Vec<String> =
        (0..24u64).map(|i| format!("read -P {} {} 1M", 0x40 + i, i * 1024 * 1024)).collect();
    let out = run_qemu_io(&p.uri(1), &reads);
    assert!(!out.contains("Pattern verification failed"), "b lacks acknowledged writes: {out}");
}

/// Protocol A: both processes killed, the Secondary first, while the
/// Primary's acknowledged writes are still on their way (a relay of 150 ms
/// each way). The Secondary's record said its peer was Primary: it comes
/// back `Consistent`, and `primary` without `--force` is refused, as when
/// its link goes first (before, it came back UpToDate and was promoted
/// lacking writes the old Primary had answered; review, helper-86). When
/// the old Primary returns, the two meet, the writes move, and b is
/// UpToDate with disks identical.
#[test]
fn an_a_secondary_killed_before_its_primary_comes_back_consistent() {
    if !have("qemu-io") {
        return;
    }
    let (mut p, _netem) = a_pair_with_writes_in_flight(8);
    p.kill(1);
    p.kill(0);
    let b = read_file(&p.nodes[1].disk);
    let has = |d: &[u8], i: usize| d[i << 20..(i + 1) << 20].iter().all(|&x| x == 0x40 + i as u8);
    assert!((0..8).any(|i| !has(&b, i)), "b holds every write: the case is not made");
    p.up(1);
    let st = p.status(1);
    assert_eq!(st["disk"], "Consistent", "b came back {st}\n{}", tail(&p.log(1)));
    let out = p.cli("primary", &[], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "b was promoted without --force lacking a's writes");
    assert!(err.contains("--force"), "{err}");
    assert_eq!(p.status(1)["role"], "Secondary");

    p.up(0);
    p.wait_connected();
    p.wait_synced("a and b to meet again", Duration::from_secs(60));
    p.wait_drained();
    assert_eq!(p.status(1)["disk"], "UpToDate");
    let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
    assert!((0..8).all(|i| has(&a, i)), "a lost a write it acknowledged");
    assert!(a == b, "the disks differ after the two met");
}

/// Protocol A's failover and failback: the Primary is killed while the
/// writes it acknowledged are still on their way (a relay of 150 ms each
/// way); b is `Consistent`, `primary --force` takes it as it is (the tail
/// is lost, as protocol A allows) and b writes. The old Primary comes
/// back as Secondary: the tail it holds alone is resynced away, not left
/// as a silent difference, and b's write reaches it; failing back keeps
/// the disks identical.
#[test]
fn a_forced_failover_in_protocol_a_resyncs_the_old_primarys_tail_away() {
    if !have("qemu-io") {
        return;
    }
    let (mut p, _netem) = a_pair_with_writes_in_flight(8);
    p.kill(0);
    p.wait_unlinked(1);
    let has = |d: &[u8], i: usize| d[i << 20..(i + 1) << 20].iter().all(|&x| x == 0x40 + i as u8);
    let a = read_file(&p.nodes[0].disk);
    assert!((0..8).all(|i| has(&a, i)), "a lacks its own acknowledged writes");
    assert!(!has(&read_file(&p.nodes[1].disk), 7), "b holds the last write: the case is not made");
    assert_eq!(p.status(1)["disk"], "Consistent");
    p.ok(&["primary", "--force"], 1);
    p.qemu_io(1, "write -P 0x5b 12M 1M");
    p.up(0);
    p.wait_both_synced("the old Primary to resync", Duration::from_secs(60));
    let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
    assert!(a == b, "the disks differ after the old Primary's return");
    assert!(a[12 << 20..13 << 20].iter().all(|&x| x == 0x5b), "b's write did not reach a");
    assert!(!has(&a, 7), "a kept the tail b never got");

    p.ok(&["secondary"], 1);
    p.wait("a to see b Secondary", Duration::from_secs(10), |a, _| {
        a["peer"]["role"] == "Secondary"
    });
    p.ok(&["primary"], 0);
    p.qemu_io(0, "write -P 0xa7 20M 1M");
    p.wait_synced("the failback", Duration::from_secs(60));
    p.wait_drained();
    assert!(p.down(0).success() && p.down(1).success());
    let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
    assert!(a == b, "the disks differ after the failback");
}

/// Protocol A, a handover while the Secondary's disk is behind: a answers
/// 16 MiB of writes at once, b's disk (slow) is still writing them when a
/// says it is Secondary (`secondary`, no controller), and b's process is
/// killed as soon as it has heard that, then a's. Before, b's record
/// stopped saying it may be behind as soon as a said Secondary: b came
/// back UpToDate without a's last writes, and `primary` without `--force`
/// was accepted on it (a known limit). Now the record says so until b has
/// written what it received: b comes back `Consistent`, `primary` is
/// refused, and when a returns the two meet and end byte-identical.
#[test]
fn an_a_secondary_killed_right_after_a_handover_comes_back_consistent() {
    let dir = tempfile::Builder::new().prefix("tb-slow").tempdir_in(test_tmp()).unwrap();
    let Some((mut p, slow)) = slow_pair_in("A", dir.path(), "64M", "30s", "") else { return };
    const MIB: usize = 1 << 20;
    let writes: Vec<String> =
        (0..16usize).map(|i| format!("write -P {} {} 1M", 0x40 + i, i * MIB)).collect();
    run_qemu_io(&p.uri(0), &writes);
    p.ok(&["secondary"], 0);
    p.wait_one(1, "b to hear that a is Secondary", |b| b["peer"]["role"] == "Secondary");
    p.kill(1);
    p.kill(0);
    let has = |d: &[u8], i: usize| d[i * MIB..(i + 1) * MIB].iter().all(|&x| x == 0x40 + i as u8);
    let b = read_file(&slow.file());
    assert!((0..16).any(|i| !has(&b, i)), "b wrote everything before it was killed: no case");
    p.up(1);
    let st = p.status(1);
    assert_eq!(st["disk"], "Consistent", "b came back {st}\n{}", tail(&p.log(1)));
    let out = p.cli("primary", &[], 1);
    assert!(!out.status.success(), "b was promoted without --force lacking a's writes");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));

    p.up(0);
    p.wait_connected();
    p.wait_synced("a and b to meet again", Duration::from_secs(90));
    assert_eq!(p.status(1)["disk"], "UpToDate");
    let (a, b) = (read_file(&p.nodes[0].disk), read_file(&slow.file()));
    assert!((0..16).all(|i| has(&a, i)), "a lost a write it acknowledged");
    assert!(a == b, "the disks differ after the two met");
}

/// The slow-disk pair of the tests below: protocol B, b's disk on a
/// [`FuseDisk::slow`], a Primary, in sync; the peer's `timeout`, more top-level
/// keys in `extra`. None if a tool or root is missing (outside CI).
fn slow_pair(
    dir: &std::path::Path,
    size: &str,
    timeout: &str,
    extra: &str,
) -> Option<(Pair, FuseDisk)> {
    slow_pair_in("B", dir, size, timeout, extra)
}

/// [`slow_pair`] in `protocol`.
fn slow_pair_in(
    protocol: &str,
    dir: &std::path::Path,
    size: &str,
    timeout: &str,
    extra: &str,
) -> Option<(Pair, FuseDisk)> {
    if !(have("nbdkit") && have("nbdfuse") && have("nbdcopy") && root("FUSE, bdi limits")) {
        return None;
    }
    let slow = FuseDisk::slow(dir, size);
    let mut p = Pair::prepare(protocol, size);
    p.set_disk(1, &slow.file());
    p.set_timeout(timeout);
    if !extra.is_empty() {
        p.configure(extra);
    }
    p.up_in_sync("the first sync onto the slow disk", Duration::from_secs(90));
    Some((p, slow))
}

/// A Secondary whose disk is slower than the link holds a backlog of peer
/// writes (protocol B: acknowledged as received, queued on its store lane)
/// when it is told to stop. It performs them before its final flush, so
/// it comes back without an unclean shutdown to recover from (an early
/// version of the lane flushed first and left 15 activity-log extents
/// behind), resyncs what it missed while down, and ends byte-identical to
/// the Primary.
#[test]
fn a_secondary_on_a_slow_disk_stopped_mid_burst_stops_clean() {
    let dir = tempfile::Builder::new().prefix("tb-slow").tempdir_in(test_tmp()).unwrap();
    let Some((mut p, slow)) = slow_pair(dir.path(), "96M", "3s", "") else { return };
    let src = p.dir.path().join("src.bin");
    std::fs::write(&src, pattern(64 << 20, 11)).unwrap();
    let mut copy = KillOnDrop(Command::new("nbdcopy").arg(&src).arg(p.uri(0)).spawn().unwrap());
    std::thread::sleep(Duration::from_secs(1));
    assert!(p.down(1).success(), "b did not stop cleanly:\n{}", tail(&p.log(1)));
    assert!(copy.0.wait().unwrap().success(), "nbdcopy to the Primary failed");
    let before = p.log(1).len();
    p.up(1);
    p.wait_synced("b back in sync", Duration::from_secs(90));
    let restart = p.log(1)[before..].to_string();
    assert!(!restart.contains("unclean shutdown"), "b restarted unclean:\n{}", tail(&restart));
    p.wait_drained();
    assert!(read_file(&p.nodes[0].disk) == read_file(&slow.file()), "the two disks differ");
    drop(p);
}

/// Failover onto a Secondary that still has a backlog: in protocol B the
/// Primary acknowledged writes b had received but not yet written (its
/// disk is slower than the link). The Primary dies, the operator
/// promotes b at once, and a client reads everything back from b: every
/// acknowledged byte is there — a read waits for the writes queued
/// before it. (Without that wait the reads returned the blocks' older
/// content from the disk while the backlog was still being written.)
#[test]
fn a_secondary_promoted_with_a_backlog_reads_every_acknowledged_write() {
    let dir = tempfile::Builder::new().prefix("tb-slow").tempdir_in(test_tmp()).unwrap();
    // A peer that falls 3 s behind would be given up (the Primary goes
    // on alone, and b is then rightly older): wait for it.
    let Some((mut p, _slow)) = slow_pair(dir.path(), "96M", "30s", "") else { return };
    let src = p.dir.path().join("src.bin");
    let data = pattern(64 << 20, 12);
    std::fs::write(&src, &data).unwrap();
    // Every write of the copy acknowledged (received by b); no FLUSH.
    run_ok(Command::new("nbdcopy").arg(&src).arg(p.uri(0)));
    p.kill(0);
    p.ok(&["disconnect"], 1);
    p.ok(&["primary"], 1);
    let backlog = p.status(1)["counters"].clone();
    let back = p.dir.path().join("back.bin");
    let copy =
        run_timeout(Command::new("nbdcopy").arg(p.uri(1)).arg(&back), Duration::from_secs(120));
    assert!(copy.status.success(), "reading b: {}", String::from_utf8_lossy(&copy.stderr));
    let got = read_file(&back);
    let first_bad = got[..data.len()].iter().zip(&data).position(|(x, y)| x != y);
    assert!(
        first_bad.is_none(),
        "b serves other data than a acknowledged, from byte {first_bad:?} (b's counters at the promotion: {backlog}):\n{}",
        tail(&p.log(1))
    );
}

/// A process's memory, from /proc/PID/status (`VmRSS`, `VmHWM`), in bytes.
fn vm(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("no {key}"));
    let kb: u64 = line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap();
    kb * 1024
}

/// Protocol B's backpressure: a Secondary acknowledges receipt at once and
/// writes to a disk slower than the link. A 256 MiB burst must not pile up
/// in its memory: its link's reader pauses while 32 MiB wait for the disk,
/// and QUIC's flow control holds the Primary back. Asserted on the
/// Secondary's peak resident memory during the burst (without the pause it
/// queued most of the burst: about 200 MiB more).
#[test]
fn a_secondary_on_a_slow_disk_holds_the_primary_back_not_the_burst() {
    let dir = tempfile::Builder::new().prefix("tb-slow").tempdir_in(test_tmp()).unwrap();
    // The first sync compares checksums (both disks are zeroes): nothing
    // is written to the slow disk before the burst.
    let Some((p, slow)) = slow_pair(dir.path(), "320M", "60s", "resync-checksum = true") else {
        return;
    };
    let pid = p.nodes[1].child.as_ref().expect("b runs").id();
    // The peak from here on (5: reset the peak resident size).
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let before = vm(pid, "VmRSS:");
    let src = p.dir.path().join("src.bin");
    std::fs::write(&src, pattern(256 << 20, 13)).unwrap();
    run_ok(Command::new("nbdcopy").arg(&src).arg(p.uri(0)));
    let peak = vm(pid, "VmHWM:");
    let grew = peak.saturating_sub(before) >> 20;
    eprintln!("b: {} MiB before the burst, peak {} MiB", before >> 20, peak >> 20);
    assert!(
        grew < 128,
        "b's memory grew by {grew} MiB during a 256 MiB burst (from {} MiB)",
        before >> 20
    );
    p.wait_drained();
    if let Some(line) = p.gave_up_peer(0) {
        panic!("the Primary gave up its slow peer: {line}");
    }
    let a = read_file(&p.nodes[0].disk);
    assert!(a == read_file(&slow.file()), "the two disks differ");
    drop(p);
}

#[test]
fn netem_puts_latency_on_the_link() {
    let mut p = Pair::prepare("C", "16M");
    // A relay in front of b that a dials instead.
    let _netem = p.relay_b("5ms");
    p.up(0);
    p.up(1);
    p.ok(&["primary", "--force"], 0);
    p.wait_connected();
    std::thread::sleep(Duration::from_secs(1));
    let rtt = p.status(0)["rtt_us"].as_u64().unwrap();
    assert!(rtt >= 9_000, "RTT {rtt} us through a 5 ms (each way) relay");
    if have("qemu-io") {
        // A protocol C write waits a round trip.
        let t0 = Instant::now();
        p.qemu_io(0, "write -P 1 0 4k");
        assert!(t0.elapsed() >= Duration::from_millis(10), "{:?}", t0.elapsed());
    }
}

#[test]
fn bad_config_names_the_key() {
    let p = Pair::prepare("C", "16M");
    let text =
        std::fs::read_to_string(&p.config).unwrap().replace("protocol = \"C\"", "protocol = \"Z\"");
    std::fs::write(&p.config, text).unwrap();
    let out = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&p.config)
        .args(["--node", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("protocol") && err.contains("\"Z\""), "{err}");
    let out = p.cli("up", &[], 0);
    assert_eq!(out.status.code(), Some(1));
    let good =
        std::fs::read_to_string(&p.config).unwrap().replace("protocol = \"Z\"", "protocol = \"C\"");
    std::fs::write(&p.config, good).unwrap();
    let out = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&p.config)
        .args(["--node", "x"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nodes.x") && err.contains("a, b"), "{err}");
}

/// Issue 4, bitmap resync: blocks written while the Secondary was away move
/// to it when it returns, and only those.
#[test]
fn bitmap_resync_moves_only_what_was_written_while_apart() {
    if !(have("qemu-io") && have("fio")) {
        return;
    }
    let mut p = Pair::start("C", "256M");
    p.qemu_io(0, "write -P 0x1 0 8M");
    p.wait_drained();
    assert!(p.down(1).success());
    p.wait_unlinked(0);
    // 16 MiB in 256 writes of 64 KiB at scattered offsets.
    let writes: Vec<String> = (0..256u64)
        .map(|i| format!("write -P {} {} 64k", i % 250 + 2, (i * 2654435761 % 4000) * 64 * 1024))
        .collect();
    run_qemu_io(&p.uri(0), &writes);
    let oos = p.status(0)["out_of_sync_bytes"].as_u64().unwrap();
    assert_eq!(oos, 16 << 20, "each 64 KiB write marks 16 blocks");
    // Back: the Secondary is Outdated, then resynced while fio writes on.
    p.up(1);
    p.wait_connected();
    let mut fio = Command::new("fio");
    fio.args([
        "--name=during",
        "--ioengine=nbd",
        &format!("--uri={}", p.uri(0)),
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=8",
        "--size=32M",
        "--offset=200M",
        "--time_based",
        "--runtime=2",
        "--output=/dev/null",
    ]);
    run_ok(&mut fio);
    p.wait_synced("resync to finish", Duration::from_secs(60));
    let a = p.status(0);
    let moved = a["counters"]["resync_bytes"].as_u64().unwrap();
    assert_eq!(moved, 16 << 20, "resync moved {moved} bytes for 16 MiB written apart");
    assert_eq!(a["peer"]["disk"], "UpToDate");
    assert!(
        read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk),
        "disks differ after resync"
    );
}

/// A bitmap too fragmented for runs (every other 4 KiB block of 48 MiB
/// written apart: 6,144 runs in one 2 GiB window of the exchange) crosses
/// the handshake as the bitmap's own words; exactly the written blocks
/// move, and the disks end identical.
#[test]
fn a_fragmented_bitmap_resyncs_exactly_what_was_written_apart() {
    if !have("fio") {
        return;
    }
    let mut p = Pair::start("C", "64M");
    assert!(p.down(1).success());
    p.wait_unlinked(0);
    let mut fio = Command::new("fio");
    fio.args([
        "--name=every-other-block",
        "--ioengine=nbd",
        &format!("--uri={}", p.uri(0)),
        "--rw=write:4k",
        "--bs=4k",
        "--size=48M",
        "--buffer_pattern=0x5a",
        "--output=/dev/null",
    ]);
    run_ok(&mut fio);
    let oos = p.status(0)["out_of_sync_bytes"].as_u64().unwrap();
    assert_eq!(oos, 24 << 20, "every other block of 48 MiB");
    p.up(1);
    p.wait_connected();
    p.wait_synced("resync to finish", Duration::from_secs(60));
    let moved = p.status(0)["counters"]["resync_bytes"].as_u64().unwrap();
    assert_eq!(moved, 24 << 20, "resync moved {moved} bytes for 24 MiB written apart");
    assert!(
        read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk),
        "disks differ after resync"
    );
}

/// Issue 4, split brain: both nodes Primary while apart, each writes. On
/// reconnect both report split brain and refuse; neither disk changes. Then
/// `discard-my-data` on one resolves it and the disks end identical.
#[test]
fn split_brain_is_detected_and_resolved_by_discard_my_data() {
    if !have("qemu-io") {
        return;
    }
    let p = Pair::start("C", "16M");
    p.qemu_io(0, "write -P 0x1 0 1M");
    p.wait_drained();
    p.split_apart("write -P 0xa 2M 64k", "write -P 0xb 3M 64k");
    let (disk_a, disk_b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
    p.ok(&["connect"], 0);
    p.ok(&["connect"], 1);
    p.wait("split brain on both", Duration::from_secs(15), |a, b| {
        a["split_brain"] == true && b["split_brain"] == true
    });
    let (a, b) = (p.status(0), p.status(1));
    assert_eq!(a["connection"], "StandAlone");
    assert_eq!(b["connection"], "StandAlone");
    assert!(read_file(&p.nodes[0].disk) == disk_a, "a's disk changed");
    assert!(read_file(&p.nodes[1].disk) == disk_b, "b's disk changed");
    assert!(p.log(0).contains("split brain"));
    // The wrong verb: discard-my-data on both. Neither is a source; both
    // refuse, nothing is overwritten, and both discards are withdrawn.
    // (a, Primary, must be demoted first: only a Secondary discards.)
    p.ok(&["secondary"], 0);
    p.ok(&["discard-my-data"], 0);
    p.ok(&["discard-my-data"], 1);
    p.wait("both refuse the double discard", Duration::from_secs(15), |a, b| {
        [a, b].iter().all(|s| {
            s["connection"] == "StandAlone"
                && s["split_brain"] == true
                && s["last_error"].as_str().is_some_and(|e| e.contains("both nodes were told"))
        })
    });
    assert_eq!(p.status(0)["disk"], "UpToDate");
    assert_eq!(p.status(1)["disk"], "UpToDate");
    assert!(read_file(&p.nodes[0].disk) == disk_a, "a's disk changed");
    assert!(read_file(&p.nodes[1].disk) == disk_b, "b's disk changed");
    // b's changes go; a's data wins.
    p.ok(&["discard-my-data"], 1);
    p.ok(&["connect"], 0);
    p.wait_synced("the full resync", Duration::from_secs(30));
    let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
    assert!(a == b, "disks differ after discard-my-data");
    assert!(
        b[3 << 20..(3 << 20) + 65536].iter().all(|&x| x == 0),
        "b's split-brain write survived"
    );
    assert!(b[2 << 20..(2 << 20) + 65536].iter().all(|&x| x == 0xa));
    assert_eq!(p.status(0)["split_brain"], false);
}

/// `data` with 4 bytes at `at` chosen so that its CRC32 is `want` (CRC32
/// is affine in those bits: solved over GF(2)).
fn forge_crc(data: &mut [u8], at: usize, want: u32) {
    let crc_with = |data: &mut [u8], p: u32| {
        data[at..at + 4].copy_from_slice(&p.to_le_bytes());
        crc32fast::hash(data)
    };
    let base = crc_with(data, 0);
    let mut rows: Vec<(u32, u32)> =
        (0..32).map(|i| (crc_with(data, 1 << i) ^ base, 1u32 << i)).collect();
    let (mut target, mut patch) = (want ^ base, 0u32);
    for bit in (0..32).rev() {
        let Some(k) = rows.iter().position(|(v, _)| v >> bit & 1 == 1) else { continue };
        let (v, p) = rows.swap_remove(k);
        for r in rows.iter_mut() {
            if r.0 >> bit & 1 == 1 {
                *r = (r.0 ^ v, r.1 ^ p);
            }
        }
        if target >> bit & 1 == 1 {
            target ^= v;
            patch ^= p;
        }
    }
    assert_eq!(target, 0);
    crc_with(data, patch);
}

/// Issue 4, online verify: four blocks corrupted behind the Secondary's
/// back are found (exactly four), and the resync that follows repairs them.
/// One of them keeps its CRC32 (a change made to match it, as one random
/// change in 2^32 does): verify compares SHA-256 checksums, and finds it.
#[test]
fn verify_finds_exactly_the_corrupted_blocks_and_resync_repairs_them() {
    if !have("qemu-io") {
        return;
    }
    let p = Pair::start("C", "32M");
    p.qemu_io(0, "write -P 0x3c 0 8M");
    p.wait_drained();
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p.nodes[1].disk).unwrap();
        for block in [5u64, 700, 5000] {
            f.write_at(b"corrupt", block * 4096 + 100).unwrap();
        }
        let at = 1234 * 4096;
        let mut block = read_file(&p.nodes[1].disk)[at..at + 4096].to_vec();
        let crc = crc32fast::hash(&block);
        block[10..17].copy_from_slice(b"corrupt");
        forge_crc(&mut block, 2048, crc);
        assert_eq!(crc32fast::hash(&block), crc);
        f.write_at(&block, at as u64).unwrap();
    }
    p.ok(&["verify"], 0);
    p.wait("verify and the repairing resync", Duration::from_secs(60), |a, _| {
        a["counters"]["verify_mismatches"] == 4
            && a["sync"].is_null()
            && a["connection"] == "Connected"
            && a["out_of_sync_bytes"] == 0
            && a["in_flight"] == 0
    });
    let a = p.status(0);
    assert_eq!(a["counters"]["resync_bytes"], 4 * 4096, "only the four blocks moved");
    assert!(read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk), "not repaired");
    // A second verify finds nothing.
    p.ok(&["verify"], 0);
    std::thread::sleep(Duration::from_millis(300));
    p.wait("the second verify", Duration::from_secs(60), |a, _| {
        a["connection"] == "Connected" && a["sync"].is_null()
    });
    assert_eq!(p.status(0)["counters"]["verify_mismatches"], 4);
}

/// A node killed in the middle of an online verify (issue 10's list of
/// hostile cases). What the verify found before the crash is not lost: the
/// mismatch is out of sync on the verifying Primary (on disk: it survives
/// the Primary's own crash too) and is resynced when the pair is back. What
/// it had not reached yet is found by the next verify. First the Secondary
/// (VerifyTarget) is killed, then the Primary (VerifySource); the disks end
/// identical each time.
#[test]
fn a_node_killed_mid_verify_loses_none_of_its_findings() {
    // 2 GiB, sparse: the verify reads and hashes all of it on both nodes,
    // long enough to be caught halfway.
    let mut p = Pair::start("C", "2G");
    // Two blocks never written (so in no activity-log extent of either
    // node, which a restart would resync anyway): one the verify passes
    // early (4% in), one it reaches last.
    let (early, late) = (20_000u64, 2 * 262_144 - 10);
    let corrupt = |p: &Pair, blocks: &[u64]| {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p.nodes[1].disk).unwrap();
        for b in blocks {
            f.write_at(b"corrupt", b * 4096 + 100).unwrap();
        }
    };
    let block = |disk: &std::path::Path, b: u64| {
        use std::os::unix::fs::FileExt;
        let mut v = vec![0u8; 4096];
        std::fs::File::open(disk).unwrap().read_exact_at(&mut v, b * 4096).unwrap();
        v
    };
    let same = |p: &Pair, b: u64| block(&p.nodes[0].disk, b) == block(&p.nodes[1].disk, b);
    // Kills node `victim` once the verify is past `early` and short of
    // `late` (its progress on the Primary, which runs it).
    let kill_mid_verify = |p: &mut Pair, victim: usize| {
        p.ok(&["verify"], 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = p.status(0);
            let pc = a["sync"]["percent"].as_f64();
            if a["replication"] == "VerifySource" && pc.is_some_and(|x| x >= 10.0) {
                assert!(pc.unwrap() < 90.0, "the verify ran past the late block first: {a}");
                break;
            }
            assert!(a["sync"].is_null() || a["replication"] == "VerifySource", "not a verify: {a}");
            assert!(Instant::now() < deadline, "the verify never got to 10%: {a}");
            std::thread::sleep(Duration::from_millis(10));
        }
        p.kill(victim);
    };

    // The Secondary dies mid-verify.
    p.qemu_io(0, "write -P 0x3c 0 1M");
    p.wait_drained();
    corrupt(&p, &[early, late]);
    kill_mid_verify(&mut p, 1);
    p.wait_unlinked(0);
    let a = p.status(0);
    assert_eq!(a["counters"]["verify_mismatches"], 1, "the early block found: {a}");
    assert!(a["out_of_sync_bytes"].as_u64().unwrap() >= 4096, "{a}");
    p.up(1);
    p.wait_synced("the resync after the Secondary's restart", Duration::from_secs(60));
    assert!(same(&p, early), "the block the verify found was not resynced");
    assert!(!same(&p, late), "the late block changed without a verify");
    p.ok(&["verify"], 0);
    std::thread::sleep(Duration::from_millis(300));
    p.wait("the second verify and its resync", Duration::from_secs(120), |a, _| {
        a["counters"]["verify_mismatches"] == 2
            && a["sync"].is_null()
            && a["connection"] == "Connected"
            && a["out_of_sync_bytes"] == 0
    });
    assert!(read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk));

    // The Primary dies mid-verify: its finding is on its disk.
    corrupt(&p, &[early, late]);
    kill_mid_verify(&mut p, 0);
    p.wait_unlinked(1);
    p.up(0);
    let a = p.status(0);
    assert!(
        a["out_of_sync_bytes"].as_u64().unwrap() >= 4096,
        "the restarted Primary forgot what its verify found: {a}"
    );
    p.wait_linked();
    p.ok(&["primary"], 0);
    p.wait_synced("the resync after the Primary's restart", Duration::from_secs(60));
    assert!(same(&p, early), "the block the verify found was not resynced");
    p.ok(&["verify"], 0);
    std::thread::sleep(Duration::from_millis(300));
    p.wait("the verify after the Primary's restart", Duration::from_secs(120), |a, _| {
        a["counters"]["verify_mismatches"] == 1
            && a["sync"].is_null()
            && a["connection"] == "Connected"
            && a["out_of_sync_bytes"] == 0
    });
    assert!(read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk));
}

/// Issue 4, activity log: the Primary is killed mid-write and restarted;
/// only its activity-log extents are resynced, and every acknowledged write
/// is intact.
#[test]
fn after_a_primary_crash_only_the_activity_log_extents_resync() {
    let mut p = Pair::start("C", "512M");
    let acked = write_until_killed(&mut p, 16, 400);
    p.wait_unlinked(1);
    p.up(0);
    p.wait_connected();
    p.ok(&["primary"], 0);
    p.wait_synced("the activity-log resync", Duration::from_secs(60));
    let moved = p.status(0)["counters"]["resync_bytes"].as_u64().unwrap();
    // The writer touched the first 64 MiB (16 extents of 4 MiB); nothing
    // beyond the log's extents moves, far less than the 512 MiB disk.
    assert!(moved > 0 && moved <= 64 << 20 && moved % (4 << 20) == 0, "resynced {moved} bytes");
    assert!(p.log(0).contains("activity log"), "the restart said why");
    let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
    assert!(a == b, "disks differ after the activity-log resync");
    for c in acked {
        assert!(
            b[(c * 4096) as usize..(c * 4096 + 4096) as usize] == cookie_block(c)[..],
            "acked write {c} lost"
        );
    }
}

/// Issue 4: writes keep flowing during a resync; a node killed mid-resync
/// (the target, then the source) resumes rather than starting over, and the
/// disks end identical.
#[test]
fn a_resync_interrupted_by_a_crash_resumes() {
    if !have("fio") {
        return;
    }
    let mut p = Pair::start("C", "1G");
    assert!(p.down(1).success());
    p.wait_unlinked(0);
    let uri = p.uri(0);
    let fio = |extra: &[&str]| {
        let mut c = Command::new("fio");
        c.args(["--name=w", "--ioengine=nbd", &format!("--uri={uri}"), "--output=/dev/null"]);
        c.args(extra);
        run_ok(&mut c);
    };
    fio(&["--rw=write", "--bs=1M", "--iodepth=8", "--size=768M"]);
    let dirty = p.status(0)["out_of_sync_bytes"].as_u64().unwrap();
    assert_eq!(dirty, 768 << 20);
    let progress = |p: &Pair| p.status(0)["sync"]["percent"].as_f64();
    let wait_progress = |p: &Pair, at: f64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if progress(p).is_some_and(|x| x >= at) {
                return;
            }
            assert!(Instant::now() < deadline, "resync never reached {at}%: {}", p.status(0));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The target dies mid-resync (after a checkpoint: bits are cleared
    // only once the target flushed, which a loaded machine takes a while
    // to do) and comes back.
    p.up(1);
    wait_progress(&p, 20.0);
    // The target shows the resync's progress too: the source's total, and
    // what it has received of it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = p.status(1);
        if b["replication"] == "SyncTarget"
            && b["sync"]["percent"].as_f64().is_some_and(|x| x > 0.0)
        {
            assert_eq!(b["sync"]["bytes_total"], dirty, "{b}");
            assert!(b["sync"]["percent"].as_f64().unwrap() <= 100.0, "{b}");
            break;
        }
        assert!(Instant::now() < deadline, "the SyncTarget shows no progress: {b}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.status(0)["out_of_sync_bytes"].as_u64().unwrap() >= dirty {
        assert!(Instant::now() < deadline, "no resync checkpoint in 60 s: {}", p.status(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    p.kill(1);
    let before_restart = p.status(0)["out_of_sync_bytes"].as_u64().unwrap();
    assert!(before_restart < dirty, "progress was kept: {before_restart} of {dirty} left");
    p.up(1);
    // The source dies mid-resync, once a checkpoint is durable (its
    // bitmap saved and the activity log emptied of the extents fio wrote:
    // a crash with them in the log marks them all out of sync again), and
    // comes back (as Primary again) at once.
    wait_progress(&p, 10.0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.status(0)["activity_log_extents"].as_u64().unwrap() > 0 {
        assert!(Instant::now() < deadline, "no checkpoint emptied the log: {}", p.status(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    p.kill(0);
    p.up(0);
    p.wait_linked();
    let left = p.status(0)["out_of_sync_bytes"].as_u64().unwrap();
    assert!(left < dirty, "the source resumed from its bitmap checkpoint: {left} of {dirty} left");
    p.ok(&["primary"], 0);
    // Application writes go on during the rest of the resync.
    fio(&[
        "--rw=randwrite",
        "--bs=4k",
        "--iodepth=8",
        "--size=64M",
        "--offset=900M",
        "--time_based",
        "--runtime=1",
    ]);
    p.wait_synced("the resumed resync", Duration::from_secs(120));
    assert!(
        read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk),
        "disks differ after the resumed resync"
    );
}

/// Issue 4: with `split-brain-policy = "discard-least-changes"` the node
/// that changed less while apart (a Secondary) takes the other's data.
#[test]
fn split_brain_policy_discards_the_smaller_side() {
    if !have("qemu-io") {
        return;
    }
    let p = Pair::start_configured("C", "16M", "split-brain-policy = \"discard-least-changes\"");
    p.split_apart("write -P 0xa 0 1M", "write -P 0xb 4M 64k");
    p.ok(&["connect"], 0);
    p.ok(&["connect"], 1);
    p.wait_synced("the policy's resync", Duration::from_secs(30));
    assert_eq!(p.status(0)["split_brain"], false);
    let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
    assert!(a == b, "disks differ");
    assert!(b[4 << 20..(4 << 20) + 65536].iter().all(|&x| x == 0), "b's smaller change survived");
    assert!(p.log(1).contains("split brain resolved by policy"));
}

/// Issue 4, checksum mode: a full resync after `discard-my-data` sends only
/// the blocks whose CRC differs from the peer's.
#[test]
fn checksum_resync_sends_only_differing_blocks() {
    if !have("qemu-io") {
        return;
    }
    let p = Pair::start_configured("C", "16M", "resync-checksum = true");
    p.qemu_io(0, "write -P 0x7 0 8M");
    p.wait_drained();
    p.split_apart("write -P 0xa 1M 1M", "write -P 0xb 4M 64k");
    p.ok(&["discard-my-data"], 1);
    p.ok(&["connect"], 0);
    p.wait_synced("the checksum resync", Duration::from_secs(30));
    let moved = p.status(0)["counters"]["resync_bytes"].as_u64().unwrap();
    assert_eq!(moved, (1 << 20) + 65536, "a full resync of 16 MiB moved only the differing blocks");
    assert!(read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk), "disks differ");
}

/// A full sync cut short resumes where it was, as DRBD's does: b's disk
/// is replaced (a new node: disk and metadata gone), its full sync from a
/// is cut when about half of it is on b (b killed), and once b is back
/// only what was not yet on b moves (a's `out_of_sync_bytes` never climbs
/// back to the whole device, as it did when every cut full sync started
/// over). Then b's disk is replaced again mid-sync: the new disk names no
/// sync and takes all of it. The disks end identical each time.
#[test]
fn a_full_sync_cut_short_resumes_and_a_replaced_disk_takes_all_of_it() {
    const SIZE: u64 = 1 << 30;
    let mut p = Pair::prepare("C", "1G");
    p.configure("resync-rate = \"100M\"");
    // (a reads every chunk, holes too: sent unread, its 896 MiB of holes
    // went in a moment, too fast to cut the sync half way.)
    let mut a = Command::new(BIN);
    a.env("TWINBLOCK_SEEK_HOLES", "0");
    p.up_with(0, a);
    p.up(1);
    p.ok(&["primary", "--force"], 0);
    p.wait_connected();
    p.qemu_io(0, "write -P 0x5a 0 64M");
    p.qemu_io(0, "write -P 0xa5 960M 64M");
    p.wait_drained();
    // b's disk and metadata gone (b down): a new node.
    let wipe_b = |p: &Pair| {
        for f in std::fs::read_dir(p.dir.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if name == "b.img" || name.starts_with("b.meta") {
                std::fs::remove_file(f.path()).unwrap();
            }
        }
    };
    let replace_b = |p: &mut Pair| {
        p.kill(1);
        wipe_b(p);
        p.up(1);
    };
    // Kills b once a's full sync to it is between 30% and 70% done;
    // returns what a still has out of sync then.
    let kill_mid_sync = |p: &mut Pair| -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let a = p.status(0);
            let left = a["out_of_sync_bytes"].as_u64().unwrap_or(SIZE);
            if a["replication"] == "SyncSource" && left <= SIZE * 7 / 10 {
                assert!(left >= SIZE * 3 / 10, "the sync ran too fast to be cut: {a}");
                p.kill(1);
                p.wait_unlinked(0);
                return p.status(0)["out_of_sync_bytes"].as_u64().unwrap();
            }
            assert!(Instant::now() < deadline, "the full sync never got to 30%: {a}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // Starts b and returns what a's resync sends until the pair is in
    // sync (a's `counters.resync_bytes`: polling `out_of_sync_bytes` for
    // its peak can miss the sync's first moments).
    let sent_until_synced_after_up = |p: &mut Pair| -> u64 {
        let resync_bytes = |p: &Pair| p.status(0)["counters"]["resync_bytes"].as_u64().unwrap();
        let before = resync_bytes(p);
        p.up(1);
        p.wait("the pair in sync", Duration::from_secs(120), |a, b| {
            a["connection"] == "Connected"
                && a["sync"].is_null()
                && a["out_of_sync_bytes"] == 0
                && b["disk"] == "UpToDate"
        });
        resync_bytes(p) - before
    };

    replace_b(&mut p);
    let left = kill_mid_sync(&mut p);
    let sent = sent_until_synced_after_up(&mut p);
    assert!(
        sent <= left + (64 << 20),
        "the full sync started over: {sent} bytes sent after b's restart, {left} out of sync when cut"
    );
    assert!(read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk), "disks differ");
    let b = p.status(1);
    assert_eq!(b["disk"], "UpToDate", "{b}");

    // A disk replaced mid-sync takes everything.
    p.qemu_io(0, "write -P 0x3c 512M 1M");
    p.wait_drained();
    replace_b(&mut p);
    kill_mid_sync(&mut p);
    wipe_b(&p);
    let sent = sent_until_synced_after_up(&mut p);
    assert_eq!(sent, SIZE, "the replaced disk did not take a full sync");
    assert!(read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk), "disks differ");
}

/// Found by an adversarial test of the verbs: after `disconnect` on the
/// Primary, its Secondary stayed UpToDate, and `primary` on it (no
/// `--force`) served data without the writes the Primary acknowledged
/// after the disconnect. Now the Secondary is told and is Outdated:
/// `primary` on it is refused until `connect` has resynced it; then it
/// serves what the Primary acknowledged alone.
#[test]
fn a_primarys_disconnect_outdates_its_secondary_until_the_resync() {
    if !have("qemu-io") {
        return;
    }
    let p = Pair::start("C", "16M");
    p.qemu_io(0, "write -P 0x11 0 1M");
    p.ok(&["disconnect"], 0);
    p.wait("b Outdated", Duration::from_secs(10), |_, b| b["disk"] == "Outdated");
    p.qemu_io(0, "write -P 0x22 0 1M");
    p.ok(&["secondary"], 0);
    let out = p.cli("primary", &[], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "b promoted over stale data: {err}");
    assert!(err.contains("Outdated"), "{err}");
    // Reconnected: b takes what a wrote alone, then may be promoted.
    p.ok(&["connect"], 0);
    p.wait_synced("b resynced from a", Duration::from_secs(30));
    p.ok(&["primary"], 1);
    let read = p.qemu_io(1, "read -P 0x22 0 1M");
    assert!(!read.contains("verification failed"), "b lacks a's acknowledged write: {read}");
}

/// Found by an adversarial test of the verbs: `down` returned as soon as
/// the node had been asked, while its process went on stopping (2 s under
/// writes; its metadata changed after `down` returned), so `down` then
/// `up` failed on the disk's lock. Now `down` returns once the process has
/// exited (a zombie counts: it holds nothing); `up` right after starts.
#[test]
fn down_returns_once_the_node_has_exited() {
    if !have("fio") {
        return;
    }
    let mut p = Pair::start("C", "64M");
    // Writes in flight while a stops: its final flush has work to do.
    let fio = Command::new("fio")
        .args(["--name=w", "--ioengine=nbd", "--rw=write", "--bs=1M", "--iodepth=16"])
        .arg(format!("--uri={}", p.uri(0)))
        .args(["--size=64M", "--time_based", "--runtime=30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _fio = KillOnDrop(fio);
    std::thread::sleep(Duration::from_secs(2));
    for i in [1, 0] {
        p.ok(&["down"], i);
        let c = p.nodes[i].child.as_mut().unwrap();
        assert!(
            c.try_wait().unwrap().is_some(),
            "{}'s process runs on after `down`",
            p.nodes[i].name
        );
        p.nodes[i].child = None;
    }
    p.up(0);
    p.up(1);
    p.wait_connected();
}

/// A small xorshift generator: each racing connection's mix is its own and
/// repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One connection's share of the race: `count` pipelined requests (at most
/// 32 in flight) over the first `region` bytes, all of them overlapping the
/// other connections'. Writes of 4 KiB to 320 KiB (performed in place, on
/// the store lane, and on the NBD server's blocking pool), some with FUA;
/// TRIMs; WRITE_ZEROES with and without NO_HOLE, FUA and FAST_ZERO (which
/// may be refused with ENOTSUP, nothing else); FLUSHes. `abandon`: the
/// connection is shut down after half of them, with requests in flight
/// and perhaps half a payload sent. Returns how many were answered; every
/// answer is OK.
fn race(addr: std::net::SocketAddr, seed: u64, region: u64, count: u64, abandon: bool) -> u64 {
    const FUA: u16 = 1;
    const NO_HOLE: u16 = 1 << 1;
    const FAST_ZERO: u16 = 1 << 4;
    let mut c = Client::go_addr(addr, false);
    let mut rd = c.s.try_clone().unwrap();
    rd.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let fast = Arc::new(Mutex::new(BTreeSet::new()));
    let in_flight = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let (fast, in_flight) = (fast.clone(), in_flight.clone());
        std::thread::spawn(move || {
            let mut answered = 0u64;
            let mut head = [0u8; 16];
            while rd.read_exact(&mut head).is_ok() {
                assert_eq!(u32::from_be_bytes(head[..4].try_into().unwrap()), 0x6744_6698);
                let errno = u32::from_be_bytes(head[4..8].try_into().unwrap());
                let cookie = u64::from_be_bytes(head[8..].try_into().unwrap());
                let refused_fast = errno == 95 && fast.lock().unwrap().contains(&cookie);
                assert!(errno == 0 || refused_fast, "request {cookie} failed: errno {errno}");
                answered += 1;
                in_flight.fetch_sub(1, Ordering::SeqCst);
                if answered == count {
                    break;
                }
            }
            answered
        })
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (seed + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let block = 4096u64;
    for cookie in 0..count {
        if abandon && cookie == count / 2 {
            // Half a write's payload, then the connection goes.
            let data = pattern(256 << 10, seed * 1000 + cookie);
            let mut b = Vec::new();
            common::nbd::request_bytes(&mut b, 0, 1, cookie, 0, data.len() as u32, &data);
            c.send(&b[..b.len() / 2]);
            let _ = c.s.shutdown(std::net::Shutdown::Both);
            break;
        }
        while in_flight.load(Ordering::SeqCst) >= 32 {
            std::thread::yield_now();
        }
        in_flight.fetch_add(1, Ordering::SeqCst);
        let len = [1, 4, 16, 48, 80][rng.below(5) as usize] * block;
        let off = rng.below((region - len) / block + 1) * block;
        let fua = if rng.below(4) == 0 { FUA } else { 0 };
        match rng.below(10) {
            0..=5 => {
                let data = pattern(len as usize, seed * 1_000_000 + cookie);
                c.request(fua, 1, cookie, off, len as u32, &data);
            }
            6 => c.request(fua, 4, cookie, off, len as u32, &[]),
            7 | 8 => {
                let mut flags = fua;
                if rng.below(2) == 0 {
                    flags |= NO_HOLE;
                }
                if rng.below(6) == 0 {
                    flags |= FAST_ZERO;
                    fast.lock().unwrap().insert(cookie);
                }
                c.request(flags, 6, cookie, off, len as u32, &[]);
            }
            _ => c.request(0, 3, cookie, 0, 0, &[]),
        }
    }
    if abandon {
        drop(c);
        return reader.join().unwrap();
    }
    let answered = reader.join().unwrap();
    assert_eq!(answered, count, "connection {seed}: not every request was answered");
    answered
}

/// CAN_MULTI_CONN under a race: four connections at once send overlapping
/// writes, TRIMs, WRITE_ZEROES and FLUSHes to the same 2 MiB, one of them
/// dropped with requests in flight. Whatever order the Primary applied
/// them in, the Secondary applied them in the same order (write-order
/// fidelity, invariant 6): once replication has drained, the two disks
/// are byte-identical (invariant 2).
fn racing_connections_end_identical(protocol: &str) {
    let p = Pair::start(protocol, "64M");
    let region = 2u64 << 20;
    let addr = p.nodes[0].nbd;
    for round in 0..3u64 {
        let racers: Vec<_> = (0..4u64)
            .map(|t| {
                let seed = round * 10 + t;
                std::thread::spawn(move || race(addr, seed, region, 400, t == 3))
            })
            .collect();
        let answered: u64 = racers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(answered >= 3 * 400, "round {round}: {answered} answered");
        p.wait_drained();
        // The abandoned connection's requests are all decided by now: a
        // FLUSH on a new one waits behind whatever it submitted.
        let out = run_qemu_io(&p.uri(0), &["flush"]);
        assert!(!out.contains("fail"), "{out}");
        p.wait_drained();
        let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
        let differ =
            (0..a.len() / 4096).filter(|&i| a[i * 4096..][..4096] != b[i * 4096..][..4096]);
        let differ: Vec<usize> = differ.collect();
        assert!(differ.is_empty(), "round {round}: blocks {differ:?} differ between the nodes");
        assert_eq!(p.status(0)["out_of_sync_bytes"], 0);
    }
}

#[test]
fn racing_connections_end_identical_in_c() {
    racing_connections_end_identical("C");
}

#[test]
fn racing_connections_end_identical_in_a() {
    racing_connections_end_identical("A");
}

/// The same race while the link goes and comes back under it: the
/// Secondary killed and started again, then the Primary's `disconnect`
/// and `connect`, then the Secondary's. FLUSHes and FUA requests are
/// answered without the peer, during the handshake and during the
/// resync that follows; every request is answered OK, and once the
/// resync is over the two disks are byte-identical.
#[test]
fn racing_connections_across_link_loss_and_resync_end_identical() {
    let mut p = Pair::start("C", "64M");
    let region = 2u64 << 20;
    let addr = p.nodes[0].nbd;
    for round in 0..3u64 {
        let racers: Vec<_> = (0..4u64)
            .map(|t| {
                let seed = 100 + round * 10 + t;
                std::thread::spawn(move || race(addr, seed, region, 1500, t == 3))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        match round {
            0 => {
                p.kill(1);
                std::thread::sleep(Duration::from_millis(300));
                p.up(1);
            }
            1 => {
                p.ok(&["disconnect"], 0);
                std::thread::sleep(Duration::from_millis(300));
                p.ok(&["connect"], 0);
            }
            _ => {
                p.ok(&["disconnect"], 1);
                std::thread::sleep(Duration::from_millis(300));
                p.ok(&["connect"], 1);
            }
        }
        assert!(
            racers.iter().any(|r| !r.is_finished()),
            "round {round}: the race was over before the link came back"
        );
        let answered: u64 = racers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(answered >= 3 * 1500, "round {round}: {answered} answered");
        p.wait_synced("the resync after the race", Duration::from_secs(60));
        let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
        let differ: Vec<usize> = (0..a.len() / 4096)
            .filter(|&i| a[i * 4096..][..4096] != b[i * 4096..][..4096])
            .collect();
        assert!(differ.is_empty(), "round {round}: blocks {differ:?} differ between the nodes");
    }
}

/// Adaptive mode under the race: the link's delay rises far past the
/// latency budget while four connections write, trim, zero and flush the
/// same blocks (the Primary goes Ahead with writes, TRIMs and FLUSHes in
/// flight to the peer, and answers FLUSHes alone), then falls (the
/// catch-up resync runs under the race, writes in C beside it). Once in
/// sync, the two disks are byte-identical.
#[test]
fn racing_connections_through_ahead_and_the_catch_up_end_identical() {
    let mut p = Pair::prepare("adaptive", "64M");
    let text = std::fs::read_to_string(&p.config).unwrap();
    let table = "\n[adaptive]\nlatency_budget = \"30ms\"\n[tls]";
    std::fs::write(&p.config, text.replacen("\n[tls]", table, 1)).unwrap();
    let (relay, b_addr) = p.route_b_through_relay();
    let mut link = netem_quiet(&relay, &b_addr, "0ms");
    p.up(0);
    p.up(1);
    p.ok(&["primary", "--force"], 0);
    p.wait_connected();
    p.wait_synced("the initial sync", Duration::from_secs(60));
    let region = 2u64 << 20;
    let addr = p.nodes[0].nbd;
    for round in 0..2u64 {
        let racers: Vec<_> = (0..4u64)
            .map(|t| {
                let seed = 200 + round * 10 + t;
                std::thread::spawn(move || race(addr, seed, region, 4000, t == 3))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        drop(link);
        link = netem_quiet(&relay, &b_addr, "100ms");
        let deadline = Instant::now() + Duration::from_secs(20);
        while p.status(0)["connection"] != "Ahead" {
            assert!(
                Instant::now() < deadline && racers.iter().any(|r| !r.is_finished()),
                "round {round}: the Primary did not go Ahead during the race"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        drop(link);
        link = netem_quiet(&relay, &b_addr, "0ms");
        let answered: u64 = racers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(answered >= 3 * 4000, "round {round}: {answered} answered");
        p.wait_synced("the catch-up after the race", Duration::from_secs(90));
        let (a, b) = (read_file(&p.nodes[0].disk), read_file(&p.nodes[1].disk));
        let differ: Vec<usize> = (0..a.len() / 4096)
            .filter(|&i| a[i * 4096..][..4096] != b[i * 4096..][..4096])
            .collect();
        assert!(differ.is_empty(), "round {round}: blocks {differ:?} differ between the nodes");
    }
    drop(link);
}

/// The first replicated writes of a new connection go at the link's pace
/// (found by review: right after a pair reached Established on loopback,
/// 4 KiB writes took 10 to 40 ms each, where they take about a
/// millisecond: each node's link thread spent some 7 ms on every QUIC MTU
/// discovery probe, up to 64 KiB of PADDING frames that a quinn-proto
/// built without optimisation parsed one byte at a time, 12 probes each
/// way in the connection's first 300 ms, and the writes waited behind
/// them). Protocol C, QD1, right after each of three reconnections; the
/// first write of the pair's life (it clears `fresh` in both metadata
/// records, a save with fsyncs) is made before.
#[test]
fn the_first_writes_after_the_pair_connects_do_not_wait_for_the_link_to_settle() {
    let p = Pair::start("C", "16M");
    let mut c = Client::go_addr(p.nodes[0].nbd, false);
    let block = pattern(4096, 7);
    let mut cookie = 0u64;
    let mut write = |c: &mut Client, off: u64| {
        cookie += 1;
        c.request(0, 1, cookie, off, 4096, &block);
        assert_eq!(c.simple_reply(), (0, cookie), "write at {off}");
    };
    write(&mut c, 0);
    p.wait_drained();
    for round in 1..=3 {
        p.ok(&["disconnect"], 0);
        p.ok(&["disconnect"], 1);
        p.ok(&["connect"], 0);
        p.ok(&["connect"], 1);
        // As a user's script would: at once, not 100 ms later.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = p.status(0);
            if s["connection"] == "Connected" && s["replication"] == "Established" {
                // A loopback link starts at loopback's datagram size: no
                // MTU search to wait behind (before: 1200 bytes here).
                assert_eq!(s["link"]["path_mtu"], 65507, "round {round}: {s}");
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: never Established: {s}");
        }
        let mut took = Vec::new();
        for i in 0..20u64 {
            let start = Instant::now();
            write(&mut c, i * 4096);
            took.push(start.elapsed());
        }
        // (Timed in the benchmarks, not here: printed for the reader.)
        let total: Duration = took.iter().sum();
        eprintln!("round {round}: the first 20 writes took {total:?}: {took:?}");
        let s = p.status(0);
        assert_eq!(s["replication"], "Established", "round {round}: {s}");
        assert_eq!(s["out_of_sync_bytes"], 0, "round {round}: {s}");
    }
}

/// A full sync of a mostly empty device sent its holes as zeroes and the
/// target wrote them: a sparse target file (or a thin volume) was filled
/// to the device's size (a 16 TiB pair's target allocated 1.5 GB in its
/// first 15 s, and would have needed 16 TiB; review). An all-zero resync
/// chunk is now made zeroes on the target by a punched range, as a TRIM
/// is: the target stays as sparse as the source, and reads the same.
#[test]
fn a_full_sync_of_a_mostly_empty_disk_keeps_the_target_sparse() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    const SIZE: u64 = 128 << 20;
    let p = Pair::prepare("C", "128M");
    // a's disk was there before twinblock (not made by it): its force
    // takes b through a full sync. 1 MiB of data, the rest a hole.
    let disk = std::fs::File::create(&p.nodes[0].disk).unwrap();
    disk.set_len(SIZE).unwrap();
    disk.write_all_at(&[0x5a; 1 << 20], 64 << 20).unwrap();
    drop(disk);
    let p = p.bring_up();
    p.wait_both_synced("the full sync", Duration::from_secs(60));
    let sent = p.status(0)["counters"]["resync_bytes"].as_u64().unwrap();
    assert_eq!(sent, SIZE, "not a full sync");
    assert!(read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk), "disks differ");
    let allocated = std::fs::metadata(&p.nodes[1].disk).unwrap().blocks() * 512;
    assert!(allocated <= 8 << 20, "the target allocated {allocated} bytes for 1 MiB of data");
}

/// Node `i`'s `link.bytes_sent` once it counts at least `least` bytes
/// (the link's counters are refreshed every `ping-interval`).
fn link_sent_at_least(p: &Pair, i: usize, least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let sent = p.status(i)["link"]["bytes_sent"].as_u64().unwrap_or(0);
        if sent >= least || Instant::now() > deadline {
            return sent;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A full sync of a mostly empty device sent every zero it read over the
/// link: 256 MiB crossed it for 2 MiB of data (the README's 16 TiB pair
/// took some 41 h at 1 Gbit/s, whatever it held). An all-zero chunk now
/// crosses as its range alone: the source's link counts little more
/// than the data, and the target ends identical and sparse.
#[test]
fn a_full_sync_of_a_mostly_empty_disk_sends_its_data_not_its_zeroes() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    const SIZE: u64 = 256 << 20;
    let p = Pair::prepare("C", "256M");
    let disk = std::fs::File::create(&p.nodes[0].disk).unwrap();
    disk.set_len(SIZE).unwrap();
    disk.write_all_at(&[0x5a; 1 << 20], 64 << 20).unwrap();
    disk.write_all_at(&[0xa5; 1 << 20], 200 << 20).unwrap();
    drop(disk);
    let p = p.bring_up();
    p.wait_both_synced("the full sync", Duration::from_secs(120));
    for i in 0..2 {
        let moved = p.status(i)["counters"]["resync_bytes"].as_u64().unwrap();
        assert_eq!(moved, SIZE, "node {i}: not a full sync");
    }
    let sent = link_sent_at_least(&p, 0, 2 << 20);
    assert!(
        (2 << 20..SIZE / 16).contains(&sent),
        "a's link sent {sent} bytes for 2 MiB of data in {SIZE}"
    );
    assert!(read_file(&p.nodes[0].disk) == read_file(&p.nodes[1].disk), "disks differ");
    let allocated = std::fs::metadata(&p.nodes[1].disk).unwrap().blocks() * 512;
    assert!(allocated <= 8 << 20, "the target allocated {allocated} bytes for 2 MiB of data");
}

/// The data ranges of a file (`SEEK_DATA`/`SEEK_HOLE`), up to `size`.
fn data_ranges(f: &std::fs::File, size: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        // SAFETY: plain syscalls on an open descriptor.
        let data = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            break; // ENXIO: no data after `pos`
        }
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        let end = if hole < 0 { size } else { (hole as u64).min(size) };
        out.push((data as u64, end));
        pos = end;
    }
    out
}

/// Whether two sparse files of `size` read the same: compared where
/// either holds data (where both are holes, both read zeroes).
fn same_sparse(a: &std::path::Path, b: &std::path::Path, size: u64) -> Result<(), String> {
    use std::os::unix::fs::FileExt;
    let (fa, fb) = (std::fs::File::open(a).unwrap(), std::fs::File::open(b).unwrap());
    let mut ranges = data_ranges(&fa, size);
    ranges.extend(data_ranges(&fb, size));
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    for (start, end) in ranges {
        let mut at = start;
        while at < end {
            let n = (end - at).min(1 << 20) as usize;
            fa.read_exact_at(&mut x[..n], at).unwrap();
            fb.read_exact_at(&mut y[..n], at).unwrap();
            if x[..n] != y[..n] {
                return Err(format!("the disks differ in {at}+{n}"));
            }
            at += n as u64;
        }
    }
    Ok(())
}

/// `rchar` of process `pid` (bytes it passed to read(2) and kin).
fn rchar(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines().find_map(|l| l.strip_prefix("rchar: ")).and_then(|v| v.trim().parse().ok()).unwrap()
}

/// A full sync from a large sparse disk read every hole: a 16 TiB file
/// holding little was read whole (16 TiB of zeroes) only to send its
/// chunks as ranges of zeroes. The source now asks the file system where
/// the data is (`SEEK_DATA`) and sends a hole's chunks unread: of an
/// 8 GiB file with 4 MiB of data spread over it, the source reads a few
/// MiB (`counters.resync_read_bytes`, and the process's own `rchar`),
/// and the disks end identical.
#[test]
fn a_full_sync_of_a_sparse_disk_reads_its_data_not_its_holes() {
    use std::os::unix::fs::{FileExt, MetadataExt};
    const SIZE: u64 = 8 << 30;
    let p = Pair::prepare("C", "8G");
    let disk = std::fs::File::create(&p.nodes[0].disk).unwrap();
    disk.set_len(SIZE).unwrap();
    // 16 runs of 256 KiB off the chunks' bounds, four across two chunks.
    for i in 0..16u64 {
        let within = if i == 5 { (1 << 20) - (128 << 10) } else { 12288 + i * 65536 };
        disk.write_all_at(&pattern(256 << 10, i), i * (SIZE / 16) + within).unwrap();
    }
    drop(disk);
    let started = Instant::now();
    let p = p.bring_up();
    let pid = p.nodes[0].child.as_ref().unwrap().id();
    p.wait_both_synced("the full sync", Duration::from_secs(120));
    let took = started.elapsed();
    // (Since the process started: its files and sockets too.)
    let read = rchar(pid);
    let a = p.status(0);
    let counted = a["counters"]["resync_read_bytes"].as_u64().unwrap();
    assert_eq!(a["counters"]["resync_bytes"].as_u64(), Some(SIZE), "not a full sync: {a}");
    assert!(
        (4 << 20..=32 << 20).contains(&counted),
        "the source read {counted} bytes of an {SIZE}-byte disk holding 4 MiB"
    );
    assert!(read < 64 << 20, "the source process read {read} bytes (rchar) in {took:?}");
    same_sparse(&p.nodes[0].disk, &p.nodes[1].disk, SIZE).unwrap();
    let allocated = std::fs::metadata(&p.nodes[1].disk).unwrap().blocks() * 512;
    assert!(allocated <= 40 << 20, "the target allocated {allocated} bytes for 4 MiB of data");
    eprintln!("8 GiB sparse full sync: {took:?}, source read {counted} bytes (rchar {read})");
}

/// The application writes into the holes of a sparse source (and its
/// data) all through its full sync: a write racing the hole probe of its
/// chunk is never lost (the probe is ordered against writes as a read
/// is), and the disks end identical.
#[test]
fn writes_into_a_sparse_sources_holes_during_its_full_sync_end_identical() {
    use std::os::unix::fs::FileExt;
    if !have("qemu-io") {
        return;
    }
    // (A sync of some seconds, its holes probed all along. A write makes
    // its chunk data, read whole: few enough writes that the resync, at
    // the default `resync-rate` while they run, is not held up by them.)
    const SIZE: u64 = 32 << 30;
    let p = Pair::prepare("C", "32G");
    let disk = std::fs::File::create(&p.nodes[0].disk).unwrap();
    disk.set_len(SIZE).unwrap();
    for i in 0..4u64 {
        disk.write_all_at(&pattern(1 << 20, i), i * (SIZE / 4) + (256 << 20) + 4096).unwrap();
    }
    drop(disk);
    // a Primary alone, writing, before b starts: the sync starts under
    // the writes.
    let mut p = p;
    p.up(0);
    p.ok(&["primary", "--force"], 0);
    let (stop, batches) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let (uri, stop, batches) = (p.uri(0), stop.clone(), batches.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let b = batches.load(Ordering::Relaxed);
                let writes: Vec<String> = (0..8u64)
                    .map(|k| {
                        let n = b * 8 + k;
                        let off = (n.wrapping_mul(2_654_435_761) % (SIZE / 4096)) * 4096;
                        format!("write -P {} {off} 4k", n % 255 + 1)
                    })
                    .collect();
                run_qemu_io(&uri, &writes);
                batches.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    p.up(1);
    p.wait("the sync to start", Duration::from_secs(20), |a, _| !a["sync"].is_null());
    let first = batches.load(Ordering::Relaxed);
    p.wait("the sync to end", Duration::from_secs(120), |a, _| a["sync"].is_null());
    let during = batches.load(Ordering::Relaxed) - first;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(during >= 2, "only {during} batches of writes ran during the sync");
    p.wait_both_synced("the full sync", Duration::from_secs(120));
    same_sparse(&p.nodes[0].disk, &p.nodes[1].disk, SIZE).unwrap();
    eprintln!("{during} batches of 8 writes ran during the sync");
}

/// Data and zeroes interleaved at every scale (whole 1 MiB chunks, 4 KiB
/// blocks within a chunk, one byte in a chunk of zeroes), into a target
/// full of other bytes: the zero chunks cross as ranges, the target
/// reads the same as the source everywhere, with and without
/// `resync-checksum` (whose differing runs may be zeroes too).
#[test]
fn a_full_sync_of_interleaved_data_and_zeroes_ends_identical() {
    use std::os::unix::fs::FileExt;
    const SIZE: u64 = 64 << 20;
    for checksum in [false, true] {
        let p = Pair::prepare("C", "64M");
        if checksum {
            p.configure("resync-checksum = true");
        }
        let mut data = vec![0u8; SIZE as usize];
        let mut nonzero = 0u64;
        for (chunk, c) in data.chunks_mut(1 << 20).enumerate() {
            match chunk % 4 {
                // Data throughout.
                0 => c.copy_from_slice(&pattern(1 << 20, chunk as u64)),
                // Every other 4 KiB block.
                1 => {
                    for (n, b) in c.chunks_mut(4096).enumerate() {
                        if n % 2 == 0 {
                            b.fill(chunk as u8 | 1);
                        }
                    }
                }
                // One byte.
                2 => c[777] = 1,
                _ => {}
            }
            nonzero += u64::from(chunk % 4 != 3) << 20;
        }
        std::fs::write(&p.nodes[0].disk, &data).unwrap();
        let b = std::fs::File::create(&p.nodes[1].disk).unwrap();
        for at in (0..SIZE).step_by(1 << 20) {
            b.write_all_at(&[0xee; 1 << 20], at).unwrap();
        }
        drop(b);
        let p = p.bring_up();
        p.wait_both_synced("the full sync", Duration::from_secs(120));
        let sent = link_sent_at_least(&p, 0, nonzero);
        assert!(
            sent < nonzero + SIZE / 8,
            "checksum {checksum}: a's link sent {sent} bytes for {nonzero} bytes of chunks \
             with data in {SIZE}"
        );
        assert!(read_file(&p.nodes[1].disk) == data, "checksum {checksum}: the target differs");
    }
}
