//! A replicated pair on loopback for end-to-end tests: certificates from
//! `twinblock gen-certs`, a resource file with free ports, and two real
//! `twinblock up` processes.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{run_ok, test_tmp, BIN};

pub struct Pair {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub nodes: [NodeProc; 2],
}

pub struct NodeProc {
    pub name: String,
    pub child: Option<Child>,
    pub nbd: SocketAddr,
    pub disk: PathBuf,
    pub log: PathBuf,
}

/// A port below the kernel's ephemeral range (32768 and up here), free
/// now. A port the kernel hands out for port 0 may be handed out again, to
/// another test's outgoing connection, before the node binds it (CI saw a
/// node fail with "Address already in use"); ports below that range are
/// only ever taken by name, and each test process walks its own sequence.
fn free_port(bind: impl Fn(SocketAddr) -> bool) -> SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 64) * 190;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 190) as u16;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if bind(addr) {
            return addr;
        }
    }
}

pub fn free_tcp() -> SocketAddr {
    free_port(|a| TcpListener::bind(a).is_ok())
}

pub fn free_udp() -> SocketAddr {
    free_port(|a| UdpSocket::bind(a).is_ok())
}

pub fn config_text(
    protocol: &str,
    size: &str,
    a: (SocketAddr, SocketAddr),
    b: (SocketAddr, SocketAddr),
    extra: &str,
) -> String {
    let node = |n: &str, (addr, nbd): (SocketAddr, SocketAddr)| {
        format!(
            "[nodes.{n}]\naddress = \"{addr}\"\nnbd = \"{nbd}\"\ndisk = \"{n}.img\"\nmeta = \"{n}.meta\"\ncontrol = \"{n}.sock\"\ncert = \"certs/{n}.pem\"\nkey = \"certs/{n}.key\"\n"
        )
    };
    format!(
        "name = \"r0\"\nprotocol = \"{protocol}\"\nsize = \"{size}\"\ntimeout = \"3s\"\nping-interval = \"250ms\"\nconnect-interval = \"100ms\"\n{extra}\n[tls]\nca = \"certs/ca.pem\"\n{}\n{}",
        node("a", a),
        node("b", b)
    )
}

impl Pair {
    /// Certificates and a resource file; nothing started.
    pub fn prepare(protocol: &str, size: &str) -> Pair {
        let dir = tempfile::Builder::new().prefix("tb-pair").tempdir_in(test_tmp()).unwrap();
        run_ok(
            Command::new(BIN)
                .args(["gen-certs", "--out"])
                .arg(dir.path().join("certs"))
                .args(["a", "b"]),
        );
        let (a, b) = ((free_udp(), free_tcp()), (free_udp(), free_tcp()));
        let config = dir.path().join("r0.toml");
        std::fs::write(&config, config_text(protocol, size, a, b, "")).unwrap();
        let node = |n: &str, nbd| NodeProc {
            name: n.into(),
            child: None,
            nbd,
            disk: dir.path().join(format!("{n}.img")),
            log: dir.path().join(format!("{n}.log")),
        };
        let nodes = [node("a", a.1), node("b", b.1)];
        Pair { dir, config, nodes }
    }

    /// Both nodes up, `a` Primary (forced), connected.
    pub fn start(protocol: &str, size: &str) -> Pair {
        Pair::prepare(protocol, size).bring_up()
    }

    /// Both nodes up, `a` Primary (forced), connected.
    pub fn bring_up(mut self) -> Pair {
        self.up(0);
        self.up(1);
        self.ok(&["primary", "--force"], 0);
        self.wait_connected();
        self
    }

    pub fn idx(name: &str) -> usize {
        if name == "a" {
            0
        } else {
            1
        }
    }

    /// Like [`Pair::start`] with one more line in the resource file.
    pub fn start_configured(protocol: &str, size: &str, line: &str) -> Pair {
        let p = Pair::prepare(protocol, size);
        p.configure(line);
        p.bring_up()
    }

