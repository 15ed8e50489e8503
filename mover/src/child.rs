//! A user command run with `sh -c` in a process group of its own: the
//! `command` mover's command and the controller's hooks.
//!
//! - Only a bounded tail of stdout and stderr is kept (a command that
//!   prints without end must not fill the daemon's memory); the pipes are
//!   still drained, so the command never blocks on a full pipe.
//! - It is done when the shell exits: a process it left running
//!   (`arping -U ... &`, a `setsid` daemon) is not waited for, and its
//!   pipes are drained on to their end, never closed under it (a closed
//!   pipe killed it with SIGPIPE at its next line: review, helper-106).
//!   The command's output is what was in the pipes at the shell's exit:
//!   what that process writes later is not the command's, and is not
//!   waited for (review, helper-108).
//! - At the deadline, at the caller's stop, or when dropped before the
//!   shell exited, the whole group is killed, not only the shell.

use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::process::Command;

/// How many bytes of each pipe are kept (the last ones).
pub const TAIL: usize = 1024;

/// A running (or finished) command.
#[derive(Debug)]
pub struct Child {
    child: tokio::process::Child,
    /// The process group, until the shell has exited (then what it left
    /// running is not ours to kill).
    group: Option<u32>,
    stdout: Option<Reader>,
    stderr: Option<Reader>,
}

/// How the wait for the shell ended.
#[derive(Debug)]
pub enum Exit<T> {
    /// The shell exited (its group is left alone).
    Exited(ExitStatus),
    /// Still running at the deadline: the group was killed.
    Deadline,
    /// The caller's stop future finished first: the group was killed.
    Stopped(T),
    /// Waiting for the shell failed.
    Failed(std::io::Error),
}

impl Child {
    /// Starts `sh -c command` with `env` added, stdin from /dev/null,
    /// stderr kept (its tail), stdout kept when `keep_stdout`, else
    /// discarded.
    pub fn spawn(
        command: &str,
        env: &[(String, String)],
        keep_stdout: bool,
    ) -> std::io::Result<Child> {
        let mut c = Command::new("sh");
        c.arg("-c").arg(command).envs(env.iter().map(|(k, v)| (k, v)));
        c.stdin(Stdio::null()).stderr(Stdio::piped());
        c.stdout(if keep_stdout { Stdio::piped() } else { Stdio::null() });
        c.process_group(0).kill_on_drop(true);
        let mut child = c.spawn()?;
        let group = child.id();
        let stdout = child.stdout.take().map(Reader::start);
        let stderr = child.stderr.take().map(Reader::start);
        Ok(Child { child, group, stdout, stderr })
    }

    /// Waits for the shell to exit, at most `deadline`, and no longer than
    /// `stop` takes to finish; in those two cases the group is killed.
    pub async fn wait<T>(
        &mut self,
        deadline: Duration,
        stop: impl std::future::Future<Output = T>,
    ) -> Exit<T> {
        let exit = tokio::select! {
            w = tokio::time::timeout(deadline, self.child.wait()) => match w {
                Ok(Ok(status)) => {
                    self.group = None;
                    return Exit::Exited(status);
                }
                Ok(Err(e)) => Exit::Failed(e),
                Err(_) => Exit::Deadline,
            },
            v = stop => Exit::Stopped(v),
        };
        self.kill().await;
        exit
    }

    /// Kills the group and the shell.
    async fn kill(&mut self) {
        kill_group(self.group.take());
        let _ = self.child.kill().await;
    }

    /// The tail of stdout (empty when not kept) as trimmed text: after
    /// [`Child::wait`], what the command wrote, not what a process it left
    /// running writes after its exit. The pipe is drained on.
    pub fn stdout(&self) -> String {
        Reader::text(&self.stdout)
    }

    /// The tail of stderr: as [`Child::stdout`].
    pub fn stderr(&self) -> String {
        Reader::text(&self.stderr)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        // The caller gave up on a command still running (a cancelled move,
        // an `on_promote` given up): it and what it started go too.
        kill_group(self.group.take());
    }
}

fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) on the process group created for the command.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// One pipe: what its reader has kept so far, and whether the pipe is
/// closed on our side (its end was read, or the reader was dropped).
#[derive(Debug, Default)]
struct Pipe {
    kept: Vec<u8>,
    /// The pipe's file descriptor while the reader holds it open (None:
    /// not a pipe, in tests).
    fd: Option<RawFd>,
    closed: bool,
}

