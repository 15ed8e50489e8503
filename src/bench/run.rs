//! The measurement, in the daemon: probes through the node's replication
//! path (`Node::probe`: same stream, same acknowledgements, same store
//! calls, into the scratch area on both nodes), QD workers per run, one
//! histogram each (hdrhistogram), merged at the end of the run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::task::JoinSet;
use twinblock_replicator::core::ProbeMode;
use twinblock_replicator::protocol::wire::BENCH_AREA;
use twinblock_replicator::Node;

use super::report::{recommend, Latency, Line, Link, Params, Report, Run};

/// Percentiles kept for the plots.
const CDF_POINTS: [f64; 22] = [
    0.0, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 95.0, 97.0, 98.0, 99.0,
    99.5, 99.7, 99.9, 99.95, 99.99, 100.0,
];

/// One bench at a time per process (two would measure each other).
static RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Holds [`RUNNING`] while a bench runs.
pub struct Slot(());

impl Slot {
    pub fn take() -> Result<Slot, String> {
        RUNNING
            .compare_exchange(
                false,
                true,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .map(|_| Slot(()))
            .map_err(|_| "a bench is already running on this node".to_string())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// Warm-up before each run's measuring time (not counted).
const WARMUP: Duration = Duration::from_millis(200);

pub(crate) fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn latency(h: &Histogram<u64>) -> Latency {
    let q = |p: f64| h.value_at_quantile(p / 100.0) as f64;
    Latency {
        min_us: h.min() as f64,
        mean_us: h.mean(),
        p50_us: q(50.0),
        p99_us: q(99.0),
        p999_us: q(99.9),
        max_us: h.max() as f64,
        cdf: CDF_POINTS.iter().map(|&p| (p, q(p))).collect(),
    }
}

/// What one run measured.
struct Measured {
    hist: Histogram<u64>,
    ops: u64,
    elapsed: Duration,
}

/// `qd` probes in flight for `run` (after a warm-up), each `block` bytes.
async fn measure(
    node: &Arc<Node>,
    mode: ProbeMode,
    qd: u32,
    block: u32,
    run: Duration,
) -> Result<Measured, String> {
    let slots = if block == 0 { 1 } else { (BENCH_AREA / block as u64).max(1) };
    let data = Bytes::from((0..block).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>());
    let start = Instant::now();
    let counting = start + WARMUP;
    let end = counting + run;
    let mut tasks = JoinSet::new();
    for w in 0..qd as u64 {
        let (node, data) = (node.clone(), data.clone());
        tasks.spawn(async move {
            let mut h = histogram();
            let mut ops = 0u64;
            // Each worker walks its own stride of the scratch area.
            let mut slot = w * (slots / qd as u64).max(1);
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    break;
                }
                let offset = (slot % slots) * block as u64;
                slot += 1;
                if let Err(e) = node.probe(mode, offset, data.clone()).await {
                    // Refused mid-run (`secondary`, `verify`, the link
                    // went...): say why, not "not connected".
                    return Err(node.bench_refusal().unwrap_or_else(|| e.to_string()));
                }
                if t0 >= counting {
                    let us = t0.elapsed().as_micros().max(1) as u64;
                    h.saturating_record(us);
                    ops += 1;
                }
            }
            Ok::<_, String>((h, ops))
        });
    }
    let mut hist = histogram();
    let mut ops = 0;
    while let Some(r) = tasks.join_next().await {
        let (h, n) = r.map_err(|e| format!("a probe task failed: {e}"))??;
        hist.add(&h).map_err(|e| format!("merging histograms: {e}"))?;
        ops += n;
    }
    if ops == 0 {
        // A report of this run would say 0 ms and recommend from nothing.
        return Err(format!(
            "no probe completed within the {run:?} measuring time (after a {WARMUP:?} \
             warm-up): a round trip is longer; give a longer --time"
        ));
    }
    let elapsed = Instant::now().min(end).saturating_duration_since(counting);
    // What this run left in flight (protocol A's backlog) is not the next
    // run's: an empty C probe returns once everything before it is done.
    // It writes both scratch areas: its failure is the next write run's to
    // report (a link run writes nothing; a lost link fails the next run).
    if let Err(e) = node.probe(ProbeMode::C, 0, Bytes::new()).await {
        tracing::debug!("draining the run's probes: {e}");
    }
    Ok(Measured { hist, ops, elapsed })
}

fn mode_name(m: ProbeMode) -> &'static str {
    match m {
        ProbeMode::A => "A",
        ProbeMode::B => "B",
        ProbeMode::C => "C",
        ProbeMode::Link => "link",
    }
}

