//! The handshake state machine, fed bytes directly: every option, fragmented
//! input and malformed input, checked against the exact replies of the spec.

use bytes::{Buf, BufMut, BytesMut};
use twinblock_nbd::consts::*;
use twinblock_nbd::{BlockSizes, ExportInfo, Handshake, HandshakeError, Progress};

fn export() -> ExportInfo {
    ExportInfo {
        name: "disk".into(),
        description: "test disk".into(),
        size: 1 << 20,
        read_only: false,
        block_sizes: BlockSizes::default(),
    }
}

fn opt(option: u32, data: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_u64(IHAVEOPT);
    b.put_u32(option);
    b.put_u32(data.len() as u32);
    b.put_slice(data);
    b
}

fn info_data(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_u32(name.len() as u32);
    b.put_slice(name.as_bytes());
    b.put_u16(infos.len() as u16);
    for i in infos {
        b.put_u16(*i);
    }
    b
}

fn meta_data(name: &str, queries: &[&str]) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_u32(name.len() as u32);
    b.put_slice(name.as_bytes());
    b.put_u32(queries.len() as u32);
    for q in queries {
        b.put_u32(q.len() as u32);
        b.put_slice(q.as_bytes());
    }
    b
}

/// Parsed option reply: (option, type, data).
fn replies(mut out: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut v = Vec::new();
    while !out.is_empty() {
        assert_eq!(out.get_u64(), OPTION_REPLY_MAGIC);
        let option = out.get_u32();
        let kind = out.get_u32();
        let len = out.get_u32() as usize;
        v.push((option, kind, out[..len].to_vec()));
        out.advance(len);
    }
    v
}

/// A handshake past the greeting and client flags.
fn started(client_flags: u32) -> Handshake {
    let mut hs = Handshake::new(export());
    let greeting = hs.take_output();
    assert_eq!(&greeting[..], &[b"NBDMAGIC".as_slice(), b"IHAVEOPT", &[0, 3]].concat()[..]);
    let mut input = BytesMut::from(&client_flags.to_be_bytes()[..]);
    assert_eq!(hs.receive(&mut input).unwrap(), Progress::NeedMore);
    assert!(!hs.has_output());
    hs
}

fn send(hs: &mut Handshake, bytes: &[u8]) -> (Result<Progress, HandshakeError>, BytesMut) {
    let mut input = BytesMut::from(bytes);
    let r = hs.receive(&mut input);
    (r, hs.take_output())
}

#[test]
fn go_with_info_requests() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    let (r, out) = send(
        &mut hs,
        &opt(OPT_GO, &info_data("", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE])),
    );
    let Progress::Transmission(n) = r.unwrap() else { panic!("not transmission") };
    assert!(!n.structured);
    assert_eq!(n.size, 1 << 20);
    let r = replies(&out);
    assert_eq!(r.len(), 5);
    assert_eq!(r[0], (OPT_GO, REP_INFO, [&INFO_NAME.to_be_bytes()[..], b"disk"].concat()));
    assert_eq!(
        r[1],
        (OPT_GO, REP_INFO, [&INFO_DESCRIPTION.to_be_bytes()[..], b"test disk"].concat())
    );
    let mut bs = Vec::new();
    bs.put_u16(INFO_BLOCK_SIZE);
    bs.put_u32(1);
    bs.put_u32(4096);
    bs.put_u32(32 << 20);
    assert_eq!(r[2], (OPT_GO, REP_INFO, bs));
    let mut ex = Vec::new();
    ex.put_u16(INFO_EXPORT);
    ex.put_u64(1 << 20);
    // No structured replies: no DF.
    let flags = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_SEND_FAST_ZERO
        | TFLAG_SEND_CACHE
        | TFLAG_CAN_MULTI_CONN;
    ex.put_u16(flags);
    assert_eq!(ex.len(), 12);
    assert_eq!(r[3], (OPT_GO, REP_INFO, ex));
    assert_eq!(r[4], (OPT_GO, REP_ACK, vec![]));
    assert_eq!(n.flags, flags);
}

