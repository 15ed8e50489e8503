//! The Pacemaker OCF resource agent (scripts/ocf/twinblock) driving a real
//! twinblock pair on loopback: start/monitor/promote/demote/stop with the
//! OCF exit codes and promotion scores, and `ocf-tester` (Debian package
//! resource-agents) against it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::pair::Pair;
use common::{have, run_timeout, BIN};

const AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ocf/twinblock");

const OCF_SUCCESS: i32 = 0;
const OCF_NOT_RUNNING: i32 = 7;
const OCF_RUNNING_PROMOTED: i32 = 8;

/// The agent for both nodes of a prepared pair. A fake `crm_attribute` in
/// PATH records the promotion scores the agent sets. Drop stops both
/// daemons through the agent (and kills what is left).
struct Agent {
    pair: Pair,
    bin: PathBuf,
    scores: PathBuf,
    /// The `binary` parameter: twinblock itself, or a test's stand-in.
    twinblock: PathBuf,
}

impl Agent {
    fn new() -> Agent {
        let pair = Pair::prepare("C", "8M");
        let dir = pair.dir.path();
        let bin = dir.join("fakebin");
        std::fs::create_dir_all(&bin).unwrap();
        let scores = dir.join("scores.log");
        let script = bin.join("crm_attribute");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho \"$OCF_RESOURCE_INSTANCE $*\" >> '{}'\n", scores.display()),
        )
        .unwrap();
        make_executable(&script);
        Agent { pair, bin, scores, twinblock: BIN.into() }
    }

    fn name(i: usize) -> &'static str {
        ["a", "b"][i]
    }

    fn pidfile(&self, i: usize) -> PathBuf {
        self.pair.dir.path().join(format!("{}.pid", Agent::name(i)))
    }

    /// The `-o name=value` parameters for node `i`.
    fn params(&self, i: usize) -> Vec<(String, String)> {
        let dir = self.pair.dir.path();
        vec![
            ("config".into(), self.pair.config.display().to_string()),
            ("node".into(), Agent::name(i).into()),
            ("binary".into(), self.twinblock.display().to_string()),
            ("pidfile".into(), self.pidfile(i).display().to_string()),
            ("logfile".into(), dir.join(format!("{}.log", Agent::name(i))).display().to_string()),
        ]
    }

    /// Runs one agent action on node `i`: (exit code, stdout+stderr).
    fn run(&self, i: usize, action: &str) -> (i32, String) {
        let mut cmd = Command::new(AGENT);
        cmd.arg(action)
            .env("OCF_RESOURCE_INSTANCE", format!("tb-{}", Agent::name(i)))
            .env("OCF_RESKEY_CRM_meta_timeout", "30000")
            .env("PATH", path_with(&self.bin));
        if Path::new("/usr/lib/ocf").is_dir() {
            cmd.env("OCF_ROOT", "/usr/lib/ocf");
        }
        for (k, v) in self.params(i) {
            cmd.env(format!("OCF_RESKEY_{k}"), v);
        }
        let out = run_timeout(&mut cmd, Duration::from_secs(60));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    }

    /// An action that must end with `want`.
    fn expect(&self, i: usize, action: &str, want: i32) {
        let (rc, out) = self.run(i, action);
        assert_eq!(
            rc,
            want,
            "{action} on {} returned {rc}, want {want}: {out}\nnode log:\n{}",
            Agent::name(i),
            common::pair::tail(&self.pair.log(i))
        );
    }

    /// The last promotion-score call the agent made for node `i`.
    fn last_score(&self, i: usize) -> String {
        let prefix = format!("tb-{} ", Agent::name(i));
        std::fs::read_to_string(&self.scores)
            .unwrap_or_default()
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or("(none)")
            .to_string()
    }

    /// Starts both nodes through the agent and makes `a` the initial
    /// source (`primary --force`), waits for b to be UpToDate, and leaves
    /// both Secondary.
    fn start_synced(&self) {
        self.expect(0, "start", OCF_SUCCESS);
        self.expect(1, "start", OCF_SUCCESS);
        self.pair.ok(&["primary", "--force"], 0);
        self.pair.wait_synced("the initial sync", Duration::from_secs(60));
        self.pair.ok(&["secondary"], 0);
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        for i in 0..2 {
            let _ = self.run(i, "stop");
            if let Ok(pid) = std::fs::read_to_string(self.pidfile(i)) {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: signalling the daemon this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }
}

fn make_executable(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn path_with(dir: &Path) -> String {
    format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default())
}

#[test]
fn ocf_agent_starts_promotes_demotes_and_stops_a_real_pair() {
    let ag = Agent::new();
    // Nothing running yet: monitor says so, stop is a no-op success.
    ag.expect(0, "monitor", OCF_NOT_RUNNING);
    ag.expect(0, "stop", OCF_SUCCESS);
    ag.expect(0, "validate-all", OCF_SUCCESS);

    ag.start_synced();
    // start is idempotent.
    ag.expect(0, "start", OCF_SUCCESS);
    ag.expect(0, "monitor", OCF_SUCCESS);
    ag.expect(1, "monitor", OCF_SUCCESS);
    assert_eq!(ag.last_score(0), "--promotion -v 10000", "UpToDate, peer known");

    ag.expect(0, "promote", OCF_SUCCESS);
    assert_eq!(ag.pair.status(0)["role"], "Primary");
    ag.expect(0, "monitor", OCF_RUNNING_PROMOTED);
    // promote is idempotent.
    ag.expect(0, "promote", OCF_SUCCESS);
    ag.expect(0, "notify", OCF_SUCCESS);

    ag.expect(0, "demote", OCF_SUCCESS);
    assert_eq!(ag.pair.status(0)["role"], "Secondary");
    ag.expect(0, "monitor", OCF_SUCCESS);
    ag.expect(0, "demote", OCF_SUCCESS);

    // The other node can take over.
    ag.expect(1, "promote", OCF_SUCCESS);
    ag.expect(1, "monitor", OCF_RUNNING_PROMOTED);
    ag.expect(1, "demote", OCF_SUCCESS);

    // b goes away: a is UpToDate with the peer unknown.
    ag.expect(1, "stop", OCF_SUCCESS);
    ag.expect(1, "monitor", OCF_NOT_RUNNING);
    ag.expect(1, "stop", OCF_SUCCESS);
    assert!(!ag.pidfile(1).exists(), "stop removes the pid file");
    ag.pair.wait_unlinked(0);
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        ag.expect(0, "monitor", OCF_SUCCESS);
        if ag.last_score(0) == "--promotion -v 1000" {
            break;
        }
        assert!(Instant::now() < until, "score with the peer gone: {}", ag.last_score(0));
        std::thread::sleep(Duration::from_millis(200));
    }

    // A Primary is demoted by stop.
    ag.expect(0, "promote", OCF_SUCCESS);
    ag.expect(0, "monitor", OCF_RUNNING_PROMOTED);
    ag.expect(0, "stop", OCF_SUCCESS);
    ag.expect(0, "monitor", OCF_NOT_RUNNING);
    assert_eq!(ag.last_score(0), "--promotion -D", "stop removes the score");
}

