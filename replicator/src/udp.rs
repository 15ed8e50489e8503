//! The peer link's UDP socket: quinn's own (tokio, quinn-udp), with its
//! segmentation offload (GSO) batches cut to what one UDP send may carry.
//!
//! With GSO one `sendmsg` hands the kernel several datagrams of the same
//! size, and on the receiving side GRO hands them to one `recvmsg`: the
//! per-datagram cost of the kernel's UDP path (a socket buffer, a route
//! lookup, the IP output and input path, one system call each side) is
//! paid once per batch. quinn batches up to ten datagrams of the current
//! MTU whatever their size; the kernel refuses a batch over 64 KiB
//! (EMSGSIZE, dropped silently by quinn-udp and read by QUIC as an MTU
//! black hole), which ten jumbo frames (89 KB) already are. This socket
//! sends such a batch as several sends of as many datagrams as fit.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use twinblock_timeline::{mark, mark_with, Point};

/// The most one UDP send carries (an IPv4 datagram's 65,535 bytes less
/// its IP and UDP headers).
pub const MAX_SEND: usize = 65_507;

/// How many datagrams of at most `datagram` bytes one send may carry.
pub fn segments_within(datagram: usize) -> usize {
    (MAX_SEND / datagram.max(1)).max(1)
}

/// quinn's socket, sending a batch larger than one send may carry in
/// pieces.
pub struct BoundedGso {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl BoundedGso {
    /// Wraps `socket` (as quinn's tokio runtime would).
    pub fn wrap(socket: std::net::UdpSocket) -> io::Result<Arc<BoundedGso>> {
        let inner = quinn::Runtime::wrap_udp_socket(&quinn::TokioRuntime, socket)?;
        Ok(Arc::new(BoundedGso { inner }))
    }
}

/// The pieces `len` bytes of datagrams of `segment` bytes are sent in:
/// (start, end) byte ranges of whole datagrams, each within [`MAX_SEND`].
pub fn pieces(len: usize, segment: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = segments_within(segment) * segment.max(1);
    (0..len).step_by(step).map(move |start| (start, (start + step).min(len)))
}

impl fmt::Debug for BoundedGso {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedGso").finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for BoundedGso {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    /// A batch over [`MAX_SEND`] goes out in pieces. Should a later piece
    /// find the socket full, what is left is dropped, not retried: the
    /// pieces already sent must not be sent twice, and QUIC recovers the
    /// rest as losses (a socket buffer twice the flow-control window makes
    /// this rare).
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        mark(Point::UdpSend, transmit.contents.len() as u64);
        let Some(segment) = transmit.segment_size.filter(|_| transmit.contents.len() > MAX_SEND)
        else {
            return self.inner.try_send(transmit);
        };
        for (n, (start, end)) in pieces(transmit.contents.len(), segment).enumerate() {
            let piece = Transmit {
                contents: &transmit.contents[start..end],
                segment_size: (end - start > segment).then_some(segment),
                ..*transmit
            };
            match self.inner.try_send(&piece) {
                Ok(()) => {}
                Err(e) if n == 0 => return Err(e),
                Err(_) => return Ok(()),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let r = self.inner.poll_recv(cx, bufs, meta);
        if let Poll::Ready(Ok(n)) = &r {
            mark_with(Point::UdpRecv, || meta[..*n].iter().map(|m| m.len as u64).sum());
        }
        r
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_into_sends_of_whole_datagrams() {
        assert_eq!(segments_within(8951), 7);
        assert_eq!(segments_within(1200), 54);
        assert_eq!(segments_within(u16::MAX.into()), 1);
        // Ten jumbo frames, the last one short: 7 + 3.
        let len = 9 * 8951 + 100;
        let p: Vec<_> = pieces(len, 8951).collect();
        assert_eq!(p, [(0, 7 * 8951), (7 * 8951, len)]);
        assert!(p.iter().all(|(s, e)| e - s <= MAX_SEND));
        // Datagrams too large to batch at all: one per send.
        assert_eq!(pieces(3 * 65000, 65000).count(), 3);
    }
}
