//! What a new user meets walking the README from the top (helper-155):
//! mistakes in the resource file are named as the file and the key, as
//! shared/DESIGN.md asks of a bad config ("names the key and the reason").

mod common;

use std::process::Command;

use common::pair::Pair;
use common::BIN;

/// A CA, certificate or key file that cannot be used is named by its key
/// in the resource file, as every other bad value is (`r0.toml: tls.ca:
/// ...`). Before, `up` said only "certs/nope.pem: I/O error: No such file
/// or directory (os error 2)", naming neither the resource file nor the
/// key, and a `tls.ca` that named a private key was told of `cert` and
/// `key` (found walking the README's "A replicated pair").
#[test]
fn a_certificate_file_that_cannot_be_used_names_its_key() {
    let p = Pair::prepare("C", "8M");
    let text = std::fs::read_to_string(&p.config).unwrap();
    let up = |from: &str, to: &str| {
        std::fs::write(&p.config, text.replacen(from, to, 1)).unwrap();
        let out = p.cli("up", &[], 0);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{err}");
        err
    };
    let err = up("ca = \"certs/ca.pem\"", "ca = \"certs/nope.pem\"");
    assert!(err.contains("r0.toml: tls.ca: "), "{err}");
    assert!(err.contains("certs/nope.pem: "), "{err}");
    assert!(err.contains("No such file or directory"), "{err}");
    let err = up("ca = \"certs/ca.pem\"", "ca = \"certs/a.key\"");
    assert!(err.contains("r0.toml: tls.ca: "), "{err}");
    assert!(
        err.contains("it holds a private key (`tls.ca` names the certificate of the CA"),
        "{err}"
    );
    let err = up("cert = \"certs/a.pem\"", "cert = \"certs/nope.pem\"");
    assert!(err.contains("r0.toml: nodes.a.cert: "), "{err}");
    assert!(err.contains("certs/nope.pem: "), "{err}");
    let err = up("key = \"certs/a.key\"", "key = \"certs/b.key\"");
    assert!(err.contains("r0.toml: nodes.a.key: "), "{err}");
    assert!(err.contains("b.key: the key does not go with the certificate"), "{err}");
    let err = up("cert = \"certs/a.pem\"", "cert = \"certs/a.key\"");
    assert!(err.contains("r0.toml: nodes.a.cert: "), "{err}");
    assert!(err.contains("(`cert` names the node's certificate"), "{err}");
    std::fs::write(&p.config, &text).unwrap();

    // The witness the same way.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    std::fs::write(
        &p.config,
        format!(
            "{text}\n[nodes.w]\nwitness = true\naddress = \"{addr}\"\ncontrol = \"w.sock\"\n\
             cert = \"certs/nope.pem\"\nkey = \"certs/nope.key\"\n"
        ),
    )
    .unwrap();
    let out = common::run_timeout(
        Command::new(BIN).args(["witness", "--config"]).arg(&p.config).args(["--node", "w"]),
        std::time::Duration::from_secs(20),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("r0.toml: nodes.w.cert: "), "{err}");
    assert!(err.contains("certs/nope.pem: "), "{err}");
}

/// `status --watch` piped or logged (`| tee`, a file) prints its snapshots
/// one after the other, a blank line between them, and no terminal
/// escapes; before, a file got "\x1b[2J\x1b[H" (clear screen, home)
/// before every snapshot, as a terminal does (found piping `--watch`).
#[test]
fn status_watch_into_a_pipe_has_no_terminal_escapes() {
    let mut p = Pair::prepare("C", "8M");
    p.up(0);
    let (_watch, lines) = common::follow_lines(
        Command::new(BIN)
            .args(["status", "--watch", "--config"])
            .arg(&p.config)
            .args(["--node", "a"]),
    );
    let wait = std::time::Duration::from_secs(20);
    // Two snapshots are some ten lines: forty is more than enough.
    let mut seen = Vec::new();
    while seen.len() < 40
        && seen.iter().filter(|l: &&String| l.starts_with("r0 on a: ")).count() < 2
    {
        seen.push(lines.recv_timeout(wait).expect("two snapshots of --watch"));
    }
    let text = seen.join("\n");
    assert!(!text.contains('\x1b'), "terminal escapes in a pipe: {text:?}");
    let second = seen.iter().rposition(|l| l.starts_with("r0 on a: ")).unwrap();
    assert_eq!(seen[second - 1], "", "no blank line between snapshots: {text}");
}

/// A `meta` or `disk` in a directory that does not exist is refused naming
/// the key, and nothing is made. Before, `meta = "nodir/a.meta"` failed
/// with "nodir/a.meta.disk: No such file or directory", a file the
/// resource file never names, once the disk file was opened.
#[test]
fn a_file_in_a_missing_directory_names_its_key() {
    let p = Pair::prepare("C", "8M");
    let text = std::fs::read_to_string(&p.config).unwrap();
    for (from, to, key) in [
        ("meta = \"a.meta\"", "meta = \"nodir/a.meta\"", "nodes.a.meta"),
        ("disk = \"a.img\"", "disk = \"nodir/a.img\"", "nodes.a.disk"),
    ] {
        std::fs::write(&p.config, text.replacen(from, to, 1)).unwrap();
        let out = p.cli("up", &[], 0);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(&format!("r0.toml: {key}: ")), "{err}");
        assert!(err.contains("nodir does not exist"), "{err}");
        let left: Vec<_> = std::fs::read_dir(p.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("a.") && !n.starts_with("a.sock"))
            .collect();
        assert!(left.is_empty(), "a refused start left {left:?}");
    }
}