#[test]
fn fragmented_input_gives_the_same_result() {
    let mut all = Vec::new();
    all.put_u32(FLAG_C_FIXED_NEWSTYLE);
    all.extend(opt(OPT_STRUCTURED_REPLY, &[]));
    all.extend(opt(OPT_SET_META_CONTEXT, &meta_data("disk", &["base:allocation"])));
    all.extend(opt(OPT_GO, &info_data("disk", &[INFO_BLOCK_SIZE])));
    // First request of the transmission phase, sent right behind.
    all.extend([0x25, 0x60, 0x95, 0x13]);

    let mut whole = Handshake::new(export());
    whole.take_output();
    let mut input = BytesMut::from(&all[..]);
    let expected = whole.receive(&mut input).unwrap();
    let expected_out = whole.take_output();
    assert_eq!(&input[..], &[0x25, 0x60, 0x95, 0x13], "leftover belongs to transmission");

    let mut hs = Handshake::new(export());
    hs.take_output();
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    let mut result = None;
    for &b in &all {
        input.put_u8(b);
        if result.is_none() {
            match hs.receive(&mut input).unwrap() {
                Progress::NeedMore => {}
                done => result = Some(done),
            }
            out.extend_from_slice(&hs.take_output());
        }
    }
    assert_eq!(result.unwrap(), expected);
    assert_eq!(out, expected_out);
    let Progress::Transmission(n) = expected else { panic!() };
    assert!(n.structured && n.base_allocation);
    assert_ne!(n.flags & TFLAG_SEND_DF, 0);
}

#[test]
fn export_name_with_and_without_zeroes() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    let (r, out) = send(&mut hs, &opt(OPT_EXPORT_NAME, b""));
    assert!(matches!(r.unwrap(), Progress::Transmission(_)));
    assert_eq!(out.len(), 8 + 2 + 124);
    assert_eq!(&out[..8], &(1u64 << 20).to_be_bytes());
    assert!(out[10..].iter().all(|&b| b == 0));

    let mut hs = started(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES);
    let (r, out) = send(&mut hs, &opt(OPT_EXPORT_NAME, b"disk"));
    assert!(matches!(r.unwrap(), Progress::Transmission(_)));
    assert_eq!(out.len(), 10);
}

#[test]
fn export_name_unknown_disconnects() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    let (r, out) = send(&mut hs, &opt(OPT_EXPORT_NAME, b"other"));
    assert_eq!(r, Err(HandshakeError::UnknownExport("other".into())));
    assert!(out.is_empty());
}

#[test]
fn oversized_export_name_disconnects_without_an_option_reply() {
    // EXPORT_NAME has no reply framing: an ERR_TOO_BIG option reply would be
    // read by the client as the export size. The only refusal is to close.
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    let long = vec![b'x'; MAX_STRING + 1];
    let (r, out) = send(&mut hs, &opt(OPT_EXPORT_NAME, &long));
    assert_eq!(r, Err(HandshakeError::ExportNameTooLong(MAX_STRING as u32 + 1)));
    assert!(out.is_empty(), "no reply bytes: {out:?}");
    // The header alone is enough to refuse: the name is never buffered.
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    let (r, out) = send(&mut hs, &opt(OPT_EXPORT_NAME, &long)[..16]);
    assert_eq!(r, Err(HandshakeError::ExportNameTooLong(MAX_STRING as u32 + 1)));
    assert!(out.is_empty());
}

#[test]
fn unknown_client_flags_disconnect() {
    let mut hs = Handshake::new(export());
    hs.take_output();
    let (r, out) = send(&mut hs, &(FLAG_C_FIXED_NEWSTYLE | 1 << 7).to_be_bytes());
    assert_eq!(r, Err(HandshakeError::UnknownClientFlags(0x81)));
    assert!(out.is_empty());
}

#[test]
fn bad_option_magic_disconnects() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    let mut bad = opt(OPT_GO, &[]);
    bad[0] ^= 0xff;
    let (r, _) = send(&mut hs, &bad);
    assert!(matches!(r, Err(HandshakeError::BadOptionMagic(_))));
}

#[test]
fn unknown_options_get_unsup_and_negotiation_continues() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    for option in [OPT_STARTTLS, OPT_EXTENDED_HEADERS, 4, 42, 0xdead_beef] {
        let (r, out) = send(&mut hs, &opt(option, b"some data"));
        assert_eq!(r.unwrap(), Progress::NeedMore);
        let r = replies(&out);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].0, r[0].1), (option, REP_ERR_UNSUP));
    }
    let (r, _) = send(&mut hs, &opt(OPT_GO, &info_data("", &[])));
    assert!(matches!(r.unwrap(), Progress::Transmission(_)));
}

