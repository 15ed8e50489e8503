//! Exponential backoff with jitter, bounded by an overall deadline.

use std::time::{Duration, Instant};

/// The least time worth one more attempt.
const LAST_TRY: Duration = Duration::from_millis(100);

/// Delays grow from `first` by doubling up to `max`; each delay is drawn
/// uniformly from [d/2, d] ("equal jitter"), so a crowd of nodes retrying
/// the same throttled API spreads out.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
    deadline: Instant,
    rng: u64,
}

impl Backoff {
    pub(crate) fn new(first: Duration, max: Duration, deadline: Instant) -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x2545_F491_4F6C_DD1D);
        Backoff { next: first, max, deadline, rng: seed | 1 }
    }

    fn random(&mut self) -> u64 {
        // xorshift64: jitter needs no cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The next delay, shortened to leave [`LAST_TRY`] for one more attempt
    /// before the deadline; None when not even that is left.
    pub(crate) fn next_delay(&mut self) -> Option<Duration> {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        let jitter = Duration::from_nanos(self.random() % (half.as_nanos() as u64).max(1));
        let delay = half + jitter;
        let left = self.deadline.saturating_duration_since(Instant::now());
        (left > LAST_TRY).then(|| delay.min(left - LAST_TRY))
    }

    /// Sleeps the next delay; false when the deadline leaves no room.
    pub(crate) async fn wait(&mut self) -> bool {
        match self.next_delay() {
            Some(d) => {
                tokio::time::sleep(d).await;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_stops_at_the_deadline() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(400),
            Instant::now() + Duration::from_secs(3600),
        );
        let d: Vec<_> = (0..5).map(|_| b.next_delay().unwrap()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[1] >= Duration::from_millis(100) && d[1] <= Duration::from_millis(200));
        assert!(d[4] >= Duration::from_millis(200) && d[4] <= Duration::from_millis(400));
        // A long delay is cut to leave time for a last try.
        let mut b = Backoff::new(
            Duration::from_secs(10),
            Duration::from_secs(10),
            Instant::now() + Duration::from_secs(1),
        );
        assert!(b.next_delay().unwrap() <= Duration::from_millis(900));
        let mut b = Backoff::new(
            Duration::from_secs(10),
            Duration::from_secs(10),
            Instant::now() + Duration::from_millis(50),
        );
        assert_eq!(b.next_delay(), None);
    }
}
