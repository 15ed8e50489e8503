//! Transmission-phase replies: simple replies and structured chunks, encoded
//! into a header plus (for reads) the data, which is never copied.

use bytes::{BufMut, Bytes, BytesMut};

use crate::consts::*;
use crate::device::Extent;

/// One complete reply: `head` then `data`, written back to back, never
/// interleaved with another reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub head: Bytes,
    pub data: Bytes,
}

impl Reply {
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn head_only(head: BytesMut) -> Reply {
        Reply { head: head.freeze(), data: Bytes::new() }
    }
}

fn put_simple(buf: &mut BytesMut, cookie: u64, errno: u32) {
    buf.put_u32(SIMPLE_REPLY_MAGIC);
    buf.put_u32(errno);
    buf.put_u64(cookie);
}

fn put_chunk(buf: &mut BytesMut, flags: u16, kind: u16, cookie: u64, len: u32) {
    buf.put_u32(STRUCTURED_REPLY_MAGIC);
    buf.put_u16(flags);
    buf.put_u16(kind);
    buf.put_u64(cookie);
    buf.put_u32(len);
}

/// Success without data (everything but READ and BLOCK_STATUS).
pub fn ok(cookie: u64) -> Reply {
    let mut b = BytesMut::with_capacity(SIMPLE_REPLY_LEN);
    put_simple(&mut b, cookie, 0);
    Reply::head_only(b)
}

/// Successful READ of `data` at `offset`.
pub fn read(structured: bool, cookie: u64, offset: u64, data: Bytes) -> Reply {
    if !structured {
        let mut b = BytesMut::with_capacity(SIMPLE_REPLY_LEN);
        put_simple(&mut b, cookie, 0);
        return Reply { head: b.freeze(), data };
    }
    let mut b = BytesMut::with_capacity(CHUNK_HEADER_LEN + 8);
    put_chunk(&mut b, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, 8 + data.len() as u32);
    b.put_u64(offset);
    Reply { head: b.freeze(), data }
}

/// An error. With structured replies it is an ERROR chunk carrying `message`
/// (mandatory for READ); otherwise a simple reply.
pub fn error(structured: bool, cookie: u64, errno: u32, message: &str) -> Reply {
    debug_assert!(errno != 0);
    if !structured {
        let mut b = BytesMut::with_capacity(SIMPLE_REPLY_LEN);
        put_simple(&mut b, cookie, errno);
        return Reply::head_only(b);
    }
    let msg = &message.as_bytes()[..message.len().min(MAX_STRING)];
    let mut b = BytesMut::with_capacity(CHUNK_HEADER_LEN + 6 + msg.len());
    put_chunk(&mut b, REPLY_FLAG_DONE, REPLY_TYPE_ERROR, cookie, 6 + msg.len() as u32);
    b.put_u32(errno);
    b.put_u16(msg.len() as u16);
    b.put_slice(msg);
    Reply::head_only(b)
}

/// BLOCK_STATUS for the `base:allocation` context.
pub fn block_status(cookie: u64, extents: &[Extent]) -> Reply {
    let len = 4 + 8 * extents.len();
    let mut b = BytesMut::with_capacity(CHUNK_HEADER_LEN + len);
    put_chunk(&mut b, REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, cookie, len as u32);
    b.put_u32(META_BASE_ALLOCATION_ID);
    for e in extents {
        b.put_u32(e.length);
        b.put_u32(e.flags);
    }
    Reply::head_only(b)
}
