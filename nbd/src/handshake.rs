//! The fixed-newstyle handshake as a sans-IO state machine.
//!
//! Feed it the bytes the client sent ([`Handshake::receive`]); send what
//! [`Handshake::take_output`] returns. It never touches a socket, so every
//! path (fragmented input, malformed options) is testable byte by byte.

use bytes::{Buf, BufMut, BytesMut};

use crate::consts::*;
use crate::export::ExportInfo;

/// What the client and server agreed on, handed to the transmission phase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub structured: bool,
    /// `base:allocation` was selected with SET_META_CONTEXT.
    pub base_allocation: bool,
    pub flags: u16,
    pub size: u64,
    pub export_name: String,
}

/// Where the handshake stands after consuming input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// More input is needed (send the output first).
    NeedMore,
    /// Enter transmission (after sending the output).
    Transmission(Negotiated),
    /// The client aborted; send the output, then close.
    Abort,
}

/// Violations after which the only answer is a hard disconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("client sent unknown flags {0:#x}")]
    UnknownClientFlags(u32),
    #[error("bad option magic {0:#x}")]
    BadOptionMagic(u64),
    #[error("client asked for unknown export {0:?} with NBD_OPT_EXPORT_NAME")]
    UnknownExport(String),
    #[error("NBD_OPT_EXPORT_NAME with a {0}-byte name")]
    ExportNameTooLong(u32),
    #[error("handshake already finished")]
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ClientFlags,
    OptionHeader,
    OptionData {
        option: u32,
        len: u32,
    },
    /// Skipping an oversized option payload, then answering ERR_TOO_BIG.
    Discard {
        option: u32,
        remaining: u32,
    },
    Finished,
}

pub struct Handshake {
    export: ExportInfo,
    state: State,
    out: BytesMut,
    no_zeroes: bool,
    structured: bool,
    base_allocation: bool,
}

