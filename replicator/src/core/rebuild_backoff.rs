//! A disk that fails again while it is rebuilt from its peer (the target
//! of a resync into it) takes its next rebuild later and later: a cause
//! that persists (a full file system, a disk that fails every write) made
//! the node run the full sync again about once a second, each resending
//! the data up to the failure point (review, helper-120). DRBD detaches
//! and stops there; a `Failed` disk here still takes its rebuild by
//! itself, only paced: the first retry at once (a passing error costs
//! nothing), then after [`FIRST`], doubling up to [`MAX`]. Until then the
//! node takes no link ([`Core::link_refused`] says why and when). A
//! completed rebuild clears the count; so does `connect` (the operator
//! fixed the disk: it retries now), and a restart (the count is not
//! saved).
//!
//! The cap: at 60 s a persisting cause costs one partial full sync a
//! minute (the link and the peer's disk mostly idle), and a disk freed
//! without an operator's `connect` is rebuilt within a minute.

use std::time::Duration;

use super::types::Time;
use super::Core;

/// The wait after the second failed rebuild in a row (the first retries
/// at once).
pub const FIRST: Duration = Duration::from_secs(2);
/// The longest wait.
pub const MAX: Duration = Duration::from_secs(60);

/// Where the countdown starts in the refusal's reason: the same reason
/// with another countdown is the same refusal (`link.rs` logs it once).
pub const COUNTDOWN: &str = ": the next rebuild in ";

/// Whether two reasons for refusing a link are the same refusal, the
/// countdown of a rebuild's wait aside (a repeated one is logged once),
/// and the numbers in them too: a certificate refused as expired (or not
/// valid yet) names the verification time and the seconds since (until)
/// its bound, new at every handshake (before, each was logged as news, a
/// WARN line per dial on both nodes for as long as the certificate stayed
/// expired: review, helper-137).
pub fn same_refusal(a: &str, b: &str) -> bool {
    let shape = |s: &str| {
        let s = s.split(COUNTDOWN).next().unwrap_or_default();
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if !c.is_ascii_digit() {
                out.push(c);
            } else if !out.ends_with('#') {
                out.push('#');
            }
        }
        out
    };
    shape(a) == shape(b)
}

/// The wait before the next rebuild after `failures` failed ones in a row:
/// none after the first, then [`FIRST`], doubling, at most [`MAX`].
pub fn delay(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => FIRST.saturating_mul(1u32 << (n - 2).min(16)).min(MAX),
    }
}

/// Failed rebuilds in a row and when the next one may start.
#[derive(Debug, Default)]
pub(crate) struct RebuildBackoff {
    failures: u32,
    retry_at: Option<Time>,
    /// Why the last one failed.
    why: String,
}

impl Core {
    /// This disk failed while it was the target of a resync: one more
    /// failed rebuild. Returns the wait before the next one.
    pub(crate) fn rebuild_failed(&mut self, why: &str) -> Duration {
        let b = &mut self.rebuild;
        b.failures = b.failures.saturating_add(1);
        let wait = delay(b.failures);
        b.retry_at = (!wait.is_zero()).then_some(self.now + wait);
        b.why = why.to_string();
        wait
    }

    /// A rebuild completed: the next failure starts the count again.
    pub(crate) fn rebuild_completed(&mut self) {
        self.rebuild = RebuildBackoff::default();
    }

    /// `connect`: the operator fixed the disk; the next rebuild starts now.
    pub(crate) fn rebuild_retry_now(&mut self) {
        self.rebuild = RebuildBackoff::default();
    }

    /// Failed rebuilds in a row (cleared by a completed one, or `connect`).
    pub fn rebuild_failures(&self) -> u32 {
        self.rebuild.failures
    }

    /// When the next rebuild may start, while that is still ahead: the
    /// node takes no link until then.
    pub fn rebuild_retry_at(&self) -> Option<Time> {
        self.rebuild.retry_at.filter(|t| *t > self.now)
    }

    /// Why the node waits before its next rebuild, and for how long.
    pub(crate) fn rebuild_wait(&self) -> Option<String> {
        let at = self.rebuild_retry_at()?;
        let left = at.saturating_sub(self.now);
        Some(format!(
            "the local disk failed again while being rebuilt from the peer ({} failed rebuilds in \
             a row; last: {}){COUNTDOWN}{:.1}s (waits {:?} at most; `connect` here retries now)",
            self.rebuild.failures,
            self.rebuild.why,
            left.as_secs_f64(),
            MAX,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_doubles_from_the_second_failure_and_is_capped() {
        let s = |n| delay(n).as_secs();
        assert_eq!([s(0), s(1), s(2), s(3), s(4), s(5), s(6), s(7)], [0, 0, 2, 4, 8, 16, 32, 60]);
        assert_eq!(delay(u32::MAX), MAX);
    }
}
