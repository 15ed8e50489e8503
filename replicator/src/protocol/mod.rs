//! The replication protocol as sans-IO cores: [`wire`] (frames),
//! [`sender`] (Primary: numbering, ack rules per mode), [`receiver`]
//! (Secondary: CRC check, sequencing, acks), [`liveness`] (heartbeats, RTT).
//! The QUIC shell in `crate::link` feeds them; `tests.rs` drives them
//! deterministically.

pub mod genid;
pub mod liveness;
pub mod receiver;
pub mod sender;
pub mod wire;

#[cfg(test)]
mod tests;
