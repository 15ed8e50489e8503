//! OpenLDAP after a failover, end to end: `scripts/ldap-failover.sh` with
//! this build's binary (real slapd, MDB on ext4 on the export through
//! nbdfuse + losetup, a witness and the failover controller). Needs root
//! and the tools `scripts/setup.sh` installs; in CI it must run.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn ldap_entries_survive_a_failover() {
    if !root("losetup and mount") {
        return;
    }
    for t in ["slapd", "ldapadd", "nbdfuse", "losetup", "mkfs.ext4", "bc"] {
        if !have(t) {
            return;
        }
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ldap-failover.sh");
    let out = run_timeout(
        Command::new(script).args(["--entries", "100", "--dead-time", "5"]).env("TWINBLOCK", BIN),
        Duration::from_secs(300),
    );
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success() && text.contains("PASS"), "ldap-failover failed:\n{text}");
}