/// A pipe shared by its reader task and the [`Child`].
type Kept = Arc<Mutex<Pipe>>;

fn lock(k: &Kept) -> std::sync::MutexGuard<'_, Pipe> {
    k.lock().unwrap_or_else(|e| e.into_inner())
}

/// A task draining one pipe to its end, keeping its tail.
#[derive(Debug)]
struct Reader {
    kept: Kept,
}

impl Reader {
    fn start<R: AsyncRead + AsRawFd + Unpin + Send + 'static>(r: R) -> Reader {
        let kept = Kept::default();
        lock(&kept).fd = Some(r.as_raw_fd());
        tokio::spawn(read_into(r, kept.clone()));
        Reader { kept }
    }

    /// The tail as trimmed text of what was written to the pipe so far:
    /// what the reader has kept and what is in the pipe now (FIONREAD),
    /// read at once. Called once the shell has exited (or
    /// was killed), it is the command's output, all in the pipe by then,
    /// and nothing a process it left running writes later (review,
    /// helper-108: what came within half a second after was counted, and
    /// that half second was waited for). The reader task drains on.
    fn text(r: &Option<Reader>) -> String {
        let Some(r) = r else { return String::new() };
        let mut p = lock(&r.kept);
        if let (false, Some(fd)) = (p.closed, p.fd) {
            // What is in the pipe now, no more: a process left running
            // that writes without end must not hold this loop (and the
            // read never waits, whatever the pipe's blocking mode).
            let mut left: libc::c_int = 0;
            // SAFETY: `fd` is the reader's open pipe: it is closed only
            // after `closed` is set under this lock, which is held.
            if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut left) } != 0 {
                left = 0;
            }
            let mut chunk = [0u8; 8192];
            let mut left = usize::try_from(left).unwrap_or(0);
            while left > 0 {
                let want = left.min(chunk.len());
                // SAFETY: as above; `chunk` is ours, `want` within it.
                let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), want) };
                match usize::try_from(n) {
                    Ok(n) if n > 0 => {
                        keep(&mut p.kept, &chunk[..n]);
                        left = left.saturating_sub(n);
                    }
                    Err(_)
                        if std::io::Error::last_os_error().kind()
                            == std::io::ErrorKind::Interrupted => {}
                    _ => break,
                }
            }
        }
        tail(&p.kept)
    }
}

/// The reader's pipe: marked closed (under the lock) before it is closed.
struct Owned<R> {
    r: R,
    kept: Kept,
}

impl<R> Drop for Owned<R> {
    fn drop(&mut self) {
        lock(&self.kept).closed = true;
        // `r` is closed after this, the lock released.
    }
}

/// Appends `b` to `v`, keeping only the last [`TAIL`] bytes or a little
/// more.
fn keep(v: &mut Vec<u8>, b: &[u8]) {
    v.extend_from_slice(b);
    if v.len() > 2 * TAIL {
        let cut = v.len() - TAIL;
        v.drain(..cut);
    }
}

/// Reads `r` to its end into `kept` ([`keep`]). Each read is made under
/// `kept`'s lock, so what [`Reader::text`] sees is all that was read.
async fn read_into<R: AsyncRead + Unpin>(r: R, kept: Kept) {
    let mut o = Owned { r, kept };
    let mut chunk = [0u8; 8192];
    loop {
        let more = std::future::poll_fn(|cx| {
            let mut p = lock(&o.kept);
            let mut buf = ReadBuf::new(&mut chunk);
            match Pin::new(&mut o.r).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                    keep(&mut p.kept, buf.filled());
                    Poll::Ready(true)
                }
                Poll::Ready(_) => Poll::Ready(false),
            }
        })
        .await;
        if !more {
            return;
        }
    }
}

