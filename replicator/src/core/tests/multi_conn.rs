//! FLUSH and FUA across connections (NBD's CAN_MULTI_CONN): the core has
//! one admission queue for every connection, so a FLUSH covers every
//! write answered before it was submitted, whichever connection sent it;
//! and where the mode says, on the peer too. Overlapping writes, TRIMs and
//! WRITE_ZEROES in flight together land in one order on both nodes.

use super::*;

/// The bytes of `len` at `off` on node `i`'s durable image.
fn durable(p: &Pair, i: usize, off: u64, len: u64) -> &[u8] {
    &p.n[i].durable[off as usize..(off + len) as usize]
}

/// A write answered on one connection, then a FLUSH on another: in C and
/// B the FLUSH is answered only once the write is durable on both nodes
/// (the peer's store held back meanwhile: the FLUSH waits for it). In A
/// the local flush answers it, and the flush reaches the peer as a
/// barrier behind the write.
fn flush_covers_a_write_answered_before_it(protocol: Protocol) {
    let mut p = Pair::new(protocol, Plant::None);
    p.initial();
    if protocol == Protocol::A {
        p.prime_a(0, 4096, 64);
    }
    if protocol != Protocol::C {
        // B and A answer before the peer wrote it: the peer's store holds.
        p.n[1].hold_store = true;
    }
    p.write(0, 1, 0, 0x5a, 256);
    p.settle_now();
    assert_eq!(p.reply(0, 1), Some(Ok(())), "the write on connection 1");
    assert!(durable(&p, 1, 0, 256).iter().all(|&b| b != 0x5a), "not flushed yet");
    // The peer's store holds from now on: the FLUSH must wait for it.
    p.n[1].hold_store = true;
    let now = p.now;
    p.core(0).flush(now, 2);
    p.settle_now();
    if protocol != Protocol::A {
        assert_eq!(p.reply(0, 2), None, "the FLUSH answered before the peer flushed");
    }
    p.n[1].hold_store = false;
    p.release_held();
    p.settle();
    assert_eq!(p.reply(0, 2), Some(Ok(())), "the FLUSH on connection 2");
    assert!(durable(&p, 0, 0, 256).iter().all(|&b| b == 0x5a), "not durable on the Primary");
    // (In A too: the barrier is applied after the write it follows.)
    assert!(durable(&p, 1, 0, 256).iter().all(|&b| b == 0x5a), "not durable on the peer");
}

#[test]
fn a_flush_covers_a_write_answered_before_it_on_both_nodes_in_c() {
    flush_covers_a_write_answered_before_it(Protocol::C);
}

#[test]
fn a_flush_covers_a_write_answered_before_it_on_both_nodes_in_b() {
    flush_covers_a_write_answered_before_it(Protocol::B);
}

#[test]
fn a_flush_in_a_is_local_and_a_barrier_on_the_peer() {
    flush_covers_a_write_answered_before_it(Protocol::A);
}

/// In C a FUA write, TRIM or WRITE_ZEROES is durable on both nodes when
/// it is answered.
#[test]
fn fua_in_c_is_durable_on_both_nodes_at_the_reply() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 1, 0, 0x11, 512);
    p.settle();
    p.n[1].durable = p.n[1].cache.clone();
    p.n[0].durable = p.n[0].cache.clone();
    let now = p.now;
    p.core(0).write(now, 2, 1024, Bytes::from(vec![0x22; 256]), true);
    p.core(0).trim(now, 3, 0, 128, true);
    p.core(0).write_zeroes(now, 4, 256, 128, true, true);
    p.settle();
    for req in 2..=4 {
        assert_eq!(p.reply(0, req), Some(Ok(())));
    }
    for i in 0..2 {
        assert!(durable(&p, i, 1024, 256).iter().all(|&b| b == 0x22), "FUA write on {i}");
        assert!(durable(&p, i, 0, 128).iter().all(|&b| b == 0), "FUA trim on {i}");
        assert!(durable(&p, i, 256, 128).iter().all(|&b| b == 0), "FUA zeroes on {i}");
        assert!(durable(&p, i, 128, 128).iter().all(|&b| b == 0x11), "untouched on {i}");
    }
}

/// Overlapping writes, TRIMs and WRITE_ZEROES from several connections in
/// flight at once (the peer's store held while they all go out), with
/// FLUSHes among them: both nodes end with the same bytes, the Primary's
/// order, and the last FLUSH covers them on both.
#[test]
fn overlapping_writes_trims_and_zeroes_in_flight_land_in_one_order() {
    for protocol in [Protocol::A, Protocol::B, Protocol::C] {
        let mut p = Pair::new(protocol, Plant::None);
        p.initial();
        p.n[1].hold_store = true;
        let now = p.now;
        let mut req = 1;
        for round in 0..6u64 {
            let base = (round % 3) * 64;
            p.core(0).write(now, req, base, Bytes::from(vec![round as u8 + 1; 512]), round == 2);
            p.core(0).trim(now, req + 1, base + 128, 192, round == 4);
            p.core(0).write_zeroes(now, req + 2, base + 64, 64, round % 2 == 0, false);
            p.core(0).write(
                now,
                req + 3,
                base + 192,
                Bytes::from(vec![0xa0 + round as u8; 64]),
                false,
            );
            if round % 2 == 1 {
                p.core(0).flush(now, req + 4);
            }
            req += 5;
            p.settle_now();
        }
        p.core(0).flush(now, req);
        p.settle_now();
        p.n[1].hold_store = false;
        p.release_held();
        p.settle();
        assert!(p.n[0].cache == p.n[1].cache, "{protocol:?}: the nodes differ");
        assert_eq!(p.reply(0, req), Some(Ok(())), "{protocol:?}: the last FLUSH");
        assert!(p.n[0].durable == p.n[0].cache, "{protocol:?}: not all durable on the Primary");
        assert!(p.n[1].durable == p.n[1].cache, "{protocol:?}: not all durable on the peer");
        assert!(p.replies.iter().all(|(_, _, r)| r.is_ok()), "{protocol:?}: {:?}", p.replies);
    }
}

