//! `twinblock bench`'s scratch area on this node: `META.bench`, beside the
//! metadata, where probes are written (both nodes; see `core::bench`).
//!
//! It shares its file system with the metadata, whose updates (a record
//! saved through a temporary file and a rename, the activity log, the
//! bitmap) must never fail for want of room: a full metadata volume fails
//! the device's writes. So before the first probe of a bench the area is
//! reserved whole (`fallocate`), and only if that leaves [`KEEP_FREE`] on
//! the file system; otherwise the probe fails with ENOSPC and this node's
//! log says why. Once no probe has come for [`IDLE`] its blocks are given
//! back (punched; the file stays, sparse), and the next bench reserves
//! them again. (Found by review: 64 MiB of probes filled a 40 MiB metadata
//! volume, and the device then refused writes with ENOSPC, even after a
//! restart.) While a bench runs on this node ([`Scratch::hold`]) its area
//! is not given back, though its link runs write no probe: a bench of
//! `--time 30s` or more gave it back during them and reserved it again
//! for the modes' runs, which then failed if the room had gone meanwhile
//! (review, helper-148).

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::wire::BENCH_AREA;
use crate::store::{Store, StoreError, StoreOptions};

/// Room the scratch area leaves free on its file system, for the metadata.
pub const KEEP_FREE: u64 = 64 << 20;
/// The area's blocks are given back once no probe has come for this long.
pub const IDLE: Duration = Duration::from_secs(30);
/// A failure is logged again after this long (every probe retries).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Why the scratch area cannot take probes.
#[derive(Debug, thiserror::Error)]
pub enum ScratchError {
    #[error(
        "{}: the bench's scratch area needs {} MiB more on its file system, which has {} MiB free, \
         and {} MiB must stay free there for the metadata",
        path.display(), need >> 20, free >> 20, KEEP_FREE >> 20
    )]
    NoRoom { path: PathBuf, need: u64, free: u64 },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ScratchError {
    /// The errno a failed probe carries (to the bench's report and the
    /// peer's): "No space left on device", "Is a directory"...
    pub fn errno(&self) -> io::Error {
        let n = match self {
            ScratchError::NoRoom { .. } => libc::ENOSPC,
            ScratchError::Io { source, .. }
            | ScratchError::Store(StoreError::Open { source, .. }) => {
                source.raw_os_error().unwrap_or(libc::EIO)
            }
            ScratchError::Store(StoreError::InUse { .. }) => libc::EBUSY,
            ScratchError::Store(StoreError::SizeMismatch { .. } | StoreError::Empty { .. }) => {
                libc::EINVAL
            }
            ScratchError::Store(_) => libc::EIO,
        };
        io::Error::from_raw_os_error(n)
    }
}

pub(crate) struct Scratch {
    path: PathBuf,
    opts: StoreOptions,
    idle: Duration,
    rt: tokio::runtime::Handle,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    store: Option<Store>,
    /// The area is allocated whole (until given back when idle).
    reserved: bool,
    last_use: Option<Instant>,
    last_warned: Option<(String, Instant)>,
    /// Benches running on this node ([`Scratch::hold`]).
    benches: u32,
}

/// A bench running on this node: the area stays reserved until it is
/// dropped and then idle for [`IDLE`].
pub struct ScratchHold(Arc<Scratch>);

impl Drop for ScratchHold {
    fn drop(&mut self) {
        let mut st = self.0.state();
        st.benches = st.benches.saturating_sub(1);
        st.last_use = Some(Instant::now());
    }
}

impl Scratch {
    /// The node's scratch area; what a bench this node did not finish left
    /// reserved (the process killed, or stopped within [`IDLE`] of its
    /// last probe) is given back now.
    pub fn new(meta: &Path, opts: &StoreOptions, rt: tokio::runtime::Handle) -> Scratch {
        let s = Scratch::with_idle(meta, opts, rt, IDLE);
        s.give_back_leftover();
        s
    }

