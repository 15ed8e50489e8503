//! A bench on an adaptive Primary and the latency budget: writes behind
//! the bench's probes do not send the Primary Ahead (their wait may be
//! the bench's), so the bench must not go on while they wait past the
//! budget — that would suspend adaptive mode for the whole bench (eight
//! runs of up to 10 minutes each).

use super::*;

use super::probes_adversarial::adaptive_primary as adaptive_primary_with;

/// An adaptive Primary in C, connected (budget 50 ms, hold 2 s).
fn adaptive_primary() -> Core {
    adaptive_primary_with(None)
}

/// A bench begins on a link whose round trip (QUIC's estimate) is `rtt`:
/// four probes, then an application write behind them, at time zero.
fn a_write_behind_probes(c: &mut Core, rtt: Duration) {
    c.set_rtt(rtt);
    c.bench_begin();
    let t = Duration::ZERO;
    for req in 0..4 {
        c.bench_write(t, 100 + req, ProbeMode::C, req * 4096, Bytes::from(vec![1u8; 4096]));
    }
    c.write(t, 1, 0, Bytes::from(vec![2u8; 64]), false);
    run(c, t);
}

/// Found by review (helper-154): a bench on an adaptive pair with a 20 ms
/// budget, a client writing at QD1, and the relay restarted with 100 ms
/// each way mid-bench (QUIC's round trip: 200 ms): the client's writes, all sent behind probes,
/// waited 200–570 ms each for ten seconds and the Primary stayed in C
/// until a gap between two of the bench's runs. Now a write that waited
/// twice the budget behind probes stops the bench (its next probe is
/// refused, naming the budget); the writes after it are judged by the
/// budget again and the Primary goes Ahead. The timer is armed for it:
/// nothing but time passes here (no frame from the peer).
#[test]
fn a_write_waiting_past_the_budget_behind_probes_stops_the_bench() {
    let mut c = adaptive_primary();
    // The link's round trip (QUIC's estimate) is 300 ms.
    a_write_behind_probes(&mut c, Duration::from_millis(300));
    let mut t = Duration::ZERO;
    assert_eq!(c.bench_refusal(), None, "at once");
    // The core wakes by then even if nothing else happens.
    let ms = Duration::from_millis;
    let at = c.poll_timeout();
    assert!(at.is_some_and(|at| at <= ms(100)), "no timer for twice the budget: {at:?}");
    // Time passes, the peer silent.
    while t < ms(200) && c.bench_refusal().is_none() {
        t += ms(10);
        c.handle_timeout(t);
        run(&mut c, t);
    }
    let why = c.bench_refusal();
    assert!(
        why.as_deref().is_some_and(|w| w.contains("latency budget")),
        "a write waited {t:?} behind probes with a 50 ms budget, the bench goes on: {why:?}"
    );
    assert!(t >= ms(100), "stopped before twice the budget: {t:?}");
    assert_eq!(c.replication(), Replication::Established, "behind probes: no Ahead");
    // The bench's next probe is refused, saying why.
    c.bench_write(t, 200, ProbeMode::C, 0, Bytes::from(vec![1u8; 4096]));
    let acts = run(&mut c, t);
    assert_eq!(replies_to(&acts, 200).len(), 1, "the probe after the stop was answered");
    assert!(replies_to(&acts, 200)[0].is_err(), "a probe after the stop went out");
    // The probes and the write land; a write with no probe ahead of it
    // that waits past the budget sends the Primary Ahead, as without a
    // bench.
    c.handle_frame(t, 1, Message::Ack { received: 5, done: 5 });
    run(&mut c, t);
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
    // The next bench starts afresh (and is refused for being Ahead).
    c.bench_end();
    c.bench_begin();
    assert!(c.bench_refusal().is_some_and(|w| w.contains("Ahead")), "{:?}", c.bench_refusal());
}

