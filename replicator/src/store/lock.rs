//! One process per disk: an exclusive `flock` on the open file.
//!
//! A process that died with io_uring requests in flight keeps its lock a
//! while after it is gone: the kernel tears the ring down (and drops its
//! reference to the file) in the background, after the exit. A node
//! restarted at once after a crash (a supervisor, a test) would be refused
//! for a lock nobody holds any more. So the holder `/proc/locks` names is
//! looked at: a live process is refused at once, by pid; a lock whose
//! holder has exited, or that `/proc/locks` does not list at all, is waited
//! for, up to [`DEAD_HOLDER_WAIT`] by default.
//!
//! Not listed is the usual case in a container: the kernel leaves out of
//! `/proc/locks` every lock whose holder is not a live process of the
//! reader's pid namespace (`locks_show` skips pid 0), so there a lock left
//! by a dead predecessor and one held from another pid namespace look the
//! same; the second is refused when the wait ends.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::StoreError;

/// How long a lock left by a process that is gone is waited for, by
/// default (`StoreOptions::lock_wait`).
pub const DEAD_HOLDER_WAIT: Duration = Duration::from_secs(30);

/// Who holds a lock this process could not take, as far as it can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    /// A live process of this pid namespace: refused at once.
    Live(u32),
    /// Listed with a pid that is no longer a live process (or a zombie,
    /// whose files are closed): its lock goes away soon.
    Exited(u32),
    /// Not in `/proc/locks` as this process sees it (or that file cannot
    /// be read): exited, or in another pid namespace.
    Unseen,
}

impl Holder {
    fn pid(self) -> Option<u32> {
        match self {
            Holder::Live(p) | Holder::Exited(p) => Some(p).filter(|&p| p != 0),
            Holder::Unseen => None,
        }
    }
}

/// Takes the exclusive lock on `file` (opened from `path`), waiting up to
/// `wait` for one whose holder is not a live process this one can see.
pub fn lock_exclusive(file: &File, path: &Path, wait: Duration) -> Result<(), StoreError> {
    let deadline = Instant::now() + wait;
    let mut waited = false;
    loop {
        // SAFETY: flock on a descriptor the caller owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            if waited {
                tracing::info!(path = %path.display(), "lock left by an exited process released");
            }
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(StoreError::Open { path: path.to_owned(), source: e });
        }
        let holder = holder(file);
        if matches!(holder, Holder::Live(_)) || Instant::now() >= deadline {
            return Err(StoreError::InUse { path: path.to_owned(), pid: holder.pid() });
        }
        if !waited {
            tracing::warn!(
                path = %path.display(),
                pid = holder.pid(),
                wait_s = wait.as_secs(),
                "locked by a process that has exited or that this node cannot see (another \
                 pid namespace); the kernel may still be releasing a dead node's io_uring \
                 requests: waiting for the lock"
            );
            waited = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Who `/proc/locks` says holds an flock on `file`'s inode.
fn holder(file: &File) -> Holder {
    let listed = file.metadata().ok().and_then(|meta| {
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        parse_holder(&locks, meta.dev(), meta.ino())
    });
    match listed {
        Some(pid) if alive(pid) => Holder::Live(pid),
        Some(pid) => Holder::Exited(pid),
        None => Holder::Unseen,
    }
}

/// `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`: device numbers in
/// hex, inode in decimal. Blocked waiters (`->`) are not holders.
fn parse_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    locks.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 || f[1] != "FLOCK" {
            return None;
        }
        let mut id = f[5].split(':');
        let ma = u32::from_str_radix(id.next()?, 16).ok()?;
        let mi = u32::from_str_radix(id.next()?, 16).ok()?;
        let inode: u64 = id.next()?.parse().ok()?;
        (ma == major && mi == minor && inode == ino).then(|| f[4].parse().ok()).flatten()
    })
}

