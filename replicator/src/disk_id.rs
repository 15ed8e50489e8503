//! Which disk the metadata describes. The metadata lives beside the disk,
//! not on it, so a disk replaced at the same path (a new empty file, a new
//! volume attached under the same name) would otherwise be taken for the
//! old one: UpToDate, in sync, serving zeroes for acknowledged data. Its
//! identity is kept in `META.disk` and checked at every start:
//! - a regular file: its file system, inode and birth time (a new file,
//!   even one given the old inode number, differs);
//! - a block device: the first stable name sysfs gives it (WWID, serial,
//!   device-mapper UUID, or a loop device's backing file with its inode
//!   and birth time),
//!   else its device number.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The identity file beside the metadata.
pub fn id_path(meta: &Path) -> PathBuf {
    let mut p = meta.as_os_str().to_owned();
    p.push(".disk");
    PathBuf::from(p)
}

/// The identity of the disk at `path` (which exists).
pub fn identity(path: &Path) -> io::Result<String> {
    let m = fs::metadata(path)?;
    if m.file_type().is_block_device() {
        let (major, minor) = (libc::major(m.rdev()), libc::minor(m.rdev()));
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        for name in ["device/wwid", "wwid", "device/serial", "serial", "dm/uuid"] {
            if let Ok(v) = fs::read_to_string(sys.join(name)) {
                let v = v.trim();
                if !v.is_empty() {
                    return Ok(format!("block {name}={v}"));
                }
            }
        }
        if let Ok(backing) = fs::read_to_string(sys.join("loop/backing_file")) {
            // The backing file as a regular disk file is known: its birth
            // too, since a new file may reuse a removed one's inode number
            // (found by review: a backing file removed and made anew at the
            // same path got the old inode, and the empty disk was trusted).
            let backing = backing.trim();
            let file = fs::metadata(backing).map(|b| file_identity(&b)).unwrap_or_default();
            return Ok(format!("block loop={backing} {file}"));
        }
        return Ok(format!("block {major}:{minor}"));
    }
    Ok(format!("file {}", file_identity(&m)))
}

/// `id` without its ` born=N` part.
fn without_birth(id: &str) -> &str {
    id.rfind(" born=").map_or(id, |i| &id[..i])
}

/// A regular file's device, inode and birth time.
fn file_identity(m: &fs::Metadata) -> String {
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("dev={} ino={} born={born}", m.dev(), m.ino())
}

/// What the start finds.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// The recorded disk.
    Same,
    /// No identity recorded yet (a first start, or metadata from before
    /// identities were kept): the one found, to record.
    Unrecorded(String),
    /// Another disk than the metadata's.
    Replaced { was: String, found: String },
}

/// Compares the disk at `disk` with the identity recorded beside `meta`. A
/// loop device recorded before its identity had the backing file's birth
/// is the same disk if the rest matches (the identity is then recorded
/// anew, with the birth).
pub fn check(meta: &Path, disk: &Path) -> io::Result<Check> {
    let found = identity(disk)?;
    match fs::read_to_string(id_path(meta)) {
        Ok(recorded) if recorded.trim() == found => Ok(Check::Same),
        Ok(recorded)
            if found.starts_with("block loop=") && recorded.trim() == without_birth(&found) =>
        {
            record(meta, &found)?;
            Ok(Check::Same)
        }
        Ok(recorded) => Ok(Check::Replaced { was: recorded.trim().to_owned(), found }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Check::Unrecorded(found)),
        Err(e) => Err(e),
    }
}

/// With the disk's path missing: the disk recorded beside `meta` was
/// not at that path in a way a missing path could mean gone, but on
/// something not there yet: a block device's (a volume still attaching,
/// udev at boot), or a file on another file system than the one that
/// now holds the path's directory (its file system not mounted yet).
/// None recorded: None.
pub fn recorded_elsewhere(meta: &Path, disk: &Path) -> io::Result<Option<Elsewhere>> {
    let recorded = match fs::read_to_string(id_path(meta)) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if recorded.starts_with("block ") {
        return Ok(Some(Elsewhere::Block));
    }
    let dev = recorded
        .strip_prefix("file dev=")
        .and_then(|r| r.split(' ').next())
        .and_then(|d| d.parse::<u64>().ok());
    let Some(dev) = dev else { return Ok(None) };
    // A dangling symlink (`/var/lib/twinblock/r0.img -> /data/r0.img`,
    // the file deleted there): the file was in its target's directory,
    // not the link's (review: a file deleted on its own, mounted, file
    // system was refused as one not mounted yet).
    let mut disk = disk.to_path_buf();
    for _ in 0..40 {
        let Ok(target) = fs::read_link(&disk) else { break };
        disk = disk.parent().unwrap_or(Path::new("")).join(target);
    }
    let dir = disk.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match fs::metadata(dir) {
        Ok(m) => Ok((m.dev() != dev).then_some(Elsewhere::FileSystem)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Some(Elsewhere::FileSystem)),
        Err(e) => Err(e),
    }
}

/// Where the disk of a missing path was ([`recorded_elsewhere`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elsewhere {
    /// A block device.
    Block,
    /// A file on another file system than the path's directory's now.
    FileSystem,
}

/// Records `id` as the identity of the metadata's disk (atomically, 0600).
pub fn record(meta: &Path, id: &str) -> io::Result<()> {
    crate::meta::atomic_write(&id_path(meta), format!("{id}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_replaced_at_the_same_path_is_another_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (meta, disk) = (dir.path().join("n.meta"), dir.path().join("n.img"));
        fs::write(&disk, vec![7u8; 8192]).unwrap();
        let Check::Unrecorded(id) = check(&meta, &disk).unwrap() else {
            panic!("nothing was recorded yet")
        };
        record(&meta, &id).unwrap();
        assert_eq!(check(&meta, &disk).unwrap(), Check::Same);
        // Written in place: the same disk.
        fs::write(&disk, vec![8u8; 8192]).unwrap();
        assert_eq!(check(&meta, &disk).unwrap(), Check::Same);
        // Deleted and made again (ext4 may hand out the same inode).
        fs::remove_file(&disk).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::File::create(&disk).unwrap().set_len(8192).unwrap();
        assert!(matches!(check(&meta, &disk).unwrap(), Check::Replaced { .. }));
    }

    /// A loop device's identity recorded before it had the backing file's
    /// birth (the previous version's) still names the same disk.
    #[test]
    fn a_loop_identity_without_the_birth_is_the_same_disk() {
        let id = "block loop=/srv/a.img dev=2049 ino=12 born=1764000000000000000";
        assert_eq!(without_birth(id), "block loop=/srv/a.img dev=2049 ino=12");
        assert_eq!(without_birth("block 7:0"), "block 7:0");
    }
}
