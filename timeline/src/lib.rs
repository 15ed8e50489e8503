//! Where a write's time goes, stage by stage, across threads and processes.
//!
//! With `TWINBLOCK_TIMELINE=DIR` in its environment, a process records a
//! mark each time a write passes a [`Point`] (an NBD request read, the
//! frame handed to the link, the datagrams sent, the peer's
//! acknowledgement decoded, ...): the point, a key that names the write at
//! that point (its sequence number, request number or a byte count) and the
//! time on the machine's monotonic clock, which every process on the host
//! shares. A thread of the process appends what was recorded to
//! `DIR/NAME.timeline` four times a second; `scripts/timeline.py` joins
//! the files of a loopback pair and its relay into per-stage latencies
//! (`scripts/bench-timeline.sh` runs the whole measurement).
//!
//! Off (the variable unset), a mark is one atomic load. On, it is a
//! clock read and three atomic stores into a buffer allocated at start
//! ([`CAPACITY`] marks, 32 MiB); marks beyond it are dropped, and said so.
//!
//! The file holds 16-byte records, little endian: the time in
//! nanoseconds, then the point in the top byte and the key in the low 56
//! bits of the second word.

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Marks one process may record.
pub const CAPACITY: usize = 2 << 20;

/// How often the recorded marks are appended to the file.
const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// Where a write is when it is marked. The numbers are the file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Point {
    /// The NBD connection's read returned (key: bytes read).
    NbdRead = 20,
    /// The node admitted an application request (key: request number).
    Admitted = 1,
    /// The node answered it (key: request number).
    Answered = 9,
    /// A replicated operation's frame made by the core (key: sequence).
    Frame = 2,
    /// The frame handed to the link's writer (key: sequence).
    Handed = 3,
    /// The link's writer took the frame (key: sequence).
    WriterTook = 10,
    /// An acknowledgement handed to the link's writer (key: ops done).
    AckHanded = 6,
    /// The link's writer took the acknowledgement (key: ops done).
    AckWriterTook = 11,
    /// The link's UDP send (key: bytes).
    UdpSend = 30,
    /// The link's UDP receive (key: bytes).
    UdpRecv = 31,
    /// The peer's frame decoded by the link's reader (key: sequence).
    FrameDecoded = 5,
    /// The peer's acknowledgement decoded by the link's reader (key: ops done).
    AckDecoded = 8,
    /// The relay read a batch from its client (key: bytes).
    RelayInForward = 40,
    /// The relay sent a batch on to its target (key: bytes).
    RelayOutForward = 41,
    /// The relay read a batch from its target (key: bytes).
    RelayInBack = 42,
    /// The relay sent a batch back to its client (key: bytes).
    RelayOutBack = 43,
}

const KEY_BITS: u32 = 56;
const KEY_MASK: u64 = (1 << KEY_BITS) - 1;

static ON: AtomicBool = AtomicBool::new(false);
static NEXT: AtomicUsize = AtomicUsize::new(0);
/// Two words per mark: the time (0 until the mark is complete) and
/// point + key.
static MARKS: OnceLock<Box<[AtomicU64]>> = OnceLock::new();

/// Starts recording if `TWINBLOCK_TIMELINE` names a directory: this
/// process's marks go to `DIR/NAME.timeline` (replaced). Once per process;
/// the error says what could not be set up (recording stays off).
pub fn start(name: &str) -> Result<Option<PathBuf>, String> {
    let Some(dir) = std::env::var_os("TWINBLOCK_TIMELINE") else { return Ok(None) };
    start_in(PathBuf::from(dir).join(format!("{name}.timeline")))
}

fn start_in(path: PathBuf) -> Result<Option<PathBuf>, String> {
    if MARKS.get().is_some() {
        return Err("timeline: already recording".into());
    }
    let file = std::fs::File::create(&path)
        .map_err(|e| format!("timeline: cannot create {}: {e}", path.display()))?;
    let marks: Box<[AtomicU64]> = (0..2 * CAPACITY).map(|_| AtomicU64::new(0)).collect();
    if MARKS.set(marks).is_err() {
        return Err("timeline: already recording".into());
    }
    std::thread::Builder::new()
        .name("timeline".into())
        .spawn(move || flush_loop(file))
        .map_err(|e| format!("timeline: {e}"))?;
    ON.store(true, Ordering::Release);
    Ok(Some(path))
}

