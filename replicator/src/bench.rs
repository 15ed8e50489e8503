//! The node's side of `twinblock bench`: probes through the replication
//! path into the scratch area (see `core::bench` for the rules). The
//! measurement loop, percentiles and report are the binary's (`src/bench/`).

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::core::{ProbeMode, ReplyError};
use crate::node::Node;

/// Where a node keeps its scratch area: beside its metadata.
pub fn scratch_path(meta: &Path) -> PathBuf {
    PathBuf::from(format!("{}.bench", meta.display()))
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe outside the scratch area")]
    OutOfRange,
    #[error("probe failed: {0}")]
    Io(std::io::Error),
    #[error("the node is shutting down")]
    Shutdown,
}

impl Node {
    /// Why a bench cannot run now (None: it can).
    pub fn bench_refusal(&self) -> Option<String> {
        self.lock().core.bench_refusal()
    }

    /// A bench starts here (until the guard is dropped): adaptive mode
    /// may stop it (`core::bench::BenchRun`).
    pub fn bench_begin(self: &std::sync::Arc<Self>) -> BenchGuard {
        self.lock().core.bench_begin();
        BenchGuard(self.clone())
    }

    /// Makes this node's scratch area ready (opened, its room reserved):
    /// before a bench, so that a scratch area that cannot take probes is
    /// named with its reason, not as the errno of a failed probe.
    pub fn bench_prepare(&self) -> Result<(), String> {
        self.scratch.prepare().map_err(|e| format!("bench: {e}"))
    }

    /// Keeps this node's scratch area reserved while a bench runs here.
    pub fn bench_hold(&self) -> crate::node::scratch::ScratchHold {
        self.scratch.hold()
    }

    /// One probe of `data` at `offset` of the scratch area, answered under
    /// `mode`'s rule.
    pub async fn probe(&self, mode: ProbeMode, offset: u64, data: Bytes) -> Result<(), ProbeError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut sh = self.lock();
            sh.replies.insert(req, tx);
            let now = self.now();
            sh.core.bench_write(now, req, mode, offset, data);
            self.drain(&mut sh);
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(ReplyError::OutOfRange)) => Err(ProbeError::OutOfRange),
            Ok(Err(ReplyError::Io(e))) => {
                Err(ProbeError::Io(std::io::Error::from_raw_os_error(e.0)))
            }
            Ok(Err(ReplyError::ReadOnly)) => {
                Err(ProbeError::Io(std::io::Error::from_raw_os_error(libc::EPERM)))
            }
            Err(_) => Err(ProbeError::Shutdown),
        }
    }
}

/// Ends the node's bench when dropped (done, failed, or its caller gone).
pub struct BenchGuard(std::sync::Arc<Node>);

impl Drop for BenchGuard {
    fn drop(&mut self) {
        self.0.lock().core.bench_end();
    }
}
