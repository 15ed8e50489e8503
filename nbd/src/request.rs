//! Transmission-phase requests: a sans-IO decoder that turns bytes into
//! validated commands or ready-made rejections.

use bytes::{Buf, Bytes, BytesMut};

use crate::consts::*;
use crate::device::ZeroFlags;
use crate::handshake::Negotiated;

/// A validated command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Read { offset: u64, len: u32 },
    Write { offset: u64, data: Bytes, fua: bool },
    Disconnect,
    Flush,
    Trim { offset: u64, len: u32, fua: bool },
    Cache { offset: u64, len: u32 },
    WriteZeroes { offset: u64, len: u32, flags: ZeroFlags },
    BlockStatus { offset: u64, len: u32, req_one: bool },
}

impl Command {
    /// Commands that change data (refused on a read-only export).
    pub fn is_write(&self) -> bool {
        matches!(self, Command::Write { .. } | Command::Trim { .. } | Command::WriteZeroes { .. })
    }
}

/// One decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// Execute it and reply.
    Command { cookie: u64, command: Command },
    /// Answer with this error; nothing is executed (a WRITE's payload has
    /// already been consumed).
    Reject { cookie: u64, is_read: bool, errno: u32, reason: &'static str },
}

/// Framing errors: the stream cannot be trusted any more, so disconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("bad request magic {0:#x}")]
    BadMagic(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    flags: u16,
    kind: u16,
    cookie: u64,
    offset: u64,
    length: u32,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    Payload(Header),
    /// Skipping the payload of a WRITE we will reject.
    Discard {
        header: Header,
        remaining: u32,
        errno: u32,
        reason: &'static str,
    },
}

/// Decodes requests for one connection. Fed from a buffer the caller fills.
pub struct RequestDecoder {
    size: u64,
    read_only: bool,
    structured: bool,
    base_allocation: bool,
    max_payload: u32,
    state: State,
}

impl RequestDecoder {
    pub fn new(n: &Negotiated) -> Self {
        RequestDecoder {
            size: n.size,
            read_only: n.flags & TFLAG_READ_ONLY != 0,
            structured: n.structured,
            base_allocation: n.base_allocation,
            max_payload: MAX_PAYLOAD,
            state: State::Header,
        }
    }

    /// How many more bytes the current message needs (a hint for reads).
    pub fn wanted(&self) -> usize {
        match self.state {
            State::Header => REQUEST_LEN,
            State::Payload(h) => h.length as usize,
            State::Discard { remaining, .. } => remaining.min(1 << 20) as usize,
        }
    }

    /// Whether a request has been started and not finished: part of it is
    /// in `input`, or its payload is being read or skipped.
    pub fn mid_request(&self, input: &BytesMut) -> bool {
        !matches!(self.state, State::Header) || !input.is_empty()
    }

    /// Whether `input` holds the start of another request after the one
    /// just decoded (its header at least).
    pub fn another_buffered(&self, input: &BytesMut) -> bool {
        matches!(self.state, State::Header) && input.len() >= REQUEST_LEN
    }

