//! The store's durability points (FLUSH, and the sync after a buffered FUA
//! write): one `fdatasync` at a time, on a thread of their own, and none
//! trusted after one failed.
//!
//! Linux reports a failed writeback to each open file once (`errseq`): the
//! pages whose writeback failed are marked clean, and only the next sync
//! on the file hears of it. So
//! - a sync after a failed one returns 0 though the writes it covers were
//!   dropped: once a sync fails, every later one fails too (the latch);
//!   nothing but rewriting the data could make those writes durable, so
//!   the latch is lifted only by whoever rewrote it ([`Syncer::recovered`]:
//!   a replicated node's detached disk taking a full sync);
//! - of two syncs running at once on one file, the one that checks first
//!   gets the error and the other 0: syncs run one at a time. Requests that
//!   arrive while one runs share the next (group commit): each was made
//!   before that sync started, so it covers every write completed before
//!   each of them.
//!
//! A sync runs on this thread whatever happens to the future waiting for
//! it (a dropped flush cannot let the next one overlap it), on a
//! duplicate of the store's descriptor: the same open file, so the same
//! error reports, and never a number reused by another file.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc};

use tokio::sync::oneshot;

use super::sys;

type Waiter = oneshot::Sender<io::Result<()>>;

/// The first failed sync's errno; 0 while none failed.
#[derive(Default)]
struct Latch(AtomicI32);

impl Latch {
    fn get(&self) -> Option<io::Error> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            errno => Some(io::Error::from_raw_os_error(errno)),
        }
    }

    fn clear(&self) -> bool {
        self.0.swap(0, Ordering::AcqRel) != 0
    }

    /// Keeps the first failure (EIO for one without an errno).
    fn set(&self, e: &io::Error) {
        let errno = e.raw_os_error().filter(|&n| n != 0).unwrap_or(libc::EIO);
        let _ = self.0.compare_exchange(0, errno, Ordering::AcqRel, Ordering::Acquire);
    }
}

pub(super) struct Syncer {
    tx: Option<mpsc::Sender<Waiter>>,
    latch: Arc<Latch>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread that syncs `file` (a duplicate of the store's
    /// descriptor), named by `path` in its logs.
    pub fn start(file: File, path: PathBuf) -> io::Result<Syncer> {
        Syncer::start_with(path, move || sys::fdatasync(file.as_raw_fd()))
    }

    /// The same with any sync (unit tests).
    fn start_with(
        path: PathBuf,
        sync: impl FnMut() -> io::Result<()> + Send + 'static,
    ) -> io::Result<Syncer> {
        let (tx, rx) = mpsc::channel::<Waiter>();
        let latch = Arc::new(Latch::default());
        let l = latch.clone();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new().name("tb-store-sync".into()).spawn(move || {
            let _span = span.enter();
            run(rx, sync, &l, &path);
        })?;
        Ok(Syncer { tx: Some(tx), latch, thread: Some(thread) })
    }

    /// The latch is lifted: the writes a failed writeback may have
    /// dropped were rewritten or given up by whoever calls this (a
    /// replicated node's full sync onto its detached disk).
    pub fn recovered(&self) {
        if self.latch.clear() {
            tracing::info!("the disk was rewritten: syncs are trusted again");
        }
    }

    /// Makes every write completed before this call durable. Fails once a
    /// sync has failed, until [`Syncer::recovered`].
    pub async fn sync(&self) -> io::Result<()> {
        if let Some(e) = self.latch.get() {
            return Err(e);
        }
        let (tx, rx) = oneshot::channel();
        let gone = || io::Error::other("the store's sync thread is gone");
        self.tx.as_ref().ok_or_else(gone)?.send(tx).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

impl Drop for Syncer {
    /// Waits for the sync under way: the thread's descriptor shares the
    /// store's open file, and with it the disk's lock, which a store
    /// reopened next must find released.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    rx: mpsc::Receiver<Waiter>,
    mut sync: impl FnMut() -> io::Result<()>,
    latch: &Latch,
    path: &std::path::Path,
) {
    while let Ok(first) = rx.recv() {
        // Every request queued now was made before the sync below starts.
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let result = match latch.get() {
            Some(e) => Err(e),
            None => sync().inspect_err(|e| {
                latch.set(e);
                tracing::error!(
                    path = %path.display(),
                    "sync failed ({e}): writes since the last good sync may have been dropped \
                     from the page cache, so no later FLUSH or FUA write of this disk succeeds"
                );
            }),
        };
        for w in waiters {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(e.raw_os_error().map_or_else(
                    || io::Error::new(e.kind(), e.to_string()),
                    io::Error::from_raw_os_error,
                )),
            };
            let _ = w.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::Mutex;
    use std::time::Duration;

    /// A sync that fails once, as Linux reports a failed writeback: the
    /// failure goes to the first sync that looks, and the syncs after it
    /// succeed (the dropped pages are clean).
    fn errseq_once(fail_at: usize, calls: Arc<AtomicUsize>) -> impl FnMut() -> io::Result<()> {
        move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n == fail_at {
                Err(io::Error::from_raw_os_error(libc::EIO))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn after_a_failed_sync_every_sync_fails() {
        let calls = Arc::new(AtomicUsize::new(0));
        let s = Syncer::start_with("t".into(), errseq_once(1, calls.clone())).unwrap();
        s.sync().await.unwrap();
        let e = s.sync().await.unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        for _ in 0..3 {
            let e = s.sync().await.unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "a sync after the failed one");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the latch answers without syncing");
    }

    /// Requests made while a sync runs wait for it and share the next one;
    /// two syncs never overlap, so one failure reaches every request it
    /// may concern.
    #[tokio::test]
    async fn syncs_never_overlap_and_requests_meanwhile_share_the_next() {
        let running = Arc::new(AtomicUsize::new(0));
        let overlapped = Arc::new(AtomicUsize::new(0));
        let calls = Arc::new(Mutex::new(0usize));
        let (r, o, c) = (running.clone(), overlapped.clone(), calls.clone());
        let s = Arc::new(
            Syncer::start_with("t".into(), move || {
                if r.fetch_add(1, Ordering::SeqCst) != 0 {
                    o.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
                *c.lock().unwrap() += 1;
                r.fetch_sub(1, Ordering::SeqCst);
                // The second sync fails: every request waiting for it, and
                // every later one, must see it.
                if *c.lock().unwrap() == 2 {
                    Err(io::Error::from_raw_os_error(libc::EIO))
                } else {
                    Ok(())
                }
            })
            .unwrap(),
        );
        let first = tokio::spawn({
            let s = s.clone();
            async move { s.sync().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let during: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.sync().await })
            })
            .collect();
        assert!(first.await.unwrap().is_ok());
        for d in during {
            assert_eq!(d.await.unwrap().unwrap_err().raw_os_error(), Some(libc::EIO));
        }
        assert_eq!(*calls.lock().unwrap(), 2, "the eight requests shared one sync");
        assert_eq!(overlapped.load(Ordering::SeqCst), 0);
        assert!(s.sync().await.is_err());
    }
}
