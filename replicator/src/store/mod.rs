//! The local store: a backing file or block device, read and written at the
//! device's own offsets (block n at byte n*4096).
//!
//! Two engines: io_uring ([`uring`]) and a portable thread pool
//! ([`threads`]), chosen at run time. Buffered I/O by default (FLUSH is
//! fdatasync, one at a time and latched after a failure, [`syncer`]; a
//! buffered FUA write is a write and that sync); with `direct`, aligned
//! requests go through an O_DIRECT descriptor where the file system allows
//! it (FUA there is RWF_DSYNC), and unaligned ones by read-modify-write
//! through it ([`unaligned`]): buffered and direct I/O on one file do not
//! mix.

mod aligned;
mod lock;
pub use lock::alive as process_alive;
mod op;
mod syncer;
mod sys;
mod threads;
mod unaligned;
mod uring;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;

use aligned::{is_aligned, AlignedBuf};
use op::{Done, Op, ReadBuf, WriteData};
use syncer::Syncer;
use unaligned::Patch;

/// The environment variable that forces a backend (`uring`, `threads`, `auto`).
pub const BACKEND_ENV: &str = "TWINBLOCK_IO";
/// Overrides [`StoreOptions::inline_write_max`] (bytes; 0 turns it off).
pub const INLINE_ENV: &str = "TWINBLOCK_INLINE_WRITE_MAX";
/// `0` turns [`StoreOptions::seek_holes`] off; `1` on whatever the file
/// system (unset: on where its `SEEK_DATA` is trusted, [`sys::seek_data_trusted`]).
pub const SEEK_HOLES_ENV: &str = "TWINBLOCK_SEEK_HOLES";

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
    /// [`Store::is_hole`] asks the file system (`SEEK_DATA`); off, it
    /// answers no, and a resync reads every chunk (for a file system whose
    /// `SEEK_DATA` can miss data just written: OpenZFS before 2.2.2 and
    /// 2.1.14, openzfs/zfs#15526).
    pub seek_holes: bool,
    /// How long a lock left by a process that has exited is waited for
    /// ([`lock::lock_exclusive`]); a live holder is refused at once.
    pub lock_wait: std::time::Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            backend: BackendChoice::Auto,
            direct: false,
            threads: 8,
            ring_entries: 256,
            inline_write_max: 32 << 20,
            seek_holes: true,
            lock_wait: lock::DEAD_HOLDER_WAIT,
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
    #[error("{path} is in use by another process (locked {})", pid.map(|p| format!("by pid {p}")).unwrap_or_else(|| "by a process this node cannot see: another pid namespace?".into()))]
    InUse { path: PathBuf, pid: Option<u32> },
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
    /// Declared before the descriptors on purpose: fields drop in
    /// declaration order, and the engine's drop waits for (io_uring) or
    /// runs to completion (thread pool) every op still holding one of these
    /// descriptors. Closed first, a descriptor number could be reused by an
    /// unrelated file and receive our writes.
    engine: Engine,
    /// FLUSH and the sync of a buffered FUA write (on its own thread and
    /// descriptor).
    syncer: Syncer,
    file: File,
    direct: Option<File>,
    size: u64,
    path: PathBuf,
    inline_write_max: usize,
    seek_holes: bool,
    created: bool,
    /// A block device rather than a regular file: decides how ranges are
    /// trimmed and zeroed ([`zero_plan`]).
    is_blockdev: bool,
    /// The O_DIRECT descriptor refused a request (EINVAL) and it was redone
    /// buffered; warned about once.
    direct_refused: AtomicBool,
    /// Read-modify-writes of unaligned requests on a direct store run
    /// alone (write side), aligned direct writes beside each other (read
    /// side): see [`unaligned`].
    rmw: tokio::sync::RwLock<()>,
    /// Buffered reads try the page cache first ([`Store::read_cached`]);
    /// cleared if the kernel refuses `RWF_NOWAIT`.
    nowait_reads: AtomicBool,
}

/// Buffered reads up to this size try the page cache on the calling thread
/// first. Larger ones go through the engine: a long copy would hold up
/// the caller (the NBD connection thread reading the next requests).
const CACHED_READ_MAX: usize = 256 << 10;

static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

