//! A full sync cut short resumes from the source's bitmap, only where it
//! is provably the same sync.

use super::*;

/// a forced over user data (not a disk twinblock created): connected,
/// b takes a full sync.
fn forced_over_user_data(plant: Plant) -> Pair {
    let mut p = Pair::with(Protocol::C, plant, false);
    for (i, x) in p.n[0].cache.iter_mut().enumerate() {
        *x = (i % 251) as u8 + 1;
    }
    p.n[0].durable = p.n[0].cache.clone();
    p.core(0).promote(true, 1).unwrap();
    p.settle();
    p
}

/// Node `src` is a SyncSource with less than half the device left to send.
fn source_half_way(p: &Pair, src: usize) -> bool {
    let c = p.n[src].c.as_ref().unwrap();
    c.replication() == Replication::SyncSource && c.dirty().bytes() < SIZE / 2
}

/// b, down, finds its disk failed: its saved record says Failed (and,
/// with `told`, that it told the witness those generations).
fn failed_while_down(p: &mut Pair, told: Option<Vec<u64>>) {
    let m = p.n[1].meta.as_mut().unwrap();
    if let Some(told) = told {
        m.told = told;
    }
    m.disk = DiskState::Failed;
}

/// [`forced_over_user_data`], its full sync into b cut when about half
/// of it is durable on b.
fn full_sync_cut_half_way(plant: Plant) -> Pair {
    let mut p = forced_over_user_data(plant);
    p.connect_until(|p| source_half_way(p, 0));
    assert_eq!(p.core(1).disk(), DiskState::Inconsistent, "not cut mid-sync");
    assert_ne!(p.core(0).full_sync, 0, "the source did not name its full sync");
    let (a, b) = (p.core(0).full_sync, p.core(1).full_sync);
    assert_eq!(a, b, "the two name different syncs");
    p
}

/// A full sync cut short (b killed or losing power, or a losing power)
/// resumes from the source's bitmap: what b already holds durably is not
/// sent again, and the two disks end identical (DRBD resumes an
/// interrupted full sync from its bitmap too; before, it started over).
#[test]
fn a_full_sync_cut_short_resumes_from_the_source_bitmap() {
    for (who, power) in [(1, true), (1, false), (0, true)] {
        let mut p = full_sync_cut_half_way(Plant::None);
        let left = p.core(0).dirty().bytes();
        p.crash(who, power);
        p.restart(who);
        p.connect_steps_until(|p| {
            p.n[0].c.as_ref().unwrap().replication() == Replication::SyncSource
        });
        let resumed_with = p.core(0).dirty().bytes();
        if who == 1 {
            // (What b's activity log holds comes back too.)
            assert!(
                resumed_with < SIZE && resumed_with <= left + SIZE / 8,
                "b {} started over: {resumed_with} of {SIZE} bytes to send, {left} left before",
                if power { "losing power" } else { "killed" },
            );
        }
        // (Cut again, and resumed again.)
        p.cut();
        p.settle();
        p.connect();
        let diff = (0..SIZE as usize).filter(|&i| p.n[0].cache[i] != p.n[1].cache[i]).count();
        let why = p.core(1).status().last_error;
        assert!(diff == 0, "disks differ by {diff} bytes (who {who}, power {power}): b {why:?}");
        assert_eq!(p.core(1).disk(), DiskState::UpToDate);
        let (a, b) = (p.core(0).full_sync, p.core(1).full_sync);
        assert_eq!((a, b), (0, 0), "a finished sync still named");
    }
}

/// b's disk replaced during the full sync: the new disk names no sync, so
/// it takes everything again. With the check planted away
/// (`resume-any-full-sync`) it would take only what the source had not
/// sent yet, and the disks differ: the test can fail.
#[test]
fn a_disk_replaced_mid_full_sync_takes_all_of_it_again() {
    for plant in [Plant::None, Plant::ResumeAnyFullSync] {
        let mut p = full_sync_cut_half_way(plant);
        p.crash(1, true);
        let b = &mut p.n[1];
        (b.meta, b.bitmap) = (None, None);
        b.al.clear();
        b.cache = vec![0; SIZE as usize];
        b.durable = b.cache.clone();
        let rec = Recovered { disk_created: true, ..Recovered::default() };
        p.n[1].c = Some(Core::new(p.cfg[1].clone(), rec, p.now, 2000));
        p.settle();
        p.connect();
        let same = p.n[0].cache == p.n[1].cache;
        match plant {
            Plant::None => {
                assert!(same, "disks differ");
                assert_eq!(p.core(1).disk(), DiskState::UpToDate);
            }
            _ => assert!(!same, "the planted resume went unnoticed"),
        }
    }
}

