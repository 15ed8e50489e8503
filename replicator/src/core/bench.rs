//! `twinblock bench` probes: writes that travel the replication path — the
//! same numbered stream, the same cumulative acknowledgements, the same
//! store calls on both nodes — with the acknowledgement rule of the mode
//! being measured, into the scratch area (`wire::BENCH_AREA` bytes beside
//! the metadata), never the device. A probe changes no block of the
//! device, no bitmap bit, no activity-log extent and no generation; its
//! failure (an error of the scratch file, the link) fails the probe, never
//! the disk. (A scratch write with no completion for `disk-timeout` counts
//! as the metadata's would, beside which it lies: the disk is detached.)

use bytes::Bytes;

use crate::protocol::wire::{DiskState, Message, Op, Role, BENCH_AREA};

use super::session::{Need, OutKind};
use super::types::{IoError, ReplyError, ReqId, StoreOp, Time};
use super::{Core, IoFor, PeerPart, Pending, Replication};

/// The acknowledgement rule a probe is measured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ProbeMode {
    /// Local scratch write done; queued to the peer.
    A,
    /// Local scratch write done and the peer received it.
    B,
    /// Local scratch write done and the peer wrote it to its scratch area.
    C,
    /// No write on either side: the peer's "received" (link RTT and
    /// throughput through the replication stream).
    Link,
}

/// A probe's peer failed or the link went while it waited.
pub const ENOTCONN: IoError = IoError(107);

/// Probes keep at most this much in flight (protocol A's also within
/// `max_lag`, if smaller): a bench must never build a backlog the peer
/// cannot work off within `timeout` (the link would be declared lost under
/// the user's writes). 4 MiB drain within the default timeout down to a
/// link of about 6 Mbit/s.
pub const BENCH_LAG: u64 = 4 << 20;

/// A probe waiting to be sent.
#[derive(Debug)]
pub(crate) struct Probe {
    req: ReqId,
    mode: ProbeMode,
    offset: u64,
    data: Bytes,
    /// It goes once this many user operations have left the admission
    /// queue (those that arrived before it).
    after: u64,
}

/// The bench on this node (between [`Core::bench_begin`] and
/// [`Core::bench_end`]).
#[derive(Debug, Default)]
pub(crate) enum BenchRun {
    /// None runs.
    #[default]
    Idle,
    /// One runs: adaptive mode watches the writes behind its probes.
    Running,
    /// Adaptive mode stopped it, for this reason (writes behind its probes
    /// waited past the budget): every probe until it ends is refused with it.
    Stopped(String),
}

impl Core {
    /// A bench starts here: probes until [`Core::bench_end`].
    pub fn bench_begin(&mut self) {
        self.bench_run = BenchRun::Running;
    }

    /// The bench ended (done, failed, or its caller went away).
    pub fn bench_end(&mut self) {
        self.bench_run = BenchRun::default();
    }

    /// Why a probe cannot run now, in words (None: it can).
    pub fn bench_refusal(&self) -> Option<String> {
        if self.stopping {
            // (Its demotion for the stop would otherwise be named.)
            return Some("the node is stopping (`down` or a signal)".into());
        }
        if self.role != Role::Primary {
            return Some("bench runs on the Primary (it measures the writes it replicates)".into());
        }
        if !self.disk_usable() {
            return Some(format!("the local disk is {:?}", self.disk));
        }
        if !self.linked() {
            return Some("the peer is not connected (bench measures the replication link)".into());
        }
        let peer_disk = self.session.as_ref().map(|s| s.peer.disk);
        if let Some(d @ (DiskState::Diskless | DiskState::Failed)) = peer_disk {
            // (It fails every probe, as every write: EIO, naming nothing.)
            return Some(format!(
                "the peer's disk is {d:?}: nothing is replicated to it (bench measures \
                 the writes it replicates)"
            ));
        }
        if let BenchRun::Stopped(why) = &self.bench_run {
            return Some(why.clone());
        }
        match self.replication() {
            Replication::Established => None,
            other => Some(format!(
                "the replication is {other}: run bench again once it is Established \
                 (a resync, verify or Ahead period would distort the figures)"
            )),
        }
    }

