//! Two cores by hand: every frame, store operation and metadata update
//! carried by the test, disks and caches simulated.

use std::collections::{BTreeSet, VecDeque};

use super::*;

#[derive(Debug, Clone)]
pub enum Event {
    Write(u64, u64),
    Flush,
    Meta(DiskState),
    Bitmap(Vec<u64>),
}

pub struct Node {
    pub c: Option<Core>,
    pub cache: Vec<u8>,
    pub durable: Vec<u8>,
    pub meta: Option<MetaRecord>,
    pub bitmap: Option<Vec<u64>>,
    pub al: BTreeSet<u64>,
    /// Store ops to fail (errno) from now on, by kind.
    pub fail_writes: bool,
    pub fail_flush: bool,
    pub fail_reads: bool,
    /// A sparse file whose zeroes are holes: a read that may be answered
    /// as a hole is, where the range reads as zeroes.
    pub sparse: bool,
    /// Reads answered as holes.
    pub holes_answered: u64,
    /// The disk stopped answering: store operations are neither
    /// applied nor completed (lost at a power loss).
    pub hang: bool,
    /// The same for metadata updates (the metadata on that disk too).
    pub hang_meta: bool,
    /// Only the metadata record's updates hang (not the activity log's
    /// or the bitmap's).
    pub hang_record: bool,
    /// Activity-log updates wait in `Pair::held` until `release_held`.
    pub hang_al: bool,
    /// Only the bitmap's updates hang (neither applied nor completed).
    pub hang_bitmap: bool,
    /// The bitmap's updates fail (ENOSPC), applied not at all.
    pub fail_bitmap: bool,
    /// The metadata record's updates fail (ENOSPC: a full metadata
    /// volume), applied not at all.
    pub fail_record: bool,
    /// A failed record's save lands all the same (an error after the
    /// rename: the directory's fsync).
    pub land_failed_record: bool,
    /// The metadata record's updates wait in `Pair::held` (neither
    /// applied nor completed) until `land_held_records`: a hung save that
    /// lands late.
    pub hold_record: bool,
    /// Store operations wait in `Pair::held` until `release_held`.
    pub hold_store: bool,
    /// The machine's boot (a power loss starts another).
    pub boot: u64,
}

pub struct Pair {
    pub n: [Node; 2],
    pub sid: Option<SessionId>,
    next_sid: SessionId,
    q: [VecDeque<Message>; 2],
    /// Frames to the peer are dropped (a silent cut).
    pub drop: bool,
    /// Frames to node i are dropped.
    pub drop_to: [bool; 2],
    /// Frames to node i wait (not delivered while set).
    pub hold_to: [bool; 2],
    /// Once a sends SyncDone, frames to a are dropped.
    pub deaf_after_sync_done: bool,
    pub now: Time,
    pub replies: Vec<(usize, ReqId, Result<(), ReplyError>)>,
    pub cfg: [CoreConfig; 2],
    /// What each node made happen, in order.
    pub log: Vec<(usize, Event)>,
    /// Restarts so far (each seeds its core afresh).
    starts: u64,
    /// Activity-log updates held back (`Node::hang_al`), with their node.
    pub held: Vec<(usize, Action)>,
    /// Bytes of the frames each node sent, as encoded for the link.
    pub sent: [u64; 2],
}

impl Pair {
    /// `created`: the disks are new files twinblock made (all zeroes).
    pub fn new(protocol: Protocol, plant: Plant) -> Pair {
        Pair::with(protocol, plant, true)
    }

    pub fn with(protocol: Protocol, plant: Plant, created: bool) -> Pair {
        let mut ca = cfg(protocol);
        ca.plant = plant;
        Pair::with_cfg(ca, created)
    }

