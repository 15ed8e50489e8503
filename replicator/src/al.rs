//! The activity log's journal and the saved out-of-sync bitmap: the files
//! behind the core's [`crate::core::Persist::Al`] and
//! [`crate::core::Persist::Bitmap`] updates.
//!
//! `<meta>.al`: one line per change, `+E` (extent E joins) or `-E` (leaves),
//! appended and fdatasynced; a torn last line is ignored on recovery (the
//! extent had not joined yet: its write was not issued). Rewritten
//! compactly when long. `<meta>.bitmap`: the bitmap's 64-bit words,
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

fn sibling(meta: &Path, ext: &str) -> PathBuf {
    PathBuf::from(format!("{}.{ext}", meta.display()))
}

pub struct AlJournal {
    path: PathBuf,
    file: File,
    active: BTreeSet<u64>,
    lines: usize,
}

impl AlJournal {
    /// Opens the journal next to `meta`; returns it and the extents it holds.
    pub fn open(meta: &Path) -> std::io::Result<(AlJournal, Vec<u64>)> {
        let path = sibling(meta, "al");
        let mut active = BTreeSet::new();
        let mut lines = 0;
        if let Ok(text) = fs::read_to_string(&path) {
            for line in text.lines() {
                lines += 1;
                let (sign, num) = line.split_at(line.len().min(1));
                match (sign, num.trim().parse::<u64>()) {
                    ("+", Ok(e)) => {
                        active.insert(e);
                    }
                    ("-", Ok(e)) => {
                        active.remove(&e);
                    }
                    _ => {} // a torn last line
                }
            }
        } else {
            atomic_write(&path, b"")?;
        }
        let file = OpenOptions::new().append(true).mode(0o600).open(&path)?;
        let held = active.iter().copied().collect();
        Ok((AlJournal { path, file, active, lines }, held))
    }

    /// Records extents leaving, then joining; durable on return.
    pub fn apply(&mut self, remove: &[u64], add: &[u64]) -> std::io::Result<()> {
        let mut text = String::new();
        for e in remove {
            text.push_str(&format!("-{e}\n"));
        }
        for e in add {
            text.push_str(&format!("+{e}\n"));
        }
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        for e in remove {
            self.active.remove(e);
        }
        self.active.extend(add.iter().copied());
        self.lines += remove.len() + add.len();
        if self.lines > COMPACT_AFTER {
            let text: String = self.active.iter().map(|e| format!("+{e}\n")).collect();
            atomic_write(&self.path, text.as_bytes())?;
            self.file = OpenOptions::new().append(true).open(&self.path)?;
            self.lines = self.active.len();
        }
        Ok(())
    }
}

pub struct BitmapFile {
    file: File,
}

impl BitmapFile {
    /// Opens (creating) `<meta>.bitmap`; returns it and the saved words, if
    /// the file held a bitmap of `words` words.
    pub fn open(meta: &Path, words: usize) -> std::io::Result<(BitmapFile, Option<Vec<u64>>)> {
        let path = sibling(meta, "bitmap");
        let saved = fs::read(&path).ok().filter(|b| b.len() == words * 8).map(|b| {
            b.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
        });
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
        let (mut j, held) = AlJournal::open(&meta).unwrap();
        assert!(held.is_empty());
        j.apply(&[], &[1, 2, 3]).unwrap();
        j.apply(&[2], &[9]).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(dir.path().join("n.meta.al")).unwrap();
        f.write_all(b"+4").unwrap(); // torn: no newline, but parses; a torn "+" does not
        f.write_all(b"\n+").unwrap();
        let (_, held) = AlJournal::open(&meta).unwrap();
        assert_eq!(held, vec![1, 3, 4, 9]);
        let mode = fs::metadata(dir.path().join("n.meta.al")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
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
