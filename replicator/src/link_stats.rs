//! What the replication link's transport did, as QUIC counts it: the
//! totals `status --json` shows under `link` and the metrics export.
//!
//! quinn counts per connection, and a node makes a new connection for
//! every session. The tally keeps the sum of the sessions that ended and
//! the last look at each running one (taken on the session's tick and at
//! its end), so the totals only grow.

use std::collections::BTreeMap;

use crate::core::SessionId;
use crate::status::LinkStatus;

/// One connection's counters and path, as the status shows them.
pub fn look(s: &quinn::ConnectionStats) -> LinkStatus {
    LinkStatus {
        datagrams_sent: s.udp_tx.datagrams,
        datagrams_received: s.udp_rx.datagrams,
        send_batches: s.udp_tx.ios,
        bytes_sent: s.udp_tx.bytes,
        bytes_received: s.udp_rx.bytes,
        lost_packets: s.path.lost_packets,
        path_mtu: Some(s.path.current_mtu),
        congestion_window_bytes: Some(s.path.cwnd),
    }
}

/// The totals of `a` and `b` (no path: a sum has none).
fn plus(a: &LinkStatus, b: &LinkStatus) -> LinkStatus {
    LinkStatus {
        datagrams_sent: a.datagrams_sent + b.datagrams_sent,
        datagrams_received: a.datagrams_received + b.datagrams_received,
        send_batches: a.send_batches + b.send_batches,
        bytes_sent: a.bytes_sent + b.bytes_sent,
        bytes_received: a.bytes_received + b.bytes_received,
        lost_packets: a.lost_packets + b.lost_packets,
        path_mtu: None,
        congestion_window_bytes: None,
    }
}

/// The sessions' counters, summed.
#[derive(Debug, Default)]
pub struct LinkTally {
    /// The sessions that ended, summed.
    ended: LinkStatus,
    /// The sessions still running (most often one; an old one may still
    /// be closing when the next begins), each at its last look.
    running: BTreeMap<SessionId, LinkStatus>,
}

impl LinkTally {
    /// Session `sid`'s counters now.
    pub fn update(&mut self, sid: SessionId, c: LinkStatus) {
        self.running.insert(sid, c);
    }

    /// Session `sid` ended with these counters.
    pub fn end(&mut self, sid: SessionId, c: &LinkStatus) {
        self.running.remove(&sid);
        self.ended = plus(&self.ended, c);
    }

    /// The totals, and the path of the newest running session.
    pub fn view(&self) -> LinkStatus {
        let mut sum = self.running.values().fold(self.ended.clone(), |a, c| plus(&a, c));
        if let Some(now) = self.running.values().next_back() {
            sum.path_mtu = now.path_mtu;
            sum.congestion_window_bytes = now.congestion_window_bytes;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sent: u64, lost: u64, mtu: u16) -> LinkStatus {
        LinkStatus {
            datagrams_sent: sent,
            datagrams_received: sent * 2,
            send_batches: sent / 2,
            bytes_sent: sent * 1000,
            bytes_received: sent * 10,
            lost_packets: lost,
            path_mtu: Some(mtu),
            congestion_window_bytes: Some(1 << 20),
        }
    }

    #[test]
    fn totals_grow_across_sessions_and_the_path_is_the_current_ones() {
        let mut t = LinkTally::default();
        assert_eq!(t.view(), LinkStatus::default());
        t.update(1, c(10, 0, 1200));
        t.update(1, c(50, 1, 8951));
        let v = t.view();
        assert_eq!((v.datagrams_sent, v.lost_packets, v.path_mtu), (50, 1, Some(8951)));
        t.end(1, &c(60, 2, 8951));
        let v = t.view();
        assert_eq!((v.datagrams_sent, v.lost_packets, v.path_mtu), (60, 2, None));
        assert_eq!(v.congestion_window_bytes, None);
        // A new connection counts from zero again: the totals do not.
        t.update(2, c(5, 0, 1200));
        let v = t.view();
        assert_eq!((v.datagrams_sent, v.datagrams_received, v.bytes_sent), (65, 130, 65_000));
        assert_eq!(v.path_mtu, Some(1200));
    }

    #[test]
    fn an_old_session_closing_after_the_next_began_counts_once() {
        let mut t = LinkTally::default();
        t.update(1, c(40, 3, 8951));
        t.update(2, c(7, 0, 1200));
        let v = t.view();
        assert_eq!((v.datagrams_sent, v.lost_packets, v.path_mtu), (47, 3, Some(1200)));
        t.end(1, &c(41, 3, 8951));
        t.update(2, c(9, 0, 1200));
        let v = t.view();
        assert_eq!((v.datagrams_sent, v.lost_packets, v.path_mtu), (50, 3, Some(1200)));
        t.end(2, &c(10, 0, 1200));
        assert_eq!(t.view().datagrams_sent, 51);
        assert_eq!(t.view().path_mtu, None);
    }
}