/// Runs the whole bench; `tell` gets each progress line.
pub async fn bench(
    node: Arc<Node>,
    p: Params,
    _slot: Slot,
    mut tell: impl FnMut(Line),
) -> Result<Report, String> {
    if let Some(why) = node.bench_refusal() {
        return Err(why);
    }
    if let Some(why) = super::block_refusal(p.block.into()) {
        return Err(why);
    }
    // Until it ends, adaptive mode may stop it (writes behind its probes
    // waiting past the budget).
    let _run = node.bench_begin();
    // (The area stays reserved through the link runs, which write none.)
    let _hold = node.bench_hold();
    let run = Duration::from_millis(p.run_ms).clamp(super::MIN_TIME, super::MAX_TIME);
    let plan: Vec<(ProbeMode, u32)> = [ProbeMode::A, ProbeMode::B, ProbeMode::C]
        .into_iter()
        .flat_map(|m| [(m, 1), (m, 32)])
        .collect();
    let total = plan.len() as u32 + 2;
    let span = tracing::info_span!("bench");
    let _g = span.enter();
    tracing::info!(run_ms = p.run_ms, block = p.block, "bench starts");

    tell(Line::Progress { step: 1, total, what: "link round trip (empty probes, QD1)".into() });
    // An empty probe measures the round trip alone.
    let rtt = measure(&node, ProbeMode::Link, 1, 0, run / 2)
        .await
        .map_err(|e| format!("link round trip: {e}"))?;
    // Taken now: the throughput run fills the queues, which inflates it.
    let quic_rtt_us = node.status().rtt_us;
    tell(Line::Progress { step: 2, total, what: "link throughput (1 MiB probes, QD4)".into() });
    let tput = measure(&node, ProbeMode::Link, 4, 1 << 20, run)
        .await
        .map_err(|e| format!("link throughput: {e}"))?;
    let link = Link {
        rtt: latency(&rtt.hist),
        quic_rtt_us,
        throughput_mib_s: tput.ops as f64 / tput.elapsed.as_secs_f64().max(1e-9),
    };
    let mut runs = Vec::new();
    for (i, (mode, qd)) in plan.into_iter().enumerate() {
        let what = format!("protocol {} at QD{qd} ({} B probes)", mode_name(mode), p.block);
        tell(Line::Progress { step: i as u32 + 3, total, what: what.clone() });
        let m = measure(&node, mode, qd, p.block, run).await.map_err(|e| format!("{what}: {e}"))?;
        let secs = m.elapsed.as_secs_f64().max(1e-9);
        let iops = m.ops as f64 / secs;
        runs.push(Run {
            mode: mode_name(mode).into(),
            queue_depth: qd,
            block: p.block,
            ops: m.ops,
            iops,
            mib_s: iops * p.block as f64 / 1048576.0,
            latency: latency(&m.hist),
        });
    }
    let recommendation = recommend(&runs, p.budget_us);
    tracing::info!(recommended = %recommendation.mode, "bench done");
    Ok(Report {
        resource: node.res.name.clone(),
        node: node.me.name.clone(),
        peer: node.peer.name.clone(),
        protocol: node.res.protocol.to_string(),
        run_ms: run.as_millis() as u64,
        budget_us: p.budget_us,
        link,
        runs,
        recommendation,
    })
}
