//! The replication wire format (sans-IO): length-prefixed frames on one
//! ordered QUIC stream per direction.
//!
//! frame = u32 body length | u8 type | body. Integers are big-endian.
//! Every WRITE carries a CRC32 (crc32fast) of its payload; the receiver
//! checks it before anything is applied.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::genid::{GenIds, SplitBrainPolicy};
use crate::config::Protocol;

/// 3: adds the BENCH probe (`twinblock bench`); 5: Verified carries
/// 64-bit checksums (SHA-256) instead of CRC32s, and Verify says whether
/// it is an online verify's; 9: Hello carries the sender's protocol (a
/// pair whose nodes are configured with different protocols is refused);
/// 10: a sync target from a Consistent or Outdated source may end
/// Consistent or Outdated, and the source finishes on that State (a
/// version-9 source would wait on it for ever; a version-9 target would
/// end UpToDate over writes lost); 11: the handshake's bitmap may come as
/// BIT_WORDS (the bitmap's own words, where runs would be bigger); 12: a
/// resync chunk that is all zeroes crosses the link as RESYNC_ZERO (offset
/// and length, no payload; an older peer would take either for an unknown
/// frame); 13: Hello carries the sender's `split-brain-policy` (two nodes
/// that resolve a split brain by different rules may each give up its own
/// data, or neither: refused) and says whether the sender's bitmap base
/// only names its peer's generation (`forced_base`: a version-12 peer
/// would take a node forced after its disk failed for one whose data grew
/// from its own).
pub const VERSION: u16 = 13;
/// Largest frame body: one 32 MiB write plus its header.
pub const MAX_FRAME: u32 = (32 << 20) + 64;

const T_HELLO: u8 = 1;
const T_WRITE: u8 = 2;
const T_TRIM: u8 = 3;
const T_ZERO: u8 = 4;
const T_FLUSH: u8 = 5;
const T_ACK: u8 = 6;
const T_PING: u8 = 7;
const T_PONG: u8 = 8;
const T_STATE: u8 = 9;
const T_FAILED: u8 = 10;
const T_VERIFY: u8 = 11;
const T_VERIFIED: u8 = 12;
const T_BITS: u8 = 13;
const T_SYNC_DONE: u8 = 14;
const T_VERIFY_REQUEST: u8 = 15;
const T_RESYNC: u8 = 16;
const T_BENCH: u8 = 17;
const T_PROMOTE_ASK: u8 = 18;
const T_PROMOTE_ANSWER: u8 = 19;
const T_OUTDATE: u8 = 20;
const T_OUTDATE_DONE: u8 = 21;
const T_RESYNC_ZERO: u8 = 22;
const T_BIT_WORDS: u8 = 23;

/// Largest run list in one BITS frame.
pub const MAX_RUNS: usize = 65536;
/// Largest word list in one BIT-WORDS frame (64 KiB).
pub const MAX_BIT_WORDS: usize = 8192;
/// Largest verify request (blocks are answered with one CRC each).
pub const MAX_VERIFY: u32 = 32 << 20;
/// Most bytes a peer may have asked to checksum and not had answered: a
/// node keeps 16 ranges of 1 MiB in flight (its resync or verify window),
/// and each request costs the receiver a read of its length. (A frame of
/// 22 bytes asks for 32 MiB of reads: a peer that sent them by the
/// thousand queued terabytes of reads before the lane's bound held it.)
pub const VERIFY_IN_FLIGHT: u64 = 256 << 20;
/// Size of the scratch area `twinblock bench` writes its probes into, on
/// both nodes (beside the metadata, never the device).
pub const BENCH_AREA: u64 = 64 << 20;

/// Role as carried on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    Primary,
    Secondary,
}

/// Disk state (shared/DESIGN.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DiskState {
    UpToDate,
    Outdated,
    Inconsistent,
    Consistent,
    /// No usable disk.
    Diskless,
    /// The disk failed an I/O: detached until a full resync.
    Failed,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Primary => 1,
            Role::Secondary => 2,
        }
    }
    fn from_code(c: u8) -> Option<Role> {
        match c {
            1 => Some(Role::Primary),
            2 => Some(Role::Secondary),
            _ => None,
        }
    }
}

