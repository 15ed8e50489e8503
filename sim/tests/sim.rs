//! The simulator in CI: a budget of seeds must pass with the real core,
//! and each planted bug must be found within the same budget.

use twinblock_replicator::core::Plant;
use twinblock_sim::{replay_line, run_many, run_seed, Violation, DEFAULT_STEPS};

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
    finds_in(plant, CI_SEEDS, steps());
}

/// As [`finds`], for plants whose course needs longer runs: up to 1,500
/// seeds of 5,000 steps. (A protocol-B receipt that waits for the
/// Secondary's activity log made the states `union-by-name` and
/// `resume-any-full-sync` feed on rarer in short runs: found by one
/// seed in 5,000 or so at 1,000 steps, by one in 60 to 150 at 5,000;
/// since a Secondary's FLUSH no longer waits for its peer's writes,
/// `union-by-name` by 13 of 3,000, the first at seed 630.)
fn finds_long(plant: Plant) {
    finds_in(plant, 1500, 5000);
}

/// What `plant` makes seed `seed` fail on (5,000 steps), once the real
/// core has passed the same seed.
fn planted_on(seed: u64, plant: Plant) -> Option<Violation> {
    let o = run_seed(seed, 5000, Plant::None, false);
    if let Some((v, _)) = &o.failure {
        panic!("seed {seed} FAILED: {v}\n  replay: {}", replay_line(seed, Plant::None, 5000));
    }
    run_seed(seed, 5000, plant, false).failure.map(|(v, _)| v)
}

fn finds_in(plant: Plant, seeds: u64, steps: usize) {
    let failed = run_many(0, seeds, steps, plant, true);
    let Some(o) = failed.first() else {
        panic!("the simulator did not find the planted bug {plant:?} in {seeds} seeds of {steps} steps");
    };
    let (v, _) = o.failure.as_ref().expect("failure");
    eprintln!(
        "{plant:?} found by seed {}: {v}\n  replay: {}",
        o.seed,
        replay_line(o.seed, plant, steps)
    );
}

