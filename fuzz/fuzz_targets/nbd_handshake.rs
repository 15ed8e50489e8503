//! The NBD handshake state machine (then the request decoder it hands
//! over to), fed arbitrary client bytes in arbitrary fragments. It must
//! never panic, never loop, and every reply it writes must be well framed.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use twinblock_nbd::{BlockSizes, ExportInfo, Handshake, Progress, RequestDecoder};

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else { return };
    let step = step as usize * 4 + 1;
    let export = ExportInfo {
        name: "twinblock".into(),
        description: "fuzz".into(),
        size: 1 << 30,
        read_only: step % 2 == 0,
        block_sizes: BlockSizes::default(),
    };
    let mut hs = Handshake::new(export);
    let greeting = hs.take_output();
    assert_eq!(greeting.len(), 18);
    let mut input = BytesMut::new();
    let mut chunks = data.chunks(step);
    loop {
        let progress = hs.receive(&mut input);
        let out = hs.take_output();
        check_option_replies(&out);
        match progress {
            Ok(Progress::NeedMore) => {}
            Ok(Progress::Abort) | Err(_) => return,
            Ok(Progress::Transmission(n)) => {
                // The rest of the input belongs to the request decoder.
                let mut dec = RequestDecoder::new(&n);
                for chunk in chunks {
                    input.extend_from_slice(chunk);
                    while let Ok(Some(_)) = dec.decode(&mut input) {}
                }
                return;
            }
        }
        match chunks.next() {
            Some(c) => input.extend_from_slice(c),
            None => return,
        }
    }
});

/// Option replies (or an EXPORT_NAME answer, which has no framing) only.
fn check_option_replies(mut out: &[u8]) {
    while out.len() >= 20 && out[..8] == 0x0003_e889_0455_65a9u64.to_be_bytes() {
        let len = u32::from_be_bytes(out[16..20].try_into().unwrap()) as usize;
        assert!(out.len() >= 20 + len, "truncated option reply");
        out = &out[20 + len..];
    }
    // Whatever is left is the EXPORT_NAME answer: size, flags, maybe zeroes.
    assert!(out.is_empty() || out.len() == 10 || out.len() == 134, "stray output {out:?}");
}