impl DiskState {
    fn code(self) -> u8 {
        match self {
            DiskState::UpToDate => 1,
            DiskState::Outdated => 2,
            DiskState::Inconsistent => 3,
            DiskState::Consistent => 4,
            DiskState::Diskless => 5,
            DiskState::Failed => 6,
        }
    }
    fn from_code(c: u8) -> Option<DiskState> {
        match c {
            1 => Some(DiskState::UpToDate),
            2 => Some(DiskState::Outdated),
            3 => Some(DiskState::Inconsistent),
            4 => Some(DiskState::Consistent),
            5 => Some(DiskState::Diskless),
            6 => Some(DiskState::Failed),
            _ => None,
        }
    }
}

/// A replicated data operation, numbered by the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
        crc: u32,
    },
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Zero {
        offset: u64,
        len: u32,
        no_hole: bool,
        fua: bool,
    },
    /// A resync chunk: the SyncSource's data for out-of-sync blocks. The
    /// target applies it without its activity log: the source's bitmap
    /// covers these blocks until a flush numbered after them completes.
    Resync {
        offset: u64,
        data: Bytes,
        crc: u32,
    },
    /// A resync chunk that is all zeroes, without them: the target applies
    /// it as it applies an all-zero [`Op::Resync`] (a zeroing that may
    /// punch), and only its offset and length cross the link (a full sync
    /// of a mostly empty device moved the device's size). `len` is whole
    /// blocks, not 0, inside the device (checked by the receiving core).
    ResyncZero {
        offset: u64,
        len: u32,
    },
    /// A barrier: everything before it is durable on the peer once it is done.
    Flush,
    /// Checksum each 4 KiB block of the range, as it stands after every
    /// earlier operation, and answer with `Verified`.
    Verify {
        offset: u64,
        len: u32,
        /// A range of an online verify (shown as `VerifyTarget` by the
        /// node answering it); false: a checksum resync's probe.
        online: bool,
    },
    /// A `twinblock bench` probe: numbered and acknowledged like a write,
    /// but written into the scratch area (`offset` within [`BENCH_AREA`]),
    /// never the device; `store: false` only crosses the link (the peer
    /// acknowledges it without writing: link throughput).
    Bench {
        offset: u64,
        data: Bytes,
        crc: u32,
        store: bool,
    },
}

impl Op {
    pub fn resync(offset: u64, data: Bytes) -> Op {
        let crc = crc32fast::hash(&data);
        Op::Resync { offset, data, crc }
    }

    /// The resync chunk that carries `data` at `offset`: a
    /// [`Op::ResyncZero`] when it is all zeroes (and not empty), else a
    /// [`Op::Resync`] with its bytes.
    pub fn resync_chunk(offset: u64, data: Bytes) -> Op {
        match u32::try_from(data.len()) {
            Ok(len) if len > 0 && all_zero(&data) => Op::ResyncZero { offset, len },
            _ => Op::resync(offset, data),
        }
    }

    pub fn write(offset: u64, data: Bytes, fua: bool) -> Op {
        let crc = crc32fast::hash(&data);
        Op::Write { offset, data, fua, crc }
    }

    pub fn bench(offset: u64, data: Bytes, store: bool) -> Op {
        let crc = crc32fast::hash(&data);
        Op::Bench { offset, data, crc, store }
    }

    /// The device range it changes, if any.
    pub fn range(&self) -> Option<(u64, u64)> {
        match self {
            Op::Write { offset, data, .. } | Op::Resync { offset, data, .. } => {
                Some((*offset, data.len() as u64))
            }
            Op::Trim { offset, len, .. }
            | Op::Zero { offset, len, .. }
            | Op::ResyncZero { offset, len } => Some((*offset, *len as u64)),
            // A bench probe never touches the device.
            Op::Flush | Op::Verify { .. } | Op::Bench { .. } => None,
        }
    }

    /// Payload bytes that cross the link.
    pub fn wire_bytes(&self) -> u64 {
        match self {
            Op::Write { data, .. } | Op::Resync { data, .. } | Op::Bench { data, .. } => {
                data.len() as u64
            }
            _ => 0,
        }
    }

    /// A resync chunk (with its data or as zeroes).
    pub fn is_resync(&self) -> bool {
        matches!(self, Op::Resync { .. } | Op::ResyncZero { .. })
    }
}

