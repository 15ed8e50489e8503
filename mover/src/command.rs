//! The `command` mover: a user command run with `sh -c`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::{AddressSpec, Kind, MoveError, MoveReport};

/// How much of stderr an error keeps.
const TAIL: usize = 1024;

/// Runs `spec.command` in its own process group with `env` added to the
/// environment; kills the whole group at the deadline.
pub(crate) async fn run(
    spec: &AddressSpec,
    env: &[(String, String)],
    deadline: Duration,
) -> Result<MoveReport, MoveError> {
    let command = spec.command.clone().unwrap_or_default();
    let started = Instant::now();
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
    let mut guard = GroupGuard(pgid);
    let stdout = child.stdout.take().map(|o| tokio::spawn(read_all(o)));
    let stderr = child.stderr.take().map(|e| tokio::spawn(read_all(e)));

    let waited = tokio::time::timeout(deadline, child.wait()).await;
    let status = match waited {
        Ok(status) => {
            guard.0 = None;
            Some(status)
        }
        Err(_) => {
            kill_group(guard.0.take());
            let _ = child.kill().await;
            None
        }
    };
    // Grandchildren that outlive the shell may hold the pipes open: do not
    // wait for them past a short grace period.
    let collect = |h: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
        match h {
            Some(h) => {
                let abort = h.abort_handle();
                match tokio::time::timeout(Duration::from_millis(500), h).await {
                    Ok(Ok(v)) => v,
                    _ => {
                        abort.abort();
                        Vec::new()
                    }
                }
            }
            None => Vec::new(),
        }
    };
    let out = collect(stdout).await;
    let err = collect(stderr).await;
    let stderr_tail = tail(&err);
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

async fn read_all<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v).await;
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
    use super::tail;

    #[test]
    fn tail_keeps_the_end() {
        let long = "x".repeat(5000) + "the end\n";
        assert!(tail(long.as_bytes()).ends_with("the end"));
        assert!(tail(long.as_bytes()).len() <= 1024);
    }
}
