//! The replication protocol's pure parts: [`wire`] (the frames) and
//! [`genid`] (generation ids and the sync decision table). Sequencing,
//! acknowledgements and liveness are the node core's (`crate::core`).

pub mod genid;
pub mod wire;

#[cfg(test)]
mod tests;
