//! The `meta` file: which node, resource and size the disk belongs to, and
//! the core's [`MetaRecord`] (disk state, generation ids). Replaced
//! atomically: a temporary file is written and fsynced, renamed over the
//! old one, and the directory fsynced. Created 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::core::MetaRecord;
use crate::protocol::genid::GenIds;
use crate::protocol::wire::DiskState;

/// The metadata format this binary writes. A file of a higher version, or
/// with a field this binary does not know, was written by a newer one: it
/// is refused (loaded, the next save would drop what it records).
pub const META_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// See [`MetaRecord::lost_acked`] (0: none).
    #[serde(default)]
    pub lost_acked: u64,
    /// See [`MetaRecord::told`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub told: Vec<u64>,
    /// See [`MetaRecord::full_sync`] (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub full_sync: u64,
    /// See [`MetaRecord::forced_base`] (0: none).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub forced_base: u64,
    /// See [`MetaRecord::boot`] (0: unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub boot: u64,
    /// See [`MetaRecord::cache_lost`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cache_lost: bool,
    /// See [`MetaRecord::received_lost`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub received_lost: bool,
    /// See [`MetaRecord::received`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub received: bool,
    /// See [`MetaRecord::async_acks`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub async_acks: bool,
    /// See [`MetaRecord::receipt_acks`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receipt_acks: bool,
    /// See [`MetaRecord::behind_async_primary`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub behind_async_primary: bool,
    /// Saved by a version that records the disk's identity (`meta.disk`,
    /// [`crate::disk_id`]) at every start before any record: with it set,
    /// a missing identity file means the disk cannot be vouched for;
    /// without it (older metadata) the identity found is recorded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disk_identified: bool,
    /// The id in the header of `<meta>.bitmap` this record was saved with
    /// ([`crate::al::BitmapFile::id`]): a bitmap with another id is not
    /// this record's (an older or newer file, or this file restored from a
    /// copy) and is not trusted. 0: saved before bitmaps had ids.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bitmap_id: u64,
    /// See [`MetaRecord::pending`]: a forced promotion's first record; a
    /// start takes this one instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Box<MetaRecord>>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not twinblock metadata: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error(
        "{path}: written by a newer twinblock ({reason}): run that version, or upgrade this one"
    )]
    Newer { path: PathBuf, reason: String },
    #[error("{path} belongs to {what} {found:?}, not {expected:?}")]
    Mismatch { path: PathBuf, what: &'static str, found: String, expected: String },
    /// A file beside the metadata that is not this node's (why, and what
    /// to do).
    #[error("{path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error(
        "size: the resource file says {expected} bytes, but {path} was made for {found}: a \
         resource's size cannot change (twinblock does not resize; set size back to {found}, \
         or make a new resource and copy the data to it)"
    )]
    Resized { path: PathBuf, found: u64, expected: u64 },
}

impl Meta {
    pub fn record(&self) -> MetaRecord {
        MetaRecord {
            disk: self.disk,
            fresh: self.fresh,
            gen: self.gen,
            promoted_at: self.promoted_at,
            lost_acked: self.lost_acked,
            told: self.told.clone(),
            full_sync: self.full_sync,
            forced_base: self.forced_base,
            boot: self.boot,
            cache_lost: self.cache_lost,
            received_lost: self.received_lost,
            received: self.received,
            async_acks: self.async_acks,
            receipt_acks: self.receipt_acks,
            behind_async_primary: self.behind_async_primary,
            pending: self.pending.clone(),
        }
    }

    pub fn from_record(node: &str, resource: &str, size: u64, r: &MetaRecord) -> Meta {
        Meta {
            version: META_VERSION,
            node: node.into(),
            resource: resource.into(),
            size,
            disk: r.disk,
            fresh: r.fresh,
            gen: r.gen,
            promoted_at: r.promoted_at,
            lost_acked: r.lost_acked,
            told: r.told.clone(),
            full_sync: r.full_sync,
            forced_base: r.forced_base,
            boot: r.boot,
            cache_lost: r.cache_lost,
            received_lost: r.received_lost,
            received: r.received,
            async_acks: r.async_acks,
            receipt_acks: r.receipt_acks,
            behind_async_primary: r.behind_async_primary,
            disk_identified: true,
            bitmap_id: 0,
            pending: r.pending.clone(),
        }
    }

    /// The disk no longer holds what this record describes (gone,
    /// replaced, or its writeback failed): saved `Failed`, so that a full
    /// sync from the peer follows. The generation ids stay.
    /// A forced promotion's unconfirmed first record is marked in the
    /// record it holds too: a start takes that one ([`MetaRecord::at_start`];
    /// before, the mark went on the top-level record only, and a start on
    /// a replaced disk took the held record, Outdated on a new empty disk;
    /// review, helper-162, `node::tests`
    /// `a_disk_gone_under_an_unconfirmed_forced_record_starts_failed`).
    pub fn save_failed(&mut self, path: &Path) -> Result<(), MetaError> {
        self.disk = DiskState::Failed;
        self.fresh = false;
        if let Some(held) = self.pending.as_mut() {
            held.disk = DiskState::Failed;
            held.fresh = false;
        }
        self.save(path)
    }

