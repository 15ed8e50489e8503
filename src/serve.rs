//! `twinblock serve`: export a file or device over NBD, no replication.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use twinblock_nbd::ServerConfig;
use twinblock_replicator::{BackendChoice, LocalDevice, Store, StoreOptions};

use crate::signals::Shutdown;

pub struct ServeArgs {
    pub disk: PathBuf,
    pub size: Option<u64>,
    pub listen: SocketAddr,
    pub name: String,
    pub backend: BackendChoice,
    pub direct: bool,
    pub limits: Limits,
}

/// The server limits `serve` takes from the command line.
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub io_timeout: Duration,
    pub shutdown_timeout: Duration,
}

/// Request buffers (up to 32 MiB each, allocated per request and freed on
/// another thread) are served from glibc's heap instead of fresh mmaps, and
/// freed memory is not handed back to the kernel after every request:
/// measured with `scripts/bench-nbd.sh`, 1M writes at QD8 gain about 20%
/// (page faults and munmap per request). Freed heap memory is kept up to
/// 256 MiB.
pub fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters (under glibc's own
    // lock); nothing has been served yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    tune_malloc();
    let shutdown = Shutdown::install()?;
    let opts =
        StoreOptions { backend: args.backend, direct: args.direct, ..StoreOptions::default() };
    let store = Store::open(&args.disk, args.size, &opts)?;
    let store = Arc::new(store);
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    println!(
        "twinblock serve: {} ({} bytes, {} I/O{}) on nbd://{addr}/{}",
        args.disk.display(),
        store.size(),
        store.backend(),
        if store.is_direct() { ", O_DIRECT" } else { "" },
        args.name,
    );
    println!("listening on {addr}");
    let device = Arc::new(LocalDevice::new(store.clone()));
    let config = ServerConfig {
        export_name: args.name,
        max_connections: args.limits.max_connections,
        handshake_timeout: args.limits.handshake_timeout,
        io_timeout: args.limits.io_timeout,
        shutdown_timeout: args.limits.shutdown_timeout,
        ..ServerConfig::default()
    };
    twinblock_nbd::serve(listener, device, config, shutdown.wait()).await?;
    // Everything acknowledged is already as durable as the client asked;
    // one more fdatasync makes a clean stop leave nothing in the page cache.
    // It runs whatever the clients did (serve returns within
    // shutdown_timeout plus the device's own completion time).
    store.flush().await.context("final flush")?;
    tracing::info!("stopped");
    Ok(())
}