    /// Takes one request off the front of `input`, if complete.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<Decoded>, ProtocolError> {
        loop {
            match self.state {
                State::Header => {
                    if input.len() < REQUEST_LEN {
                        return Ok(None);
                    }
                    let magic = (&input[..4]).get_u32();
                    if magic != REQUEST_MAGIC {
                        return Err(ProtocolError::BadMagic(magic));
                    }
                    input.advance(4);
                    let h = Header {
                        flags: input.get_u16(),
                        kind: input.get_u16(),
                        cookie: input.get_u64(),
                        offset: input.get_u64(),
                        length: input.get_u32(),
                    };
                    if h.kind != CMD_WRITE {
                        return Ok(Some(self.finish(h, None)));
                    }
                    if h.length > self.max_payload {
                        // Not EOVERFLOW: the spec keeps that for READ and
                        // for commands without a payload.
                        self.state = State::Discard {
                            header: h,
                            remaining: h.length,
                            errno: EINVAL,
                            reason: "write larger than the maximum payload",
                        };
                    } else {
                        self.state = State::Payload(h);
                    }
                }
                State::Payload(h) => {
                    if input.len() < h.length as usize {
                        return Ok(None);
                    }
                    let data = input.split_to(h.length as usize).freeze();
                    self.state = State::Header;
                    return Ok(Some(self.finish(h, Some(data))));
                }
                State::Discard { header, remaining, errno, reason } => {
                    let n = (remaining as usize).min(input.len());
                    input.advance(n);
                    let remaining = remaining - n as u32;
                    if remaining > 0 {
                        self.state = State::Discard { header, remaining, errno, reason };
                        return Ok(None);
                    }
                    self.state = State::Header;
                    return Ok(Some(Decoded::Reject {
                        cookie: header.cookie,
                        is_read: false,
                        errno,
                        reason,
                    }));
                }
            }
        }
    }

    fn finish(&self, h: Header, data: Option<Bytes>) -> Decoded {
        match self.validate(h, data) {
            Ok(command) => Decoded::Command { cookie: h.cookie, command },
            Err((errno, reason)) => {
                Decoded::Reject { cookie: h.cookie, is_read: h.kind == CMD_READ, errno, reason }
            }
        }
    }

    fn validate(&self, h: Header, data: Option<Bytes>) -> Result<Command, (u32, &'static str)> {
        // "There is no reply to an NBD_CMD_DISC", whatever its flags: the
        // client stops reading, and an error reply would leave the
        // connection open (nbdkit closes it too).
        if h.kind == CMD_DISC {
            return Ok(Command::Disconnect);
        }
        // FUA is accepted on every command (the export advertises
        // SEND_FUA, and the spec then requires it; old qemu sets it on
        // FLUSH). Where nothing is written it changes nothing.
        let allowed = CMD_FLAG_FUA
            | match h.kind {
                CMD_READ => CMD_FLAG_DF,
                CMD_WRITE | CMD_TRIM => 0,
                CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
                CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
                CMD_FLUSH | CMD_CACHE => 0,
                _ => return Err((EINVAL, "unknown command")),
            };
        if h.flags & !allowed != 0 {
            return Err((EINVAL, "flag not valid for this command"));
        }
        if h.flags & CMD_FLAG_DF != 0 && !self.structured {
            return Err((EINVAL, "DF needs structured replies"));
        }
        let writes = matches!(h.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        if writes && self.read_only {
            return Err((EPERM, "export is read-only"));
        }
        if h.kind == CMD_FLUSH {
            return Ok(Command::Flush);
        }
        if h.length == 0 {
            return Err((EINVAL, "zero-length request"));
        }
        if h.kind == CMD_READ && h.length > self.max_payload {
            let errno = if self.structured { EOVERFLOW } else { EINVAL };
            return Err((errno, "read larger than the maximum payload"));
        }
        let in_range = h.offset.checked_add(h.length as u64).is_some_and(|end| end <= self.size);
        if !in_range {
            // Writing past the end is "no space"; anything else is invalid.
            let errno =
                if matches!(h.kind, CMD_WRITE | CMD_WRITE_ZEROES) { ENOSPC } else { EINVAL };
            return Err((errno, "request beyond the end of the export"));
        }
        let fua = h.flags & CMD_FLAG_FUA != 0;
        let (offset, len) = (h.offset, h.length);
        Ok(match h.kind {
            CMD_READ => Command::Read { offset, len },
            CMD_WRITE => Command::Write { offset, data: data.unwrap_or_default(), fua },
            CMD_TRIM => Command::Trim { offset, len, fua },
            CMD_CACHE => Command::Cache { offset, len },
            CMD_WRITE_ZEROES => Command::WriteZeroes {
                offset,
                len,
                flags: ZeroFlags {
                    fua,
                    no_hole: h.flags & CMD_FLAG_NO_HOLE != 0,
                    fast: h.flags & CMD_FLAG_FAST_ZERO != 0,
                },
            },
            _ => {
                if !self.base_allocation {
                    return Err((EINVAL, "no metadata context selected"));
                }
                Command::BlockStatus { offset, len, req_one: h.flags & CMD_FLAG_REQ_ONE != 0 }
            }
        })
    }
}
