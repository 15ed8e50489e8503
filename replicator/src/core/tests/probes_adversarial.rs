//! Probes against the adversary: the operator, the lying peer, failures.

use super::*;

fn data_seqs(acts: &[Action]) -> Vec<(u64, bool)> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Send { msg: Message::Data { seq, op }, .. } => {
                Some((*seq, matches!(op, Op::Bench { .. })))
            }
            _ => None,
        })
        .collect()
}

/// A bench needs a peer with a disk: against a Diskless one every probe
/// failed with EIO (the peer fails what it cannot write), and the bench
/// stopped on "probe failed: Input/output error", naming nothing.
#[test]
fn a_bench_is_refused_while_the_peer_has_no_disk() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    c.handle_link_up(Duration::ZERO, 1);
    let g = GenIds { current: GEN, bitmap: 0, history: [0, 0] };
    c.handle_frame(
        Duration::ZERO,
        1,
        Message::Hello(hello(Role::Secondary, DiskState::Diskless, g)),
    );
    c.handle_frame(Duration::ZERO, 1, Message::Bits { runs: Vec::new(), last: true });
    run(&mut c, Duration::ZERO);
    let why = c.bench_refusal();
    assert!(why.as_deref().is_some_and(|w| w.contains("Diskless")), "{why:?}");
}

/// A user write sent while `twinblock bench` probes are in flight waits
/// behind them at the peer: that wait is the bench's, not the link's,
/// and does not send an adaptive Primary Ahead (a bench beside fio
/// did, found by review: a new generation and a resync the bench
/// promises not to cause). A write with no probes ahead of it still
/// does.
#[test]
fn writes_queued_behind_probes_do_not_send_adaptive_mode_ahead() {
    let mut c = adaptive_primary(None);
    let mut t = Duration::ZERO;
    for req in 0..4 {
        c.bench_write(t, 100 + req, ProbeMode::A, req * 4096, Bytes::from(vec![1u8; 4096]));
    }
    c.write(t, 1, 0, Bytes::from(vec![2u8; 64]), false);
    run(&mut c, t);
    // The peer works through the probes for 4 budgets, talking.
    while t < Duration::from_millis(200) {
        t += Duration::from_millis(10);
        c.handle_frame(t, 1, Message::Ping { id: 9 });
        c.handle_timeout(t);
        run(&mut c, t);
    }
    assert_eq!(c.replication(), Replication::Established, "behind probes");
    c.handle_frame(t, 1, Message::Ack { received: 5, done: 5 });
    run(&mut c, t);
    assert_eq!(c.replication(), Replication::Established, "acknowledged late, behind probes");
    // The control: the same wait with no probe ahead.
    c.write(t, 2, 0, Bytes::from(vec![3u8; 64]), false);
    run(&mut c, t);
    let start = t;
    while t < start + Duration::from_millis(200) && c.replication() != Replication::Ahead {
        t += Duration::from_millis(10);
        c.handle_frame(t, 1, Message::Ping { id: 9 });
        c.handle_timeout(t);
        run(&mut c, t);
    }
    assert_eq!(c.replication(), Replication::Ahead, "a write alone waiting past the budget");
}

/// An adaptive Primary in C, connected (budget 50 ms, hold 2 s, and
/// `congestion_fill` `fill`).
pub(super) fn adaptive_primary(fill: Option<u64>) -> Core {
    let mut c = core(Protocol::Adaptive, DiskState::UpToDate);
    c.cfg.adaptive = AdaptiveConfig {
        budget: Duration::from_millis(50),
        hold: Duration::from_secs(2),
        max_hold: Duration::from_secs(2),
        congestion_fill: fill,
    };
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    c
}