// Found by review of the resumable full sync (helper-49):

/// A Failed b rebuilt from a peer on its own generation keeps what it told
/// the witness (the seed-102896 fix), also when the rebuild is cut and
/// resumed (the resumed handshake forgot it).
#[test]
fn a_rebuild_cut_short_keeps_what_was_told_the_witness() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    let g = p.core(0).gen().current;
    p.crash(1, false);
    failed_while_down(&mut p, Some(vec![g, 0xabcdef]));
    p.restart(1);
    assert_eq!(p.core(1).told, vec![g, 0xabcdef]);
    p.connect_until(|p| source_half_way(p, 0));
    let first = p.core(1).told.clone();
    p.connect();
    let second = p.core(1).told.clone();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert_eq!(first, vec![g, 0xabcdef], "first handshake");
    assert_eq!(second, vec![g, 0xabcdef], "told forgotten once the rebuild was cut and resumed");
}

/// As above, but the rebuild is cut by the source's power failing before
/// it named the full sync durably: the next handshake starts the rebuild
/// over, and b (on no generation now) still knows its source's data grew
/// from its own (the rebuild put the source's generation first among the
/// told ones). It forgot what it told, and the witness refused it once
/// rebuilt, for data it holds (simulator seed 11400671).
#[test]
fn a_rebuild_started_over_after_the_sources_power_loss_keeps_what_was_told() {
    for written in [true, false] {
        rebuild_started_over_after_the_sources_power_loss(written);
    }
}

/// (`written`: the pair's data was written; else both disks are as
/// twinblock created them, and the restarted rebuild finds them identical.)
fn rebuild_started_over_after_the_sources_power_loss(written: bool) {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    if written {
        p.write(0, 100, 0, 7, 8192);
        p.settle();
    }
    let g = p.core(0).gen().current;
    p.crash(1, false);
    failed_while_down(&mut p, Some(vec![0xabcdef]));
    p.restart(1);
    p.connect_until(|p| p.n[1].c.as_ref().unwrap().replication() == Replication::SyncTarget);
    assert_eq!(p.core(0).full_sync, 0, "the source named its full sync: the case is not made");
    assert_eq!(p.core(1).told, vec![g, 0xabcdef]);
    p.crash(0, true);
    p.restart(0);
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    let told = &p.core(1).told;
    assert!(told.contains(&0xabcdef), "told forgotten (written {written}): {told:x?}");
}

/// As above, but the rebuild is cut by b's disk failing again (not by a
/// lost link): b restarts Failed on no generation, and the peer still runs
/// the very full sync that began on b's generation, so what b told the
/// witness stays (it was forgotten, and b refused by the witness for data
/// it holds: simulator seed 10753625).
#[test]
fn a_rebuild_cut_by_the_disk_failing_again_keeps_what_was_told_the_witness() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    let g = p.core(0).gen().current;
    p.crash(1, false);
    failed_while_down(&mut p, Some(vec![g, 0xabcdef]));
    p.restart(1);
    p.connect_until(|p| source_half_way(p, 0));
    assert_ne!(p.core(0).full_sync, 0, "the source did not name its full sync");
    // b's disk fails again mid-rebuild.
    p.crash(1, false);
    assert_eq!(p.n[1].meta.as_ref().unwrap().told, vec![g, 0xabcdef]);
    failed_while_down(&mut p, None);
    p.restart(1);
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    assert_eq!(p.core(1).told, vec![g, 0xabcdef], "told forgotten once the disk failed again");
}

