//! Which refused replication handshakes the accepting node has logged.
//!
//! A peer that dials again and again with the same refusal (its disk
//! hangs, its certificate expired) is one WARN line, then debug lines,
//! until a session runs. Before (review, helper-137) only the last
//! (host, reason) was remembered, so a host whose refusals alternated
//! between two reasons (a handshake that fails, then one that times out)
//! wrote a WARN at every switch. Now each (host, reason) is remembered
//! ([`REMEMBERED`] at most, the oldest forgotten first), and new ones are
//! WARNed at most [`BURST`] times per [`WINDOW`]: the rest are counted,
//! and the next WARN says how many were not logged, so hosts without end
//! (spoofed sources whose handshakes time out) cannot write the log as
//! fast as they send.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::core::rebuild_backoff::same_refusal;

/// How many (host, reason) pairs are remembered.
pub const REMEMBERED: usize = 16;
/// How many new refusals are WARNed per [`WINDOW`].
pub const BURST: u32 = 4;
/// See [`BURST`].
pub const WINDOW: Duration = Duration::from_secs(10);

/// One WARN line per [`TALLY_EVERY`] for a kind of event that may come as
/// fast as anyone can send (handshakes refused as too many at once, the
/// witness's refused connections): the others are counted into the next
/// line, and are debug lines.
#[derive(Debug, Default)]
pub struct Tally {
    last_warn: Option<Instant>,
    since: u64,
}

/// See [`Tally`].
pub const TALLY_EVERY: Duration = Duration::from_secs(10);

impl Tally {
    /// One more event at `now`: the count to give in a WARN line now (this
    /// one included), or None (a debug line).
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        self.since += 1;
        if self.last_warn.is_none_or(|t| now.saturating_duration_since(t) >= TALLY_EVERY) {
            self.last_warn = Some(now);
            Some(std::mem::take(&mut self.since))
        } else {
            None
        }
    }
}

/// How to log one refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Say {
    /// New: a WARN, with the count of new refusals not logged before it.
    Warn { unlogged: u64 },
    /// Logged before (or over the rate): a debug line.
    Debug,
}

/// The refusals logged since the last session that ran.
#[derive(Debug, Default)]
pub struct RefusalLog {
    seen: VecDeque<(IpAddr, String)>,
    window: Option<Instant>,
    warned: u32,
    unlogged: u64,
}

impl RefusalLog {
    /// One refusal of `host` for `reason` at `now`.
    pub fn refused(&mut self, host: IpAddr, reason: &str, now: Instant) -> Say {
        if self.seen.iter().any(|(h, r)| *h == host && same_refusal(r, reason)) {
            return Say::Debug;
        }
        if self.window.is_none_or(|t| now.saturating_duration_since(t) >= WINDOW) {
            self.window = Some(now);
            self.warned = 0;
        }
        // (Remembered either way, so a repeat of one over the rate is not
        // counted again as new: review, helper-143.)
        if self.seen.len() == REMEMBERED {
            self.seen.pop_front();
        }
        self.seen.push_back((host, reason.to_string()));
        if self.warned >= BURST {
            self.unlogged += 1;
            return Say::Debug;
        }
        self.warned += 1;
        Say::Warn { unlogged: std::mem::take(&mut self.unlogged) }
    }

    /// A session runs: a refusal after it is news again.
    pub fn linked(&mut self) {
        self.seen.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WARN at the first event, then one per TALLY_EVERY with the count.
    #[test]
    fn a_tally_warns_once_per_period_with_the_count() {
        let (mut t, at) = (Tally::default(), Instant::now());
        assert_eq!(t.note(at), Some(1));
        for i in 1..100 {
            assert_eq!(t.note(at + Duration::from_millis(i)), None);
        }
        assert_eq!(t.note(at + TALLY_EVERY), Some(100));
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    /// One host alternating two reasons: one WARN per reason, not one per
    /// switch (the defect).
    #[test]
    fn alternating_reasons_are_each_logged_once() {
        let (mut log, t) = (RefusalLog::default(), Instant::now());
        let mut warns = 0;
        for i in 0..100u32 {
            let why = if i % 2 == 0 { "handshake failed: bad cert" } else { "timed out" };
            let now = t + Duration::from_millis(u64::from(i) * 300);
            warns += usize::from(log.refused(ip(1), why, now) != Say::Debug);
        }
        assert_eq!(warns, 2);
        // The same reasons from another host are news.
        assert_eq!(log.refused(ip(2), "timed out", t), Say::Warn { unlogged: 0 });
        // After a session ran, news again.
        log.linked();
        assert_eq!(log.refused(ip(1), "timed out", t), Say::Warn { unlogged: 0 });
    }

    /// Reasons differing only by their numbers (an expiry's seconds) are one.
    #[test]
    fn reasons_differing_by_numbers_are_the_same_refusal() {
        let (mut log, t) = (RefusalLog::default(), Instant::now());
        assert_ne!(log.refused(ip(1), "expired 12 s ago", t), Say::Debug);
        assert_eq!(log.refused(ip(1), "expired 13 s ago", t), Say::Debug);
    }

    /// Hosts without end are WARNed BURST times per window; the next WARN
    /// counts the rest.
    #[test]
    fn new_hosts_are_rate_limited_and_counted() {
        let (mut log, t) = (RefusalLog::default(), Instant::now());
        let says: Vec<Say> = (0..50).map(|n| log.refused(ip(n), "timed out", t)).collect();
        let warns = says.iter().filter(|s| **s != Say::Debug).count();
        assert_eq!(warns, BURST as usize);
        // Repeats of those over the rate are not counted again.
        for n in 40..50 {
            assert_eq!(log.refused(ip(n), "timed out", t), Say::Debug);
        }
        assert_eq!(
            log.refused(ip(200), "timed out", t + WINDOW),
            Say::Warn { unlogged: 50 - u64::from(BURST) }
        );
        // Memory stays bounded.
        for n in 0..=255 {
            log.refused(ip(n), &format!("reason {}", "x".repeat(usize::from(n))), t + WINDOW * 9);
        }
        assert!(log.seen.len() <= REMEMBERED);
    }
}