/// `[adaptive] congestion_fill`: the writes waiting for the peer pass
/// it and the Primary goes Ahead at once, long before any write waited
/// the budget; their replies no longer wait for the peer. Under the
/// fill, or with none set, the same writes keep it in C.
#[test]
fn a_backlog_past_congestion_fill_sends_adaptive_mode_ahead() {
    let t = Duration::ZERO;
    // (The test device: 16 KiB, three activity-log extents of 1 KiB.)
    for (fill, ahead) in [(Some(2048), true), (Some(4096), false), (None, false)] {
        let mut c = adaptive_primary(fill);
        let mut replies = Vec::new();
        let answered = |acts: Vec<Action>| {
            acts.into_iter().filter_map(|a| match a {
                Action::Reply { req, result } => Some((req, result)),
                _ => None,
            })
        };
        for req in 0..24u64 {
            c.write(t, req, req * 128, Bytes::from(vec![7u8; 128]), false);
            replies.extend(answered(run(&mut c, t)));
        }
        let want = if ahead { Replication::Ahead } else { Replication::Established };
        assert_eq!(c.replication(), want, "fill {fill:?}: 3 KiB waiting");
        assert_eq!(c.status().counters.mode_switches, u64::from(ahead), "fill {fill:?}");
        if ahead {
            // Nothing answered alone before the peer says its record says
            // Outdated (it was asked as the Primary went Ahead).
            for _ in 0..3 {
                replies.extend(answered(run(&mut c, t)));
            }
            assert!(replies.is_empty(), "answered before the peer is Outdated: {replies:?}");
            c.handle_frame(t, 1, Message::OutdateDone);
            // Every write answered without the peer (the bitmap marks them).
            for _ in 0..3 {
                replies.extend(answered(run(&mut c, t)));
            }
            assert_eq!(replies.len(), 24, "{replies:?}");
            assert!(replies.iter().all(|(_, r)| r.is_ok()), "{replies:?}");
            assert_eq!(c.status().out_of_sync_bytes, 3072);
        } else {
            assert!(replies.is_empty(), "answered before the peer in C: {replies:?}");
        }
    }
}

/// Ahead ends with the link too: that is a switch, counted (the next
/// session resyncs the marked blocks and the Primary is in C).
#[test]
fn losing_the_link_while_ahead_counts_a_switch() {
    let t = Duration::ZERO;
    let mut c = adaptive_primary(Some(2048));
    for req in 0..3 {
        c.write(t, req, req * 1024, Bytes::from(vec![7u8; 1024]), false);
        run(&mut c, t);
    }
    assert_eq!(c.replication(), Replication::Ahead);
    assert_eq!(c.status().counters.mode_switches, 1);
    c.handle_link_down(t, 1, "gone");
    run(&mut c, t);
    assert_eq!(c.replication(), Replication::Off);
    assert_eq!(c.status().counters.mode_switches, 2);
}

/// Ahead (by the fill), then the link's round trips settle at `rtt`
/// (pings answered that late); returns when it left Ahead, if it did
/// within `within` (budget 50 ms, hold 2 s).
fn ahead_then_round_trips_of(rtt: Duration, within: Duration) -> Option<Duration> {
    ahead_then_round_trips_by(|_| rtt, within)
}

/// The same with the `n`th ping answered `rtt(n)` late. Time moves only
/// to a pong's arrival or to the core's own next timeout (as the node's
/// shell drives it), so a deadline the core fails to ask for is missed
/// here too.
fn ahead_then_round_trips_by(rtt: impl Fn(u64) -> Duration, within: Duration) -> Option<Duration> {
    let mut t = Duration::ZERO;
    let mut c = adaptive_primary(Some(2048));
    for req in 0..3 {
        c.write(t, req, req * 1024, Bytes::from(vec![7u8; 1024]), false);
        run(&mut c, t);
    }
    assert_eq!(c.replication(), Replication::Ahead);
    // The peer completes what it was sent and says its record says
    // Outdated (else it is lost after `timeout`).
    c.handle_frame(t, 1, Message::Ack { received: 3, done: 3 });
    c.handle_frame(t, 1, Message::OutdateDone);
    run(&mut c, t);
    let start = t;
    let mut pings = 0u64;
    let mut pongs: Vec<(Duration, u64)> = Vec::new();
    while t < start + within {
        let next = pongs.iter().map(|(at, _)| *at).chain(c.poll_timeout()).min();
        t = next.map_or(start + within, |n| n.max(t)).min(start + within);
        for (_, id) in pongs.iter().filter(|(at, _)| *at <= t) {
            c.handle_frame(t, 1, Message::Pong { id: *id });
        }
        pongs.retain(|(at, _)| *at > t);
        c.handle_timeout(t);
        for a in run(&mut c, t) {
            if let Action::Send { msg: Message::Ping { id }, .. } = a {
                pongs.push((t + rtt(pings), id));
                pings += 1;
            }
        }
        if c.replication() != Replication::Ahead {
            assert_eq!(c.replication(), Replication::SyncSource, "{:?}", c.status());
            return Some(t - start);
        }
    }
    None
}