/// b ran alone on generation g without writing (it told the witness), a
/// wrote alone since (a new generation, its bitmap's base g), then b's
/// disk failed: rebuilt from a, whose data grew from g, b keeps g among
/// what it told the witness (it was forgotten, and b refused by the
/// witness for data it holds: simulator seed 10746239).
#[test]
fn a_disk_rebuilt_from_a_peer_that_moved_on_from_its_generation_keeps_what_it_told() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    let g = p.core(0).gen().current;
    p.cut();
    p.settle();
    p.write(0, 100, 0, 7, 1024);
    p.settle();
    let ga = p.core(0).gen();
    assert_ne!(ga.current, g, "a wrote alone on g");
    assert_eq!(ga.bitmap, g);
    p.crash(1, false);
    failed_while_down(&mut p, Some(vec![g]));
    p.restart(1);
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    assert!(p.core(1).told.contains(&g), "g forgotten: {:x?}", p.core(1).told);
}

/// b ran alone (generation g1, told the witness), resynced part of it to
/// a, then lost its disk; a (Inconsistent) is forced while connected, its
/// history stamped with g1 (`promote_inner`). b, rebuilt from a's data,
/// which lacks b's g1 writes, must not keep g1 in its told list (the
/// witness would grant it a claim on data without them).
#[test]
fn a_disk_rebuilt_from_a_forced_peer_forgets_what_it_told() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.core(0).demote().unwrap();
    p.settle();
    p.cut();
    p.settle();
    // (A restart: b's generation ids no longer drawn from a's seed.)
    p.crash(1, false);
    p.restart(1);
    p.core(1).disconnect();
    p.core(1).promote(false, 2).unwrap();
    p.settle();
    for (k, off) in (0..SIZE).step_by(1024).enumerate() {
        p.write(1, 100 + k as u64, off, 9, 1024);
        p.settle();
    }
    let g1 = p.core(1).gen().current;
    p.core(1).told = vec![g1];
    p.settle();
    let b_data = p.n[1].cache.clone();
    p.core(1).demote().unwrap();
    p.core(1).connect();
    p.settle();
    p.connect_until(|p| source_half_way(p, 1));
    assert_eq!(p.core(0).disk(), DiskState::Inconsistent);
    // b's disk fails (a read error): Failed, its told list kept.
    p.crash(1, false);
    failed_while_down(&mut p, None);
    p.restart(1);
    assert_eq!(p.core(1).told, vec![g1]);
    p.connect();
    // Nothing usable: a is forced, connected (its history gets g1).
    p.core(0).promote(true, 10).unwrap();
    p.settle();
    assert_eq!(p.core(0).role(), Role::Primary);
    let ga = p.core(0).gen();
    assert!(ga.lineage().contains(&g1), "a's lineage {ga:x?}");
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert_ne!(p.n[1].cache, b_data, "b's g1 writes are gone");
    assert!(
        !p.core(1).told.contains(&g1),
        "b keeps g1 in told though its data (a's forced copy) lacks g1's writes: {:x?}",
        p.core(1).told
    );
}

/// `discard-my-data` on the target between its hello and the decision:
/// both sides decide on what the hello said (before, the target read its
/// flag as it was then and took a full sync named by a new nonce while
/// the source resumed); the disks end identical, no sync left named.
#[test]
fn a_discard_between_hello_and_decision_is_decided_alike() {
    let mut p = full_sync_cut_half_way(Plant::None);
    let left = p.core(0).dirty().bytes();
    p.connect_steps(0, |_| {});
    p.core(1).discard_my_data().unwrap();
    p.settle();
    let (fa, fb) = (p.core(0).full_sync, p.core(1).full_sync);
    assert_eq!((fa, fb), (0, 0), "a finished sync still named (left {left})");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
}

