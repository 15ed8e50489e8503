//! twinblock-replicator: the replication engine.
//!
//! - [`store`]: the local store (io_uring, or a thread pool as fallback).
//! - [`local`]: a store exported without replication (`twinblock serve`).

pub mod config;
pub mod local;
pub mod protocol;
pub mod store;
pub mod units;

pub use local::LocalDevice;
pub use store::{Backend, BackendChoice, Store, StoreError, StoreOptions};
