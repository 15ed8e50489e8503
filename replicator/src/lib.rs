//! twinblock-replicator: the replication engine.
//!
//! - [`store`]: the local store (io_uring, or a thread pool as fallback).
//! - [`local`]: a store exported without replication (`twinblock serve`).
//! - [`node`]: a replicated node: roles, disk state, the replicated write path.
//! - [`session`]: one peer session as the write path sees it.
//! - [`link`]: the QUIC link (quinn + rustls mutual TLS) and its tasks.
//! - [`protocol`]: the sans-IO replication protocol (wire, sender, receiver).
//! - [`config`], [`meta`], [`bitmap`], [`status`], [`tls`], [`units`].

pub mod al;
pub mod bitmap;
pub mod config;
pub mod core;
pub mod link;
pub mod local;
pub mod meta;
pub mod node;
pub mod protocol;
pub mod session;
pub mod status;
pub mod store;
pub mod tls;
pub mod units;

pub use local::LocalDevice;
pub use node::Node;
pub use store::{Backend, BackendChoice, Store, StoreError, StoreOptions};