/// Whether `data` holds only zero bytes (a word at a time).
pub fn all_zero(data: &[u8]) -> bool {
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    words.into_iter().all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && tail.iter().all(|&b| b == 0)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub version: u16,
    pub node: String,
    pub resource: String,
    pub size: u64,
    pub role: Role,
    pub disk: DiskState,
    /// Bytes the sender knows to be out of sync on the other side.
    pub peer_out_of_sync: u64,
    /// The sender's disk was never written since twinblock created it.
    pub fresh: bool,
    /// The sender's generation ids (the sync handshake decides on them).
    pub gen: GenIds,
    /// The operator ran `discard-my-data` on the sender.
    pub discard: bool,
    /// When the sender was last promoted (ms since the epoch; 0: never).
    pub promoted_at: u64,
    /// Random, new on every connection (never 0): a full sync this
    /// connection starts is known by its source's nonce.
    pub nonce: u64,
    /// The full sync the sender's data is part of, as source or target
    /// (its source's nonce; 0: none): a full sync cut short resumes from
    /// the source's bitmap when both name the same one.
    pub full_sync: u64,
    /// Writes the sender held may be gone from its disk since its data
    /// was last reconciled with its peer (see [`Lost`]).
    pub lost: Lost,
    /// The sender's configured protocol: both nodes must run the same one
    /// (when a write is answered on one side decides what the other must
    /// remember of it after a crash).
    pub protocol: Protocol,
    /// The sender's configured `split-brain-policy`: both nodes must
    /// resolve a split brain by the same rule (each decides alone, and
    /// their decisions must mirror).
    pub split_brain_policy: SplitBrainPolicy,
    /// The sender's bitmap base only names its peer's generation: its data
    /// does not descend from it (`MetaRecord::forced_base`).
    pub forced_base: bool,
}

/// What a node may have lost since its data was last reconciled with its
/// peer, worst last: on one generation the node that lost less is the
/// better resync source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Lost {
    #[default]
    None = 0,
    /// Protocol B: a Secondary's process stopped (or a Primary promoted
    /// with received writes not yet written): writes it had received and
    /// not written are gone; its page cache is not.
    Received = 1,
    /// Its machine restarted (a power loss): unflushed writes it had
    /// acknowledged or received may be gone.
    Cache = 2,
}

impl Lost {
    /// From the hello's byte (an unknown value counts as the worst).
    pub fn from_wire(b: u8) -> Lost {
        match b {
            0 => Lost::None,
            1 => Lost::Received,
            _ => Lost::Cache,
        }
    }
}

fn protocol_code(p: Protocol) -> u8 {
    match p {
        Protocol::A => 1,
        Protocol::B => 2,
        Protocol::C => 3,
        Protocol::Adaptive => 4,
    }
}

fn policy_code(p: SplitBrainPolicy) -> u8 {
    match p {
        SplitBrainPolicy::Disconnect => 0,
        SplitBrainPolicy::DiscardYoungerPrimary => 1,
        SplitBrainPolicy::DiscardLeastChanges => 2,
        SplitBrainPolicy::DiscardZeroChanges => 3,
    }
}

fn policy_from_code(c: u8) -> Option<SplitBrainPolicy> {
    match c {
        0 => Some(SplitBrainPolicy::Disconnect),
        1 => Some(SplitBrainPolicy::DiscardYoungerPrimary),
        2 => Some(SplitBrainPolicy::DiscardLeastChanges),
        3 => Some(SplitBrainPolicy::DiscardZeroChanges),
        _ => None,
    }
}

fn protocol_from_code(c: u8) -> Option<Protocol> {
    match c {
        1 => Some(Protocol::A),
        2 => Some(Protocol::B),
        3 => Some(Protocol::C),
        4 => Some(Protocol::Adaptive),
        _ => None,
    }
}

fn put_gen(b: &mut BytesMut, g: &GenIds) {
    b.put_u64(g.current);
    b.put_u64(g.bitmap);
    b.put_u64(g.history[0]);
    b.put_u64(g.history[1]);
}