/// A write answered in C on one connection, then a FLUSH on another whose
/// peer side fails (the peer's fdatasync: EIO, its writeback dropped the
/// page). The FLUSH is answered OK on the Primary's flush once its data is
/// a new generation; the peer, detached, loses power before its record
/// saying so is durable and comes back on its old record. Its activity log
/// still holds the write's extent (no flush of its completed), so the
/// reconnect resyncs it: the nodes end identical.
#[test]
fn a_flush_whose_peer_side_fails_leaves_the_write_it_covers_resynced() {
    let mut p = flush_whose_peer_side_fails();
    assert!(durable(&p, 0, 2048, 256).iter().all(|&b| b == 0x6b));
    assert_ne!(p.n[0].meta.as_ref().map(|m| m.gen.bitmap), Some(0), "no new generation");
    assert_eq!(p.n[1].meta.as_ref().map(|m| m.disk), Some(DiskState::UpToDate));
    p.crash(1, true);
    assert!(durable(&p, 1, 2048, 256).iter().all(|&b| b != 0x6b), "the peer lost the write");
    p.restart(1);
    p.connect();
    p.settle();
    assert!(p.n[0].cache == p.n[1].cache, "the write the FLUSH covered is not on the peer");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
}

/// The same, the peer's process killed instead (same boot: its page cache
/// survives, but the page whose writeback failed was dropped from it and
/// reads back as the disk's older bytes). It comes back on its old record
/// (the one saying Failed never saved); the reconnect must still bring the
/// write back, or the nodes differ, both UpToDate.
#[test]
fn a_flush_whose_peer_side_fails_then_a_process_crash_leaves_the_write_resynced() {
    let mut p = flush_whose_peer_side_fails();
    p.crash(1, false);
    // Linux dropped the page whose writeback failed.
    let old = p.n[1].durable[2048..2304].to_vec();
    p.n[1].cache[2048..2304].copy_from_slice(&old);
    p.restart(1);
    p.connect();
    p.settle();
    assert!(p.n[0].cache == p.n[1].cache, "the write the FLUSH covered is not on the peer");
}

/// Their course: a write answered in C, then a FLUSH whose peer side
/// fails (EIO) while the peer's record saying so never saves; the FLUSH
/// is answered on the Primary's flush, the peer is Failed (its disk
/// behaving again from here).
fn flush_whose_peer_side_fails() -> Pair {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.write(0, 1, 2048, 0x6b, 256);
    p.settle();
    assert_eq!(p.reply(0, 1), Some(Ok(())));
    p.n[1].fail_flush = true;
    p.n[1].hang_record = true;
    let now = p.now;
    p.core(0).flush(now, 2);
    // (The peer's record never saved: its node never goes quiet.)
    p.settle_now();
    assert_eq!(p.reply(0, 2), Some(Ok(())), "the Primary's flush alone answers it");
    assert_eq!(p.core(1).disk(), DiskState::Failed);
    p.n[1].fail_flush = false;
    p.n[1].hang_record = false;
    p
}

/// A FLUSH from a client of the Secondary's (read-only) export while the
/// Primary streams writes and the Secondary's disk is always one write
/// behind is answered: its own store op, issued after the peer's writes
/// already issued, covers what it must (nothing of its client's). Before,
/// `admit_app` held every operation while peer writes were pending (a wait
/// meant for a Primary promoted with a backlog), and under a steady stream
/// (the store lane busy with large writes on a slower disk) the
/// Secondary's FLUSH starved (found by review, helper-102; liveness only).
#[test]
fn a_flush_on_the_secondary_is_answered_under_a_steady_stream_of_peer_writes() {
    let mut p = Pair::new(Protocol::C, Plant::None);
    p.initial();
    p.n[1].hold_store = true;
    p.write(0, 1, 0, 1, 64);
    p.settle_now();
    let now = p.now;
    p.core(1).flush(now, 7);
    for k in 0..50u64 {
        p.write(0, 10 + k, (k % 8) * 64, k as u8 + 2, 64);
        p.settle_now();
        p.release_held_but_last();
        p.settle_now();
    }
    assert_eq!(p.reply(1, 7), Some(Ok(())), "the Secondary's FLUSH starved behind the stream");
    p.n[1].hold_store = false;
    p.release_held();
    p.settle();
    assert!(p.n[0].cache == p.n[1].cache);
}
