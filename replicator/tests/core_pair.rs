//! Two node cores wired together in memory, with an immediate store: the
//! smallest end-to-end check of the core's replicated write path (the
//! simulator, `twinblock-sim`, is the thorough one).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use twinblock_replicator::config::Protocol;
use twinblock_replicator::core::{Action, Core, CoreConfig, Persist, Plant, Recovered, StoreOp};
use twinblock_replicator::protocol::genid::SplitBrainPolicy;

struct Side {
    core: Core,
    disk: Vec<u8>,
    replies: Vec<(u64, bool)>,
}

fn cfg(me: &str, peer: &str) -> CoreConfig {
    CoreConfig {
        resource: "r".into(),
        me: me.into(),
        peer: peer.into(),
        size: 1 << 20,
        block: 4096,
        extent: 64 << 10,
        protocol: Protocol::C,
        max_lag: 1 << 20,
        al_extents: 4,
        timeout: Duration::from_secs(5),
        ping_interval: Duration::from_millis(500),
        disk_timeout: None,
        resync_rate: 1 << 30,
        resync_checksum: false,
        split_brain_policy: SplitBrainPolicy::Disconnect,
        chunk_blocks: 16,
        window: 4,
        checkpoint_chunks: 4,
        controller: None,
        adaptive: Default::default(),
        plant: Plant::None,
        files: Default::default(),
    }
}

fn side(me: &str, peer: &str) -> Side {
    let rec = Recovered { disk_created: true, ..Recovered::default() };
    Side {
        core: Core::new(cfg(me, peer), rec, Duration::ZERO, 7),
        disk: vec![0; 1 << 20],
        replies: vec![],
    }
}

/// Runs both cores until neither has an action; frames cross at once.
fn run(s: &mut [Side; 2], now: Duration) {
    let mut wire: [VecDeque<twinblock_replicator::protocol::wire::Message>; 2] = Default::default();
    loop {
        let mut moved = false;
        for i in 0..2 {
            while let Some(m) = wire[i].pop_front() {
                s[i].core.handle_frame(now, 1, m);
                moved = true;
            }
            while let Some(a) = s[i].core.poll_action() {
                moved = true;
                match a {
                    Action::Store { io, op } => {
                        let r = match op {
                            StoreOp::Write { offset, data, .. } => {
                                s[i].disk[offset as usize..offset as usize + data.len()]
                                    .copy_from_slice(&data);
                                None
                            }
                            StoreOp::Zero { offset, len, .. } => {
                                s[i].disk[offset as usize..(offset + len) as usize].fill(0);
                                None
                            }
                            StoreOp::Flush | StoreOp::Scratch { .. } => None,
                            StoreOp::Read { offset, len, .. } => Some(Bytes::copy_from_slice(
                                &s[i].disk[offset as usize..(offset + len) as usize],
                            )),
                        };
                        s[i].core.handle_io(now, io, Ok(r));
                    }
                    Action::Persist { io, what } => {
                        let _ = matches!(what, Persist::Meta(_));
                        s[i].core.handle_io(now, io, Ok(None));
                    }
                    Action::Send { msg, .. } => wire[1 - i].push_back(msg),
                    Action::Close { .. } => {}
                    Action::Reply { req, result } => s[i].replies.push((req, result.is_ok())),
                    Action::Vote(_) | Action::Hook(_) => {}
                }
            }
        }
        if !moved {
            return;
        }
    }
}

#[test]
fn a_write_on_the_primary_lands_on_the_secondary_and_is_acknowledged() {
    let mut s = [side("a", "b"), side("b", "a")];
    let t = Duration::from_millis(1);
    s[0].core.promote(true, 1).unwrap();
    // (The forced record saved first, as `primary` waits for it: a forced
    // declaration takes no link before, `core/declared.rs`.)
    run(&mut s, t);
    s[0].core.handle_link_up(t, 1);
    s[1].core.handle_link_up(t, 1);
    run(&mut s, t);
    assert_eq!(s[0].core.connection(), twinblock_replicator::core::Connection::Connected);
    assert_eq!(s[1].core.connection(), twinblock_replicator::core::Connection::Connected);
    for i in 0..64u64 {
        s[0].core.write(t, i, i * 8192, Bytes::from(vec![i as u8 + 1; 8192]), false);
    }
    run(&mut s, t);
    assert_eq!(s[0].replies.len(), 64, "every write acknowledged");
    assert!(s[0].replies.iter().all(|r| r.1));
    assert!(s[0].disk == s[1].disk, "the disks differ");
    assert!(s[0].core.quiescent() && s[1].core.quiescent());
}

/// A new session replaces an old one on the accepting side: the old
/// session's late frames are ignored and its end does not touch the new one.
#[test]
fn an_old_sessions_frames_and_end_do_not_touch_the_new_session() {
    use twinblock_replicator::core::{Connection, Replication};
    use twinblock_replicator::protocol::wire::{Message, Op};
    let mut s = [side("a", "b"), side("b", "a")];
    let t = Duration::from_millis(1);
    s[0].core.promote(true, 1).unwrap();
    // (The forced record saved first, as `primary` waits for it: a forced
    // declaration takes no link before, `core/declared.rs`.)
    run(&mut s, t);
    s[0].core.handle_link_up(t, 1);
    s[1].core.handle_link_up(t, 1);
    run(&mut s, t);
    assert_eq!(s[1].core.connection(), Connection::Connected);
    // The peer reconnects: b sees session 2 while session 1 lingers.
    s[1].core.handle_link_up(t, 2);
    while s[1].core.poll_action().is_some() {}
    // A late data frame of session 1 must not be applied.
    let stale = Message::Data { seq: 1, op: Op::write(0, Bytes::from(vec![9u8; 4096]), false) };
    s[1].core.handle_frame(t, 1, stale);
    let mut stored = false;
    while let Some(a) = s[1].core.poll_action() {
        stored |= matches!(a, Action::Store { .. });
    }
    assert!(!stored, "a frame of the replaced session was applied");
    assert!(s[1].disk[..4096].iter().all(|&x| x == 0));
    // Session 2 handshakes; then session 1's end arrives late.
    assert_eq!(s[1].core.session_id(), Some(2));
    s[1].core.handle_link_down(t, 1, "old link closed");
    assert_eq!(s[1].core.session_id(), Some(2), "the old session's end took the new one down");
    assert_ne!(s[1].core.replication(), Replication::SyncTarget);
}
