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

/// One connection's counters (a copy of the parts of
/// `quinn::ConnectionStats` the status shows).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub send_batches: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub lost_packets: u64,
    /// The path's current UDP payload size.
    pub path_mtu: u16,
    pub congestion_window: u64,
}

impl LinkCounters {
    pub fn of(s: &quinn::ConnectionStats) -> LinkCounters {
        LinkCounters {
            datagrams_sent: s.udp_tx.datagrams,
            datagrams_received: s.udp_rx.datagrams,
            send_batches: s.udp_tx.ios,
            bytes_sent: s.udp_tx.bytes,
            bytes_received: s.udp_rx.bytes,
            lost_packets: s.path.lost_packets,
            path_mtu: s.path.current_mtu,
            congestion_window: s.path.cwnd,
        }
    }

    fn plus(self, o: LinkCounters) -> LinkCounters {
        LinkCounters {
            datagrams_sent: self.datagrams_sent + o.datagrams_sent,
            datagrams_received: self.datagrams_received + o.datagrams_received,
            send_batches: self.send_batches + o.send_batches,
            bytes_sent: self.bytes_sent + o.bytes_sent,
            bytes_received: self.bytes_received + o.bytes_received,
            lost_packets: self.lost_packets + o.lost_packets,
            path_mtu: 0,
            congestion_window: 0,
        }
    }
}

/// The sessions' counters, summed.
#[derive(Debug, Default)]
pub struct LinkTally {
    /// The sessions that ended, summed.
    ended: LinkCounters,
    /// The sessions still running (most often one; an old one may still
    /// be closing when the next begins), each at its last look.
    running: BTreeMap<SessionId, LinkCounters>,
}

impl LinkTally {
    /// Session `sid`'s counters now.
    pub fn update(&mut self, sid: SessionId, c: LinkCounters) {
        self.running.insert(sid, c);
    }

    /// Session `sid` ended with these counters.
    pub fn end(&mut self, sid: SessionId, c: LinkCounters) {
        self.running.remove(&sid);
        self.ended = self.ended.plus(c);
    }

    pub fn view(&self) -> LinkStatus {
        let sum = self.running.values().fold(self.ended, |a, c| a.plus(*c));
        // The path is the newest session's.
        let now = self.running.values().next_back();
        LinkStatus {
            datagrams_sent: sum.datagrams_sent,
            datagrams_received: sum.datagrams_received,
            send_batches: sum.send_batches,
            bytes_sent: sum.bytes_sent,
            bytes_received: sum.bytes_received,
            lost_packets: sum.lost_packets,
            path_mtu: now.map(|c| c.path_mtu),
            congestion_window_bytes: now.map(|c| c.congestion_window),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(sent: u64, lost: u64, mtu: u16) -> LinkCounters {
        LinkCounters {
            datagrams_sent: sent,
            datagrams_received: sent * 2,
            send_batches: sent / 2,
            bytes_sent: sent * 1000,
            bytes_received: sent * 10,
            lost_packets: lost,
            path_mtu: mtu,
            congestion_window: 1 << 20,
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
        t.end(1, c(60, 2, 8951));
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
        t.end(1, c(41, 3, 8951));
        t.update(2, c(9, 0, 1200));
        let v = t.view();
        assert_eq!((v.datagrams_sent, v.lost_packets, v.path_mtu), (50, 3, Some(1200)));
        t.end(2, c(10, 0, 1200));
        assert_eq!(t.view().datagrams_sent, 51);
        assert_eq!(t.view().path_mtu, None);
    }
}
