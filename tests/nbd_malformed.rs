//! Malformed and hostile NBD traffic against a real `twinblock serve`: each
//! gets the error the spec asks for or a clean disconnect, and afterwards the
//! server still serves a new client correctly with the data intact.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::process::Command;

use common::*;

use common::nbd::*;

#[test]
fn malformed_traffic_then_a_good_client() {
    if !(have("qemu-io") && have("nbdinfo")) {
        return;
    }
    let mut serve = Serve::start(URING, "16M");
    let uri = serve.uri();
    run_qemu_io(&uri, &["write -P 0x5c 0 1M"]);

    // Handshake-phase abuse.
    {
        // Connect and vanish.
        let _ = TcpStream::connect(serve.addr).unwrap();
        // HTTP instead of NBD: unknown client flags, disconnect.
        let mut c = Client::connect(&serve);
        c.send(b"GET / HTTP/1.1\r\n\r\n");
        assert!(c.closed());
        // Unknown client flag bit.
        let mut c = Client::connect(&serve);
        c.send(&(1u32 | 1 << 5).to_be_bytes());
        assert!(c.closed());
        // Bad option magic.
        let mut c = Client::connect(&serve);
        c.send(&1u32.to_be_bytes());
        c.send(&[0xff; 16]);
        assert!(c.closed());
        // Truncated option, then close.
        let mut c = Client::connect(&serve);
        c.send(&1u32.to_be_bytes());
        c.send(&IHAVEOPT.to_be_bytes()[..5]);
        drop(c);
        // An option announcing 1 GiB of data: refused after it is skipped;
        // here the client gives up half way.
        let mut c = Client::connect(&serve);
        c.send(&1u32.to_be_bytes());
        let mut b = Vec::new();
        b.extend(IHAVEOPT.to_be_bytes());
        b.extend(7u32.to_be_bytes());
        b.extend((1u32 << 30).to_be_bytes());
        c.send(&b);
        c.send(&vec![0u8; 1 << 20]);
        drop(c);
        // Unknown option: ERR_UNSUP, and negotiation carries on.
        let mut c = Client::connect(&serve);
        c.send(&1u32.to_be_bytes());
        c.option(0x1234, b"junk");
        assert_eq!(c.option_replies(), vec![(1 << 31) + 1]);
        c.option(3, &[]);
        assert_eq!(c.option_replies(), vec![2, 1], "LIST still works");
        // EXPORT_NAME of an unknown export: the only answer is a disconnect.
        c.option(1, b"no-such-export");
        assert!(c.closed());
    }

    // Transmission-phase abuse, simple replies.
    {
        let mut c = Client::go(&serve, false);
        // Unknown command: EINVAL, connection stays.
        c.request(0, 99, 1, 0, 512, &[]);
        assert_eq!(c.simple_reply(), (22, 1));
        // Write past the end: ENOSPC, payload consumed.
        c.request(0, 1, 2, 16 << 20, 4096, &[1u8; 4096]);
        assert_eq!(c.simple_reply(), (28, 2));
        // Trim past the end: EINVAL.
        c.request(0, 4, 3, (16 << 20) - 4096, 8192, &[]);
        assert_eq!(c.simple_reply(), (22, 3));
        // Unknown flag on a write: EINVAL, payload consumed.
        c.request(1 << 12, 1, 4, 0, 100, &[2u8; 100]);
        assert_eq!(c.simple_reply(), (22, 4));
        // Oversized write (33 MiB): refused after its payload is read.
        let big = vec![3u8; 33 << 20];
        c.request(0, 1, 5, 0, big.len() as u32, &big);
        assert_eq!(c.simple_reply(), (22, 5));
        // A valid read still works on this connection and sees the old data.
        c.request(0, 0, 6, 0, 4096, &[]);
        assert_eq!(c.simple_reply(), (0, 6));
        assert!(c.bytes(4096).iter().all(|&b| b == 0x5c));
        // Bad request magic: the stream cannot be trusted, disconnect.
        c.send(&[0xde, 0xad, 0xbe, 0xef]);
        c.send(&[0u8; 24]);
        assert!(c.closed());
    }

    // Transmission-phase abuse, structured replies.
    {
        let mut c = Client::go(&serve, true);
        // A read out of range gets a structured error, never a simple reply.
        c.request(0, 0, 7, 16 << 20, 512, &[]);
        assert_eq!(c.error_chunk(), (22, 7));
        // Oversized read: EOVERFLOW.
        c.request(0, 0, 8, 0, 64 << 20, &[]);
        assert_eq!(c.error_chunk(), (75, 8));
        // Block status without a metadata context: EINVAL.
        c.request(0, 7, 9, 0, 4096, &[]);
        assert_eq!(c.error_chunk(), (22, 9));
        // Half a write, then the client dies.
        c.request(0, 1, 10, 0, 1 << 20, &[9u8; 1000]);
    }

    // Many connections that die at once.
    for _ in 0..50 {
        let mut c = Client::go(&serve, false);
        c.request(0, 0, 1, 0, 4096, &[]);
    }

    // The server is alive and a real client reads what was written.
    assert!(serve.alive(), "server died: {}", serve.log());
    run_ok(Command::new("nbdinfo").arg(&uri));
    let out = run_qemu_io(&uri, &["read -P 0x5c 0 1M"]);
    assert!(!out.contains("fail"), "data changed by malformed traffic: {out}");
    assert!(serve.stop().success());
}

