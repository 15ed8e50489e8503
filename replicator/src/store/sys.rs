//! Thin, synchronous wrappers over the syscalls the store needs. Used by the
//! thread-pool backend for everything and by both backends for the cheap
//! metadata calls (lseek, fadvise).

use std::io;
use std::os::fd::RawFd;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The file ended at `off`, inside the device (callers never read past
/// the device's end): it was truncated under the node (or its device
/// shrank). Its data is gone there, so the read fails (EIO) instead of
/// reading zeroes a resync would then carry over the peer's copy (found
/// by review: `truncate` of a running node's disk file, then a resync).
pub fn past_eof(off: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("the disk ends at byte {off}, inside the device: was it truncated?"),
    )
}

/// Reads exactly `len` bytes at `off` into `ptr` (a sparse file's holes
/// read as zeroes); the end of the file before `len` bytes fails
/// ([`past_eof`]).
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
pub unsafe fn pread_full(fd: RawFd, ptr: *mut u8, len: usize, off: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < len {
        let n =
            libc::pread(fd, ptr.add(done).cast(), len - done, (off + done as u64) as libc::off_t);
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(past_eof(off + done as u64));
        }
        done += n as usize;
    }
    Ok(())
}

/// Reads as much of `[off, off+len)` into `ptr` as the page cache holds
/// right now, without waiting for the device (`RWF_NOWAIT`): the count of
/// bytes read, a prefix of the range, 0 when its first page is not cached.
/// Stops early at the end of the file and at any error; the caller reads
/// the rest the ordinary way (which waits and reports errors).
/// `Err` only when the kernel does not know `RWF_NOWAIT`.
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes.
pub unsafe fn pread_cached(fd: RawFd, ptr: *mut u8, len: usize, off: u64) -> io::Result<usize> {
    let mut done = 0usize;
    while done < len {
        let iov = libc::iovec { iov_base: ptr.add(done).cast(), iov_len: len - done };
        let pos = (off + done as u64) as libc::off_t;
        let n = libc::preadv2(fd, &iov, 1, pos, libc::RWF_NOWAIT);
        if n > 0 {
            done += n as usize;
            continue;
        }
        if n == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // Unknown flag, or a file without non-blocking reads.
            Some(libc::EOPNOTSUPP) if done == 0 => return Err(e),
            _ => break,
        }
    }
    Ok(done)
}

/// Writes all of `data` at `off`; with `fua` the data is durable on return
/// (RWF_DSYNC, or write + fdatasync where the kernel lacks it).
pub fn pwrite_full(fd: RawFd, data: &[u8], off: u64, fua: bool) -> io::Result<()> {
    let mut done = 0usize;
    let mut dsync = fua;
    while done < data.len() {
        let rest = &data[done..];
        let pos = (off + done as u64) as libc::off_t;
        let n = if dsync {
            let iov = libc::iovec { iov_base: rest.as_ptr() as *mut _, iov_len: rest.len() };
            // SAFETY: iov points into `data`, alive for the call.
            unsafe { libc::pwritev2(fd, &iov, 1, pos, libc::RWF_DSYNC) }
        } else {
            // SAFETY: as above.
            unsafe { libc::pwrite(fd, rest.as_ptr().cast(), rest.len(), pos) }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) if dsync => {
                    dsync = false;
                    continue;
                }
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n as usize;
    }
    if fua && !dsync {
        fdatasync(fd)?;
    }
    Ok(())
}

pub fn fdatasync(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    cvt(unsafe { libc::fdatasync(fd) }).map(drop)
}

pub fn fallocate(fd: RawFd, mode: i32, off: u64, len: u64) -> io::Result<()> {
    loop {
        // SAFETY: plain syscall.
        let r = unsafe { libc::fallocate(fd, mode, off as libc::off_t, len as libc::off_t) };
        match cvt(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
        }
    }
}

pub fn fadvise_willneed(fd: RawFd, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall.
    let r = unsafe {
        libc::posix_fadvise(fd, off as libc::off_t, len as libc::off_t, libc::POSIX_FADV_WILLNEED)
    };
    if r != 0 {
        return Err(io::Error::from_raw_os_error(r));
    }
    Ok(())
}