#[test]
fn list_and_abort() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    let (r, out) = send(&mut hs, &opt(OPT_LIST, &[]));
    assert_eq!(r.unwrap(), Progress::NeedMore);
    let r = replies(&out);
    assert_eq!(
        r[0],
        (OPT_LIST, REP_SERVER, [&4u32.to_be_bytes()[..], b"disk", b"test disk"].concat())
    );
    assert_eq!(r[1], (OPT_LIST, REP_ACK, vec![]));

    let (_, out) = send(&mut hs, &opt(OPT_LIST, b"x"));
    assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);

    let (r, out) = send(&mut hs, &opt(OPT_ABORT, &[]));
    assert_eq!(r.unwrap(), Progress::Abort);
    assert_eq!(replies(&out), vec![(OPT_ABORT, REP_ACK, vec![])]);
}

#[test]
fn info_errors() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    let (r, out) = send(&mut hs, &opt(OPT_INFO, &info_data("nope", &[])));
    assert_eq!(r.unwrap(), Progress::NeedMore);
    assert_eq!(replies(&out)[0].1, REP_ERR_UNKNOWN);
    // Name length pointing past the data.
    let mut bad = info_data("disk", &[INFO_NAME]);
    bad[3] = 200;
    let (_, out) = send(&mut hs, &opt(OPT_GO, &bad));
    assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);
    // Trailing garbage after the info list.
    let mut bad = info_data("disk", &[INFO_NAME]);
    bad.push(0);
    let (_, out) = send(&mut hs, &opt(OPT_GO, &bad));
    assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);
    // INFO does not end negotiation; unknown info types are ignored.
    let (r, out) = send(&mut hs, &opt(OPT_INFO, &info_data("disk", &[999])));
    assert_eq!(r.unwrap(), Progress::NeedMore);
    let r = replies(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].2[..2], INFO_EXPORT.to_be_bytes());
    assert_eq!(r[1].1, REP_ACK);
}

#[test]
fn meta_contexts() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    // Before structured replies: invalid.
    let (_, out) = send(&mut hs, &opt(OPT_SET_META_CONTEXT, &meta_data("", &["base:allocation"])));
    assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);
    let (_, out) = send(&mut hs, &opt(OPT_STRUCTURED_REPLY, b"x"));
    assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);
    let (_, out) = send(&mut hs, &opt(OPT_STRUCTURED_REPLY, &[]));
    assert_eq!(replies(&out), vec![(OPT_STRUCTURED_REPLY, REP_ACK, vec![])]);

    // LIST with no query lists everything.
    let (_, out) = send(&mut hs, &opt(OPT_LIST_META_CONTEXT, &meta_data("", &[])));
    let r = replies(&out);
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].1, REP_META_CONTEXT);
    assert_eq!(&r[0].2[4..], b"base:allocation");
    // Unknown namespaces select nothing.
    let (_, out) =
        send(&mut hs, &opt(OPT_SET_META_CONTEXT, &meta_data("", &["qemu:dirty-bitmap:x"])));
    assert_eq!(replies(&out), vec![(OPT_SET_META_CONTEXT, REP_ACK, vec![])]);
    // Unknown export.
    let (_, out) =
        send(&mut hs, &opt(OPT_SET_META_CONTEXT, &meta_data("nope", &["base:allocation"])));
    assert_eq!(replies(&out)[0].1, REP_ERR_UNKNOWN);
    // Malformed (query count larger than the data).
    let mut bad = meta_data("", &["base:allocation"]);
    bad[7] = 5;
    let (_, out) = send(&mut hs, &opt(OPT_SET_META_CONTEXT, &bad));
    assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);
    // Selected, with our id.
    let (_, out) =
        send(&mut hs, &opt(OPT_SET_META_CONTEXT, &meta_data("disk", &["base:allocation"])));
    let r = replies(&out);
    assert_eq!(r[0].1, REP_META_CONTEXT);
    assert_eq!(r[0].2[..4], META_BASE_ALLOCATION_ID.to_be_bytes());
    assert_eq!(r[1].1, REP_ACK);
    let (r, _) = send(&mut hs, &opt(OPT_GO, &info_data("", &[])));
    let Progress::Transmission(n) = r.unwrap() else { panic!() };
    assert!(n.base_allocation);
}

