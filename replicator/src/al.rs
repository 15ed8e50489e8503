//! The activity log's journal and the saved out-of-sync bitmap: the files
//! behind the core's [`crate::core::Persist::Al`] and
//! [`crate::core::Persist::Bitmap`] updates.
//!
//! `<meta>.al`: one line per change, `+E` (extent E joins) or `-E` (leaves),
//! appended and fdatasynced; a torn last line (no newline) is ignored on
//! recovery (the extent had not joined yet: its write was not issued; a
//! torn `-12` must not remove extent 1). Rewritten compactly when long, at
//! every open, and before the next change after a failed append (so that
//! no change is ever appended to a torn line, which would hide it). `<meta>.bitmap`: the bitmap's 64-bit words,
//! little-endian; pages are overwritten in place and fdatasynced (a torn
//! page can only keep bits that were being cleared, or miss bits whose
//! write was not yet issued). Both created 0600.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::core::PAGE_WORDS;
use crate::meta::atomic_write;

/// Activity-log extent in production (4 MiB).
pub const EXTENT: u64 = 4 << 20;

/// Journal lines after which the log file is rewritten compactly.
const COMPACT_AFTER: usize = 16 * 1024;

/// `<meta>.<ext>`: the metadata's sibling files (`al`, `bitmap`).
pub fn sibling(meta: &Path, ext: &str) -> PathBuf {
    PathBuf::from(format!("{}.{ext}", meta.display()))
}

pub struct AlJournal {
    path: PathBuf,
    file: File,
    active: BTreeSet<u64>,
    lines: usize,
    /// An append failed: the file may end in a torn line.
    torn: bool,
}

