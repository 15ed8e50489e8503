//! Datagrams in batches, as the kernel's UDP offloads carry them: a read
//! with receive offload (`UDP_GRO`) returns the datagrams a sender passed
//! in one segmented send (`UDP_SEGMENT`), back to back, each `seg` bytes
//! but the last; a segmented send hands such a batch back in one call.
//!
//! The replication link sends in such batches (seven jumbo datagrams per
//! send). A relay that read and wrote them one by one spent a system call
//! and a wake-up per datagram, on the cores the nodes it sits between
//! share, and delivered them to the receiving node one by one, where a
//! network card's receive offload would have coalesced them.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The kernel takes at most this many segments in one send.
const MAX_SEGMENTS: usize = 64;

/// Datagrams received together: `len` bytes of the buffer, each datagram
/// `seg` bytes but the last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batch {
    pub len: usize,
    pub seg: usize,
    pub from: SocketAddr,
    /// When the kernel received it (`SO_TIMESTAMPNS`, the real-time clock),
    /// where the socket asked for it ([`enable_receive_timestamps`]).
    pub stamp: Option<Duration>,
}

impl Batch {
    /// The datagrams of `data` (this batch's bytes) one by one; an empty
    /// datagram is one too.
    pub fn datagrams<'a>(&self, data: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
        let empty = (self.len == 0).then_some(&data[..0]);
        data[..self.len].chunks(self.seg.max(1)).chain(empty)
    }

    /// How long before its read (at `read`, the real-time clock) the kernel
    /// had it; none without a timestamp, or for one from the future or more
    /// than [`MAX_QUEUED`] back (a step of the clock, not a wait).
    pub fn queued(&self, read: SystemTime) -> Option<Duration> {
        self.stamp
            .and_then(|at| read.duration_since(UNIX_EPOCH).ok()?.checked_sub(at))
            .filter(|d| *d <= MAX_QUEUED)
    }
}

/// A receive timestamp further back than this is taken for a step of the
/// real-time clock, and ignored.
pub const MAX_QUEUED: Duration = Duration::from_secs(1);

/// Asks the kernel to stamp each datagram with its time of arrival (read
/// by [`recv`] into [`Batch::stamp`]): a relay woken late by the scheduler
/// then holds it for the delay from its arrival, not from its read.
pub fn enable_receive_timestamps(sock: &UdpSocket) -> io::Result<()> {
    turn_on(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS)
}

/// Asks the kernel to hand this socket's datagrams over in batches. Where
/// it cannot, reads return one datagram each, which [`recv`] handles too.
pub fn enable_receive_offload(sock: &UdpSocket) -> io::Result<()> {
    turn_on(sock, libc::SOL_UDP, libc::UDP_GRO)
}

/// Sets the boolean socket option `name` of `level` on `sock`.
fn turn_on(sock: &UdpSocket, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt with a valid fd and a pointer to a c_int.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One read: a batch of datagrams into `buf` (at least 64 KiB).
pub fn recv(sock: &UdpSocket, buf: &mut [u8]) -> io::Result<Batch> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
    // Room for the receive offload's segment size and a timestamp.
    let mut control = [0u64; 16];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 16]>() as _;
    // SAFETY: msg points at live buffers of the sizes it gives.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        // Not possible within 64 KiB; a datagram cut short is not relayed.
        return Err(io::Error::new(io::ErrorKind::InvalidData, "datagram truncated"));
    }
    let len = n as usize;
    let mut seg = len;
    let mut stamp = None;
    // SAFETY: the kernel filled msg's control buffer; the CMSG macros walk
    // it within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::c_int);
                if v > 0 {
                    seg = v as usize;
                }
            }
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let t = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::timespec);
                if t.tv_sec >= 0 && (0..1_000_000_000).contains(&t.tv_nsec) {
                    stamp = Some(Duration::new(t.tv_sec as u64, t.tv_nsec as u32));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let from = sockaddr_to_std(&addr)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram from no address"))?;
    Ok(Batch { len, seg: seg.min(len).max(1), from, stamp })
}

/// Sends `data`, datagrams of `seg` bytes but the last, to `to` (or the
/// socket's connected peer): in segmented sends of as many datagrams as
/// one send may carry (at most 64, at most 65,507 bytes) where the kernel
/// takes them, else one by one.
pub fn send(sock: &UdpSocket, data: &[u8], seg: usize, to: Option<SocketAddr>) -> io::Result<()> {
    let seg = seg.max(1);
    if data.len() <= seg {
        return send_one(sock, data, to);
    }
    let per_send = MAX_SEGMENTS.min(twinblock_replicator::udp::segments_within(seg));
    for chunk in data.chunks(seg * per_send) {
        if chunk.len() <= seg {
            send_one(sock, chunk, to)?;
            continue;
        }
        match retried(sock, || send_segmented(sock, chunk, seg, to)) {
            Ok(()) => {}
            // No segmentation offload on this path (or a segment over its
            // MTU): one by one.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EMSGSIZE)
                ) =>
            {
                for d in chunk.chunks(seg) {
                    send_one(sock, d, to)?;
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn send_one(sock: &UdpSocket, data: &[u8], to: Option<SocketAddr>) -> io::Result<()> {
    retried(sock, || {
        match to {
            Some(to) => sock.send_to(data, to),
            None => sock.send(data),
        }
        .map(|_| ())
    })
}

/// One send, tried again (a) once after an ICMP error the socket had
/// pending from an earlier datagram (the kernel reports it on the next
/// call, which then sent nothing) and (b) while the socket's send buffer
/// is full, for up to 100 ms: the relay's sockets do not block, and a
/// blocking send would have waited there.
fn retried(sock: &UdpSocket, mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(100);
    let mut icmp_retried = false;
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    return Err(e);
                }
                let mut p =
                    libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as libc::c_int) };
            }
            Err(e) if !icmp_retried && is_icmp_error(&e) => icmp_retried = true,
            r => return r,
        }
    }
}

