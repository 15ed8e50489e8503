//! Resync chunks that are all zeroes cross the link as `ResyncZero`
//! (offset and length, no payload) and are applied as an all-zero
//! `Resync` is: a zeroing that may punch, the same acks, bits and
//! progress. (Before, the zeroes crossed the link: a full sync of a
//! mostly empty 16 TiB device moved 16 TiB.)

use super::lying_peer::sync_target_of;
use super::*;

/// What a SyncTarget did: the store operations it applied, the frames it
/// sent, its counters and the resync's progress it shows (done, total).
type Applied = (Vec<StoreOp>, Vec<Message>, CoreCounters, Option<(u64, u64)>);

/// What a SyncTarget does with `op` (number 1) then a flush (number 2).
fn target_applies(op: Op) -> Applied {
    let (mut c, t) = sync_target_of(Role::Secondary);
    c.handle_frame(t, 1, Message::Data { seq: 1, op });
    c.handle_frame(t, 1, Message::Data { seq: 2, op: Op::Flush });
    let (acts, applied) = run_applied(&mut c, t);
    assert!(!closed(&acts), "{acts:?}");
    let sent = acts
        .into_iter()
        .filter_map(|a| match a {
            Action::Send { msg, .. } => Some(msg),
            _ => None,
        })
        .collect();
    let st = c.status();
    (applied, sent, st.counters, st.sync.map(|p| (p.done, p.total)))
}

/// The apply side: a `ResyncZero` is what an all-zero `Resync` of the
/// same range was (a punching zeroing, not durable by itself, acked and
/// counted alike), and a SyncDone after its flush is taken.
#[test]
fn resync_zeroes_are_applied_as_an_all_zero_resync_chunk_is() {
    let zeroes = target_applies(Op::resync(128, Bytes::from(vec![0u8; 256])));
    let without = target_applies(Op::ResyncZero { offset: 128, len: 256 });
    assert_eq!(
        without.0,
        vec![StoreOp::Zero { offset: 128, len: 256, punch: true, fua: false }],
        "{without:?}"
    );
    assert_eq!(without, zeroes);
    assert_eq!(without.2.resync_bytes, 256, "{without:?}");

    let (mut c, t) = sync_target_of(Role::Secondary);
    c.handle_frame(t, 1, Message::Data { seq: 1, op: Op::ResyncZero { offset: 0, len: 256 } });
    c.handle_frame(t, 1, Message::Data { seq: 2, op: Op::Flush });
    let (acts, _) = run_applied(&mut c, t);
    assert!(!closed(&acts), "{acts:?}");
    let current = 0x2222_3333_4444_5555;
    c.handle_frame(t, 1, Message::SyncDone { current });
    let (acts, _) = run_applied(&mut c, t);
    assert!(!closed(&acts), "{acts:?}");
    assert_eq!(c.disk(), DiskState::UpToDate);
    assert_eq!(c.gen().current, current);
}

/// A SyncDone right after resync zeroes not yet flushed is refused, as
/// after a chunk with its data: they are not durable yet.
#[test]
fn a_sync_done_before_resync_zeroes_are_flushed_is_a_link_fault() {
    let (mut c, t) = sync_target_of(Role::Secondary);
    c.handle_frame(t, 1, Message::Data { seq: 1, op: Op::ResyncZero { offset: 0, len: 256 } });
    c.handle_frame(t, 1, Message::SyncDone { current: 0x2222_3333_4444_5555 });
    let (acts, _) = run_applied(&mut c, Duration::ZERO);
    assert!(closed(&acts), "{acts:?}");
    assert_ne!(c.disk(), DiskState::UpToDate);
}

/// Resync zeroes of no length, of part of a block, or past the device's
/// end end the session and touch nothing (blocks here are 64 bytes).
#[test]
fn malformed_resync_zeroes_are_a_protocol_error() {
    for (offset, len) in
        [(0, 0), (32, 64), (64, 100), (SIZE - 64, 128), (SIZE, 64), (u64::MAX - 63, 64)]
    {
        let (mut c, t) = sync_target_of(Role::Primary);
        c.handle_frame(t, 1, Message::Data { seq: 1, op: Op::ResyncZero { offset, len } });
        let (acts, applied) = run_applied(&mut c, t);
        assert!(closed(&acts), "{offset}+{len} taken: {acts:?}");
        assert!(applied.is_empty(), "{offset}+{len} applied: {applied:?}");
    }
}