/// Random cuts, kills and power losses of either side during a full sync
/// and its resumptions, with a writing between and during them: the disks
/// end identical, b UpToDate (with `clear-before-durable` planted, seed 41
/// of the 300 ends with the disks different).
#[test]
fn full_syncs_cut_at_random_resume_to_identical_disks() {
    let mut bad = Vec::new();
    for seed in 0..300u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut rnd = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let mut p = forced_over_user_data(Plant::None);
        let mut req = 1000;
        for round in 0..4 {
            let steps = rnd(12) as usize;
            p.connect_steps(0, |_| {});
            let goal = SIZE * rnd(8) / 8;
            for _ in 0..20000 {
                let c = p.n[0].c.as_ref().unwrap();
                if c.dirty().bytes() <= goal && c.replication() == Replication::SyncSource {
                    break;
                }
                if p.n[1].c.as_ref().unwrap().disk() == DiskState::UpToDate {
                    break;
                }
                p.steps(1, true, &mut |_| {});
            }
            p.steps(steps, false, &mut |_| {});
            // writes during the sync
            for _ in 0..rnd(3) {
                if p.core(0).role() == Role::Primary {
                    let off = rnd(SIZE / 64) * 64;
                    req += 1;
                    p.write(0, req, off, (req % 200) as u8 + 3, 64);
                    p.steps(rnd(20) as usize, false, &mut |_| {});
                }
            }
            p.cut();
            p.settle();
            match rnd(5) {
                0 => {}
                k => {
                    let who = (k % 2) as usize;
                    let power = k > 2;
                    p.crash(who, power);
                    p.restart(who);
                    // (A node back from a power loss is not promoted
                    // before it reconnects: refused, see
                    // `a_primary_back_from_a_power_loss_is_refused_not_made_the_source`.)
                    if who == 0 && !p.core(0).cache_lost() {
                        p.core(0).promote(false, 10 + round).ok();
                        p.settle();
                    }
                }
            }
            if p.core(0).role() == Role::Primary {
                for _ in 0..rnd(3) {
                    let off = rnd(SIZE / 64) * 64;
                    req += 1;
                    p.write(0, req, off, (req % 200) as u8 + 3, 64);
                    p.settle();
                }
            }
        }
        p.connect();
        p.settle();
        let same = p.n[0].cache == p.n[1].cache;
        let b = p.core(1).disk();
        let a = p.core(0).disk();
        if !same || b != DiskState::UpToDate {
            bad.push((seed, same, a, b, p.core(1).status().last_error));
        }
    }
    assert!(bad.is_empty(), "{bad:?}");
}

/// A State a target sends between its SyncDone and the record that holds
/// the new generation (here a promotion it asked for) names the
/// generation the record holds, not the new one: the source finishes the
/// sync (and forgets its bitmap's story) only on a State naming its own.
/// Before, the promotion's State named it; b crashed before its record was
/// saved came back Inconsistent, and the source, finished, had no sync to
/// resume: the whole device again instead of nothing.
#[test]
fn a_state_before_the_targets_record_does_not_finish_the_sync() {
    let mut p = forced_over_user_data(Plant::None);
    p.core(0).demote().unwrap();
    p.settle();
    let current = p.core(0).gen().current;
    p.connect_steps_until(|p| p.n[1].c.as_ref().unwrap().gen().current == current);
    // SyncDone handled in memory; its record is never saved.
    p.n[1].hang_meta = true;
    let now = p.now;
    p.core(1).promote(false, now.as_millis() as u64 + 10).unwrap();
    p.steps(200, false, &mut |_| {});
    assert_eq!(p.core(1).role(), Role::Primary, "b was not promoted");
    assert_eq!(
        p.core(0).replication(),
        Replication::SyncSource,
        "a finished the sync on b's word before b's record held it"
    );
    p.crash(1, false);
    p.n[1].hang_meta = false;
    p.restart(1);
    assert_eq!(p.core(1).disk(), DiskState::Inconsistent);
    let before = p.log.len();
    p.connect();
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache);
    let resynced = p.written_to(1, before);
    assert!(resynced < SIZE, "the finished sync started over: {resynced} of {SIZE} bytes");
}

/// Simulator seed 8509334 (witness controller): two disks never written;
/// a is forced (generation g0) and b adopts it (`untouched_apart`); b,
/// promoted, starts generation g1 (told the witness as the data it runs
/// without a) and its disk fails before anything is written to it. Rebuilt
/// from a's g0, b's data holds all of g1 (nothing was written in it), so
/// it keeps g1 among what it tells the witness: before, it forgot it and
/// the witness refused its later claim, leaving the pair without a
/// Primary. Not when b's disk was written (`fresh` false): then b lost
/// what it wrote in g1, and stays Outdated.
#[test]
fn a_failed_disk_that_never_wrote_its_generation_keeps_it_told() {
    for fresh in [true, false] {
        let mut p = Pair::new(Protocol::C, Plant::None);
        p.core(0).promote(true, 1).unwrap();
        p.settle();
        p.core(0).demote().unwrap();
        p.settle();
        p.connect();
        p.settle();
        assert_eq!(p.core(1).disk(), DiskState::UpToDate, "adopted without a sync");
        let g0 = p.core(0).gen().current;
        let g1 = 0xf42b_9f21_aa2b_3745;
        p.crash(1, false);
        {
            let m = p.n[1].meta.as_mut().unwrap();
            assert!(m.fresh);
            m.disk = DiskState::Failed;
            m.gen = GenIds { current: g1, bitmap: g0, history: [g0, 0] };
            m.fresh = fresh;
        }
        p.restart(1);
        p.connect();
        p.settle();
        let b = p.core(1);
        assert!(b.gen().lineage().contains(&g0), "fresh {fresh}");
        if fresh {
            assert_eq!(b.disk(), DiskState::UpToDate);
            assert!(b.told.contains(&g1), "g1 forgotten: told {:x?}", b.told);
        } else {
            assert_eq!(b.disk(), DiskState::Outdated, "written in g1, rebuilt from g0");
            assert!(!b.told.contains(&g1), "told {:x?}", b.told);
        }
    }
}