fn get_gen(b: &mut Bytes) -> GenIds {
    GenIds { current: b.get_u64(), bitmap: b.get_u64(), history: [b.get_u64(), b.get_u64()] }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Data {
        seq: u64,
        op: Op,
    },
    /// Cumulative: every op up to `received` has arrived, every op up to
    /// `done` is applied (and, for FUA writes and flushes, durable).
    Ack {
        received: u64,
        done: u64,
    },
    /// The peer could not apply `seq` (its store failed).
    Failed {
        seq: u64,
        errno: i32,
    },
    /// Answer to `Op::Verify` number `seq`: one checksum per 4 KiB block
    /// (64 bits of its SHA-256, `core::apply::block_sums`).
    Verified {
        seq: u64,
        sums: Vec<u64>,
    },
    Ping {
        id: u64,
    },
    Pong {
        id: u64,
    },
    /// Handshake: the sender's out-of-sync blocks, as runs (first block,
    /// block count); `last` ends the sender's bitmap.
    Bits {
        runs: Vec<(u64, u64)>,
        last: bool,
    },
    /// Handshake: the sender's out-of-sync blocks as the bitmap's own
    /// words (bit i of word w: block 64 w + i) from word `first` on, where
    /// they are too fragmented for runs; `last` as in `Bits`.
    BitWords {
        first: u64,
        words: Vec<u64>,
        last: bool,
    },
    /// SyncSource -> SyncTarget: every out-of-sync block was sent and is
    /// durable there; the target now holds generation `current`.
    SyncDone {
        current: u64,
    },
    /// A Secondary asks its Primary to run online verify.
    VerifyRequest,
    /// The sender's role or disk changed (same meaning as in [`Hello`]).
    State {
        role: Role,
        disk: DiskState,
        peer_out_of_sync: u64,
        fresh: bool,
        current: u64,
        /// When the sender was last promoted (as in [`Hello`]): a
        /// promotion during a session reaches the peer, whose own next
        /// promotion is numbered after it.
        promoted_at: u64,
    },
    /// `primary` on a connected Secondary: may the sender become Primary?
    /// (`ask` numbers the request.)
    PromoteAsk {
        ask: u64,
    },
    /// The answer to `PromoteAsk` number `ask`: granted, or refused and why.
    PromoteAnswer {
        ask: u64,
        granted: bool,
        why: String,
    },
    /// The sender, Primary, ends the session by its operator's
    /// `disconnect`: its writes from now on will not reach the receiving
    /// Secondary, whose disk is Outdated from now on (promoting it takes
    /// `--force`, as DRBD outdates the peer of a graceful disconnect).
    Outdate,
    /// The receiving Primary's `Outdate` is done: the sender's disk is
    /// Outdated in its saved record (or was not current to begin with).
    /// The Primary closes the session on it: a Secondary that crashed
    /// before saving came back UpToDate (found by the simulator).
    OutdateDone,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("frame of {0} bytes is larger than the limit")]
    TooLarge(u32),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("malformed {0} frame")]
    Malformed(&'static str),
}