/// On a link within the budget (QUIC's round trip 5 ms), a write that
/// waits long behind probes waits for the bench's own backlog (its
/// throughput run keeps 4 MiB in flight): the bench goes on, the price of
/// measuring. (Stopping it there stopped every bench beside a writing
/// client on a loopback pair with a 20 ms budget, debug build.)
#[test]
fn a_write_behind_the_benchs_own_backlog_on_a_fast_link_stops_no_bench() {
    let mut c = adaptive_primary();
    // The link's round trip (QUIC's estimate) is 5 ms.
    a_write_behind_probes(&mut c, Duration::from_millis(5));
    let mut t = Duration::ZERO;
    while t < Duration::from_millis(300) {
        t += Duration::from_millis(10);
        c.handle_frame(t, 1, Message::Ping { id: 9 });
        c.handle_timeout(t);
        run(&mut c, t);
    }
    assert_eq!(c.bench_refusal(), None);
    assert_eq!(c.replication(), Replication::Established);
}

/// Probes whose writes are quick keep the bench going: a write behind
/// them acknowledged within the budget stops nothing.
#[test]
fn a_write_behind_probes_within_the_budget_stops_no_bench() {
    let mut c = adaptive_primary();
    // The link's round trip (QUIC's estimate) is 90 ms.
    a_write_behind_probes(&mut c, Duration::from_millis(90));
    let mut t = Duration::ZERO;
    t += Duration::from_millis(90);
    c.handle_timeout(t);
    c.handle_frame(t, 1, Message::Ack { received: 5, done: 5 });
    run(&mut c, t);
    t += Duration::from_millis(500);
    c.handle_timeout(t);
    run(&mut c, t);
    assert_eq!(c.bench_refusal(), None);
    assert_eq!(c.replication(), Replication::Established);
}

/// Without a bench running (`bench_begin`), nothing is stopped: probes
/// still draining after a bench ended leave the next one free to start.
#[test]
fn probes_left_over_from_an_ended_bench_do_not_refuse_the_next() {
    let mut c = adaptive_primary();
    c.set_rtt(Duration::from_millis(300));
    c.bench_begin();
    let mut t = Duration::ZERO;
    c.bench_write(t, 100, ProbeMode::C, 0, Bytes::from(vec![1u8; 4096]));
    c.bench_end();
    c.write(t, 1, 0, Bytes::from(vec![2u8; 64]), false);
    run(&mut c, t);
    t += Duration::from_millis(300);
    c.handle_timeout(t);
    run(&mut c, t);
    assert_eq!(c.bench_refusal(), None);
}

/// `congestion_fill` too: the backlog rule is off while probes are in
/// flight (the bench's own bytes are no sign of a narrow link), so a
/// client's writes passing the fill behind them used to wait as in C for
/// as long as the bench ran. Now the application's bytes waiting for the
/// peer (the probes' not counted) past the fill stop the bench at once.
#[test]
fn writes_past_congestion_fill_behind_probes_stop_the_bench() {
    let t = Duration::ZERO;
    // (The test device: 16 KiB; 24 writes of 128 bytes are 3 KiB.)
    for (fill, bench, stops) in
        [(Some(2048), true, true), (Some(4096), true, false), (Some(2048), false, false)]
    {
        let mut c = adaptive_primary_with(fill);
        if bench {
            c.bench_begin();
        }
        c.bench_write(t, 100, ProbeMode::C, 0, Bytes::from(vec![1u8; 4096]));
        for req in 0..24u64 {
            c.write(t, req, req * 128, Bytes::from(vec![7u8; 128]), false);
            run(&mut c, t);
        }
        let why = c.bench_refusal();
        assert_eq!(
            why.as_deref().is_some_and(|w| w.contains("congestion_fill")),
            stops,
            "fill {fill:?}, bench {bench}: {why:?}"
        );
        assert_eq!(c.replication(), Replication::Established, "behind a probe: no Ahead");
    }
}
