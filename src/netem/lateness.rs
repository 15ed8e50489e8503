//! How late the relay sends what it holds: each datagram batch's send
//! against its due time (the delay asked for), summed up every
//! [`REPORT_EVERY`] while traffic flows. On a machine the relay shares
//! with the nodes it sits between, a send waits for the CPU too: this is
//! what the relay adds beyond the delay it was told, under the load of the
//! moment (the start-up line's timer overhead is measured idle).
//!
//! Also how long datagrams waited in the kernel before the relay read them
//! (the relay's wake-up, or its work on others): the delay counts from their
//! arrival (receive timestamps), so that wait is part of the delay, not
//! added to it, unless it exceeds it (then the batch leaves at once, and
//! late). Batches without a timestamp are not counted.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// How often a summary is printed (when anything was sent).
pub const REPORT_EVERY: Duration = Duration::from_secs(5);

/// Lateness since the last summary, in microseconds (the latency
/// benchmark's histogram: bounded, and recording costs the relay's one
/// thread no more than a counter).
pub struct Lateness {
    since: Instant,
    us: Histogram<u64>,
    /// Arrival to read, in microseconds.
    read_us: Histogram<u64>,
}

impl Lateness {
    pub fn new(now: Instant) -> Lateness {
        Lateness {
            since: now,
            us: crate::bench::run::histogram(),
            read_us: crate::bench::run::histogram(),
        }
    }

    /// A batch due at `due` was sent at `sent`.
    pub fn sent(&mut self, due: Instant, sent: Instant) {
        self.us.saturating_record(micros(sent.saturating_duration_since(due)));
    }

    /// A batch was read `queued` after the kernel received it.
    pub fn read(&mut self, queued: Duration) {
        self.read_us.saturating_record(micros(queued));
    }

    /// The summary of the samples since the last one, if one is due at
    /// `now` and anything was sent; the samples start over.
    pub fn report(&mut self, now: Instant) -> Option<String> {
        if now.saturating_duration_since(self.since) < REPORT_EVERY {
            return None;
        }
        let secs = now.saturating_duration_since(self.since).as_secs_f64();
        self.since = now;
        if self.us.is_empty() {
            return None;
        }
        let (us, read) = (&self.us, &self.read_us);
        let mut line = format!(
            "twinblock netem: last {secs:.0}s: {} sends, late by {}us (median), {}us (p99), {}us (max) beyond the delay",
            us.len(),
            us.value_at_quantile(0.5),
            us.value_at_quantile(0.99),
            us.max()
        );
        if !read.is_empty() {
            line.push_str(&format!(
                "; read {}us (median), {}us (p99) after arrival (the delay counts from arrival)",
                read.value_at_quantile(0.5),
                read.value_at_quantile(0.99)
            ));
        }
        self.us.reset();
        self.read_us.reset();
        Some(line)
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_gives_the_lateness_percentiles_once_per_period() {
        let t0 = Instant::now();
        let mut l = Lateness::new(t0);
        for i in 0..100u64 {
            let due = t0 + Duration::from_millis(i);
            l.sent(due, due + Duration::from_micros(i + 1));
        }
        assert_eq!(l.report(t0 + Duration::from_secs(1)), None, "before the period");
        let s = l.report(t0 + REPORT_EVERY).expect("a summary");
        assert!(s.contains("100 sends, late by 50us (median), 99us (p99), 100us (max)"), "{s}");
        assert!(!s.contains("after arrival"), "no read recorded: {s}");
        assert_eq!(l.report(t0 + REPORT_EVERY * 2), None, "nothing sent since");
    }

    #[test]
    fn a_send_before_its_time_counts_as_on_time() {
        let t0 = Instant::now();
        let mut l = Lateness::new(t0);
        l.sent(t0 + Duration::from_millis(1), t0);
        let s = l.report(t0 + REPORT_EVERY).expect("a summary");
        assert!(s.contains("late by 0us (median)"), "{s}");
    }

    #[test]
    fn a_summary_gives_how_long_datagrams_waited_to_be_read() {
        let t0 = Instant::now();
        let mut l = Lateness::new(t0);
        for i in 1..=100u64 {
            l.read(Duration::from_micros(i));
            l.sent(t0, t0);
        }
        let s = l.report(t0 + REPORT_EVERY).expect("a summary");
        assert!(s.contains("read 50us (median), 99us (p99) after arrival"), "{s}");
        l.sent(t0, t0);
        let s = l.report(t0 + REPORT_EVERY * 2).expect("a summary");
        assert!(!s.contains("after arrival"), "the reads start over: {s}");
    }
}
