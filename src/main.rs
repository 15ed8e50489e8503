//! The `twinblock` binary: command line and daemon wiring.

mod certs;
mod control;
mod controller;
mod netem;
mod serve;
mod signals;
mod up;
mod verbs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use twinblock_replicator::units::{parse_duration, parse_size};
use twinblock_replicator::BackendChoice;

#[derive(Parser)]
#[command(name = "twinblock", version, about = "Userspace block replication over NBD and QUIC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct NodeArgs {
    /// The resource file (TOML).
    #[arg(long)]
    config: PathBuf,
    /// This node's name in the resource file.
    #[arg(long)]
    node: String,
}

#[derive(Subcommand)]
enum Command {
    /// Export a file or block device over NBD, without replication.
    Serve {
        /// Backing file or block device (created at --size when missing).
        #[arg(long)]
        disk: PathBuf,
        /// Size of the device (e.g. 256M, 1G); must match an existing file.
        #[arg(long, value_parser = parse_size)]
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
        /// Clients connected at once; one more is accepted and closed.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: u32,
        /// Time a client has to finish the handshake (e.g. 30s).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        handshake_timeout: std::time::Duration,
        /// A client that acknowledges nothing or takes no reply for this
        /// long is disconnected (keepalive, TCP_USER_TIMEOUT, reply writes).
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        io_timeout: std::time::Duration,
        /// On SIGINT/SIGTERM, time clients get to read their last replies.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        shutdown_timeout: std::time::Duration,
    },
    /// Create a CA and a certificate/key pair per node name.
    GenCerts {
        /// Directory for ca.pem, ca.key, NAME.pem, NAME.key.
        #[arg(long)]
        out: PathBuf,
        /// Node names (each certificate names its node).
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Run one node in the foreground (starts Secondary; with a
    /// `[controller]` table, the failover controller decides the roles).
    Up(NodeArgs),
    /// Run the quorum witness of a resource (a node with `witness = true`):
    /// it votes which node may be Primary and keeps no data.
    Witness(NodeArgs),
    /// Make the node Primary.
    Primary {
        #[command(flatten)]
        node: NodeArgs,
        /// Declare this node's data UpToDate (initial setup).
        #[arg(long)]
        force: bool,
    },
    /// Make the node Secondary.
    Secondary(NodeArgs),
    /// Show the node's state.
    Status {
        #[command(flatten)]
        node: NodeArgs,
        /// One JSON object.
        #[arg(long)]
        json: bool,
        /// Refresh every second until Ctrl-C.
        #[arg(long)]
        watch: bool,
    },
    /// (Re)connect to the peer.
    Connect(NodeArgs),
    /// Drop the peer link and stay StandAlone.
    Disconnect(NodeArgs),
    /// Online verify against the peer.
    Verify(NodeArgs),
    /// After a split brain: drop this node's changes and resync from the peer.
    DiscardMyData(NodeArgs),
    /// Stop the node's daemon.
    Down(NodeArgs),
    /// UDP relay that adds latency, jitter and loss (rehearse inter-AZ links).
    Netem {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        forward: SocketAddr,
        /// One-way delay added to each datagram (e.g. 500us, 2ms).
        #[arg(long, value_parser = parse_duration)]
        delay: std::time::Duration,
        /// Up to this much more, at random (never reorders).
        #[arg(long, value_parser = parse_duration, default_value = "0ms")]
        jitter: std::time::Duration,
        /// Percentage of datagrams dropped.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, e)) => {
            eprintln!("twinblock: {e:#}");
            ExitCode::from(code)
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

/// An exit code and what to say.
struct Failure(u8, anyhow::Error);

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure(1, e)
    }
}

impl From<verbs::VerbError> for Failure {
    fn from(e: verbs::VerbError) -> Self {
        match e {
            verbs::VerbError::Call(c @ control::CallError::Unreachable { .. }) => {
                Failure(verbs::EXIT_NOT_RUNNING, c.into())
            }
            verbs::VerbError::Call(c) => Failure(1, c.into()),
            verbs::VerbError::Other(e) => Failure(1, e),
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn simple(n: &NodeArgs, verb: &str, force: bool) -> Result<(), Failure> {
    let st = verbs::run(&n.config, &n.node, verb, force)?;
    print!("{}", verbs::render(&st));
    Ok(())
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Serve {
            disk,
            size,
            listen,
            name,
            io,
            direct,
            max_connections,
            handshake_timeout,
            io_timeout,
            shutdown_timeout,
        } => {
            let limits = serve::Limits {
                max_connections: max_connections as usize,
                handshake_timeout,
                io_timeout,
                shutdown_timeout,
            };
            let args = serve::ServeArgs { disk, size, listen, name, backend: io, direct, limits };
            runtime()?.block_on(serve::run(args))?;
        }
        Command::GenCerts { out, names } => certs::run(&out, &names)?,
        Command::Up(n) => runtime()?.block_on(up::run(&n.config, &n.node))?,
        Command::Witness(n) => runtime()?.block_on(up::witness(&n.config, &n.node))?,
        Command::Primary { node, force } => simple(&node, "primary", force)?,
        Command::Secondary(n) => simple(&n, "secondary", false)?,
        Command::Connect(n) => simple(&n, "connect", false)?,
        Command::Disconnect(n) => simple(&n, "disconnect", false)?,
        Command::Verify(n) => simple(&n, "verify", false)?,
        Command::DiscardMyData(n) => simple(&n, "discard-my-data", false)?,
        Command::Down(n) => {
            verbs::run(&n.config, &n.node, "down", false)?;
            println!("{}: going down", n.node);
        }
        Command::Netem { listen, forward, delay, jitter, loss } => {
            let args = netem::NetemArgs { listen, forward, delay, jitter, loss };
            netem::run(args)?; // runs until killed (SIGINT/SIGTERM)
        }
        Command::Status { node, json, watch } => {
            verbs::status(&node.config, &node.node, json, watch)?
        }
    }
    Ok(())
}
