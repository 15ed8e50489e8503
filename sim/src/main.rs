//! `twinblock-sim [--seeds N] [--seed S] [--first F] [--steps K] [--plant NAME] [--trace]`
//! (scripts/sim.sh runs it in release). The plant may also come from
//! TWINBLOCK_PLANT. Prints a replay line per failing seed and, last,
//! `N seeds, N failed`; exits non-zero when a seed failed.

use std::process::ExitCode;
use std::time::Instant;

use twinblock_replicator::core::Plant;
use twinblock_sim::{replay_line, run_seed};

fn main() -> ExitCode {
    let mut seeds = 1000u64;
    let mut first = 0u64;
    let mut single = None;
    let mut steps = twinblock_sim::DEFAULT_STEPS;
    let mut plant: Plant = std::env::var("TWINBLOCK_PLANT")
        .ok()
        .map_or(Ok(Plant::None), |p| p.parse())
        .unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2)
        });
    let mut trace = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("{name} needs a value");
                std::process::exit(2)
            })
        };
        let num = |s: String| -> u64 {
            s.parse().unwrap_or_else(|_| {
                eprintln!("not a number: {s}");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--seeds" => seeds = num(val("--seeds")),
            "--seed" => single = Some(num(val("--seed"))),
            "--first" => first = num(val("--first")),
            "--steps" => steps = num(val("--steps")) as usize,
            "--plant" => {
                plant = val("--plant").parse().unwrap_or_else(|e| {
                    eprintln!("{e}");
                    std::process::exit(2)
                })
            }
            "--trace" => trace = true,
            "-h" | "--help" => {
                println!("twinblock-sim [--seeds N] [--seed S] [--first F] [--steps K] [--plant NAME] [--trace]");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("unknown argument {a}");
                return ExitCode::from(2);
            }
        }
    }
    let list: Vec<u64> = match single {
        Some(s) => vec![s],
        None => (first..first + seeds).collect(),
    };
    let t0 = Instant::now();
    let mut failed = 0u64;
    let mut total = twinblock_sim::Stats::default();
    for &seed in &list {
        let o = run_seed(
            seed,
            steps,
            plant,
            trace || single.is_some() && std::env::var_os("SIM_TRACE").is_some(),
        );
        let st = o.stats;
        total.acked += st.acked;
        total.failed_disk_acks += st.failed_disk_acks;
        total.failed_disk_errors += st.failed_disk_errors;
        total.landed_failed_persists += st.landed_failed_persists;
        total.witness_failed_saves += st.witness_failed_saves;
        total.witness_landed_failed_saves += st.witness_landed_failed_saves;
        total.witness_stateless_restarts += st.witness_stateless_restarts;
        total.takeovers_from_primary += st.takeovers_from_primary;
        total.witness_failover_crashes += st.witness_failover_crashes;
        total.pauses += st.pauses;
        total.paused_deposed += st.paused_deposed;
        total.witness_late += st.witness_late;
        total.witness_stale += st.witness_stale;
        total.witness_blind_renewals += st.witness_blind_renewals;
        total.witness_blind_claims += st.witness_blind_claims;
        total.confirmed += st.confirmed;
        total.promotions_checked += st.promotions_checked;
        total.a_behind_crashes += st.a_behind_crashes;
        total.held_forced += st.held_forced;
        total.forces_given_up += st.forces_given_up;
        total.forces_given_up_saving += st.forces_given_up_saving;
        total.lost_conf_crashes += st.lost_conf_crashes;
        total.power_checks += st.power_checks;
        total.peer_durable_checks += st.peer_durable_checks;
        total.i2_checks += st.i2_checks;
        total.i3_diff_blocks += st.i3_diff_blocks;
        total.i6_checks += st.i6_checks;
        total.i6_nontrivial += st.i6_nontrivial;
        total.syncs_done += st.syncs_done;
        total.own_checks += st.own_checks;
        total.kept_checks += st.kept_checks;
        total.steps += st.steps;
        total.connected_steps += st.connected_steps;
        total.primary_steps += st.primary_steps;
        total.split_brain_steps += st.split_brain_steps;
        total.target_steps += st.target_steps;
        total.rebuild_wait_steps += st.rebuild_wait_steps;
        total.syncs_started += st.syncs_started;
        total.liveness_checks += st.liveness_checks;
        total.hung_ios += st.hung_ios;
        total.ctl_promotions += st.ctl_promotions;
        total.no_quorum_steps += st.no_quorum_steps;
        total.mode_switches += st.mode_switches;
        total.ahead_steps += st.ahead_steps;
        total.catch_ups_done += st.catch_ups_done;
        total.adaptive_ms += st.adaptive_ms;
        total.max_switches_window = total.max_switches_window.max(st.max_switches_window);
        total.outdated_by_primary += st.outdated_by_primary;
        total.hole_probes += st.hole_probes;
        total.hole_reads += st.hole_reads;
        if let Some((v, recent)) = o.failure {
            failed += 1;
            if single.is_some() || failed <= 3 {
                for l in &recent {
                    println!("  {l}");
                }
            }
            println!("seed {seed} FAILED: {v}");
            println!("  replay: {}", replay_line(seed, plant, steps));
        }
    }
    eprintln!("({:.1}s) coverage: {total:?}", t0.elapsed().as_secs_f64());
    println!("{} seeds, {} failed", list.len(), failed);
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