/// Whether process `pid` runs (a zombie does not: its files are closed).
/// Also what `twinblock down` waits on.
pub fn alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    if pid == std::process::id() {
        return true;
    }
    // A zombie still has its /proc entry, but its files are closed; not
    // while other threads of it are still exiting (its leader shows `Z`
    // before they are gone, and the files close with the last: `down`
    // returned while the process could not be reaped yet, in CI).
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let zombie =
                stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z'));
            !zombie || threads(pid) > 1
        }
        Err(_) => false,
    }
}

/// The threads `/proc` still lists for `pid` (0: gone).
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_are_read_by_device_and_inode() {
        let dev = libc::makedev(8, 1);
        let text = "1: POSIX  ADVISORY  WRITE 10 08:01:77 0 EOF\n\
                    2: FLOCK  ADVISORY  WRITE 4321 08:01:77 0 EOF\n\
                    3: FLOCK  ADVISORY  WRITE 99 103:02:77 0 EOF\n";
        assert_eq!(parse_holder(text, dev, 77), Some(4321));
        assert_eq!(parse_holder(text, dev, 78), None);
        assert_eq!(parse_holder(text, libc::makedev(0x103, 2), 77), Some(99));
        // A waiter's line ("2: -> FLOCK ...") is not the holder.
        assert_eq!(parse_holder("2: -> FLOCK  ADVISORY  WRITE 5 08:01:77 0 EOF\n", dev, 77), None);
    }

    #[test]
    fn a_live_holder_is_named_and_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let a = File::create(&path).unwrap();
        lock_exclusive(&a, &path, DEAD_HOLDER_WAIT).unwrap();
        let b = File::open(&path).unwrap();
        let t = Instant::now();
        match lock_exclusive(&b, &path, DEAD_HOLDER_WAIT) {
            Err(StoreError::InUse { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected InUse, got {other:?}"),
        }
        assert!(t.elapsed() < DEAD_HOLDER_WAIT / 2, "a live holder was waited for");
    }

    /// The lock outlives the process that took it (as an io_uring ring
    /// torn down after its process died keeps it): `flock(1)` locks a
    /// descriptor the shell keeps open for a second after `flock` exits.
    #[test]
    fn a_lock_left_by_an_exited_process_is_waited_for() {
        if std::process::Command::new("flock").arg("--version").output().is_err() {
            assert!(std::env::var_os("CI").is_none(), "flock(1) (util-linux) is missing");
            eprintln!("skipped: no flock(1)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        File::create(&path).unwrap();
        let ready = dir.path().join("ready");
        let mut sh = std::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec 9<>"$1"; flock -x 9; : > "$2"; sleep 1"#)
            .arg("sh")
            .arg(&path)
            .arg(&ready)
            .spawn()
            .unwrap();
        while !ready.exists() {
            std::thread::sleep(Duration::from_millis(5));
        }
        let f = File::open(&path).unwrap();
        // What this process sees of the holder (the test below checks it).
        eprintln!("holder seen: {:?}", holder(&f));
        let t = Instant::now();
        lock_exclusive(&f, &path, DEAD_HOLDER_WAIT)
            .expect("the lock of an exited process is taken once released");
        assert!(t.elapsed() >= Duration::from_millis(500), "taken while still held");
        sh.wait().unwrap();
    }

    /// The same in a container: the test above rerun in a pid namespace of
    /// its own (`unshare --pid --fork --mount-proc`), where `/proc/locks`
    /// does not list a lock whose holder has exited. Needs root.
    #[test]
    fn a_lock_left_by_an_exited_process_is_waited_for_in_a_pid_namespace() {
        let ci = std::env::var_os("CI").is_some();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(!ci, "this test needs root in CI");
            eprintln!("skipped: needs root (unshare --pid)");
            return;
        }
        if std::process::Command::new("unshare").arg("--version").output().is_err() {
            assert!(!ci, "unshare(1) (util-linux) is missing");
            eprintln!("skipped: no unshare(1)");
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(exe)
            .args(["--exact", "store::lock::tests::a_lock_left_by_an_exited_process_is_waited_for"])
            .args(["--nocapture", "--test-threads", "1"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("1 passed"), "in a pid namespace:\n{text}");
        assert!(text.contains("holder seen: Unseen"), "the lock was listed after all:\n{text}");
    }
}
