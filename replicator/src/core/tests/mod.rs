//! Focused tests of the core's rules, one or two cores driven by hand (the
//! random interleavings are the simulator's: `twinblock-sim`). The
//! helpers for one core are here; `pair.rs` drives two cores, `ctl.rs`
//! two cores with a controller and the real arbiter. The tests, by what
//! they are about: `link_faults.rs`, `lying_peer.rs`, `roles.rs`,
//! `writes.rs`, `failed_disk.rs`, `resync.rs`, `resync_zero.rs`,
//! `full_sync_resume.rs`, `controller.rs`, `probes.rs` and
//! `probes_adversarial.rs`.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::config::Protocol;
use crate::protocol::genid::{GenIds, SplitBrainPolicy};
use crate::protocol::wire::{self, DiskState, Hello, Message, Op, Role};

mod ahead_record;
mod bench_budget;
mod controller;
mod ctl;
mod declared;
mod failed_disk;
mod fresh;
mod full_sync_resume;
mod link_faults;
mod lying_peer;
mod multi_conn;
mod operator_verbs;
mod pair;
mod probes;
mod probes_adversarial;
mod protocol_a;
mod reads;
mod resync;
mod resync_zero;
mod roles;
mod stale_reigns;
mod writes;

use pair::{Event, Pair};

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
        disk_timeout: None,
        resync_rate: 1 << 20,
        resync_checksum: false,
        split_brain_policy: SplitBrainPolicy::Disconnect,
        chunk_blocks: 4,
        window: 4,
        checkpoint_chunks: 2,
        controller: None,
        adaptive: Default::default(),
        plant: Plant::None,
        files: Default::default(),
    }
}

/// What a node with a saved record of `disk` (no bitmap or activity log
/// saved) starts from.
fn recovered(disk: DiskState) -> Recovered {
    Recovered { meta: Some(meta(disk)), bitmap: None, al: Vec::new(), disk_created: false, boot: 0 }
}

fn meta(disk: DiskState) -> MetaRecord {
    MetaRecord {
        disk,
        fresh: false,
        gen: GenIds { current: GEN, bitmap: 0, history: [0, 0] },
        promoted_at: 0,
        lost_acked: 0,
        told: Vec::new(),
        full_sync: 0,
        forced_base: 0,
        boot: 0,
        cache_lost: false,
        received_lost: false,
        received: false,
        async_acks: false,
        receipt_acks: false,
        behind_async_primary: false,
        pending: None,
    }
}

fn core(protocol: Protocol, disk: DiskState) -> Core {
    let rec = Recovered {
        meta: Some(meta(disk)),
        bitmap: None,
        al: Vec::new(),
        disk_created: false,
        boot: 0,
    };
    Core::new(cfg(protocol), rec, Duration::ZERO, 7)
}

/// Performs every store and metadata action successfully (reads return
/// zeroes) until none is left; returns the other actions.
fn run(c: &mut Core, now: Time) -> Vec<Action> {
    run_applied(c, now).0
}

/// Like [`run`], with the data writes the peer's frames led to.
fn run_applied(c: &mut Core, now: Time) -> (Vec<Action>, Vec<StoreOp>) {
    let (mut out, mut applied) = (Vec::new(), Vec::new());
    loop {
        let mut progressed = false;
        while let Some(a) = c.poll_action() {
            progressed = true;
            match a {
                Action::Store { io, op } => {
                    if matches!(c.ios.get(&io), Some(IoFor::Apply(_)))
                        && matches!(op, StoreOp::Write { .. } | StoreOp::Zero { .. })
                    {
                        applied.push(op.clone());
                    }
                    let data = match op {
                        StoreOp::Read { len, .. } => Some(Bytes::from(vec![0u8; len as usize])),
                        _ => None,
                    };
                    c.handle_io(now, io, Ok(data));
                }
                Action::Persist { io, .. } => c.handle_io(now, io, Ok(None)),
                other => out.push(other),
            }
        }
        if !progressed {
            return (out, applied);
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
        nonce: 0x5eed,
        full_sync: 0,
        lost: crate::protocol::wire::Lost::None,
        protocol: crate::config::Protocol::C,
        split_brain_policy: SplitBrainPolicy::Disconnect,
        forced_base: false,
    }
}

/// Connects `c` to a peer in `role` with the same generation.
fn connect(c: &mut Core, sid: SessionId, role: Role) {
    c.handle_link_up(Duration::ZERO, sid);
    let g = GenIds { current: GEN, bitmap: 0, history: [0, 0] };
    let mut h = hello(role, DiskState::UpToDate, g);
    h.protocol = c.cfg.protocol;
    c.handle_frame(Duration::ZERO, sid, Message::Hello(h));
    c.handle_frame(Duration::ZERO, sid, Message::Bits { runs: Vec::new(), last: true });
    run(c, Duration::ZERO);
    assert_eq!(c.connection(), Connection::Connected);
}

fn closed(actions: &[Action]) -> bool {
    actions.iter().any(|a| matches!(a, Action::Close { .. }))
}

fn stores_written(actions: &[Action]) -> bool {
    actions.iter().any(|a| {
        matches!(a, Action::Store { op: StoreOp::Write { .. } | StoreOp::Zero { .. }, .. })
    })
}

/// Drains without completing anything.
fn drain(c: &mut Core) -> Vec<Action> {
    std::iter::from_fn(|| c.poll_action()).collect()
}

/// A store that completes each write and flush when told: (io, offset;
/// `u64::MAX` for a flush) of those the core asked for, everything else
/// completed at once.
fn issue(c: &mut Core, t: Time, held: &mut Vec<(IoId, u64)>) -> Vec<Action> {
    let mut out = Vec::new();
    while let Some(a) = c.poll_action() {
        match a {
            Action::Store { io, op: StoreOp::Write { offset, .. } } => held.push((io, offset)),
            Action::Store { io, op: StoreOp::Flush } => held.push((io, u64::MAX)),
            Action::Store { io, .. } | Action::Persist { io, .. } => c.handle_io(t, io, Ok(None)),
            other => out.push(other),
        }
    }
    out
}

/// A Primary in `protocol`, connected to its Secondary (session 1).
fn connected_primary(protocol: Protocol) -> Core {
    let mut c = core(protocol, DiskState::UpToDate);
    c.promote(false, 1).unwrap();
    connect(&mut c, 1, Role::Secondary);
    c
}

fn replies_to(acts: &[Action], req: ReqId) -> Vec<Result<(), ReplyError>> {
    acts.iter()
        .filter_map(|a| match a {
            Action::Reply { req: r, result } if *r == req => Some(*result),
            _ => None,
        })
        .collect()
}
