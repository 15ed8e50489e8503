//! Requests not aligned to 4 KiB on a store opened with `direct`.
//!
//! Buffered and O_DIRECT I/O on one file do not mix safely: a direct
//! write invalidates the page cache over its range when it completes, and
//! a page that another request dirtied meanwhile (a buffered 512-byte
//! write into the same 4 KiB, a partial block zeroed by `fallocate`)
//! cannot be invalidated. The kernel then logs "Page cache invalidation
//! failure on direct I/O. Possible data corruption due to collision with
//! buffered I/O!", the page may keep older data for later buffered reads,
//! and the file's next `fdatasync` fails with EIO, so every FLUSH after it
//! fails too ([`super::syncer`]). Found by a client writing 512-byte and
//! 4 KiB blocks over the same 64 KiB at once (`serve --direct`, `fio`).
//!
//! So with `direct` no request goes through the page cache: an unaligned
//! read reads its covering aligned range; an unaligned write reads the
//! partial 4 KiB blocks at its ends, patches them and writes the covering
//! range back (read-modify-write); a zeroing or trim does the same for its
//! partial blocks and leaves the aligned middle to `fallocate`. The
//! read-modify-writes run alone, because two writes to different sectors
//! of one 4 KiB block must both land, and an aligned write in flight
//! beside one would be undone in the block they share (the
//! read-modify-write read the block before it landed; found by review):
//! aligned direct writes take the lock's shared side. Overlapping
//! requests then end in one order or the other. A range whose covering blocks would
//! reach past the end of the file (a file whose size is not a multiple of
//! 4 KiB) keeps the buffered path: a direct write there would grow it.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use bytes::Bytes;

use super::aligned::{AlignedBuf, ALIGN};
use super::op::{Op, ReadBuf, WriteData};
use super::Store;

/// What a read-modify-write puts in its range.
#[derive(Clone, Copy)]
pub(super) enum Patch<'a> {
    Data(&'a [u8]),
    Zeroes,
}

impl Patch<'_> {
    fn fill(self, dst: &mut [u8]) {
        match self {
            Patch::Data(d) => dst.copy_from_slice(d),
            Patch::Zeroes => dst.fill(0),
        }
    }
}

/// `[off, off + len)` widened to whole 4 KiB blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cover {
    pub fd: RawFd,
    pub off: u64,
    pub len: u64,
    pub start: u64,
    pub end: u64,
}

impl Store {
    /// The covering blocks of a request the direct descriptor serves
    /// unaligned: `None` without `direct`, for an empty range, or when the
    /// blocks would reach past the end of the file.
    pub(super) fn direct_cover(&self, off: u64, len: u64) -> Option<Cover> {
        let fd = self.direct.as_ref()?.as_raw_fd();
        let a = ALIGN as u64;
        let end = off.checked_add(len).filter(|_| len > 0)?;
        let (start, cover_end) = (off - off % a, end.checked_next_multiple_of(a)?);
        (cover_end <= self.size).then_some(Cover { fd, off, len, start, end: cover_end })
    }

    /// Reads an unaligned range through the direct descriptor.
    pub(super) async fn read_cover(&self, c: Cover) -> io::Result<Bytes> {
        let buf = ReadBuf::Aligned(AlignedBuf::new((c.end - c.start) as usize));
        let data =
            self.run(Op::Read { fd: c.fd, off: c.start, buf, done: 0 }).await?.into_data()?;
        let at = (c.off - c.start) as usize;
        Ok(data.slice(at..at + c.len as usize))
    }

    /// Puts `patch` over `[c.off, c.off + c.len)` by a read-modify-write of
    /// the covering blocks, one at a time; with `fua` durable on return.
    pub(super) async fn patch(&self, c: Cover, patch: Patch<'_>, fua: bool) -> io::Result<()> {
        let _alone = self.rmw.write().await;
        let a = ALIGN as u64;
        let mut buf = AlignedBuf::zeroed((c.end - c.start) as usize);
        let (head, tail) = (c.off > c.start, c.off + c.len < c.end);
        if head {
            self.read_block(c.fd, c.start, &mut buf.as_mut_slice()[..ALIGN]).await?;
        }
        // (The tail block is the head block when the range lies inside one.)
        if tail && !(head && c.end - a == c.start) {
            let at = (c.end - a - c.start) as usize;
            self.read_block(c.fd, c.end - a, &mut buf.as_mut_slice()[at..]).await?;
        }
        let at = (c.off - c.start) as usize;
        patch.fill(&mut buf.as_mut_slice()[at..at + c.len as usize]);
        let data = WriteData::Aligned(buf);
        self.run(Op::Write { fd: c.fd, off: c.start, data, done: 0, fua }).await.map(drop)
    }

    async fn read_block(&self, fd: RawFd, off: u64, into: &mut [u8]) -> io::Result<()> {
        let buf = ReadBuf::Aligned(AlignedBuf::new(ALIGN));
        let data = self.run(Op::Read { fd, off, buf, done: 0 }).await?.into_data()?;
        into.copy_from_slice(&data);
        Ok(())
    }

    /// The partial blocks at the ends of a zeroing or trim of `[off, off +
    /// len)` on a direct store, zeroed by read-modify-write (unless
    /// `hint_only`: a trim that may leave them as they are); returns the
    /// aligned middle left for `fallocate` (possibly empty). `None`: not a
    /// direct store, or the range ends in a partial block at the end of the
    /// file (the whole range takes the buffered path).
    pub(super) async fn zero_ends(
        &self,
        off: u64,
        len: u64,
        hint_only: bool,
    ) -> Option<io::Result<(u64, u64)>> {
        let c = self.direct_cover(off, len)?;
        let a = ALIGN as u64;
        let end = off + len;
        let mid_start = off.next_multiple_of(a).min(end);
        let mid_end = (end - end % a).max(mid_start);
        let ends = [(off, mid_start - off), (mid_end, end - mid_end)];
        for (at, n) in ends.into_iter().filter(|&(_, n)| n > 0 && !hint_only) {
            let part = Cover {
                fd: c.fd,
                off: at,
                len: n,
                start: at - at % a,
                end: (at + n).next_multiple_of(a),
            };
            if let Err(e) = self.patch(part, Patch::Zeroes, false).await {
                return Some(Err(e));
            }
        }
        Some(Ok((mid_start, mid_end - mid_start)))
    }
}
