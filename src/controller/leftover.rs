//! The service a crashed process left running: `<meta>.promoted` exists
//! from the start of a promotion's hooks (address, `on_promote`) until an
//! `on_demote` has run without error. A process that died in between (a
//! `kill -9`, a panic, the OOM killer) left that promotion's service
//! (slapd, the mount, the loop device over a FUSE file) on a node that
//! starts again as Secondary; [`super::start`] then runs `on_demote`
//! once, before any hook of a new promotion. Before, it stayed until this
//! node's next promotion (review, helper-158).
//!
//! Not synced to disk: what it stands for, the processes and mounts of
//! the hooks, does not outlive the machine either.

use std::path::{Path, PathBuf};

use twinblock_replicator::Node;

/// The marker beside `meta`.
pub fn path(meta: &Path) -> PathBuf {
    PathBuf::from(format!("{}.promoted", meta.display()))
}

/// A promotion's hooks start: marked before anything is done.
pub fn mark(node: &Node) {
    let p = path(&node.me.meta);
    if let Err(e) = std::fs::write(&p, format!("{}\n", std::process::id())) {
        // The hooks run anyway: only a crash's clean-up at the next
        // start would be missed.
        tracing::warn!(file = %p.display(), "cannot mark the promotion's hooks as started: {e}");
    }
}

/// `on_demote` ran without error: nothing of the hooks is left.
pub fn clear(node: &Node) {
    let p = path(&node.me.meta);
    match std::fs::remove_file(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(file = %p.display(), "cannot remove: {e}"),
    }
}

/// The last process stopped between a promotion's hooks and a good
/// `on_demote`.
pub fn left(node: &Node) -> bool {
    path(&node.me.meta).exists()
}
