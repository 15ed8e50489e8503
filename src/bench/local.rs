//! `twinblock bench --rtt DUR`: a throw-away pair on this machine (two
//! `twinblock up` processes, file-backed disks in a temporary directory)
//! whose link goes through a `twinblock netem` relay adding RTT/2 each
//! way, so the same measurement answers "what if my AZs were DUR apart".

use std::net::{TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::control::{call, Request};

/// Size of the local pair's device (synced once before measuring).
const SIZE: &str = "16M";

pub struct Pair {
    dir: PathBuf,
    children: Vec<Child>,
    /// The start failed: its error names the directory for the logs.
    keep: bool,
}

/// What a SIGINT, SIGTERM or SIGHUP of the bench must undo: the pair's processes
/// and its directory (keys, certificates, both disks and scratch areas).
struct Leftovers {
    dir: Option<PathBuf>,
    pids: Vec<u32>,
}

static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers { dir: None, pids: Vec::new() });

/// Set once a signal is being handled: the bench's own thread must not
/// end the process first (the pair it talks to is being stopped).
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// If a signal is being handled, waits for its thread to end the process.
pub fn yield_to_signal() {
    while INTERRUPTED.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// From now on SIGINT, SIGTERM and SIGHUP stop the local pair's processes
/// (`up` takes SIGTERM as a clean stop), remove its directory, and end the
/// bench (exit status 130, 143 or 129), as a finished run does. (SIGHUP:
/// the terminal or ssh session that ran the bench closed. Before, its
/// default action ended the bench at once; the pair's processes ended
/// with it, but the directory with its keys and disks stayed behind;
/// found by review, helper-148.) SIGINT and SIGHUP that the bench was
/// started ignoring (`nohup`, a background job of a script) stay ignored:
/// handled, they would end a bench its caller meant to outlive them.
pub fn clean_up_on_signal() -> Result<()> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the signal thread's runtime")?;
    let unless_ignored =
        |sig: libc::c_int, kind: SignalKind| (!ignored(sig)).then(|| signal(kind)).transpose();
    // Registered here, so that a signal from now on is caught.
    let (mut int, mut term, mut hup) = rt.block_on(async {
        Ok::<_, std::io::Error>((
            unless_ignored(libc::SIGINT, SignalKind::interrupt())?,
            signal(SignalKind::terminate())?,
            unless_ignored(libc::SIGHUP, SignalKind::hangup())?,
        ))
    })?;
    async fn recv(s: &mut Option<Signal>) {
        match s {
            Some(s) => {
                s.recv().await;
            }
            None => std::future::pending().await,
        }
    }
    std::thread::Builder::new()
        .name("twinblock-bench-signals".into())
        .spawn(move || {
            let code = rt.block_on(async {
                tokio::select! {
                    _ = recv(&mut int) => 130,
                    _ = term.recv() => 143,
                    _ = recv(&mut hup) => 129,
                }
            });
            INTERRUPTED.store(true, Ordering::Release);
            let left = LEFTOVERS.lock().map(|l| (l.dir.clone(), l.pids.clone()));
            if let Ok((dir, pids)) = left {
                stop_pids(&pids);
                if let Some(d) = dir {
                    let _ = std::fs::remove_dir_all(d);
                }
            }
            // Not `eprintln!`, which panics when stderr is gone (the
            // terminal that hung up): the exit below would never come,
            // and the bench's own thread waits for it.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "twinblock bench: interrupted; the local pair is stopped and removed"
            );
            std::process::exit(code);
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// Whether this process ignores `sig` (as it was started: `nohup` ignores
/// SIGHUP, a shell SIGINT for a background job of a script).
fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: reads the disposition only (no new action is set); `old` is
    // a plain struct the call fills.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// SIGTERM, up to 10 s for them to end, then SIGKILL (reaping each: they
/// are this process's children).
fn stop_pids(pids: &[u32]) {
    let gone = |pid: u32| {
        let mut st = 0;
        // SAFETY: plain system calls on our own children.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &mut st, libc::WNOHANG) };
        r == pid as libc::pid_t || r < 0
    };
    for &pid in pids {
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left: Vec<u32> = pids.to_vec();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&p| !gone(p));
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in left {
        // SAFETY: as above.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        let _ = gone(pid);
    }
}

/// A process of the pair ends with the bench's thread, however the bench
/// ends (kill -9 too): SIGTERM, a clean stop for `up`.
fn dies_with_bench(mut cmd: Command) -> Command {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// Runs a step of the pair's set-up that creates files or processes in
/// its directory, never beside the signal thread's clean-up: a step under
/// way ends before the clean-up starts (the signal thread takes the same
/// lock), and none starts after it (the set-up waits for the process to
/// end). Before, `gen-certs` still writing when the directory was removed
/// left `certs/` with the keys behind (found by review).
fn setup_step<T>(f: impl FnOnce(&mut Leftovers) -> Result<T>) -> Result<T> {
    let mut l = LEFTOVERS.lock().unwrap_or_else(|p| p.into_inner());
    if INTERRUPTED.load(Ordering::Acquire) {
        drop(l);
        // (The signal thread ends the process.)
        loop {
            yield_to_signal();
        }
    }
    f(&mut l)
}

impl Pair {
    /// Starts a process of the pair, its output into the files `out` and
    /// `err` of the directory.
    fn spawn(&mut self, mut cmd: Command, what: &str, out: &str, err: &str) -> Result<()> {
        let child = setup_step(|l| {
            let log = |name: &str| -> Result<Stdio> {
                Ok(std::fs::File::create(self.dir.join(name)).map(Stdio::from)?)
            };
            cmd.stdout(log(out)?).stderr(log(err)?);
            let child = dies_with_bench(cmd).spawn().with_context(|| format!("starting {what}"))?;
            l.pids.push(child.id());
            Ok(child)
        })?;
        self.children.push(child);
        Ok(())
    }
}

fn free_udp() -> Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn free_tcp() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn status(control: &Path) -> Option<serde_json::Value> {
    let req = Request { verb: "status".into(), force: false, now: false, bench: None };
    call(control, &req).ok().and_then(|r| r.status)
}

impl Pair {
    /// Starts the relay and both nodes, makes a Primary and waits until the
    /// pair is in sync.
    pub fn start(rtt: Duration) -> Result<Pair> {
        let exe = std::env::current_exe().context("locating the twinblock binary")?;
        let base =
            std::env::var_os("TMPDIR").map_or_else(|| PathBuf::from("/var/tmp"), PathBuf::from);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = base.join(format!("twinblock-bench.{}.{stamp}", std::process::id()));
        setup_step(|l| {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            l.dir = Some(dir.clone());
            Ok(())
        })?;
        let mut pair = Pair { dir: dir.clone(), children: Vec::new(), keep: false };
        let certs = setup_step(|_| {
            Command::new(&exe)
                .args(["gen-certs", "--json", "--out"])
                .arg(dir.join("certs"))
                .args(["a", "b"])
                .stdout(Stdio::null())
                .status()
                .context("running gen-certs")
        })?;
        if !certs.success() {
            bail!("gen-certs failed");
        }
        let (qa, qb, relay, na, nb) =
            (free_udp()?, free_udp()?, free_udp()?, free_tcp()?, free_tcp()?);
        let mut cfg = format!(
            "name = \"bench\"\nprotocol = \"C\"\nsize = \"{SIZE}\"\n\n[tls]\nca = \"certs/ca.pem\"\n"
        );
        for (n, q, nbd, connect) in [("a", qa, na, None), ("b", qb, nb, Some(relay))] {
            cfg.push_str(&format!(
                "\n[nodes.{n}]\naddress = \"127.0.0.1:{q}\"\nnbd = \"127.0.0.1:{nbd}\"\ndisk = \"{n}.img\"\nmeta = \"{n}.meta\"\ncontrol = \"{n}.sock\"\ncert = \"certs/{n}.pem\"\nkey = \"certs/{n}.key\"\n"
            ));
            if let Some(c) = connect {
                cfg.push_str(&format!("connect = \"127.0.0.1:{c}\"\n"));
            }
        }
        let config = dir.join("bench.toml");
        setup_step(|_| std::fs::write(&config, cfg).context("writing the pair's resource file"))?;
        let one_way = format!("{}us", (rtt / 2).as_micros());
        let mut netem = Command::new(&exe);
        netem.args(["netem", "--listen", &format!("127.0.0.1:{relay}")]).args([
            "--forward",
            &format!("127.0.0.1:{qb}"),
            "--delay",
            &one_way,
        ]);
        pair.spawn(netem, "the netem relay", "netem.out", "netem.log")?;
        for n in ["a", "b"] {
            let mut up = Command::new(&exe);
            up.args(["-q", "up", "--config"]).arg(&config).args(["--node", n]);
            pair.spawn(up, &format!("node {n}"), &format!("{n}.out"), &format!("{n}.log"))?;
        }
        let a = dir.join("a.sock");
        pair.wait(Duration::from_secs(30), "node a connected to b", |st| {
            st["connection"] == "Connected"
        })?;
        let req = Request { verb: "primary".into(), force: true, now: false, bench: None };
        call(&a, &req).map_err(|e| anyhow!("making a Primary: {e}"))?;
        pair.wait(Duration::from_secs(120), "the pair in sync", |st| {
            st["role"] == "Primary"
                && st["replication"] == "Established"
                && st["peer"]["disk"] == "UpToDate"
        })?;
        Ok(pair)
    }

    fn wait(
        &mut self,
        limit: Duration,
        what: &str,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        let a = self.control_a();
        while start.elapsed() < limit {
            if status(&a).is_some_and(|st| ok(&st)) {
                return Ok(());
            }
            for c in &mut self.children {
                if let Ok(Some(code)) = c.try_wait() {
                    self.keep = true;
                    bail!(
                        "a process of the local pair ended ({code}); logs in {}",
                        self.dir.display()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.keep = true;
        bail!("timed out waiting for {what}; logs in {}", self.dir.display())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn control_a(&self) -> PathBuf {
        self.dir.join("a.sock")
    }

    /// Stops the nodes (cleanly), the relay, and removes the directory.
    pub fn stop(mut self) {
        for n in ["a", "b"] {
            let req = Request { verb: "down".into(), force: false, now: false, bench: None };
            let _ = call(&self.dir.join(format!("{n}.sock")), &req);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for c in self.children.iter_mut().skip(1) {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Drop kills what is left and removes the directory.
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(mut l) = LEFTOVERS.lock() {
            *l = Leftovers { dir: None, pids: Vec::new() };
        }
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
