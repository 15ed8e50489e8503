//! The transmission-phase request decoder, fed arbitrary bytes in arbitrary
//! fragments with arbitrary negotiated settings. It must never panic, and
//! every command it lets through must be valid for the export.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use twinblock_nbd::consts::{MAX_PAYLOAD, TFLAG_HAS_FLAGS, TFLAG_READ_ONLY};
use twinblock_nbd::{Command, Decoded, Negotiated, RequestDecoder};

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (head, data) = data.split_at(3);
    let step = head[0] as usize % 128 + 1;
    let size = [1u64 << 20, 1 << 30, u64::MAX - 4096, 4096][head[1] as usize % 4];
    let read_only = head[2] & 1 != 0;
    let n = Negotiated {
        structured: head[2] & 2 != 0,
        base_allocation: head[2] & 4 != 0,
        flags: TFLAG_HAS_FLAGS | if read_only { TFLAG_READ_ONLY } else { 0 },
        size,
        export_name: String::new(),
    };
    let mut dec = RequestDecoder::new(&n);
    let mut input = BytesMut::new();
    for chunk in data.chunks(step) {
        input.extend_from_slice(chunk);
        loop {
            match dec.decode(&mut input) {
                Ok(Some(Decoded::Command { command, .. })) => check(&command, size, read_only),
                Ok(Some(Decoded::Reject { errno, .. })) => assert_ne!(errno, 0),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

fn check(c: &Command, size: u64, read_only: bool) {
    let range = match c {
        Command::Read { offset, len } => {
            assert!(*len <= MAX_PAYLOAD);
            Some((*offset, *len as u64))
        }
        Command::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
        Command::Trim { offset, len, .. }
        | Command::Cache { offset, len }
        | Command::WriteZeroes { offset, len, .. }
        | Command::BlockStatus { offset, len, .. } => Some((*offset, *len as u64)),
        Command::Flush | Command::Disconnect => None,
    };
    if let Some((offset, len)) = range {
        assert!(len > 0, "zero-length {c:?}");
        assert!(offset.checked_add(len).is_some_and(|end| end <= size), "out of range {c:?}");
    }
    assert!(!(read_only && c.is_write()), "write on a read-only export: {c:?}");
}
