//! The service a crashed process left running: `<meta>.promoted` exists
//! from the start of a promotion's hooks (address, `on_promote`) until an
//! `on_demote` has run without error. A process that died in between (a
//! `kill -9`, a panic, the OOM killer) left that promotion's service
//! (slapd, the mount, the loop device over a FUSE file) on a node that
//! starts again as Secondary; [`super::start`] then runs `on_demote`
//! once, before any hook of a new promotion. Before, it stayed until this
//! node's next promotion (review, helper-158).
//!
//! The mark names the process that ran the hooks (its pid, its session,
//! the machine's boot): a hook that process was running when it died is
//! not killed with it (a process group of its own) and runs on, an
//! `on_promote` starting the service after the `on_demote` of the next
//! start found nothing to stop. Such a hook is killed first, as one given
//! up (review, helper-160).
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
    /// Its session: the hooks' shells are in it (a process group of their
    /// own, not a session), a daemon a hook started with `setsid` is not.
    pub session: i32,
    /// [`twinblock_replicator::boot::boot`]: pids of another boot name
    /// other processes.
    pub boot: u64,
}

impl Runner {
    fn me() -> Runner {
        // SAFETY: getsid(0) only reads this process's session id.
        let session = unsafe { libc::getsid(0) };
        Runner { pid: std::process::id() as i32, session, boot: twinblock_replicator::boot::boot() }
    }

    fn parse(text: &str) -> Option<Runner> {
        let mut f = text.split_whitespace();
        let pid = f.next()?.parse().ok()?;
        let session = f.next()?.parse().ok()?;
        let boot = f.next()?.parse().ok()?;
        Some(Runner { pid, session, boot })
    }
}

fn write(node: &Node) {
    let p = path(&node.me.meta);
    let r = Runner::me();
    if let Err(e) = std::fs::write(&p, format!("{} {} {}\n", r.pid, r.session, r.boot)) {
        // The hooks run anyway: only a crash's clean-up at the next
        // start would be missed.
        tracing::warn!(file = %p.display(), "cannot mark the promotion's hooks as started: {e}");
    }
}

/// A promotion's hooks start: marked before anything is done.
pub fn mark(node: &Node) {
    write(node);
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

/// The last process stopped between a promotion's hooks and a good
/// `on_demote`: the process the mark names (None for a mark that names
/// none, unreadable or of an older format).
pub fn left(node: &Node) -> Option<Option<Runner>> {
    let text = std::fs::read_to_string(path(&node.me.meta));
    match text {
        Ok(text) => Some(Runner::parse(&text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(file = %path(&node.me.meta).display(), "cannot read: {e}");
            Some(None)
        }
    }
}

/// The start's `on_demote` is this process's: the mark names it from now
/// on (it dies in turn before that `on_demote` succeeded: its hooks are
/// the ones the next start looks for).
pub fn adopt(node: &Node) {
    write(node);
}

/// Kills, with their process groups, the hooks `old` was running when it
/// stopped (an `on_promote`, an `on_demote`, an address command), and
/// waits a little for them to go. A hook is a process group's leader in
/// `old`'s session with this node's hook environment
/// ([`super::hook_env`]), not a child of this process.
pub async fn stop_hooks_of(node: &Node, old: Runner) {
    if old.boot != twinblock_replicator::boot::boot() || old.session <= 0 {
        return;
    }
    let env: Vec<String> =
        super::hook_env(node).into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let me = std::process::id() as i32;
    let found = tokio::task::spawn_blocking(move || hooks_left_running(old.session, &env, me))
        .await
        .unwrap_or_default();
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

/// Pids of the process group leaders in `session` (not its leader) whose
/// environment holds every `env` entry, other than `me` and its children
/// (this process's own hooks).
fn hooks_left_running(session: i32, env: &[String], me: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Some(s) = proc_stat(pid) else { continue };
        if pid == me || s.ppid == me || s.zombie || s.pgrp != pid || s.session != session {
            continue;
        }
        if session == pid {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else { continue };
        let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
        if env.iter().all(|want| vars.contains(&want.as_bytes())) {
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
        let text = format!("{} {} {}\n", me.pid, me.session, me.boot);
        assert_eq!(Runner::parse(&text), Some(me));
        // The first marks held the pid alone: no hook is looked for.
        assert_eq!(Runner::parse("1234\n"), None);
    }

    // Only a group leader of the session with the whole hook environment
    // is a hook: not a process without it, not one in a group of another.
    #[test]
    fn a_hook_is_found_by_its_session_group_and_environment() {
        let env = vec![format!("TWINBLOCK_NODE=t{}", std::process::id())];
        let spawn = |with_env: bool, own_group: bool| {
            let mut c = std::process::Command::new("sleep");
            c.arg("30");
            if with_env {
                c.env("TWINBLOCK_NODE", format!("t{}", std::process::id()));
            }
            if own_group {
                std::os::unix::process::CommandExt::process_group(&mut c, 0);
            }
            c.spawn().unwrap()
        };
        let mut hook = spawn(true, true);
        let mut other = spawn(false, true);
        let mut grouped = spawn(true, false);
        // SAFETY: getsid(0) only reads this process's session id.
        let session = unsafe { libc::getsid(0) };
        // This process's children are skipped (its own hooks): looked for
        // as another process would.
        let found: Vec<i32> = hooks_left_running(session, &env, 0)
            .into_iter()
            .filter(|p| [hook.id(), other.id(), grouped.id()].contains(&(*p as u32)))
            .collect();
        let own = hooks_left_running(session, &env, std::process::id() as i32);
        for c in [&mut hook, &mut other, &mut grouped] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert_eq!(found, vec![hook.id() as i32]);
        assert!(!own.contains(&(hook.id() as i32)), "its own child counted");
    }
}