/// An error the kernel reports from an ICMP message about an earlier
/// datagram (the target's port or host unreachable).
pub fn is_icmp_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ConnectionRefused
        || matches!(e.raw_os_error(), Some(libc::EHOSTUNREACH | libc::ENETUNREACH))
}

fn send_segmented(
    sock: &UdpSocket,
    data: &[u8],
    seg: usize,
    to: Option<SocketAddr>,
) -> io::Result<()> {
    let seg = u16::try_from(seg)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment over 64 KiB"))?;
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut addr: libc::sockaddr_storage = unsafe { zeroed() };
    let mut control = [0u64; 4];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
    let mut msg: libc::msghdr = unsafe { zeroed() };
    if let Some(to) = to {
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std_to_sockaddr(to, &mut addr);
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE/CMSG_LEN are pure computations; the control buffer
    // (32 bytes) holds one cmsg with a u16 (CMSG_SPACE(2) = 24).
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<u16>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut u16, seg);
    }
    // SAFETY: msg points at live buffers of the sizes it gives.
    let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn sockaddr_to_std(a: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match a.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a4 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                u32::from_be(a4.sin_addr.s_addr).into(),
                u16::from_be(a4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a6 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                a6.sin6_addr.s6_addr.into(),
                u16::from_be(a6.sin6_port),
                a6.sin6_flowinfo,
                a6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

fn std_to_sockaddr(to: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match to {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in.
            let a4 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            a4.sin_family = libc::AF_INET as libc::sa_family_t;
            a4.sin_port = v4.port().to_be();
            a4.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
            size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is large and aligned enough for a sockaddr_in6.
            let a6 =
                unsafe { &mut *(out as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            a6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            a6.sin6_port = v6.port().to_be();
            a6.sin6_addr.s6_addr = v6.ip().octets();
            a6.sin6_flowinfo = v6.flowinfo();
            a6.sin6_scope_id = v6.scope_id();
            size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seven datagrams sent in one segmented send arrive as one batch that
    /// splits back into the same seven, and a lone datagram is a batch of one.
    #[test]
    fn a_segmented_send_arrives_as_one_batch_of_the_same_datagrams() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_receive_offload(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let sent: Vec<Vec<u8>> =
            (0..7u8).map(|i| vec![i; if i == 6 { 300 } else { 1200 }]).collect();
        send(&tx, &sent.concat(), 1200, Some(to)).unwrap();
        let mut buf = vec![0u8; 65536];
        let b = recv(&rx, &mut buf).unwrap();
        assert_eq!(b.from, tx.local_addr().unwrap());
        let got: Vec<Vec<u8>> = b.datagrams(&buf).map(<[u8]>::to_vec).collect();
        assert_eq!(got, sent);
        send(&tx, b"lone", 1200, Some(to)).unwrap();
        let b = recv(&rx, &mut buf).unwrap();
        assert_eq!((b.len, b.seg), (4, 4));
    }

    /// Without receive offload on the reader, the same send still delivers
    /// every datagram, one per read.
    #[test]
    fn without_receive_offload_the_datagrams_come_one_by_one() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        send(&tx, &data, 1000, Some(to)).unwrap();
        let mut buf = vec![0u8; 65536];
        for i in 0..3 {
            let b = recv(&rx, &mut buf).unwrap();
            assert_eq!((b.len, b.seg), (1000, 1000));
            assert_eq!(&buf[..1000], &data[i * 1000..(i + 1) * 1000]);
        }
    }

    /// A batch read well after it arrived says how long the kernel held it
    /// (offload's segment size read too); without timestamps asked for, or
    /// with a timestamp from the future (a clock step), nothing.
    #[test]
    fn a_batch_read_late_says_how_long_it_waited() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        enable_receive_offload(&rx).unwrap();
        enable_receive_timestamps(&rx).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let mut buf = vec![0u8; 65536];
        // The kernel turns receive stamping on for the host a moment after
        // the first socket asks (a deferred work item); until then it
        // stamps a datagram when it is read. Wait for stamps on arrival.
        let on_arrival = (0..200).any(|_| {
            send(&tx, b"probe", 1000, Some(to)).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            let b = recv(&rx, &mut buf).unwrap();
            b.queued(SystemTime::now()).is_some_and(|w| w >= Duration::from_millis(5))
        });
        assert!(on_arrival, "the kernel never stamped a datagram on its arrival");
        send(&tx, &[7u8; 3000], 1000, Some(to)).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let b = recv(&rx, &mut buf).unwrap();
        assert_eq!((b.len, b.seg), (3000, 1000));
        let waited = b.queued(SystemTime::now()).expect("a timestamp");
        assert!(waited >= Duration::from_millis(30) && waited < MAX_QUEUED, "{waited:?}");
        assert_eq!(b.queued(SystemTime::now() - Duration::from_secs(10)), None, "from the future");
        assert_eq!(b.queued(SystemTime::now() + Duration::from_secs(10)), None, "a step forward");

        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        send(&tx, b"x", 1000, Some(plain.local_addr().unwrap())).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let b = recv(&plain, &mut buf).unwrap();
        assert_eq!((b.stamp, b.queued(SystemTime::now())), (None, None));
    }
}
