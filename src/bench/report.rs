//! What `twinblock bench` measured, as it travels (JSON on the control
//! socket and on stdout with `--json`), the table people read, and the
//! recommendation: which mode the link affords under a latency budget.

use serde::{Deserialize, Serialize};

/// What the CLI asks of the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Params {
    /// Measuring time of each run (ms).
    pub run_ms: u64,
    /// Probe size of the mode runs (bytes).
    pub block: u32,
    /// The latency budget the recommendation is made for (µs).
    pub budget_us: u64,
}

/// One line of the node's answer stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// Run `step` of `total` starts (`what` says which).
    Progress { step: u32, total: u32, what: String },
    /// Everything, at the end.
    Done(Box<Report>),
    /// The bench stopped (the link went, the node changed role, ...).
    Failed(String),
}

/// Latency percentiles of one run (µs).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub min_us: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// The distribution: (percentile, µs) points, for plots.
    pub cdf: Vec<(f64, f64)>,
}

/// One run: a mode at a queue depth.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    /// "A", "B" or "C".
    pub mode: String,
    pub queue_depth: u32,
    pub block: u32,
    pub ops: u64,
    pub iops: f64,
    pub mib_s: f64,
    pub latency: Latency,
}

/// The link on its own, through the replication stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Link {
    /// Empty probes, one at a time: the round trip a replicated write pays.
    pub rtt: Latency,
    /// The QUIC layer's smoothed RTT estimate (`status`'s rtt_us).
    pub quic_rtt_us: Option<u64>,
    /// 1 MiB probes, 4 in flight, not written on either side.
    pub throughput_mib_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recommendation {
    /// "C", "B", "adaptive" or "A".
    pub mode: String,
    pub why: String,
    /// What C adds to a write at QD1 over A (median, µs).
    pub c_cost_us: f64,
    /// C's IOPS at QD32 as a fraction of A's.
    pub c_qd32_share: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub resource: String,
    pub node: String,
    pub peer: String,
    /// The resource's configured protocol (the bench measures all three).
    pub protocol: String,
    pub run_ms: u64,
    pub budget_us: u64,
    pub link: Link,
    pub runs: Vec<Run>,
    pub recommendation: Recommendation,
}

/// The mode to use under `budget_us`: the strongest whose QD1 p99 fits.
pub fn recommend(runs: &[Run], budget_us: u64) -> Recommendation {
    let budget = budget_us as f64;
    // A run that completed nothing says nothing.
    let qd1 = |m: &str| runs.iter().find(|r| r.mode == m && r.queue_depth == 1 && r.ops > 0);
    let qd32 = |m: &str| runs.iter().find(|r| r.mode == m && r.queue_depth == 32 && r.ops > 0);
    let p99 = |m: &str| qd1(m).map_or(f64::INFINITY, |r| r.latency.p99_us);
    let p50 = |m: &str| qd1(m).map_or(f64::INFINITY, |r| r.latency.p50_us);
    // Finite (JSON has no infinity): 0 when either run completed nothing.
    let c_cost_us = match (qd1("C"), qd1("A")) {
        (Some(c), Some(a)) => (c.latency.p50_us - a.latency.p50_us).max(0.0),
        _ => 0.0,
    };
    let c_qd32_share = match (qd32("C"), qd32("A")) {
        (Some(c), Some(a)) if a.iops > 0.0 => c.iops / a.iops,
        _ => 0.0,
    };
    let ms = |us: f64| format!("{:.2} ms", us / 1000.0);
    let (mode, why) = if p99("C") <= budget {
        (
            "C",
            format!(
                "C's p99 at QD1 is {} within the {} budget: every acknowledged write is on both nodes",
                ms(p99("C")),
                ms(budget)
            ),
        )
    } else if p99("B") <= budget {
        (
            "B",
            format!(
                "C's p99 at QD1 ({}) is over the {} budget, B's ({}) fits: a write is lost only if both nodes lose power together",
                ms(p99("C")),
                ms(budget),
                ms(p99("B"))
            ),
        )
    } else if p50("C") <= budget {
        (
            "adaptive",
            format!(
                "C's median at QD1 ({}) fits the {} budget but its p99 ({}) does not: adaptive runs C and goes Ahead while the link is slow",
                ms(p50("C")),
                ms(budget),
                ms(p99("C"))
            ),
        )
    } else {
        (
            "A",
            format!(
                "even C's median at QD1 ({}) is over the {} budget: A (asynchronous; a failover loses the writes still in flight)",
                ms(p50("C")),
                ms(budget)
            ),
        )
    };
    Recommendation { mode: mode.into(), why, c_cost_us, c_qd32_share }
}

fn ms(us: f64) -> String {
    format!("{:.3}", us / 1000.0)
}

