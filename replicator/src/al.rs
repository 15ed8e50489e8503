//! The activity log: the set of hot 4 MiB extents that may hold writes in
//! flight. An extent joins the log (on disk) before the first write to it
//! lands; while it stays hot, writes cost no metadata I/O. After a crash
//! every extent in the log is treated as out of sync, so only those extents
//! are resynced, not the disk. An extent leaves the log (least recently used
//! first) only after the out-of-sync bitmap has been written, so the bitmap
//! on disk plus the log always cover every unsynced block.
//!
//! Files: `<meta>.al` (the extents, one per line) and `<meta>.bitmap` (the
//! bitmap's words), both replaced atomically.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::bitmap::Bitmap;

pub const EXTENT: u64 = 4 << 20;

/// Journal entries after which the log file is rewritten compactly.
const COMPACT_AFTER: usize = 16 * 1024;

pub struct ActivityLog {
    /// Active extent -> last use (a counter): least recently used leaves first.
    active: HashMap<u64, u64>,
    clock: u64,
    capacity: usize,
    path: PathBuf,
    bitmap_path: PathBuf,
    /// Append-only journal of `+E` / `-E` lines; one fdatasync per change.
    journal: File,
    entries: usize,
}

fn atomic_write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp-al");
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

impl ActivityLog {
    /// Opens the log next to `meta`, adding to `dirty` the bitmap saved on
    /// disk and every extent the log held (a crash may have left writes in
    /// flight there). Returns the log, emptied, and how many extents were
    /// recovered.
    pub fn open(
        meta: &Path,
        capacity: usize,
        dirty: &mut Bitmap,
    ) -> std::io::Result<(ActivityLog, usize)> {
        let path = PathBuf::from(format!("{}.al", meta.display()));
        let bitmap_path = PathBuf::from(format!("{}.bitmap", meta.display()));
        if let Ok(bytes) = fs::read(&bitmap_path) {
            dirty.merge_bytes(&bytes);
        }
        let mut held = std::collections::BTreeSet::new();
        if let Ok(text) = fs::read_to_string(&path) {
            for line in text.lines() {
                let (sign, num) = line.split_at(line.len().min(1));
                match (sign, num.trim().parse::<u64>()) {
                    ("+", Ok(e)) => {
                        held.insert(e);
                    }
                    ("-", Ok(e)) => {
                        held.remove(&e);
                    }
                    _ => {} // a torn last line: the extent was not yet active
                }
            }
        }
        for e in &held {
            dirty.mark(e * EXTENT, EXTENT);
        }
        let bitmap = |dirty: &Bitmap| atomic_write(&bitmap_path, &dirty.to_bytes());
        if !held.is_empty() {
            // Keep the recovered bits safe before the log forgets them.
            bitmap(dirty)?;
        }
        atomic_write(&path, b"")?;
        let journal = OpenOptions::new().append(true).open(&path)?;
        let al = ActivityLog {
            active: HashMap::new(),
            clock: 0,
            capacity: capacity.max(1),
            path,
            bitmap_path,
            journal,
            entries: 0,
        };
        Ok((al, held.len()))
    }

    pub fn save_bitmap(&self, dirty: &Bitmap) -> std::io::Result<()> {
        atomic_write(&self.bitmap_path, &dirty.to_bytes())
    }

