//! twinblock-nbd: the NBD protocol, knowing nothing of replication.
//!
//! - [`handshake`]: the fixed-newstyle handshake as a sans-IO state machine.
//! - [`request`]: the transmission-phase request decoder and validation (sans-IO).
//! - [`reply`]: reply encoding (simple and structured).
//! - [`device`]: the [`BlockDevice`] trait the server is generic over.
//! - [`server`]: the shell around the above: tokio accepts, a thread per
//!   connection reads requests with blocking I/O and polls device futures
//!   in place (spawning onto tokio what must wait); `sink` writes replies
//!   (directly when the socket is free, else batched by a writer thread).

mod budget;
mod conn;
pub mod consts;
pub mod device;
pub mod export;
mod fence;
pub mod handshake;
mod inline;
pub mod issuing;
pub mod reply;
pub mod request;
pub mod server;
mod sink;
mod sock;

pub use device::{BlockDevice, DeviceError, DeviceResult, Extent, ZeroFlags};
pub use export::{BlockSizes, ExportInfo};
pub use handshake::{Handshake, HandshakeError, Negotiated, Progress};
pub use reply::Reply;
pub use request::{Command, Decoded, ProtocolError, RequestDecoder};
pub use server::{serve, ServerConfig};
pub use sink::batch;
