//! Running the controller's hooks: the address move and `on_promote` after
//! a promotion, `on_demote` before a demotion. Commands run through `sh -c`
//! one after the other with the hook environment; each has a deadline.

use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use twinblock_replicator::config::ControllerSettings;
use twinblock_replicator::core::Hook;
use twinblock_replicator::Node;

/// Runs one shell command; Err carries the exit status and stderr's tail.
pub async fn shell(cmd: &str, env: &[(String, String)], deadline: Duration) -> Result<(), String> {
    let mut c = Command::new("sh");
    c.arg("-c").arg(cmd).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    c.kill_on_drop(true);
    for (k, v) in env {
        c.env(k, v);
    }
    let child = c.spawn().map_err(|e| format!("{cmd:?}: cannot start: {e}"))?;
    match tokio::time::timeout(deadline, child.wait_with_output()).await {
        Err(_) => Err(format!("{cmd:?}: still running after {deadline:?}: killed")),
        Ok(Err(e)) => Err(format!("{cmd:?}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: String =
                err.trim().chars().rev().take(300).collect::<Vec<_>>().into_iter().rev().collect();
            Err(format!("{cmd:?}: {}: {tail}", out.status))
        }
    }
}

/// The hook `h`: for a promotion, the address first, then `on_promote`
/// (stopping at the first failure); for a demotion, every `on_demote`
/// command (a failure is reported, the demotion goes on).
pub async fn run(node: &Node, s: &ControllerSettings, h: Hook) -> Result<(), String> {
    let env = super::hook_env(node);
    match h {
        Hook::Promoted => {
            if let Some(a) = &s.address {
                super::address::move_here(node, a, &env).await?;
            }
            for cmd in &s.on_promote {
                tracing::info!(%cmd, "on_promote");
                shell(cmd, &env, s.hook_timeout).await?;
            }
            Ok(())
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
            first_err.map_or(Ok(()), Err)
        }
    }
}
