//! The command line as scripts use it: every verb's `--help` has an
//! example, the verbs that report something print one JSON object with
//! `--json`, and the exit codes are the documented ones.

mod common;

use std::process::Command;

use common::pair::Pair;
use common::{run_ok, test_tmp, BIN};

const VERBS: &[&str] = &[
    "serve",
    "gen-certs",
    "up",
    "witness",
    "primary",
    "secondary",
    "status",
    "events",
    "connect",
    "disconnect",
    "verify",
    "discard-my-data",
    "down",
    "bench",
    "netem",
];

#[test]
fn every_verb_has_help_with_an_example() {
    let top = Command::new(BIN).arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    for verb in VERBS {
        assert!(top.contains(&format!("  {verb} ")), "{verb} missing from --help:\n{top}");
        let out = Command::new(BIN).args([verb, "--help"]).output().unwrap();
        assert!(out.status.success(), "{verb} --help");
        let text = String::from_utf8_lossy(&out.stdout);
        let example = text.split_once("Example").map(|(_, e)| e).unwrap_or_default();
        assert!(
            example.contains(&format!("twinblock {verb} ")),
            "{verb} --help has no example:\n{text}"
        );
    }
    assert!(top.contains("Exit codes: 0 done"), "{top}");
}

/// A bad command line exits 2 with one line on stderr that says what and
/// why, as the contract (shared/DESIGN.md) says of every non-zero exit:
/// before, clap's three to six lines (the error, a blank line, `Usage:`,
/// "For more information, try '--help'."; found by an audit against the
/// design, helper-121).
#[test]
fn a_bad_command_line_is_one_line_on_stderr() {
    let cases: &[(&[&str], &str)] = &[
        (&["status", "--config", "r.toml"], "--node"),
        (&["serve", "--disk", "x.img", "--size", "1X"], "1X"),
        (
            &[
                "netem",
                "--listen",
                "127.0.0.1:1",
                "--forward",
                "127.0.0.1:2",
                "--delay",
                "5parsecs",
            ],
            "parsecs",
        ),
        (&["frobnicate"], "frobnicate"),
        (&["status", "--bogus"], "--bogus"),
        (&["status", "-v", "-q", "--config", "r.toml", "--node", "a"], "--quiet"),
    ];
    for (args, word) in cases {
        let out = Command::new(BIN).args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: not one line:\n{err}");
        assert!(err.starts_with("twinblock: ") && err.contains(word), "{args:?}: {err}");
    }
    // Help and the version still print in full, exit 0.
    let out = Command::new(BIN).args(["status", "--help"]).output().unwrap();
    assert!(out.status.success() && out.stdout.len() > 200);
    assert!(Command::new(BIN).arg("--version").output().unwrap().status.success());
}

/// A node whose process takes the connection but never answers (stopped
/// by SIGSTOP, wedged) is named as such when a verb gives up on it, exit 3
/// as documented, not "not running": the operator's next step is its log
/// or its process, not `up` (which fails on the disk's lock). Before
/// (review, helper-125): "node is not running (cannot reach ...:
/// Resource temporarily unavailable (os error 11))".
#[test]
fn a_node_that_never_answers_is_named_so() {
    let p = Pair::prepare("C", "16M");
    let listener = std::os::unix::net::UnixListener::bind(p.dir.path().join("a.sock")).unwrap();
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let mute = std::thread::spawn(move || {
        let conn = listener.accept();
        let _ = wait.recv_timeout(std::time::Duration::from_secs(90));
        drop(conn);
    });
    let out = common::run_timeout(
        Command::new(BIN).arg("status").arg("--config").arg(&p.config).args(["--node", "a"]),
        std::time::Duration::from_secs(60),
    );
    let _ = done.send(());
    let _ = mute.join();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("does not answer") && !err.contains("not running"), "{err}");
}

