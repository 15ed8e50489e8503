//! What one export looks like to clients: name, size, flags, block sizes.

use crate::consts::*;

/// Block size constraints advertised through NBD_INFO_BLOCK_SIZE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

impl Default for BlockSizes {
    fn default() -> Self {
        BlockSizes { minimum: 1, preferred: 4096, maximum: MAX_PAYLOAD }
    }
}

/// A snapshot of an export, taken when a client connects.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
    pub size: u64,
    pub read_only: bool,
    pub block_sizes: BlockSizes,
}

impl ExportInfo {
    /// The empty name selects the default (our only) export.
    pub fn matches(&self, requested: &str) -> bool {
        requested.is_empty() || requested == self.name
    }

    /// Transmission flags. `structured`: structured replies were negotiated
    /// (SEND_DF is only allowed then).
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = TFLAG_HAS_FLAGS
            | TFLAG_SEND_FLUSH
            | TFLAG_SEND_FUA
            | TFLAG_SEND_TRIM
            | TFLAG_SEND_WRITE_ZEROES
            | TFLAG_SEND_FAST_ZERO
            | TFLAG_SEND_CACHE
            // One store behind every connection: a FLUSH covers them all.
            | TFLAG_CAN_MULTI_CONN;
        if self.read_only {
            f |= TFLAG_READ_ONLY;
        }
        if structured {
            f |= TFLAG_SEND_DF;
        }
        f
    }
}
