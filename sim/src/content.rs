//! The self-describing content of writes: every 16-byte cell names its
//! write and its place.

use bytes::Bytes;

use crate::CELL;

/// The content of write `id` over `[off, off+len)` (cell-aligned): every
/// 16-byte cell holds the id, its own cell number and a check word, so
/// the checker can tell which write a cell holds and that it sits where
/// it was written.
pub fn payload(id: u64, off: u64, len: u64) -> Bytes {
    let mut v = Vec::with_capacity(len as usize);
    for c in off / CELL..(off + len) / CELL {
        v.extend_from_slice(&cell_content(id, c));
    }
    Bytes::from(v)
}

pub fn cell_content(id: u64, c: u64) -> [u8; CELL as usize] {
    let mut v = [0u8; CELL as usize];
    v[..8].copy_from_slice(&id.to_le_bytes());
    v[8..12].copy_from_slice(&(c as u32).to_le_bytes());
    let check =
        (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ c.wrapping_mul(0xBF58_476D_1CE4_E5B9)) >> 32;
    v[12..16].copy_from_slice(&(check as u32 | 1).to_le_bytes());
    v
}

/// What a cell holds: 0 for zeroes, the write id, or None for garbage.
pub fn decode(c: usize, data: &[u8]) -> Option<u64> {
    if data.iter().all(|&x| x == 0) {
        return Some(0);
    }
    let id = u64::from_le_bytes(data[..8].try_into().ok()?);
    (cell_content(id, c as u64) == data[..CELL as usize]).then_some(id)
}