    /// Makes the extents of `[offset, offset+len)` active before a write.
    /// No I/O when they already are (the common case); otherwise the bitmap
    /// is saved if an extent must leave, then one journal append + sync.
    pub fn touch(&mut self, offset: u64, len: u64, dirty: &Bitmap) -> std::io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (first, last) = (offset / EXTENT, (offset + len - 1) / EXTENT);
        let mut record = String::new();
        let mut evicted = false;
        for e in first..=last {
            self.clock += 1;
            if let Some(t) = self.active.get_mut(&e) {
                *t = self.clock;
                continue;
            }
            if self.active.len() >= self.capacity {
                let (&old, _) = self.active.iter().min_by_key(|(_, &t)| t).expect("log is full");
                self.active.remove(&old);
                record.push_str(&format!("-{old}\n"));
                evicted = true;
            }
            self.active.insert(e, self.clock);
            record.push_str(&format!("+{e}\n"));
        }
        if record.is_empty() {
            return Ok(());
        }
        if evicted {
            self.save_bitmap(dirty)?;
        }
        self.journal.write_all(record.as_bytes())?;
        self.journal.sync_data()?;
        self.entries += record.lines().count();
        if self.entries > COMPACT_AFTER {
            let text: String = self.active.keys().map(|e| format!("+{e}\n")).collect();
            atomic_write(&self.path, text.as_bytes())?;
            self.journal = OpenOptions::new().append(true).open(&self.path)?;
            self.entries = self.active.len();
        }
        Ok(())
    }

    /// Empties the log, the bitmap first. Only when nothing is in flight:
    /// every write is then either applied on both nodes or marked in the
    /// bitmap, so a crash needs no extent of the log.
    pub fn trim(&mut self, dirty: &Bitmap) -> std::io::Result<()> {
        if self.active.is_empty() {
            return Ok(());
        }
        self.save_bitmap(dirty)?;
        self.active.clear();
        atomic_write(&self.path, b"")?;
        self.journal = OpenOptions::new().append(true).open(&self.path)?;
        self.entries = 0;
        Ok(())
    }

    /// Clean shutdown: the bitmap on disk, the log empty.
    pub fn close(&mut self, dirty: &Bitmap) -> std::io::Result<()> {
        self.save_bitmap(dirty)?;
        self.active.clear();
        atomic_write(&self.path, b"")
    }

    pub fn active(&self) -> usize {
        self.active.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_leaves_the_hot_extents_out_of_sync_and_a_clean_stop_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let size = 64 * EXTENT;
        let mut dirty = Bitmap::new(size);
        let (mut al, rec) = ActivityLog::open(&meta, 4, &mut dirty).unwrap();
        assert_eq!(rec, 0);
        al.touch(0, 4096, &dirty).unwrap();
        al.touch(EXTENT * 10 - 1, 2, &dirty).unwrap(); // spans extents 9 and 10
        assert_eq!(al.active(), 3);
        // A bit set while apart, in an extent that stays hot.
        dirty.mark(EXTENT * 10, 4096);
        drop(al); // crash: no close

        let mut after = Bitmap::new(size);
        let (_, rec) = ActivityLog::open(&meta, 4, &mut after).unwrap();
        assert_eq!(rec, 3);
        assert_eq!(after.bytes(), 3 * EXTENT, "exactly the three hot extents");

        // Clean stop: only the bitmap's own bits survive.
        let mut dirty = Bitmap::new(size);
        dirty.mark(5 * 4096, 4096);
        let (mut al, _) = ActivityLog::open(&meta, 4, &mut Bitmap::new(size)).unwrap();
        al.touch(0, 4096, &dirty).unwrap();
        al.close(&dirty).unwrap();
        let mut again = Bitmap::new(size);
        let (_, rec) = ActivityLog::open(&meta, 4, &mut again).unwrap();
        assert_eq!(rec, 0);
        assert_eq!(again.bytes(), 4096);
        assert!(again.is_set(5));
    }

    #[test]
    fn an_extent_leaves_the_log_only_after_the_bitmap_is_saved() {
        let dir = tempfile::tempdir().unwrap();
        let meta = dir.path().join("n.meta");
        let size = 64 * EXTENT;
        let mut dirty = Bitmap::new(size);
        let (mut al, _) = ActivityLog::open(&meta, 2, &mut dirty).unwrap();
        al.touch(0, 4096, &dirty).unwrap();
        dirty.mark(100, 1); // a write to extent 0 while apart
        al.touch(EXTENT, 4096, &dirty).unwrap();
        al.touch(2 * EXTENT, 4096, &dirty).unwrap(); // evicts extent 0
        drop(al); // crash
        let mut after = Bitmap::new(size);
        ActivityLog::open(&meta, 2, &mut after).unwrap();
        assert!(after.is_set(0), "extent 0's bit was saved when it left the log");
        // Extents 1 and 2 from the log, plus block 0 from the saved bitmap.
        assert_eq!(after.bytes(), 2 * EXTENT + 4096);
    }
}