    pub fn with_cfg(ca: CoreConfig, created: bool) -> Pair {
        let mut cb = ca.clone();
        cb.me = "b".into();
        cb.peer = "a".into();
        let node = |c: &CoreConfig| Node {
            c: Some(Core::new(
                c.clone(),
                Recovered { disk_created: created, boot: 1, ..Recovered::default() },
                Duration::ZERO,
                // A seed per name: both cores drew the same generation ids
                // until a restart (the length of "a" and "b"), so a test
                // expecting two generations could get one (from review).
                c.me.bytes().fold(0u64, |h, b| h * 131 + u64::from(b)) * 77,
            )),
            cache: vec![0; SIZE as usize],
            durable: vec![0; SIZE as usize],
            meta: None,
            bitmap: None,
            al: BTreeSet::new(),
            fail_writes: false,
            fail_flush: false,
            fail_reads: false,
            sparse: false,
            holes_answered: 0,
            hang: false,
            hang_meta: false,
            hang_record: false,
            hang_al: false,
            hang_bitmap: false,
            fail_bitmap: false,
            fail_record: false,
            land_failed_record: false,
            hold_record: false,
            hold_store: false,
            boot: 1,
        };
        let mut p = Pair {
            n: [node(&ca), node(&cb)],
            sid: None,
            next_sid: 1,
            q: [VecDeque::new(), VecDeque::new()],
            drop: false,
            drop_to: [false, false],
            hold_to: [false, false],
            deaf_after_sync_done: false,
            now: Duration::ZERO,
            replies: Vec::new(),
            cfg: [ca, cb],
            log: Vec::new(),
            starts: 0,
            held: Vec::new(),
            sent: [0, 0],
        };
        p.settle();
        p
    }

    /// Performs the held activity-log updates (in order) and holds no more.
    pub fn release_held(&mut self) {
        for (i, a) in std::mem::take(&mut self.held) {
            self.n[i].hang_al = false;
            self.perform(i, a);
        }
    }

    /// Performs every held store operation, in order, the nodes still
    /// holding what they issue from now on.
    pub fn perform_held(&mut self) {
        for (i, a) in std::mem::take(&mut self.held) {
            let hold = std::mem::replace(&mut self.n[i].hold_store, false);
            self.perform(i, a);
            self.n[i].hold_store = hold;
        }
    }

    /// Node i's held record saves (`Node::hold_record`) land and complete,
    /// in order; the node holds those it issues from now on.
    pub fn land_held_records(&mut self, i: usize) {
        let (mine, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.held).into_iter().partition(|(n, a)| {
                *n == i && matches!(a, Action::Persist { what: Persist::Meta(_), .. })
            });
        self.held = rest;
        for (_, a) in mine {
            let hold = std::mem::replace(&mut self.n[i].hold_record, false);
            self.perform(i, a);
            self.n[i].hold_record = hold;
        }
    }

    /// Performs the held store operations but the newest (a disk that is
    /// always one operation behind a steady stream).
    pub fn release_held_but_last(&mut self) {
        let mut held = std::mem::take(&mut self.held);
        let last = held.pop();
        for (i, a) in held {
            let hold = std::mem::replace(&mut self.n[i].hold_store, false);
            self.perform(i, a);
            self.n[i].hold_store = hold;
        }
        self.held.extend(last);
    }

    pub fn core(&mut self, i: usize) -> &mut Core {
        self.n[i].c.as_mut().expect("running")
    }

    /// `primary` on node i, which may lack writes it confirmed to its peer
    /// and has not met it since: refused without `--force` (it names the
    /// loss and the way out), then forced (an UpToDate disk forced keeps
    /// its generation and its flag: the scenario goes on as an operator's
    /// choice).
    pub fn promote_lost(&mut self, i: usize, wall_ms: u64) {
        let e = self.core(i).promote(false, wall_ms).expect_err("primary without --force");
        assert!(e.0.contains("may lack writes it confirmed"), "{}", e.0);
        assert_eq!(self.core(i).role(), Role::Secondary);
        self.core(i).promote(true, wall_ms).expect("primary --force");
    }

