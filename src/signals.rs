//! SIGINT/SIGTERM as a future. Install the handlers before announcing that
//! the service is up, so an early SIGTERM still means a clean stop. The
//! first signal starts the orderly shutdown; a second one ends the process
//! at once (exit status 1), whatever the shutdown is waiting for.

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

    /// Resolves at the first SIGINT or SIGTERM; from then on the next one
    /// exits the process immediately.
    pub async fn wait(mut self) {
        let first = tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        };
        tracing::info!("{first}: shutting down (a second signal exits at once)");
        tokio::spawn(async move {
            let second = tokio::select! {
                _ = self.int.recv() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
            };
            eprintln!("twinblock: second signal ({second}): exiting at once");
            std::process::exit(1);
        });
    }
}
