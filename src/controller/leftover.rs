//! The service a crashed process left running: `<meta>.promoted` exists
//! from the start of a promotion's hooks (address, `on_promote`) until an
//! `on_demote` has run without error. A process that died in between (a
//! `kill -9`, a panic, the OOM killer) left that promotion's service
//! (slapd, the mount, the loop device over a FUSE file) on a node that
//! starts again as Secondary; [`super::start`] then runs `on_demote`
//! once, before any hook of a new promotion. Before, it stayed until this
//! node's next promotion (review, helper-158).
//!
//! The mark names the process that ran the hooks (its pid, the random
//! `TWINBLOCK_HOOKS_ID` its hooks have in their environment, the
//! machine's boot): a hook that process was running when it died is not
//! killed with it (a process group of its own) and runs on, an
//! `on_promote` starting the service after the `on_demote` of the next
//! start found nothing to stop. Such a hook is killed first, as one given
//! up (review, helper-160). Found by that variable, not by the old
//! process's session: in a PID namespace whose session leader is outside
//! (a container started by `setsid unshare`, as CI runs) every session
//! reads as 0, and no hook was found.
//!
//! Not synced to disk: what it stands for, the processes and mounts of
//! the hooks, does not outlive the machine either.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use twinblock_replicator::Node;

/// How long a hook left running is waited for once killed (a process in
/// the kernel's uninterruptible sleep, a `mount` on a dead NBD device,
/// dies only when that call returns): `on_demote` then runs anyway.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// The marker beside `meta`.
pub fn path(meta: &Path) -> PathBuf {
    PathBuf::from(format!("{}.promoted", meta.display()))
}

/// The process that runs the hooks, as the marker names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runner {
    pub pid: i32,
    /// [`hooks_id`] of that process.
    pub id: u64,
    /// [`twinblock_replicator::boot::boot`]: pids of another boot name
    /// other processes.
    pub boot: u64,
}

/// The environment variable naming the daemon that ran a hook.
pub const ID_VAR: &str = "TWINBLOCK_HOOKS_ID";

/// This process's [`ID_VAR`], random, in every hook's environment
/// ([`super::hook_env`]).
pub fn hooks_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        use std::io::Read;
        let mut b = [0u8; 8];
        let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b));
        match random {
            Ok(()) => u64::from_ne_bytes(b),
            // (Unique enough without it: this process's pid and start.)
            Err(_) => {
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
                t.map_or(0, |t| t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40)
            }
        }
    })
}

/// [`ID_VAR`]'s value for the process whose id is `id`.
pub fn id_value(id: u64) -> String {
    format!("{id:016x}")
}

/// The environment entry of the hooks of the process whose id is `id`.
fn id_var(id: u64) -> String {
    format!("{ID_VAR}={}", id_value(id))
}

impl Runner {
    fn me() -> Runner {
        Runner {
            pid: std::process::id() as i32,
            id: hooks_id(),
            boot: twinblock_replicator::boot::boot(),
        }
    }

    fn parse(text: &str) -> Option<Runner> {
        let mut f = text.split_whitespace();
        let pid = f.next()?.parse().ok()?;
        let id = u64::from_str_radix(f.next()?, 16).ok()?;
        let boot = f.next()?.parse().ok()?;
        Some(Runner { pid, id, boot })
    }
}

/// Marks this process as running this node's promotion hooks: before a
/// promotion's hooks start, and at the start's `on_demote` after a crash
/// (should this process die in turn before that `on_demote` succeeded,
/// its hooks are the ones the next start looks for).
pub fn mark(node: &Node) {
    let p = path(&node.me.meta);
    let r = Runner::me();
    if let Err(e) = std::fs::write(&p, format!("{} {} {}\n", r.pid, id_value(r.id), r.boot)) {
        // The hooks run anyway: only a crash's clean-up at the next
        // start would be missed.
        tracing::warn!(file = %p.display(), "cannot mark the promotion's hooks as started: {e}");
    }
}

/// `on_demote` ran without error: nothing of the hooks is left.
pub fn clear(node: &Node) {
    let p = path(&node.me.meta);
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %p.display(), "cannot remove: {e}"),
    }
}

/// What the mark says at a start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Left {
    /// No mark: the last process's hooks were undone (or never ran).
    Nothing,
    /// The last process stopped between a promotion's hooks and a good
    /// `on_demote`, and the mark names it (its hooks may still run).
    By(Runner),
    /// The same, the mark unreadable or of an older format: no process
    /// is named.
    Unnamed,
}

