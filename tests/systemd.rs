//! systemd: the unit files pass `systemd-analyze verify` (no warning
//! either) and keep a low exposure in `systemd-analyze security`; `up`
//! tells systemd when it is ready and when it stops (sd_notify).

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::pair::Pair;
use common::{have, run_timeout, test_tmp, KillOnDrop, BIN};

const UNITS: [&str; 2] = ["twinblock@.service", "twinblock-witness@.service"];

fn unit_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/systemd").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The units as installed: the binary at its place (here: the one built).
fn installed_units() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("tb-units").tempdir_in(test_tmp()).unwrap();
    for u in UNITS {
        let text = unit_text(u).replace("/usr/local/bin/twinblock", BIN);
        std::fs::write(dir.path().join(u), text).unwrap();
    }
    dir
}

#[test]
fn unit_files_pass_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        return;
    }
    let dir = installed_units();
    let out = run_timeout(
        Command::new("systemd-analyze").current_dir(dir.path()).args([
            "verify",
            "./twinblock@r0.service",
            "./twinblock-witness@r0.service",
        ]),
        Duration::from_secs(60),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{err}");
    // verify only warns about unknown keys and bad values: none allowed.
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("twinblock")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify warns:\n{err}");

    // A unit with a mistake is caught by the same check (so it can fail).
    let bad = unit_text(UNITS[0])
        .replace("/usr/local/bin/twinblock", BIN)
        .replace("Restart=on-failure", "Restart=on-failure\nRestartSec=soon");
    std::fs::write(dir.path().join(UNITS[0]), bad).unwrap();
    let out = run_timeout(
        Command::new("systemd-analyze")
            .current_dir(dir.path())
            .args(["verify", "./twinblock@r0.service"]),
        Duration::from_secs(60),
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("twinblock@.service:"), "{out:?}");
}

#[test]
fn unit_files_are_hardened_and_allow_io_uring() {
    let main = unit_text(UNITS[0]);
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "ExecStart=/usr/local/bin/twinblock up --config /etc/twinblock/%i.toml --node ${TWINBLOCK_NODE}",
        "EnvironmentFile=/etc/twinblock/%i.env",
        "SystemCallFilter=io_uring_setup io_uring_enter io_uring_register",
        "NoNewPrivileges=yes",
    ] {
        assert!(main.lines().any(|l| l == line), "{line} missing");
    }
    if !have("systemd-analyze") {
        return;
    }
    let dir = installed_units();
    for (unit, max) in [("twinblock@r0.service", 4.0), ("twinblock-witness@r0.service", 2.5)] {
        let out = run_timeout(
            Command::new("systemd-analyze").current_dir(dir.path()).args([
                "security",
                "--offline=yes",
                "--no-pager",
                &format!("./{unit}"),
            ]),
            Duration::from_secs(60),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let level: f64 = text
            .lines()
            .find_map(|l| l.split_once("Overall exposure level for ")?.1.split_once(": "))
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| {
                panic!("no exposure level:\n{text}\n{}", String::from_utf8_lossy(&out.stderr))
            });
        assert!(level <= max, "{unit}: exposure {level} above {max}:\n{text}");
    }
}

/// Receives one datagram within `within`.
fn recv(sock: &UnixDatagram, within: Duration) -> String {
    sock.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn up_notifies_readiness_and_stopping() {
    let p = Pair::prepare("C", "16M");
    let path = p.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let started = Instant::now();
    let mut child = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&p.config)
        .args(["--node", "a"])
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let pid = child.id();
    let mut child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let ready = recv(&sock, Duration::from_secs(20));
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(ready.lines().any(|l| l == format!("MAINPID={pid}")), "{ready}");
    // Ready means ready: the control socket answers at once.
    let line = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(line.starts_with("twinblock up:"), "{line}");
    let st = p.cli("status", &["--json"], 0);
    assert!(st.status.success(), "status right after READY=1 failed");
    assert!(started.elapsed() < Duration::from_secs(20));
    let down = p.cli("down", &[], 0);
    assert!(down.status.success());
    let stopping = recv(&sock, Duration::from_secs(20));
    assert_eq!(stopping, "STOPPING=1");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "up did not exit after down");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn up_notifies_an_abstract_socket() {
    use std::os::linux::net::SocketAddrExt;
    let p = Pair::prepare("C", "16M");
    let name = format!("twinblock-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let sock = UnixDatagram::bind_addr(&addr).unwrap();
    let child = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&p.config)
        .args(["--node", "a"])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = KillOnDrop(child);
    let ready = recv(&sock, Duration::from_secs(20));
    assert!(ready.starts_with("READY=1\n"), "{ready}");
}