#[test]
fn oversized_option_is_skipped_with_too_big() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    let big = vec![7u8; MAX_OPTION_LEN as usize + 1];
    let (r, out) = send(&mut hs, &opt(OPT_GO, &big));
    assert_eq!(r.unwrap(), Progress::NeedMore);
    assert_eq!(replies(&out)[0].1, REP_ERR_TOO_BIG);
    let (r, _) = send(&mut hs, &opt(OPT_GO, &info_data("", &[])));
    assert!(matches!(r.unwrap(), Progress::Transmission(_)));
}

#[test]
fn truncated_input_waits_without_replying() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    let full = opt(OPT_GO, &info_data("", &[INFO_BLOCK_SIZE]));
    for cut in [1, 8, 15, 16, full.len() - 1] {
        let mut hs2 = started(FLAG_C_FIXED_NEWSTYLE);
        let (r, out) = send(&mut hs2, &full[..cut]);
        assert_eq!(r.unwrap(), Progress::NeedMore, "cut at {cut}");
        assert!(out.is_empty());
    }
    let (r, _) = send(&mut hs, &full);
    assert!(matches!(r.unwrap(), Progress::Transmission(_)));
    // Nothing more is accepted after the handshake.
    let (r, _) = send(&mut hs, &full);
    assert_eq!(r, Err(HandshakeError::Finished));
}

#[test]
fn read_only_export_advertises_it() {
    let mut e = export();
    e.read_only = true;
    let mut hs = Handshake::new(e);
    hs.take_output();
    let mut input = BytesMut::new();
    input.put_u32(FLAG_C_FIXED_NEWSTYLE);
    input.extend_from_slice(&opt(OPT_GO, &info_data("", &[])));
    let Progress::Transmission(n) = hs.receive(&mut input).unwrap() else { panic!() };
    assert_ne!(n.flags & TFLAG_READ_ONLY, 0);
}

/// "Issuing this command replaces all previously-set metadata contexts
/// (including when this command fails)" (proto.md, SET_META_CONTEXT): a
/// failed SET leaves nothing selected, so BLOCK_STATUS is refused (found
/// by review, helper-112: a SET for an unknown export, or a malformed
/// one, kept the earlier `base:allocation`).
#[test]
fn a_failed_set_meta_context_clears_the_selection() {
    let mut malformed = meta_data("", &["base:allocation"]);
    malformed[7] = 5;
    let bad_sets: Vec<Vec<u8>> = vec![
        meta_data("nope", &["base:allocation"]),
        malformed,
        // Too long to be read: skipped and refused with ERR_TOO_BIG.
        meta_data("", &["base:allocation"; 5000]),
    ];
    for bad in bad_sets {
        let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
        let (_, out) = send(&mut hs, &opt(OPT_STRUCTURED_REPLY, &[]));
        assert_eq!(replies(&out)[0].1, REP_ACK);
        let (_, out) =
            send(&mut hs, &opt(OPT_SET_META_CONTEXT, &meta_data("", &["base:allocation"])));
        assert_eq!(replies(&out)[0].1, REP_META_CONTEXT);
        let (_, out) = send(&mut hs, &opt(OPT_SET_META_CONTEXT, &bad));
        assert!(replies(&out)[0].1 & (1 << 31) != 0, "{:?}", replies(&out));
        let (r, _) = send(&mut hs, &opt(OPT_GO, &info_data("", &[])));
        let Progress::Transmission(n) = r.unwrap() else { panic!() };
        assert!(!n.base_allocation, "a failed SET_META_CONTEXT left base:allocation selected");
    }
}

/// "A particular information type SHOULD only appear once for a given
/// export" (proto.md, NBD_REP_INFO): information requests repeated in one
/// INFO/GO get one reply each type. Each repeat got its own (found by
/// review, helper-112): 64 KiB of NBD_INFO_DESCRIPTION requests drew
/// megabytes of replies.
#[test]
fn repeated_info_requests_get_one_reply_each() {
    let mut hs = started(FLAG_C_FIXED_NEWSTYLE);
    let mut infos = vec![INFO_DESCRIPTION; 1000];
    infos.extend([INFO_NAME, INFO_BLOCK_SIZE, INFO_NAME, INFO_EXPORT, INFO_EXPORT]);
    let (_, out) = send(&mut hs, &opt(OPT_INFO, &info_data("", &infos)));
    let mut kinds: Vec<u16> = replies(&out)
        .iter()
        .filter(|r| r.1 == REP_INFO)
        .map(|r| u16::from_be_bytes([r.2[0], r.2[1]]))
        .collect();
    kinds.sort();
    assert_eq!(kinds, vec![INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE]);
}