/// The table people read.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "twinblock bench: resource {}, {} -> {} (configured protocol {}), {:.1} s per run, probes into the scratch area\n\n",
        r.resource,
        r.node,
        r.peer,
        r.protocol,
        r.run_ms as f64 / 1000.0
    ));
    let l = &r.link;
    s.push_str(&format!(
        "link  RTT p50 {} ms  p99 {} ms  p99.9 {} ms  min {} ms{}\n",
        ms(l.rtt.p50_us),
        ms(l.rtt.p99_us),
        ms(l.rtt.p999_us),
        ms(l.rtt.min_us),
        l.quic_rtt_us.map_or(String::new(), |u| format!("  (QUIC estimate {} ms)", ms(u as f64)))
    ));
    s.push_str(&format!(
        "link  throughput {:.0} MiB/s (1 MiB probes, 4 in flight)\n\n",
        l.throughput_mib_s
    ));
    s.push_str("mode  QD   size     IOPS    MiB/s   p50 ms   p99 ms  p99.9 ms\n");
    for run in &r.runs {
        s.push_str(&format!(
            "{:<4} {:>3} {:>6} {:>8.0} {:>8.1} {:>8} {:>8} {:>9}\n",
            run.mode,
            run.queue_depth,
            size(run.block),
            run.iops,
            run.mib_s,
            ms(run.latency.p50_us),
            ms(run.latency.p99_us),
            ms(run.latency.p999_us)
        ));
    }
    let rec = &r.recommendation;
    s.push_str(&format!(
        "\nrecommendation for a {} ms budget: protocol {}\n  {}\n",
        ms(r.budget_us as f64),
        rec.mode,
        rec.why
    ));
    s.push_str(&format!(
        "  C costs {} ms per write over A at QD1, and reaches {:.0}% of A's IOPS at QD32\n",
        ms(rec.c_cost_us),
        rec.c_qd32_share * 100.0
    ));
    s
}

fn size(b: u32) -> String {
    if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{}M", b >> 20)
    } else if b >= 1024 && b % 1024 == 0 {
        format!("{}k", b >> 10)
    } else {
        b.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mode: &str, qd: u32, p50: f64, p99: f64, iops: f64) -> Run {
        Run {
            mode: mode.into(),
            queue_depth: qd,
            block: 4096,
            ops: 100,
            iops,
            mib_s: iops * 4096.0 / 1048576.0,
            latency: Latency { p50_us: p50, p99_us: p99, ..Latency::default() },
        }
    }

    fn runs(c: (f64, f64), b: (f64, f64)) -> Vec<Run> {
        vec![
            run("A", 1, 50.0, 90.0, 20000.0),
            run("B", 1, b.0, b.1, 2000.0),
            run("C", 1, c.0, c.1, 1500.0),
            run("A", 32, 500.0, 900.0, 60000.0),
            run("C", 32, 900.0, 2000.0, 15000.0),
        ]
    }

    #[test]
    fn the_strongest_mode_that_fits_the_budget_is_recommended() {
        let r = recommend(&runs((400.0, 800.0), (300.0, 700.0)), 1000);
        assert_eq!(r.mode, "C");
        assert!((r.c_cost_us - 350.0).abs() < 1e-9);
        assert!((r.c_qd32_share - 0.25).abs() < 1e-9);
        assert_eq!(recommend(&runs((400.0, 1200.0), (300.0, 900.0)), 1000).mode, "B");
        assert_eq!(recommend(&runs((400.0, 3000.0), (300.0, 2500.0)), 1000).mode, "adaptive");
        assert_eq!(recommend(&runs((4000.0, 9000.0), (3000.0, 8000.0)), 1000).mode, "A");
    }

    #[test]
    fn a_missing_run_never_recommends_that_mode() {
        let only_a = vec![run("A", 1, 50.0, 90.0, 20000.0)];
        assert_eq!(recommend(&only_a, 1000).mode, "A");
    }

    #[test]
    fn a_run_that_completed_nothing_still_gives_a_report_the_cli_reads() {
        // C at QD1 completed no probe in its window (a link slower than
        // --time): the report must still travel as JSON (serde_json writes
        // an infinite float as null, which the CLI cannot read back).
        let mut c1 = run("C", 1, 0.0, 0.0, 0.0);
        c1.ops = 0;
        let rec = recommend(&[run("A", 1, 50.0, 90.0, 20000.0), c1], 1000);
        let back: Recommendation =
            serde_json::from_str(&serde_json::to_string(&rec).unwrap()).expect("reads back");
        assert_eq!(back, rec);
        assert_eq!(rec.mode, "A");
    }

    #[test]
    fn the_table_shows_every_run_and_the_recommendation() {
        let rs = runs((400.0, 800.0), (300.0, 700.0));
        let report = Report {
            resource: "r0".into(),
            node: "a".into(),
            peer: "b".into(),
            protocol: "C".into(),
            run_ms: 2000,
            budget_us: 1000,
            link: Link { rtt: Latency::default(), quic_rtt_us: Some(250), throughput_mib_s: 300.0 },
            recommendation: recommend(&rs, 1000),
            runs: rs,
        };
        let t = render(&report);
        assert!(t.contains("protocol C"), "{t}");
        assert_eq!(t.lines().filter(|l| l.starts_with("C ") || l.starts_with("A ")).count(), 4);
        let back: Report = serde_json::from_str(&serde_json::to_string(&report).unwrap()).unwrap();
        assert_eq!(back, report);
    }
}
