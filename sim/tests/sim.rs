//! The simulator in CI: a budget of seeds must pass with the real core,
//! and each planted bug must be found within the same budget.

use twinblock_replicator::core::Plant;
use twinblock_sim::{replay_line, run_many, DEFAULT_STEPS};

/// Seeds per `cargo test` run (a few hundred steps each).
const CI_SEEDS: u64 = 2000;

fn steps() -> usize {
    std::env::var("SIM_STEPS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_STEPS)
}

#[test]
fn seeds_pass() {
    let t0 = std::time::Instant::now();
    let failed = run_many(0, CI_SEEDS, steps(), Plant::None, false);
    for o in &failed {
        let (v, recent) = o.failure.as_ref().expect("failure");
        for l in recent.iter().rev().take(40).rev() {
            eprintln!("  {l}");
        }
        eprintln!(
            "seed {} FAILED: {v}\n  replay: {}",
            o.seed,
            replay_line(o.seed, Plant::None, steps())
        );
    }
    eprintln!("{CI_SEEDS} seeds, {} failed ({:.1}s)", failed.len(), t0.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "{} of {CI_SEEDS} seeds failed", failed.len());
}

fn finds(plant: Plant) {
    let failed = run_many(0, CI_SEEDS, steps(), plant, true);
    let Some(o) = failed.first() else {
        panic!("the simulator did not find the planted bug {plant:?} in {CI_SEEDS} seeds");
    };
    let (v, _) = o.failure.as_ref().expect("failure");
    eprintln!(
        "{plant:?} found by seed {}: {v}\n  replay: {}",
        o.seed,
        replay_line(o.seed, plant, steps())
    );
}

#[test]
fn finds_early_ack() {
    finds(Plant::EarlyAckC);
}

#[test]
fn finds_skip_al_mark() {
    finds(Plant::SkipAlMark);
}

#[test]
fn finds_skip_bitmap_exchange() {
    finds(Plant::SkipBitmapExchange);
}

/// Resync chunks bypass the target's activity log (the source's bitmap
/// covers them until a flush on the target), so clearing and saving the
/// source's bits before that flush leaves blocks that differ uncovered.
#[test]
fn finds_clear_before_durable() {
    finds(Plant::ClearBeforeDurable);
}

/// The controller: a Primary that acknowledges without quorum is caught
/// (two nodes accepting writes, or a failover losing acknowledged writes).
#[test]
fn finds_ignore_quorum() {
    finds(Plant::IgnoreQuorum);
}

/// The controller: a Primary that never tells the witness its peer fell
/// behind lets an outdated node be promoted.
#[test]
fn finds_no_peer_fence() {
    finds(Plant::NoPeerFence);
}
