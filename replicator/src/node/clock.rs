//! The node's clock: the time the core's leases and deadlines are judged
//! by.
//!
//! `CLOCK_BOOTTIME`, not `Instant` (`CLOCK_MONOTONIC`): the monotonic
//! clock stops while the host or VM is suspended (an EC2 instance
//! hibernated, a VM paused or suspended), so a Primary resumed after its
//! peer took over judged its leases still running for what was left of
//! them, and served reads (and, running alone, acknowledged writes) beside
//! the new Primary (found by review, helper-108). The boot clock counts
//! the suspension: on resume the leases have run out. (Other nodes judge
//! the silence by their own clocks: a suspended witness or survivor only
//! waits longer.)

use std::time::Duration;

/// The boot clock now: time since boot, suspensions included.
pub(crate) fn boot_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec the call writes into; the clock id
    // is a constant the kernel has had since 2.6.39.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if r != 0 {
        // Not on Linux (or a kernel without it): the monotonic clock.
        return fallback();
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

fn fallback() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monotonic() -> Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: as in `boot_time`.
        assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) }, 0);
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// A host suspended for a day, as the node sees it: in a time
    /// namespace whose boot clock is a day ahead of its monotonic clock
    /// (`unshare --time --boottime 86400`), the node's clock is a day ahead
    /// of the monotonic one (`Instant` would not be). Runs this test
    /// binary again in such a namespace (root and util-linux's `unshare`;
    /// in CI they must be there).
    #[test]
    fn the_node_clock_counts_a_suspension() {
        const DAY: u64 = 86_400;
        if let Ok(offset) = std::env::var("TWINBLOCK_CLOCK_TEST_OFFSET") {
            let offset: u64 = offset.parse().unwrap();
            let gap = boot_time().saturating_sub(monotonic());
            assert!(
                gap + Duration::from_secs(1) >= Duration::from_secs(offset),
                "boot clock only {gap:?} ahead"
            );
            return;
        }
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new("unshare")
            .args(["--time", "--boottime", &DAY.to_string(), "--monotonic", "0"])
            .arg(&exe)
            .args(["--exact", "node::clock::tests::the_node_clock_counts_a_suspension"])
            .env("TWINBLOCK_CLOCK_TEST_OFFSET", DAY.to_string())
            .output();
        let out = match out {
            Ok(o) if o.status.success() => o,
            Ok(o)
                if std::env::var("CI").is_err()
                    && !String::from_utf8_lossy(&o.stdout).contains("boot clock only") =>
            {
                eprintln!(
                    "skipping: no time namespace here: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                return;
            }
            Ok(o) => panic!(
                "in a namespace a day ahead: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => {
                assert!(std::env::var("CI").is_err(), "unshare is required in CI: {e}");
                eprintln!("skipping: unshare: {e}");
                return;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("1 passed"), "the test did not run in the namespace: {text}");
    }
}