impl Store {
    /// Whether [`Store::open`] with a size makes the disk at `path` anew
    /// (missing, or an empty regular file): what it held, if anything, is
    /// gone. The start records that before the open grows the file. A
    /// path that cannot be looked up for another reason (a symlink loop, a
    /// stale NFS handle, EIO, EACCES) is not missing: the open fails on it
    /// (review: the record was saved Failed for good, and the intact disk
    /// took a full sync once the path was mended).
    pub fn makes_anew(path: &Path) -> bool {
        match std::fs::metadata(path) {
            Ok(d) => d.is_file() && d.len() == 0,
            Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        }
    }

    /// Nothing is at `path` (its lookup says NotFound; a dangling symlink
    /// too): not a path that cannot be looked up ([`Store::makes_anew`]).
    pub fn missing(path: &Path) -> bool {
        std::fs::metadata(path).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
    }

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
        lock::lock_exclusive(&file, path, opts.lock_wait)?;
        let mut actual = sys::size_of(&file).map_err(open_err)?;
        let mut created = !exists;
        let meta = file.metadata().map_err(open_err)?;
        let is_regular = meta.is_file();
        let is_blockdev = meta.file_type().is_block_device();
        if let Some(want) = size {
            // A new (or empty) regular file takes the configured size. An
            // empty one counts as created: whatever it held is gone (found
            // by review: a disk file emptied in place was trusted, its
            // zeroes served and resynced over the peer's data).
            if actual == 0 && is_regular && want > 0 {
                file.set_len(want).map_err(open_err)?;
                actual = want;
                created = true;
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
        let syncer = file
            .try_clone()
            .and_then(|dup| Syncer::start(dup, path.to_owned()))
            .map_err(StoreError::Threads)?;
        let inline_write_max = match std::env::var(INLINE_ENV) {
            Ok(v) => v.parse().map_err(|_| StoreError::Env {
                var: INLINE_ENV,
                value: v.clone(),
                reason: "expected a byte count".into(),
            })?,
            Err(_) => opts.inline_write_max,
        };
        // (Unset: on where the file system's SEEK_DATA is trusted.)
        let seek_holes = match std::env::var(SEEK_HOLES_ENV).as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            Ok(v) => {
                return Err(StoreError::Env {
                    var: SEEK_HOLES_ENV,
                    value: v.to_string(),
                    reason: "expected 0 or 1".into(),
                })
            }
            Err(_) => {
                use std::os::fd::AsRawFd;
                opts.seek_holes && sys::seek_data_trusted(file.as_raw_fd())
            }
        };
        let store = Store {
            engine,
            syncer,
            file,
            direct,
            size: actual,
            path: path.to_owned(),
            inline_write_max,
            seek_holes,
            created,
            is_blockdev,
            direct_refused: AtomicBool::new(false),
            rmw: tokio::sync::RwLock::new(()),
            nowait_reads: AtomicBool::new(true),
        };
        tracing::info!(
            path = %path.display(),
            size = actual,
            backend = %store.backend(),
            direct = store.direct.is_some(),
            blockdev = is_blockdev,
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

    /// The backing file did not exist, or was empty, and `open` made it
    /// (sparse, of the configured size).
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

    /// Whether a failed O_DIRECT request should be redone buffered: EINVAL
    /// is the file system refusing direct I/O for that request (alignment
    /// stricter than ours, or no O_DIRECT support for that file after all).
    /// Warns the first time.
    fn direct_refused(&self, e: &io::Error, off: u64, len: usize) -> bool {
        if e.raw_os_error() != Some(libc::EINVAL) {
            return false;
        }
        if !self.direct_refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %self.path.display(),
                off,
                len,
                "O_DIRECT refused a request (EINVAL); redoing such requests with buffered I/O"
            );
        }
        true
    }

    /// Reads `len` bytes at `off`.
    pub async fn read(&self, off: u64, len: u32) -> io::Result<Bytes> {
        let len = len as usize;
        if let Some(fd) = self.direct_fd(off, len) {
            let buf = ReadBuf::Aligned(AlignedBuf::new(len));
            match self.run(Op::Read { fd, off, buf, done: 0 }).await {
                Err(e) if self.direct_refused(&e, off, len) => {}
                r => return r?.into_data(),
            }
        } else if let Some(c) = self.direct_cover(off, len as u64) {
            match self.read_cover(c).await {
                Err(e) if self.direct_refused(&e, off, len) => {}
                r => return r,
            }
        }
        let mut buf = ReadBuf::heap(len);
        let done = self.read_cached(&mut buf, off);
        if done == len {
            // SAFETY: all `len` bytes were read.
            return Ok(unsafe { buf.into_bytes() });
        }
        let op = Op::Read { fd: self.fd(), off, buf, done };
        self.run(op).await?.into_data()
    }

