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
        request_bytes(&mut b, flags, kind, cookie, offset, len, payload);
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

/// `twinblock serve` on a new sparse disk of `size` with extra arguments.
pub fn serve_with(flavor: super::Flavor, size: &str, extra: &[&str]) -> Serve {
    let dir = tempfile::Builder::new().prefix("tb-test").tempdir_in(super::test_tmp()).unwrap();
    let disk = dir.path().join("disk.img");
    let mut args = vec!["--size", size];
    args.extend_from_slice(extra);
    Serve::start_on(dir, disk, flavor, &args).unwrap_or_else(|e| panic!("{e}"))
}

/// A field of /proc/PID/status in KiB (VmRSS: resident now, VmHWM: peak).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

pub fn pid(serve: &Serve) -> u32 {
    serve.child.as_ref().expect("server running").id()
}

impl Client {
    /// Connects and reads the greeting, retrying for up to `within` while the
    /// server refuses (it may not have noticed yet that a client left).
    pub fn connect_retry(serve: &Serve, within: Duration) -> Client {
        let deadline = std::time::Instant::now() + within;
        loop {
            let s = TcpStream::connect(serve.addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut greeting = [0u8; 18];
            if (&s).read_exact(&mut greeting).is_ok() {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return Client { s };
            }
            assert!(std::time::Instant::now() < deadline, "no connection slot within {within:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Like `stalled_reader`, retrying the connection for up to `within`.
    pub fn stalled_reader_retry(serve: &Serve, n: u64, len: u32, within: Duration) -> Client {
        let mut c = Client::connect_retry(serve, within);
        c.s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send(&3u32.to_be_bytes());
        c.option(7, &[0u8; 6]);
        assert_eq!(c.option_replies().last(), Some(&1), "GO acknowledged");
        for i in 0..n {
            c.request(0, 0, i, 0, len, &[]);
        }
        c
    }

    /// A client that completes GO, then sends `n` READs of `len` bytes
    /// (cookies 0..n) and reads none of the replies.
    pub fn stalled_reader(serve: &Serve, n: u64, len: u32) -> Client {
        let mut c = Client::go(serve, false);
        c.s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        for i in 0..n {
            c.request(0, 0, i, 0, len, &[]);
        }
        c
    }

    /// Closes with a reset (SO_LINGER 0): the server's next write fails.
    pub fn reset(self) {
        use std::os::fd::AsRawFd;
        let l = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: a valid socket and a linger struct of the size given.
        unsafe {
            libc::setsockopt(
                self.s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &l as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(self);
    }

    /// Reads until the server closes; Err if it does not within `within`.
    pub fn read_to_close(&mut self, within: Duration) -> Result<usize, String> {
        let deadline = std::time::Instant::now() + within;
        let mut total = 0;
        let mut b = vec![0u8; 1 << 20];
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(format!("still open after {within:?} ({total} bytes read)"));
            }
            self.s.set_read_timeout(Some(left)).unwrap();
            match self.s.read(&mut b) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(total),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// Appends one request (header and payload) to `b`.
pub fn request_bytes(
    b: &mut Vec<u8>,
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    len: u32,
    payload: &[u8],
) {
    b.extend(REQUEST_MAGIC.to_be_bytes());
    b.extend(flags.to_be_bytes());
    b.extend(kind.to_be_bytes());
    b.extend(cookie.to_be_bytes());
    b.extend(offset.to_be_bytes());
    b.extend(len.to_be_bytes());
    b.extend(payload);
}
