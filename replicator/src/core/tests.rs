//! Focused tests of the core's rules, one node driven by hand (the
//! two-node interleavings are the simulator's: `twinblock-sim`).

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::Protocol;
use crate::protocol::genid::{GenIds, SplitBrainPolicy, NEVER_SYNCED};
use crate::protocol::wire::{self, DiskState, Hello, Message, Op, Role};

const SIZE: u64 = 16 * 1024;
const GEN: u64 = 0x1234_5678_9abc_def0;

fn cfg(protocol: Protocol) -> CoreConfig {
    CoreConfig {
        resource: "r".into(),
        me: "a".into(),
        peer: "b".into(),
        size: SIZE,
        block: 64,
        extent: 1024,
        protocol,
        max_lag: 1 << 20,
        al_extents: 3,
        timeout: Duration::from_secs(2),
        ping_interval: Duration::from_millis(250),
        resync_rate: 1 << 20,
        resync_checksum: false,
        split_brain_policy: SplitBrainPolicy::Disconnect,
        chunk_blocks: 4,
        window: 4,
        checkpoint_chunks: 2,
        plant: Plant::None,
    }
}

fn meta(disk: DiskState) -> MetaRecord {
    MetaRecord { disk, fresh: false, gen: GenIds { current: GEN, bitmap: 0, history: [0, 0] }, promoted_at: 0 }
}

fn core(protocol: Protocol, disk: DiskState) -> Core {
    let rec = Recovered { meta: Some(meta(disk)), bitmap: None, al: Vec::new(), disk_created: false };
    Core::new(cfg(protocol), rec, Duration::ZERO, 7)
}

/// Performs every store and metadata action successfully (reads return
/// zeroes) until none is left; returns the other actions.
fn run(c: &mut Core, now: Time) -> Vec<Action> {
    let mut out = Vec::new();
    loop {
        let mut progressed = false;
        while let Some(a) = c.poll_action() {
            progressed = true;
            match a {
                Action::Store { io, op: StoreOp::Read { len, .. } } => {
                    c.handle_io(now, io, Ok(Some(Bytes::from(vec![0u8; len as usize]))))
                }
                Action::Store { io, .. } | Action::Persist { io, .. } => c.handle_io(now, io, Ok(None)),
                other => out.push(other),
            }
        }
        if !progressed {
            return out;
        }
    }
}

fn hello(role: Role, disk: DiskState, gen: GenIds) -> Hello {
    Hello {
        version: wire::VERSION,
        node: "b".into(),
        resource: "r".into(),
        size: SIZE,
        role,
        disk,
        peer_out_of_sync: 0,
        fresh: false,
        gen,
        discard: false,
        promoted_at: 0,
    }
}

/// Connects `c` to a peer in `role` with the same generation.
fn connect(c: &mut Core, sid: SessionId, role: Role) {
    c.handle_link_up(Duration::ZERO, sid);
    let g = GenIds { current: GEN, bitmap: 0, history: [0, 0] };
    c.handle_frame(Duration::ZERO, sid, Message::Hello(hello(role, DiskState::UpToDate, g)));
    c.handle_frame(Duration::ZERO, sid, Message::Bits { runs: Vec::new(), last: true });
    run(c, Duration::ZERO);
    assert_eq!(c.connection(), Connection::Connected);
}

fn closed(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Close { .. }))
}

fn stores_written(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Store { op: StoreOp::Write { .. } | StoreOp::Zero { .. }, .. }))
}

/// Drains without completing anything.
fn drain(c: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

#[test]
fn data_outside_the_device_closes_the_link_and_applies_nothing() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    let op = Op::write(SIZE - 64, Bytes::from(vec![1u8; 128]), false);
    c.handle_frame(Duration::ZERO, 1, Message::Data { seq: 1, op });
    let a = drain(&mut c);
    assert!(closed(&a));
    assert!(!stores_written(&a));
}

#[test]
fn a_sequence_gap_closes_the_link() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    let op = Op::write(0, Bytes::from(vec![1u8; 64]), false);
    c.handle_frame(Duration::ZERO, 1, Message::Data { seq: 2, op });
    let a = drain(&mut c);
    assert!(closed(&a));
    assert!(!stores_written(&a));
}

#[test]
fn a_verify_larger_than_allowed_closes_the_link() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    let op = Op::Verify { offset: 0, len: wire::MAX_VERIFY + 64 };
    c.handle_frame(Duration::ZERO, 1, Message::Data { seq: 1, op });
    assert!(closed(&drain(&mut c)));
}

#[test]
fn an_ack_for_nothing_sent_closes_the_link() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    c.handle_frame(Duration::ZERO, 1, Message::Ack { received: 5, done: 0 });
    assert!(closed(&drain(&mut c)));
}

#[test]
fn a_repeated_ack_is_harmless() {
    let mut c = core(Protocol::B, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    c.write(Duration::ZERO, 1, 0, Bytes::from(vec![1u8; 64]), false);
    run(&mut c, Duration::ZERO);
    c.handle_frame(Duration::ZERO, 1, Message::Ack { received: 1, done: 0 });
    c.handle_frame(Duration::ZERO, 1, Message::Ack { received: 1, done: 1 });
    assert!(!closed(&run(&mut c, Duration::ZERO)));
}

#[test]
fn a_peer_that_answers_pings_but_never_acks_is_lost_after_timeout() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    c.write(Duration::ZERO, 1, 0, Bytes::from(vec![1u8; 64]), false);
    run(&mut c, Duration::ZERO);
    let mut t = Duration::ZERO;
    let mut lost = false;
    while t < Duration::from_secs(3) && !lost {
        t += Duration::from_millis(100);
        c.handle_timeout(t);
        for a in run(&mut c, t) {
            match a {
                Action::Send { msg: Message::Ping { id }, .. } => {
                    c.handle_frame(t, 1, Message::Pong { id });
                }
                Action::Close { .. } => lost = true,
                _ => {}
            }
        }
        // The peer keeps talking.
        if !lost {
            c.handle_frame(t, 1, Message::Ping { id: 99 });
            lost = closed(&run(&mut c, t));
        }
    }
    assert!(lost, "never declared lost");
    assert!(t >= Duration::from_secs(2) && t <= Duration::from_millis(2200), "lost at {t:?}");
}

