//! SIGINT/SIGTERM as a future. Install the handlers before announcing that
//! the service is up, so an early SIGTERM still means a clean stop.

use anyhow::{Context, Result};
use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Shutdown {
    int: Signal,
    term: Signal,
}

impl Shutdown {
    pub fn install() -> Result<Shutdown> {
        Ok(Shutdown {
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Resolves at the first SIGINT or SIGTERM.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    }
}