impl Message {
    /// Encodes into a header and, for writes, the payload (not copied).
    pub fn encode(&self) -> (BytesMut, Option<Bytes>) {
        let mut b = BytesMut::with_capacity(64);
        b.put_u32(0); // length, patched below
        let mut payload = None;
        match self {
            Message::Hello(h) => {
                b.put_u8(T_HELLO);
                b.put_u16(h.version);
                put_str(&mut b, &h.node);
                put_str(&mut b, &h.resource);
                b.put_u64(h.size);
                b.put_u8(h.role.code());
                b.put_u8(h.disk.code());
                b.put_u64(h.peer_out_of_sync);
                b.put_u8(h.fresh as u8);
                put_gen(&mut b, &h.gen);
                b.put_u8(h.discard as u8);
                b.put_u64(h.promoted_at);
                b.put_u64(h.nonce);
                b.put_u64(h.full_sync);
                b.put_u8(h.lost as u8);
                b.put_u8(protocol_code(h.protocol));
                b.put_u8(policy_code(h.split_brain_policy));
                b.put_u8(h.forced_base as u8);
            }
            Message::Data { seq, op } => match op {
                Op::Write { offset, data, fua, crc } => {
                    b.put_u8(T_WRITE);
                    b.put_u64(*seq);
                    b.put_u64(*offset);
                    b.put_u8(*fua as u8);
                    b.put_u32(*crc);
                    b.put_u32(data.len() as u32);
                    payload = Some(data.clone());
                }
                Op::Trim { offset, len, fua } => {
                    b.put_u8(T_TRIM);
                    b.put_u64(*seq);
                    b.put_u64(*offset);
                    b.put_u32(*len);
                    b.put_u8(*fua as u8);
                }
                Op::Zero { offset, len, no_hole, fua } => {
                    b.put_u8(T_ZERO);
                    b.put_u64(*seq);
                    b.put_u64(*offset);
                    b.put_u32(*len);
                    b.put_u8(*no_hole as u8);
                    b.put_u8(*fua as u8);
                }
                Op::Resync { offset, data, crc } => {
                    b.put_u8(T_RESYNC);
                    b.put_u64(*seq);
                    b.put_u64(*offset);
                    b.put_u32(*crc);
                    b.put_u32(data.len() as u32);
                    payload = Some(data.clone());
                }
                Op::ResyncZero { offset, len } => {
                    b.put_u8(T_RESYNC_ZERO);
                    b.put_u64(*seq);
                    b.put_u64(*offset);
                    b.put_u32(*len);
                }
                Op::Flush => {
                    b.put_u8(T_FLUSH);
                    b.put_u64(*seq);
                }
                Op::Verify { offset, len, online } => {
                    b.put_u8(T_VERIFY);
                    b.put_u64(*seq);
                    b.put_u64(*offset);
                    b.put_u32(*len);
                    b.put_u8(u8::from(*online));
                }
                Op::Bench { offset, data, crc, store } => {
                    b.put_u8(T_BENCH);
                    b.put_u64(*seq);
                    b.put_u64(*offset);
                    b.put_u32(*crc);
                    b.put_u8(*store as u8);
                    b.put_u32(data.len() as u32);
                    payload = Some(data.clone());
                }
            },
            Message::Verified { seq, sums } => {
                b.put_u8(T_VERIFIED);
                b.put_u64(*seq);
                b.put_u32(sums.len() as u32);
                for c in sums {
                    b.put_u64(*c);
                }
            }
            Message::Bits { runs, last } => {
                b.put_u8(T_BITS);
                b.put_u8(*last as u8);
                b.put_u32(runs.len() as u32);
                for (start, n) in runs {
                    b.put_u64(*start);
                    b.put_u64(*n);
                }
            }
            Message::BitWords { first, words, last } => {
                b.put_u8(T_BIT_WORDS);
                b.put_u8(*last as u8);
                b.put_u64(*first);
                b.put_u32(words.len() as u32);
                for w in words {
                    b.put_u64(*w);
                }
            }
            Message::SyncDone { current } => {
                b.put_u8(T_SYNC_DONE);
                b.put_u64(*current);
            }
            Message::VerifyRequest => b.put_u8(T_VERIFY_REQUEST),
            Message::Outdate => b.put_u8(T_OUTDATE),
            Message::OutdateDone => b.put_u8(T_OUTDATE_DONE),
            Message::Ack { received, done } => {
                b.put_u8(T_ACK);
                b.put_u64(*received);
                b.put_u64(*done);
            }
            Message::Failed { seq, errno } => {
                b.put_u8(T_FAILED);
                b.put_u64(*seq);
                b.put_i32(*errno);
            }
            Message::Ping { id } => {
                b.put_u8(T_PING);
                b.put_u64(*id);
            }
            Message::Pong { id } => {
                b.put_u8(T_PONG);
                b.put_u64(*id);
            }
            Message::PromoteAsk { ask } => {
                b.put_u8(T_PROMOTE_ASK);
                b.put_u64(*ask);
            }
            Message::PromoteAnswer { ask, granted, why } => {
                b.put_u8(T_PROMOTE_ANSWER);
                b.put_u64(*ask);
                b.put_u8(*granted as u8);
                put_str(&mut b, why);
            }
            Message::State { role, disk, peer_out_of_sync, fresh, current, promoted_at } => {
                b.put_u8(T_STATE);
                b.put_u8(role.code());
                b.put_u8(disk.code());
                b.put_u64(*peer_out_of_sync);
                b.put_u8(*fresh as u8);
                b.put_u64(*current);
                b.put_u64(*promoted_at);
            }
        }
        let body = (b.len() - 4 + payload.as_ref().map_or(0, |p| p.len())) as u32;
        b[..4].copy_from_slice(&body.to_be_bytes());
        (b, payload)
    }

    /// Encodes into one contiguous buffer (tests, small messages).
    pub fn to_bytes(&self) -> BytesMut {
        let (mut head, payload) = self.encode();
        if let Some(p) = payload {
            head.extend_from_slice(&p);
        }
        head
    }
}

fn put_str(b: &mut BytesMut, s: &str) {
    let s = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    b.put_u16(s.len() as u16);
    b.put_slice(s);
}

