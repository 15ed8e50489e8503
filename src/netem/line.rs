//! A delay line: the datagrams of one direction of one client, stamped
//! (loss, delay, jitter) as they arrive and held until their time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::batch::Batch;

/// The line's settings, shared by every line of the relay.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub delay: Duration,
    pub jitter: Duration,
    /// Per cent of datagrams dropped.
    pub loss: f64,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What holding a datagram costs beyond its bytes (its entry, its
/// allocation), counted against the relay's room: else a flood of empty
/// or tiny datagrams under a long delay was held without bound.
const PER_DATAGRAM: usize = 64;

/// What holding `len` bytes as one entry counts against the room.
pub fn cost(len: usize) -> usize {
    len + PER_DATAGRAM
}

/// Datagrams held until `at`, back to back, each `seg` bytes but the last.
pub struct Held {
    pub at: Instant,
    pub data: Vec<u8>,
    pub seg: usize,
}

/// One direction of one client: where its datagrams go and those waiting.
/// Jitter never reorders: a datagram leaves no earlier than the one before.
pub struct DelayLine {
    /// Where the datagrams go: the client's address, or `None` for the
    /// socket's connected peer (the forward target).
    pub to: Option<SocketAddr>,
    shape: Shape,
    rng: Rng,
    last: Instant,
    queue: VecDeque<Held>,
    /// What `queue` holds ([`cost`] of each entry).
    bytes: usize,
}

impl DelayLine {
    pub fn new(to: Option<SocketAddr>, shape: Shape, seed: u64) -> DelayLine {
        DelayLine {
            to,
            shape,
            rng: Rng(seed | 1),
            last: Instant::now(),
            queue: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Holds the datagrams of one read (`b` in `buf`), received at `now`,
    /// within `room` bytes (what does not fit is dropped, as a full queue
    /// of a congested link drops); what it held ([`cost`]). A batch the sender
    /// passed in one segmented send stays one (one stamp, one send) unless
    /// loss or jitter is asked for, which apply to each datagram.
    pub fn push(&mut self, buf: &[u8], b: &Batch, now: Instant, room: usize) -> usize {
        if self.shape.loss == 0.0 && self.shape.jitter.is_zero() && cost(b.len) <= room {
            self.hold(buf[..b.len].to_vec(), b.seg, now);
            return cost(b.len);
        }
        let mut held = 0;
        for d in b.datagrams(buf) {
            if held + cost(d.len()) > room || self.rng.unit() * 100.0 < self.shape.loss {
                continue;
            }
            held += cost(d.len());
            self.hold(d.to_vec(), d.len(), now);
        }
        held
    }

    /// What this line holds ([`cost`] of each entry).
    pub fn held(&self) -> usize {
        self.bytes
    }

    fn hold(&mut self, data: Vec<u8>, seg: usize, now: Instant) {
        let jitter = self.shape.jitter.mul_f64(self.rng.unit());
        let at = (now + self.shape.delay + jitter).max(self.last);
        self.last = at;
        self.bytes += cost(data.len());
        self.queue.push_back(Held { at, data, seg });
    }

    /// When the next datagram is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.queue.front().map(|h| h.at)
    }

    /// The next datagrams if they are due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Held> {
        if self.queue.front()?.at <= now {
            let h = self.queue.pop_front()?;
            self.bytes -= cost(h.data.len());
            Some(h)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn batch(len: usize, seg: usize) -> Batch {
        Batch { len, seg, from: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1).into(), stamp: None }
    }

    #[test]
    fn a_batch_is_held_for_the_delay_and_leaves_whole() {
        let shape = Shape { delay: Duration::from_micros(500), jitter: Duration::ZERO, loss: 0.0 };
        let mut line = DelayLine::new(None, shape, 1);
        let t0 = Instant::now();
        line.push(&[7u8; 3000], &batch(2500, 1000), t0, usize::MAX);
        assert_eq!(line.next_due(), Some(t0 + Duration::from_micros(500)));
        assert!(line.pop_due(t0 + Duration::from_micros(499)).is_none());
        let h = line.pop_due(t0 + Duration::from_micros(500)).unwrap();
        assert_eq!((h.data.len(), h.seg), (2500, 1000));
        assert!(line.next_due().is_none());
    }

    #[test]
    fn with_jitter_each_datagram_has_its_own_time_and_none_overtakes() {
        let shape = Shape {
            delay: Duration::from_micros(100),
            jitter: Duration::from_micros(1000),
            loss: 0.0,
        };
        let mut line = DelayLine::new(None, shape, 3);
        let t0 = Instant::now();
        let buf: Vec<u8> = (0..40).collect();
        line.push(&buf, &batch(40, 10), t0, usize::MAX);
        line.push(&buf, &batch(5, 5), t0 + Duration::from_micros(1), usize::MAX);
        let far = t0 + Duration::from_secs(1);
        let mut got = Vec::new();
        let mut last = t0;
        while let Some(h) = line.pop_due(far) {
            assert!(h.at >= last && h.at >= t0 + shape.delay);
            last = h.at;
            got.push(h.data);
        }
        assert_eq!(
            got,
            vec![
                buf[..10].to_vec(),
                buf[10..20].to_vec(),
                buf[20..30].to_vec(),
                buf[30..40].to_vec(),
                buf[..5].to_vec()
            ]
        );
    }

    #[test]
    fn loss_drops_about_the_share_asked_for() {
        let shape = Shape { delay: Duration::ZERO, jitter: Duration::ZERO, loss: 25.0 };
        let mut line = DelayLine::new(None, shape, 5);
        let t0 = Instant::now();
        for _ in 0..4000 {
            line.push(&[1u8; 10], &batch(10, 10), t0, usize::MAX);
        }
        let mut kept = 0;
        while line.pop_due(t0).is_some() {
            kept += 1;
        }
        assert!((2800..3200).contains(&kept), "kept {kept} of 4000 at 25% loss");
    }

    /// A line holds what its room allows, datagram by datagram, and
    /// counts what it holds until it is sent.
    #[test]
    fn a_line_holds_within_its_room_and_counts_what_it_holds() {
        let shape = Shape { delay: Duration::from_secs(3600), jitter: Duration::ZERO, loss: 0.0 };
        let mut line = DelayLine::new(None, shape, 1);
        let t0 = Instant::now();
        assert_eq!(line.push(&[1u8; 3000], &batch(2500, 1000), t0, 10_000), cost(2500));
        // Room for two of the next batch's three datagrams.
        assert_eq!(line.push(&[1u8; 3000], &batch(3000, 1000), t0, 2500), 2 * cost(1000));
        assert_eq!(line.push(&[1u8; 3000], &batch(1000, 1000), t0, 0), 0);
        assert_eq!(line.held(), cost(2500) + 2 * cost(1000));
        let far = t0 + Duration::from_secs(7200);
        let mut sent = 0;
        while let Some(h) = line.pop_due(far) {
            sent += h.data.len();
        }
        assert_eq!((sent, line.held()), (4500, 0));
    }

    /// An empty datagram (legal UDP) is relayed with jitter or loss asked
    /// for, as it is without (found by review: with `--jitter` it was
    /// dropped, the batch of no bytes split into no datagrams).
    #[test]
    fn an_empty_datagram_is_held_with_jitter_too() {
        let shape = Shape {
            delay: Duration::from_micros(100),
            jitter: Duration::from_micros(100),
            loss: 0.0,
        };
        let mut line = DelayLine::new(None, shape, 1);
        let t0 = Instant::now();
        assert_eq!(line.push(&[0u8; 8], &batch(0, 1), t0, usize::MAX), cost(0));
        let h = line.pop_due(t0 + Duration::from_secs(1)).expect("the empty datagram held");
        assert!(h.data.is_empty());
    }

    /// What a held datagram costs counts its bookkeeping, not its bytes
    /// alone: empty or tiny datagrams fill the room too (else a flood of
    /// them under a long delay was held without bound).
    #[test]
    fn tiny_datagrams_fill_the_room_too() {
        let shape = Shape { delay: Duration::from_secs(3600), jitter: Duration::ZERO, loss: 0.0 };
        let mut line = DelayLine::new(None, shape, 1);
        let t0 = Instant::now();
        let room = 1 << 20;
        let mut n = 0;
        for _ in 0..100_000 {
            let used = line.held();
            if line.push(&[0u8; 8], &batch(1, 1), t0, room - used) > 0 {
                n += 1;
            }
        }
        assert!(line.held() <= room, "{} held of {room}", line.held());
        assert!(n < 100_000 / 4, "{n} one-byte datagrams held in 1 MiB of room");
    }
}