/// The first of `seeds` seeds of `steps` steps from 0 that catches
/// `plant` (for plants caught by few seeds, where a hard-coded seed moves
/// with every change of the core's course); the real core must pass it.
fn first_catch(plant: Plant, seeds: u64, steps: usize) -> Violation {
    let failed = run_many(0, seeds, steps, plant, true);
    let Some(o) = failed.into_iter().next() else {
        panic!("the planted {plant:?} is not caught in {seeds} seeds of {steps} steps");
    };
    let (v, _) = o.failure.expect("failure");
    eprintln!("{plant:?} found by seed {}: {v}", o.seed);
    let real = run_seed(o.seed, steps, Plant::None, false).failure.map(|(v, _)| v.to_string());
    assert_eq!(real, None, "the real core fails seed {}", o.seed);
    v
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
/// (two nodes accepting writes, or a failover losing acknowledged writes)
/// in these 1,000-step seeds: 4 to 6 of the 6,000 from 0 (1 in 10 before
/// `primary --force` waited out a peer lease the witness cannot see), so
/// the search goes on to the first that catches it, where hard-coded
/// seeds moved with every change of the core's course; the real core
/// passes that seed.
#[test]
fn finds_ignore_quorum() {
    first_catch(Plant::IgnoreQuorum, 8000, 1000);
}

/// A node that says its reads are settled while writes it received from
/// its peer still wait to be issued: a Primary promoted right after its
/// link dropped issues such a write after a read could have seen the older
/// data (I7). Caught by about 1 seed in 40 of 3,000 steps (seed 32 the
/// first today); the search goes on to the first of 1,000 that catches it
/// so, where a hard-coded seed would move with the core's course; the real
/// core passes that seed.
#[test]
fn finds_reads_before_received() {
    let v = first_catch(Plant::ReadsBeforeReceived, 1000, 3000);
    assert_eq!(v.rule, "I7", "another rule caught it: {v}");
}

/// A sync source that reads blocks for the resync while writes it
/// received still wait in its queue: the target gets the older block, the
/// write lands on the source alone (I2 or I3). It needs a Secondary's
/// activity-log update that lags across a failover and the reconnect (the
/// slow-metadata seeds, 1 in 16 of the controller's): 4 of 10,000 seeds
/// of 3,000 steps when it was added (200 the first). Since a Primary alone
/// renews its lease during `on_demote` (this session's courses), none of
/// the first 12,000 of 3,000 steps; seed 1352 of 5,000 steps, the first of
/// 4,000 that catches it (I3), until the disks' holes moved the courses
/// (none of the first 4,000 since); seed 6764 of 5,000 steps (I2), the
/// first slow-metadata seed from 4,000 that caught it until a failed
/// force was undone; seed 6968 (4 of the 16,000 from 6,000) until a
/// promotion's hooks waited for its record; seed 2120 until a forced
/// promotion's record was saved in two phases (2 of the first 3,000);
/// seed 5669 until every claim's grant could be undone at the witness
/// (2 of the first 8,000); seed 8120 since (1 of the 6,000 from 3,000),
/// replayed here.
#[test]
fn finds_resync_before_received() {
    let v = planted_on(8120, Plant::ResyncBeforeReceived).expect("not caught");
    assert!(matches!(v.rule, "I2" | "I3"), "another rule caught it: {v}");
}

/// The controller: a Primary that never tells the witness its peer fell
/// behind lets an outdated node be promoted.
#[test]
fn finds_no_peer_fence() {
    finds(Plant::NoPeerFence);
}

/// Seeds that failed once, beyond the budget's steps, replayed as found:
/// 20306 (5,000 steps) left a Secondary Outdated and Behind for ever after
/// an adaptive catch-up (the Primary started a new generation when it
/// released writes lost on going Ahead, though the resync had brought
/// the peer everything); 105355 (a Primary whose disk hung was detached
/// and answered writes OK on the strength of a peer that was a resync
/// target, an incomplete copy; its own record of the detachment could not
/// be saved on the hung device, and after a power loss it came back
/// UpToDate without them: I1); 102896 (a Secondary that had run alone,
/// told the witness so, and was synced with its peer since, lost its disk
/// to a read error and was rebuilt from its peer's same generation: the
/// rebuild forgot what it had told the witness, whose data-rule then
/// refused it, and with its peer refused too the pair had no Primary);
/// 500836 (two created disks, one forced while connected, met again on
/// two generations after a FLUSH in flight at a crash started one for no
/// block: in sync by their data, the adaptive Secondary saw the Primary
/// on a generation it did not hold and stayed Behind for good).
/// Seed 17300435 (20,000 steps, found by review, helper-105): b, Primary
/// cut off with writes in flight to a, started a new generation when the
/// link went ("the peer lost") and held those writes (no quorum); a took
/// over and acknowledged a write; the witness lost its state. Past its
/// quiet period b's renewal was granted: the two generations had "grown
/// apart" (no `Refusal::Behind`), though b's held nothing it acknowledged,
/// and b answered its held writes OK after a's (I4).
#[test]
fn a_primary_whose_new_generation_holds_nothing_acknowledged_is_not_renewed_beside_a_newer_one() {
    let o = run_seed(17300435, 20000, Plant::None, false);
    if let Some((v, _)) = &o.failure {
        panic!("FAILED: {v}\n  replay: {}", replay_line(17300435, Plant::None, 20000));
    }
}

#[test]
fn regression_seeds_pass() {
    const SEEDS: &[(u64, usize)] = &[
        // A replaced disk's record saying `Failed` failed (ENOSPC) and
        // landed; `primary --force` then held in its first record the
        // record before, UpToDate: a start would have taken the blank
        // disk for good data (I3; the two-phase forced record, found by
        // the sweep after helper-162's review).
        (35411499, 5000),
        // The controller's claim, refused while the operator's forced one
        // was out, ended "the claim out": b claimed again before the
        // forced grant's answer came, the witness undid the grant on
        // hearing its holder claim, and b reigned on a lease the witness
        // had ended (I4; `core::tests::ctl`
        // `a_refused_claim_answered_while_a_forced_claim_is_out_sends_no_new_claim`).
        (35800592, 20000),
        // Both promoted in the same millisecond (the peer's force given
        // up): the handshake raised a's reign past b's, and the checker
        // took the raise for a new promotion whose hooks never ran (rule
        // `hooks`; the checker's fix, `promotions_hooked`).
        (35701007, 5000),
        (20306, 5000),
        (105355, 5000),
        (102896, 5000),
        (500836, 5000),
        // A fresh pair (never written), b forced while Inconsistent, its
        // link lost with two FLUSHes in flight: their replies, released
        // during the next handshake, started a generation after b's hello
        // had named the last one; a adopted that one and, adaptive, took
        // b's next State for a Primary gone Ahead: a SyncTarget for ever
        // beside an Established Primary (liveness).
        (34702616, 5000),
        // The last Primary, promoted while its peer still had its write
        // in flight, lost power: the union went from it (before `cache_lost`).
        (5000239, 100000),
        // A sync target's mix is no copy to keep (the checker's exclusion).
        (2000524, 5000),
        // A Primary demoted with a B write in flight answered it OK from
        // its own disk; its peer, promoted apart, resynced over it.
        (1202562, 5000),
        // A B Secondary stopped with writes received and not written,
        // promoted before it reconnected, was the union's source.
        (2200234, 5000),
        // A B Primary's process crash flagged like a lost cache made it the
        // target of a peer that then lost power.
        (2201685, 5000),
        // A B Secondary acknowledged receipt before its activity log named
        // the write's extent: a power loss there left no evidence.
        (7205784, 5000),
        // Protocol A: a Primary's lost page cache ranked its peer's older
        // copies over its own durable (FUA) write.
        (7205678, 5000),
        // A demoted B Primary flagged for its own writes after a process
        // crash became the target of a peer that then lost power (review).
        (8201423, 20000),
        // Two disks never written: a Primary's disk failed on a generation
        // it never wrote, and the rebuild from its peer forgot that
        // generation, which the witness then refused its claim for.
        (8509334, 5000),
        // A write of an older reign, stalled in the link, applied over a
        // node's own newer reign on one session: the disks differed.
        (9102746, 5000),
        // A node with discard-my-data pending claimed; rebuilt from the
        // peer it outdated, neither could be promoted.
        (9147131, 5000),
        // A generation a fresh peer took at a handshake its giver never
        // finished named two data; an acknowledged write was lost (review).
        (9402788, 20000),
        // Both nodes lost power on one generation; the Secondary had
        // flushed a write the Primary never flushed, and the last Primary
        // was the source: what NBD allows (the checker's exclusion).
        (9570026, 5000),
        // A renewal granted before a release, answered after the node was
        // forced Primary again: a lease while its peer held the right.
        (10264532, 20000),
        // A forced Primary whose grants' answers were lost renewed as
        // forced; cut off, its peer took over and wrote; a witness
        // restarted without its state renewed it beside the newer data.
        (30300455, 5000),
        // The checker's residual limit: a ran alone, its node was replaced
        // and rebuilt from b, the witness lost its state and granted a
        // (then b): what a acknowledged before it was replaced is gone.
        (30401336, 20000),
        // The checker's sampling: a deposed node met its replaced peer in
        // a handshake that a crash's last frames finished, the link gone
        // in the same step; the met went unseen and its reads were taken
        // for reads apart.
        (30500045, 20000),
        // The checker's residual limit: b, Primary cut off, a took over and
        // acknowledged writes alone, then a's node was replaced; b served
        // reads once the new a linked: what a acknowledged is gone with
        // its disk, b's reads lack nothing that exists.
        (31201889, 5000),
        // A node that ran alone without writing, its disk failed, was
        // rebuilt from a peer that moved on from its very generation; the
        // rebuild forgot what it told the witness, which refused it.
        (10746239, 5000),
        // A rebuild on the node's own generation cut by its disk failing
        // again forgot what it told the witness, which refused it.
        (10753625, 5000),
        // A Primary whose disk failed while connected (a generation started
        // at the failure, nothing answered on it) was rebuilt from its peer
        // on the generation it left, its own; the rebuild forgot what it
        // told the witness (the peer's history did not name it), which
        // refused it.
        (31401593, 5000),
        // The same node, its rebuild now dropping the failed generation
        // from its record as it starts: it dropped it from what it told
        // the witness too, where the renewal that fenced the peer at the
        // failure had named it as the generation run alone; the witness
        // refused the rebuilt node by its data (review helper-153).
        (33100262, 5000),
        // The checker's `hooks` rule (not a core bug): a forced
        // promotion's record save failed but landed on disk; the core,
        // told it failed, retried, and the rule took the record on disk
        // for one the core knew saved.
        (34101710, 5000),
        // A rebuild from a peer on the node's own generation, started over
        // after the source lost power before naming the full sync durably,
        // forgot what it told the witness, which refused it (found with
        // the Outdate frame, which moved the course's draws).
        (11400671, 5000),
        // A Secondary outdated by its Primary's disconnect crashed before
        // its record said so, came back UpToDate and was promoted without
        // the writes the Primary acknowledged alone since.
        (11713051, 5000),
        (11704021, 5000),
        // A Primary cut from the witness renewed its lease after its peer
        // had been granted the right and released it (a reign that
        // acknowledged nothing: the witness refuses it since, and the
        // checker no longer counts such a reign).
        (11129, 5000),
        // The checker's outdate rule: a sync that brought the Primary's
        // writes ended in the step its link was cut (not a core bug).
        (12101159, 5000),
        // A Behind Secondary (Outdated in memory, not yet saved) confirmed
        // its Primary's Outdate at once, lost power, came back UpToDate.
        (12235326, 5000),
        // The checker's I4 (not a core bug): a Primary cut from the witness
        // resumed on its peer's heartbeats after the peer's reign, which
        // ended in a crash before its promotion was saved and acknowledged
        // nothing (its Secondary since, in sync with the Primary's data).
        (12506639, 5000),
        // A handover kept a reply waiting for quorum; the node demoted,
        // and as a Secondary released none: it waited for ever (liveness).
        (12708947, 5000),
        (12718583, 5000),
        // An Ahead Primary that lost its disk was rebuilt from its Behind
        // peer, came out UpToDate and lifted its source: both promoted
        // without --force over writes acknowledged Ahead (review).
        (14000646, 5000),
        // Ahead acknowledgements before the peer's record said Outdated,
        // found by the checker's Ahead floor on the code before the wait.
        (13700436, 5000),
        (13700281, 5000),
        // A Secondary that confirmed a C write lost its power; its Primary
        // crashed, and the witness granted the rebooted Secondary's claim.
        (14940551, 20000),
        // A claim in flight when the operator ran discard-my-data was
        // granted; the node's full sync from the peer that parted from its
        // generation, started over after the peer's restart, forgot what
        // it told the witness, which refused it once rebuilt.
        (15810362, 20000),
        // The checker's rule now keeps what an A peer answered across a
        // promotion without `--force` (review, helper-92): the controller
        // taking over a disk its Primary's loss left Consistent, within
        // the grant's own event, was judged unforced by the disk seen
        // before it (`Core::promoted_from` now); and such a take-over
        // gives up what was answered alone, as `--force` does (a false
        // witness-data refusal after).
        (2069, 5000),
        (16400030, 5000),
        // A promotion without `--force` keeps what the peer answered only
        // while some of it is still queued here: a node its peer's failed
        // disk left alone with less (a double failure) is the truth.
        (16504807, 5000),
        // A witness without its record renewed b, the Primary a had taken
        // over from, never having heard a (which acknowledged a write and
        // crashed) since its start: the README's residual limit, judged
        // as a forced promotion (what a acknowledged is given up).
        (17400596, 5000),
        // Such a blind renewal in the middle of a full sync into a new
        // disk: judged as a forced promotion, it dropped the sync's record,
        // and the target, UpToDate at the sync's end, was taken for one
        // serving reads of data never synced (I5; a checker false positive
        // found by review, helper-115).
        (24000095, 20000),
        // b ran alone, its node was replaced (new disk, no metadata) and
        // synced in full from a, the witness lost its state, and a, vouched
        // current by the new b, was granted without what the lost b had
        // acknowledged alone: three failures, the README's residual limit,
        // judged as a forced promotion.
        (18010106, 20000),
        // The same course twice over: b, granted so, acknowledged a write
        // alone and its node was replaced; a later blind grant gave it up
        // for a too (checked at a's promotion after b crashed).
        (18200516, 20000),
        // The simulator woke a core only at its deadlines, and an
        // operator's verb used the time of the core's last event: a's core,
        // idle for 0.9 s, sent `primary --force`'s claim stamped as a second
        // old, took it for lost at once and gave the right back while the
        // witness granted it; the witness then held a's data as the truth
        // and the controller promoted a later without b's write. The
        // daemon's 20 ms timer keeps its core's clock fresh; verbs now feed
        // the time first in both (`Sim::clock_in`, `Node::with_core`).
        (18200891, 20000),
        // A deposed Primary, newer than its successor by a write in flight
        // when the link went, met it as a sync source: the new Primary
        // refused the session, and the deposed node, taking the session's
        // start on its side for a meeting, served reads of the blocks the
        // new Primary overwrote after (I4).
        (27050525, 5000),
        // The witness's slow answers to b's renewal and release were still
        // on their way when b crashed, and reached b's next process, whose
        // requests are numbered from 1 again: it took the old renewal's
        // grant for its claim's and the old release's for its new
        // renewal's, and counted a lease the witness never granted (I4:
        // "b counts its witness lease to 20.535586s, past the witness's
        // own count"). A daemon's answers come on its own QUIC connection,
        // gone with the process: the simulator now drops them.
        (27075236, 5000),
        // The checker expected a write a Primary whose disk had failed
        // acknowledged on the strength of its peer's cache to survive the
        // peer's power loss since its submission (two failures, which its
        // own failed-disk rule allows): I1 flagged it once a Primary alone
        // renewed its lease during `on_demote` moved the course.
        (29101487, 5000),
        // A deposed Primary that met its successor (whose disk had failed
        // since: its writes were gone) before its own demotion ended was
        // still counted superseded, its reads flagged (I4); meeting the
        // peer counts from the meeting, not from the demotion.
        (8435, 5000),
    ];
    for &(seed, steps) in SEEDS {
        let o = run_seed(seed, steps, Plant::None, false);
        if let Some((v, _)) = &o.failure {
            panic!("seed {seed} FAILED: {v}\n  replay: {}", replay_line(seed, Plant::None, steps));
        }
    }
}

/// A Primary ran without its outdated peer, then its node was replaced
/// (a new disk and no metadata): the new node took a full sync from the
/// outdated peer, and a witness that grants by name alone let the
/// controller promote it (or, vouched current by it, the outdated peer),
/// without the writes the lost node acknowledged alone. The witness now
/// grants a claim only to data that ran alone (generations); the planted
/// witness that ignores them is caught (invariant 1) in these 5,000-step
/// seeds, found by a `--plant witness-ignores-data` run from seed 0 (3
/// of 3,000; 5 of 4,000 when a failed force was undone and a forced
/// declaration's link waited for its record; 3 of 3,000 since a
/// promotion's hooks wait for its record, 26, 956 and 2051; 5 of 3,000
/// since a forced promotion's record is saved in two phases; none of the
/// first 3,000 and 10 of the 4,000 from 3,000 since every claim's grant
/// may be undone at the witness, the first three here; a change of
/// the core's
/// course changes which: resuming a
/// full sync cut short did, B's receipt waiting for the activity log, the
/// flush before a promotion's record, a handover acknowledging writes
/// while `on_demote` runs, and a Secondary's FLUSH no longer waiting for
/// its peer's writes),
/// and the real one passes them.
#[test]
fn finds_witness_ignores_data() {
    const SEEDS: &[u64] = &[3581, 4310, 5237];
    let mut found = 0;
    for &seed in SEEDS {
        if let Some(v) = planted_on(seed, Plant::WitnessIgnoresData) {
            eprintln!("WitnessIgnoresData found by seed {seed}: {v}");
            found += 1;
        }
    }
    assert!(found > 0, "no seed of {SEEDS:?} finds the planted witness");
}

/// The other side of that rule: a witness that refuses too much leaves the
/// pair without a Primary, which no invariant sees. The simulator fails a
/// run in which the witness refuses a claim by its data while no node was
/// replaced and no data given up (`witness-data`). A node whose saved
/// history is short (its current generation and the two before it) and
/// that keeps no list of the generations it told the witness (the plant
/// `forget-told`) has its own data refused after separations the witness
/// did not hear of: caught in these 5,000-step seeds, found by
/// `--plant forget-told` runs (2 of the 10,000 seeds from 15000, 15284
/// and 17981, until a failed force was undone and a forced declaration's
/// link waited for its record; since, 10 of the first 16,500; a change
/// of the core's course changes which: the no-progress rule for a lost
/// peer, Ahead needing the witness, the resync rate under load, resuming
/// a full sync cut short, the record saved at every role change and B's
/// receipt waiting for the activity log, the `received` record flag and
/// the flush before a promotion's record each did, and so did a refused
/// `secondary` and a handover acknowledging writes while `on_demote`
/// runs, and a node back from a lost page cache not taking over, and a
/// witness without its record not renewing a Primary running alone in its
/// quiet period, and a Secondary's FLUSH no longer waiting for its peer's
/// writes, and an operator's verb told the time, `Core::set_clock`, and
/// a promotion's hooks waiting for its record: 8 of the first 3,000, and
/// a forced promotion's record saved in two phases: 3 of the first
/// 3,000, 260 and 329 before; 575 and 1685 until every claim's grant
/// could be undone at the witness, 4 of the first 3,000 since), and the
/// real node passes them.
#[test]
fn finds_forget_told() {
    for seed in [656, 851] {
        let found = planted_on(seed, Plant::ForgetTold).map(|v| v.rule);
        assert_eq!(found, Some("witness-data"), "the planted node is not caught by seed {seed}");
    }
}

/// A witness without its state that renews a Primary running alone
/// whatever the other node told it of its data: the Primary cut off while
/// its peer took over and acknowledged writes resumes without them
/// (invariant 4, its writes after the peer's reign; README "Without
/// `meta`"). Caught in this 5,000-step seed (the witness crashes after the
/// takeover and restarts without its state), found by a `--plant
/// witness-renews-behind` run from seed 3,000 (seed 1610 until an
/// operator's verb was told the time, `Core::set_clock`, changed the
/// courses; 8006 until a Primary alone renewed its lease during
/// `on_demote`; then 3326 was the first from 3,000, with 18770 and 19094
/// from 14,000, and none in 0..3,000 nor 10,000..14,000: 8435 was caught
/// only by a checker rule found wrong, `regression_seeds_pass`; since a
/// promotion's hooks wait for its record, 422 was the one of the first
/// 3,000; since a forced promotion's record is saved in two phases, 6323
/// was the one of the first 8,000; since every claim's grant may be
/// undone at the witness, 515 is the one of the first 3,000); the real witness
/// refuses the renewal (`behind`) and the seed passes.
#[test]
fn finds_witness_renews_behind() {
    let found = planted_on(515, Plant::WitnessRenewsBehind).map(|v| v.rule);
    assert_eq!(found, Some("I4"), "the planted witness is not caught");
}

/// A Secondary that confirms its Primary's `Outdate` before its record
/// saying Outdated is durable: a power loss brings it back UpToDate while
/// the Primary writes on alone, and it is promoted without `--force`
/// (invariant 5 by the checker's own record of the outdate): caught in
/// this seed (protocol B), found by a `--plant outdate-done-early` run
/// from seed 25,000 (24255 from 20,000 until a forced promotion's record
/// was saved in two phases; none of 20,000..25,000 since, 1 of the 8,000
/// from there); the real core passes it. (The first seed, 3470, was
/// in protocol A: there a Secondary's record now says its peer is
/// Primary, and it comes back Consistent whatever the plant does.)
#[test]
fn finds_outdate_done_early() {
    let found = planted_on(32643, Plant::OutdateDoneEarly).map(|v| v.rule);
    assert_eq!(found, Some("I5"), "the planted early confirmation is not caught");
}

/// Adaptive mode without a controller: an Ahead Primary that answers
/// writes alone before its peer's record says Outdated loses them when
/// it dies and the peer, UpToDate, is promoted without `--force`
/// (invariant 1, by the floor an Ahead acknowledgement gives the peer;
/// found by review, helper-78): caught in these seeds, found by a
/// `--plant ahead-before-outdated` run from seed 0 (3 of the first 2,000
/// since a forced promotion's record is saved in two phases; 316 and 711
/// before); the real core passes them.
#[test]
fn finds_ahead_before_outdated() {
    for seed in [1341, 1531] {
        let found = planted_on(seed, Plant::AheadBeforeOutdated).map(|v| v.rule);
        assert_eq!(
            found,
            Some("I1"),
            "the planted early Ahead answer is not caught by seed {seed}"
        );
    }
}

/// Protocol A: a start that ignores the record saying the node was a
/// Secondary whose peer was Primary (`behind_async_primary`): killed
/// while lacking a write its Primary acknowledged, it comes back UpToDate
/// and is promoted without `--force` (invariant 5, by the checker's own
/// record of what the Primary acknowledged while linked): caught in
/// these seeds, found by a `--plant forget-async-primary` run from seed
/// 0 (474 and 1158 until the disks' holes moved the courses and a failed
/// force was undone: 474 alone of the first 3,000 since); the real core
/// passes them.
#[test]
fn finds_forget_async_primary() {
    let seed = 474;
    let found = planted_on(seed, Plant::ForgetAsyncPrimary).map(|v| v.rule);
    assert_eq!(found, Some("I5"), "the planted start is not caught by seed {seed}");
}

/// An Outdated SyncSource made UpToDate at any resync's end (not only on
/// its target's word that it is UpToDate): the Secondary outdated by a
/// Primary that then wrote alone, source of a rebuild of that Primary's
/// disk, is promoted without `--force` over those writes (found by
/// review): caught in these seeds, found by `--plant
/// lift-outdated-source` runs from seed 0 (4 of the first 4,000 since a
/// forced promotion's record is saved in two phases: 1192 by I5, at the
/// promotion, 261 by I1, the write it lacks; 1192 and 3220 before); the
/// real core passes them.
#[test]
fn finds_lift_outdated_source() {
    for seed in [261, 1192] {
        let found = planted_on(seed, Plant::LiftOutdatedSource).map(|v| v.rule);
        assert!(
            matches!(found, Some("I5" | "I1")),
            "the planted lift is not caught by seed {seed}: {found:?}"
        );
    }
}

/// A disk as created (a first start, a replaced node) that takes a peer's
/// data as its own without a sync when the peer holds written data: it
/// holds none of it, and is caught serving reads (invariant 5: data
/// never synced since it was created is neither read nor promoted).
#[test]
fn finds_adopt_any_peer() {
    finds(Plant::AdoptAnyPeer);
}

/// `primary` on a connected node that promotes it without asking the
/// peer: with both nodes promoted at once, both accept writes (I4).
#[test]
fn finds_promote_without_asking() {
    finds(Plant::PromoteWithoutAsking);
}

/// A node whose disk failed (EIO, ENOSPC) answers OK to writes that only
/// that detached disk holds: caught at the reply (invariant 1, the peer
/// does not hold them).
#[test]
fn finds_ack_on_failed_disk() {
    finds(Plant::AckOnFailedDisk);
}

/// A core that forgets the hint of its lost writes (an optimisation: the
/// pending map is scanned only when some write may be Lost) is caught by
/// the cache check after every step, before a reply waits for ever.
#[test]
fn finds_lost_hint() {
    finds(Plant::LostHint);
}

/// The same for the hint of replies held until quorum returns.
#[test]
fn finds_held_hint() {
    finds(Plant::HeldHint);
}

/// Adaptive mode: acknowledging while Ahead without marking the bitmap
/// leaves blocks that differ uncovered (or disks that differ once back in
/// sync).
#[test]
fn finds_ahead_without_mark() {
    finds(Plant::AheadWithoutMark);
    // And the hovering-link scenario finds it, deterministically.
    let r = twinblock_sim::hover(
        0,
        twinblock_sim::LinkLevel::AtBudget,
        10,
        std::time::Duration::from_millis(5),
        Plant::AheadWithoutMark,
    );
    let Err((v, _)) = r else { panic!("hover did not find AheadWithoutMark: {r:?}") };
    eprintln!("AheadWithoutMark found by the hovering link: {v}");
}

/// Adaptive mode converges under a link hovering at the budget, at half of
/// it (the hysteresis threshold) and far above it: the mode switches stay
/// few (no loop between Ahead and the catch-up resync, LINBIT/drbd#46), and
/// once the link calms the pair is back in sync with identical disks.
#[test]
fn adaptive_converges_under_a_hovering_link() {
    use std::time::Duration;
    use twinblock_sim::{hover, LinkLevel};
    let secs = 40;
    for level in
        [LinkLevel::AtBudget, LinkLevel::NearBudget, LinkLevel::HalfBudget, LinkLevel::High]
    {
        for seed in 0..2 {
            let o = match hover(seed, level, secs, Duration::from_millis(5), Plant::None) {
                Ok(o) => o,
                Err((v, recent)) => {
                    for l in recent.iter().rev().take(40).rev() {
                        eprintln!("  {l}");
                    }
                    panic!("{level:?} seed {seed}: {v}");
                }
            };
            eprintln!("{level:?} seed {seed}: {o:?}");
            assert!(o.acked > 1000, "{level:?}: too few writes acknowledged: {o:?}");
            // At (or above) the budget the Primary goes Ahead once and stays.
            if matches!(level, LinkLevel::AtBudget | LinkLevel::High) {
                assert!(o.switches >= 1 && o.switches <= 2, "{level:?}: {o:?}");
                assert!(o.ahead_ms > secs * 900, "{level:?}: {o:?}");
            }
            // Anywhere: a few switches (at half the budget the hold
            // doubles each time Ahead comes back soon), and back in C once
            // the link calmed.
            assert!(o.switches <= 8, "{level:?} flaps: {o:?}");
            assert!(o.calm_switches <= 1, "{level:?}: flapping after the link calmed: {o:?}");
        }
    }
}

/// After a spike, a link that settles just under the budget (round trips
/// of 76-80% of it, above the three quarters the quicker ways out need):
/// with a budget of 80 ms, where C fits (the peer's data and metadata I/O add
/// up to ~10 ms in the simulator), the Primary does not stay Ahead for ever with its
/// peer Outdated: it returns to C after sixteen holds of such round trips,
/// stays there, and the pair is back in sync with identical disks once the
/// link calms. With the simulator's 20 ms budget, where C misses it (the
/// writes wait the peer's disk on top of the round trip), it is tried
/// again more and more rarely, down to once per sixteen `max_hold`s
/// (before, every 8.5 s for ever: the backoff counted four holds as
/// "soon" whatever the way out had taken).
#[test]
fn adaptive_returns_to_c_on_a_link_that_settles_below_the_budget() {
    use std::time::Duration;
    use twinblock_sim::{hover_after, HoverCrash, HoverOutcome, LinkLevel};
    let run = |seed: u64, budget_ms: u64, secs: u64| -> HoverOutcome {
        match hover_after(
            seed,
            Duration::from_millis(budget_ms),
            Duration::from_secs(3),
            LinkLevel::BelowBudget,
            secs,
            Duration::from_millis(5),
            HoverCrash::None,
            Plant::None,
        ) {
            Ok(o) => o,
            Err((v, recent)) => {
                for l in recent.iter().rev().take(40).rev() {
                    eprintln!("  {l}");
                }
                panic!("seed {seed}, budget {budget_ms} ms: {v}");
            }
        }
    };
    for seed in 0..2 {
        let o = run(seed, 80, 30);
        eprintln!("seed {seed}, C fits: {o:?}");
        assert!(o.acked > 1000, "too few writes acknowledged: {o:?}");
        // Ahead at first (the spike), then C for good: one switch back.
        assert!(o.ahead_ms > 1000, "never Ahead after the spike: {o:?}");
        assert_eq!(o.switches, 1, "{o:?}");
        assert!(o.in_c_ms.is_some_and(|ms| ms >= 15_000), "not back in C for good: {o:?}");
        assert_eq!(o.calm_switches, 0, "{o:?}");
        let o = run(seed, 20, 60);
        eprintln!("seed {seed}, C misses: {o:?}");
        assert!(o.switches >= 2, "never tried C again: {o:?}");
        // Ahead 6.4 s, 12.8 s, then 25.6 s (16 holds of `max_hold`) between
        // the tries: six switches in 60 s, where a fixed window made 14.
        assert!(o.switches <= 7, "the tries do not thin out: {o:?}");
    }
}

/// The way back from Ahead interrupted: after a spike the link settles
/// within the budget, the Primary leaves Ahead after sixteen holds, and a
/// node crashes during the catch-up resync that follows (the Primary, then
/// the Secondary with a power loss, each at the resync's first step and
/// some steps into it). Every invariant holds after every step (no write
/// the peer lacks acknowledged as replicated, the peer never UpToDate
/// before its catch-up is durable), the crashed Primary comes back
/// UpToDate and is promoted again without `--force`, and once the link
/// calms the pair is in sync with identical disks.
#[test]
fn a_crash_during_the_catch_up_that_ends_ahead_loses_nothing() {
    use std::time::Duration;
    use twinblock_sim::{hover_after, HoverCrash, LinkLevel};
    let (mut ran, mut in_catch_up) = (0, 0);
    for seed in 0..3 {
        for (node, power) in [(0, false), (1, true), (1, false)] {
            for steps in [0, 40] {
                let crash = HoverCrash::AtCatchUp { node, power, steps };
                match hover_after(
                    seed,
                    Duration::from_millis(80),
                    Duration::from_secs(3),
                    LinkLevel::BelowBudget,
                    40,
                    Duration::from_millis(5),
                    crash,
                    Plant::None,
                ) {
                    Ok(o) => {
                        eprintln!("seed {seed}, {crash:?}: {o:?}");
                        assert_eq!(o.crashes, 1, "the catch-up never came: {o:?}");
                        // At its first step the catch-up is running; 40
                        // steps in, it may be over.
                        assert!(steps > 0 || o.crashed_in_catch_up, "{o:?}");
                        in_catch_up += u32::from(o.crashed_in_catch_up);
                        ran += 1;
                    }
                    Err((v, recent)) => {
                        for l in recent.iter().rev().take(60).rev() {
                            eprintln!("  {l}");
                        }
                        panic!("seed {seed}, {crash:?}: {v}");
                    }
                }
            }
        }
    }
    assert_eq!(ran, 18);
    eprintln!("{in_catch_up} of 18 crashes came while the catch-up ran");
    assert!(in_catch_up >= 9, "too few crashes during the catch-up: {in_catch_up}");
    // The scenario's checks are live: a Primary that acknowledges writes
    // while Ahead without marking them is caught (here before the crash:
    // the catch-up cannot bring blocks nobody marked). A source that clears
    // a chunk's bits before the target's flush (`ClearBeforeDurable`) has
    // no window on this slow link (the flush right behind each two chunks
    // completes before their acknowledgement is back, and both clears come
    // in one frame); the next test finds it on a fast link.
    for seed in 0..3 {
        let crash = HoverCrash::AtCatchUp { node: 1, power: true, steps: 0 };
        let r = hover_after(
            seed,
            Duration::from_millis(80),
            Duration::from_secs(3),
            LinkLevel::BelowBudget,
            40,
            Duration::from_millis(5),
            crash,
            Plant::AheadWithoutMark,
        );
        let Err((v, _)) = r else { panic!("seed {seed}: the planted mistake was not caught") };
        assert!(v.to_string().contains("I3"), "seed {seed}: {v}");
    }
}

/// A node whose disk failed and then hangs (the simulator leaves some of
/// that disk's writes, zeroes and flushes without a completion): a core
/// that waits for them leaves their requests unanswered for ever, caught
/// by the rule that a failed disk's node answers every request.
#[test]
fn finds_wait_on_failed_disk() {
    finds(Plant::WaitOnFailedDisk);
}

/// `disk-timeout` seeds (one in four): a disk stalls (no store operation
/// completes any more); a core that never enforces the timeout keeps its
/// writes waiting, caught by the rule that the disk fails in time.
#[test]
fn finds_no_disk_timeout() {
    finds(Plant::NoDiskTimeout);
}

/// A Primary whose disk stalls (`stalled_primary`: detached after
/// `disk-timeout`, then a power loss, back in sync, the other node takes
/// over; the metadata on a device of its own in one round, on the stalled
/// device in the next). Every invariant holds, the stalled node answers
/// OK from its peer's copy only while its metadata answers, and the
/// planted answer before its `Failed` record is on disk is caught: after
/// the power loss that record still calls the disk usable without the
/// FLUSHes it answered.
#[test]
fn a_stalled_primary_answers_from_its_peer_only_once_its_failed_record_is_saved() {
    use twinblock_sim::stalled_primary;
    let (mut acks, mut errors) = (0, 0);
    for seed in 0..10 {
        match stalled_primary(seed, 12, Plant::None) {
            Ok(o) => {
                eprintln!("seed {seed}: {o:?}");
                assert_eq!(o.rounds, 12);
                assert_eq!(o.acks_meta_stalled, 0, "seed {seed}: OK before the Failed record");
                acks += o.acks_meta_apart;
                errors += o.failed_disk_errors;
            }
            Err((v, recent)) => {
                for l in recent.iter().rev().take(60).rev() {
                    eprintln!("  {l}");
                }
                panic!("seed {seed}: {v}");
            }
        }
    }
    assert!(acks > 0, "no request was answered from the peer's part: the scenario is vacuous");
    assert!(errors > 0, "no request failed on a stalled disk with its metadata");
    let found = (0..10)
        .filter_map(|seed| {
            let r = stalled_primary(seed, 12, Plant::AckBeforeFailedRecord);
            eprintln!("planted, seed {seed}: {:?}", r.as_ref().map_err(|(v, _)| v));
            r.err()
        })
        .map(|(v, _)| v)
        .inspect(|v| eprintln!("planted: {v}"))
        .filter(|v| v.rule == "I1")
        .count();
    assert!(found > 0, "the planted answer before the Failed record is saved went unseen");
}

/// The catch-up's clear-before-durable window needs a link faster than the
/// target's disk: a chunk's apply-ack must reach the source before the
/// flush sent right behind the chunk completed on the target. At
/// `BelowBudget` (about 31 ms one way, a disk of 0.05-3 ms) the flush is
/// nearly always done first; with the link settled `Low` (0.1-1.1 ms) a
/// power loss of the target during the catch-up finds the plant.
#[test]
fn a_power_loss_in_a_fast_catch_up_finds_clear_before_durable() {
    use std::time::Duration;
    use twinblock_sim::{hover_after, HoverCrash, LinkLevel};
    let run = |seed, steps, plant| {
        let crash = HoverCrash::AtCatchUp { node: 1, power: true, steps };
        let (budget, spike) = (Duration::from_millis(80), Duration::from_secs(3));
        hover_after(seed, budget, spike, LinkLevel::Low, 40, Duration::from_millis(5), crash, plant)
    };
    let mut caught = 0;
    for seed in 0..2 {
        for steps in (0..60).step_by(2) {
            // (Without the plant every sixth point: each run is a 40 s pair.)
            if steps % 6 == 0 {
                if let Err((v, recent)) = run(seed, steps, Plant::None) {
                    for l in recent.iter().rev().take(60).rev() {
                        eprintln!("  {l}");
                    }
                    panic!("seed {seed}, steps {steps}: {v}");
                }
            }
            if let Err((v, _)) = run(seed, steps, Plant::ClearBeforeDurable) {
                eprintln!("seed {seed}, steps {steps}: {v}");
                assert!(v.to_string().contains("I3"), "seed {seed}, steps {steps}: {v}");
                caught += 1;
            }
        }
    }
    assert!(caught > 0, "clear-before-durable went unseen in a fast catch-up");
}

/// A full sync cut short resumes from the source's bitmap only when the
/// target's data is a part of that very sync: with the check gone, a disk
/// replaced (or forced, or synced from elsewhere) in between takes only
/// the blocks the source had not sent yet, and the two disks differ.
#[test]
fn finds_resume_any_full_sync() {
    finds_long(Plant::ResumeAnyFullSync);
}

/// Two nodes that meet on one generation resync the union of their
/// bitmaps from the node that was Primary last: by name (and by disk
/// state alone, UpToDate over Consistent), a Primary demoted or crashed
/// with writes its peer lacked had them overwritten (invariant 1, the
/// writes a node acknowledged as the last Primary).
#[test]
fn finds_union_by_name() {
    finds_long(Plant::UnionByName);
}

/// The node whose page cache survived is the better union source on one
/// generation. Ranked without it (the plant `ignore-lost-cache`), the last
/// Primary back from a power loss overwrites writes its peer held for it
/// (invariant 1, the target's floors): caught in these 5,000-step seeds,
/// found by `--plant ignore-lost-cache` runs (the first 5 from 2,000,000;
/// a change of the core's course changes which: the flush before a
/// promotion's record did, and a Secondary's FLUSH no longer waiting for
/// its peer's writes), and the real
/// ranking passes them. When both nodes lost power since they were last
/// in sync, the check asks only for what a Primary promised (FUA writes,
/// what its acknowledged FLUSH covered; seed 9570026 in the regression
/// seeds): each may then lack unflushed writes the other holds.
#[test]
fn finds_ignore_lost_cache() {
    const SEEDS: &[u64] = &[2001534, 2001589, 2001957, 2002053, 2002147];
    let mut found = 0;
    for &seed in SEEDS {
        if let Some(v) = planted_on(seed, Plant::IgnoreLostCache) {
            eprintln!("IgnoreLostCache found by seed {seed}: {v}");
            assert_eq!(v.rule, "I1", "seed {seed}: {v}");
            found += 1;
        }
    }
    assert!(found > 0, "no seed of {SEEDS:?} finds the planted ranking");
}

/// A node that may have lost what it confirmed to its peer (its page
/// cache) claims nothing before a session with the peer reconciled the
/// two. Claiming anyway (the plant `claim-after-loss`), a Secondary that
/// confirmed a C write and lost its power is promoted once its Primary
/// crashed, without that write: caught at the promotion by the checker's
/// record of what the loss took (I5), or later by the write missing (I1).
/// Seed 14940551 (I1) until a restarted node no longer got its previous
/// process's witness answers; 14940103 is the first from 14,940,000 that
/// catches it since (at 20,000 steps; a partial sweep from there found
/// 24, all by I5); 14940067 since a failed force is undone and a forced
/// declaration's link waits for its record (9 of the 600 from there);
/// 14940072 since the disks have holes (3 of the 400 from there).
#[test]
fn finds_claim_after_loss() {
    let (seed, steps) = (14940072, 20000);
    let real = run_seed(seed, steps, Plant::None, false);
    if let Some((v, _)) = &real.failure {
        panic!("seed {seed} FAILED: {v}\n  replay: {}", replay_line(seed, Plant::None, steps));
    }
    let o = run_seed(seed, steps, Plant::ClaimAfterLoss, false);
    let Some((v, _)) = &o.failure else {
        panic!(
            "seed {seed} does not catch the planted claim ({})",
            replay_line(seed, Plant::ClaimAfterLoss, steps)
        );
    };
    assert!(
        v.rule == "I1" || (v.rule == "I5" && v.what.contains("lost with its page cache")),
        "another rule caught it: {v}"
    );
}

/// `primary` without `--force` on a node a loss holds back (its page
/// cache, or in B the writes it had received, gone since it last met its
/// peer) is refused; accepting it (the plant `promote-after-loss`), the
/// node runs the service without a write its Primary acknowledged on its
/// word. Caught by the checker's own record of what the crash took from
/// the disk (`lost_conf`), not by the core's flag, in these seeds (found by
/// a `--plant promote-after-loss` run from seed 0: 4 of the 32 seeds of
/// 1,500 that catch it since a forced promotion's record is saved in two
/// phases; 85 and 226, 2 of the 24 seeds of
/// 1,000 that catch it since a failed force is undone and the disks have
/// holes, the others by the core's flag first; 42, 85 and 385 before);
/// the real core passes them.
#[test]
fn finds_promote_after_loss() {
    for seed in [592, 1114] {
        let v = planted_on(seed, Plant::PromoteAfterLoss).expect("not caught");
        assert_eq!(v.rule, "I5", "seed {seed}: another rule caught it: {v}");
        assert!(
            v.what.contains("acknowledged on its word"),
            "seed {seed}: not the checker's own record: {v}"
        );
    }
}

/// Plant: a Primary serves reads whatever its quorum (`Core::read_gate`).
/// Cut off from its peer and the witness, it went on serving its own
/// data after the survivor took over and acknowledged writes (a stale
/// read after a failover; found by review, helper-105). Caught by I4's
/// read rule; the seeds are the first four that catch it since every
/// claim's grant may be undone at the witness (30 and more of the first
/// 3,000; 455, 482, 488, 521 since a forced promotion's record is saved
/// in two phases, 12 of the first 1,000; 20,
/// 53, 251, 347 since a promotion's hooks waited for its record,
/// 20 of the first 3,000; 26, 119,
/// 158, 455 before, since a failed
/// force was undone, any forced declaration's link waited for its record and
/// the disks had holes; 92, 113, 158, 254 before; 26, 92, 113, 158
/// before a forced failed disk's link waited; 119, 323, 383, 488 before a Primary alone renewed its lease
/// while `on_demote` runs; 851, 2759, 3386, 3452 before those).
#[test]
fn finds_reads_without_quorum() {
    for seed in [59, 86, 119, 488] {
        let v = planted_on(seed, Plant::ReadsWithoutQuorum).expect("not caught");
        assert_eq!(v.rule, "I4", "seed {seed}: another rule caught it: {v}");
        assert!(v.what.contains("serves reads as Primary"), "seed {seed}: {v}");
    }
}

/// Plant: a node demoted without quorum serves reads as Secondary before
/// it met its peer (`Core::read_gate`, `Ctl::superseded`). Deposed while
/// apart from the new Primary, it answered reads with its own data after
/// the new Primary acknowledged writes (found by review, helper-108).
/// Caught by I4's read rule for a superseded node; the seeds are the
/// first four that catch it since every claim's grant may be undone at
/// the witness (40 of the first 3,000; 311, 455, 482, 521 since a forced
/// promotion's record is saved in two phases, 16 of the first 1,000; 53, 158, 356, 383 since a
/// promotion's hooks waited for its record, 41 of the first 3,000; 26,
/// 119, 158, 383 before, since a failed force
/// was undone, a forced declaration took no link before its record was
/// saved and the disks had holes; 53, 92, 158, 323 before; 26, 53, 92, 158 before a disk forced after it failed marked
/// every block; 53, 119, 323, 383 before a Primary
/// alone renewed its lease while `on_demote` runs; 119, 323, 422, 554
/// before those).
#[test]
fn finds_reads_when_superseded() {
    for seed in [59, 86, 119, 311] {
        let v = planted_on(seed, Plant::ReadsWhenSuperseded).expect("not caught");
        assert_eq!(v.rule, "I4", "seed {seed}: another rule caught it: {v}");
        assert!(v.what.contains("serves reads as a Secondary apart from"), "seed {seed}: {v}");
    }
}

/// A seed replays alike: the same seed run twice in one process (where
/// each hash map gets other keys, as in another process) takes the same
/// course, event for event. A failing seed that does not replay cannot
/// be debugged; before, the replies to writes whose peer part was lost
/// went out in a hash map's order.
#[test]
fn a_seed_replays_alike() {
    use twinblock_sim::{Options, Sim};
    let course = |seed: u64| {
        let mut sim = Sim::new(Options { seed, steps: 1000, plant: Plant::None, trace: false });
        let verdict = sim.run().map_err(|v| v.to_string());
        (verdict, sim.recent().to_vec())
    };
    for seed in 0..300 {
        let (first, second) = (course(seed), course(seed));
        if first != second {
            let at = first.1.iter().zip(&second.1).position(|(a, b)| a != b);
            panic!(
                "seed {seed} took another course the second time (first difference at note {at:?}: \
                 {:?} against {:?})",
                at.map(|i| &first.1[i]),
                at.map(|i| &second.1[i])
            );
        }
    }
}

/// Protocol B: a write acknowledged once sent, before the peer received
/// it, is lost when the Primary goes and the peer is promoted (I1's
/// `fl_b` floors at the promotion).
#[test]
fn finds_early_ack_b() {
    let v = first_catch(Plant::EarlyAckB, CI_SEEDS, steps());
    assert_eq!(v.rule, "I1", "{v}");
}

/// A write done while the peer is not linked, marked in no bitmap bit (the
/// activity log alone covers it until its extent leaves): the blocks differ
/// uncovered (I3), or stay different once in sync again (I2).
#[test]
fn finds_unlinked_without_mark() {
    let v = first_catch(Plant::UnlinkedWithoutMark, CI_SEEDS, steps());
    assert!(matches!(v.rule, "I2" | "I3"), "{v}");
}

/// A write admitted while a resync chunk's read is in flight: the chunk,
/// numbered after the write, carries the block as it was before it and
/// overwrites the target's newer copy (I2, I3).
#[test]
fn finds_write_during_resync_read() {
    let v = first_catch(Plant::WriteDuringResyncRead, CI_SEEDS, steps());
    assert!(matches!(v.rule, "I2" | "I3"), "{v}");
}

/// A FLUSH in B or C answered before the peer's flush: the peer's durable
/// image is checked at the reply (before the check, only a power loss of
/// the peer in the window between the reply and its own flush caught it:
/// 0 of 2,000 seeds of 1,000 steps, 4 of 2,000 of 5,000).
#[test]
fn finds_flush_without_peer() {
    let v = first_catch(Plant::FlushWithoutPeer, CI_SEEDS, steps());
    assert!(v.what.contains("durable image lacks"), "{v}");
}

/// A witness lease counted from the grant's arrival rather than from the
/// request's send: a slow answer makes the node count past the witness's
/// own count (before the check: 0 of 3,000 seeds of 1,000 steps).
#[test]
fn finds_lease_from_reply() {
    let v = first_catch(Plant::LeaseFromReply, CI_SEEDS, steps());
    assert!(v.what.contains("past the witness's own count"), "{v}");
}

/// A write's reply gated by quorum as the core's last timer saw it, not
/// at the reply: a Primary paused past its leases (the pause fault)
/// resumes with completions queued and answers them before its timer
/// runs, while its peer took over. Only the pause exposes it (before the
/// fault: 0 of 2,000 seeds of 1,000 steps; with it, the first at seed 59,
/// a pause seed; none of 2,000 of 1,000 steps since every claim's grant
/// may be undone at the witness, 15 of the first 3,000 of 5,000 steps:
/// seed 254, the first, replayed here).
#[test]
fn finds_gate_on_timer_clock() {
    let v = planted_on(254, Plant::GateOnTimerClock).expect("not caught");
    assert!(v.what.contains("acknowledged without quorum by its own leases"), "{v}");
}

/// `primary --force` on a failed or partly synced disk names its peer's
/// generation as the bitmap's base with every block marked: saved before
/// that bitmap, the record claims the old bits hold every difference from
/// the peer (found at seed 96 of 1,000 steps, and by seeds 5, 20, 26 of
/// 5,000 steps; seed 1394 of 1,000 steps until a promotion's hooks waited
/// for its record, 2113 since: 2,500 seeds here).
#[test]
fn finds_forced_record_before_bitmap() {
    let v = first_catch(Plant::ForcedRecordBeforeBitmap, 2500, steps());
    assert_eq!(v.rule, "I3", "{v}");
}

/// A SyncSource that sends nothing for a chunk its store answered as a
/// hole (as if the target's blocks were holes too) leaves a target that
/// held data there with it, its bits cleared: blocks that differ, none
/// covered (I3), or a pair in sync that differs (I2). Only the disks'
/// holes expose it (a resync read answered as a hole, `disk.rs`): before
/// the simulator answered any, no seed could. Found by seed 87 of 1,000
/// steps, the first from 0.
#[test]
fn finds_holes_not_sent() {
    let v = first_catch(Plant::HolesNotSent, CI_SEEDS, steps());
    assert!(matches!(v.rule, "I2" | "I3"), "{v}");
}

/// A SyncTarget that takes resync zeroes (a hole of its source's, or a
/// chunk of zeroes, sent as its range alone) as done without zeroing the
/// range keeps what it held there: blocks that differ once in sync (I2),
/// or uncovered (I3). Found by seed 29 of 1,000 steps, the first from 0.
#[test]
fn finds_skip_resync_zero() {
    let v = first_catch(Plant::SkipResyncZero, CI_SEEDS, steps());
    assert!(matches!(v.rule, "I2" | "I3"), "{v}");
}

/// A controller's promotion whose hooks (the address move, `on_promote`)
/// run at the witness's grant, before its record is on disk: a promotion
/// that does not stand (a `primary --force` whose record cannot be saved)
/// moved the service to a node that acknowledges nothing (a known limit
/// until 2026-12-07). The simulator checks at each Promoted hook that the
/// node's record on disk names its promotion (rule `hooks`): 93 of the
/// first 300 seeds of 1,000 steps catch the plant.
/// The witness decides a request that a cut link held, arriving on the
/// node's old connection right after its newer connection was granted
/// something (`conn_order`): seed 1736 (5,000 steps; the course is rare,
/// about one seed in 1,000 of 5,000 steps makes it) isolates b, Primary,
/// with a renewal in flight that said its peer a was current; b comes
/// back, renews on its new connection saying a is behind, and writes
/// alone. The held renewal, decided after, tells the witness a is
/// current again: b loses power and a is granted the right without b's
/// writes (I1). Refused as stale, the seed passes. Since a forced
/// promotion's record is saved in two phases the courses moved: 2 of the
/// first 8,000 seeds catch it; in seed 1100 a's stale request, decided
/// after b's newer ones, lets the witness grant a the right while b still
/// holds quorum by its own leases (I4, two Primaries possible).
#[test]
fn finds_stale_witness_requests() {
    let v = planted_on(1100, Plant::StaleWitnessRequests).expect("not caught");
    assert!(matches!(v.rule, "I1" | "I4"), "another rule caught it: {v}");
}

#[test]
fn finds_hooks_before_record() {
    let v = first_catch(Plant::HooksBeforeRecord, CI_SEEDS, steps());
    assert_eq!(v.rule, "hooks", "{v}");
}

/// The rule `hooks` the other way: a controller's Primary whose record on
/// disk names its promotion sends its hooks within a heartbeat (review of
/// a7cf0dd, helper-156: a core that never sent them passed every seed).
/// The plant `hooks-never-run` fails 87 of the first 300 seeds of 1,000
/// steps.
#[test]
fn finds_hooks_never_run() {
    let v = first_catch(Plant::HooksNeverRun, CI_SEEDS, steps());
    assert_eq!(v.rule, "hooks", "{v}");
    assert!(v.what.contains("its hooks never ran"), "{v}");
}

/// A `primary --force` the operator's shell gave up on (its record's save
/// hung or failed: the force is undone) must never come back: its first
/// record may still land, before or at a crash, and a start rolls it back
/// (`MetaRecord::pending`). The checker's rule `undone-force` holds each
/// node's starts to it; the plant `forget-pending` (a start that takes
/// the first record as it is) fails seeds 509 and 527 (2 of the first
/// 3,000 of 5,000 steps since every claim's grant may be undone at the
/// witness; 527 and 2063 before), which the real core passes.
#[test]
fn finds_forget_pending() {
    for seed in [509, 527] {
        let v = planted_on(seed, Plant::ForgetPending).expect("not caught");
        assert_eq!(v.rule, "undone-force", "seed {seed}: another rule caught it: {v}");
    }
}
