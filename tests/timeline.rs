//! The write timeline (`TWINBLOCK_TIMELINE`, `timeline/`): a pair and its
//! relay record where each write is, and `scripts/timeline.py` follows the
//! writes a real client made through both nodes, stage by stage.
//!
//! Alone in its test binary: it sets the variable for the processes it
//! starts through its own environment.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::pair::Pair;
use common::*;

#[test]
fn a_recorded_timeline_follows_writes_through_both_nodes_and_the_relay() {
    if !have("fio") || !have("python3") {
        return;
    }
    let recorded = tempfile::tempdir_in(test_tmp()).unwrap();
    // The only test of this binary: the variable reaches every process it
    // starts, and no other test's.
    std::env::set_var("TWINBLOCK_TIMELINE", recorded.path());
    let p = Pair::prepare("C", "64M");
    let _relay = p.relay_b("300us");
    let p = p.bring_up();
    p.wait_synced("the initial sync", Duration::from_secs(60));
    let fio = Command::new("fio")
        .args(["--name=t", "--ioengine=nbd", "--rw=randwrite", "--bs=4k", "--iodepth=8"])
        .args(["--size=64M", "--time_based", "--runtime=2"])
        .arg(format!("--uri={}", p.uri(0)))
        .output()
        .unwrap();
    assert!(fio.status.success(), "fio: {}", String::from_utf8_lossy(&fio.stderr));
    std::thread::sleep(Duration::from_secs(1)); // the recorders' flush
    for name in ["a", "b", "relay"] {
        let f = recorded.path().join(format!("{name}.timeline"));
        let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0 && len % 16 == 0, "{}: {len} bytes", f.display());
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/timeline.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(recorded.path())
        .args(["--fio-clat-us", "2000", "--json"])
        .output()
        .unwrap();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "timeline.py failed");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("timeline.py --json");
    eprintln!("{r:#}");
    let followed = r["followed"].as_u64().unwrap();
    assert!(followed > 500, "only {followed} writes followed");
    let stages = r["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 10, "{r}");
    let mean = |v: &serde_json::Value| v["mean_us"].as_f64().unwrap();
    // The stages are consecutive: their means add up to the whole's.
    let sum: f64 = stages.iter().map(mean).sum();
    let whole = mean(&r["whole"]);
    assert!((sum - whole).abs() <= whole * 0.01 + 1.0, "stages {sum} against the whole {whole}");
    for s in stages {
        assert!(mean(s) >= 0.0, "{s}");
    }
    // Each way through the 300 us relay takes at least its delay.
    let network: Vec<f64> = stages
        .iter()
        .filter(|s| s["stage"].as_str().unwrap().contains("relay"))
        .map(mean)
        .collect();
    assert_eq!(network.len(), 2, "{r}");
    assert!(network.iter().all(|m| *m >= 300.0), "through a 300 us relay: {network:?}");
    // The relay recorded its side: each of its four legs measured.
    assert_eq!(r["relay"].as_array().map(Vec::len), Some(4), "{r}");
    assert!((r["outside_us"].as_f64().unwrap() - (2000.0 - whole)).abs() < 0.2);
}