    /// The record a start takes says the disk failed (the held one for a
    /// forced promotion's unconfirmed first record).
    pub fn failed_at_start(&self) -> bool {
        self.pending.as_deref().map_or(self.disk, |m| m.disk) == DiskState::Failed
    }

    /// Loads the metadata at `path`, checking it belongs to this node,
    /// resource and size. None: there is none yet.
    pub fn load(
        path: &Path,
        node: &str,
        resource: &str,
        size: u64,
    ) -> Result<Option<Meta>, MetaError> {
        let io = |source| MetaError::Io { path: path.to_owned(), source };
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let newer = |reason: String| MetaError::Newer { path: path.to_owned(), reason };
        let m: Meta = serde_json::from_str(&text).map_err(|e| match e.to_string() {
            e if e.starts_with("unknown field") => newer(e),
            e => MetaError::Parse { path: path.to_owned(), reason: e },
        })?;
        if m.version > META_VERSION {
            return Err(newer(format!(
                "metadata version {}, this one reads up to {META_VERSION}",
                m.version
            )));
        }
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
            return Err(MetaError::Resized {
                path: path.to_owned(),
                found: m.size,
                expected: size,
            });
        }
        Ok(Some(m))
    }

    pub fn save(&self, path: &Path) -> Result<(), MetaError> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| MetaError::Parse { path: path.to_owned(), reason: e.to_string() })?;
        atomic_write(path, text.as_bytes())
            .map_err(|source| MetaError::Io { path: path.to_owned(), source })
    }
}

/// Replaces `path` with `bytes` durably (temp file, fsync, rename, fsync
/// of the directory); the file is created 0600. If it fails before the
/// rename, `path` is as it was and the temp file is removed: a write that
/// found the file system full must not leave its part-written temp file
/// holding what room there was (before, a failed start left a
/// `meta.bitmap.tmp` filling the metadata volume).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let replaced = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = replaced {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saved(dir: &Path) -> (PathBuf, serde_json::Value) {
        let path = dir.join("meta");
        let v = serde_json::json!({
            "version": 1, "node": "a", "resource": "r", "size": 1 << 20,
            "disk": DiskState::UpToDate, "fresh": false,
        });
        let m: Meta = serde_json::from_value(v).unwrap();
        m.save(&path).unwrap();
        let v = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        (path, v)
    }

    /// A forced promotion's first record keeps the record it replaced
    /// through a save and a load (`MetaRecord::pending`), and a confirmed
    /// record writes no `pending` at all (an older twinblock reads it).
    #[test]
    fn a_pending_record_is_saved_and_loaded_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (path, v) = saved(dir.path());
        let before = Meta::load(&path, "a", "r", 1 << 20).unwrap().unwrap().record();
        assert!(v.get("pending").is_none(), "{v}");
        let mut first = before.clone();
        first.disk = DiskState::Inconsistent;
        first.promoted_at = 7;
        first.pending = Some(Box::new(before.clone()));
        Meta::from_record("a", "r", 1 << 20, &first).save(&path).unwrap();
        let loaded = Meta::load(&path, "a", "r", 1 << 20).unwrap().unwrap().record();
        assert_eq!(loaded, first);
        assert_eq!(loaded.at_start(), &before);
        // A field a newer version put in the held record is refused too.
        let mut v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        v["pending"]["must_not_be_dropped"] = serde_json::Value::Bool(true);
        fs::write(&path, serde_json::to_string(&v).unwrap()).unwrap();
        let e = Meta::load(&path, "a", "r", 1 << 20).unwrap_err().to_string();
        assert!(e.contains("must_not_be_dropped") && e.contains("newer"), "{e}");
    }

    /// Metadata written by a newer twinblock (a field this one does not
    /// know, or a higher version) is refused naming why: loaded, the
    /// next save would drop what the newer version records (a safety
    /// flag), silently (review, helper-117).
    #[test]
    fn metadata_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (path, v) = saved(dir.path());
        assert!(Meta::load(&path, "a", "r", 1 << 20).unwrap().is_some());
        let mut newer = v.clone();
        newer["must_not_be_dropped"] = serde_json::Value::Bool(true);
        fs::write(&path, serde_json::to_string(&newer).unwrap()).unwrap();
        let e = Meta::load(&path, "a", "r", 1 << 20).unwrap_err().to_string();
        assert!(e.contains("must_not_be_dropped") && e.contains("newer"), "{e}");
        let mut newer = v;
        newer["version"] = serde_json::json!(2);
        fs::write(&path, serde_json::to_string(&newer).unwrap()).unwrap();
        let e = Meta::load(&path, "a", "r", 1 << 20).unwrap_err().to_string();
        assert!(e.contains("version 2") && e.contains("newer"), "{e}");
    }
}