/// `path`'s metadata; None if it does not exist (any other error is
/// returned: it must not read as a lost file).
fn stat(path: &Path) -> std::io::Result<Option<fs::Metadata>> {
    match fs::metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `active` as the whole journal at `path`, atomically; returns it
/// open for appending.
fn rewrite(path: &Path, active: &BTreeSet<u64>) -> std::io::Result<File> {
    let text: String = active.iter().map(|e| format!("+{e}\n")).collect();
    atomic_write(path, text.as_bytes())?;
    OpenOptions::new().append(true).open(path)
}

/// The journal's extents: whole lines only (a torn last line has no
/// newline: its extent had not joined, its write was not issued), each a
/// sign and digits. A whole line that is not (a corrupt byte, or changes
/// an older version glued to a torn line, `+4+5`) removes nothing and
/// adds every `+N` in it: an extent may stay in the log for nothing, never
/// leave it by mistake.
fn replay(text: &str) -> BTreeSet<u64> {
    let mut active = BTreeSet::new();
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    for line in whole.lines() {
        let number = |t: &str| digits(t).then(|| t.parse::<u64>().ok()).flatten();
        match (line.strip_prefix('+').and_then(number), line.strip_prefix('-').and_then(number)) {
            (Some(e), _) => {
                active.insert(e);
            }
            (_, Some(e)) => {
                active.remove(&e);
            }
            _ => {
                for part in line.split('+').skip(1) {
                    let n: String = part.chars().take_while(char::is_ascii_digit).collect();
                    if let Ok(e) = n.parse::<u64>() {
                        active.insert(e);
                    }
                }
            }
        }
    }
    active
}

/// The metadata's sibling that says blocks may differ from the peer's:
/// the bitmap with a bit set, or the activity log holding an extent
/// (read only, nothing rewritten). None: neither marks anything (or
/// neither exists, or one cannot be read: then the start's own opening
/// reports it).
pub fn marking_sibling(meta: &Path) -> Option<PathBuf> {
    let bitmap = sibling(meta, "bitmap");
    if fs::read(&bitmap).is_ok_and(|b| b.iter().any(|&x| x != 0)) {
        return Some(bitmap);
    }
    let al = sibling(meta, "al");
    fs::read(&al).is_ok_and(|b| !replay(&String::from_utf8_lossy(&b)).is_empty()).then_some(al)
}

impl AlJournal {
    /// Opens the journal next to `meta`; returns it and the extents it
    /// holds. The file is rewritten with them alone (a torn last line
    /// left by a crash goes).
    pub fn open(meta: &Path) -> std::io::Result<(AlJournal, Vec<u64>)> {
        let path = sibling(meta, "al");
        // (Missing only if not found: any other error fails the open, it
        // must not read as an empty log.)
        let active = match fs::read(&path) {
            Ok(bytes) => replay(&String::from_utf8_lossy(&bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e),
        };
        let file = rewrite(&path, &active)?;
        let (lines, held) = (active.len(), active.iter().copied().collect());
        Ok((AlJournal { path, file, active, lines, torn: false }, held))
    }

    /// Whether the journal next to `meta` exists (a node's first start
    /// creates it; missing later, it was lost).
    pub fn exists(meta: &Path) -> std::io::Result<bool> {
        Ok(stat(&sibling(meta, "al"))?.is_some())
    }

    /// Rewrites the file with the extents held, atomically.
    fn compact(&mut self) -> std::io::Result<()> {
        self.file = rewrite(&self.path, &self.active)?;
        self.lines = self.active.len();
        self.torn = false;
        Ok(())
    }

    /// Records extents leaving, then joining; durable on return.
    ///
    /// If it fails, the change may be in the file or not, whole or torn
    /// (the core then counts the extents it removed as gone, those it
    /// added as absent), and the file is rewritten before the next one.
    pub fn apply(&mut self, remove: &[u64], add: &[u64]) -> std::io::Result<()> {
        if self.torn {
            self.compact()?;
        }
        let mut text = String::new();
        for e in remove {
            text.push_str(&format!("-{e}\n"));
        }
        for e in add {
            text.push_str(&format!("+{e}\n"));
        }
        self.torn = true;
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        self.torn = false;
        for e in remove {
            self.active.remove(e);
        }
        self.active.extend(add.iter().copied());
        self.lines += remove.len() + add.len();
        if self.lines > COMPACT_AFTER {
            self.compact()?;
        }
        Ok(())
    }
}

pub struct BitmapFile {
    file: File,
}

/// The words a read of the bitmap file gives: none for a missing file or
/// one of another size (both decided before, `BitmapFile::fits`); any
/// other read error is returned.
fn saved_words(read: std::io::Result<Vec<u8>>, words: usize) -> std::io::Result<Option<Vec<u64>>> {
    let bytes = match read {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok((bytes.len() == words * 8).then(|| {
        bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
    }))
}

impl BitmapFile {
    /// Opens (creating) `<meta>.bitmap`; returns it and the saved words, if
    /// the file held a bitmap of `words` words. A file that exists but
    /// cannot be read is an error: taken for none, its bits would be
    /// zeroed below, and every block they marked taken for in sync.
    pub fn open(meta: &Path, words: usize) -> std::io::Result<(BitmapFile, Option<Vec<u64>>)> {
        let path = sibling(meta, "bitmap");
        let saved = saved_words(fs::read(&path), words)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        if saved.is_none() {
            file.set_len(0)?;
            file.set_len(words as u64 * 8)?;
            file.sync_all()?;
        }
        Ok((BitmapFile { file }, saved))
    }

    /// Whether `<meta>.bitmap` exists with `words` words (not found: false;
    /// any other error is returned).
    pub fn fits(meta: &Path, words: usize) -> std::io::Result<bool> {
        Ok(stat(&sibling(meta, "bitmap"))?.is_some_and(|m| m.len() == words as u64 * 8))
    }

    /// Replaces `<meta>.bitmap` with `words`, atomically (the old file, or
    /// none, until the new one is whole on disk).
    pub fn replace(meta: &Path, words: &[u64]) -> std::io::Result<()> {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        atomic_write(&sibling(meta, "bitmap"), &bytes)
    }

    /// Overwrites pages (PAGE_WORDS words each); durable on return.
    pub fn write_pages(&self, pages: &[(u64, Vec<u64>)]) -> std::io::Result<()> {
        for (page, words) in pages {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            self.file.write_all_at(&bytes, page * PAGE_WORDS as u64 * 8)?;
        }
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_replays_joins_and_leaves_and_ignores_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = dir.path().join("n.meta.al");
        assert!(!AlJournal::exists(&meta).unwrap());
        let (mut j, held) = AlJournal::open(&meta).unwrap();
        assert!(held.is_empty());
        assert!(AlJournal::exists(&meta).unwrap());
        j.apply(&[], &[1, 2, 3, 12]).unwrap();
        j.apply(&[2], &[9]).unwrap();
        drop(j);
        // A crash tore the append of "-12\n" after its first two bytes:
        // extent 1 stays, and so does 12 (its leaving was not recorded).
        let mut f = OpenOptions::new().append(true).open(&al).unwrap();
        f.write_all(b"-1").unwrap();
        drop(f);
        let (mut j, held) = AlJournal::open(&meta).unwrap();
        assert_eq!(held, vec![1, 3, 9, 12]);
        // The torn line is gone from the file: what is appended next is
        // not glued to it ("-1+5" would hide extent 5's joining).
        j.apply(&[], &[5]).unwrap();
        drop(j);
        let (_, held) = AlJournal::open(&meta).unwrap();
        assert_eq!(held, vec![1, 3, 5, 9, 12]);
        let text = fs::read_to_string(&al).unwrap();
        assert!(text.lines().all(|l| l.starts_with('+')), "not compacted at open: {text:?}");
        let mode = fs::metadata(&al).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    }

    #[test]
    fn only_whole_lines_of_a_sign_and_digits_count_and_a_bad_one_removes_nothing() {
        assert_eq!(replay("+1\n+2\n-1\n+3"), BTreeSet::from([2]));
        // A malformed whole line removes nothing and keeps each +N in it.
        assert_eq!(replay("+1\n-+1\n+ 4\n+-5\n+6x\n\n-\n+\n+7\n"), BTreeSet::from([1, 6, 7]));
        assert_eq!(replay("+1\n-1+5\n"), BTreeSet::from([1, 5]));
        assert_eq!(replay("+4+5\n"), BTreeSet::from([4, 5]));
        assert_eq!(replay("+1\n-\u{fffd}1\n\u{e9}+2\n"), BTreeSet::from([1, 2]));
        assert_eq!(replay(""), BTreeSet::new());
    }

    /// A journal that cannot be read is not an empty one.
    #[test]
    fn a_corrupt_journal_keeps_its_extents_and_an_unreadable_one_fails_the_open() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = dir.path().join("n.meta.al");
        fs::write(&al, b"+1\n+2\n\xff\n-1\xff\n").unwrap();
        let (_, held) = AlJournal::open(&meta).unwrap();
        assert_eq!(held, vec![1, 2]);
        fs::remove_file(&al).unwrap();
        fs::create_dir(&al).unwrap(); // reading it fails (EISDIR), not NotFound
        assert!(AlJournal::open(&meta).is_err());
        assert!(AlJournal::exists(&meta).unwrap());
    }

    /// An append that failed may have left a torn line: the file is
    /// rewritten before the next change.
    #[test]
    fn a_change_after_a_failed_append_starts_on_a_fresh_file() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let al = dir.path().join("n.meta.al");
        let (mut j, _) = AlJournal::open(&meta).unwrap();
        j.apply(&[], &[1, 2]).unwrap();
        // As a failed write_all would leave it: a torn "-2", and the
        // journal knowing the append failed.
        OpenOptions::new().append(true).open(&al).unwrap().write_all(b"-").unwrap();
        j.torn = true;
        j.apply(&[], &[5]).unwrap();
        drop(j);
        let (_, held) = AlJournal::open(&meta).unwrap();
        assert_eq!(held, vec![1, 2, 5], "extent 5's joining was glued to the torn line");
    }

    #[test]
    fn a_bitmap_replaced_whole_is_read_back_and_fits() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let words = PAGE_WORDS * 2 + 3;
        assert!(!BitmapFile::fits(&meta, words).unwrap());
        BitmapFile::replace(&meta, &vec![u64::MAX; words]).unwrap();
        assert!(BitmapFile::fits(&meta, words).unwrap());
        assert!(!BitmapFile::fits(&meta, words + 1).unwrap());
        let (_, saved) = BitmapFile::open(&meta, words).unwrap();
        assert_eq!(saved, Some(vec![u64::MAX; words]));
        let mode = fs::metadata(dir.path().join("n.meta.bitmap")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    }

    /// A bitmap file that exists but cannot be read (EIO) fails the open:
    /// taken for none, it was zeroed, and every block its bits marked was
    /// then taken for in sync (found in review).
    #[test]
    fn an_unreadable_bitmap_is_an_error_not_an_empty_one() {
        let eio = || Err(std::io::Error::from_raw_os_error(libc::EIO));
        assert_eq!(saved_words(eio(), 4).unwrap_err().raw_os_error(), Some(libc::EIO));
        let missing = Err(std::io::ErrorKind::NotFound.into());
        assert_eq!(saved_words(missing, 4).unwrap(), None);
        assert_eq!(saved_words(Ok(vec![0xff; 8 * 3]), 4).unwrap(), None, "another size");
        assert_eq!(saved_words(Ok(vec![0xff; 8 * 4]), 4).unwrap(), Some(vec![u64::MAX; 4]));
    }

    #[test]
    fn bitmap_pages_are_written_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let words = PAGE_WORDS * 3;
        let (b, saved) = BitmapFile::open(&meta, words).unwrap();
        assert_eq!(saved, None);
        b.write_pages(&[(1, vec![7; PAGE_WORDS])]).unwrap();
        drop(b);
        let (_, saved) = BitmapFile::open(&meta, words).unwrap();
        let saved = saved.unwrap();
        assert_eq!(saved[PAGE_WORDS], 7);
        assert_eq!(saved[0], 0);
        assert_eq!(saved.iter().filter(|w| **w == 7).count(), PAGE_WORDS);
    }
}