    /// The page-cache fast path of a buffered read: what the cache holds of
    /// the range is copied right here (one `preadv2(RWF_NOWAIT)`), with no
    /// ring submission, completion or thread hop; the caller reads the rest
    /// through the engine. The bytes read (a prefix of `buf`).
    fn read_cached(&self, buf: &mut ReadBuf, off: u64) -> usize {
        let len = buf.len();
        if len > CACHED_READ_MAX || !self.nowait_reads.load(Ordering::Relaxed) {
            return 0;
        }
        // SAFETY: `buf` has `len` bytes of capacity.
        match unsafe { sys::pread_cached(self.fd(), buf.as_mut_ptr(), len, off) } {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("RWF_NOWAIT reads unsupported ({e}); reads go through the engine");
                self.nowait_reads.store(false, Ordering::Relaxed);
                0
            }
        }
    }

    /// Writes `data` at `off`; with `fua` it is durable on return.
    pub async fn write(&self, off: u64, data: Bytes, fua: bool) -> io::Result<()> {
        if let Some(fd) = self.direct_fd(off, data.len()) {
            // (RWF_DSYNC on the O_DIRECT descriptor: another open file,
            // whose syncs take no error report from the buffered one's.)
            let aligned = WriteData::Aligned(AlignedBuf::copy_from(&data));
            let _beside_others = self.rmw.read().await;
            match self.run(Op::Write { fd, off, data: aligned, done: 0, fua }).await {
                Err(e) if self.direct_refused(&e, off, data.len()) => {}
                r => return r.map(drop),
            }
        } else if let Some(c) = self.direct_cover(off, data.len() as u64) {
            match self.patch(c, Patch::Data(&data), fua).await {
                Err(e) if self.direct_refused(&e, off, data.len()) => {}
                r => return r,
            }
        }
        // A buffered FUA write is the write, then a sync of the store's:
        // an RWF_DSYNC write would sync the buffered file on its own, and
        // could take the report of another write's failed writeback that a
        // FLUSH must see ([`syncer`]).
        if data.len() <= self.inline_write_max && matches!(self.engine, Engine::Uring(_)) {
            sys::pwrite_full(self.fd(), &data, off, false)?;
        } else {
            let op = Op::Write {
                fd: self.fd(),
                off,
                data: WriteData::Shared(data),
                done: 0,
                fua: false,
            };
            self.run(op).await?;
        }
        if fua {
            self.flush().await?;
        }
        Ok(())
    }

    /// Makes every write completed before the call durable (fdatasync, one
    /// at a time); fails once one has failed, until [`Store::sync_recovered`]
    /// ([`syncer`]).
    pub async fn flush(&self) -> io::Result<()> {
        self.syncer.sync().await
    }

    /// Syncs the store through a descriptor of its own, opened now: Linux
    /// reports a failed writeback to a file opened later as long as no
    /// descriptor has seen it yet, so this hears of a failure the process
    /// that wrote the data never synced (it crashed, or stopped before its
    /// next sync). Blocking; with `limit`, gives up with `TimedOut` after
    /// that long (the sync goes on on its own thread).
    pub fn sync_unseen(&self, limit: Option<std::time::Duration>) -> io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(&self.path)?;
        let Some(limit) = limit else { return file.sync_data() };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("twinblock-sync-unseen".into()).spawn(move || {
            let _ = tx.send(file.sync_data());
        })?;
        rx.recv_timeout(limit).unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no completion of a sync for {limit:?}"),
            ))
        })
    }

    /// What a failed sync dropped has been rewritten or given up (a
    /// replicated node's detached disk taking a full sync): syncs are
    /// trusted again.
    pub fn sync_recovered(&self) {
        self.syncer.recovered();
    }

    async fn fallocate(&self, mode: i32, off: u64, len: u64) -> io::Result<()> {
        // (Beside a read-modify-write of a block it covers, it would be
        // undone: the read-modify-write read the block first; found by
        // review. Only a direct store has them.)
        let _beside_others = match self.direct {
            Some(_) => Some(self.rmw.read().await),
            None => None,
        };
        self.run(Op::Fallocate { fd: self.fd(), off, len, mode }).await.map(drop)
    }

    /// Discards a range. On a regular file it punches a hole (so it reads
    /// back as zeroes), or zeroes it where the file system cannot. On a block
    /// device it is only a hint: one punch (the device's own zeroing, never
    /// a written-zeroes fallback) and nothing where that is unsupported.
    pub async fn discard(&self, off: u64, len: u64) -> io::Result<()> {
        self.apply(zero_plan(ZeroReq::Trim, self.is_blockdev), off, len).await
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
        let req = ZeroReq::Zero { may_punch, fast_only };
        self.apply(zero_plan(req, self.is_blockdev), off, len).await
    }

    async fn apply(&self, plan: ZeroPlan, off: u64, len: u64) -> io::Result<()> {
        // On a direct store the partial blocks at the ends are written, not
        // left to fallocate, which would zero them in the page cache.
        let (off, len) = match self.zero_ends(off, len, plan.otherwise == Otherwise::Nothing).await
        {
            Some(Err(e)) if self.direct_refused(&e, off, len as usize) => (off, len),
            Some(r) => r?,
            None => (off, len),
        };
        if len == 0 {
            return Ok(());
        }
        for &mode in plan.modes {
            match self.fallocate(mode, off, len).await {
                Err(e) if unsupported(&e) => {}
                other => return other,
            }
        }
        match plan.otherwise {
            Otherwise::Nothing => Ok(()),
            Otherwise::Unsupported => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
            Otherwise::WriteZeroes => {
                let mut pos = off;
                let end = off + len;
                while pos < end {
                    let n = (end - pos).min(ZEROS.len() as u64) as usize;
                    self.write(pos, Bytes::from_static(&ZEROS[..n]), false).await?;
                    pos += n as u64;
                }
                Ok(())
            }
        }
    }

    /// Writes `data` at `off` with one blocking `pwrite` into the page cache,
    /// on the calling thread. The replicated write path uses it under its
    /// ordering lock, so that the local store applies writes exactly in the
    /// order they are numbered for the peer.
    pub fn write_now(&self, off: u64, data: &[u8]) -> io::Result<()> {
        debug_assert!(self.direct.is_none(), "buffered write on a direct store");
        sys::pwrite_full(self.fd(), data, off, false)
    }

    /// Reads `len` bytes at `off` with blocking `pread`s on the calling
    /// thread (resync reads under the ordering lock).
    pub fn read_now(&self, off: u64, len: usize) -> io::Result<Bytes> {
        let mut buf = bytes::BytesMut::with_capacity(len);
        // SAFETY: the buffer has `len` bytes of capacity and pread_full
        // writes all of them (or fails).
        unsafe {
            sys::pread_full(self.fd(), buf.as_mut_ptr(), len, off)?;
            buf.set_len(len);
        }
        Ok(buf.freeze())
    }

    /// Synchronous [`Store::zero`] for the ordered write path. The range
    /// always reads back as zeroes (both replicas must agree), so on a block
    /// device a TRIM sent this way is zeroed too; [`Store::trim_now`] is
    /// the hint-only form.
    pub fn zero_now(&self, off: u64, len: u64, may_punch: bool, fast_only: bool) -> io::Result<()> {
        let req = ZeroReq::Zero { may_punch, fast_only };
        self.apply_now(zero_plan(req, self.is_blockdev), off, len)
    }

    /// Synchronous [`Store::discard`].
    pub fn trim_now(&self, off: u64, len: u64) -> io::Result<()> {
        self.apply_now(zero_plan(ZeroReq::Trim, self.is_blockdev), off, len)
    }

    fn apply_now(&self, plan: ZeroPlan, off: u64, len: u64) -> io::Result<()> {
        debug_assert!(self.direct.is_none(), "buffered zeroing on a direct store");
        for &mode in plan.modes {
            match sys::fallocate(self.fd(), mode, off, len) {
                Err(e) if unsupported(&e) => {}
                other => return other,
            }
        }
        match plan.otherwise {
            Otherwise::Nothing => Ok(()),
            Otherwise::Unsupported => Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP)),
            Otherwise::WriteZeroes => {
                let mut pos = off;
                while pos < off + len {
                    let n = (off + len - pos).min(ZEROS.len() as u64) as usize;
                    self.write_now(pos, &ZEROS[..n])?;
                    pos += n as u64;
                }
                Ok(())
            }
        }
    }

    /// Allocates the whole file (`fallocate`), on the calling thread.
    pub fn allocate_now(&self) -> io::Result<()> {
        sys::fallocate(self.fd(), 0, 0, self.size)
    }

    /// Gives the whole file's blocks back (a punched hole, read back as
    /// zeroes), on the calling thread.
    pub fn punch_now(&self) -> io::Result<()> {
        sys::fallocate(self.fd(), PUNCH, 0, self.size)
    }

    /// Prefetch hint.
    pub fn prefetch(&self, off: u64, len: u64) -> io::Result<()> {
        sys::fadvise_willneed(self.fd(), off, len)
    }

    /// Whether `[off, off+len)` is all hole in a sparse regular file (reads
    /// as zeroes without being read): one `lseek(SEEK_DATA)`, which sees
    /// writes still in the page cache. Always false on a block device,
    /// where the file system cannot tell, and with `seek_holes` off.
    pub fn is_hole(&self, off: u64, len: u64) -> io::Result<bool> {
        if self.is_blockdev || !self.seek_holes {
            return Ok(false);
        }
        sys::is_hole(self.fd(), off, len)
    }

    /// Allocation runs of `[off, off+len)`: (length, is_hole); at most
    /// [`sys::MAX_EXTENT_RUNS`], so possibly covering only a prefix.
    pub fn extents(&self, off: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
        sys::extents(self.fd(), off, len)
    }
}

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO_RANGE: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