    /// One probe: `data` at `offset` of the scratch area, answered with
    /// `req` under `mode`'s rule.
    pub fn bench_write(
        &mut self,
        now: Time,
        req: ReqId,
        mode: ProbeMode,
        offset: u64,
        data: Bytes,
    ) {
        self.now = self.now.max(now);
        let len = data.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > BENCH_AREA) {
            self.reply(req, Err(ReplyError::OutOfRange));
            return;
        }
        let after = self.app_admitted + self.app.len() as u64;
        self.probes.push_back(Probe { req, mode, offset, data, after });
        self.bench_pump();
    }

    /// Sends the probes that may go: in order, each after the user
    /// operations that arrived before it; protocol A's like A's writes,
    /// within a lag budget (`max_lag`, at most [`BENCH_LAG`]).
    pub(crate) fn bench_pump(&mut self) {
        while let Some(head) = self.probes.front() {
            if self.bench_refusal().is_some() {
                let p = self.probes.pop_front().expect("head");
                self.reply(p.req, Err(ReplyError::Io(ENOTCONN)));
                continue;
            }
            if self.app_admitted < head.after {
                // The user operations that arrived before it go first: a
                // probe shares the stream, it never takes the place of a
                // write waiting for admission (protocol A's lag budget).
                return;
            }
            let bytes = head.data.len() as u64;
            if let Some(s) = self.session.as_ref() {
                let full = |used: u64, lag: u64| used > 0 && used + bytes > lag;
                if full(s.probe_bytes, BENCH_LAG)
                    || (head.mode == ProbeMode::A
                        && full(s.in_flight_bytes, self.cfg.max_lag.min(BENCH_LAG)))
                {
                    return;
                }
            }
            let p = self.probes.pop_front().expect("head");
            self.send_probe(p);
        }
    }

    fn send_probe(&mut self, Probe { req, mode, offset, data, .. }: Probe) {
        let len = data.len() as u64;
        let store = mode != ProbeMode::Link;
        let need = match mode {
            ProbeMode::A => Need::Queued,
            ProbeMode::B | ProbeMode::Link => Need::Received,
            ProbeMode::C => Need::Done,
        };
        let now = self.now;
        let Some(s) = self.session.as_mut() else { return };
        let seq = s.submit(OutKind::Bench(req), need, None, len, now);
        let sid = s.id;
        self.actions.push_back(super::Action::Send {
            session: sid,
            msg: Message::Data { seq, op: Op::bench(offset, data.clone(), store) },
        });
        let peer = if need == Need::Queued { PeerPart::Free } else { PeerPart::Waiting(seq) };
        let local = if store {
            self.store(IoFor::Bench(req), StoreOp::Scratch { offset, data });
            None
        } else {
            Some(Ok(()))
        };
        self.pending.insert(
            req,
            Pending {
                local,
                local_at: None,
                peer,
                extents: Vec::new(),
                range: None,
                fua: false,
                peer_whole: false,
            },
        );
        self.try_reply(req);
    }

    /// The local scratch write of probe `req` completed.
    pub(crate) fn bench_local_done(&mut self, req: ReqId, result: Result<(), IoError>) {
        let Some(p) = self.pending.get_mut(&req) else { return };
        p.local = Some(result);
        p.local_at = Some(self.now);
        self.try_reply(req);
    }

    /// The peer failed probe `req`, or the link went with it in flight:
    /// the probe fails (nothing of the device is involved).
    pub(crate) fn bench_lost(&mut self, req: ReqId, e: IoError) {
        if self.pending.get(&req).is_some_and(|p| matches!(p.peer, PeerPart::Waiting(_))) {
            self.pending.remove(&req);
            self.reply(req, Err(ReplyError::Io(e)));
        }
    }
}