#[test]
fn disc_finishes_in_flight_requests() {
    let mut serve = Serve::start(THREADS, "64M");
    let mut c = Client::go(&serve, false);
    // Pipeline 16 writes of 1 MiB, then DISC, without reading any reply.
    for i in 0..16u64 {
        c.request(0, 1, i, i << 20, 1 << 20, &vec![i as u8 + 1; 1 << 20]);
    }
    c.request(0, 2, 99, 0, 0, &[]);
    let mut acked = Vec::new();
    for _ in 0..16 {
        let (errno, cookie) = c.simple_reply();
        assert_eq!(errno, 0);
        acked.push(cookie);
    }
    assert!(c.closed(), "server closes after DISC");
    acked.sort();
    assert_eq!(acked, (0..16).collect::<Vec<_>>());
    assert!(serve.stop().success());
    let disk = std::fs::read(&serve.disk).unwrap();
    for i in 0..16usize {
        assert!(disk[i << 20..(i + 1) << 20].iter().all(|&b| b == i as u8 + 1), "write {i}");
    }
}

#[test]
fn sigterm_answers_what_it_read_and_exits_zero() {
    let mut serve = Serve::start(URING, "64M");
    let mut c = Client::go(&serve, false);
    for i in 0..32u64 {
        c.request(0, 1, i, i << 20, 1 << 20, &vec![0xa0 ^ i as u8; 1 << 20]);
    }
    let status = serve.stop();
    assert!(status.success(), "exit status {status}: {}", serve.log());
    // Every reply that came back is a success, and its write is on disk.
    let mut acked = Vec::new();
    loop {
        let mut head = [0u8; 16];
        if c.s.read_exact(&mut head).is_err() {
            break;
        }
        assert_eq!(u32::from_be_bytes(head[..4].try_into().unwrap()), SIMPLE);
        assert_eq!(u32::from_be_bytes(head[4..8].try_into().unwrap()), 0);
        acked.push(u64::from_be_bytes(head[8..].try_into().unwrap()));
    }
    let disk = std::fs::read(&serve.disk).unwrap();
    for i in acked {
        let i = i as usize;
        assert!(
            disk[i << 20..(i + 1) << 20].iter().all(|&b| b == 0xa0 ^ i as u8),
            "acked write {i} missing"
        );
    }
}
