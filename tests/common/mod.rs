//! Helpers for end-to-end tests: start real `twinblock` processes, find
//! tools, run commands with timeouts.
#![allow(dead_code)]

pub mod fusedisk;
pub mod nbd;
pub mod pair;
pub mod quic;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_twinblock");

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `tool` is installed. In CI a missing tool fails the test;
/// elsewhere the test is skipped with a printed reason.
pub fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        assert!(!in_ci(), "{tool} is required in CI but is not installed");
        eprintln!("SKIP: {tool} is not installed (run scripts/setup.sh)");
    }
    found
}

/// Whether we run as root (mount, losetup). Same CI rule as `have`.
pub fn root(why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !is_root {
        assert!(!in_ci(), "CI must run as root ({why})");
        eprintln!("SKIP: {why} needs root");
    }
    is_root
}

/// Runs a command to completion within `timeout`; panics on timeout.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.unwrap_or_else(|e| panic!("{desc}: {e}")),
        Err(_) => {
            // SAFETY: signalling a child we started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("{desc} did not finish within {timeout:?}");
        }
    }
}

/// Runs a command and asserts it succeeded; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let desc = format!("{cmd:?}");
    let out = run_timeout(cmd, Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs qemu-io on `uri` (raw, no cache so no implied FUA) with each
/// command as one `-c`; asserts it succeeded and returns its output.
pub fn run_qemu_io<S: AsRef<str>>(uri: &str, commands: &[S]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", "-t", "none", uri]);
    for c in commands {
        cmd.args(["-c", c.as_ref()]);
    }
    run_ok(&mut cmd)
}

/// A child process killed when the test ends, even by a panic.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd` with stdin null and stdout read line by line on a thread
/// (stderr as the caller set it): the process, killed when dropped, and
/// its lines as they come (`twinblock events`, say).
pub fn follow_lines(cmd: &mut Command) -> (KillOnDrop, mpsc::Receiver<String>) {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    (KillOnDrop(child), lines)
}

/// `twinblock witness` for node `w` of the resource file `config`, its
/// log to `log`; killed when dropped.
pub fn witness(config: &Path, log: Stdio) -> KillOnDrop {
    KillOnDrop(
        Command::new(BIN)
            .args(["witness", "--config"])
            .arg(config)
            .args(["--node", "w"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// What a pipelined test writer puts in block `cookie`: a pattern of its
/// own, the cookie in its first 8 bytes.
pub fn cookie_block(cookie: u64) -> Vec<u8> {
    let mut b = pattern(4096, cookie + 1);
    b[..8].copy_from_slice(&cookie.to_be_bytes());
    b
}

/// The cookies whose [`cookie_block`] `disk` does not hold.
pub fn cookie_blocks_missing<'a>(
    disk: &[u8],
    cookies: impl IntoIterator<Item = &'a u64>,
) -> Vec<u64> {
    cookies
        .into_iter()
        .copied()
        .filter(|&c| disk[(c * 4096) as usize..(c * 4096 + 4096) as usize] != cookie_block(c)[..])
        .collect()
}

/// A `twinblock netem` relay on `listen` to `forward`, adding `delay`
/// each way, its output discarded.
pub fn netem_quiet(listen: &str, forward: &str, delay: &str) -> KillOnDrop {
    KillOnDrop(
        Command::new(BIN)
            .args(["netem", "--listen", listen, "--forward", forward, "--delay", delay])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A running `twinblock serve`.
pub struct Serve {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub disk: PathBuf,
    pub log: PathBuf,
}

/// How a test wants its server: I/O backend and extra flags.
#[derive(Clone, Copy, Debug)]
pub struct Flavor {
    pub backend: &'static str,
    pub direct: bool,
}

pub const URING: Flavor = Flavor { backend: "uring", direct: false };
pub const THREADS: Flavor = Flavor { backend: "threads", direct: false };
pub const URING_DIRECT: Flavor = Flavor { backend: "uring", direct: true };

impl Serve {
    /// Starts `twinblock serve` on a new sparse disk of `size` in a temp dir.
    pub fn start(flavor: Flavor, size: &str) -> Serve {
        let dir = tempfile::Builder::new().prefix("tb-test").tempdir_in(test_tmp()).unwrap();
        let disk = dir.path().join("disk.img");
        Serve::start_on(dir, disk, flavor, &["--size", size]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts `twinblock serve` on `disk`; Err(stderr) if it exits instead.
    pub fn start_on(
        dir: tempfile::TempDir,
        disk: PathBuf,
        flavor: Flavor,
        extra: &[&str],
    ) -> Result<Serve, String> {
        let log = dir.path().join("serve.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--disk")
            .arg(&disk)
            .args(["--listen", "127.0.0.1:0", "--io", flavor.backend])
            .args(extra)
            .env("TWINBLOCK_LOG", "debug")
            .env_remove("TWINBLOCK_IO")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        if flavor.direct {
            cmd.arg("--direct");
        }
        let mut child = cmd.spawn().expect("start twinblock serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.parse::<SocketAddr>().ok());
                }
            }
            let _ = tx.send(None);
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Some(addr)) => Ok(Serve { child: Some(child), addr, dir, disk, log }),
            _ => {
                let _ = child.kill();
                let status = child.wait().ok();
                Err(format!(
                    "twinblock serve did not start ({status:?}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ))
            }
        }
    }

    pub fn uri(&self) -> String {
        format!("nbd://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("serve did not stop on SIGTERM; log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Where tests put their files: a real disk file system (O_DIRECT, holes).
pub fn test_tmp() -> PathBuf {
    let p = std::env::var_os("TWINBLOCK_TEST_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf());
    std::fs::create_dir_all(&p).unwrap();
    p
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Waits up to `within` for `child` to exit; panics with `what` after.
pub fn wait_exit(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tmpfs of a given size (a file system that can fill up), mounted at
/// a new directory under `test_tmp()`; unmounted when dropped. Needs root.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(prefix: &str, size: &str) -> Tmpfs {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir_in(test_tmp()).unwrap();
        run_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
                .arg(dir.path()),
        );
        Tmpfs { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A new size (room freed, or taken away).
    pub fn resize(&self, size: &str) {
        run_ok(
            Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(self.path()),
        );
    }

    /// Fills what room is left with a file (`filler`); returns its path.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        filler
    }

    /// The names of the files it holds, sorted.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