/// What the last process left ([`Left`]).
pub fn left(node: &Node) -> Left {
    let p = path(&node.me.meta);
    match std::fs::read_to_string(&p) {
        Ok(text) => Runner::parse(&text).map_or(Left::Unnamed, Left::By),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Left::Nothing,
        Err(e) => {
            tracing::warn!(file = %p.display(), "cannot read: {e}");
            Left::Unnamed
        }
    }
}

/// Kills, with their process groups, the hooks `old` was running when it
/// stopped (an `on_promote`, an `on_demote`, an address command), and
/// waits a little for them to go. A hook is a process group's leader, not
/// a session's (a daemon a hook started with `setsid` is left to
/// `on_demote`), with `old`'s `TWINBLOCK_HOOKS_ID` in its environment.
pub async fn stop_hooks_of(old: Runner) {
    if old.boot != twinblock_replicator::boot::boot() {
        return;
    }
    let (var, me) = (id_var(old.id), std::process::id() as i32);
    let found =
        tokio::task::spawn_blocking(move || hooks_left_running(&var, me)).await.unwrap_or_default();
    for &pid in &found {
        tracing::warn!(
            pid,
            old = old.pid,
            "a hook of the last process still runs (it died while the hook ran): killed with its \
             process group before on_demote"
        );
        // SAFETY: kill(2) on the hook's process group (its leader checked above).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let until = Instant::now() + KILL_WAIT;
    for pid in found {
        while proc_stat(pid).is_some_and(|s| !s.zombie) {
            if Instant::now() >= until {
                tracing::warn!(pid, "the hook killed does not go: on_demote runs beside it");
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What /proc/PID/stat says of a process.
struct Stat {
    ppid: i32,
    pgrp: i32,
    session: i32,
    zombie: bool,
}

fn proc_stat(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid pgrp session ...": comm may hold spaces and
    // parentheses, so the fields are counted from the last ')'.
    let (_, rest) = text.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?;
    let ppid = f.next()?.parse().ok()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some(Stat { ppid, pgrp, session, zombie: state == "Z" || state == "X" })
}

/// Pids of the process group leaders that lead no session and have `var`
/// in their environment, other than `me` and its children (this
/// process's own hooks).
fn hooks_left_running(var: &str, me: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Some(s) = proc_stat(pid) else { continue };
        if pid == me || s.ppid == me || s.zombie || s.pgrp != pid || s.session == pid {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        if environ.split(|b| *b == 0).any(|v| v == var.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_names_its_process() {
        let me = Runner::me();
        let text = format!("{} {} {}\n", me.pid, id_value(me.id), me.boot);
        assert_eq!(Runner::parse(&text), Some(me));
        // The first marks held the pid alone: no hook is looked for.
        assert_eq!(Runner::parse("1234\n"), None);
    }

    // Only a process group leader with the old process's id in its
    // environment is its hook: not a process without it, not one in the
    // group of another, not a session leader (a daemon started with
    // `setsid`).
    #[test]
    fn a_hook_is_found_by_its_group_and_its_runners_id() {
        let id = u64::from(std::process::id()) << 20 | 0xabc;
        let spawn = |with_id: bool, own_group: bool, session: bool| {
            let mut c = std::process::Command::new("sleep");
            c.arg("30");
            if with_id {
                c.env(ID_VAR, id_value(id));
            }
            if own_group {
                std::os::unix::process::CommandExt::process_group(&mut c, 0);
            }
            if session {
                // SAFETY: setsid(2) in the child before exec.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut c, || {
                        libc::setsid();
                        Ok(())
                    });
                }
            }
            c.spawn().unwrap()
        };
        let mut hook = spawn(true, true, false);
        let mut other = spawn(false, true, false);
        let mut grouped = spawn(true, false, false);
        let mut daemon = spawn(true, false, true);
        let ours = [hook.id(), other.id(), grouped.id(), daemon.id()];
        // This process's children are skipped (its own hooks): looked for
        // as another process would.
        let found: Vec<i32> = hooks_left_running(&id_var(id), 0)
            .into_iter()
            .filter(|p| ours.contains(&(*p as u32)))
            .collect();
        let own = hooks_left_running(&id_var(id), std::process::id() as i32);
        for c in [&mut hook, &mut other, &mut grouped, &mut daemon] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert_eq!(found, vec![hook.id() as i32]);
        assert!(!own.contains(&(hook.id() as i32)), "its own child counted");
    }
}