    /// At start: a scratch area with blocks allocated was left by a bench
    /// whose reservation nothing gave back (found by review: a node killed
    /// mid-bench kept 64 MiB of its metadata's file system for good).
    fn give_back_leftover(&self) {
        let left = std::fs::metadata(&self.path)
            .ok()
            .filter(|m| m.is_file())
            .map_or(0, |m| m.blocks() * 512);
        if left == 0 {
            return;
        }
        let punched = Store::open(&self.path, Some(BENCH_AREA), &self.opts)
            .map_err(|e| e.to_string())
            .and_then(|store| store.punch_now().map_err(|e| e.to_string()));
        match punched {
            Ok(()) => tracing::info!(
                path = %self.path.display(),
                mib = left >> 20,
                "the bench's scratch area, left reserved by a bench that did not finish, given back"
            ),
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                "the bench's scratch area ({} MiB allocated) not given back: {e}",
                left >> 20
            ),
        }
    }

    /// At a clean stop: the area's blocks go back now, not [`IDLE`] after
    /// the last probe (the task that would has ended with the process).
    /// Not while a probe's write holds the area (the store lane may be
    /// stuck in it, on a detached disk's stop): the stop must not wait.
    pub fn give_back(&self) {
        let mut st = match self.state.try_lock() {
            Ok(st) => st,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if st.reserved && self.punch(&st) {
            st.reserved = false;
        }
    }

    /// Punches the area's blocks out (if it was opened), saying so;
    /// whether that worked.
    fn punch(&self, st: &State) -> bool {
        let Some(store) = &st.store else { return true };
        match store.punch_now() {
            Ok(()) => {
                tracing::debug!(path = %self.path.display(), "the bench's scratch area given back");
                true
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "the bench's scratch area not given back: {e}");
                false
            }
        }
    }

    fn with_idle(
        meta: &Path,
        opts: &StoreOptions,
        rt: tokio::runtime::Handle,
        idle: Duration,
    ) -> Scratch {
        // Opened under the node's lock: never wait there for a lock an
        // exited process left (a failed probe is all it costs).
        let opts = StoreOptions { lock_wait: Duration::ZERO, ..opts.clone() };
        Scratch { path: crate::bench::scratch_path(meta), opts, idle, rt, state: Mutex::default() }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the area ready for probes (opened and reserved): the
    /// Primary's check before a bench, with the reason in full.
    pub fn prepare(self: &Arc<Self>) -> Result<(), ScratchError> {
        let mut st = self.state();
        st.last_use = Some(Instant::now());
        self.ready(&mut st)
    }

    /// Keeps the area reserved while a bench runs here (its link runs
    /// write no probe for up to one and a half `--time`s).
    pub fn hold(self: &Arc<Self>) -> ScratchHold {
        self.state().benches += 1;
        ScratchHold(self.clone())
    }

    /// Writes one probe's data (on the lane's thread). A failure carries
    /// its errno; this node's log says why, at most every 10 s.
    pub fn write(self: &Arc<Self>, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut st = self.state();
        st.last_use = Some(Instant::now());
        if let Err(e) = self.ready(&mut st) {
            let why = e.to_string();
            let again = st
                .last_warned
                .as_ref()
                .is_none_or(|(w, at)| *w != why || at.elapsed() >= WARN_EVERY);
            if again {
                tracing::warn!("bench scratch area: {why}");
                st.last_warned = Some((why, Instant::now()));
            }
            return Err(e.errno());
        }
        st.store.as_ref().expect("ready").write_now(offset, data)
    }

    fn ready(self: &Arc<Self>, st: &mut State) -> Result<(), ScratchError> {
        if st.store.is_none() {
            st.store = Some(Store::open(&self.path, Some(BENCH_AREA), &self.opts)?);
        }
        if !st.reserved {
            self.reserve(st.store.as_ref().expect("opened above"))?;
            st.reserved = true;
            let me = self.clone();
            self.rt.spawn(async move { me.give_back_when_idle().await });
        }
        Ok(())
    }

    fn reserve(&self, store: &Store) -> Result<(), ScratchError> {
        let io = |source| ScratchError::Io { path: self.path.clone(), source };
        let have = std::fs::metadata(&self.path).map_err(io)?.blocks() * 512;
        let need = BENCH_AREA.saturating_sub(have);
        if need == 0 {
            return Ok(());
        }
        let free = free_bytes(&self.path).map_err(io)?;
        if free < need + KEEP_FREE {
            return Err(ScratchError::NoRoom { path: self.path.clone(), need, free });
        }
        match store.allocate_now() {
            Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)) => {
                Ok(())
            }
            Err(e) => {
                // (What a failed fallocate allocated goes back at once.)
                let _ = store.punch_now();
                Err(io(e))
            }
            Ok(()) => Ok(()),
        }
    }

    /// Gives the area's blocks back once no probe has come for `idle`.
    async fn give_back_when_idle(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.idle / 2).await;
            let mut st = self.state();
            if st.benches > 0 || st.last_use.is_some_and(|t| t.elapsed() < self.idle) {
                continue;
            }
            self.punch(&st);
            st.reserved = false;
            return;
        }
    }
}