#[test]
fn ocf_agent_reports_configuration_errors() {
    let ag = Agent::new();
    let run = |extra: &[(&str, &str)], action: &str| {
        let mut cmd = Command::new(AGENT);
        cmd.arg(action).env("OCF_RESOURCE_INSTANCE", "tb-x").env("PATH", path_with(&ag.bin));
        for (k, v) in ag.params(0) {
            cmd.env(format!("OCF_RESKEY_{k}"), v);
        }
        for (k, v) in extra {
            cmd.env(format!("OCF_RESKEY_{k}"), v);
        }
        run_timeout(&mut cmd, Duration::from_secs(30)).status.code()
    };
    assert_eq!(run(&[], "validate-all"), Some(0));
    assert_eq!(run(&[("config", "/nonexistent/r0.toml")], "validate-all"), Some(6));
    assert_eq!(run(&[("node", "zz")], "validate-all"), Some(6), "node not in the file");
    // Without `node`: the cluster node's name, as Pacemaker passes it.
    assert_eq!(run(&[("node", ""), ("CRM_meta_on_node", "a")], "validate-all"), Some(0));
    assert_eq!(run(&[("node", ""), ("CRM_meta_on_node", "zz")], "start"), Some(6));
    assert_eq!(run(&[("binary", "/nonexistent/twinblock")], "start"), Some(5));
    // A probe or stop on a node without the binary: not running / done.
    assert_eq!(run(&[("binary", "/nonexistent/twinblock")], "monitor"), Some(7));
    assert_eq!(run(&[("binary", "/nonexistent/twinblock")], "stop"), Some(0));
    assert_eq!(run(&[], "no-such-action"), Some(3));
    let meta = Command::new(AGENT).arg("meta-data").output().unwrap();
    assert!(meta.status.success());
    let xml = String::from_utf8_lossy(&meta.stdout);
    for p in ["\"config\"", "\"node\"", "\"binary\"", "\"promote\"", "\"demote\"", "\"notify\""] {
        assert!(xml.contains(p), "meta-data lacks {p}");
    }
}