    /// Starts node `i` and waits for its "twinblock up" line.
    pub fn up(&mut self, i: usize) {
        self.up_with(i, Command::new(BIN));
    }

    /// [`Pair::up`] as after a reboot of node `i`'s machine: the daemon
    /// sees another kernel boot id (a bind mount over
    /// `/proc/sys/kernel/random/boot_id` in a mount namespace of its own;
    /// root), so what its activity log holds may have been lost with the
    /// page cache, as after a power loss. (The data itself is all there:
    /// only the node's judgement is tested.)
    pub fn up_rebooted(&mut self, i: usize) {
        let boot = self.dir.path().join(format!("{}.boot_id", self.nodes[i].name));
        let id = format!("{:08x}-0000-4000-8000-{:012x}", std::process::id(), i as u64 + 1);
        std::fs::write(&boot, format!("{id}\n")).unwrap();
        let mut cmd = Command::new("unshare");
        cmd.args([
            "-m",
            "sh",
            "-c",
            "mount --bind \"$0\" /proc/sys/kernel/random/boot_id && exec \"$@\"",
        ])
        .arg(&boot)
        .arg(BIN);
        self.up_with(i, cmd);
    }

    /// Starts node `i` with `cmd` (twinblock, or a wrapper that execs the
    /// twinblock it is given last) and waits for its "twinblock up" line.
    pub fn up_with(&mut self, i: usize, mut cmd: Command) {
        let n = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log).unwrap();
        let mut child = cmd
            .args(["up", "--config"])
            .arg(&self.config)
            .args(["--node", &n.name])
            .env("TWINBLOCK_LOG", "debug,quinn=info,rustls=info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start twinblock up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("twinblock up:") {
                    let _ = tx.send(());
                }
            }
        });
        let started = rx.recv_timeout(Duration::from_secs(20)).is_ok();
        n.child = Some(child);
        let name = n.name.clone();
        assert!(started, "node {name} did not start:\n{}", self.log(i));
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    /// Runs `twinblock VERB --config .. --node N [args]`.
    pub fn cli(&self, verb: &str, args: &[&str], i: usize) -> std::process::Output {
        Command::new(BIN)
            .arg(verb)
            .arg("--config")
            .arg(&self.config)
            .args(["--node", &self.nodes[i].name])
            .args(args)
            .output()
            .unwrap()
    }

    /// A verb that must succeed; `words[0]` is the verb.
    pub fn ok(&self, words: &[&str], i: usize) -> String {
        let out = self.cli(words[0], &words[1..], i);
        assert!(
            out.status.success(),
            "{words:?} on {} failed: {}",
            self.nodes[i].name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self, i: usize) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"], i)).unwrap()
    }

    /// Polls until `f(status of a, status of b)` holds.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&serde_json::Value, &serde_json::Value) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let (a, b) = (self.status(0), self.status(1));
            if f(&a, &b) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\na: {a}\nb: {b}\nlog a:\n{}\nlog b:\n{}",
                tail(&self.log(0)),
                tail(&self.log(1))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls node `i` alone (the other may be down) until `f(its status)`.
    pub fn wait_one(&self, i: usize, what: &str, f: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(i);
            if f(&s) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s}\n{}",
                tail(&self.log(i))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until node `i`'s saved metadata record says its disk is
    /// `disk` (a node killed before its record is saved comes back as that
    /// record says: a new disk adopted from its peer, for one, as created).
    pub fn wait_saved(&self, i: usize, disk: &str) {
        let path = self.dir.path().join(format!("{}.meta", self.nodes[i].name));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let saved = serde_json::from_str::<serde_json::Value>(&text).ok();
            if saved.as_ref().is_some_and(|m| m["disk"] == disk) {
                return;
            }
            assert!(Instant::now() < deadline, "{} never saved {disk}: {text}", path.display());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_connected(&self) {
        self.wait("the pair to connect", Duration::from_secs(20), |a, b| {
            a["connection"] == "Connected" && b["connection"] == "Connected"
        });
    }

    /// Waits until both nodes are linked (connected, or resyncing/verifying).
    pub fn wait_linked(&self) {
        let linked = |s: &serde_json::Value| {
            !matches!(s["connection"].as_str(), Some("StandAlone" | "Connecting") | None)
        };
        self.wait("the pair to link", Duration::from_secs(20), |a, b| linked(a) && linked(b));
    }

    /// Waits until the Primary (node a) has nothing in flight to the peer.
    pub fn wait_drained(&self) {
        self.wait("replication to drain", Duration::from_secs(30), |a, _| a["in_flight"] == 0);
    }

    /// Polls node `i` alone (the other may be down) until it has no link.
    pub fn wait_unlinked(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.status(i)["connection"] == "Connected" {
            assert!(
                Instant::now() < deadline,
                "node {} never noticed the link went",
                self.nodes[i].name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One qemu-io command against node `i`'s export.
    pub fn qemu_io(&self, i: usize, command: &str) -> String {
        super::run_qemu_io(&self.uri(i), &[command])
    }

    /// Splits the pair: both disconnect, b is forced Primary too, each runs
    /// its qemu-io command, then b is demoted again.
    pub fn split_apart(&self, on_a: &str, on_b: &str) {
        self.ok(&["disconnect"], 0);
        self.ok(&["disconnect"], 1);
        self.wait("both StandAlone", Duration::from_secs(10), |a, b| {
            a["connection"] == "StandAlone" && b["connection"] == "StandAlone"
        });
        // (a's disconnect left b Outdated: a split brain is forced.)
        self.ok(&["primary", "--force"], 1);
        self.qemu_io(0, on_a);
        self.qemu_io(1, on_b);
        self.ok(&["secondary"], 1);
    }

    /// Waits until a resync is over: connected, nothing out of sync or in
    /// flight, the Secondary UpToDate.
    pub fn wait_synced(&self, what: &str, timeout: Duration) {
        self.wait(what, timeout, |a, b| {
            a["connection"] == "Connected"
                && a["sync"].is_null()
                && a["out_of_sync_bytes"] == 0
                && a["in_flight"] == 0
                && b["disk"] == "UpToDate"
        });
    }

    /// Both nodes Connected, UpToDate, with nothing to resync and nothing
    /// in flight.
    pub fn wait_both_synced(&self, what: &str, timeout: Duration) {
        self.wait(what, timeout, |a, b| {
            [a, b].iter().all(|s| {
                s["connection"] == "Connected"
                    && s["sync"].is_null()
                    && s["out_of_sync_bytes"] == 0
                    && s["in_flight"] == 0
                    && s["disk"] == "UpToDate"
            })
        });
    }

    /// Node b's own replication address, from the resource file.
    pub fn b_address(&self) -> String {
        let text = std::fs::read_to_string(&self.config).unwrap();
        text.split("[nodes.b]\naddress = \"").nth(1).unwrap().split('"').next().unwrap().to_string()
    }

    /// Makes a reach b through a relay on a free UDP port (a `netem` the
    /// test starts): returns (relay, b's own address).
    pub fn route_b_through_relay(&self) -> (String, String) {
        let b_addr = self.b_address();
        let relay = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let text = std::fs::read_to_string(&self.config).unwrap().replace(
            &format!("[nodes.b]\naddress = \"{b_addr}\"\n"),
            &format!("[nodes.b]\naddress = \"{b_addr}\"\nconnect = \"{relay}\"\n"),
        );
        std::fs::write(&self.config, text).unwrap();
        (relay, b_addr)
    }

    /// Makes a reach b through a `netem` relay adding `delay` each way.
    pub fn relay_b(&self, delay: &str) -> super::KillOnDrop {
        let (relay, b_addr) = self.route_b_through_relay();
        super::netem_quiet(&relay, &b_addr, delay)
    }

    /// The log line where node `i` gave its peer up as unresponsive
    /// (`timeout`: no sign of life, or an operation not acknowledged).
    pub fn gave_up_peer(&self, i: usize) -> Option<String> {
        self.log(i)
            .lines()
            .find(|l| {
                l.contains("no sign of life")
                    || l.contains("has completed no operation")
                    || l.contains("has not completed operation")
            })
            .map(String::from)
    }

    /// The peer `timeout` of the resource file (3 s unless set).
    pub fn set_timeout(&self, timeout: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains("timeout = \"3s\""), "the resource file has no default timeout");
        let text = text.replace("timeout = \"3s\"", &format!("timeout = \"{timeout}\""));
        std::fs::write(&self.config, text).unwrap();
    }

    /// Node `i`'s disk is `path` (in the resource file too).
    pub fn set_disk(&mut self, i: usize, path: &std::path::Path) {
        self.set_file(i, "disk", "img", path);
        self.nodes[i].disk = path.to_path_buf();
    }

    /// Node `i`'s metadata is `path` (in the resource file).
    pub fn set_meta(&mut self, i: usize, path: &std::path::Path) {
        self.set_file(i, "meta", "meta", path);
    }

    /// Node `i`'s `key = "NAME.ext"` in the resource file becomes `path`.
    fn set_file(&self, i: usize, key: &str, ext: &str, path: &std::path::Path) {
        let name = format!("{key} = \"{}.{ext}\"", self.nodes[i].name);
        let text = std::fs::read_to_string(&self.config).unwrap();
        assert!(text.contains(&name), "no {name} in the resource file");
        let text = text.replace(&name, &format!("{key} = \"{}\"", path.display()));
        std::fs::write(&self.config, text).unwrap();
    }

    /// Both nodes up, a made Primary (`--force`, new disks), in sync.
    pub fn up_in_sync(&mut self, what: &str, timeout: Duration) {
        self.up(0);
        self.up(1);
        self.ok(&["primary", "--force"], 0);
        self.wait_connected();
        self.wait_synced(what, timeout);
    }

    /// A resource file with `line` added after the protocol.
    pub fn configure(&self, line: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let text = text.replacen("\nsize = ", &format!("\n{line}\nsize = "), 1);
        std::fs::write(&self.config, text).unwrap();
    }

    pub fn uri(&self, i: usize) -> String {
        format!("nbd://{}/r0", self.nodes[i].nbd)
    }

    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `down`, then wait for a clean exit.
    pub fn down(&mut self, i: usize) -> std::process::ExitStatus {
        self.ok(&["down"], i);
        let mut c = self.nodes[i].child.take().unwrap();
        super::wait_exit(&mut c, Duration::from_secs(20), "node did not go down")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for i in 0..2 {
            self.kill(i);
        }
        if std::thread::panicking() {
            // A failed test keeps both nodes' logs (CI prints this path).
            let keep = test_tmp()
                .join("failed")
                .join(self.dir.path().file_name().map(|n| n.to_owned()).unwrap_or_default());
            if std::fs::create_dir_all(&keep).is_ok() {
                for n in &self.nodes {
                    let _ = std::fs::copy(&n.log, keep.join(format!("{}.log", n.name)));
                    // The last lines, without the status polls, for CI.
                    let log = std::fs::read_to_string(&n.log).unwrap_or_default();
                    let lines: Vec<&str> =
                        log.lines().filter(|l| !l.contains("verb=status")).collect();
                    eprintln!(
                        "--- last lines of node {}'s log ---\n{}",
                        n.name,
                        lines[lines.len().saturating_sub(25)..].join("\n")
                    );
                }
                eprintln!("logs of the failed pair kept in {}", keep.display());
            }
        }
    }
}

pub fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
