//! The drbdadm-like verbs that talk to a running node through its control
//! socket: primary, secondary, status, connect, disconnect, verify, down.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use twinblock_replicator::config::ResourceConfig;

use crate::control::{call_from, call_within, CallError, Request, CALL_WAIT};

/// Exit code when the node's daemon cannot be reached.
pub const EXIT_NOT_RUNNING: u8 = 3;

pub fn control_path(config: &Path, node: &str) -> Result<std::path::PathBuf> {
    let res = ResourceConfig::load(config)?;
    if let Some(w) = res.witness.as_ref().filter(|w| w.name == node) {
        return Ok(w.control.clone());
    }
    let (me, _) = res.pair(node)?;
    Ok(me.control.clone())
}

/// Runs `verb` on the node; returns the status the node reported.
pub fn run(config: &Path, node: &str, verb: &str, force: bool) -> Result<Value, VerbError> {
    let path = control_path(config, node).map_err(VerbError::Other)?;
    // `primary` on a connected node waits for a handshake under way and
    // then for the peer's answer, each up to `timeout` and a second.
    let timeout = ResourceConfig::load(config).map_err(|e| VerbError::Other(e.into()))?.timeout;
    let wait = CALL_WAIT.max((timeout + Duration::from_secs(1)) * 2 + Duration::from_secs(5));
    // `secondary` with a controller waits for `on_demote` (at most
    // `DEMOTE_WAIT_MAX` on the node's side).
    let wait = wait.max(crate::up::DEMOTE_WAIT_MAX + Duration::from_secs(5));
    let req = Request { verb: verb.into(), force, now: false, bench: None };
    let resp = call_within(&path, &req, wait).map_err(VerbError::Call)?;
    Ok(resp.status.unwrap_or(Value::Null))
}

/// How long `down` waits for the node's process to finish its stop (the
/// final flush of its page cache, the metadata, the disk's lock): within
/// systemd's default stop timeout (90 s) for an `ExecStop=twinblock down`.
pub const DOWN_WAIT: Duration = Duration::from_secs(80);