/// What a caller wants done to a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ZeroReq {
    /// TRIM: a hint; the range may read as anything afterwards.
    Trim,
    /// Read back as zeroes (WRITE_ZEROES), deallocated only when
    /// `may_punch`, and only by a fast (metadata-only) way when `fast_only`.
    Zero { may_punch: bool, fast_only: bool },
}

/// What to do when no fallocate mode of the plan is supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Otherwise {
    WriteZeroes,
    /// EOPNOTSUPP (a FAST_ZERO that cannot be fast).
    Unsupported,
    /// Success: the request was a hint.
    Nothing,
}

/// fallocate modes to try, best first, then the last resort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ZeroPlan {
    modes: &'static [i32],
    otherwise: Otherwise,
}

/// How to carry out `req`. On a regular file: a punched hole (when
/// allowed), then an allocated zeroed range, then written zeroes (unless
/// only a fast way will do); a TRIM is a zeroing that may punch.
///
/// On a block device PUNCH_HOLE is the device's own zeroing without the
/// kernel's written-zeroes fallback (BLKDEV_ZERO_NOFALLBACK), whereas
/// ZERO_RANGE may quietly write zeroes over the whole range. So a TRIM
/// tries the punch alone and otherwise does nothing (it is a hint, and
/// writing zeroes to honour it would turn a cheap request into a slow
/// one), and a FAST_ZERO may use only the punch, when punching is allowed.
/// An ordinary WRITE_ZEROES keeps every fallback: it must read back zeroed.
fn zero_plan(req: ZeroReq, is_blockdev: bool) -> ZeroPlan {
    let (modes, otherwise): (&'static [i32], _) = match (req, is_blockdev) {
        (ZeroReq::Trim, true) => (&[PUNCH], Otherwise::Nothing),
        (ZeroReq::Trim, false) => (&[PUNCH, ZERO_RANGE], Otherwise::WriteZeroes),
        (ZeroReq::Zero { may_punch, fast_only: true }, true) => {
            (if may_punch { &[PUNCH] } else { &[] }, Otherwise::Unsupported)
        }
        (ZeroReq::Zero { may_punch, fast_only }, _) => (
            if may_punch { &[PUNCH, ZERO_RANGE] } else { &[ZERO_RANGE] },
            if fast_only { Otherwise::Unsupported } else { Otherwise::WriteZeroes },
        ),
    };
    ZeroPlan { modes, otherwise }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) | Some(libc::EINVAL))
}

#[cfg(test)]
mod tests;
