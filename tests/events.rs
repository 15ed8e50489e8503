//! `twinblock events`: a subscription on the node's control socket that
//! prints one line per state change. A disconnect, writes apart, a
//! reconnect and the resync that follows must all show, in order, on both
//! nodes; the stream ends (exit 3) when the node goes down.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::nbd::Client;
use common::pair::Pair;
use common::{follow_lines, KillOnDrop, BIN};

/// A running `twinblock events` and the lines it printed so far.
struct Follow {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Follow {
    fn start(p: &Pair, i: usize, args: &[&str]) -> Follow {
        let (child, lines) = follow_lines(
            Command::new(BIN)
                .arg("events")
                .arg("--config")
                .arg(&p.config)
                .args(["--node", &p.nodes[i].name])
                .args(args)
                .stderr(Stdio::piped()),
        );
        Follow { child, lines, seen: Vec::new() }
    }

    /// Reads lines until one satisfies `f`; returns it.
    fn until(&mut self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if f(&l) {
                        return l;
                    }
                }
                Err(_) => panic!("no event {what}; the stream said:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Reads JSON lines until one has these fields.
    fn json(&mut self, fields: &[(&str, &str)]) -> serde_json::Value {
        let what = format!("{fields:?}");
        let line = self.until(&what, |l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("every line is JSON");
            fields.iter().all(|(k, want)| v[*k] == *want)
        });
        serde_json::from_str(&line).unwrap()
    }
}

fn write_mib(nbd: SocketAddr, offset: u64) {
    let mut c = Client::go_addr(nbd, false);
    let data = vec![0x3c; 65536];
    for i in 0..16u64 {
        c.request(0, 1, i, offset + i * 65536, 65536, &data);
    }
    for _ in 0..16 {
        assert_eq!(c.simple_reply().0, 0);
    }
}

#[test]
fn events_show_a_disconnect_a_reconnect_and_a_resync() {
    let mut p = Pair::start("C", "64M");
    let mut a = Follow::start(&p, 0, &["--json", "--now"]);
    let mut b = Follow::start(&p, 1, &["--now"]);
    // --now: the current state first.
    let e = a.json(&[("type", "exists"), ("object", "role")]);
    assert_eq!(
        (e["new"].as_str(), e["resource"].as_str(), e["node"].as_str()),
        (Some("Primary"), Some("r0"), Some("a"))
    );
    assert!(e["time"].as_str().unwrap().ends_with('Z'), "{e}");
    a.json(&[("type", "exists"), ("object", "connection"), ("new", "Connected")]);
    a.json(&[("type", "exists"), ("object", "split-brain"), ("new", "no")]);
    // b's stream is subscribed once its current state is out (else the
    // disconnect below could come before it, under load: seen in CI).
    b.until("b's current state", |l| l.contains(" exists r0 b: connection "));

    // A disconnect, 1 MiB written apart, a reconnect.
    p.ok(&["disconnect"], 0);
    a.json(&[
        ("type", "change"),
        ("object", "connection"),
        ("old", "Connected"),
        ("new", "StandAlone"),
    ]);
    a.json(&[("object", "peer-role"), ("old", "Secondary"), ("new", "Unknown")]);
    b.until("b losing its peer", |l| l.contains(" change r0 b: connection Connected -> "));
    write_mib(p.nodes[0].nbd, 8 << 20);
    p.ok(&["connect"], 0);
    a.json(&[("object", "connection"), ("old", "StandAlone"), ("new", "Connecting")]);
    let started = a.json(&[("object", "sync"), ("new", "started")]);
    assert_eq!(started["sync"]["direction"], "SyncSource", "{started}");
    a.json(&[("object", "connection"), ("old", "SyncSource"), ("new", "Connected")]);
    let finished = a.json(&[("object", "sync"), ("new", "finished")]);
    assert_eq!(finished["sync"]["direction"], "SyncSource", "{finished}");
    assert_eq!(finished["sync"]["moved_bytes"], 1048576, "{finished}");
    assert_eq!(finished["sync"]["out_of_sync_bytes"], 0, "{finished}");
    // The Secondary's side, in human lines.
    let line = b.until("b's resync", |l| l.contains(" change r0 b: sync started (SyncTarget"));
    let time = line.split(' ').next().unwrap();
    assert!(time.len() == 24 && time.ends_with('Z') && time.as_bytes()[10] == b'T', "{line}");
    b.until("b connected", |l| l.ends_with(" change r0 b: connection SyncTarget -> Connected"));
    b.until("b's resync ending", |l| {
        l.contains(" change r0 b: sync finished (SyncTarget, 100.0%, 0 bytes out of sync)")
    });
    p.wait_synced("the resync", Duration::from_secs(30));

    // The node goes down: the stream ends, exit 3, one line on stderr.
    p.down(1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = b.child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "events did not end with its node");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(3));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut b.child.0.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("went down"), "{err}");
    // A node that is not running: exit 3 at once.
    let out = p.cli("events", &[], 1);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
}

#[test]
fn events_count_waits_for_the_next_change() {
    let p = Pair::start("C", "16M");
    let waiter = {
        let config = p.config.clone();
        std::thread::spawn(move || {
            Command::new(BIN)
                .args(["events", "--config"])
                .arg(config)
                .args(["--node", "b", "--json", "--count", "1"])
                .output()
                .unwrap()
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    p.ok(&["disconnect"], 1);
    let out = waiter.join().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    let e: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        (e["object"].as_str(), e["new"].as_str()),
        (Some("connection"), Some("StandAlone")),
        "{e}"
    );
}

/// `events` against a node that takes the connection but never answers
/// (its process stopped by SIGSTOP, or wedged) gives up on the first
/// answer as the other verbs do, exit 3 with one line, instead of waiting
/// for ever; once subscribed, it waits for events without a deadline.
/// Before (review, helper-125), it hung with no output.
#[test]
fn events_gives_up_on_a_node_that_never_answers() {
    let p = Pair::prepare("C", "16M");
    let listener = std::os::unix::net::UnixListener::bind(p.dir.path().join("a.sock")).unwrap();
    let (done, wait) = mpsc::channel::<()>();
    let mute = std::thread::spawn(move || {
        let conn = listener.accept();
        let _ = wait.recv_timeout(Duration::from_secs(90));
        drop(conn);
    });
    let t0 = Instant::now();
    let out = common::run_timeout(
        Command::new(BIN).arg("events").arg("--config").arg(&p.config).args(["--node", "a"]),
        Duration::from_secs(60),
    );
    let _ = done.send(());
    let _ = mute.join();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(t0.elapsed() < Duration::from_secs(45), "gave up after {:?}", t0.elapsed());
}
