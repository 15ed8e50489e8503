//! Peer liveness and round-trip time, sans-IO: fed the times at which
//! frames arrive and pongs come back.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    last_heard: Instant,
    /// Smoothed RTT (RFC 6298 style), if measured.
    srtt: Option<Duration>,
    next_ping: u64,
    outstanding: Option<(u64, Instant)>,
}

impl Liveness {
    pub fn new(now: Instant, timeout: Duration) -> Liveness {
        Liveness { timeout, last_heard: now, srtt: None, next_ping: 1, outstanding: None }
    }

    /// Any frame from the peer.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// A ping to send now (one at a time).
    pub fn ping(&mut self, now: Instant) -> Option<u64> {
        if self.outstanding.is_some() {
            return None;
        }
        let id = self.next_ping;
        self.next_ping += 1;
        self.outstanding = Some((id, now));
        Some(id)
    }

    pub fn pong(&mut self, id: u64, now: Instant) {
        self.heard(now);
        if let Some((want, sent)) = self.outstanding {
            if want == id {
                self.outstanding = None;
                let sample = now.saturating_duration_since(sent);
                self.srtt = Some(match self.srtt {
                    None => sample,
                    Some(s) => (s * 7 + sample) / 8,
                });
            }
        }
    }

    pub fn rtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Nothing heard for `timeout`: the peer is lost.
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_heard) >= self.timeout
    }
}
