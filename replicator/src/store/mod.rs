//! The local store: a backing file or block device, read and written at the
//! device's own offsets (block n at byte n*4096).
//!
//! Two engines: io_uring ([`uring`]) and a portable thread pool
//! ([`threads`]), chosen at run time. Buffered I/O by default (FLUSH is
//! fdatasync, FUA is RWF_DSYNC); with `direct`, aligned requests go through
//! an O_DIRECT descriptor where the file system allows it.

mod aligned;
mod op;
mod sys;
mod threads;
mod uring;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bytes::Bytes;

use aligned::{is_aligned, AlignedBuf};
use op::{Done, Op, ReadBuf, WriteData};

/// The environment variable that forces a backend (`uring`, `threads`, `auto`).
pub const BACKEND_ENV: &str = "TWINBLOCK_IO";
/// Overrides [`StoreOptions::inline_write_max`] (bytes; 0 turns it off).
pub const INLINE_ENV: &str = "TWINBLOCK_INLINE_WRITE_MAX";

/// The engine actually running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    IoUring,
    Threads,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::IoUring => "io_uring",
            Backend::Threads => "threads",
        })
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// io_uring if it works here, else threads.
    #[default]
    Auto,
    IoUring,
    Threads,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BackendChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(BackendChoice::IoUring),
            "threads" | "thread-pool" => Ok(BackendChoice::Threads),
            _ => Err(format!("unknown I/O backend {s:?} (auto, uring or threads)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub backend: BackendChoice,
    /// Use O_DIRECT for aligned requests where the file system allows it.
    pub direct: bool,
    /// Worker threads of the thread-pool backend.
    pub threads: usize,
    /// io_uring submission queue entries.
    pub ring_entries: u32,
    /// Buffered writes (without FUA) up to this size are copied into the
    /// page cache by the calling thread (io_uring engine only). File systems
    /// without non-blocking buffered writes (ext4) would otherwise hand every
    /// such write to an io_uring worker thread, which costs two thread
    /// wake-ups per write; measured on ext4 the inline copy wins at every
    /// size up to 1 MiB (scripts/bench-nbd.sh). 0 sends every write through
    /// io_uring. O_DIRECT, FUA, flush and fallocate always go through it.
    pub inline_write_max: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            backend: BackendChoice::Auto,
            direct: false,
            threads: 8,
            ring_entries: 256,
            inline_write_max: 32 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("{path} does not exist; give a size to create it")]
    Missing { path: PathBuf },
    #[error("{path} is {actual} bytes but the configured size is {expected} bytes")]
    SizeMismatch { path: PathBuf, actual: u64, expected: u64 },
    #[error("{path} is in use by another process (locked)")]
    InUse { path: PathBuf },
    #[error("{path} has size 0")]
    Empty { path: PathBuf },
    #[error("io_uring is not available here: {0}")]
    Uring(io::Error),
    #[error("cannot start the store's threads: {0}")]
    Threads(io::Error),
    #[error("invalid value {value:?} in ${var}: {reason}")]
    Env { var: &'static str, value: String, reason: String },
}

enum Engine {
    Uring(uring::Ring),
    Threads(threads::Pool),
}

pub struct Store {
    file: File,
    direct: Option<File>,
    size: u64,
    engine: Engine,
    path: PathBuf,
    inline_write_max: usize,
    created: bool,
}

static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

impl Store {
    /// Opens `path`, creating it (sparse) at `size` when missing, and checks
    /// that an existing file has that size. `TWINBLOCK_IO` overrides
    /// `opts.backend`. Must be called inside a tokio runtime.
    pub fn open(path: &Path, size: Option<u64>, opts: &StoreOptions) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_owned(), source };
        let exists = path.exists();
        if !exists && size.is_none() {
            return Err(StoreError::Missing { path: path.to_owned() });
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(size.is_some())
            .mode(0o600) // a database lives here: not world-readable
            .open(path)
            .map_err(open_err)?;
        // One process per disk: a second `up` or `serve` on it is refused.
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StoreError::InUse { path: path.to_owned() });
            }
            return Err(open_err(e));
        }
        let mut actual = sys::size_of(&file).map_err(open_err)?;
        let is_regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if let Some(want) = size {
            // A new (or empty) regular file takes the configured size.
            if actual == 0 && is_regular && want > 0 {
                file.set_len(want).map_err(open_err)?;
                actual = want;
            } else if actual != want {
                return Err(StoreError::SizeMismatch {
                    path: path.to_owned(),
                    actual,
                    expected: want,
                });
            }
        }
        if actual == 0 {
            return Err(StoreError::Empty { path: path.to_owned() });
        }
        let direct = if opts.direct {
            match OpenOptions::new().read(true).write(true).custom_flags(libc::O_DIRECT).open(path)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "O_DIRECT not available ({e}); using buffered I/O");
                    None
                }
            }
        } else {
            None
        };
        let mut choice = opts.backend;
        if let Ok(v) = std::env::var(BACKEND_ENV) {
            choice = v.parse().map_err(|reason| StoreError::Env {
                var: BACKEND_ENV,
                value: v.clone(),
                reason,
            })?;
        }
        let engine = match choice {
            BackendChoice::Threads => {
                Engine::Threads(threads::Pool::new(opts.threads).map_err(StoreError::Threads)?)
            }
            BackendChoice::IoUring => {
                Engine::Uring(uring::Ring::new(opts.ring_entries).map_err(StoreError::Uring)?)
            }
            BackendChoice::Auto => match uring::Ring::new(opts.ring_entries) {
                Ok(r) => Engine::Uring(r),
                Err(e) => {
                    tracing::warn!("io_uring unavailable ({e}); falling back to the thread pool");
                    Engine::Threads(threads::Pool::new(opts.threads).map_err(StoreError::Threads)?)
                }
            },
        };
        let inline_write_max = match std::env::var(INLINE_ENV) {
            Ok(v) => v.parse().map_err(|_| StoreError::Env {
                var: INLINE_ENV,
                value: v.clone(),
                reason: "expected a byte count".into(),
            })?,
            Err(_) => opts.inline_write_max,
        };
        let store = Store {
            file,
            direct,
            size: actual,
            engine,
            path: path.to_owned(),
            inline_write_max,
            created: !exists,
        };
        tracing::info!(
            path = %path.display(),
            size = actual,
            backend = %store.backend(),
            direct = store.direct.is_some(),
            "store opened"
        );
        Ok(store)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn backend(&self) -> Backend {
        match self.engine {
            Engine::Uring(_) => Backend::IoUring,
            Engine::Threads(_) => Backend::Threads,
        }
    }

    /// The backing file did not exist and was created (sparse) by `open`.
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// The O_DIRECT descriptor, if this request may use it.
    fn direct_fd(&self, off: u64, len: usize) -> Option<RawFd> {
        self.direct.as_ref().filter(|_| is_aligned(off, len)).map(|f| f.as_raw_fd())
    }

    async fn run(&self, op: Op) -> io::Result<Done> {
        match &self.engine {
            Engine::Uring(r) => r.run(op).await,
            Engine::Threads(p) => p.run(op).await,
        }
    }

    /// Reads `len` bytes at `off`.
    pub async fn read(&self, off: u64, len: u32) -> io::Result<Bytes> {
        let len = len as usize;
        let op = match self.direct_fd(off, len) {
            Some(fd) => Op::Read { fd, off, buf: ReadBuf::Aligned(AlignedBuf::new(len)), done: 0 },
            None => Op::Read { fd: self.fd(), off, buf: ReadBuf::heap(len), done: 0 },
        };
        self.run(op).await?.into_data()
    }

    /// Writes `data` at `off`; with `fua` it is durable on return.
    pub async fn write(&self, off: u64, data: Bytes, fua: bool) -> io::Result<()> {
        let op = match self.direct_fd(off, data.len()) {
            Some(fd) => {
                let data = WriteData::Aligned(AlignedBuf::copy_from(&data));
                Op::Write { fd, off, data, done: 0, fua }
            }
            None if !fua
                && data.len() <= self.inline_write_max
                && matches!(self.engine, Engine::Uring(_)) =>
            {
                return sys::pwrite_full(self.fd(), &data, off, false);
            }
            None => Op::Write { fd: self.fd(), off, data: WriteData::Shared(data), done: 0, fua },
        };
        self.run(op).await.map(drop)
    }

    /// Makes every completed write durable (fdatasync).
    pub async fn flush(&self) -> io::Result<()> {
        self.run(Op::Fsync { fd: self.fd() }).await.map(drop)
    }

    async fn fallocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        self.run(Op::Fallocate { fd: self.fd(), off, len, mode }).await.map(drop)
    }

    /// Discards a range (punches a hole, so it reads back as zeroes). Where
    /// the file system cannot punch holes, zeroes are written instead.
    pub async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        self.zero(off, len, true, false).await
    }

    /// Makes a range read as zeroes: a punched hole when `may_punch`, else a
    /// zeroed range that stays allocated; writes zeroes as the last resort
    /// unless `fast_only`, which fails with EOPNOTSUPP instead.
    pub async fn zero(
        &self,
        off: u64,
        len: u64,
        may_punch: bool,
        fast_only: bool,
    ) -> io::Result<()> {
        for mode in zero_modes(may_punch) {
            match self.fallocate(mode, off, len).await {
                Err(e) if unsupported(&e) => {}
                other => return other,
            }
        }
        if fast_only {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        let mut pos = off;
        let end = off + len;
        while pos < end {
            let n = (end - pos).min(ZEROS.len() as u64) as usize;
            self.write(pos, Bytes::from_static(&ZEROS[..n]), false).await?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Writes `data` at `off` with one blocking `pwrite` into the page cache,
    /// on the calling thread. The replicated write path uses it under its
    /// ordering lock, so that the local store applies writes exactly in the
    /// order they are numbered for the peer.
    pub fn write_now(&self, off: u64, data: &[u8]) -> io::Result<()> {
        sys::pwrite_full(self.fd(), data, off, false)
    }

    /// Reads `len` bytes at `off` with blocking `pread`s on the calling
    /// thread (resync reads under the ordering lock).
    pub fn read_now(&self, off: u64, len: usize) -> io::Result<Bytes> {
        let mut buf = bytes::BytesMut::with_capacity(len);
        // SAFETY: the buffer has `len` bytes of capacity and pread_full
        // writes all of them (zero-filling past EOF).
        unsafe {
            sys::pread_full(self.fd(), buf.as_mut_ptr(), len, off)?;
            buf.set_len(len);
        }
        Ok(buf.freeze())
    }

    /// Synchronous [`Store::zero`] for the ordered write path.
    pub fn zero_now(&self, off: u64, len: u64, may_punch: bool, fast_only: bool) -> io::Result<()> {
        for mode in zero_modes(may_punch) {
            match sys::fallocate(self.fd(), mode, off, len) {
                Err(e) if unsupported(&e) => {}
                other => return other,
            }
        }
        if fast_only {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        let mut pos = off;
        while pos < off + len {
            let n = (off + len - pos).min(ZEROS.len() as u64) as usize;
            self.write_now(pos, &ZEROS[..n])?;
            pos += n as u64;
        }
        Ok(())
    }

    /// Prefetch hint.
    pub fn prefetch(&self, off: u64, len: u64) -> io::Result<()> {
        sys::fadvise_willneed(self.fd(), off, len)
    }

    /// Allocation runs of `[off, off+len)`: (length, is_hole).
    pub fn extents(&self, off: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        sys::extents(self.fd(), off, len)
    }
}

/// The fallocate modes that make a range read as zeroes, best first: a
/// punched hole (when allowed), then an allocated zeroed range. Where the
/// file system supports neither, zeroes are written (unless only a fast
/// way will do).
fn zero_modes(may_punch: bool) -> impl Iterator<Item = i32> {
    const KEEP: i32 = libc::FALLOC_FL_KEEP_SIZE;
    let punch = may_punch.then_some(libc::FALLOC_FL_PUNCH_HOLE | KEEP);
    punch.into_iter().chain([libc::FALLOC_FL_ZERO_RANGE | KEEP])
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL))
}

#[cfg(test)]
mod tests;
