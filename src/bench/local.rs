//! `twinblock bench --rtt DUR`: a throw-away pair on this machine (two
//! `twinblock up` processes, file-backed disks in a temporary directory)
//! whose link goes through a `twinblock netem` relay adding RTT/2 each
//! way, so the same measurement answers "what if my AZs were DUR apart".

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::control::{call, Request};

/// Size of the local pair's device (synced once before measuring).
const SIZE: &str = "16M";

pub struct Pair {
    dir: PathBuf,
    children: Vec<Child>,
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
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut pair = Pair { dir: dir.clone(), children: Vec::new() };
        let certs = Command::new(&exe)
            .args(["gen-certs", "--json", "--out"])
            .arg(dir.join("certs"))
            .args(["a", "b"])
            .stdout(Stdio::null())
            .status()
            .context("running gen-certs")?;
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
        std::fs::write(&config, cfg).context("writing the pair's resource file")?;
        let log = |name: &str| -> Result<Stdio> {
            Ok(std::fs::File::create(dir.join(name)).map(Stdio::from)?)
        };
        let one_way = format!("{}us", (rtt / 2).as_micros());
        pair.children.push(
            Command::new(&exe)
                .args(["netem", "--listen", &format!("127.0.0.1:{relay}")])
                .args(["--forward", &format!("127.0.0.1:{qb}"), "--delay", &one_way])
                .stdout(log("netem.out")?)
                .stderr(log("netem.log")?)
                .spawn()
                .context("starting the netem relay")?,
        );
        for n in ["a", "b"] {
            pair.children.push(
                Command::new(&exe)
                    .args(["-q", "up", "--config"])
                    .arg(&config)
                    .args(["--node", n])
                    .stdout(log(&format!("{n}.out"))?)
                    .stderr(log(&format!("{n}.log"))?)
                    .spawn()
                    .with_context(|| format!("starting node {n}"))?,
            );
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
                    bail!(
                        "a process of the local pair ended ({code}); logs in {}",
                        self.dir.display()
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