/// Records that a write passed `point` now, with a key that costs
/// something to compute: `key` is called only while recording.
#[inline]
pub fn mark_with(point: Point, key: impl FnOnce() -> u64) {
    if ON.load(Ordering::Acquire) {
        record(point, key(), now_ns());
    }
}

/// Records that a write passed `point` now.
#[inline]
pub fn mark(point: Point, key: u64) {
    // Acquire: a mark that sees recording on sees its buffer (on x86 a
    // plain load, as Relaxed).
    if !ON.load(Ordering::Acquire) {
        return;
    }
    record(point, key, now_ns());
}

#[cold]
fn record(point: Point, key: u64, t: u64) {
    // The buffer first: a slot claimed is always written (the flusher
    // waits at the first one that is not).
    let Some(marks) = MARKS.get() else { return };
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    if i >= CAPACITY {
        return;
    }
    marks[2 * i + 1].store(((point as u64) << KEY_BITS) | (key & KEY_MASK), Ordering::Relaxed);
    // Last, and never 0: the flusher stops at a mark without its time.
    marks[2 * i].store(t.max(1), Ordering::Release);
}

/// The monotonic clock, in nanoseconds: the one `Instant` reads, shared by
/// every process of the host.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Appends every complete mark, in order, until the buffer is full and
/// written.
fn flush_loop(mut file: std::fs::File) {
    let Some(marks) = MARKS.get() else { return };
    let mut done = 0;
    let mut out = Vec::new();
    loop {
        std::thread::sleep(FLUSH_EVERY);
        out.clear();
        while done < CAPACITY {
            let t = marks[2 * done].load(Ordering::Acquire);
            if t == 0 {
                break;
            }
            out.extend_from_slice(&t.to_le_bytes());
            out.extend_from_slice(&marks[2 * done + 1].load(Ordering::Relaxed).to_le_bytes());
            done += 1;
        }
        if !out.is_empty() {
            if let Err(e) = file.write_all(&out) {
                eprintln!("timeline: {e}; recording stopped");
                ON.store(false, Ordering::Relaxed);
                return;
            }
        }
        if done == CAPACITY {
            eprintln!("timeline: {CAPACITY} marks recorded, the buffer is full: recording stopped");
            ON.store(false, Ordering::Relaxed);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Off, nothing is kept; on, marks from several threads reach the file
    /// whole, each with its point and key, in time order per thread.
    #[test]
    fn marks_from_every_thread_reach_the_file() {
        mark(Point::Admitted, 99);
        assert_eq!(NEXT.load(Ordering::Relaxed), 0, "recorded while off");
        let dir = tempfile::tempdir().unwrap();
        let path = start_in(dir.path().join("t.timeline")).unwrap().unwrap();
        assert!(start_in(dir.path().join("u.timeline")).is_err(), "a second start");
        assert!(!dir.path().join("u.timeline").exists(), "a second start created a file");
        let threads: Vec<_> = (0..4u64)
            .map(|th| {
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        mark(Point::Frame, th << 32 | i);
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        mark(Point::UdpSend, KEY_MASK + 5); // a key over 56 bits keeps its low bits
        std::thread::sleep(FLUSH_EVERY * 3);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4001 * 16);
        let recs: Vec<(u64, u8, u64)> = bytes
            .chunks(16)
            .map(|c| {
                let t = u64::from_le_bytes(c[..8].try_into().unwrap());
                let pk = u64::from_le_bytes(c[8..].try_into().unwrap());
                (t, (pk >> KEY_BITS) as u8, pk & KEY_MASK)
            })
            .collect();
        for th in 0..4u64 {
            let mine: Vec<_> = recs.iter().filter(|r| r.2 >> 32 == th && r.1 == 2).collect();
            assert_eq!(mine.len(), 1000);
            assert!(mine.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].2 + 1 == w[1].2));
        }
        assert_eq!(recs.last().map(|r| (r.1, r.2)), Some((30, 4)));
    }
}