    fn perform(&mut self, i: usize, a: Action) {
        let now = self.now;
        let n = &self.n[i];
        if (n.hang_al && matches!(a, Action::Persist { what: Persist::Al { .. }, .. }))
            || (n.hold_record && matches!(a, Action::Persist { what: Persist::Meta(_), .. }))
            || (n.hold_store && matches!(a, Action::Store { .. }))
        {
            self.held.push((i, a));
            return;
        }
        if (n.hang && matches!(a, Action::Store { .. }))
            || (n.hang_meta && matches!(a, Action::Persist { .. }))
            || (n.hang_record && matches!(a, Action::Persist { what: Persist::Meta(_), .. }))
            || (n.hang_bitmap && matches!(a, Action::Persist { what: Persist::Bitmap { .. }, .. }))
        {
            return;
        }
        match &a {
            Action::Store { op: StoreOp::Write { offset, data, .. }, .. } => {
                self.log.push((i, Event::Write(*offset, data.len() as u64)))
            }
            Action::Store { op: StoreOp::Flush, .. } => self.log.push((i, Event::Flush)),
            Action::Persist { what: Persist::Meta(m), .. } => {
                self.log.push((i, Event::Meta(m.disk)))
            }
            Action::Persist { what: Persist::Bitmap { pages }, .. } => {
                let words: Vec<u64> = pages.iter().flat_map(|(_, w)| w.iter().copied()).collect();
                self.log.push((i, Event::Bitmap(words)))
            }
            _ => {}
        }
        match a {
            Action::Store { io, op } => {
                let node = &mut self.n[i];
                let r = match op {
                    StoreOp::Write { offset, data, fua } => {
                        if node.fail_writes {
                            Err(IoError::EIO)
                        } else {
                            let o = offset as usize;
                            node.cache[o..o + data.len()].copy_from_slice(&data);
                            if fua {
                                node.durable[o..o + data.len()].copy_from_slice(&data);
                            }
                            Ok(None)
                        }
                    }
                    StoreOp::Zero { offset, len, fua, .. } => {
                        if node.fail_writes {
                            Err(IoError::EIO)
                        } else {
                            let (o, l) = (offset as usize, len as usize);
                            node.cache[o..o + l].iter_mut().for_each(|x| *x = 0);
                            if fua {
                                node.durable[o..o + l].iter_mut().for_each(|x| *x = 0);
                            }
                            Ok(None)
                        }
                    }
                    StoreOp::Flush => {
                        if node.fail_flush {
                            Err(IoError::EIO)
                        } else {
                            node.durable = node.cache.clone();
                            Ok(None)
                        }
                    }
                    StoreOp::Read { .. } if node.fail_reads => Err(IoError::EIO),
                    StoreOp::Read { offset, len, holes } => {
                        let (o, l) = (offset as usize, len as usize);
                        let range = &node.cache[o..o + l];
                        if holes && node.sparse && range.iter().all(|&b| b == 0) {
                            // A sparse file's hole: answered unread.
                            node.holes_answered += 1;
                            Ok(None)
                        } else {
                            Ok(Some(Bytes::copy_from_slice(range)))
                        }
                    }
                    StoreOp::Scratch { .. } => Ok(None),
                };
                if let Some(c) = node.c.as_mut() {
                    c.handle_io(now, io, r);
                }
            }
            Action::Persist { io, what: Persist::Meta(m) } if self.n[i].fail_record => {
                if self.n[i].land_failed_record {
                    self.n[i].meta = Some(m);
                }
                if let Some(c) = self.n[i].c.as_mut() {
                    c.handle_io(now, io, Err(IoError::ENOSPC));
                }
            }
            Action::Persist { io, what: Persist::Bitmap { .. } } if self.n[i].fail_bitmap => {
                if let Some(c) = self.n[i].c.as_mut() {
                    c.handle_io(now, io, Err(IoError::ENOSPC));
                }
            }
            Action::Persist { io, what } => {
                let node = &mut self.n[i];
                match what {
                    Persist::Meta(m) => node.meta = Some(m),
                    Persist::Bitmap { pages } => {
                        let bm = node.bitmap.get_or_insert_with(|| vec![0; 4]);
                        for (p, w) in pages {
                            for (k, x) in w.into_iter().enumerate() {
                                if let Some(slot) = bm.get_mut(p as usize * PAGE_WORDS + k) {
                                    *slot = x;
                                }
                            }
                        }
                    }
                    Persist::Al { remove, add } => {
                        for e in remove {
                            node.al.remove(&e);
                        }
                        node.al.extend(add);
                    }
                }
                if let Some(c) = node.c.as_mut() {
                    c.handle_io(now, io, Ok(None));
                }
            }
            Action::Send { session, msg } => {
                if i == 0 && self.deaf_after_sync_done && matches!(msg, Message::SyncDone { .. }) {
                    self.drop_to[0] = true;
                }
                if Some(session) == self.sid && !self.drop && !self.drop_to[1 - i] {
                    let (head, payload) = msg.encode();
                    self.sent[i] += (head.len() + payload.map_or(0, |p| p.len())) as u64;
                    self.q[1 - i].push_back(msg);
                }
            }
            Action::Close { session, .. } => {
                if Some(session) == self.sid {
                    self.cut();
                }
            }
            Action::Reply { req, result } => self.replies.push((i, req, result)),
            Action::Vote(_) | Action::Hook(_) => {}
        }
    }