/// Bytes an unprivileged writer may still allocate on `path`'s file system.
fn free_bytes(path: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `s` a statvfs to fill.
    if unsafe { libc::statvfs(c.as_ptr(), s.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded and filled it.
    let s = unsafe { s.assume_init() };
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allocated(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().blocks() * 512
    }

    /// A scratch area for a node whose metadata is in `dir`, given back
    /// once idle for `idle`; and its path.
    fn scratch_idle_after(dir: &Path, idle: Duration) -> (Arc<Scratch>, PathBuf) {
        let meta = dir.join("a.meta");
        let s = Arc::new(Scratch::with_idle(
            &meta,
            &StoreOptions::default(),
            tokio::runtime::Handle::current(),
            idle,
        ));
        (s, crate::bench::scratch_path(&meta))
    }

    /// The first probe reserves the whole area; once idle its blocks go
    /// back, and the next probe reserves them again.
    #[tokio::test]
    async fn the_area_is_reserved_for_a_bench_and_given_back_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let idle = Duration::from_millis(300);
        let (s, path) = scratch_idle_after(dir.path(), idle);
        s.write(4096, &[7u8; 4096]).unwrap();
        if allocated(&path) < BENCH_AREA {
            eprintln!("skipped: no fallocate in {}", dir.path().display());
            return;
        }
        for _ in 0..3 {
            tokio::time::sleep(idle / 3).await;
            s.write(8192, &[8u8; 4096]).unwrap();
        }
        assert!(allocated(&path) >= BENCH_AREA, "given back while probes came");
        tokio::time::sleep(idle * 3).await;
        assert_eq!(allocated(&path), 0, "not given back once idle");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), BENCH_AREA, "the file stays");
        s.prepare().unwrap();
        assert!(allocated(&path) >= BENCH_AREA, "not reserved again");
    }

    /// A bench running here holds the area reserved, though no probe comes
    /// (its link runs); idle after the bench, it is given back.
    #[tokio::test]
    async fn the_area_stays_reserved_while_a_bench_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let idle = Duration::from_millis(300);
        let (s, path) = scratch_idle_after(dir.path(), idle);
        let hold = s.hold();
        s.prepare().unwrap();
        if allocated(&path) < BENCH_AREA {
            eprintln!("skipped: no fallocate in {}", dir.path().display());
            return;
        }
        tokio::time::sleep(idle * 3).await;
        assert!(allocated(&path) >= BENCH_AREA, "given back while a bench runs");
        drop(hold);
        tokio::time::sleep(idle * 3).await;
        assert_eq!(allocated(&path), 0, "not given back once the bench is done and idle");
    }

    /// An area that cannot be opened names the file and carries its errno.
    #[tokio::test]
    async fn a_scratch_area_that_is_a_directory_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("a.meta");
        std::fs::create_dir(crate::bench::scratch_path(&meta)).unwrap();
        let s = Arc::new(Scratch::new(
            &meta,
            &StoreOptions::default(),
            tokio::runtime::Handle::current(),
        ));
        let e = s.prepare().unwrap_err();
        assert!(e.to_string().contains("a.meta.bench"), "{e}");
        assert_eq!(e.errno().raw_os_error(), Some(libc::EISDIR), "{e}");
        assert_eq!(s.write(0, &[1u8; 512]).unwrap_err().raw_os_error(), Some(libc::EISDIR));
    }
}
