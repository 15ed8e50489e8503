//! The `command` mover: a user command run with `sh -c`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::backoff::Backoff;
use crate::{AddressSpec, Guard, Kind, MoveError, MoveReport, Permit};

/// How much of stderr an error keeps.
const TAIL: usize = 1024;

/// How often a running command's guard is asked whether to go on.
const GUARD_POLL: Duration = Duration::from_millis(100);

/// Runs `spec.command` in its own process group with `env` added to the
/// environment; kills the whole group at the deadline, or when `guard`
/// says [`Permit::Stop`] (the node lost the right to the address).
pub(crate) async fn run(
    spec: &AddressSpec,
    env: &[(String, String)],
    deadline: Duration,
    guard: Guard<'_>,
) -> Result<MoveReport, MoveError> {
    let command = spec.command.clone().unwrap_or_default();
    let started = Instant::now();
    let until = started + deadline;
    // Not started while the caller says wait; never once it says stop.
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), until);
    loop {
        match guard() {
            Permit::Go => break,
            Permit::Stop(reason) => return Err(MoveError::Withdrawn { op: "command", reason }),
            Permit::Wait(why) => {
                tracing::info!(%command, %why, "address command held back");
                if !backoff.wait().await {
                    return Err(MoveError::Deadline {
                        op: "command",
                        attempts: 0,
                        deadline,
                        last: format!("not permitted: {why}"),
                    });
                }
            }
        }
    }
    tracing::info!(%command, "running the address command");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&command)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| MoveError::CommandSpawn { command: command.clone(), source })?;
    let pgid = child.id();
    // If the caller drops this future (cancels the move), the command and
    // anything it started go too.
    let mut group = GroupGuard(pgid);
    let reader = |r: Option<_>| {
        r.map(|r| {
            let buf = Tail::default();
            (tokio::spawn(read_into(r, buf.clone())), buf)
        })
    };
    let stdout = reader(child.stdout.take().map(|o| Box::new(o) as Pipe));
    let stderr = reader(child.stderr.take().map(|e| Box::new(e) as Pipe));

    // The command stops at the deadline, or as soon as the caller says
    // stop (it may be moving the address away from the current Primary).
    let stopped = async {
        loop {
            tokio::time::sleep(GUARD_POLL).await;
            if let Permit::Stop(reason) = guard() {
                return reason;
            }
        }
    };
    let left = until.saturating_duration_since(Instant::now());
    let mut withdrawn = None;
    let waited = tokio::select! {
        w = tokio::time::timeout(left, child.wait()) => w.ok(),
        reason = stopped => {
            withdrawn = Some(reason);
            None
        }
    };
    let status = match waited {
        Some(status) => {
            group.0 = None;
            Some(status)
        }
        None => {
            kill_group(group.0.take());
            let _ = child.kill().await;
            None
        }
    };
    // Grandchildren that outlive the shell may hold the pipes open: do not
    // wait for them past a short grace period, but do not close the pipes
    // either: the reader drains them on (tail only) until the last holder
    // closes them. Aborting it killed a process the command left running
    // (`arping -U ... &`) with SIGPIPE at its next line of output (found
    // by review, helper-106).
    let collect = |h: Option<(tokio::task::JoinHandle<()>, Tail)>| async move {
        match h {
            Some((h, buf)) => {
                let _ = tokio::time::timeout(Duration::from_millis(500), h).await;
                let v = buf.lock().unwrap_or_else(|e| e.into_inner()).clone();
                v
            }
            None => Vec::new(),
        }
    };
    let out = collect(stdout).await;
    let err = collect(stderr).await;
    let stderr_tail = tail(&err);
    if let Some(reason) = withdrawn {
        tracing::warn!(%command, %reason, "address command killed: move withdrawn");
        return Err(MoveError::Withdrawn { op: "command", reason });
    }
    match status {
        None => {
            tracing::warn!(%command, ?deadline, "address command killed at the deadline");
            Err(MoveError::CommandTimeout { command, deadline, stderr_tail })
        }
        Some(Err(e)) => Err(MoveError::CommandSpawn { command, source: e }),
        Some(Ok(s)) if s.success() => {
            let detail = match tail(&out) {
                t if t.is_empty() => "command succeeded".to_string(),
                t => format!("command succeeded: {}", t.lines().last().unwrap_or_default()),
            };
            Ok(MoveReport {
                kind: Kind::Command,
                already_in_place: false,
                attempts: 1,
                elapsed: started.elapsed(),
                detail,
            })
        }
        Some(Ok(s)) => {
            let status = match s.code() {
                Some(c) => format!("exit status {c}"),
                None => format!("{s}"),
            };
            tracing::warn!(%command, %status, stderr = %stderr_tail, "address command failed");
            Err(MoveError::CommandFailed { command, status, stderr_tail })
        }
    }
}