/// A full sync of a disk whose data and zero runs are interleaved, into
/// a disk full of other bytes: the target ends identical, the zero runs
/// crossed the link without their zeroes (the frames sent are a fraction
/// of the device's size) and both sides count the whole device resynced.
#[test]
fn a_full_sync_sends_zero_chunks_without_their_zeroes() {
    let mut p = Pair::with(Protocol::C, Plant::None, false);
    // Chunks are 256 bytes: one in four holds data (one of them only in
    // its last byte), the rest are zeroes.
    for (i, x) in p.n[0].cache.iter_mut().enumerate() {
        let chunk = i / 256;
        *x = match chunk % 4 {
            0 => (i % 251) as u8 + 1,
            _ if chunk == 5 && i % 256 == 255 => 0x5a,
            _ => 0,
        };
    }
    p.n[0].durable = p.n[0].cache.clone();
    p.n[1].cache.iter_mut().for_each(|x| *x = 0xee);
    p.n[1].durable = p.n[1].cache.clone();
    p.core(0).promote(true, 1).unwrap();
    p.settle();
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert_eq!(p.n[1].durable, p.n[0].cache, "the target differs");
    // (With its frames' headers: the chunks here are 256 bytes.)
    assert!(
        p.sent[0] < SIZE / 2,
        "the source sent {} bytes for {} bytes of data in {SIZE}",
        p.sent[0],
        SIZE / 4 + 1
    );
    assert_eq!(p.core(0).counters.resync_bytes, SIZE);
    assert_eq!(p.core(1).counters.resync_bytes, SIZE);
}

/// A full sync from a sparse source (a regular file whose zeroes are
/// holes): chunks of holes are sent as zeroes unread, asked of the store
/// as reads that may be answered as holes; only the chunks with data are
/// read (`resync_read_bytes`), and the target ends identical. (Before, a
/// 16 TiB file holding little was read whole to find its zeroes.)
#[test]
fn a_sparse_sources_holes_are_sent_as_zeroes_unread() {
    let mut p = Pair::with(Protocol::C, Plant::None, false);
    p.n[0].sparse = true;
    // Chunks are 256 bytes: data in chunks 3 and 9 (one byte of it).
    p.n[0].cache[3 * 256..4 * 256].fill(0x5a);
    p.n[0].cache[9 * 256 + 17] = 1;
    p.n[0].durable = p.n[0].cache.clone();
    p.n[1].cache.fill(0xee);
    p.n[1].durable = p.n[1].cache.clone();
    p.core(0).promote(true, 1).unwrap();
    p.settle();
    p.connect();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert_eq!(p.n[1].durable, p.n[0].cache, "the target differs");
    assert_eq!(p.n[0].holes_answered, SIZE / 256 - 2, "every chunk but two is a hole");
    assert_eq!(p.core(0).counters.resync_read_bytes, 2 * 256, "read: the two data chunks");
    assert_eq!(p.core(0).counters.resync_bytes, SIZE);
    assert_eq!(p.core(1).counters.resync_bytes, SIZE);
}

/// Whether `a` is node 0's read of a resync chunk that may be answered as
/// a hole.
fn hole_probe(a: &(usize, Action)) -> Option<(u64, u64)> {
    match a {
        (0, Action::Store { op: StoreOp::Read { offset, len, holes: true }, .. }) => {
            Some((*offset, *len))
        }
        _ => None,
    }
}