/// The way out of Ahead: round trips of at most half the budget for a
/// hold; between half and three quarters of it, for four holds; up to
/// seven eighths of it, for sixteen holds (before, a link that settled
/// there, within the budget, stayed Ahead for ever, the peer Outdated);
/// beyond, never.
#[test]
fn ahead_ends_on_a_link_that_settles_within_the_budget() {
    let s = Duration::from_secs;
    let good = ahead_then_round_trips_of(Duration::from_millis(20), s(20)).expect("good");
    assert!(good >= s(2) && good < s(3), "good round trips: left after {good:?}");
    let fair = ahead_then_round_trips_of(Duration::from_millis(30), s(20)).expect("fair");
    assert!(fair >= s(8) && fair < s(9), "fair round trips: left after {fair:?}");
    let within = ahead_then_round_trips_of(Duration::from_millis(40), s(40)).expect("within");
    assert!(within >= s(32) && within < s(33), "round trips within: left after {within:?}");
    assert_eq!(ahead_then_round_trips_of(Duration::from_millis(45), s(60)), None);
    // One round trip in eight beyond seven eighths of the budget: the
    // run of round trips within it never lasts sixteen holds (review).
    let ms = Duration::from_millis;
    let mixed = |n: u64| if n % 8 == 7 { ms(45) } else { ms(40) };
    assert_eq!(ahead_then_round_trips_by(mixed, s(60)), None);
    // So does a ping still unanswered at seven eighths of the budget
    // (then answered late, the core must wake for that moment itself).
    let late = |n: u64| if n % 8 == 7 { ms(400) } else { ms(40) };
    assert_eq!(ahead_then_round_trips_by(late, s(60)), None);
}

/// Writes sent behind a bench probe wait for it: once the probe lands,
/// their bytes are still no backlog of the link's (found by review:
/// they passed the fill and sent the Primary Ahead).
#[test]
fn writes_behind_a_probe_do_not_pass_the_fill_once_it_lands() {
    let t = Duration::ZERO;
    let mut c = adaptive_primary(Some(2048));
    c.bench_write(t, 100, ProbeMode::Link, 0, Bytes::from(vec![1u8; 4096]));
    run(&mut c, t);
    for req in 0..3u64 {
        c.write(t, req, req * 1024, Bytes::from(vec![7u8; 1024]), false);
        run(&mut c, t);
    }
    assert_eq!(c.replication(), Replication::Established, "probe in flight");
    // The probe (seq 1) lands; the writes behind it are still on the way.
    c.handle_frame(t, 1, Message::Ack { received: 1, done: 1 });
    run(&mut c, t);
    assert_eq!(c.status().counters.mode_switches, 0, "the bench sent the Primary Ahead");
    assert_eq!(c.replication(), Replication::Established);
    // Writes sent now, with no probe ahead, count.
    for req in 3..6u64 {
        c.write(t, req, req * 1024 % 3072, Bytes::from(vec![8u8; 1024]), false);
        run(&mut c, t);
    }
    assert_eq!(c.replication(), Replication::Ahead, "3 KiB of writes past a 2 KiB fill");
}

#[test]
fn a_probe_never_overtakes_a_user_write_waiting_for_admission() {
    // Protocol A, the lag budget full of probes (the link-throughput
    // run: 1 MiB probes, 8 in flight): a user write waits; the probes
    // the bench keeps sending must not take its place each time the
    // budget frees (it would wait for the whole run).
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::A);
    c.cfg.max_lag = 4096;
    c.bench_write(t, 100, ProbeMode::Link, 0, Bytes::from(vec![1u8; 8192]));
    let mut all = run(&mut c, t);
    c.write(t, 1, 0, Bytes::from(vec![2u8; 3072]), false);
    all.extend(run(&mut c, t));
    c.bench_write(t, 101, ProbeMode::Link, 0, Bytes::from(vec![1u8; 8192]));
    all.extend(run(&mut c, t));
    // A user write that arrives after the probe does not hold it up
    // (the bench goes on under a steady load).
    c.write(t, 2, 4096, Bytes::from(vec![3u8; 3072]), false);
    all.extend(run(&mut c, t));
    assert_eq!(data_seqs(&all), [(1, true)], "the user write waits for the budget");
    c.handle_frame(t, 1, Message::Ack { received: 1, done: 1 });
    all.extend(run(&mut c, t));
    assert_eq!(
        data_seqs(&all),
        [(1, true), (2, false), (3, true)],
        "the first user write, then the probe that came after it"
    );
    c.handle_frame(t, 1, Message::Ack { received: 3, done: 3 });
    all.extend(run(&mut c, t));
    assert_eq!(data_seqs(&all).last(), Some(&(4, false)));
}