#[test]
fn ocf_tester_accepts_the_agent() {
    if !have("ocf-tester") {
        return;
    }
    let ag = Agent::new();
    ag.start_synced();
    let mut cmd = Command::new("ocf-tester");
    cmd.args(["-n", "tb-a"]);
    for (k, v) in ag.params(0) {
        cmd.arg("-o").arg(format!("{k}={v}"));
    }
    cmd.arg(AGENT).env("PATH", path_with(&ag.bin));
    let out = run_timeout(&mut cmd, Duration::from_secs(300));
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && text.contains("passed all tests"),
        "ocf-tester failed ({}):\n{text}\nnode a log:\n{}",
        out.status,
        common::pair::tail(&ag.pair.log(0))
    );
    // It ends with the resource stopped.
    ag.expect(0, "monitor", OCF_NOT_RUNNING);
}

/// The promotion score `monitor` offers for a node whose `status --json`
/// says what the agent reads: a node back from a power loss that may lack
/// writes it confirmed to its peer (`lost_since_synced`) is refused
/// `primary` until it has met the peer, so apart it is offered as a
/// Consistent one (0), not as the lone UpToDate survivor (1000); connected
/// it is offered as any (its promotion is asked of the peer). The
/// daemon's answer is a stand-in script here: the scoring is the agent's
/// own logic (the refusal itself is `core::tests`
/// `primary_on_a_node_back_from_a_power_loss_waits_for_its_peer`).
#[test]
fn ocf_agent_does_not_offer_a_node_that_may_lack_confirmed_writes() {
    let mut ag = Agent::new();
    let dir = ag.pair.dir.path().to_path_buf();
    let answer = dir.join("status.json");
    let fake = dir.join("fake-twinblock");
    std::fs::write(&fake, format!("#!/bin/sh\ncat '{}'\n", answer.display())).unwrap();
    make_executable(&fake);
    ag.twinblock = fake;
    let alone = |lost: bool| {
        serde_json::json!({"role": "Secondary", "disk": "UpToDate", "connection": "Connecting",
            "peer": {"node": "b", "role": null, "disk": null}, "lost_since_synced": lost})
    };
    let connected = serde_json::json!({"role": "Secondary", "disk": "UpToDate",
        "connection": "Connected", "peer": {"node": "b", "role": "Secondary", "disk": "UpToDate"},
        "lost_since_synced": true});
    for (st, want) in [(alone(false), "1000"), (alone(true), "0"), (connected, "10000")] {
        std::fs::write(&answer, st.to_string()).unwrap();
        ag.expect(0, "monitor", OCF_SUCCESS);
        let score = ag.last_score(0);
        assert!(score.ends_with(&format!(" {want}")), "score {score:?} for {st}, want {want}");
    }
}
