//! `twinblock bench` end to end (issue 10, point 2): on a real pair it
//! reports the link and modes A/B/C at QD1 and QD32 as JSON a program can
//! read and as an SVG plot, its probes reach both nodes' scratch areas and
//! never the device (checksums of both disks before and after), it is
//! refused where it cannot measure, stops cleanly when the peer dies, and
//! `--rtt` measures a local pair through a netem relay.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::pair::{tail, Pair};
use common::*;

fn checksum(path: &Path) -> u32 {
    crc32fast::hash(&std::fs::read(path).unwrap())
}

fn bench(pair: &Pair, i: usize, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--time", "300ms"];
    args.extend_from_slice(extra);
    pair.cli("bench", &args, i)
}

/// A bench on node a in the background (output piped).
fn spawn_bench(pair: &Pair, time: &str) -> std::process::Child {
    Command::new(BIN)
        .args(["bench", "--config"])
        .arg(&pair.config)
        .args(["--node", "a", "--time", time])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn check_report(j: &serde_json::Value) {
    let runs = j["runs"].as_array().expect("runs");
    let mut seen = Vec::new();
    for r in runs {
        let (mode, qd) = (r["mode"].as_str().unwrap(), r["queue_depth"].as_u64().unwrap());
        seen.push(format!("{mode}{qd}"));
        assert!(r["ops"].as_u64().unwrap() > 0, "{mode} QD{qd} completed nothing: {r}");
        assert!(r["iops"].as_f64().unwrap() > 0.0);
        let l = &r["latency"];
        let (p50, p99, p999) = (
            l["p50_us"].as_f64().unwrap(),
            l["p99_us"].as_f64().unwrap(),
            l["p999_us"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{mode} QD{qd}: {l}");
        assert!(l["cdf"].as_array().unwrap().len() > 10);
    }
    assert_eq!(seen, ["A1", "A32", "B1", "B32", "C1", "C32"]);
    assert!(j["link"]["rtt"]["p50_us"].as_f64().unwrap() > 0.0);
    assert!(j["link"]["throughput_mib_s"].as_f64().unwrap() > 0.0);
    let rec = j["recommendation"]["mode"].as_str().unwrap();
    assert!(["A", "B", "C", "adaptive"].contains(&rec), "{rec}");
    assert!(!j["recommendation"]["why"].as_str().unwrap().is_empty());
}

/// A well-formed SVG with one curve per run and the link's.
fn check_svg(path: &Path) {
    let svg = std::fs::read_to_string(path).unwrap();
    assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.matches("<polyline").count() >= 7, "{svg}");
    if have("python3") {
        let ok = Command::new("python3")
            .args(["-c", "import sys,xml.etree.ElementTree as E; r=E.parse(sys.argv[1]).getroot(); assert r.tag.endswith('svg')"])
            .arg(path)
            .status()
            .unwrap();
        assert!(ok.success(), "the plot is not well-formed XML");
    }
}

#[test]
fn bench_reports_json_and_a_plot_and_leaves_both_disks_unchanged() {
    let pair = Pair::start("C", "16M");
    // Data on the device first: the bench must not change a byte of it.
    if have("qemu-io") {
        pair.qemu_io(0, "write -P 0x5a 0 4M");
    } else {
        assert!(std::env::var("CI").is_err(), "qemu-io is missing (scripts/setup.sh)");
        eprintln!("skip writing a pattern first: qemu-io missing");
    }
    pair.wait_drained();
    let before = (checksum(&pair.nodes[0].disk), checksum(&pair.nodes[1].disk));
    let gen = pair.status(0)["generation"].clone();
    let plot = pair.dir.path().join("bench.svg");
    let w = bench(&pair, 0, &["--json", "--plot", plot.to_str().unwrap()]);
    assert!(
        w.status.success(),
        "bench failed: {}\nlog a:\n{}\nlog b:\n{}",
        String::from_utf8_lossy(&w.stderr),
        tail(&pair.log(0)),
        tail(&pair.log(1))
    );
    let j: serde_json::Value = serde_json::from_slice(&w.stdout).expect("bench --json is JSON");
    check_report(&j);
    assert_eq!(j["node"], "a");
    assert_eq!(j["peer"], "b");
    check_svg(&plot);
    // Progress went to stderr while it ran.
    assert!(String::from_utf8_lossy(&w.stderr).contains("[8/8]"));
    pair.wait_drained();
    assert_eq!(
        (checksum(&pair.nodes[0].disk), checksum(&pair.nodes[1].disk)),
        before,
        "the bench changed the device"
    );
    let st = pair.status(0);
    assert_eq!(st["out_of_sync_bytes"], 0);
    assert_eq!(st["generation"], gen, "the bench started a data generation");
    assert_eq!(st["connection"], "Connected");
    // The probes landed in both scratch areas (beside the metadata).
    for n in ["a", "b"] {
        let scratch = std::fs::read(pair.dir.path().join(format!("{n}.meta.bench"))).unwrap();
        assert_eq!(scratch.len() as u64, 64 << 20);
        assert!(scratch[..4096].iter().any(|&b| b != 0), "no probe reached {n}'s scratch area");
    }
    // The table for people.
    let t = bench(&pair, 0, &[]);
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let text = String::from_utf8_lossy(&t.stdout);
    assert!(text.contains("recommendation for a") && text.contains("link  RTT"), "{text}");
}

#[test]
fn bench_is_refused_where_it_cannot_measure() {
    let mut pair = Pair::start("C", "16M");
    let out = bench(&pair, 1, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Primary"));
    // A bad command line is refused before anything runs, with exit code
    // 2 and the option named: a plot that is not SVG or could not be
    // written (found after minutes of measuring, before), a probe size
    // the node refuses, no time to measure, a zero budget.
    for (args, says) in [
        (&["--plot", "/tmp/x.png"][..], ".svg"),
        (&["--plot", "/nonexistent-dir/x.svg"][..], "no directory /nonexistent-dir"),
        (&["--plot", "/proc/x.svg"][..], "cannot write it"),
        (&["--block-size", "1000"][..], "--block-size"),
        (&["--block-size", "0"][..], "--block-size"),
        (&["--block-size", "2M"][..], "--block-size"),
        (&["--time", "0s"][..], "give 100ms to 10min"),
        (&["--budget", "0s"][..], "--budget"),
    ] {
        let start = Instant::now();
        // (Not `bench`, whose own --time would be a clap error of its own.)
        let out = pair.cli("bench", args, 0);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(start.elapsed() < Duration::from_secs(5), "{args:?} measured first");
    }
    // One bench at a time.
    let first = KillOnDrop(spawn_bench(&pair, "1s"));
    std::thread::sleep(Duration::from_millis(1500));
    let out = bench(&pair, 0, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));
    drop(first);
    std::thread::sleep(Duration::from_millis(500));
    // The client that went away stopped its bench: the next one runs.
    let again = pair.cli("bench", &["--time", "100ms"], 0);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    pair.ok(&["disconnect"], 0);
    let out = bench(&pair, 0, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not connected"));
    // (Until it has exited, a stopping node still answers, refusing: CI
    // saw its `down` take 544 ms on a loaded machine, past a fixed wait.)
    assert!(pair.down(1).success());
    assert_eq!(bench(&pair, 1, &[]).status.code(), Some(3), "node b is not running");
}

#[test]
fn bench_stops_cleanly_when_the_peer_dies_and_the_primary_goes_on() {
    let mut pair = Pair::start("C", "16M");
    let child = spawn_bench(&pair, "3s");
    std::thread::sleep(Duration::from_secs(4));
    let b = pair.nodes[1].child.as_mut().unwrap();
    b.kill().unwrap();
    b.wait().unwrap();
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    assert!(start.elapsed() < Duration::from_secs(20), "bench hung after the peer died");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bench stopped"));
    pair.wait_unlinked(0);
    // The Primary still serves and its device is intact.
    if have("qemu-io") {
        pair.qemu_io(0, "write -P 0x11 0 64k");
        assert!(pair.qemu_io(0, "read -P 0x11 0 64k").contains("read 65536/65536"));
    }
    assert_eq!(pair.status(0)["disk"], "UpToDate");
}

#[test]
fn bench_rtt_measures_a_local_pair_through_a_relay() {
    let tmp = tempfile::Builder::new().prefix("tb-bench-rtt").tempdir_in(test_tmp()).unwrap();
    let out = Command::new(BIN)
        .args(["bench", "--rtt", "10ms", "--time", "300ms", "--json"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "bench --rtt failed: {}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    check_report(&j);
    let ms = |v: &serde_json::Value| v.as_f64().unwrap() / 1000.0;
    let rtt = ms(&j["link"]["rtt"]["p50_us"]);
    assert!((10.0..25.0).contains(&rtt), "link RTT {rtt} ms through a 10 ms relay");
    let qd1 = |mode: &str| {
        j["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["mode"] == mode && r["queue_depth"] == 1)
            .unwrap()
            .clone()
    };
    let (c1, a1) = (qd1("C"), qd1("A"));
    assert!(ms(&c1["latency"]["p50_us"]) >= 10.0, "C waits for the peer: {c1}");
    assert!(ms(&a1["latency"]["p50_us"]) < 10.0, "A does not: {a1}");
    // With a 2 ms default budget C does not fit a 10 ms link.
    assert_ne!(j["recommendation"]["mode"], "C");
    // The throw-away pair is gone.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "the local pair left files");
}

/// Processes whose command line names `needle`.
fn processes_naming(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

/// `bench --rtt` stopped by a signal (a service manager's SIGTERM, a
/// Ctrl-C, the hang-up of the terminal or ssh session it ran in) stops its
/// local pair and removes its directory, as a finished run does; killed
/// outright, its pair's processes still end with it. Before, SIGTERM left
/// both nodes and the relay running for ever and the directory (keys,
/// both disks, both scratch areas) behind (found by review); SIGHUP left
/// the directory (review, helper-148).
#[test]
fn bench_rtt_interrupted_leaves_no_process_nor_file() {
    for (signal, code) in [
        (libc::SIGTERM, Some(143)),
        (libc::SIGINT, Some(130)),
        (libc::SIGHUP, Some(129)),
        (libc::SIGKILL, None),
    ] {
        let tmp = tempfile::Builder::new().prefix("tb-bench-sig").tempdir_in(test_tmp()).unwrap();
        let mut cmd = Command::new(BIN);
        // As from a terminal: SIGINT and SIGHUP at their defaults. (A test
        // run started in the background by a script inherits SIGINT
        // ignored, which the bench then keeps ignoring, as under `nohup`:
        // CI ran it so, and the SIGINT case ran out its 60 s.)
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGHUP, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = cmd
            .args(["bench", "--rtt", "2ms", "--time", "60s"])
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Until the pair measures (its Primary's socket and a relay up).
        let deadline = Instant::now() + Duration::from_secs(60);
        let dir = loop {
            let dir = std::fs::read_dir(tmp.path()).unwrap().flatten().next().map(|e| e.path());
            if let Some(d) = dir.filter(|d| d.join("a.sock").exists() && d.join("b.sock").exists())
            {
                break d;
            }
            assert!(Instant::now() < deadline, "the local pair never started");
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_secs(2));
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            processes_naming(&name).len(),
            2,
            "both nodes run: {:?}",
            processes_naming(&name)
        );
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), code, "{signal}: {status:?}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !processes_naming(&name).is_empty() || (code.is_some() && dir.exists()) {
            assert!(
                Instant::now() < deadline,
                "signal {signal}: left behind: {:?}, directory there: {}",
                processes_naming(&name),
                dir.exists()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // (SIGKILL: nothing can remove the directory; the processes end.)
    }
}

/// `bench --rtt` started ignoring SIGHUP (`nohup`, to outlive the session
/// that started it) goes on through a hang-up, and SIGTERM still stops
/// and removes its pair. (Handling SIGHUP to clean up, review helper-148,
/// at first replaced the ignore it was started with: `nohup twinblock
/// bench --rtt ...` then ended at logout.)
#[test]
fn bench_rtt_under_nohup_outlives_a_hang_up() {
    let tmp = tempfile::Builder::new().prefix("tb-bench-nohup").tempdir_in(test_tmp()).unwrap();
    let mut child = Command::new("sh")
        .args(["-c", "trap '' HUP; exec \"$0\" bench --rtt 2ms --time 60s", BIN])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let dir = loop {
        let dir = std::fs::read_dir(tmp.path()).unwrap().flatten().next().map(|e| e.path());
        if let Some(d) = dir.filter(|d| d.join("a.sock").exists() && d.join("b.sock").exists()) {
            break d;
        }
        assert!(Instant::now() < deadline, "the local pair never started");
        std::thread::sleep(Duration::from_millis(50));
    };
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_secs(2));
    assert!(child.try_wait().unwrap().is_none(), "a hang-up ended a bench that ignores it");
    assert!(dir.exists(), "a hang-up removed the pair");
    assert_eq!(processes_naming(&name).len(), 2, "{:?}", processes_naming(&name));
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !processes_naming(&name).is_empty() || dir.exists() {
        assert!(Instant::now() < deadline, "SIGTERM left {:?}", processes_naming(&name));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Both nodes UpToDate, connected, nothing out of sync, still on
/// generation `gen` (a bench changes none of it).
fn assert_healthy(pair: &Pair, gen: &serde_json::Value, why: &str) {
    for i in 0..2 {
        let st = pair.status(i);
        assert_eq!(st["disk"], "UpToDate", "{why}: node {i}: {st}");
        assert_eq!(st["connection"], "Connected", "{why}: node {i}: {st}");
        assert_eq!(st["out_of_sync_bytes"], 0, "{why}: node {i}: {st}");
    }
    assert_eq!(&pair.status(0)["generation"], gen, "{why}: a new data generation");
}

#[test]
fn a_scratch_area_that_cannot_be_written_stops_the_bench_and_nothing_else() {
    let pair = Pair::start("C", "16M");
    let gen = pair.status(0)["generation"].clone();
    let healthy = |why: &str| assert_healthy(&pair, &gen, why);
    // Both scratch areas are directories: the Primary's is made ready
    // before the bench starts, and the bench is refused, naming it.
    let a = pair.dir.path().join("a.meta.bench");
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(pair.dir.path().join("b.meta.bench")).unwrap();
    let out = bench(&pair, 0, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a.meta.bench") && err.contains("Is a directory"), "{err}");
    assert!(!err.contains("[1/8]"), "measured before refusing: {err}");
    healthy("the scratch areas failed");
    // The Primary's is fine now; the peer's still fails: A and B, which
    // do not wait for the peer's write, run; C stops the bench.
    std::fs::remove_dir(&a).unwrap();
    let out = bench(&pair, 0, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bench stopped: protocol C"), "{err}");
    healthy("the peer's scratch area failed");
    // Every probe of the A and B runs failed on b (thousands): its log
    // says so a few times, not once per probe, and so does a's.
    let lines = pair.log(1).lines().filter(|l| l.contains("bench scratch")).count();
    assert!((1..=8).contains(&lines), "{lines} lines about the scratch area in b's log");
    let lines = pair.log(0).lines().filter(|l| l.contains("failed bench probes")).count();
    assert!((1..=8).contains(&lines), "{lines} lines about b's scratch area in a's log");
    // User writes still replicate.
    if have("qemu-io") {
        pair.qemu_io(0, "write -P 0x22 0 64k");
        pair.wait_drained();
        healthy("after a user write");
    }
}

#[test]
fn a_verb_that_ends_the_measurement_mid_bench_is_named_in_the_error() {
    let pair = Pair::start("C", "16M");
    let child = Command::new(BIN)
        .args(["bench", "--config"])
        .arg(&pair.config)
        .args(["--node", "a", "--time", "2s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    pair.ok(&["secondary"], 0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bench stopped") && err.contains("Primary"), "{err}");
    let st = pair.status(0);
    assert_eq!(st["connection"], "Connected", "{st}");
    assert_eq!(st["out_of_sync_bytes"], 0, "{st}");
}

/// `down` on the Primary mid-bench: the bench says the node is stopping.
/// Before, it said "bench stopped: ...: bench runs on the Primary (it
/// measures the writes it replicates)": the stop's own demotion, read as
/// if the operator had run the bench on a Secondary.
#[test]
fn a_bench_stopped_by_down_says_the_node_is_stopping() {
    let mut pair = Pair::start("C", "16M");
    let child = spawn_bench(&pair, "3s");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(pair.down(0).success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopping"), "{err}");
    assert!(!err.contains("bench runs on the Primary"), "{err}");
}

/// Small file systems (tmpfs) for the nodes' metadata, unmounted and
/// removed when dropped (after the pair, declared after it, is gone).
struct MetaVolumes(tempfile::TempDir);

impl MetaVolumes {
    fn mount(mib: &[u64; 2]) -> MetaVolumes {
        let dir = tempfile::Builder::new().prefix("tb-metavol").tempdir_in(test_tmp()).unwrap();
        for (n, mib) in ["a", "b"].iter().zip(mib) {
            let at = dir.path().join(n);
            std::fs::create_dir(&at).unwrap();
            run_ok(
                Command::new("mount")
                    .args(["-t", "tmpfs", "-o", &format!("size={mib}M"), "tmpfs"])
                    .arg(&at),
            );
        }
        MetaVolumes(dir)
    }

    fn meta(&self, n: &str) -> std::path::PathBuf {
        self.0.path().join(n).join(format!("{n}.meta"))
    }

    fn resize(&self, n: &str, mib: u64) {
        let at = self.0.path().join(n);
        run_ok(Command::new("mount").args(["-o", &format!("remount,size={mib}M")]).arg(&at));
    }

    fn free_mib(&self, n: &str) -> u64 {
        let out =
            run_ok(Command::new("df").args(["--output=avail", "-B1M"]).arg(self.0.path().join(n)));
        out.lines().nth(1).and_then(|l| l.trim().parse().ok()).unwrap()
    }
}

impl Drop for MetaVolumes {
    fn drop(&mut self) {
        for n in ["a", "b"] {
            let _ = Command::new("umount").arg(self.0.path().join(n)).status();
        }
    }
}

/// A bench never fills the metadata's file system: its scratch area (64
/// MiB, beside the metadata) is reserved only where 64 MiB stay free
/// besides. Before, a bench on 40 MiB metadata volumes filled both; the
/// device then refused writes with ENOSPC (its metadata updates failed),
/// even after a restart.
#[test]
fn a_bench_never_fills_the_metadata_volume() {
    if !root("mounting small file systems for the metadata") {
        return;
    }
    let vols = MetaVolumes::mount(&[40, 40]);
    let pair = Pair::prepare("C", "16M");
    let text = std::fs::read_to_string(&pair.config).unwrap();
    let text = ["a", "b"].iter().fold(text, |t, n| {
        t.replace(
            &format!("meta = \"{n}.meta\""),
            &format!("meta = \"{}\"", vols.meta(n).display()),
        )
    });
    std::fs::write(&pair.config, text).unwrap();
    let pair = pair.bring_up();
    pair.wait_synced("the initial sync", Duration::from_secs(60));
    let gen = pair.status(0)["generation"].clone();
    let healthy = |why: &str| assert_healthy(&pair, &gen, why);
    let (free_a, free_b) = (vols.free_mib("a"), vols.free_mib("b"));
    // The Primary's area has no room: refused before measuring, saying why.
    let out = bench(&pair, 0, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a.meta.bench") && err.contains("must stay free"), "{err}");
    assert!(
        vols.free_mib("a") + 1 >= free_a,
        "a's volume: {} MiB free, {free_a} before",
        vols.free_mib("a")
    );
    healthy("refused for want of room");
    // Room on a, none on b: the peer's probes fail (C stops the bench),
    // b's volume keeps its room, its log says why, the device goes on.
    vols.resize("a", 256);
    let out = bench(&pair, 0, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bench stopped") && err.contains("No space left"), "{err}");
    assert!(
        vols.free_mib("b") + 1 >= free_b,
        "b's volume: {} MiB free, {free_b} before",
        vols.free_mib("b")
    );
    assert!(pair.log(1).contains("must stay free"), "{}", pair.log(1));
    healthy("the peer's area had no room");
    if have("qemu-io") {
        pair.qemu_io(0, "write -P 0x5a 0 64k");
        pair.wait_drained();
        healthy("after a user write");
    }
    // Room on both: the bench runs.
    vols.resize("b", 256);
    let out = bench(&pair, 0, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    healthy("after a bench");
}

/// `bench --rtt` interrupted while it sets its pair up (certificates,
/// resource file, processes starting) leaves nothing either. Before, a
/// signal while `gen-certs` was writing left `certs/` with the private
/// keys behind (found by review; here signals 2–6 ms after the start did
/// it, on a loaded machine 30–75 ms).
#[test]
fn bench_rtt_interrupted_while_starting_leaves_nothing() {
    let tmp = tempfile::Builder::new().prefix("tb-bench-early").tempdir_in(test_tmp()).unwrap();
    for ms in (2..=100).step_by(2) {
        let mut child = Command::new(BIN)
            .args(["bench", "--rtt", "2ms", "--time", "60s"])
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        // (143: handled; killed by it: sent before the handler was set.)
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.code() == Some(143) || status.signal() == Some(libc::SIGTERM),
            "SIGTERM at {ms} ms: {status:?}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left: Vec<_> =
                std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect();
            if left.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "SIGTERM at {ms} ms left {left:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A round trip the local pair cannot hold is refused at once, exit 2,
/// naming `--rtt` (found by review: `--rtt 20s` set a pair up, waited 30 s
/// and said "timed out waiting for node a connected to b").
#[test]
fn bench_rtt_beyond_what_a_local_pair_holds_is_refused_naming_it() {
    let tmp = tempfile::Builder::new().prefix("tb-bench-rtt-big").tempdir_in(test_tmp()).unwrap();
    for rtt in ["20s", "1h"] {
        let t0 = Instant::now();
        let out = Command::new(BIN)
            .args(["bench", "--rtt", rtt, "--time", "100ms"])
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--rtt {rtt}: {err}");
        assert!(err.contains("--rtt"), "--rtt {rtt}: {err}");
        assert!(t0.elapsed() < Duration::from_secs(5), "--rtt {rtt} took {:?}", t0.elapsed());
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "a refused bench left files");
}

/// A run that completes no probe within its measuring time (a round trip
/// longer than the warm-up and the run) stops the bench naming `--time`
/// (found by review: `--rtt 1s --time 100ms` reported every run at 0 ops,
/// "link RTT p50 0.000 ms", and recommended protocol A from nothing).
#[test]
fn a_run_that_completes_no_probe_stops_the_bench_naming_time() {
    let tmp = tempfile::Builder::new().prefix("tb-bench-none").tempdir_in(test_tmp()).unwrap();
    let out = Command::new(BIN)
        .args(["bench", "--rtt", "600ms", "--time", "100ms", "--json"])
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("no probe completed") && err.contains("--time"), "{err}");
    assert!(
        out.stdout.is_empty(),
        "a report from nothing: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "the local pair left files");
}

/// A negative duration is refused naming the option and saying what is
/// wrong, exit 2 (found by review: `--rtt -2ms` said "unexpected argument
/// '-2' found", as if the value were another option).
#[test]
fn bench_names_a_negative_duration() {
    for args in [
        &["--rtt", "-2ms"][..],
        &["--rtt", "2ms", "--time", "-1s"],
        &["--rtt", "2ms", "--budget", "-3ms"],
    ] {
        let out = Command::new(BIN).arg("bench").args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let opt = args[args.len() - 2];
        assert!(err.contains(opt) && err.contains("cannot be negative"), "{args:?}: {err}");
    }
}

/// `--plot` through a symlink whose target does not exist yet (`latest.svg`
/// naming the file of the day) keeps the symlink: the check that the plot
/// can be written removes the file it made, not the link. Before, the
/// link was removed and an empty file left at its target, whether the
/// bench then ran or not (found by review, helper-148). A budget below a
/// microsecond is refused naming `--budget`, as `0s` is (before, `500ns`
/// was measured against a budget of 0: "recommendation for a 0.000 ms
/// budget"). Both are checked before the node is asked: no pair needed.
#[test]
fn bench_options_are_checked_without_damage() {
    let dir = tempfile::Builder::new().prefix("tb-bench-plot").tempdir_in(test_tmp()).unwrap();
    let link = dir.path().join("latest.svg");
    let target = dir.path().join("day1.svg");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let config = dir.path().join("none.toml");
    let out = Command::new(BIN)
        .args(["bench", "--config"])
        .arg(&config)
        .args(["--node", "a", "--time", "100ms", "--plot"])
        .arg(&link)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("none.toml"), "{err}");
    assert!(link.is_symlink(), "the --plot check removed the symlink");
    assert_eq!(std::fs::read_link(&link).unwrap(), target);
    assert!(!target.exists(), "the --plot check left a file at the symlink's target");
    for budget in ["500ns", "0.5us"] {
        let out = Command::new(BIN)
            .args(["bench", "--config"])
            .arg(&config)
            .args(["--node", "a", "--time", "100ms", "--budget", budget])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--budget {budget}: {err}");
        assert!(err.contains("--budget"), "--budget {budget}: {err}");
    }
    // A FIFO (or a device) is refused at once: opening a FIFO to check it
    // waited for a reader for ever (found by review, helper-148).
    let fifo = dir.path().join("pipe.svg");
    run_ok(Command::new("mkfifo").arg(&fifo));
    let null = dir.path().join("null.svg");
    std::os::unix::fs::symlink("/dev/null", &null).unwrap();
    let sub = dir.path().join("dir.svg");
    std::fs::create_dir(&sub).unwrap();
    for plot in [&fifo, &null, &sub] {
        let out = run_timeout(
            Command::new(BIN)
                .args(["bench", "--config"])
                .arg(&config)
                .args(["--node", "a", "--time", "100ms", "--plot"])
                .arg(plot),
            Duration::from_secs(20),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--plot {}: {err}", plot.display());
        assert!(err.contains("--plot"), "--plot {}: {err}", plot.display());
    }
    let out = run_timeout(
        Command::new(BIN)
            .args(["bench", "--config"])
            .arg(&config)
            .args(["--node", "a", "--time", "100ms", "--plot"])
            .arg(&fifo),
        Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is a FIFO, not a file"), "{err}");
}

/// What to measure is a node (`--config` and `--node`) or a local pair
/// (`--rtt`), and a command line that mixes or lacks them is refused, exit
/// 2, naming both. Before (found by review, helper-148), `--node a --rtt
/// 2ms` set up and measured a local pair, `--node a` silently ignored; and
/// with neither, clap named `--rtt` alone as required (or, with `--node`,
/// `--config` and `--rtt` both, which exclude each other).
#[test]
fn bench_refuses_a_target_it_cannot_tell() {
    let tmp = tempfile::Builder::new().prefix("tb-bench-target").tempdir_in(test_tmp()).unwrap();
    for (args, says) in [
        (&["--node", "a", "--rtt", "2ms"][..], &["--node", "--rtt"][..]),
        (&["--rtt", "2ms", "--node", "a"], &["--node", "--rtt"]),
        (&[], &["--config", "--rtt"]),
        (&["--json"], &["--config", "--rtt"]),
    ] {
        let out = run_timeout(
            Command::new(BIN)
                .arg("bench")
                .args(args)
                .args(["--time", "100ms"])
                .env("TMPDIR", tmp.path()),
            Duration::from_secs(60),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(says.iter().all(|s| err.contains(s)), "{args:?}: {err}");
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "a local pair was set up");
}

/// A bench started the moment a new pair's replication is Established
/// measures the link, not its first few hundred milliseconds (found by
/// review: on loopback the link round trip came out at 26 to 87 ms in
/// about two runs in three, or "no probe completed", and a 4 KiB write
/// took 40 to 140 ms: every node's link thread spent some 7 ms on each of
/// QUIC's MTU discovery probes, up to 64 KiB of PADDING frames parsed one
/// byte at a time by a quinn-proto built without optimisation, 12 probes
/// each way in the connection's first 300 ms; the writes waited behind
/// them). Three fresh pairs, as the stall came and went.
#[test]
fn a_bench_right_after_the_pair_connects_measures_the_link_not_its_start() {
    for round in 1..=3 {
        let mut pair = Pair::prepare("C", "16M");
        pair.up(0);
        pair.up(1);
        pair.ok(&["primary", "--force"], 0);
        // As a user's script would: at once, not 100 ms later.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = pair.status(0);
            if s["role"] == "Primary" && s["replication"] == "Established" {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: never Established: {s}");
        }
        let out = pair.cli("bench", &["--time", "100ms", "--json"], 0);
        assert!(
            out.status.success(),
            "round {round}: bench failed: {}\nlog a:\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(&pair.log(0))
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        // (A link still searching its MTU made probes wait 10 to 90 ms in
        // a debug build: "no probe completed", or a p50 of 26 to 87 ms on
        // loopback. The figure is printed, not bounded: speed is measured
        // in the benchmarks; the link's start is checked in
        // `tests/replication.rs`, its `path_mtu` at Established.)
        let p50 = j["link"]["rtt"]["p50_us"].as_f64().unwrap() / 1000.0;
        eprintln!("round {round}: link RTT p50 {p50} ms on loopback: {}", j["link"]);
    }
}

/// Bytes of `path` allocated on its file system.
fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks() * 512)
}

/// A node stopped (`down`) or killed in the middle of a bench gives its
/// scratch area's blocks back: at a clean stop, or as it starts again.
/// Before, the 64 MiB reserved for the bench stayed allocated on the
/// metadata's file system for good (the task that gives them back 30 s
/// after the last probe ended with the process), until the next bench.
#[test]
fn a_node_stopped_or_killed_mid_bench_gives_its_scratch_area_back() {
    let mut pair = Pair::start("C", "16M");
    let scratch = |n: &str| pair.dir.path().join(format!("{n}.meta.bench"));
    let (sa, sb) = (scratch("a"), scratch("b"));
    let _child = KillOnDrop(spawn_bench(&pair, "3s"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while allocated(&sa) < 64 << 20 || allocated(&sb) < 64 << 20 {
        if Instant::now() > deadline {
            eprintln!("skipped: no fallocate here ({} {})", allocated(&sa), allocated(&sb));
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    pair.kill(0);
    assert!(pair.down(1).success());
    assert_eq!(allocated(&sb), 0, "b's scratch area still allocated after a clean stop");
    assert!(allocated(&sa) >= 64 << 20, "a was killed: nothing could give it back yet");
    pair.up(0);
    pair.up(1);
    pair.wait_linked();
    assert_eq!(allocated(&sa), 0, "a's scratch area, left by a kill, still allocated");
    assert_eq!(std::fs::metadata(&sa).unwrap().len(), 64 << 20, "the file stays");
}

/// `bench` whose stderr is closed while it runs (`twinblock bench ... 2>&1
/// | head -1`, a log reader gone): the progress lines are dropped, the
/// bench goes on, and its local pair is removed at the end. Before, the
/// next progress line panicked (exit 101; found by review, helper-148).
#[test]
fn bench_goes_on_when_its_stderr_is_closed() {
    use std::io::BufRead;
    let tmp = tempfile::Builder::new().prefix("tb-bench-err").tempdir_in(test_tmp()).unwrap();
    let mut child = Command::new(BIN)
        .args(["bench", "--rtt", "2ms", "--time", "1s"])
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    err.read_line(&mut first).unwrap();
    assert!(first.contains("local pair"), "{first}");
    drop(err);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{status:?}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
