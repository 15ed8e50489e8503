//! One store operation, described independently of the backend that runs it.
//! The op owns its buffer until it completes (io_uring needs that).

use std::io;
use std::os::fd::RawFd;

use bytes::{Bytes, BytesMut};

use super::aligned::AlignedBuf;
use super::sys;

/// Where a read lands.
pub(crate) enum ReadBuf {
    /// Heap buffer with `len` bytes of capacity, filled by the kernel.
    Heap(BytesMut, usize),
    /// Page-aligned buffer (O_DIRECT).
    Aligned(AlignedBuf),
}

impl ReadBuf {
    pub fn heap(len: usize) -> Self {
        ReadBuf::Heap(BytesMut::with_capacity(len), len)
    }

    pub fn len(&self) -> usize {
        match self {
            ReadBuf::Heap(_, len) => *len,
            ReadBuf::Aligned(a) => a.len(),
        }
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        match self {
            ReadBuf::Heap(b, _) => b.as_mut_ptr(),
            ReadBuf::Aligned(a) => a.as_mut_ptr(),
        }
    }

    /// # Safety
    /// All `len()` bytes must have been written.
    pub unsafe fn into_bytes(self) -> Bytes {
        match self {
            ReadBuf::Heap(mut b, len) => {
                b.set_len(len);
                b.freeze()
            }
            ReadBuf::Aligned(a) => Bytes::from_owner(a),
        }
    }
}

/// What a write sends.
pub(crate) enum WriteData {
    Shared(Bytes),
    Aligned(AlignedBuf),
}

impl WriteData {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            WriteData::Shared(b) => b,
            WriteData::Aligned(a) => a.as_ref(),
        }
    }
}

pub(crate) enum Op {
    Read { fd: RawFd, off: u64, buf: ReadBuf, done: usize },
    Write { fd: RawFd, off: u64, data: WriteData, done: usize, fua: bool },
    Fallocate { fd: RawFd, off: u64, len: u64, mode: i32 },
}

/// The result of a completed op.
pub(crate) enum Done {
    Data(Bytes),
    Unit,
}

impl Done {
    pub fn into_data(self) -> io::Result<Bytes> {
        match self {
            Done::Data(b) => Ok(b),
            Done::Unit => Err(io::Error::other("store returned no data for a read")),
        }
    }
}

impl Op {
    /// Runs the op with blocking syscalls (thread-pool backend).
    pub fn run_blocking(self) -> io::Result<Done> {
        match self {
            Op::Read { fd, off, mut buf, done } => {
                let len = buf.len();
                // SAFETY: the buffer has `len` bytes of capacity, the first
                // `done` already filled; pread_full writes the rest (or
                // fails).
                unsafe {
                    sys::pread_full(fd, buf.as_mut_ptr().add(done), len - done, off + done as u64)?;
                    Ok(Done::Data(buf.into_bytes()))
                }
            }
            Op::Write { fd, off, data, fua, .. } => {
                sys::pwrite_full(fd, data.as_slice(), off, fua).map(|_| Done::Unit)
            }
            Op::Fallocate { fd, off, len, mode } => {
                sys::fallocate(fd, mode, off, len).map(|_| Done::Unit)
            }
        }
    }
}