#[test]
fn verified_for_a_probe_is_a_link_fault_and_the_probe_replies_once() {
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::C);
    c.bench_write(t, 5, ProbeMode::C, 0, Bytes::from(vec![1u8; 4096]));
    let mut all = run(&mut c, t);
    c.handle_frame(t, 1, Message::Verified { seq: 1, sums: vec![1] });
    all.extend(run(&mut c, t));
    assert!(closed(&all));
    assert_eq!(replies_to(&all, 5).len(), 1, "{all:?}");
    assert!(c.pending.is_empty());
}

#[test]
fn a_disk_failure_mid_probe_replies_once() {
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::C);
    c.bench_write(t, 5, ProbeMode::C, 0, Bytes::from(vec![1u8; 4096]));
    c.write(t, 1, 0, Bytes::from(vec![2u8; 64]), false);
    let mut all = Vec::new();
    while let Some(a) = c.poll_action() {
        match a {
            Action::Store { io, op: StoreOp::Write { .. } } => {
                c.handle_io(t, io, Err(IoError::EIO))
            }
            Action::Store { io, op: StoreOp::Scratch { .. } } => {
                all.push(Action::Store { io, op: StoreOp::Flush })
            }
            Action::Store { io, .. } | Action::Persist { io, .. } => c.handle_io(t, io, Ok(None)),
            other => all.push(other),
        }
    }
    assert_eq!(c.disk(), DiskState::Failed);
    // The probe's local scratch write completes last.
    let ios: Vec<IoId> = all
        .iter()
        .filter_map(|a| match a {
            Action::Store { io, .. } => Some(*io),
            _ => None,
        })
        .collect();
    for io in ios {
        c.handle_io(t, io, Ok(None));
    }
    all.extend(run(&mut c, t));
    assert_eq!(replies_to(&all, 5).len(), 1, "{all:?}");
    assert!(c.pending.is_empty(), "{:?}", c.pending);
}

#[test]
fn a_demotion_mid_probe_replies_once() {
    let t = Duration::ZERO;
    let mut c = connected_primary(Protocol::C);
    c.bench_write(t, 5, ProbeMode::C, 0, Bytes::from(vec![1u8; 4096]));
    c.bench_write(t, 6, ProbeMode::B, 0, Bytes::from(vec![1u8; 4096]));
    let mut all = run(&mut c, t);
    c.demote().unwrap();
    all.extend(run(&mut c, t));
    c.handle_frame(t, 1, Message::Ack { received: 2, done: 2 });
    all.extend(run(&mut c, t));
    assert_eq!(replies_to(&all, 5).len(), 1, "{all:?}");
    assert_eq!(replies_to(&all, 6).len(), 1, "{all:?}");
    assert!(c.pending.is_empty());
}

/// A bench probe that reaches a Secondary Behind an Ahead Primary is no
/// catch-up resync: it leaves the Secondary Behind and Outdated (a Primary
/// refuses to bench while Ahead, so only a lying or buggy peer sends one
/// then). Before, any data while Behind started the catch-up: the probe
/// made the Secondary a SyncTarget, its disk Inconsistent (no longer one
/// `primary --force` may take), waiting for a resync nobody had begun.
#[test]
fn a_probe_while_behind_is_no_catch_up_and_leaves_the_disk_outdated() {
    let mut p =
        super::writes::adaptive_pair_holding(Duration::from_millis(3), Duration::from_secs(60));
    p.initial();
    super::writes::write_past_the_budget(&mut p, 1, 0, 7);
    assert_eq!(p.core(0).replication(), Replication::Ahead, "a did not go Ahead");
    p.hold_to[1] = false;
    p.settle_now();
    assert_eq!(p.core(1).disk(), DiskState::Outdated, "b is not Behind");
    assert_eq!(p.core(1).replication(), Replication::Behind);
    let (now, sid) = (p.now, p.sid.expect("link"));
    let seq = p.core(1).session.as_ref().expect("session").received + 1;
    for (i, store) in [true, false].into_iter().enumerate() {
        let op = Op::bench(0, Bytes::from(vec![3u8; 4096]), store);
        p.core(1).handle_frame(now, sid, Message::Data { seq: seq + i as u64, op });
    }
    // (Not delivered to a, which never sent them: b's answers are dropped.)
    let acts = run(p.core(1), now);
    assert!(!closed(&acts), "b closed the link over a probe: {acts:?}");
    assert_eq!(p.core(1).replication(), Replication::Behind, "a probe started a catch-up");
    assert_eq!(p.core(1).disk(), DiskState::Outdated, "a probe made b's disk Inconsistent");
}
