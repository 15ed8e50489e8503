//! twinblock-replicator: the replication engine.
//!
//! - [`store`]: the local store (io_uring, or a thread pool as fallback).
//! - [`local`]: a store exported without replication (`twinblock serve`).
//! - [`core`]: the node's logic as a sans-IO state machine (roles, disk and
//!   replication states, write path, handshake, resync, verify).
//! - [`node`]: the tokio shell around the core: store, metadata files, links;
//!   [`lane`]: its store operations in the core's order, large ones off the lock.
//! - [`bench`]: the node's side of `twinblock bench` (probes into a scratch area).
//! - [`link`]: the QUIC link (quinn + rustls mutual TLS) and its tasks;
//!   [`udp`]: its socket (bounded GSO batches); [`busy_poll`]: its thread
//!   looks for work a moment before it sleeps.
//! - [`protocol`]: the sans-IO replication protocol (wire, sender, receiver).
//! - [`config`], [`meta`], [`al`] (activity-log journal, bitmap file), [`bitmap`], [`status`], [`tls`], [`units`].

pub mod al;
pub mod arbiter;
pub mod bench;
pub mod bitmap;
pub mod boot;
pub mod busy_poll;
pub mod config;
pub mod conn_order;
pub mod core;
pub mod disk_id;
pub mod lane;
pub mod link;
pub mod link_stats;
pub mod local;
pub mod meta;
pub mod node;
pub mod protocol;
mod random;
mod refusals;
pub mod status;
pub mod store;
pub mod tls;
pub mod udp;
pub mod units;
pub mod witness;

pub use local::LocalDevice;
pub use node::Node;
pub use store::{Backend, BackendChoice, Store, StoreError, StoreOptions};