impl Handshake {
    /// Starts a handshake; the server greeting is queued as output.
    pub fn new(export: ExportInfo) -> Self {
        let mut out = BytesMut::with_capacity(256);
        out.put_u64(NBDMAGIC);
        out.put_u64(IHAVEOPT);
        out.put_u16(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
        Handshake {
            export,
            state: State::ClientFlags,
            out,
            no_zeroes: false,
            structured: false,
            base_allocation: false,
        }
    }

    /// Bytes to send to the client now.
    pub fn take_output(&mut self) -> BytesMut {
        self.out.split()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Consumes as much of `input` as forms complete messages. Leftover bytes
    /// stay in `input` (after `Transmission` they belong to the requests).
    pub fn receive(&mut self, input: &mut BytesMut) -> Result<Progress, HandshakeError> {
        loop {
            match self.state {
                State::Finished => return Err(HandshakeError::Finished),
                State::ClientFlags => {
                    if input.len() < 4 {
                        return Ok(Progress::NeedMore);
                    }
                    let flags = input.get_u32();
                    if flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
                        self.state = State::Finished;
                        return Err(HandshakeError::UnknownClientFlags(flags));
                    }
                    // Clients without FIXED_NEWSTYLE are honoured as if fixed
                    // (the spec allows it); they only ever send EXPORT_NAME.
                    self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
                    self.state = State::OptionHeader;
                }
                State::OptionHeader => {
                    if input.len() < OPTION_HEADER_LEN {
                        return Ok(Progress::NeedMore);
                    }
                    let magic = input.get_u64();
                    let option = input.get_u32();
                    let len = input.get_u32();
                    if magic != IHAVEOPT {
                        self.state = State::Finished;
                        return Err(HandshakeError::BadOptionMagic(magic));
                    }
                    if option == OPT_EXPORT_NAME && len as usize > MAX_STRING {
                        // EXPORT_NAME has no reply framing: the only
                        // refusal the spec allows is closing the session.
                        self.state = State::Finished;
                        return Err(HandshakeError::ExportNameTooLong(len));
                    }
                    self.state = if len > MAX_OPTION_LEN {
                        State::Discard { option, remaining: len }
                    } else {
                        State::OptionData { option, len }
                    };
                }
                State::Discard { option, remaining } => {
                    let n = (remaining as usize).min(input.len());
                    input.advance(n);
                    let remaining = remaining - n as u32;
                    if remaining > 0 {
                        self.state = State::Discard { option, remaining };
                        return Ok(Progress::NeedMore);
                    }
                    if option == OPT_SET_META_CONTEXT {
                        // Failed, so no context stays selected.
                        self.base_allocation = false;
                    }
                    self.error(option, REP_ERR_TOO_BIG, "option data too long");
                    self.state = State::OptionHeader;
                }
                State::OptionData { option, len } => {
                    if input.len() < len as usize {
                        return Ok(Progress::NeedMore);
                    }
                    let data = input.split_to(len as usize);
                    self.state = State::OptionHeader;
                    match self.option(option, &data)? {
                        Progress::NeedMore => {}
                        done => {
                            self.state = State::Finished;
                            return Ok(done);
                        }
                    }
                }
            }
        }
    }

    fn option(&mut self, option: u32, data: &[u8]) -> Result<Progress, HandshakeError> {
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(data).into_owned();
                if !self.export.matches(&name) {
                    return Err(HandshakeError::UnknownExport(name));
                }
                let flags = self.export.transmission_flags(self.structured);
                self.out.put_u64(self.export.size);
                self.out.put_u16(flags);
                if !self.no_zeroes {
                    self.out.put_bytes(0, 124);
                }
                return Ok(Progress::Transmission(self.negotiated(flags)));
            }
            OPT_ABORT => {
                self.reply(option, REP_ACK, &[]);
                return Ok(Progress::Abort);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    self.error(option, REP_ERR_INVALID, "NBD_OPT_LIST takes no data");
                } else {
                    let name = self.export.name.clone();
                    let mut payload = Vec::with_capacity(4 + name.len());
                    payload.put_u32(name.len() as u32);
                    payload.put_slice(name.as_bytes());
                    payload.put_slice(self.export.description.as_bytes());
                    self.reply(option, REP_SERVER, &payload);
                    self.reply(option, REP_ACK, &[]);
                }
            }
            OPT_INFO | OPT_GO => return Ok(self.info_or_go(option, data)),
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    self.error(option, REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY takes no data");
                } else {
                    self.structured = true;
                    self.reply(option, REP_ACK, &[]);
                }
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => self.meta_context(option, data),
            // STARTTLS, EXTENDED_HEADERS and anything unknown: not supported,
            // and the client may carry on with other options.
            _ => self.error(option, REP_ERR_UNSUP, "option not supported"),
        }
        Ok(Progress::NeedMore)
    }

    fn info_or_go(&mut self, option: u32, data: &[u8]) -> Progress {
        let Some((name, requests)) = parse_info_request(data) else {
            self.error(option, REP_ERR_INVALID, "malformed NBD_OPT_INFO/GO data");
            return Progress::NeedMore;
        };
        if !self.export.matches(&name) {
            self.error(option, REP_ERR_UNKNOWN, "no such export");
            return Progress::NeedMore;
        }
        let flags = self.export.transmission_flags(self.structured);
        // One reply per type, however often the client repeats it ("A
        // particular information type SHOULD only appear once").
        let mut sent = [false; 4];
        for info in requests {
            match sent.get_mut(usize::from(info)) {
                Some(seen) if !*seen => *seen = true,
                _ => continue,
            }
            match info {
                INFO_NAME => {
                    let mut p = Vec::new();
                    p.put_u16(INFO_NAME);
                    p.put_slice(self.export.name.as_bytes());
                    self.reply(option, REP_INFO, &p);
                }
                INFO_DESCRIPTION => {
                    let mut p = Vec::new();
                    p.put_u16(INFO_DESCRIPTION);
                    p.put_slice(self.export.description.as_bytes());
                    self.reply(option, REP_INFO, &p);
                }
                INFO_BLOCK_SIZE => {
                    let bs = self.export.block_sizes;
                    let mut p = Vec::with_capacity(14);
                    p.put_u16(INFO_BLOCK_SIZE);
                    p.put_u32(bs.minimum);
                    p.put_u32(bs.preferred);
                    p.put_u32(bs.maximum);
                    self.reply(option, REP_INFO, &p);
                }
                _ => {} // unknown info requests are ignored
            }
        }
        let mut p = Vec::with_capacity(12);
        p.put_u16(INFO_EXPORT);
        p.put_u64(self.export.size);
        p.put_u16(flags);
        self.reply(option, REP_INFO, &p);
        self.reply(option, REP_ACK, &[]);
        if option == OPT_GO {
            Progress::Transmission(self.negotiated(flags))
        } else {
            Progress::NeedMore
        }
    }

    fn meta_context(&mut self, option: u32, data: &[u8]) {
        if option == OPT_SET_META_CONTEXT {
            // "Issuing this command replaces all previously-set metadata
            // contexts (including when this command fails)".
            self.base_allocation = false;
        }
        if !self.structured {
            self.error(option, REP_ERR_INVALID, "negotiate structured replies first");
            return;
        }
        let Some((name, queries)) = parse_meta_request(data) else {
            self.error(option, REP_ERR_INVALID, "malformed meta context request");
            return;
        };
        if !self.export.matches(&name) {
            self.error(option, REP_ERR_UNKNOWN, "no such export");
            return;
        }
        let listing = option == OPT_LIST_META_CONTEXT;
        let selected = if listing && queries.is_empty() {
            true
        } else {
            queries.iter().any(|q| q == META_BASE_ALLOCATION || (listing && q == "base:"))
        };
        if option == OPT_SET_META_CONTEXT {
            self.base_allocation = selected;
        }
        if selected {
            let mut p = Vec::new();
            p.put_u32(if listing { 0 } else { META_BASE_ALLOCATION_ID });
            p.put_slice(META_BASE_ALLOCATION.as_bytes());
            self.reply(option, REP_META_CONTEXT, &p);
        }
        self.reply(option, REP_ACK, &[]);
    }

    fn negotiated(&self, flags: u16) -> Negotiated {
        Negotiated {
            structured: self.structured,
            base_allocation: self.structured && self.base_allocation,
            flags,
            size: self.export.size,
            export_name: self.export.name.clone(),
        }
    }

    fn reply(&mut self, option: u32, kind: u32, data: &[u8]) {
        self.out.put_u64(OPTION_REPLY_MAGIC);
        self.out.put_u32(option);
        self.out.put_u32(kind);
        self.out.put_u32(data.len() as u32);
        self.out.put_slice(data);
    }

    fn error(&mut self, option: u32, kind: u32, msg: &str) {
        tracing::debug!(option, kind, msg, "option refused");
        self.reply(option, kind, msg.as_bytes());
    }
}