/// The last [`TAIL`] bytes as trimmed text.
fn tail(b: &[u8]) -> String {
    let start = b.len().saturating_sub(TAIL);
    String::from_utf8_lossy(&b[start..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Whether process `pid` exists.
    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks whether the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    }

    // Found by review (helper-103): a command that prints without end
    // (`yes`, a verbose tool) until the deadline filled the daemon's
    // memory, as both pipes were read whole; only their tails are used.
    #[tokio::test]
    async fn a_flood_of_output_keeps_only_its_tail() {
        use tokio::io::AsyncReadExt;
        let flood = tokio::io::repeat(b'x').take(64 << 20).chain(&b"the end\n"[..]);
        let kept = Kept::default();
        read_into(flood, kept.clone()).await;
        let kept = kept.lock().unwrap().kept.clone();
        assert!(kept.len() <= 2 * TAIL, "kept {} bytes", kept.len());
        assert!(tail(&kept).ends_with("the end"));
    }

    #[test]
    fn tail_keeps_the_end() {
        let long = "x".repeat(5000) + "the end\n";
        assert!(tail(long.as_bytes()).ends_with("the end"));
        assert!(tail(long.as_bytes()).len() <= TAIL);
    }

    // Done at the shell's exit; what it left running lives on, its output
    // drained (review, helper-103 and helper-106).
    #[tokio::test]
    async fn done_at_the_shells_exit_and_what_it_left_survives_its_output() {
        let dir = std::env::temp_dir().join(format!("tb-child-bg-{}", std::process::id()));
        let cmd = format!(
            "(while true; do echo out; echo err >&2; sleep 0.1; done) & echo $! > '{}'; echo last",
            dir.display()
        );
        let started = Instant::now();
        let mut c = Child::spawn(&cmd, &[], true).unwrap();
        let exit = c.wait(Duration::from_secs(10), std::future::pending::<()>()).await;
        assert!(matches!(exit, Exit::Exited(s) if s.success()), "{exit:?}");
        let _ = c.stdout();
        drop(c);
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        let pid: i32 = std::fs::read_to_string(&dir).unwrap().trim().parse().unwrap();
        let _ = std::fs::remove_file(&dir);
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            assert!(alive(pid), "the background process died");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // SAFETY: the test's own background process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }

    // The output is taken at once, even while a process left running
    // fills the pipe without end (review, helper-108: reading "until the
    // pipe is empty" under the lock would never end).
    #[tokio::test]
    async fn the_output_is_taken_at_once_while_a_process_left_running_floods_the_pipe() {
        let pidfile = std::env::temp_dir().join(format!("tb-child-yes-{}", std::process::id()));
        let cmd = format!("yes & echo $! > '{}'; sleep 0.2; echo last", pidfile.display());
        let mut c = Child::spawn(&cmd, &[], true).unwrap();
        let exit = c.wait(Duration::from_secs(10), std::future::pending::<()>()).await;
        assert!(matches!(exit, Exit::Exited(s) if s.success()), "{exit:?}");
        let started = Instant::now();
        let out = c.stdout();
        let took = started.elapsed();
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        let _ = std::fs::remove_file(&pidfile);
        // SAFETY: the test's own background process.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        assert!(took < Duration::from_millis(100), "took {took:?}");
        assert!(out.len() <= TAIL, "{} bytes", out.len());
    }

    // What the reader task has not read yet is read from the pipe
    // itself: here the task is never run.
    #[test]
    fn what_is_still_in_the_pipe_is_counted() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _enter = rt.enter();
        let c = rt.block_on(async { Child::spawn("echo a; echo moved", &[], true) }).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(c.stdout(), "a\nmoved");
        assert_eq!(c.stderr(), "");
    }

    // At the deadline, at a stop, or dropped while running: the group goes.
    #[tokio::test]
    async fn the_group_is_killed_at_the_deadline_at_a_stop_and_on_drop() {
        for how in ["deadline", "stop", "drop"] {
            let pidfile =
                std::env::temp_dir().join(format!("tb-child-{how}-{}", std::process::id()));
            let cmd = format!("sleep 30 & echo $! > '{}'; wait", pidfile.display());
            let mut c = Child::spawn(&cmd, &[], false).unwrap();
            while !pidfile.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            match how {
                "deadline" => {
                    let e = c.wait(Duration::from_millis(100), std::future::pending::<()>()).await;
                    assert!(matches!(e, Exit::Deadline), "{e:?}");
                }
                "stop" => {
                    let e = c.wait(Duration::from_secs(30), async { "stop" }).await;
                    assert!(matches!(e, Exit::Stopped("stop")), "{e:?}");
                }
                _ => drop(c),
            }
            let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
            let _ = std::fs::remove_file(&pidfile);
            let until = Instant::now() + Duration::from_secs(5);
            while alive(pid) {
                assert!(Instant::now() < until, "{how}: sleep {pid} outlived its command");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
