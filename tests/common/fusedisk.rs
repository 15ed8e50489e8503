//! Disks with a behaviour: nbdkit's memory plugin behind one of its
//! filters, seen as a file through nbdfuse (which passes every write
//! straight to nbdkit: its errors reach the writer's `pwrite`). Needs
//! root (FUSE mounts).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{run_ok, KillOnDrop};

pub struct FuseDisk {
    mnt: PathBuf,
    dir: PathBuf,
    _fuse: KillOnDrop,
    _nbdkit: KillOnDrop,
}

impl FuseDisk {
    /// nbdkit `args` (filters, `memory SIZE`, parameters) behind the file
    /// `FuseDisk::file`, mounted under `dir/NAME`.
    pub fn start(dir: &Path, name: &str, args: &[&str]) -> FuseDisk {
        let sock = dir.join(format!("{name}.sock"));
        let mnt = dir.join(name);
        std::fs::create_dir_all(&mnt).unwrap();
        let nbdkit = KillOnDrop(
            Command::new("nbdkit").args(["-f", "-U"]).arg(&sock).args(args).spawn().unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            assert!(Instant::now() < deadline, "nbdkit did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        let fuse =
            KillOnDrop(Command::new("nbdfuse").arg(&mnt).arg("--unix").arg(&sock).spawn().unwrap());
        while !mnt.join("nbd").exists() {
            assert!(Instant::now() < deadline, "nbdfuse did not mount");
            std::thread::sleep(Duration::from_millis(50));
        }
        FuseDisk { mnt, dir: dir.to_path_buf(), _fuse: fuse, _nbdkit: nbdkit }
    }

    /// A slow disk: 50 ms per write request (nbdkit's delay filter), with
    /// the kernel's dirty-page limit for its file system at 1 MiB, so
    /// page-cache writes to it are throttled to what the "disk" takes
    /// (about 20 MB/s).
    pub fn slow(dir: &Path, size: &str) -> FuseDisk {
        let disk = FuseDisk::start(dir, "slow", &["--filter=delay", "memory", size, "wdelay=50ms"]);
        disk.dirty_limit_1m();
        disk
    }

    /// Caps the kernel's dirty pages for this disk's file system at 1 MiB:
    /// page-cache writes to it then wait for what the "disk" takes (without
    /// it a hung disk absorbs gigabytes of writes into the page cache).
    pub fn dirty_limit_1m(&self) {
        let dev = run_ok(Command::new("mountpoint").arg("-d").arg(&self.mnt));
        let limit = format!("/sys/class/bdi/{}/max_bytes", dev.trim());
        std::fs::write(&limit, "1048576").unwrap_or_else(|e| panic!("{limit}: {e}"));
    }

    /// The file whose presence makes a [`FuseDisk::failing`] disk fail.
    fn trigger(dir: &Path) -> PathBuf {
        dir.join("eio.trigger")
    }

    /// A disk that fails every write with EIO while
    /// [`FuseDisk::fail_writes`] is on (nbdkit's error filter); reads work.
    pub fn failing(dir: &Path, size: &str) -> FuseDisk {
        FuseDisk::failing_on(dir, size, "eio", "error-pwrite-rate=100%")
    }

    /// A disk that fails every read with EIO while [`FuseDisk::fail_writes`]
    /// (the same switch) is on; writes work.
    pub fn failing_reads(dir: &Path, size: &str) -> FuseDisk {
        FuseDisk::failing_on(dir, size, "eio-read", "error-pread-rate=100%")
    }

    /// nbdkit's error filter failing what `rate` names while the trigger
    /// file exists.
    fn failing_on(dir: &Path, size: &str, name: &str, rate: &str) -> FuseDisk {
        let file = format!("error-file={}", FuseDisk::trigger(dir).display());
        FuseDisk::start(dir, name, &["--filter=error", "memory", size, "error=EIO", rate, &file])
    }

    /// The failing disk's switch: its writes fail from now on.
    pub fn fail_writes(&self, on: bool) {
        let trigger = FuseDisk::trigger(&self.dir);
        if on {
            std::fs::write(&trigger, b"").unwrap();
        } else {
            let _ = std::fs::remove_file(&trigger);
        }
    }

    /// A disk that stops answering while [`FuseDisk::hang`] is on: its
    /// requests wait (nbdkit's pause filter) until it is turned off.
    pub fn hanging(dir: &Path, size: &str) -> FuseDisk {
        let control = format!("pause-control={}", FuseDisk::pause_socket(dir).display());
        FuseDisk::start(dir, "hang", &["--filter=pause", "memory", size, &control])
    }

    fn pause_socket(dir: &Path) -> PathBuf {
        dir.join("pause.sock")
    }

    /// The hanging disk's switch: on, requests from now on wait (returns
    /// once those in flight are done); off, they go on.
    pub fn hang(&self, on: bool) {
        if let Err(e) = self.pause(on) {
            panic!("the pause filter's control socket: {e}");
        }
    }

    fn pause(&self, on: bool) -> std::io::Result<()> {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(FuseDisk::pause_socket(&self.dir))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.write_all(if on { b"p" } else { b"r" })?;
        let mut echo = [0u8; 1];
        s.read_exact(&mut echo)?;
        match (on, &echo) {
            (true, b"P") | (false, b"R") => Ok(()),
            _ => Err(std::io::Error::other(format!("answer {echo:?}"))),
        }
    }

    /// Resumes the hanging disk when dropped (a failing test must not
    /// leave a node's threads waiting in the kernel for ever: killing the
    /// node would wait for them).
    pub fn resume_on_drop(&self) -> ResumeOnDrop<'_> {
        ResumeOnDrop(self)
    }

    pub fn file(&self) -> PathBuf {
        self.mnt.join("nbd")
    }
}

pub struct ResumeOnDrop<'a>(&'a FuseDisk);

impl Drop for ResumeOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.pause(false);
    }
}

impl Drop for FuseDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}