/// An application write to a hole the resync is probing: it is not
/// issued until the probe completed (as for a read of data), so it is
/// never lost: the probe saw the hole, the chunk went as zeroes, and the
/// write, numbered after it, lands after it on the target. (With the
/// write admitted during the probe, `Plant::WriteDuringResyncRead`, the
/// write is numbered before the chunk whose zeroes then overwrite it on
/// the target.)
fn a_write_racing_a_hole_probe(plant: Plant) -> Result<(), String> {
    let mut p = Pair::with(Protocol::C, plant, false);
    p.n[0].sparse = true;
    p.n[1].cache.fill(0xee);
    p.n[1].durable = p.n[1].cache.clone();
    p.core(0).promote(true, 1).unwrap();
    p.settle();
    p.n[0].hold_store = true;
    p.connect_steps(0, |_| {});
    let mut probe = None;
    for _ in 0..1000 {
        probe = p.held.iter().find_map(hole_probe);
        if probe.is_some() {
            break;
        }
        p.perform_held();
        p.steps(10, true, &mut |_| {});
    }
    let (off, len) = probe.ok_or("no hole probe was issued")?;
    // The application writes into the range being probed.
    p.write(0, 1, off + 64, 0x77, 64);
    p.settle_now();
    let issued = |p: &Pair| {
        p.held.iter().any(|a| matches!(a, (0, Action::Store { op: StoreOp::Write { .. }, .. })))
    };
    let early = issued(&p);
    p.n[0].hold_store = false;
    p.perform_held();
    p.settle();
    assert_eq!(p.reply(0, 1), Some(Ok(())), "the write");
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    assert!(p.n[0].cache[(off + 64) as usize..(off + 128) as usize].iter().all(|&b| b == 0x77));
    assert!(len >= 128, "{len}");
    if p.n[1].durable != p.n[0].cache {
        return Err(format!("the target differs (the write issued during the probe: {early})"));
    }
    if early {
        return Err("the write was issued while the probe was outstanding".into());
    }
    Ok(())
}

#[test]
fn a_write_racing_a_hole_probe_waits_for_it_and_follows_the_chunk() {
    a_write_racing_a_hole_probe(Plant::None).unwrap();
    // The test catches a write admitted during the probe.
    let e = a_write_racing_a_hole_probe(Plant::WriteDuringResyncRead).unwrap_err();
    assert!(e.contains("the target differs"), "{e}");
}

/// How long a full sync of a source holding data in its first chunk only
/// (its zeroes holes of a sparse file, or read) takes while the
/// application keeps writing, at a `resync-rate` of ten 256-byte chunks a
/// second; and whether the target ends identical.
fn sync_while_writing(sparse: bool) -> (Duration, bool) {
    let mut c = cfg(Protocol::C);
    c.resync_rate = 2560;
    let mut p = Pair::with_cfg(c, false);
    p.n[0].sparse = sparse;
    p.n[1].cache.fill(0xee);
    p.n[1].durable = p.n[1].cache.clone();
    p.core(0).promote(true, 1).unwrap();
    p.settle();
    p.connect_steps(0, |_| {});
    let start = p.now;
    let mut req = 1;
    while p.core(1).disk() != DiskState::UpToDate && p.now < start + Duration::from_secs(30) {
        p.write(0, req, 0, req as u8, 64);
        req += 1;
        p.steps(20, true, &mut |_| {});
    }
    let took = p.now - start;
    p.settle();
    assert_eq!(p.core(1).disk(), DiskState::UpToDate);
    // (The last writes are in the target's page cache.)
    (took, p.n[1].cache == p.n[0].cache)
}

/// `resync-rate` limits what the resync costs the application while it
/// writes: the disk's reads and the link's bytes. A hole sent unread
/// costs neither, and is not counted against it. Before, each counted
/// its full length: a mostly empty source's sync was throttled as if it
/// sent data (64 chunks, all holes but one, took 6.4 s at ten a second).
/// Zeroes that were read (a block device's) still count: the disk read
/// them.
#[test]
fn holes_sent_unread_do_not_count_against_the_resync_rate() {
    let (took, same) = sync_while_writing(true);
    assert!(same, "the target differs");
    assert!(took < Duration::from_secs(1), "the sync of holes took {took:?}");
    let (took, same) = sync_while_writing(false);
    assert!(same, "the target differs");
    assert!(took > Duration::from_secs(5), "the sync of zeroes read took {took:?}");
}