/// `down`: asks the node to stop and waits until its process has exited,
/// as `drbdadm down` returns once the resource is down: a `down` followed
/// by `up`, a copy or a checksum of the disk then sees the stopped node's
/// last writes and finds its lock released (before, `down` returned at
/// once, and an `up` right after failed on the lock). Returns the status
/// the node answered with, or an error naming the pid still running after
/// [`DOWN_WAIT`] (a disk that hangs can hold a process in the kernel).
pub fn down(config: &Path, node: &str) -> Result<Value, VerbError> {
    let path = control_path(config, node).map_err(VerbError::Other)?;
    let req = Request { verb: "down".into(), force: false, now: false, bench: None };
    let (resp, pid) = call_from(&path, &req, CALL_WAIT).map_err(VerbError::Call)?;
    if let Some(pid) = pid {
        let deadline = std::time::Instant::now() + DOWN_WAIT;
        while twinblock_replicator::store::process_alive(pid) {
            if std::time::Instant::now() >= deadline {
                return Err(VerbError::Other(anyhow::anyhow!(
                    "{node} is still stopping after {}s (pid {pid}): its disk may not be \
                     answering; see its log",
                    DOWN_WAIT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(resp.status.unwrap_or(Value::Null))
}

#[derive(Debug, thiserror::Error)]
pub enum VerbError {
    #[error(transparent)]
    Call(CallError),
    #[error(transparent)]
    Other(anyhow::Error),
}

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "unknown".into(),
        other => other.to_string(),
    }
}

/// The human form of a status object.
pub fn render(st: &Value) -> String {
    if st["role"] == "Witness" {
        let outdated: Vec<String> =
            st["outdated"].as_array().map_or(Vec::new(), |a| a.iter().map(s).collect());
        let heard: Vec<String> = st["heard_ms_ago"].as_object().map_or(Vec::new(), |m| {
            m.iter()
                .map(|(n, ms)| format!("{n} {:.1} s ago", ms.as_f64().unwrap_or(0.0) / 1000.0))
                .collect()
        });
        let alone: Vec<String> =
            st["running_alone"].as_array().map_or(Vec::new(), |a| a.iter().map(s).collect());
        let lease = st["lease_left_ms"]
            .as_u64()
            .map_or(String::new(), |ms| format!(" (lease {:.1} s left)", ms as f64 / 1000.0));
        return format!(
            "{} on {}: Witness, Primary right held by {}{lease}\n  outdated: {}\n  running alone: {}\n  heard: {}\n",
            s(&st["resource"]),
            s(&st["node"]),
            st["holder"].as_str().unwrap_or("nobody"),
            if outdated.is_empty() { "-".into() } else { outdated.join(", ") },
            if alone.is_empty() { "-".into() } else { alone.join(", ") },
            if heard.is_empty() { "-".into() } else { heard.join(", ") },
        );
    }
    let c = &st["counters"];
    let rtt =
        st["rtt_us"].as_u64().map_or("-".to_string(), |us| format!("{:.2} ms", us as f64 / 1000.0));
    let mut out = format!(
        "{} on {}: {} {}, {} / {} (protocol {}, generation {})\n  peer {}{}: {} {}, rtt {}\n  out of sync {}, in flight {}, written {}, replicated {}\n",
        s(&st["resource"]),
        s(&st["node"]),
        s(&st["role"]),
        s(&st["disk"]),
        s(&st["connection"]),
        s(&st["replication"]),
        s(&st["protocol"]),
        s(&st["generation"]),
        s(&st["peer"]["node"]),
        st["peer"]["address"].as_str().map_or(String::new(), |a| format!(" at {a}")),
        s(&st["peer"]["role"]),
        s(&st["peer"]["disk"]),
        rtt,
        bytes(st["out_of_sync_bytes"].as_u64().unwrap_or(0)),
        st["in_flight"].as_u64().unwrap_or(0),
        bytes(c["written_bytes"].as_u64().unwrap_or(0)),
        bytes(c["replicated_bytes"].as_u64().unwrap_or(0)),
    );
    let l = &st["link"];
    if let Some(mtu) = l["path_mtu"].as_u64() {
        out.push_str(&format!(
            "  link {mtu}-byte datagrams, {} sent, {} received, {} lost\n",
            l["datagrams_sent"].as_u64().unwrap_or(0),
            l["datagrams_received"].as_u64().unwrap_or(0),
            l["lost_packets"].as_u64().unwrap_or(0),
        ));
    }
    if let Some(p) = st["sync"]["percent"].as_f64() {
        let filled = (p / 5.0).round().clamp(0.0, 20.0) as usize;
        let eta = st["sync"]["eta_s"].as_f64().map_or("-".to_string(), |e| format!("{e:.0} s"));
        out.push_str(&format!(
            "  {} [{}{}] {p:.1}% of {}, ETA {eta}\n",
            s(&st["connection"]),
            "#".repeat(filled),
            ".".repeat(20 - filled),
            bytes(st["sync"]["bytes_total"].as_u64().unwrap_or(0)),
        ));
    }
    if st["split_brain"] == true {
        out.push_str("  SPLIT BRAIN: nothing was overwritten; see `discard-my-data`\n");
    }
    if st["lost_since_synced"] == true {
        out.push_str(
            "  may lack writes it confirmed to its peer (power loss): `connect` before \
             `primary` (or `primary --force` to accept the loss)\n",
        );
    }
    if st["discard_pending"] == true {
        out.push_str(
            "  discard-my-data pending: the next connection takes the peer's data in full; \
             until then this node is not promoted by the controller\n",
        );
    }
    let ctl = &st["controller"];
    if ctl.is_object() {
        // (Before, the text showed nothing of the controller: a node
        // held back or refused by the witness looked idle; review,
        // helper-161.)
        out.push_str(&format!(
            "  controller {}, quorum {}, witness {}{}\n",
            s(&ctl["state"]),
            if ctl["quorum"] == true { "yes" } else { "no" },
            if ctl["witness_connected"] == true { "connected" } else { "not connected" },
            if ctl["superseded"] == true {
                ", superseded: reads fail until it meets its peer"
            } else if ctl["hooks_await_record"] == true {
                ", its address move and on_promote wait for the record saying it is Primary"
            } else {
                ""
            },
        ));
        if let Some(r) = ctl["last_refusal"].as_str() {
            out.push_str(&format!("  witness refused: {r}\n"));
        }
    }
    if let Some(e) = st["last_error"].as_str() {
        out.push_str(&format!("  last error: {e}\n"));
    }
    if let Some(e) = st["link_refusal"].as_str() {
        out.push_str(&format!("  handshake refused: {e}\n"));
    }
    out
}

/// `status [--json] [--watch]`.
pub fn status(config: &Path, node: &str, json: bool, watch: bool) -> Result<(), VerbError> {
    loop {
        let st = run(config, node, "status", false)?;
        let text = if json {
            format!("{}\n", serde_json::to_string(&st).unwrap_or_default())
        } else {
            render(&st)
        };
        // The screen is cleared only on a terminal: piped or logged
        // (`status --watch | tee`), snapshots follow each other with a
        // blank line between them. Before, a file or pipe got the clear
        // screen escapes too (found by helper-155 walking the README).
        if watch && !json && std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H{text}");
        } else if watch && !json {
            println!("{text}");
        } else {
            print!("{text}");
        }
        std::io::stdout().flush().context("stdout").map_err(VerbError::Other)?;
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_status_shows_progress_and_split_brain() {
        let st = serde_json::json!({
            "resource": "r0", "node": "a", "role": "Primary", "disk": "UpToDate",
            "connection": "SyncSource", "replication": "SyncSource", "protocol": "C",
            "generation": "00000000000000aa",
            "peer": {"node": "b", "address": "10.0.2.7:7789", "role": "Secondary",
                     "disk": "Inconsistent"},
            "out_of_sync_bytes": 1048576, "split_brain": true, "rtt_us": 250,
            "sync": {"percent": 50.0, "bytes_total": 2097152, "eta_s": 3.0},
            "counters": {"written_bytes": 0, "replicated_bytes": 0, "resync_bytes": 1048576},
            "in_flight": 2, "last_error": null,
            "link": {"datagrams_sent": 118, "datagrams_received": 20, "lost_packets": 1,
                     "path_mtu": 8951}
        });
        let text = render(&st);
        assert!(text.contains("link 8951-byte datagrams, 118 sent, 20 received, 1 lost"), "{text}");
        assert!(
            text.contains(
                "r0 on a: Primary UpToDate, SyncSource / SyncSource (protocol C, generation 00000000000000aa)"
            ),
            "{text}"
        );
        assert!(text.contains("[##########..........] 50.0% of 2.0 MiB, ETA 3 s"), "{text}");
        assert!(text.contains("SPLIT BRAIN"), "{text}");
        assert!(text.contains("rtt 0.25 ms"), "{text}");
        assert!(text.contains("peer b at 10.0.2.7:7789: Secondary Inconsistent"), "{text}");
        assert!(!text.contains("may lack writes"), "{text}");
        assert!(!text.contains("controller"), "{text}");
        let mut ctl = st.clone();
        ctl["controller"] = serde_json::json!({
            "state": "Watching", "quorum": false, "witness_connected": true,
            "last_refusal": "b holds the Primary right", "superseded": true
        });
        let text = render(&ctl);
        assert!(
            text.contains(
                "controller Watching, quorum no, witness connected, superseded: reads fail until it meets its peer"
            ),
            "{text}"
        );
        assert!(text.contains("witness refused: b holds the Primary right"), "{text}");
        ctl["controller"] = serde_json::json!({
            "state": "Holding", "quorum": true, "witness_connected": true,
            "last_refusal": null, "superseded": false, "hooks_await_record": true
        });
        let text = render(&ctl);
        assert!(
            text.contains(
                "controller Holding, quorum yes, witness connected, its address move and on_promote wait for the record saying it is Primary"
            ),
            "{text}"
        );
        let mut lost = st.clone();
        lost["lost_since_synced"] = true.into();
        let text = render(&lost);
        assert!(text.contains("may lack writes it confirmed to its peer"), "{text}");
        assert!(!text.contains("discard-my-data pending"), "{text}");
        let mut discard = st.clone();
        discard["discard_pending"] = true.into();
        let text = render(&discard);
        assert!(text.contains("discard-my-data pending"), "{text}");
    }
}
