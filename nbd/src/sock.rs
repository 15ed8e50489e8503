//! The few socket calls std does not offer: TCP keepalive tuning,
//! `TCP_USER_TIMEOUT`, a non-blocking vectored send on a blocking socket, and
//! a read into a `BytesMut`'s spare capacity.

use std::io::{self, IoSlice};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::Duration;

use bytes::BytesMut;

fn setsockopt(
    s: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid fd and a pointer to a c_int of the size passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// So that a vanished client is noticed within about `timeout`: keepalive
/// probes when idle (first after half of it, three in all) and
/// `TCP_USER_TIMEOUT` for data the client never acknowledges (which on Linux
/// also ends a zero window that never opens).
pub fn set_liveness(s: &TcpStream, timeout: Duration) -> io::Result<()> {
    let secs = timeout.as_secs().clamp(3, i32::MAX as u64 / 1000) as libc::c_int;
    setsockopt(s, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    setsockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, (secs / 2).max(1))?;
    setsockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, (secs / 6).max(1))?;
    setsockopt(s, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3)?;
    setsockopt(s, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, secs * 1000)?;
    Ok(())
}

/// `sendmsg` of `slices`; `wait == false` never blocks (MSG_DONTWAIT), even
/// on a blocking socket. Never raises SIGPIPE.
pub fn send_vectored(s: &TcpStream, slices: &[IoSlice<'_>], wait: bool) -> io::Result<usize> {
    // SAFETY: msghdr is plain old data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on unix.
    msg.msg_iov = slices.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = slices.len().min(libc::UIO_MAXIOV as usize) as _;
    let mut flags = libc::MSG_NOSIGNAL;
    if !wait {
        flags |= libc::MSG_DONTWAIT;
    }
    loop {
        // SAFETY: msg points at `slices`, valid for the call.
        let n = unsafe { libc::sendmsg(s.as_raw_fd(), &msg, flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One blocking `read` of at most `max` bytes into the spare capacity of
/// `buf`. Ok(0) is end of file.
pub fn read_into(s: &TcpStream, buf: &mut BytesMut, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let spare = &mut buf.spare_capacity_mut()[..max];
    loop {
        // SAFETY: reading at most spare.len() bytes into memory we own.
        let n = unsafe {
            libc::read(s.as_raw_fd(), spare.as_mut_ptr() as *mut libc::c_void, spare.len())
        };
        if n >= 0 {
            // SAFETY: the kernel initialised the first n bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n as usize) };
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Like [`read_into`], but waits at most `limit` for data (then
/// `TimedOut`): a read inside a request, whose client must not stall
/// half way. Data already there is taken at once (one `recv`); only an
/// empty socket adds a `poll` with the limit. A read between requests
/// stays a plain blocking `read` with no timeout at all: a socket
/// timeout there arms a kernel timer at every wait (4k QD1 writes 0.87x
/// nbdkit, median of six runs, against 0.92x without; within the noise
/// of this machine), and switching the timeout on and off around reads
/// costs two `setsockopt` calls per read at depth.
pub fn read_within(
    s: &TcpStream,
    buf: &mut BytesMut,
    max: usize,
    limit: Duration,
) -> io::Result<usize> {
    let fd = s.as_raw_fd();
    buf.reserve(max);
    let deadline = std::time::Instant::now() + limit;
    loop {
        let spare = &mut buf.spare_capacity_mut()[..max];
        // SAFETY: receiving at most spare.len() bytes into memory we own.
        let n = unsafe {
            libc::recv(fd, spare.as_mut_ptr() as *mut libc::c_void, spare.len(), libc::MSG_DONTWAIT)
        };
        if n >= 0 {
            // SAFETY: the kernel initialised the first n bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n as usize) };
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {}
            _ => return Err(e),
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, valid for the call.
        if unsafe { libc::poll(&mut p, 1, ms) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}
