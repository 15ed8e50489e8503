//! `twinblock serve` as a command: version, sizes, errors users see.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn twinblock(args: &[&str]) -> std::process::Output {
    run_timeout(Command::new(BIN).args(args).env_remove("TWINBLOCK_IO"), Duration::from_secs(20))
}

#[test]
fn version() {
    let out = twinblock(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("twinblock {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn size_mismatch_is_refused_with_both_sizes() {
    let dir = tempfile::tempdir_in(test_tmp()).unwrap();
    let disk = dir.path().join("d.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let out = twinblock(&[
        "serve",
        "--disk",
        disk.to_str().unwrap(),
        "--size",
        "2M",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap();
    assert!(last.contains("1048576") && last.contains("2097152"), "{err}");
    // Nothing was changed.
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 20);
}

#[test]
fn missing_disk_without_size_is_refused() {
    let dir = tempfile::tempdir_in(test_tmp()).unwrap();
    let disk = dir.path().join("none.img");
    let out = twinblock(&["serve", "--disk", disk.to_str().unwrap(), "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist") && err.contains("size"), "{err}");
    assert!(!disk.exists());
}

#[test]
fn bad_arguments_name_the_problem() {
    let out = twinblock(&["serve", "--disk", "/tmp/x", "--size", "12Q"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--size") && err.contains("12Q"), "{err}");

    let out = twinblock(&["serve", "--disk", "/tmp/x", "--max-connections", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--max-connections"));

    let out = twinblock(&["serve", "--disk", "/tmp/x", "--io-timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--io-timeout") && err.contains("soon"), "{err}");

    let out = twinblock(&["serve", "--disk", "/tmp/x", "--io", "turbo"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("turbo"));

    let dir = tempfile::tempdir_in(test_tmp()).unwrap();
    let disk = dir.path().join("d.img");
    let out = run_timeout(
        Command::new(BIN)
            .args([
                "serve",
                "--disk",
                disk.to_str().unwrap(),
                "--size",
                "1M",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("TWINBLOCK_IO", "warp"),
        Duration::from_secs(20),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TWINBLOCK_IO") && err.contains("warp"), "{err}");
}

/// A zero handshake or I/O timeout would leave a server that says it
/// listens and serves no one (found by review, helper-112: every connection
/// ended "handshake timed out", or "cannot set a 0 duration timeout" after
/// the handshake): refused as bad arguments, like `--max-connections 0`.
/// A bare `0` says the same (it said "give a unit (us, ms, s)": README
/// walk-through).
#[test]
fn zero_timeouts_are_refused() {
    for opt in ["--handshake-timeout", "--io-timeout"] {
        for zero in ["0s", "0"] {
            let out = twinblock(&["serve", "--disk", "/tmp/x", "--size", "1M", opt, zero]);
            assert_eq!(out.status.code(), Some(2), "{opt} {zero}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains(opt) && err.contains("must be more than zero"), "{err}");
        }
    }
}

/// NBD strings "MUST be no longer than 4096 bytes" (proto.md): a longer
/// `--name` was served, sent whole in NBD_OPT_LIST and NBD_INFO_NAME
/// replies, and no client could select it by name (found by review,
/// helper-112).
#[test]
fn an_export_name_longer_than_4096_bytes_is_refused() {
    let long = "n".repeat(4097);
    let out = twinblock(&["serve", "--disk", "/tmp/x", "--size", "1M", "--name", &long]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--name") && err.contains("4096"), "{err}");
}

#[test]
fn existing_file_is_served_at_its_size_and_new_file_is_sparse() {
    let dir = tempfile::tempdir_in(test_tmp()).unwrap();
    let disk = dir.path().join("d.img");
    // Created sparse at --size.
    let mut s = Serve::start_on(
        tempfile::tempdir_in(test_tmp()).unwrap(),
        disk.clone(),
        URING,
        &["--size", "1G"],
    )
    .unwrap();
    let meta = std::fs::metadata(&disk).unwrap();
    assert_eq!(meta.len(), 1 << 30);
    assert!(std::os::unix::fs::MetadataExt::blocks(&meta) < 1024, "new disk is sparse");
    assert!(s.stop().success());
    // Reopened without --size: same size.
    let mut s =
        Serve::start_on(tempfile::tempdir_in(test_tmp()).unwrap(), disk.clone(), THREADS, &[])
            .unwrap();
    if have("nbdinfo") {
        let out = run_ok(Command::new("nbdinfo").arg("--size").arg(s.uri()));
        assert_eq!(out.trim(), (1u64 << 30).to_string());
    }
    assert!(s.stop().success());
}

#[test]
fn listen_address_in_use_is_an_error() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir_in(test_tmp()).unwrap();
    let disk = dir.path().join("d.img");
    let out =
        twinblock(&["serve", "--disk", disk.to_str().unwrap(), "--size", "1M", "--listen", &addr]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&addr), "{err}");
}
