//! A raw NBD client for tests: it sends exactly what it is told, so tests
//! can pipeline, misbehave and record which requests were acknowledged.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::Serve;

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE: u32 = 0x6744_6698;
pub const STRUCTURED: u32 = 0x668e_33ef;

/// A raw NBD client for tests: sends exactly the bytes it is told to.
pub struct Client {
    pub s: TcpStream,
}

impl Client {
    pub fn connect_addr(addr: std::net::SocketAddr) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut c = Client { s };
        let mut greeting = [0u8; 18];
        c.s.read_exact(&mut greeting).unwrap();
        assert_eq!(u64::from_be_bytes(greeting[..8].try_into().unwrap()), NBDMAGIC);
        assert_eq!(u64::from_be_bytes(greeting[8..16].try_into().unwrap()), IHAVEOPT);
        c
    }

    pub fn send(&mut self, b: &[u8]) {
        // The server may already have closed; that is what some tests expect.
        let _ = self.s.write_all(b);
    }

    pub fn option(&mut self, opt: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend(IHAVEOPT.to_be_bytes());
        b.extend(opt.to_be_bytes());
        b.extend((data.len() as u32).to_be_bytes());
        b.extend(data);
        self.send(&b);
    }

    pub fn u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.s.read_exact(&mut b).unwrap();
        u32::from_be_bytes(b)
    }

    pub fn u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.s.read_exact(&mut b).unwrap();
        u64::from_be_bytes(b)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut b = vec![0u8; n];
        self.s.read_exact(&mut b).unwrap();
        b
    }

    /// Reads option replies until the final one; returns the reply types.
    pub fn option_replies(&mut self) -> Vec<u32> {
        let mut kinds = Vec::new();
        loop {
            assert_eq!(self.u64(), 0x0003_e889_0455_65a9);
            let _opt = self.u32();
            let kind = self.u32();
            let len = self.u32() as usize;
            self.bytes(len);
            kinds.push(kind);
            if kind == 1 || kind & (1 << 31) != 0 {
                return kinds;
            }
        }
    }

    /// Fixed newstyle, optionally structured replies, then GO.
    pub fn go_addr(addr: std::net::SocketAddr, structured: bool) -> Client {
        let mut c = Client::connect_addr(addr);
        c.send(&3u32.to_be_bytes());
        if structured {
            c.option(8, &[]);
            assert_eq!(c.option_replies(), vec![1]);
        }
        let mut data = Vec::new();
        data.extend(0u32.to_be_bytes());
        data.extend(0u16.to_be_bytes());
        c.option(7, &data);
        let kinds = c.option_replies();
        assert_eq!(kinds.last(), Some(&1), "GO acknowledged");
        c
    }

    pub fn request(
        &mut self,
        flags: u16,
        kind: u16,
        cookie: u64,
        offset: u64,
        len: u32,
        payload: &[u8],
    ) {
        let mut b = Vec::new();
        b.extend(REQUEST_MAGIC.to_be_bytes());
        b.extend(flags.to_be_bytes());
        b.extend(kind.to_be_bytes());
        b.extend(cookie.to_be_bytes());
        b.extend(offset.to_be_bytes());
        b.extend(len.to_be_bytes());
        b.extend(payload);
        self.send(&b);
    }

    /// A simple reply: (errno, cookie).
    pub fn simple_reply(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), SIMPLE);
        let errno = self.u32();
        (errno, self.u64())
    }

    /// A structured error chunk: (errno, cookie).
    pub fn error_chunk(&mut self) -> (u32, u64) {
        assert_eq!(self.u32(), STRUCTURED);
        let mut fl = [0u8; 4];
        self.s.read_exact(&mut fl).unwrap();
        assert_eq!(u16::from_be_bytes([fl[0], fl[1]]), 1, "DONE");
        assert_eq!(u16::from_be_bytes([fl[2], fl[3]]), 0x8001, "ERROR chunk");
        let cookie = self.u64();
        let len = self.u32() as usize;
        let body = self.bytes(len);
        (u32::from_be_bytes(body[..4].try_into().unwrap()), cookie)
    }

    /// True when the server closed the connection.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

impl Client {
    pub fn connect(serve: &Serve) -> Client {
        Client::connect_addr(serve.addr)
    }

    pub fn go(serve: &Serve, structured: bool) -> Client {
        Client::go_addr(serve.addr, structured)
    }
}
