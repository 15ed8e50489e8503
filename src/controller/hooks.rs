//! Running the controller's hooks: the address move and `on_promote` after
//! a promotion, `on_demote` before a demotion. Commands run through `sh -c`
//! one after the other with the hook environment; each has a deadline.

use std::time::Duration;

use twinblock_mover::child::{Child, Exit};
use twinblock_replicator::config::ControllerSettings;
use twinblock_replicator::core::Hook;
use twinblock_replicator::Node;

/// How much of stderr an error keeps (characters).
const TAIL: usize = 300;

/// Runs one shell command; Err carries the exit status and stderr's tail.
/// The command runs in its own process group ([`Child`]): at the
/// deadline (or when the caller drops this future) the whole group is
/// killed, not only the shell. It is done when the shell exits: a
/// background process it started (a daemon in `on_promote`) may keep
/// stderr open and live on (stderr is drained on, never closed under it).
pub async fn shell(cmd: &str, env: &[(String, String)], deadline: Duration) -> Result<(), String> {
    let mut child =
        Child::spawn(cmd, env, false).map_err(|e| format!("{cmd:?}: cannot start: {e}"))?;
    let status = match child.wait(deadline, std::future::pending::<()>()).await {
        Exit::Exited(status) => status,
        Exit::Failed(e) => return Err(format!("{cmd:?}: {e}")),
        Exit::Deadline | Exit::Stopped(()) => {
            return Err(format!("{cmd:?}: still running after {deadline:?}: killed"))
        }
    };
    if status.success() {
        return Ok(());
    }
    // What the command wrote to stderr before its exit (not what a
    // background child holding it writes later, nor waited for).
    let err = child.stderr();
    let tail: String = err.chars().rev().take(TAIL).collect::<Vec<_>>().into_iter().rev().collect();
    Err(format!("{cmd:?}: {status}: {tail}"))
}

/// How often a running `on_promote` command looks whether the node is
/// still a Primary that keeps the role.
const STOP_POLL: Duration = Duration::from_millis(100);

