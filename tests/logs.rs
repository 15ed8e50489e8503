//! Logs: plain text without escape codes when stderr is not a terminal,
//! one info line per state change naming resource and node, `-v`/`-q`
//! and `RUST_LOG`, and `--log-format json` for collectors.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::pair::Pair;
use common::BIN;

/// Starts node a of `p` alone with `args`, stderr to a file, environment
/// without log settings except `env`; waits until it is up.
fn start(p: &Pair, args: &[&str], env: &[(&str, &str)]) -> (Child, PathBuf) {
    let log = p.dir.path().join(format!("a-{}.log", args.join("").replace('-', "")));
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .args(["up", "--config"])
        .arg(&p.config)
        .args(["--node", "a"])
        .env_remove("TWINBLOCK_LOG")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if l.starts_with("twinblock up:") {
                let _ = tx.send(());
            }
        }
    });
    let up = rx.recv_timeout(Duration::from_secs(20)).is_ok();
    assert!(up, "node a did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    (child, log)
}

/// A state change (StandAlone), then `down`; returns the whole log.
fn change_and_stop(p: &Pair, mut child: Child, log: &PathBuf) -> String {
    let out = p.cli("disconnect", &[], 0);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(300));
    let out = p.cli("down", &[], 0);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "node did not go down");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::read_to_string(log).unwrap()
}

#[test]
fn a_log_file_has_no_escape_codes_and_every_state_change_names_resource_and_node() {
    let mut p = Pair::start("C", "16M");
    p.ok(&["disconnect"], 1);
    p.ok(&["connect"], 1);
    p.wait_connected();
    p.kill(0);
    p.kill(1);
    for i in 0..2 {
        let log = p.log(i);
        let node = &p.nodes[i].name;
        assert!(!log.contains('\x1b'), "escape codes in {node}'s log:\n{log}");
        let changes: Vec<&str> = log.lines().filter(|l| l.contains("state change:")).collect();
        for l in &changes {
            assert!(l.contains(" INFO "), "{l}");
            assert!(l.contains("resource=r0") && l.contains(&format!("node={node}")), "{l}");
        }
        let want: &[&str] = if i == 0 {
            &[
                "state change: role Secondary -> Primary",
                "state change: disk Inconsistent -> UpToDate",
            ]
        } else {
            &[
                "state change: connection Connected -> StandAlone",
                "state change: connection StandAlone -> Connecting",
            ]
        };
        for w in want {
            assert!(changes.iter().any(|l| l.contains(w)), "no {w:?} in {node}'s log:\n{log}");
        }
    }
}

#[test]
fn json_logs_are_one_object_per_line() {
    let p = Pair::prepare("C", "16M");
    let (child, log) = start(&p, &["--log-format", "json"], &[]);
    let text = change_and_stop(&p, child, &log);
    assert!(!text.contains('\x1b'), "{text}");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 3, "{text}");
    for v in &lines {
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
        assert!(v["message"].is_string(), "{v}");
    }
    let change = lines
        .iter()
        .find(|v| v["object"] == "connection" && v["new"] == "StandAlone")
        .unwrap_or_else(|| panic!("no state change to StandAlone:\n{text}"));
    assert_eq!(change["level"], "INFO", "{change}");
    assert_eq!((change["resource"].as_str(), change["node"].as_str()), (Some("r0"), Some("a")));
    assert!(
        change["message"].as_str().unwrap().starts_with("state change: connection"),
        "{change}"
    );
    // Lines inside the node's span carry it.
    assert!(
        lines.iter().any(|v| v["span"]["resource"] == "r0" && v["span"]["node"] == "a"),
        "{text}"
    );
}

#[test]
fn verbosity_from_flags_and_rust_log() {
    let p = Pair::prepare("C", "16M");
    let (child, log) = start(&p, &["-q"], &[]);
    let quiet = change_and_stop(&p, child, &log);
    assert!(!quiet.contains(" INFO ") && !quiet.contains("state change"), "-q:\n{quiet}");

    let (child, log) = start(&p, &["-v"], &[]);
    let verbose = change_and_stop(&p, child, &log);
    assert!(verbose.contains(" DEBUG "), "-v:\n{verbose}");
    assert!(verbose.contains("state change: connection"), "-v:\n{verbose}");

    let (child, log) = start(&p, &[], &[("RUST_LOG", "warn")]);
    let env = change_and_stop(&p, child, &log);
    assert!(!env.contains(" INFO "), "RUST_LOG=warn:\n{env}");

    let (child, log) = start(&p, &[], &[]);
    let default = change_and_stop(&p, child, &log);
    assert!(default.contains(" INFO ") && !default.contains(" DEBUG "), "default:\n{default}");

    // The flag wins over the environment.
    let (child, log) = start(&p, &["-v"], &[("RUST_LOG", "error")]);
    let both = change_and_stop(&p, child, &log);
    assert!(both.contains(" DEBUG "), "-v with RUST_LOG=error:\n{both}");
}