    /// Runs until nothing moves (timers advance while a node is busy).
    pub fn settle(&mut self) {
        self.run(true)
    }

    /// Runs until nothing moves, with the clock stopped.
    pub fn settle_now(&mut self) {
        self.run(false)
    }

    fn run(&mut self, timers: bool) {
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..2 {
                while let Some(a) = self.n[i].c.as_mut().and_then(|c| c.poll_action()) {
                    moved = true;
                    self.perform(i, a);
                }
            }
            for i in 0..2 {
                if self.hold_to[i] {
                    continue;
                }
                if let Some(m) = self.q[i].pop_front() {
                    moved = true;
                    let (now, sid) = (self.now, self.sid.expect("link"));
                    if let Some(c) = self.n[i].c.as_mut() {
                        c.handle_frame(now, sid, m);
                    }
                }
            }
            if !moved {
                // Timers: resync pacing, heartbeats.
                // (A hung disk detached keeps its operations for ever:
                // its node is busy only while its timers have work.)
                let busy = self.n.iter().any(|n| {
                    n.c.as_ref().is_some_and(|c| {
                        !c.quiescent()
                            && (!((n.hang || n.hang_meta) && c.disk() == DiskState::Failed)
                                || c.poll_timeout().is_some())
                    })
                });
                if !busy || !timers {
                    return;
                }
                self.now += Duration::from_millis(10);
                for i in 0..2 {
                    let now = self.now;
                    if let Some(c) = self.n[i].c.as_mut() {
                        c.handle_timeout(now);
                    }
                }
                // Keep the link alive while time passes.
                if let Some(sid) = self.sid {
                    for i in 0..2 {
                        let now = self.now;
                        if let Some(c) = self.n[i].c.as_mut() {
                            c.handle_frame(now, sid, Message::Ping { id: 0 });
                        }
                    }
                }
            }
        }
        panic!("does not settle");
    }

    pub fn connect(&mut self) {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.sid = Some(sid);
        self.drop = false;
        for i in 0..2 {
            let now = self.now;
            if let Some(c) = self.n[i].c.as_mut() {
                c.handle_link_up(now, sid);
            }
        }
        self.settle();
    }

    /// Performs both nodes' actions but delivers only `n` frames to b.
    pub fn deliver_some(&mut self, n: usize) {
        let sid = self.sid.expect("link");
        let mut delivered = 0;
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..2 {
                while let Some(a) = self.n[i].c.as_mut().and_then(|c| c.poll_action()) {
                    moved = true;
                    self.perform(i, a);
                }
            }
            if delivered < n {
                if let Some(m) = self.q[1].pop_front() {
                    delivered += 1;
                    moved = true;
                    let now = self.now;
                    self.n[1].c.as_mut().expect("b").handle_frame(now, sid, m);
                }
            }
            self.q[0].clear(); // b's acks are lost
            if !moved {
                return;
            }
        }
    }

    /// Connects and runs only `steps` rounds, then cuts.
    pub fn connect_partial(&mut self, steps: usize) {
        self.connect_steps(steps, |_| {});
        self.cut();
        self.settle();
    }

    /// Connects, runs until `stop` holds, then cuts the link.
    pub fn connect_until(&mut self, stop: impl Fn(&Pair) -> bool) {
        self.connect_steps_until(stop);
        self.cut();
        self.settle();
    }

    /// Connects and runs `steps` rounds, `check` after each.
    pub fn connect_steps(&mut self, steps: usize, mut check: impl FnMut(&Pair)) {
        let sid = self.next_sid;
        self.next_sid += 1;
        self.sid = Some(sid);
        for i in 0..2 {
            let now = self.now;
            if let Some(c) = self.n[i].c.as_mut() {
                c.handle_link_up(now, sid);
            }
        }
        self.steps(steps, false, &mut check);
    }

    /// Runs `steps` rounds of the link up, `check` after each (with
    /// `timers`, the clock moves 10 ms in a round where nothing did).
    pub fn steps(&mut self, steps: usize, timers: bool, check: &mut impl FnMut(&Pair)) {
        let sid = self.sid.expect("link");
        for _ in 0..steps {
            let mut moved = false;
            for i in 0..2 {
                if let Some(a) = self.n[i].c.as_mut().and_then(|c| c.poll_action()) {
                    moved = true;
                    self.perform(i, a);
                }
                if let Some(m) = self.q[i].pop_front() {
                    moved = true;
                    let now = self.now;
                    if let Some(c) = self.n[i].c.as_mut() {
                        c.handle_frame(now, sid, m);
                    }
                }
            }
            if !moved && timers {
                self.now += Duration::from_millis(10);
                for i in 0..2 {
                    let now = self.now;
                    if let Some(c) = self.n[i].c.as_mut() {
                        c.handle_timeout(now);
                        c.handle_frame(now, sid, Message::Ping { id: 0 });
                    }
                }
            }
            check(self);
        }
    }

    /// Connects and runs (timers moving when nothing else does) until
    /// `stop` holds; the link stays up.
    pub fn connect_steps_until(&mut self, stop: impl Fn(&Pair) -> bool) {
        self.connect_steps(0, |_| {});
        for _ in 0..1_000_000 {
            if stop(self) {
                return;
            }
            self.steps(1, true, &mut |_| {});
        }
        panic!("never reached");
    }

    /// a's `disconnect` outdates b: b takes the `Outdate` frame a sends
    /// before it closes (delivered here first, as the link would), and the
    /// two part.
    pub fn outdate_by_disconnect(&mut self) {
        let (now, sid) = (self.now, self.sid.unwrap());
        self.core(1).handle_frame(now, sid, Message::Outdate);
        self.core(0).disconnect();
        self.settle();
    }

    /// a outdates b by its `disconnect` and acknowledges a write alone
    /// (request 2, block 1 filled with 2s); returns b's generations then.
    pub fn a_writes_alone_beside_outdated_b(&mut self) -> GenIds {
        self.outdate_by_disconnect();
        self.write(0, 2, 4096, 2, 64);
        self.settle();
        assert_eq!(self.reply(0, 2), Some(Ok(())), "a writes alone");
        assert_eq!(self.core(1).disk(), DiskState::Outdated);
        self.core(1).gen()
    }

    pub fn cut(&mut self) {
        let Some(sid) = self.sid.take() else { return };
        self.q = [VecDeque::new(), VecDeque::new()];
        for i in 0..2 {
            let now = self.now;
            if let Some(c) = self.n[i].c.as_mut() {
                c.handle_link_down(now, sid, "cut");
            }
        }
    }

    /// Process crash (`power`: power loss, unflushed data lost).
    /// Time passes in steps of 1 ms (both cores' timers fire, every
    /// frame is delivered) until `done` or `steps` of them; whether done.
    pub fn tick_until(&mut self, steps: usize, done: impl Fn(&mut Pair) -> bool) -> bool {
        for _ in 0..steps {
            self.now += Duration::from_millis(1);
            let now = self.now;
            self.core(0).handle_timeout(now);
            self.core(1).handle_timeout(now);
            self.settle_now();
            if done(self) {
                return true;
            }
        }
        false
    }

    pub fn crash(&mut self, i: usize, power: bool) {
        self.n[i].c = None;
        if power {
            self.n[i].cache = self.n[i].durable.clone();
            self.n[i].boot += 1;
        }
        self.cut();
        self.settle();
    }

    pub fn restart(&mut self, i: usize) {
        self.start(i);
        self.settle();
    }

    /// As [`Pair::restart`], settling only what is due now (a crash can
    /// follow before the start's own I/O, a flush, completes).
    pub fn restart_now(&mut self, i: usize) {
        self.start(i);
        self.settle_now();
    }

    /// As [`Pair::restart`], on a new disk (all zeroes): under the
    /// surviving metadata (`keep_meta`) the node comes back `Failed`,
    /// else as a new node (never-synced metadata).
    pub fn restart_on_a_new_disk(&mut self, i: usize, keep_meta: bool) {
        self.n[i].cache = vec![0; SIZE as usize];
        self.n[i].durable = vec![0; SIZE as usize];
        if !keep_meta {
            self.n[i].meta = None;
            self.n[i].bitmap = None;
            self.n[i].al.clear();
        }
        self.start_on(i, true);
        self.settle();
    }

    fn start(&mut self, i: usize) {
        self.start_on(i, false);
    }

    fn start_on(&mut self, i: usize, disk_created: bool) {
        let node = &self.n[i];
        let rec = Recovered {
            meta: node.meta.clone(),
            bitmap: node.bitmap.clone(),
            al: node.al.iter().copied().collect(),
            disk_created,
            boot: node.boot,
        };
        // (A seed of its own per start: each start's generation ids
        // differ, as random ones do; found by review, the same seed made
        // every restart's first generation the same id.)
        self.starts += 1;
        let seed = 1000 + i as u64 + 2 * self.starts;
        self.n[i].c = Some(Core::new(self.cfg[i].clone(), rec, self.now, seed));
    }

    /// Protocol A: Primary `i` writes `len` bytes of 0x01 at `off`, which
    /// its peer completes: from then on it knows the peer's record says it
    /// may be behind (`session::PeerBehind`), and answers writes at once.
    pub fn prime_a(&mut self, i: usize, off: u64, len: u64) {
        let req = 90_000 + self.replies.len() as ReqId;
        self.write(i, req, off, 0x01, len);
        self.settle();
        assert_eq!(self.reply(i, req), Some(Ok(())), "the priming write");
    }

    pub fn write(&mut self, i: usize, req: ReqId, off: u64, byte: u8, len: u64) {
        let now = self.now;
        self.core(i).write(now, req, off, Bytes::from(vec![byte; len as usize]), false);
    }

    /// The initial sync: `a` forced, full sync to `b`.
    pub fn initial(&mut self) {
        self.core(0).promote(true, 1).unwrap();
        self.settle();
        self.connect();
        self.settle();
        assert_eq!(self.core(1).disk(), DiskState::UpToDate);
    }

    /// Bytes node `i` wrote to its disk since `p.log[since]`.
    pub fn written_to(&self, i: usize, since: usize) -> u64 {
        self.log[since..]
            .iter()
            .filter_map(|(n, e)| match e {
                Event::Write(_, len) if *n == i => Some(*len),
                _ => None,
            })
            .sum()
    }

    pub fn reply(&self, i: usize, req: ReqId) -> Option<Result<(), ReplyError>> {
        self.replies.iter().find(|(n, r, _)| *n == i && *r == req).map(|(_, _, r)| *r)
    }
}
