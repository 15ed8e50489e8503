//! Short forms of states, store operations, frames and metadata updates,
//! for the trace and violation reports.

use twinblock_replicator::core::{Core, Persist, StoreOp};
use twinblock_replicator::protocol::wire::Message;

use crate::content::decode;
use crate::CELL;

/// Role/disk/replication and quiescence, for violation reports.
pub(crate) fn core_state(c: &Core) -> String {
    format!("{:?}/{:?}/{:?} quiescent={}", c.role(), c.disk(), c.replication(), c.quiescent())
}

pub(crate) fn short_op(op: &StoreOp) -> String {
    match op {
        StoreOp::Write { offset, data, fua } => format!("write {offset}+{} fua={fua}", data.len()),
        StoreOp::Zero { offset, len, fua, .. } => format!("zero {offset}+{len} fua={fua}"),
        StoreOp::Flush => "flush".into(),
        StoreOp::Read { offset, len, holes: false } => format!("read {offset}+{len}"),
        // (May be answered as a hole.)
        StoreOp::Read { offset, len, holes: true } => format!("read {offset}+{len} holes"),
        StoreOp::Scratch { offset, data } => format!("scratch {offset}+{}", data.len()),
    }
}

pub(crate) fn short_msg(m: &Message) -> String {
    match m {
        Message::Data { seq, op } => match op {
            twinblock_replicator::protocol::wire::Op::Write { offset, data, fua, .. } => {
                format!(
                    "Data#{seq} write {offset}+{} fua={fua} id={}",
                    data.len(),
                    decode((offset / CELL) as usize, &data[..CELL as usize]).unwrap_or(u64::MAX)
                )
            }
            op => format!("Data#{seq} {op:?}"),
        },
        Message::Hello(h) => format!(
            "Hello {:?} {:?} gen {:x?} promoted_at {}{}",
            h.role,
            h.disk,
            h.gen,
            h.promoted_at,
            match h.lost {
                twinblock_replicator::protocol::wire::Lost::None => "",
                twinblock_replicator::protocol::wire::Lost::Received => " received lost",
                twinblock_replicator::protocol::wire::Lost::Cache => " cache lost",
            }
        ),
        Message::Bits { runs, last } => format!("Bits {runs:?} last={last}"),
        Message::BitWords { first, words, last } => {
            format!("BitWords from word {first}: {} words, last={last}", words.len())
        }
        m => format!("{m:?}"),
    }
}

pub(crate) fn short_persist(p: &Persist) -> String {
    match p {
        Persist::Meta(m) => format!("meta {:?} {:x?}", m.disk, m.gen),
        Persist::Bitmap { pages } => {
            format!("bitmap {:x?}", pages.iter().map(|(_, w)| w.clone()).collect::<Vec<_>>())
        }
        Persist::Al { remove, add } => format!("al -{remove:?} +{add:?}"),
    }
}