/// A string of `len` bytes at the front of `data`, if it is there and UTF-8.
fn take_string(data: &mut &[u8], len: usize) -> Option<String> {
    if len > MAX_STRING || data.len() < len {
        return None;
    }
    let s = std::str::from_utf8(&data[..len]).ok()?.to_owned();
    data.advance(len);
    Some(s)
}

fn take_u32(data: &mut &[u8]) -> Option<u32> {
    (data.len() >= 4).then(|| data.get_u32())
}

/// INFO/GO data: u32 name length, name, u16 count, count x u16 info types.
fn parse_info_request(mut data: &[u8]) -> Option<(String, Vec<u16>)> {
    let len = take_u32(&mut data)? as usize;
    let name = take_string(&mut data, len)?;
    if data.len() < 2 {
        return None;
    }
    let n = data.get_u16() as usize;
    if data.len() != n * 2 {
        return None;
    }
    let requests = (0..n).map(|_| data.get_u16()).collect();
    Some((name, requests))
}

/// META_CONTEXT data: u32 name length, name, u32 count, count x (u32 len, query).
fn parse_meta_request(mut data: &[u8]) -> Option<(String, Vec<String>)> {
    let len = take_u32(&mut data)? as usize;
    let name = take_string(&mut data, len)?;
    let n = take_u32(&mut data)?;
    let mut queries = Vec::new();
    for _ in 0..n {
        let len = take_u32(&mut data)? as usize;
        queries.push(take_string(&mut data, len)?);
    }
    data.is_empty().then_some((name, queries))
}
