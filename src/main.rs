//! The `twinblock` binary: command line, daemon wiring.

mod serve;
mod signals;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use twinblock_replicator::BackendChoice;

#[derive(Parser)]
#[command(name = "twinblock", version, about = "Userspace block replication over NBD and QUIC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Export a file or block device over NBD, without replication.
    Serve {
        /// Backing file or block device (created at --size when missing).
        #[arg(long)]
        disk: PathBuf,
        /// Size of the device (e.g. 256M, 1G); must match an existing file.
        #[arg(long, value_parser = twinblock_replicator::units::parse_size)]
        size: Option<u64>,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:10809")]
        listen: SocketAddr,
        /// Export name (the empty name selects it too).
        #[arg(long, default_value = "twinblock")]
        name: String,
        /// I/O engine: auto, uring or threads (also $TWINBLOCK_IO).
        #[arg(long = "io", default_value = "auto")]
        io: BackendChoice,
        /// O_DIRECT for aligned requests, where the file system allows it.
        #[arg(long)]
        direct: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("twinblock: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TWINBLOCK_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Command::Serve { disk, size, listen, name, io, direct } => {
            rt.block_on(serve::run(serve::ServeArgs {
                disk,
                size,
                listen,
                name,
                backend: io,
                direct,
            }))
        }
    }
}
