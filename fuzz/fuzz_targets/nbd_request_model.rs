//! The request decoder against a model of the spec's rules. The input is
//! read as a list of requests (every command and flag, lengths and offsets
//! drawn towards the limits: 0, the end, past it, overflowing u64, over
//! 32 MiB), which are encoded, fed in arbitrary fragments, and each must
//! come out exactly once, in order, with its cookie, as the command it
//! encodes or the error the spec names (rules 4, 9 and 10 of
//! shared/reference/nbd.md): no request is swallowed or split, a rejected
//! WRITE's payload is read off, a bad magic ends the stream.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use twinblock_nbd::consts::*;
use twinblock_nbd::{Command, Decoded, Negotiated, RequestDecoder};

/// One request as the client wrote it.
#[derive(Debug, Clone)]
struct Req {
    magic: u32,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    length: u32,
    /// Bytes of payload actually sent (WRITE: `length` unless it is huge).
    payload: usize,
}

#[path = "../common/draw.rs"]
mod draw;
use draw::Src;

const SIZES: [u64; 5] = [1 << 20, (1 << 20) + 512, 1 << 30, u64::MAX - 4096, 4096];

fuzz_target!(|data: &[u8]| {
    let mut src = Src(data);
    let head = src.u8();
    let size = SIZES[src.u8() as usize % SIZES.len()];
    let step = src.u8() as usize % 200 + 1;
    let read_only = head & 1 != 0;
    let structured = head & 2 != 0;
    let n = Negotiated {
        structured,
        base_allocation: structured && head & 4 != 0,
        flags: TFLAG_HAS_FLAGS | if read_only { TFLAG_READ_ONLY } else { 0 },
        size,
        export_name: String::new(),
    };
    let mut reqs = Vec::new();
    while !src.0.is_empty() && reqs.len() < 64 {
        let r = request(&mut src, size);
        let last = r.payload > MAX_PAYLOAD as usize;
        reqs.push(r);
        if last {
            break; // one oversized WRITE's payload is enough per run
        }
    }
    let mut wire = BytesMut::new();
    for r in &reqs {
        wire.put_u32(r.magic);
        wire.put_u16(r.flags);
        wire.put_u16(r.kind);
        wire.put_u64(r.cookie);
        wire.put_u64(r.offset);
        wire.put_u32(r.length);
        wire.put_bytes(0xa5, r.payload);
    }

    let mut dec = RequestDecoder::new(&n);
    let mut input = BytesMut::new();
    let mut expected = reqs.iter();
    let mut outstanding = 0usize; // requests fully sent and not yet decoded
    let mut sent = 0usize; // bytes of `wire` fed so far
    let mut ends = Vec::new(); // where each request ends in `wire`
    let mut at = 0;
    for r in &reqs {
        at += REQUEST_LEN + r.payload;
        ends.push(at);
    }
    let mut decoded = 0usize;
    // (A 32 MiB payload byte by byte would take seconds per input.)
    let step = if wire.len() > 1 << 20 { step << 16 } else { step };
    for chunk in wire.chunks(step) {
        input.extend_from_slice(chunk);
        sent += chunk.len();
        while ends.get(decoded + outstanding).is_some_and(|&e| e <= sent) {
            outstanding += 1;
        }
        loop {
            match dec.decode(&mut input) {
                Ok(Some(d)) => {
                    let r = expected.next().expect("more requests decoded than sent");
                    assert!(outstanding > 0, "{r:?} decoded before all of it was sent");
                    outstanding -= 1;
                    decoded += 1;
                    check(r, &d, &n);
                    if matches!(d, Decoded::Command { command: Command::Disconnect, .. }) {
                        return; // the server reads nothing more
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    let r = expected.next().expect("a protocol error with no request");
                    assert_ne!(r.magic, REQUEST_MAGIC, "a good request made a protocol error");
                    return;
                }
            }
        }
        // A request fully sent is decoded at once (the read loop would
        // otherwise wait for bytes the client will never send).
        assert_eq!(outstanding, 0, "a complete request was left undecoded");
    }
    assert!(expected.next().is_none(), "a request sent was never decoded");
});

/// A request drawn from the input, biased towards the edges.
fn request(src: &mut Src, size: u64) -> Req {
    let sel = src.u8();
    let magic = if sel == 0xff { src.u32() } else { REQUEST_MAGIC };
    let kind = match src.u8() {
        k @ 0..=7 => u16::from(k),
        8..=11 => 8 + u16::from(src.u8()),
        _ => u16::from(src.u8() % 8),
    };
    let flags = match src.u8() % 4 {
        0 => 0,
        1 => u16::from(src.u8() & 0x1f),
        _ => src.u16(),
    };
    let cookie = src.u64();
    let length = match src.u8() % 10 {
        0 => 0,
        1 => 1,
        2 => 512,
        3 => MAX_PAYLOAD,
        4 => MAX_PAYLOAD + 1,
        5 => u32::MAX,
        6 => src.u32(),
        _ => u32::from(src.u16()),
    };
    let offset = match src.u8() % 9 {
        0 => 0,
        1 => size,
        2 => size.saturating_sub(u64::from(length)),
        3 => size.saturating_sub(u64::from(length)) + 1,
        4 => u64::MAX,
        5 => u64::MAX - u64::from(length) + 1,
        6 => src.u64(),
        _ => u64::from(src.u32()) & !511,
    };
    // WRITE payloads are sent in full: up to 4 KiB, or (rarely) one byte
    // over the 32 MiB maximum, which must be read off exactly.
    let write = kind == CMD_WRITE && magic == REQUEST_MAGIC;
    let length = match length {
        _ if !write => length,
        l if l > MAX_PAYLOAD && sel == 0xfe => MAX_PAYLOAD + 1,
        l => l.min(4096),
    };
    let payload = if write { length as usize } else { 0 };
    Req { magic, flags, kind, cookie, offset, length, payload }
}

/// The errno the spec's rules give `r`, or None when it must be executed.
/// Where the rules allow two answers (a request both out of range and on a
/// read-only export), any of them.
fn expected_errnos(r: &Req, n: &Negotiated) -> Option<Vec<u32>> {
    let read_only = n.flags & TFLAG_READ_ONLY != 0;
    let allowed = CMD_FLAG_FUA
        | match r.kind {
            CMD_READ => CMD_FLAG_DF,
            CMD_WRITE | CMD_TRIM | CMD_FLUSH | CMD_CACHE => 0,
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => return Some(vec![EINVAL]),
        };
    if r.flags & !allowed != 0 {
        return Some(vec![EINVAL]);
    }
    if r.flags & CMD_FLAG_DF != 0 && !n.structured {
        return Some(vec![EINVAL]);
    }
    let writes = matches!(r.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
    let mut errs = Vec::new();
    if writes && read_only {
        errs.push(EPERM);
    }
    if r.kind == CMD_FLUSH {
        return (!errs.is_empty()).then_some(errs);
    }
    if r.length == 0 {
        errs.push(EINVAL);
    }
    if r.kind == CMD_READ && r.length > MAX_PAYLOAD {
        errs.push(if n.structured { EOVERFLOW } else { EINVAL });
    }
    if r.kind == CMD_WRITE && r.length > MAX_PAYLOAD {
        errs.push(EINVAL);
    }
    let end = r.offset.checked_add(u64::from(r.length));
    if !end.is_some_and(|e| e <= n.size) {
        errs.push(if matches!(r.kind, CMD_WRITE | CMD_WRITE_ZEROES) { ENOSPC } else { EINVAL });
    }
    if r.kind == CMD_BLOCK_STATUS && !n.base_allocation {
        errs.push(EINVAL);
    }
    (!errs.is_empty()).then_some(errs)
}

fn check(r: &Req, d: &Decoded, n: &Negotiated) {
    if r.kind == CMD_DISC {
        assert!(
            matches!(d, Decoded::Command { command: Command::Disconnect, .. }),
            "DISC must disconnect whatever its flags: {r:?} -> {d:?}"
        );
        return;
    }
    match (expected_errnos(r, n), d) {
        (Some(errs), Decoded::Reject { cookie, errno, is_read, .. }) => {
            assert_eq!(*cookie, r.cookie);
            assert!(errs.contains(errno), "{r:?}: errno {errno}, expected one of {errs:?}");
            assert_eq!(*is_read, r.kind == CMD_READ);
        }
        (None, Decoded::Command { cookie, command }) => {
            assert_eq!(*cookie, r.cookie);
            let fua = r.flags & CMD_FLAG_FUA != 0;
            let (o, l) = (r.offset, r.length);
            let ok = match command {
                Command::Read { offset, len } => r.kind == CMD_READ && (*offset, *len) == (o, l),
                Command::Write { offset, data, fua: f } => {
                    r.kind == CMD_WRITE
                        && *offset == o
                        && data.len() == l as usize
                        && data.iter().all(|&b| b == 0xa5)
                        && *f == fua
                }
                Command::Flush => r.kind == CMD_FLUSH,
                Command::Trim { offset, len, fua: f } => {
                    r.kind == CMD_TRIM && (*offset, *len, *f) == (o, l, fua)
                }
                Command::Cache { offset, len } => r.kind == CMD_CACHE && (*offset, *len) == (o, l),
                Command::WriteZeroes { offset, len, flags } => {
                    r.kind == CMD_WRITE_ZEROES
                        && (*offset, *len) == (o, l)
                        && flags.fua == fua
                        && flags.no_hole == (r.flags & CMD_FLAG_NO_HOLE != 0)
                        && flags.fast == (r.flags & CMD_FLAG_FAST_ZERO != 0)
                }
                Command::BlockStatus { offset, len, req_one } => {
                    r.kind == CMD_BLOCK_STATUS
                        && (*offset, *len) == (o, l)
                        && *req_one == (r.flags & CMD_FLAG_REQ_ONE != 0)
                }
                Command::Disconnect => false,
            };
            assert!(ok, "{r:?} decoded as {command:?}");
        }
        (want, got) => panic!("{r:?}: expected {want:?}, decoded {got:?}"),
    }
}