/// b told the witness it ran alone on generation g (its claim, in flight
/// when the operator ran `discard-my-data` on it, was granted), a moved on
/// from g alone (a new generation, its bitmap's base g); b gives up its
/// data, and the full sync from a is cut by a's power failing before a
/// named it durably. The sync starts over with b on no generation: b must
/// still know a's data grew from its own, and keep g among what it told
/// (it forgot it, and the witness refused b's claim once rebuilt, for data
/// it holds: simulator seed 15810362 at 20,000 steps).
#[test]
fn a_discarding_node_rebuilt_across_its_sources_power_loss_keeps_what_it_told() {
    let (mut p, g) = discarding_node_rebuilding();
    assert_eq!(p.core(0).full_sync, 0, "the source named its full sync: the case is not made");
    p.crash(0, true);
    p.restart(0);
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    let told = &p.core(1).told;
    assert!(told.contains(&g), "g forgotten: {told:x?}");
}

/// As above, but a, back from its power loss, is forced and writes before
/// the two meet again: its data moved on from the generation b's rebuild
/// began on (its history names it), and still grew from b's, so b keeps
/// g among what it told (it forgot it: review, helper-90).
#[test]
fn a_discarding_node_rebuilt_from_a_source_that_moved_on_keeps_what_it_told() {
    let (mut p, g) = discarding_node_rebuilding();
    p.crash(0, true);
    p.restart(0);
    p.core(0).promote(true, 50).unwrap();
    p.settle();
    p.write(0, 102, 12288, 5, 4096);
    p.settle();
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache == p.n[1].cache, "disks differ");
    let told = &p.core(1).told;
    assert!(told.contains(&g), "g forgotten: {told:x?}");
}

/// The course of the two tests above up to the rebuild: b told g, a wrote
/// alone since (its bitmap's base g), b ran `discard-my-data` and is a's
/// SyncTarget on no generation. Returns g.
fn discarding_node_rebuilding() -> (Pair, u64) {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 100, 0, 7, 8192);
    p.settle();
    let g = p.core(0).gen().current;
    p.cut();
    p.settle();
    p.write(0, 101, 4096, 9, 1024);
    p.settle();
    let ga = p.core(0).gen();
    assert_ne!(ga.current, g, "a wrote alone on g");
    assert_eq!(ga.bitmap, g);
    p.core(1).told = vec![g];
    p.core(1).discard_my_data().unwrap();
    p.connect_until(|p| p.n[1].c.as_ref().unwrap().replication() == Replication::SyncTarget);
    assert_eq!(p.core(1).gen().current, NEVER_SYNCED, "b's data not given up");
    (p, g)
}

/// The target's `counters.resync_bytes` counts the chunks it took, as the
/// README says (`status` on both sides): they were counted in its
/// `replicated_bytes` instead, and its `resync_bytes` stayed 0 (a 16 TiB
/// target showed 2.8 GB replicated and nothing resynced; review).
#[test]
fn a_sync_target_counts_the_chunks_it_takes_as_resync_bytes() {
    let mut p = forced_over_user_data(Plant::None);
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    let (a, b) = (p.core(0).counters, p.core(1).counters);
    assert!(a.resync_bytes > 0, "no full sync: {a:?}");
    assert_eq!(b.resync_bytes, a.resync_bytes, "{b:?}");
    assert_eq!(b.replicated_bytes, 0, "{b:?}");
}