fn seek(fd: RawFd, off: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: plain syscall; lseek on a shared fd only moves the file
    // position, which positional I/O never uses.
    let r = unsafe { libc::lseek(fd, off as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// The most runs [`extents`] returns for one call: a badly fragmented
/// range would otherwise cost two lseeks per run and a reply of unbounded
/// size. NBD lets a BLOCK_STATUS reply describe less than was asked for;
/// the client asks again from where it stops.
pub const MAX_EXTENT_RUNS: usize = 1024;

/// Allocation map of `[off, off+len)` as (length, is_hole) runs, from
/// SEEK_DATA/SEEK_HOLE; at most [`MAX_EXTENT_RUNS`] of them, so they may
/// cover only a prefix of the range. Where the file system cannot tell,
/// all is data.
///
/// A regular file that ends inside the range (truncated under the node)
/// is mapped up to its end only, and a range that starts at or past its
/// end fails ([`past_eof`]), as reads there do: SEEK_DATA finds no data
/// past the end, and that range was mapped as a hole reading as zeroes,
/// so a client copying the device (nbdcopy) skipped it and wrote zeroes
/// where the lost data had been, and succeeded.
pub fn extents(fd: RawFd, off: u64, len: u64) -> io::Result<Vec<(u64, bool)>> {
    let mut end = off + len;
    if let Some(eof) = regular_file_len(fd)?.filter(|&eof| eof < end) {
        if off >= eof {
            return Err(past_eof(eof));
        }
        end = eof;
    }
    let mut out = Vec::new();
    let mut pos = off;
    while pos < end && out.len() < MAX_EXTENT_RUNS {
        let data = match seek(fd, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                out.push((end - pos, false));
                break;
            }
            Err(e) => return Err(e),
        };
        let data = data.unwrap_or(end).min(end);
        if data > pos {
            out.push((data - pos, true));
            pos = data;
            continue;
        }
        let hole = seek(fd, pos, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let hole = hole.max(pos + 1);
        out.push((hole - pos, false));
        pos = hole;
    }
    Ok(out)
}

/// Whether `[off, off+len)` of the regular file behind `fd` is all hole
/// (no data at or after `off` before `off+len`, by `SEEK_DATA`, which
/// counts data still in the page cache): it reads as zeroes. False where
/// that cannot be told (not a regular file, a file system without
/// `SEEK_DATA`: the generic one calls the whole file data), and past the
/// file's end.
pub fn is_hole(fd: RawFd, off: u64, len: u64) -> io::Result<bool> {
    // (Past the file's end, a file truncated under us, it reads nothing:
    // not a hole, or the resync would send zeroes over the peer's copy.)
    match regular_file_len(fd)? {
        Some(eof) if len > 0 && off.checked_add(len).is_some_and(|end| end <= eof) => {}
        _ => return Ok(false),
    }
    match seek(fd, off, libc::SEEK_DATA) {
        // No data from `off` on: a hole to the end, or a file truncated
        // since the look above (then not a hole: review, helper-143).
        Ok(None) => Ok(regular_file_len(fd)?.is_some_and(|eof| off + len <= eof)),
        Ok(Some(data)) => Ok(data >= off.saturating_add(len)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the file system of `fd` is one whose `SEEK_DATA` is known to
/// see data still in the page cache: ext4, XFS, btrfs, tmpfs. Elsewhere a
/// hole might be reported over data not yet written back (a FUSE file
/// system with a writeback cache asks its server, which has not seen it;
/// OpenZFS before 2.2.2, openzfs/zfs#15526), and the resync would send
/// zeroes over the peer's copy: chunks are read there (review, helper-143).
pub fn seek_data_trusted(fd: RawFd) -> bool {
    const TRUSTED: [i64; 4] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // XFS
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
    ];
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs fills `st` on success.
    if unsafe { libc::fstatfs(fd, st.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: fstatfs succeeded.
    let st = unsafe { st.assume_init() };
    #[allow(clippy::unnecessary_cast)] // (its type differs by platform)
    let kind = st.f_type as i64;
    TRUSTED.contains(&kind)
}

/// The length of the file behind `fd` now, if it is a regular file.
fn regular_file_len(fd: RawFd) -> io::Result<Option<u64>> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat fills `st` on success.
    cvt(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    let st = unsafe { st.assume_init() };
    Ok(((st.st_mode & libc::S_IFMT) == libc::S_IFREG).then_some(st.st_size as u64))
}

/// Size of a regular file or a block device.
pub fn size_of(file: &std::fs::File) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
        const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
        // SAFETY: the ioctl writes one u64 into `size`.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) })?;
        return Ok(size);
    }
    Ok(meta.len())
}
