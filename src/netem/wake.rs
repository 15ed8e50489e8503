//! How long before a datagram's time the relay stops sleeping and spins:
//! the timer's lateness, learnt as the relay runs. A sleep wakes later on
//! a busy machine than on the idle one the start-up measurement saw (the
//! nodes' link threads poll before they sleep, so the relay's wake-up
//! must wait for a CPU): with the start-up figure alone (35 µs here) the
//! relay sent half of its datagrams 23 µs late or more under a QD1 load,
//! twice per round trip. Only timed sleeps teach it: with datagrams due
//! closer together than the estimate, it keeps its last value.

use std::time::Duration;

/// Wake-ups looked at before the estimate is renewed.
const WINDOW: usize = 256;
/// The longest spin asked for: a relay starved of CPU (a saturated
/// machine) wakes late by far more than its timer's lateness, which no
/// spin should chase.
const MAX: Duration = Duration::from_micros(200);

pub struct Early {
    cap: Duration,
    now: Duration,
    seen: Vec<u32>,
}

impl Early {
    /// Starts at `first` (the start-up measurement). Never more than half
    /// of `delay` (nor 200 µs): the relay then still sleeps for every
    /// datagram it holds, and goes on learning, instead of spinning
    /// through whole delays with nothing to learn from.
    pub fn new(first: Duration, delay: Duration) -> Early {
        let cap = MAX.min(delay / 2);
        Early { cap, now: first.min(cap), seen: Vec::with_capacity(WINDOW) }
    }

    /// How long before a datagram's time to stop sleeping.
    pub fn get(&self) -> Duration {
        self.now
    }

    /// A timed sleep woke `late` after the time it asked for. Every
    /// `WINDOW` wake-ups the estimate becomes their 75th percentile plus a
    /// quarter (at most the cap).
    pub fn observe(&mut self, late: Duration) {
        self.seen.push(late.as_micros().min(u32::MAX as u128) as u32);
        if self.seen.len() == WINDOW {
            self.seen.sort_unstable();
            let p75 = Duration::from_micros(self.seen[WINDOW * 3 / 4] as u64);
            self.now = (p75 + p75 / 4).min(self.cap);
            self.seen.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_the_timers_lateness_within_its_bounds() {
        let us = Duration::from_micros;
        let mut e = Early::new(us(30), us(500));
        assert_eq!(e.get(), us(30));
        // A busy machine: wake-ups 20-60 us late (p75: 50).
        for i in 0..WINDOW {
            e.observe(us(20 + (i as u64 % 41)));
        }
        assert!(e.get() > us(55) && e.get() < us(70), "{:?}", e.get());
        // Quiet again: down with it.
        for _ in 0..WINDOW {
            e.observe(us(2));
        }
        assert_eq!(e.get(), us(2) + us(2) / 4);
        // A stall does not make it spin for more than 200 us.
        for _ in 0..WINDOW {
            e.observe(Duration::from_millis(50));
        }
        assert_eq!(e.get(), MAX);
    }

    #[test]
    fn a_short_delay_caps_the_spin_at_half_of_it() {
        let us = Duration::from_micros;
        let mut e = Early::new(us(35), us(50));
        assert_eq!(e.get(), us(25));
        for _ in 0..WINDOW {
            e.observe(us(100));
        }
        assert_eq!(e.get(), us(25));
        assert_eq!(Early::new(us(35), Duration::ZERO).get(), Duration::ZERO);
    }
}