/// `on_promote`'s commands in order, stopping at the first failure, and
/// given up as soon as `stop` names a reason (the node was deposed, is
/// demoting, `down` came, or is no longer Primary): the rest is skipped,
/// and a command running then is killed with its process group. The
/// Demote hook waits behind this one, and `down` waits for the demotion
/// only for the `on_demote` commands' time: before, a slow `on_promote`
/// ran to its end (up to `hook_timeout` each), `down` gave the demotion
/// up and the node stopped as Primary without `on_demote` (found by
/// review, helper-103).
///
/// Killed rather than let finish: `on_demote` undoes what `on_promote`
/// did, and must cope with a promotion done in part anyway (a failed or
/// timed-out command stops `on_promote` there too): an unmount of what
/// is not mounted, a stop of what is not started. A deposed node
/// acknowledges no write, so a `mount` or a service that it would let
/// finish can only fail or hold the filesystem longer; a `mount(2)`
/// under way in the kernel completes or not regardless of the signal,
/// and `on_demote` unmounts it if it did.
async fn on_promote(
    cmds: &[String],
    env: &[(String, String)],
    timeout: Duration,
    stop: &(dyn Fn() -> Option<&'static str> + Send + Sync),
) -> Result<(), String> {
    let withdrawn = |why: &str, i: usize, killed: Option<&str>| {
        let skipped = &cmds[i + usize::from(killed.is_some())..];
        let killed = killed.map_or(String::new(), |c| format!("{c:?} killed, "));
        tracing::warn!(why, "on_promote given up: {killed}{} command(s) skipped", skipped.len());
        Err(format!("on_promote given up ({why}): {killed}skipped {skipped:?}"))
    };
    for (i, cmd) in cmds.iter().enumerate() {
        if let Some(why) = stop() {
            return withdrawn(why, i, None);
        }
        tracing::info!(%cmd, "on_promote");
        let stopped = async {
            loop {
                tokio::time::sleep(STOP_POLL).await;
                if let Some(why) = stop() {
                    return why;
                }
            }
        };
        tokio::select! {
            r = shell(cmd, env, timeout) => r?,
            // Dropping `shell` kills the command's process group.
            why = stopped => return withdrawn(why, i, Some(cmd)),
        }
    }
    Ok(())
}

/// `on_promote` for this node's promotion, given up when it is to demote.
pub async fn run_on_promote(node: &Node, s: &ControllerSettings) -> Result<(), String> {
    let env = super::hook_env(node);
    let stop = || match node.address_permit() {
        Err((false, why)) => Some(why),
        _ => None,
    };
    on_promote(&s.on_promote, &env, s.hook_timeout, &stop).await
}

/// The hook `h`: for a promotion, the address first, then `on_promote`
/// (stopping at the first failure, or when the node is to demote: see
/// [`on_promote`]); for a demotion, every `on_demote`
/// command (a failure is reported, the demotion goes on).
///
/// A promotion's hooks are marked as started beside the metadata, and the
/// mark is removed by an `on_demote` without error ([`super::leftover`]).
///
/// `owed`: set when the promotion's address move failed (not withdrawn),
/// so `on_promote` was not run: the re-check runs it once it has moved the
/// address (review, helper-106); cleared by a demotion.
pub async fn run(
    node: &Node,
    s: &ControllerSettings,
    h: Hook,
    outcomes: &super::address::Outcomes,
    owed: &mut bool,
) -> Result<(), String> {
    let env = super::hook_env(node);
    *owed = false;
    match h {
        Hook::Promoted => {
            super::leftover::mark(node);
            if let Some(a) = &s.address {
                if let Err((withdrawn, e)) =
                    super::address::move_and_report(node, a, &env, "promote", false, outcomes).await
                {
                    *owed = !withdrawn;
                    return Err(e);
                }
            }
            run_on_promote(node, s).await
        }
        Hook::Demote => {
            let mut first_err = None;
            for cmd in &s.on_demote {
                tracing::info!(%cmd, "on_demote");
                if let Err(e) = shell(cmd, &env, s.hook_timeout).await {
                    tracing::warn!("{e}");
                    first_err.get_or_insert(e);
                }
            }
            if first_err.is_none() {
                super::leftover::clear(node);
            }
            first_err.map_or(Ok(()), Err)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    // Found by review (helper-103): a hook that starts a daemon which
    // keeps stderr open (`on_promote = ["myservice &"]`) was waited for
    // until the hook timeout and reported as failed ("still running"),
    // as the whole of stderr was awaited, not the shell's exit.
    #[tokio::test]
    async fn a_hook_that_leaves_a_process_in_the_background_is_done_at_its_exit() {
        let started = Instant::now();
        let r = shell("sleep 3 &", &[], Duration::from_secs(2)).await;
        assert_eq!(r, Ok(()));
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    }

    // At the deadline the hook's children go with it (only `sh` was
    // killed: a hung `mount` or `sleep` lived on).
    #[tokio::test]
    async fn a_hook_killed_at_its_deadline_takes_its_children_down() {
        let pidfile = std::env::temp_dir().join(format!("tb-hook-{}.pid", std::process::id()));
        let cmd = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
        let r = shell(&cmd, &[], Duration::from_millis(500)).await;
        assert!(r.as_ref().is_err_and(|e| e.contains("killed")), "{r:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let _ = std::fs::remove_file(&pidfile);
        let until = Instant::now() + Duration::from_secs(5);
        // SAFETY: signal 0 only checks whether the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
            assert!(Instant::now() < until, "sleep {pid} outlived its hook");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Found by review (helper-103): `on_promote` ran on after the node
    // was told to demote, and the Demote hook (and `down`) waited behind
    // it. The running command goes with its children, the rest is skipped.
    #[tokio::test]
    async fn on_promote_is_given_up_when_the_node_is_to_demote() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let (pidfile, after) = (dir.path().join("pid"), dir.path().join("after"));
        let cmds = vec![
            format!("sleep 60 & echo $! > '{}'; wait", pidfile.display()),
            format!("touch '{}'", after.display()),
        ];
        let demoting = AtomicBool::new(false);
        let stop = || demoting.load(Ordering::SeqCst).then_some("demoting");
        let started = Instant::now();
        let run = on_promote(&cmds, &[], Duration::from_secs(60), &stop);
        let flip = async {
            while !pidfile.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            demoting.store(true, Ordering::SeqCst);
        };
        let (r, ()) = tokio::join!(run, flip);
        let e = r.unwrap_err();
        assert!(e.contains("demoting") && e.contains("killed"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
        assert!(!after.exists(), "the next command ran");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        // SAFETY: signal 0 only checks whether the process exists.
        while unsafe { libc::kill(pid, 0) } == 0 {
            assert!(Instant::now() < until, "sleep {pid} outlived its on_promote");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Told before it starts: nothing runs.
        let e = on_promote(&cmds[1..], &[], Duration::from_secs(5), &stop).await.unwrap_err();
        assert!(e.contains("skipped"), "{e}");
        assert!(!after.exists());
        // Never told: all of it runs.
        let go = || None;
        assert_eq!(on_promote(&cmds[1..], &[], Duration::from_secs(5), &go).await, Ok(()));
        assert!(after.exists());
    }

    // Found by review (helper-106): a failing hook's stderr reader was
    // aborted after 500 ms, closing the pipe: a process the hook had left
    // running that writes to stderr died of SIGPIPE at its next line (the
    // successful path drained on; the command mover had the same defect).
    #[tokio::test]
    async fn a_failing_hook_does_not_kill_what_it_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = format!(
            "(while true; do echo still here >&2; sleep 0.1; done) & echo $! > '{}'; exit 1",
            pidfile.display()
        );
        let r = shell(&cmd, &[], Duration::from_secs(10)).await;
        assert!(r.as_ref().is_err_and(|e| e.contains("exit status: 1")), "{r:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            // SAFETY: signal 0 only checks whether the process exists.
            assert!(unsafe { libc::kill(pid, 0) } == 0, "the background process died (SIGPIPE)");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // SAFETY: the test's own background process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    // Found by review (helper-106): a daemon the hook started in a session
    // of its own (`setsid`) is not in the hook's process group and lives
    // on when the hook is killed at its deadline, as it should; but the
    // stderr reader was aborted then, and the daemon, which inherited
    // stderr, died of SIGPIPE at its next line.
    #[tokio::test]
    async fn a_daemon_started_with_setsid_outlives_a_hook_killed_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let cmd = format!(
            "setsid sh -c 'while true; do echo still here >&2; sleep 0.1; done' & echo $! > '{}'; \
             sleep 30",
            pidfile.display()
        );
        let r = shell(&cmd, &[], Duration::from_millis(500)).await;
        assert!(r.as_ref().is_err_and(|e| e.contains("killed")), "{r:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            // SAFETY: signal 0 only checks whether the process exists.
            assert!(unsafe { libc::kill(pid, 0) } == 0, "the setsid daemon died");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // SAFETY: the test's own daemon.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    #[tokio::test]
    async fn a_failing_hook_reports_its_status_and_stderrs_tail() {
        let r = shell(
            "head -c 10000000 /dev/zero | tr '\\0' x >&2; echo the end >&2; exit 3",
            &[],
            Duration::from_secs(20),
        )
        .await;
        let e = r.unwrap_err();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.ends_with("the end"), "{e}");
        assert!(e.len() < 1000, "{} bytes", e.len());
    }
}
