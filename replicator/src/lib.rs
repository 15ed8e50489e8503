//! twinblock-replicator: the replication engine.
//!
//! - [`store`]: the local store (io_uring, or a thread pool as fallback).
//! - [`local`]: a store exported without replication (`twinblock serve`).

pub mod local;
pub mod store;

pub use local::LocalDevice;
pub use store::{Backend, BackendChoice, Store, StoreError, StoreOptions};