fn get_str(b: &mut Bytes, what: &'static str) -> Result<String, WireError> {
    if b.remaining() < 2 {
        return Err(WireError::Malformed(what));
    }
    let n = b.get_u16() as usize;
    if b.remaining() < n {
        return Err(WireError::Malformed(what));
    }
    String::from_utf8(b.split_to(n).to_vec()).map_err(|_| WireError::Malformed(what))
}

/// Takes one complete frame off the front of `input`, if there is one.
pub fn decode(input: &mut BytesMut) -> Result<Option<Message>, WireError> {
    if input.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([input[0], input[1], input[2], input[3]]);
    if len > MAX_FRAME || len == 0 {
        return Err(WireError::TooLarge(len));
    }
    if input.len() < 4 + len as usize {
        input.reserve(4 + len as usize - input.len());
        return Ok(None);
    }
    input.advance(4);
    let mut b = input.split_to(len as usize).freeze();
    let t = b.get_u8();
    let need = |b: &Bytes, n: usize, what| {
        if b.remaining() < n {
            Err(WireError::Malformed(what))
        } else {
            Ok(())
        }
    };
    let m = match t {
        T_HELLO => {
            need(&b, 2, "hello")?;
            let version = b.get_u16();
            let node = get_str(&mut b, "hello")?;
            let resource = get_str(&mut b, "hello")?;
            need(&b, 19 + 33 + 8 + 16, "hello")?;
            let size = b.get_u64();
            let role = Role::from_code(b.get_u8()).ok_or(WireError::Malformed("hello role"))?;
            let disk =
                DiskState::from_code(b.get_u8()).ok_or(WireError::Malformed("hello disk"))?;
            let peer_out_of_sync = b.get_u64();
            let fresh = b.get_u8() != 0;
            let gen = get_gen(&mut b);
            let discard = b.get_u8() != 0;
            let promoted_at = b.get_u64();
            let nonce = b.get_u64();
            let full_sync = b.get_u64();
            // (An older peer's hello ends here: its version is refused by
            // name, not as a malformed frame.)
            let lost = Lost::from_wire(if b.has_remaining() { b.get_u8() } else { 0 });
            // (Absent from an older peer's hello, refused by its version.)
            let protocol = if b.has_remaining() {
                protocol_from_code(b.get_u8()).ok_or(WireError::Malformed("hello protocol"))?
            } else {
                Protocol::C
            };
            // (Absent from an older peer's hello, refused by its version.)
            let split_brain_policy = if b.has_remaining() {
                policy_from_code(b.get_u8())
                    .ok_or(WireError::Malformed("hello split-brain policy"))?
            } else {
                SplitBrainPolicy::Disconnect
            };
            let forced_base = b.has_remaining() && b.get_u8() != 0;
            Message::Hello(Hello {
                version,
                node,
                resource,
                size,
                role,
                disk,
                peer_out_of_sync,
                fresh,
                gen,
                discard,
                promoted_at,
                nonce,
                full_sync,
                lost,
                protocol,
                split_brain_policy,
                forced_base,
            })
        }
        T_WRITE => {
            need(&b, 25, "write")?;
            let seq = b.get_u64();
            let offset = b.get_u64();
            let fua = b.get_u8() != 0;
            let crc = b.get_u32();
            let n = b.get_u32() as usize;
            if b.remaining() != n {
                return Err(WireError::Malformed("write length"));
            }
            Message::Data { seq, op: Op::Write { offset, data: b.split_to(n), fua, crc } }
        }
        T_TRIM => {
            need(&b, 21, "trim")?;
            let seq = b.get_u64();
            let offset = b.get_u64();
            let len = b.get_u32();
            Message::Data { seq, op: Op::Trim { offset, len, fua: b.get_u8() != 0 } }
        }
        T_ZERO => {
            need(&b, 22, "zero")?;
            let seq = b.get_u64();
            let offset = b.get_u64();
            let len = b.get_u32();
            let no_hole = b.get_u8() != 0;
            Message::Data { seq, op: Op::Zero { offset, len, no_hole, fua: b.get_u8() != 0 } }
        }
        T_BITS => {
            need(&b, 5, "bits")?;
            let last = b.get_u8() != 0;
            let n = b.get_u32() as usize;
            if n > MAX_RUNS || b.remaining() != n * 16 {
                return Err(WireError::Malformed("bits length"));
            }
            Message::Bits { runs: (0..n).map(|_| (b.get_u64(), b.get_u64())).collect(), last }
        }
        T_BIT_WORDS => {
            need(&b, 13, "bit-words")?;
            let last = b.get_u8() != 0;
            let first = b.get_u64();
            let n = b.get_u32() as usize;
            if n > MAX_BIT_WORDS || b.remaining() != n * 8 {
                return Err(WireError::Malformed("bit-words length"));
            }
            Message::BitWords { first, words: (0..n).map(|_| b.get_u64()).collect(), last }
        }
        T_SYNC_DONE => {
            need(&b, 8, "sync-done")?;
            Message::SyncDone { current: b.get_u64() }
        }
        T_VERIFY_REQUEST => Message::VerifyRequest,
        T_OUTDATE => Message::Outdate,
        T_OUTDATE_DONE => Message::OutdateDone,
        T_RESYNC => {
            need(&b, 24, "resync")?;
            let seq = b.get_u64();
            let offset = b.get_u64();
            let crc = b.get_u32();
            let n = b.get_u32() as usize;
            if b.remaining() != n {
                return Err(WireError::Malformed("resync length"));
            }
            Message::Data { seq, op: Op::Resync { offset, data: b.split_to(n), crc } }
        }
        T_RESYNC_ZERO => {
            need(&b, 20, "resync-zero")?;
            let seq = b.get_u64();
            Message::Data { seq, op: Op::ResyncZero { offset: b.get_u64(), len: b.get_u32() } }
        }
        T_BENCH => {
            need(&b, 25, "bench")?;
            let seq = b.get_u64();
            let offset = b.get_u64();
            let crc = b.get_u32();
            let store = b.get_u8() != 0;
            let n = b.get_u32() as usize;
            if b.remaining() != n {
                return Err(WireError::Malformed("bench length"));
            }
            Message::Data { seq, op: Op::Bench { offset, data: b.split_to(n), crc, store } }
        }
        T_FLUSH => {
            need(&b, 8, "flush")?;
            Message::Data { seq: b.get_u64(), op: Op::Flush }
        }
        T_ACK => {
            need(&b, 16, "ack")?;
            Message::Ack { received: b.get_u64(), done: b.get_u64() }
        }
        T_VERIFY => {
            need(&b, 21, "verify")?;
            Message::Data {
                seq: b.get_u64(),
                op: Op::Verify { offset: b.get_u64(), len: b.get_u32(), online: b.get_u8() != 0 },
            }
        }
        T_VERIFIED => {
            need(&b, 12, "verified")?;
            let seq = b.get_u64();
            let n = b.get_u32() as usize;
            if n as u64 * 8 > MAX_FRAME as u64 || b.remaining() != n * 8 {
                return Err(WireError::Malformed("verified length"));
            }
            Message::Verified { seq, sums: (0..n).map(|_| b.get_u64()).collect() }
        }
        T_FAILED => {
            need(&b, 12, "failed")?;
            Message::Failed { seq: b.get_u64(), errno: b.get_i32() }
        }
        T_PING => {
            need(&b, 8, "ping")?;
            Message::Ping { id: b.get_u64() }
        }
        T_PONG => {
            need(&b, 8, "pong")?;
            Message::Pong { id: b.get_u64() }
        }
        T_STATE => {
            need(&b, 27, "state")?;
            let role = Role::from_code(b.get_u8()).ok_or(WireError::Malformed("state role"))?;
            let disk =
                DiskState::from_code(b.get_u8()).ok_or(WireError::Malformed("state disk"))?;
            let peer_out_of_sync = b.get_u64();
            let fresh = b.get_u8() != 0;
            let current = b.get_u64();
            let promoted_at = b.get_u64();
            Message::State { role, disk, peer_out_of_sync, fresh, current, promoted_at }
        }
        T_PROMOTE_ASK => {
            need(&b, 8, "promote ask")?;
            Message::PromoteAsk { ask: b.get_u64() }
        }
        T_PROMOTE_ANSWER => {
            need(&b, 9, "promote answer")?;
            let ask = b.get_u64();
            let granted = b.get_u8() != 0;
            let why = get_str(&mut b, "promote answer")?;
            Message::PromoteAnswer { ask, granted, why }
        }
        other => return Err(WireError::UnknownType(other)),
    };
    Ok(Some(m))
}