/// A pipe of the command's.
type Pipe = Box<dyn tokio::io::AsyncRead + Unpin + Send>;

/// What a reader has kept so far of its pipe.
type Tail = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

/// Reads `r` to its end into `buf`, keeping only the last `TAIL` bytes or
/// a little more (only tails are reported; a command that prints without
/// end must not fill the daemon's memory). The pipe is still drained, so
/// the command never blocks on a full pipe.
async fn read_into<R: tokio::io::AsyncRead + Unpin>(mut r: R, buf: Tail) {
    let mut chunk = [0u8; 8192];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut v = buf.lock().unwrap_or_else(|e| e.into_inner());
                v.extend_from_slice(&chunk[..n]);
                if v.len() > 2 * TAIL {
                    let cut = v.len() - TAIL;
                    v.drain(..cut);
                }
            }
        }
    }
}

/// [`read_into`] a buffer of its own, returned at the end.
#[cfg(test)]
async fn read_all<R: tokio::io::AsyncRead + Unpin>(r: R) -> Vec<u8> {
    let buf = Tail::default();
    read_into(r, buf.clone()).await;
    let v = buf.lock().unwrap_or_else(|e| e.into_inner()).clone();
    v
}

/// The last `TAIL` bytes as trimmed text.
fn tail(b: &[u8]) -> String {
    let start = b.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&b[start..]).trim().to_string()
}

/// Kills the process group on drop unless disarmed (`.0 = None`).
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0.take());
    }
}

fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on the process group we created for the command.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::{read_all, tail, TAIL};
    use tokio::io::AsyncReadExt;

    // Found by review (helper-103): a command that prints without end
    // (`yes`, a verbose tool) until the deadline filled the daemon's
    // memory, as both pipes were read whole; only their tails are used.
    #[tokio::test]
    async fn a_flood_of_output_keeps_only_its_tail() {
        let flood = tokio::io::repeat(b'x').take(64 << 20).chain(&b"the end\n"[..]);
        let kept = read_all(flood).await;
        assert!(kept.len() <= 2 * TAIL, "kept {} bytes", kept.len());
        assert!(tail(&kept).ends_with("the end"));
    }

    // Found by review (helper-106): a process the command leaves in the
    // background (a gratuitous ARP loop, `arping -U ... &`, a helper
    // daemon) that writes to its inherited stdout was killed by SIGPIPE
    // half a second after the move: the pipes' readers were aborted then,
    // closing their ends. Its output is drained (tail only) to its end.
    #[tokio::test]
    async fn a_process_the_command_leaves_behind_survives_its_output() {
        use crate::{AddressSpec, Kind, Permit};
        use std::time::{Duration, Instant};
        let pidfile = std::env::temp_dir().join(format!("tb-mover-bg-{}.pid", std::process::id()));
        let spec = AddressSpec {
            kind: Kind::Command,
            command: Some(format!(
                "(while true; do echo announce; echo warn >&2; sleep 0.1; done) & echo $! > '{}'",
                pidfile.display()
            )),
            ..AddressSpec::default()
        };
        let go = || Permit::Go;
        let r = super::run(&spec, &[], Duration::from_secs(10), &go).await;
        assert!(r.is_ok(), "{r:?}");
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            // SAFETY: signal 0 only checks whether the process exists.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            assert!(alive, "the background process died (SIGPIPE)");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // SAFETY: the test's own background process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = std::fs::remove_file(&pidfile);
    }

    #[test]
    fn tail_keeps_the_end() {
        let long = "x".repeat(5000) + "the end\n";
        assert!(tail(long.as_bytes()).ends_with("the end"));
        assert!(tail(long.as_bytes()).len() <= 1024);
    }
}
