//! The handshake against the spec's rules, option by option. The input is
//! read as a list of options (every NBD_OPT_* and unknown ones, in any
//! order; GO/INFO with odd info requests, names right, wrong, empty, too
//! long, not UTF-8; meta contexts with long or bad names; lengths that lie;
//! oversized payloads), each fed in arbitrary fragments. After each option
//! the output must be exactly its answer: replies for that option only,
//! zero or more of the informational kinds the option allows, then one
//! final ACK or error; unsupported options (STARTTLS, EXTENDED_HEADERS,
//! unknown) ERR_UNSUP and negotiation goes on; INFO_EXPORT exactly once,
//! 12 bytes, with the export's size and flags; what GO hands to the
//! transmission phase matches what was negotiated (structured replies,
//! the meta context of the last SET that succeeded, READ_ONLY).
#![no_main]

use bytes::{Buf, BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use twinblock_nbd::consts::*;
use twinblock_nbd::{BlockSizes, ExportInfo, Handshake, Progress};

#[path = "../common/draw.rs"]
mod draw;
use draw::Src;

const NAME: &str = "twinblock";
const SIZE: u64 = (1 << 30) + 512;

/// A name: the export's, the default, another, too long, not UTF-8.
fn name(src: &mut Src) -> (Vec<u8>, bool) {
    match src.u8() % 8 {
        0 => (Vec::new(), true),
        1 | 2 => (NAME.as_bytes().to_vec(), true),
        3 => (b"other".to_vec(), false),
        4 => (vec![b'n'; MAX_STRING + 1 + src.u8() as usize], false),
        5 => (vec![0xff, 0xfe], false),
        6 => (format!("{NAME}\0").into_bytes(), false),
        _ => {
            let n = src.u8() as usize % 16;
            let v: Vec<u8> = (0..n).map(|_| src.u8()).collect();
            let ok = v.is_empty() || v == NAME.as_bytes();
            (v, ok)
        }
    }
}

/// A meta context query.
fn query(src: &mut Src) -> Vec<u8> {
    match src.u8() % 10 {
        0..=2 => META_BASE_ALLOCATION.as_bytes().to_vec(),
        3 => b"base:".to_vec(),
        4 => Vec::new(),
        5 => b"qemu:dirty-bitmap:x".to_vec(),
        6 => vec![b'q'; MAX_STRING + 1],
        7 => vec![0xc3, 0x28],
        8 => b"base:allocation\0".to_vec(),
        _ => {
            let n = src.u8() as usize % 24;
            (0..n).map(|_| src.u8()).collect()
        }
    }
}

/// An option: its number and payload, plus what the model knows of it.
struct Opt {
    option: u32,
    /// Sent with its true length (a length field that lies only
    /// desynchronizes the stream); lies are inside the payload.
    data: Vec<u8>,
    kind: Kind,
}

enum Kind {
    Raw,
    /// INFO/GO: well formed or not, name matches, info types asked for.
    Info {
        well_formed: bool,
        matches: bool,
        infos: Vec<u16>,
    },
    /// LIST/SET_META_CONTEXT.
    Meta {
        well_formed: bool,
        matches: bool,
        queries: Vec<Vec<u8>>,
    },
}

fn option(src: &mut Src) -> Opt {
    let option = match src.u8() % 16 {
        o @ 1..=11 => u32::from(o),
        0 => 0,
        12 => 4,
        13 => 12 + u32::from(src.u8()),
        _ => src.u32(),
    };
    match option {
        OPT_INFO | OPT_GO if src.u8() % 8 != 0 => {
            let (n, matches) = name(src);
            let count = src.u8() as usize % 6;
            let infos: Vec<u16> = (0..count)
                .map(|_| match src.u8() % 6 {
                    k @ 0..=3 => u16::from(k),
                    4 => 4,
                    _ => src.u16(),
                })
                .collect();
            let mut data = Vec::new();
            data.put_u32(n.len() as u32);
            data.put_slice(&n);
            // The count may lie (then the request is malformed).
            let lie = src.u8() % 8 == 0;
            data.put_u16(infos.len() as u16 + u16::from(lie));
            for &i in &infos {
                data.put_u16(i);
            }
            let well_formed = !lie && n.len() <= MAX_STRING && std::str::from_utf8(&n).is_ok();
            Opt { option, data, kind: Kind::Info { well_formed, matches, infos } }
        }
        OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT if src.u8() % 8 != 0 => {
            let (n, matches) = name(src);
            let count = src.u8() as usize % 5;
            let queries: Vec<Vec<u8>> = (0..count).map(|_| query(src)).collect();
            let mut data = Vec::new();
            data.put_u32(n.len() as u32);
            data.put_slice(&n);
            let lie = src.u8() % 8 == 0;
            data.put_u32(queries.len() as u32 + u32::from(lie));
            let mut well_formed = !lie && n.len() <= MAX_STRING && std::str::from_utf8(&n).is_ok();
            for q in &queries {
                data.put_u32(q.len() as u32);
                data.put_slice(q);
                well_formed &= q.len() <= MAX_STRING && std::str::from_utf8(q).is_ok();
            }
            Opt { option, data, kind: Kind::Meta { well_formed, matches, queries } }
        }
        _ => {
            let len = match src.u8() % 8 {
                0..=4 => 0,
                5 => src.u8() as usize,
                6 => MAX_OPTION_LEN as usize + 1,
                _ => src.u16() as usize,
            };
            let data = (0..len).map(|i| i as u8).collect();
            Opt { option, data, kind: Kind::Raw }
        }
    }
}

/// One option reply.
#[derive(Debug)]
struct Rep {
    option: u32,
    kind: u32,
    data: Vec<u8>,
}

fn parse_replies(mut out: &[u8]) -> Vec<Rep> {
    let mut reps = Vec::new();
    while !out.is_empty() {
        assert!(out.len() >= 20, "truncated option reply header {out:?}");
        assert_eq!(out.get_u64(), OPTION_REPLY_MAGIC);
        let option = out.get_u32();
        let kind = out.get_u32();
        let len = out.get_u32() as usize;
        assert!(out.len() >= len, "truncated option reply");
        reps.push(Rep { option, kind, data: out[..len].to_vec() });
        out.advance(len);
    }
    reps
}

fuzz_target!(|data: &[u8]| {
    let mut src = Src(data);
    let head = src.u8();
    let step = src.u8() as usize % 64 + 1;
    let read_only = head & 1 != 0;
    let no_zeroes = head & 2 != 0;
    let export = ExportInfo {
        name: NAME.into(),
        description: "fuzz".into(),
        size: SIZE,
        read_only,
        block_sizes: BlockSizes::default(),
    };
    let mut hs = Handshake::new(export);
    let greeting = hs.take_output();
    assert_eq!(
        &greeting[..],
        &{
            let mut g = Vec::new();
            g.put_u64(NBDMAGIC);
            g.put_u64(IHAVEOPT);
            g.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
            g
        }[..]
    );
    let mut input = BytesMut::new();
    input.put_u32(FLAG_C_FIXED_NEWSTYLE | if no_zeroes { FLAG_C_NO_ZEROES } else { 0 });
    assert_eq!(hs.receive(&mut input), Ok(Progress::NeedMore));

    // The model's state.
    let mut structured = false;
    let mut base_allocation = false;
    while !src.0.is_empty() {
        let opt = option(&mut src);
        let mut wire = BytesMut::new();
        wire.put_u64(IHAVEOPT);
        wire.put_u32(opt.option);
        wire.put_u32(opt.data.len() as u32);
        wire.put_slice(&opt.data);
        if opt.option == OPT_EXPORT_NAME && opt.data.len() > MAX_STRING {
            // Refused by closing: no framing for an error.
            input.extend_from_slice(&wire[..16]);
            assert!(hs.receive(&mut input).is_err());
            return;
        }
        // All but the last fragment: nothing to answer yet. (Payloads past
        // 4 KiB in larger fragments: byte by byte they cost the fuzzer
        // most of its time.)
        let step = if wire.len() > 4096 { step << 8 } else { step };
        let mut chunks = wire.chunks(step).peekable();
        let progress = loop {
            let chunk = chunks.next().expect("an option has bytes");
            input.extend_from_slice(chunk);
            let p = hs.receive(&mut input);
            if chunks.peek().is_some() {
                assert_eq!(p, Ok(Progress::NeedMore), "answered before the option was whole");
                assert!(!hs.has_output(), "output before the option was whole");
            } else {
                break p;
            }
        };
        assert!(input.is_empty(), "input left over after a whole option");
        let out = hs.take_output();
        if opt.option == OPT_EXPORT_NAME {
            let matches = opt.data.is_empty() || opt.data == NAME.as_bytes();
            if !matches {
                assert!(progress.is_err(), "unknown export with EXPORT_NAME must close");
                return;
            }
            let Ok(Progress::Transmission(n)) = progress else { panic!("{progress:?}") };
            assert_eq!(out.len(), if no_zeroes { 10 } else { 134 });
            let mut o = &out[..];
            assert_eq!(o.get_u64(), SIZE);
            let flags = o.get_u16();
            check_flags(flags, read_only, structured);
            assert!(o.iter().all(|&b| b == 0));
            assert_eq!(n.flags, flags);
            assert_eq!(n.structured, structured);
            assert_eq!(n.base_allocation, structured && base_allocation);
            return;
        }
        let reps = parse_replies(&out);
        let (last, infos) = reps.split_last().expect("every option gets a reply");
        for r in &reps {
            assert_eq!(r.option, opt.option, "reply for another option: {r:?}");
        }
        assert!(
            last.kind == REP_ACK || last.kind & (1 << 31) != 0,
            "the last reply must be final: {last:?}"
        );
        for r in infos {
            assert!(
                r.kind != REP_ACK && r.kind & (1 << 31) == 0,
                "final reply before the end: {r:?}"
            );
        }
        let err = last.kind & (1 << 31) != 0;
        if err {
            assert!(infos.is_empty(), "informational replies before an error: {reps:?}");
        }
        if opt.data.len() > MAX_OPTION_LEN as usize {
            assert_eq!(last.kind, REP_ERR_TOO_BIG);
            if opt.option == OPT_SET_META_CONTEXT {
                base_allocation = false;
            }
            assert_eq!(progress, Ok(Progress::NeedMore));
            continue;
        }
        match opt.option {
            OPT_ABORT => {
                assert_eq!(last.kind, REP_ACK);
                assert_eq!(progress, Ok(Progress::Abort));
                return;
            }
            OPT_LIST => {
                if opt.data.is_empty() {
                    assert_eq!(last.kind, REP_ACK);
                    assert_eq!(infos.len(), 1);
                    assert_eq!(infos[0].kind, REP_SERVER);
                    let mut d = &infos[0].data[..];
                    let n = d.get_u32() as usize;
                    assert_eq!(&d[..n], NAME.as_bytes());
                } else {
                    assert_eq!(last.kind, REP_ERR_INVALID);
                }
            }
            OPT_STRUCTURED_REPLY => {
                if opt.data.is_empty() {
                    assert_eq!(last.kind, REP_ACK);
                    structured = true;
                } else {
                    assert_eq!(last.kind, REP_ERR_INVALID);
                }
            }
            OPT_INFO | OPT_GO => {
                let Kind::Info { well_formed, matches, infos: asked } = &opt.kind else {
                    // A payload that is not an info request at all.
                    assert!(err, "garbage INFO/GO accepted: {reps:?}");
                    assert_eq!(progress, Ok(Progress::NeedMore));
                    continue;
                };
                if !well_formed {
                    assert_eq!(last.kind, REP_ERR_INVALID, "{reps:?}");
                } else if !matches {
                    assert_eq!(last.kind, REP_ERR_UNKNOWN, "{reps:?}");
                } else {
                    assert_eq!(last.kind, REP_ACK);
                    let mut exports = 0;
                    let mut flags = 0;
                    let mut seen = Vec::new();
                    for r in infos {
                        assert_eq!(r.kind, REP_INFO);
                        let mut d = &r.data[..];
                        let t = d.get_u16();
                        assert!(!seen.contains(&t), "info {t} sent twice");
                        seen.push(t);
                        match t {
                            INFO_EXPORT => {
                                exports += 1;
                                assert_eq!(r.data.len(), 12);
                                assert_eq!(d.get_u64(), SIZE);
                                flags = d.get_u16();
                                check_flags(flags, read_only, structured);
                            }
                            INFO_BLOCK_SIZE => {
                                assert!(asked.contains(&t));
                                assert_eq!(r.data.len(), 14);
                                let (min, pref, max) = (d.get_u32(), d.get_u32(), d.get_u32());
                                assert!(min.is_power_of_two() && min <= 65536);
                                assert!(pref.is_power_of_two() && pref >= min.max(512));
                                assert!(max >= pref.max(min) && max % min == 0);
                            }
                            INFO_NAME | INFO_DESCRIPTION => assert!(asked.contains(&t)),
                            _ => panic!("info type {t} was not asked for"),
                        }
                    }
                    assert_eq!(exports, 1, "INFO_EXPORT exactly once");
                    if opt.option == OPT_GO {
                        let Ok(Progress::Transmission(n)) = progress else {
                            panic!("{progress:?}")
                        };
                        assert_eq!(n.flags, flags);
                        assert_eq!(n.size, SIZE);
                        assert_eq!(n.structured, structured);
                        assert_eq!(n.base_allocation, structured && base_allocation);
                        return;
                    }
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                let set = opt.option == OPT_SET_META_CONTEXT;
                if set {
                    base_allocation = false;
                }
                let Kind::Meta { well_formed, matches, queries } = &opt.kind else {
                    assert!(err, "garbage meta context request accepted: {reps:?}");
                    assert_eq!(progress, Ok(Progress::NeedMore));
                    continue;
                };
                if !structured {
                    assert!(err, "meta contexts without structured replies: {reps:?}");
                } else if !well_formed {
                    assert!(err, "{reps:?}");
                } else if !matches {
                    assert!(err, "{reps:?}");
                } else {
                    assert_eq!(last.kind, REP_ACK, "{reps:?}");
                    let wants_base = queries.iter().any(|q| q == META_BASE_ALLOCATION.as_bytes());
                    let listed = queries.is_empty() && !set
                        || wants_base
                        || (!set && queries.iter().any(|q| q == b"base:"));
                    assert_eq!(infos.len(), usize::from(listed), "{reps:?}");
                    for r in infos {
                        assert_eq!(r.kind, REP_META_CONTEXT);
                        let mut d = &r.data[..];
                        let id = d.get_u32();
                        assert_eq!(d, META_BASE_ALLOCATION.as_bytes());
                        if set {
                            assert_ne!(id, 0);
                        }
                    }
                    if set {
                        base_allocation = wants_base;
                    }
                }
            }
            _ => {
                assert_eq!(last.kind, REP_ERR_UNSUP, "option {} {reps:?}", opt.option);
            }
        }
        assert_eq!(progress, Ok(Progress::NeedMore));
    }
});

fn check_flags(flags: u16, read_only: bool, structured: bool) {
    assert!(flags & TFLAG_HAS_FLAGS != 0);
    assert_eq!(flags & TFLAG_READ_ONLY != 0, read_only);
    if !structured {
        assert_eq!(flags & TFLAG_SEND_DF, 0, "DF without structured replies");
    }
    // Bits past SEND_FAST_ZERO are not defined; RESIZE is not offered.
    assert_eq!(flags & !((1 << 12) - 1), 0);
    assert_eq!(flags & TFLAG_SEND_RESIZE, 0);
    if flags & TFLAG_SEND_FAST_ZERO != 0 {
        assert!(flags & TFLAG_SEND_WRITE_ZEROES != 0);
    }
}