#[test]
fn verbs_print_json_and_exit_as_documented() {
    let mut p = Pair::start("C", "16M");
    for (verb, i) in [("disconnect", 1), ("connect", 1), ("secondary", 1), ("verify", 0)] {
        if verb == "verify" {
            p.wait_connected();
        }
        let out = p.ok(&[verb, "--json"], i);
        assert_eq!(out.lines().count(), 1, "{verb}: {out}");
        let st: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(st["node"], p.nodes[i].name.as_str(), "{verb}: {st}");
        assert!(st["connection"].is_string() && st["counters"].is_object(), "{verb}: {st}");
    }
    let st: serde_json::Value = serde_json::from_str(&p.ok(&["primary", "--json"], 0)).unwrap();
    assert_eq!(st["role"], "Primary");
    // Refused: exit 1 and one line on stderr; usage: 2; not running: 3.
    let out = p.cli("primary", &["--json"], 1);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{out:?}");
    let out = p.cli("status", &["--bogus"], 0);
    assert_eq!(out.status.code(), Some(2));
    let out = p.cli("status", &["-v", "-q"], 0);
    assert_eq!(out.status.code(), Some(2), "-v and -q together");
    let down: serde_json::Value = serde_json::from_str(&p.ok(&["down", "--json"], 1)).unwrap();
    assert_eq!(down["node"], "b");
    p.kill(1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = p.cli("status", &["--json"], 1);
        if out.status.code() == Some(3) {
            assert!(out.stdout.is_empty());
            assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "status of a stopped node: {out:?}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A verb that would change the node's state, run once `down` was asked
/// of it (two operators, or a script racing a stop), is refused with one
/// line saying the node is stopping: the node is gone a moment later.
/// Before (review, helper-125), `primary` right after `down` on a
/// Secondary answered 0 and `status` said Primary, and the node then
/// exited: the operator was told it served.
#[test]
fn a_verb_after_down_was_asked_is_refused_not_done() {
    use std::io::{BufRead, Write};
    let mut p = Pair::start("C", "16M");
    p.ok(&["secondary"], 0);
    // `down` as a script sends it, without waiting for the exit.
    let mut s = std::os::unix::net::UnixStream::connect(p.dir.path().join("b.sock")).unwrap();
    s.write_all(b"{\"verb\":\"down\"}\n").unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(&s).read_line(&mut answer).unwrap();
    assert!(answer.contains("\"ok\":true"), "{answer}");
    for verb in ["primary", "connect", "verify", "discard-my-data"] {
        let out = p.cli(verb, &[], 1);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{verb} after down answered 0");
        if out.status.code() == Some(1) {
            assert!(err.contains("stopping") && err.lines().count() == 1, "{verb}: {err}");
        }
    }
    p.kill(1);
}

#[test]
fn gen_certs_json_names_the_files_it_wrote() {
    let dir = tempfile::Builder::new().prefix("tb-certs").tempdir_in(test_tmp()).unwrap();
    let out = run_ok(
        Command::new(BIN).args(["gen-certs", "--json", "--out"]).arg(dir.path()).args(["a", "b"]),
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["reused_ca"], false);
    for n in ["a", "b"] {
        for f in ["cert", "key"] {
            let path = v["nodes"][n][f].as_str().unwrap();
            assert!(std::path::Path::new(path).exists(), "{n}.{f}: {path}");
        }
    }
    assert!(std::path::Path::new(v["ca"].as_str().unwrap()).exists());
    let again =
        run_ok(Command::new(BIN).args(["gen-certs", "--json", "--out"]).arg(dir.path()).arg("w"));
    let v: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(v["reused_ca"], true, "{again}");
}

/// Node a's files in the pair's directory (`a.img`, `a.meta`, ...).
fn files_of_a(p: &Pair) -> Vec<String> {
    std::fs::read_dir(p.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("a."))
        .collect()
}

/// Found by review: `up` with a missing certificate created the disk file
/// and its metadata before it failed on the certificate; a key that does
/// not go with its certificate was reported without a file name.
#[test]
fn up_checks_its_certificates_before_it_creates_anything() {
    let p = Pair::prepare("C", "16M");
    let certs = p.dir.path().join("certs");
    std::fs::rename(certs.join("a.pem"), certs.join("a.pem.away")).unwrap();
    let out = p.cli("up", &[], 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a.pem"), "{err}");
    let made = files_of_a(&p);
    assert!(made.is_empty(), "a failed start left {made:?}");
    std::fs::rename(certs.join("a.pem.away"), certs.join("a.pem")).unwrap();
    std::fs::copy(certs.join("b.key"), certs.join("a.key")).unwrap();
    let out = p.cli("up", &[], 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("a.key: the key does not go with the certificate"), "{err}");
    // The key file and the certificate file swapped in the resource file:
    // each error says what the file holds (before: the key's was rustls's
    // "no items found"; review, helper-137).
    let text = std::fs::read_to_string(&p.config).unwrap();
    let swap = |from: &str, to: &str| {
        std::fs::write(&p.config, text.replacen(from, to, 1)).unwrap();
        let out = p.cli("up", &[], 0);
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = swap("key = \"certs/a.key\"", "key = \"certs/a.pem\"");
    assert!(err.contains("a.pem: no private key in the file: it holds a certificate"), "{err}");
    let err = swap("cert = \"certs/a.pem\"", "cert = \"certs/a.key\"");
    assert!(err.contains("a.key: no certificate in the file: it holds a private key"), "{err}");
    std::fs::write(&p.config, text).unwrap();
    assert!(files_of_a(&p).is_empty());
}

/// Found by a newcomer's walk-through (helper-113): a value of the wrong
/// type, or a missing key, was reported as the TOML parser's snippet
/// ("TOML parse error at line 30, column 11 | 30 | address = 5 | ^
/// invalid type ..."), which names neither the table nor the key, while
/// every other bad value is reported as `FILE: KEY: reason`.
#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    let p = Pair::prepare("C", "16M");
    let text = std::fs::read_to_string(&p.config).unwrap();
    let status = |text: &str| {
        std::fs::write(&p.config, text).unwrap();
        let out = Command::new(BIN)
            .args(["status", "--config"])
            .arg(&p.config)
            .args(["--node", "a"])
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let b = text.find("[nodes.b]").unwrap();
    let (before, after) = text.split_at(b);
    let wrong = format!("{before}{}", after.replacen("address = ", "address = 5 #", 1));
    let (code, err) = status(&wrong);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("r0.toml: nodes.b.address: invalid type: integer `5`"), "{err}");
    assert!(err.contains("line "), "{err}");
    let (code, err) = status(&text.replacen("timeout = \"3s\"", "timeout = 3", 1));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("r0.toml: timeout: invalid type: integer `3`"), "{err}");
    let (code, err) = status(&text.replacen("cert = \"certs/a.pem\"\n", "", 1));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("r0.toml: nodes.a: missing field `cert`"), "{err}");
    let (code, err) = status(&text.replacen("name = \"r0\"\n", "", 1));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("r0.toml: name: missing field `name`"), "{err}");
    let (code, err) = status(&text.replacen("timeout = ", "timout = ", 1));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("r0.toml: timout: unknown field `timout`"), "{err}");
    // Broken syntax still says where.
    let (code, err) = status(&text.replacen("timeout = \"3s\"", "timeout = \"3s", 1));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("line 4"), "{err}");
}

