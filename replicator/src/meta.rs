//! Per-node metadata kept in the `meta` file: which node, resource and size
//! the disk belongs to, its disk state, and whether it was never written
//! since twinblock created it (then it is all zeroes). Updates are atomic:
//! write a temporary file, fsync it, rename it over the old one, fsync the
//! directory. They happen before the data writes they describe.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::genid::GenIds;
use crate::protocol::wire::DiskState;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub version: u32,
    pub node: String,
    pub resource: String,
    pub size: u64,
    pub disk: DiskState,
    /// Created by twinblock and never written since: reads as all zeroes.
    pub fresh: bool,
    /// Generation ids (DRBD's UUIDs).
    #[serde(default = "GenIds::never_synced")]
    pub gen: GenIds,
    /// When this node was last promoted (ms since the epoch; 0: never).
    #[serde(default)]
    pub promoted_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not twinblock metadata: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("{path} belongs to {what} {found:?}, not {expected:?}")]
    Mismatch { path: PathBuf, what: &'static str, found: String, expected: String },
}

impl Meta {
    /// Loads the metadata, or creates it for a disk that twinblock just
    /// created (`fresh`) or found already there (then its content is
    /// unknown: Inconsistent, not fresh).
    pub fn load_or_create(
        path: &Path,
        node: &str,
        resource: &str,
        size: u64,
        disk_was_created: bool,
    ) -> Result<Meta, MetaError> {
        let io = |source| MetaError::Io { path: path.to_owned(), source };
        if path.exists() {
            let text = fs::read_to_string(path).map_err(io)?;
            let m: Meta = serde_json::from_str(&text)
                .map_err(|e| MetaError::Parse { path: path.to_owned(), reason: e.to_string() })?;
            let mismatch = |what, found: String, expected: String| MetaError::Mismatch {
                path: path.to_owned(),
                what,
                found,
                expected,
            };
            if m.node != node {
                return Err(mismatch("node", m.node, node.into()));
            }
            if m.resource != resource {
                return Err(mismatch("resource", m.resource, resource.into()));
            }
            if m.size != size {
                return Err(mismatch("size", m.size.to_string(), size.to_string()));
            }
            return Ok(m);
        }
        let m = Meta {
            version: 1,
            node: node.into(),
            resource: resource.into(),
            size,
            disk: DiskState::Inconsistent,
            fresh: disk_was_created,
            gen: GenIds::never_synced(),
            promoted_at: 0,
        };
        m.save(path)?;
        Ok(m)
    }

    pub fn save(&self, path: &Path) -> Result<(), MetaError> {
        let io = |source| MetaError::Io { path: path.to_owned(), source };
        let tmp = path.with_extension("tmp");
        let mut f = fs::File::create(&tmp).map_err(io)?;
        let text = serde_json::to_string_pretty(self).expect("meta serializes");
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        drop(f);
        fs::rename(&tmp, path).map_err(io)?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }
}
