//! The replication wire decoder (`twinblock_replicator::protocol::wire::decode`),
//! fed arbitrary frames in arbitrary fragments: it must never panic, and
//! what it decodes must encode and decode back to the same message.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use twinblock_replicator::protocol::wire::decode;

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else { return };
    let step = step as usize * 16 + 1;
    let mut input = BytesMut::new();
    for chunk in data.chunks(step) {
        input.extend_from_slice(chunk);
        loop {
            match decode(&mut input) {
                Ok(Some(m)) => {
                    let mut again = m.to_bytes();
                    let back = decode(&mut again).expect("re-encoded frame decodes");
                    assert_eq!(back.as_ref(), Some(&m), "round trip");
                    assert!(again.is_empty(), "re-encoded frame has trailing bytes");
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