/// A verb whose reader goes away (`twinblock status --json | head -c1`)
/// ends quietly, as `cat` does, instead of panicking ("failed printing
/// to stdout", exit 101; found by review, helper-111).
#[test]
fn a_verb_whose_reader_went_away_ends_quietly() {
    let dir = tempfile::Builder::new().prefix("tb-pipe").tempdir_in(test_tmp()).unwrap();
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    let out = Command::new(BIN)
        .args(["gen-certs", "--out"])
        .arg(dir.path().join("certs"))
        .args(["a", "b"])
        .stdout(w)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}

/// Found by review (helper-114): `primary` run twice at once on the
/// Secondary of a connected pair (two shells, or a script's retry while
/// the first still waits) answered one of them "a promotion is already
/// being asked of the peer", exit 1, though the node became Primary as
/// both asked. The second now waits for the ask in flight and answers as
/// the node then is. (A relay of 100 ms each way keeps the ask in flight.)
#[test]
fn primary_twice_at_once_on_one_node_both_succeed() {
    let mut p = Pair::prepare("C", "16M");
    let _netem = p.relay_b("100ms");
    p.up_in_sync("the initial sync", std::time::Duration::from_secs(60));
    p.ok(&["secondary"], 0);
    p.wait("b sees a Secondary", std::time::Duration::from_secs(10), |_, b| {
        b["peer"]["role"] == "Secondary"
    });
    let outs: Vec<std::process::Output> = std::thread::scope(|s| {
        let runs: Vec<_> = (0..2).map(|_| s.spawn(|| p.cli("primary", &[], 0))).collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for out in &outs {
        assert!(
            out.status.success(),
            "a concurrent `primary` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(p.status(0)["role"], "Primary");
    assert_eq!(p.status(1)["role"], "Secondary");
}

/// Found by review: `up` opened (and on a first start created) the disk
/// and its metadata before it checked the address mover's settings and
/// bound its sockets, so a start refused for a mover this build lacks,
/// an NBD port in use, or a node already up left new files behind (or,
/// for a node already up, opened its metadata beside the running one).
#[test]
fn up_refuses_what_it_cannot_start_before_it_creates_anything() {
    let p = Pair::prepare("C", "16M");
    let up = |p: &Pair| {
        let out = p.cli("up", &[], 0);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned(), files_of_a(p))
    };
    // The NBD port in use.
    let held = std::net::TcpListener::bind(p.nodes[0].nbd).unwrap();
    let (code, err, made) = up(&p);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot listen for NBD"), "{err}");
    assert!(made.is_empty(), "a failed start left {made:?}");
    drop(held);
    // A controller whose address mover cannot move: a required key
    // missing (any build), and an AWS kind in a build without AWS.
    let base = std::fs::read_to_string(&p.config).unwrap();
    let with_address = |address: &str| {
        let w = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        format!(
            "{base}\n[nodes.w]\nwitness = true\naddress = \"{w}\"\nconnect = \"{w}\"\nmeta = \
             \"w.state\"\ncontrol = \"w.sock\"\ncert = \"certs/w.pem\"\nkey = \"certs/w.key\"\n\n\
             [controller]\ndead_time = \"8s\"\n\n[controller.address]\n{address}"
        )
    };
    std::fs::write(&p.config, with_address("kind = \"aws-eip\"\nregion = \"us-east-1\"\n"))
        .unwrap();
    let (code, err, made) = up(&p);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("allocation_id"), "{err}");
    assert!(made.is_empty(), "a failed start left {made:?}");
    if !cfg!(feature = "aws") {
        let eip = "kind = \"aws-eip\"\nallocation_id = \"eipalloc-1\"\nregion = \"us-east-1\"\n";
        std::fs::write(&p.config, with_address(eip)).unwrap();
        let (code, err, made) = up(&p);
        assert_eq!(code, Some(1), "{err}");
        assert!(err.contains("`aws` feature"), "{err}");
        assert!(made.is_empty(), "a failed start left {made:?}");
    }
}

/// `discard-my-data` on a connected Secondary is refused (no split brain),
/// and its one line says what does repair this node's data from its peer:
/// `verify`, whose mismatches are resynced. Before (review, helper-125),
/// it said "to take a's data in full anyway, `disconnect` here, then
/// `discard-my-data` and `connect`": that handshake finds the same
/// generation on both, settles the discard and moves nothing, and a bad
/// block stayed bad.
#[test]
fn discard_my_data_on_a_connected_secondary_names_what_repairs_it() {
    use std::os::unix::fs::FileExt;
    let p = Pair::start("C", "16M");
    p.qemu_io(0, "write -P 5 0 1M");
    p.wait_both_synced("the write", std::time::Duration::from_secs(20));
    // A block of b's disk goes bad under it.
    let at = 100 * 4096;
    let f = std::fs::OpenOptions::new().write(true).open(&p.nodes[1].disk).unwrap();
    f.write_all_at(&[0xEE; 4096], at).unwrap();
    f.sync_all().unwrap();
    let out = p.cli("discard-my-data", &[], 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("`verify`"), "the refusal names no repair that works: {err}");
    p.ok(&["verify"], 1);
    let block = |i: usize| {
        let mut b = vec![0u8; 4096];
        std::fs::File::open(&p.nodes[i].disk).unwrap().read_exact_at(&mut b, at).unwrap();
        b
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while block(1) != block(0) {
        assert!(std::time::Instant::now() < deadline, "verify did not repair b's block");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `size` changed in the resource file of an existing node, its disk file
/// grown (or shrunk) to match: twinblock does not resize, and the start is
/// refused naming the key, both sizes and the way out; the data and the
/// metadata stay as they were. (Before: "a.meta belongs to size
/// \"8388608\", not \"16777216\"", which named no key and no way out;
/// review.)
#[test]
fn a_changed_size_is_refused_naming_the_key_and_the_data_is_kept() {
    let mut p = Pair::prepare("C", "8M");
    p.up(0);
    p.ok(&["primary", "--force"], 0);
    p.qemu_io(0, "write -P 0x5a 0 1M");
    assert!(p.down(0).success());
    let meta = p.dir.path().join("a.meta");
    let saved = std::fs::read(&meta).unwrap();
    let config = std::fs::read_to_string(&p.config).unwrap();
    for (size, bytes) in [("16M", 16u64 << 20), ("4M", 4 << 20)] {
        std::fs::write(&p.config, config.replace("size = \"8M\"", &format!("size = \"{size}\"")))
            .unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p.nodes[0].disk)
            .unwrap()
            .set_len(bytes)
            .unwrap();
        let out = p.cli("up", &[], 0);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("size: "), "{err}");
        assert!(err.contains(&bytes.to_string()) && err.contains("8388608"), "{err}");
        assert!(err.contains("cannot change"), "{err}");
        assert_eq!(std::fs::read(&meta).unwrap(), saved, "the metadata changed");
    }
    std::fs::write(&p.config, &config).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p.nodes[0].disk)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    p.up(0);
    p.ok(&["primary"], 0);
    let read = p.qemu_io(0, "read -P 0x5a 0 1M");
    assert!(!read.contains("Pattern verification failed"), "{read}");
}

/// A first start that fails part-way, after the disk file was made (the
/// metadata's directory missing), leaves nothing it made behind, and says
/// which file it could not make. Before (review, helper-137), the new
/// disk file stayed: the start was refused with "a.meta.disk: No such
/// file or directory" and `a.img` was left beside the resource file.
#[test]
fn a_first_start_that_fails_part_way_leaves_nothing_behind() {
    let p = Pair::prepare("C", "8M");
    let config = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(&p.config, config.replace("meta = \"a.meta\"", "meta = \"nodir/a.meta\""))
        .unwrap();
    let out = p.cli("up", &[], 0);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nodir/a.meta"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!p.nodes[0].disk.exists(), "the failed first start left the disk file behind");
    // An existing disk file is kept as it was.
    std::fs::write(&p.nodes[0].disk, vec![7u8; 8 << 20]).unwrap();
    let out = p.cli("up", &[], 0);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&p.nodes[0].disk).unwrap(), vec![7u8; 8 << 20]);
}

/// `twinblock witness` with a certificate file missing fails naming the
/// file, and never said it was listening (nor told systemd it was ready).
/// Before (review, helper-137), it printed "twinblock witness: w
/// listening on ..." and READY=1 first, then failed: a script or unit
/// waiting for the line took a witness that never ran for one that did.
#[test]
fn a_witness_that_cannot_start_never_says_it_listens() {
    let p = Pair::prepare("C", "8M");
    let addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let text = std::fs::read_to_string(&p.config).unwrap();
    std::fs::write(
        &p.config,
        format!(
            "{text}\n[nodes.w]\nwitness = true\naddress = \"{addr}\"\ncontrol = \"w.sock\"\ncert = \"certs/nope.pem\"\nkey = \"certs/nope.key\"\n"
        ),
    )
    .unwrap();
    let out = common::run_timeout(
        Command::new(BIN).args(["witness", "--config"]).arg(&p.config).args(["--node", "w"]),
        std::time::Duration::from_secs(20),
    );
    let (stdout, err) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{err}");
    assert!(err.contains("certs/nope.pem"), "{err}");
    assert!(!stdout.contains("listening"), "said it listens: {stdout}");
}