#[test]
fn a_secondary_never_replicates_its_flush_nor_starts_a_generation() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    c.flush(Duration::ZERO, 1);
    let a = drain(&mut c);
    assert!(!a.iter().any(|a| matches!(a, Action::Send { msg: Message::Data { .. }, .. })));
    for a in a {
        if let Action::Store { io, .. } = a {
            c.handle_io(Duration::ZERO, io, Ok(None));
        }
    }
    c.handle_link_down(Duration::ZERO, 1, "gone");
    run(&mut c, Duration::ZERO);
    assert_eq!(c.gen().current, GEN);
}

#[test]
fn primary_force_of_an_inconsistent_disk_syncs_the_peer_fully() {
    let mut c = core(Protocol::C, DiskState::Inconsistent);
    assert!(c.promote(false, 1).is_err(), "Inconsistent promoted without --force");
    c.promote(true, 1).unwrap();
    let g = c.gen();
    assert_ne!(g.current, GEN);
    assert_eq!(g.bitmap, 0, "a bitmap base would allow a bitmap-only resync");
    assert_eq!(crate::protocol::genid::decide(&g, &meta(DiskState::UpToDate).gen),
        crate::protocol::genid::Decision::SyncSource { full: true });
}

#[test]
fn a_recreated_disk_with_surviving_metadata_is_never_synced() {
    let rec = Recovered { meta: Some(meta(DiskState::UpToDate)), bitmap: None, al: Vec::new(), disk_created: true };
    let c = Core::new(cfg(Protocol::C), rec, Duration::ZERO, 1);
    assert_eq!(c.disk(), DiskState::Inconsistent);
    assert_eq!(c.gen().current, NEVER_SYNCED);
    assert!(c.may_read().is_err());
}

#[test]
fn reads_are_refused_on_unusable_disks() {
    for d in [DiskState::Inconsistent, DiskState::Outdated, DiskState::Failed] {
        assert!(core(Protocol::C, d).may_read().is_err(), "{d:?} serves reads");
    }
}

#[test]
fn fua_on_trim_and_write_zeroes_is_carried_to_the_peer() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    c.trim(Duration::ZERO, 1, 0, 64, true);
    c.write_zeroes(Duration::ZERO, 2, 64, 64, false, true);
    let a = run(&mut c, Duration::ZERO);
    let fuas: Vec<bool> = a
        .iter()
        .filter_map(|a| match a {
            Action::Send { msg: Message::Data { op: Op::Trim { fua, .. } | Op::Zero { fua, .. }, .. }, .. } => Some(*fua),
            _ => None,
        })
        .collect();
    assert_eq!(fuas, vec![true, true]);
}

#[test]
fn verify_on_a_secondary_asks_the_primary() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    connect(&mut c, 1, Role::Primary);
    c.verify().unwrap();
    let a = run(&mut c, Duration::ZERO);
    assert!(a.iter().any(|a| matches!(a, Action::Send { msg: Message::VerifyRequest, .. })));
    assert!(!closed(&a));
    assert_eq!(c.connection(), Connection::Connected);
}

#[test]
fn a_failed_metadata_save_fails_the_write_that_needs_it() {
    // Disconnected Primary: the first write needs a new generation on disk.
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    run(&mut c, Duration::ZERO);
    c.write(Duration::ZERO, 1, 0, Bytes::from(vec![1u8; 64]), false);
    let mut replies = Vec::new();
    for _ in 0..10 {
        for a in drain(&mut c) {
            match a {
                Action::Persist { io, what: Persist::Meta(_) } => c.handle_io(Duration::ZERO, io, Err(IoError::ENOSPC)),
                Action::Persist { io, .. } | Action::Store { io, .. } => c.handle_io(Duration::ZERO, io, Ok(None)),
                Action::Reply { req, result } => replies.push((req, result)),
                _ => {}
            }
        }
    }
    assert_eq!(replies, vec![(1, Err(ReplyError::Io(IoError::ENOSPC)))]);
}

#[test]
fn replies_wait_for_the_new_generation_after_link_loss() {
    let mut c = core(Protocol::C, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    c.write(Duration::ZERO, 1, 0, Bytes::from(vec![1u8; 64]), false);
    run(&mut c, Duration::ZERO); // local write done; the peer never answers
    c.handle_link_down(Duration::ZERO, 1, "cut");
    let mut replied_before_meta = false;
    let mut meta_saved = false;
    for _ in 0..10 {
        for a in drain(&mut c) {
            match a {
                Action::Persist { io, what: Persist::Meta(m) } => {
                    assert_ne!(m.gen.current, GEN);
                    meta_saved = true;
                    c.handle_io(Duration::ZERO, io, Ok(None));
                }
                Action::Persist { io, .. } | Action::Store { io, .. } => c.handle_io(Duration::ZERO, io, Ok(None)),
                Action::Reply { .. } if !meta_saved => replied_before_meta = true,
                _ => {}
            }
        }
    }
    assert!(meta_saved);
    assert!(!replied_before_meta);
}
