//! `twinblock up`: run one node in the foreground: the local store, the
//! peer link, the control socket and the NBD export (writable while
//! Primary).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;
use twinblock_nbd::ServerConfig;
use twinblock_replicator::config::ResourceConfig;
use twinblock_replicator::{link, Node, StoreOptions};

use crate::control::ControlServer;
use crate::signals::Shutdown;

pub async fn run(config: &Path, me: &str) -> Result<()> {
    let res = ResourceConfig::load(config)?;
    let span = tracing::info_span!("node", resource = %res.name, node = %me);
    async move {
        crate::serve::tune_malloc();
        let shutdown = Shutdown::install()?;
        let node = Node::open(res, me, &StoreOptions::default())?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let control = ControlServer::bind(&node.me.control)?;
        let control_path = control.path().to_owned();
        let listener = TcpListener::bind(node.me.nbd)
            .await
            .with_context(|| format!("cannot listen for NBD on {}", node.me.nbd))?;
        let endpoint = link::start(node.clone(), stop_rx.clone())?;
        if let Some(c) = node.res.controller.clone() {
            if let Some(a) = &c.address {
                crate::controller::address::spec(a).map_err(anyhow::Error::msg)?;
            }
            crate::controller::start(node.clone(), c, stop_rx.clone());
            println!(
                "twinblock up: failover controller on (dead_time {:?}, witness {})",
                node.res.controller.as_ref().map(|c| c.rules.dead_time).unwrap_or_default(),
                node.res.witness.as_ref().map_or("-".into(), |w| w.connect.to_string()),
            );
        }
        tokio::spawn(control.run(node.clone(), stop_tx.clone()).in_current_span());
        println!(
            "twinblock up: {} node {} (Secondary): NBD on nbd://{}/{}, replication on {} (peer {} at {}), control {}",
            node.res.name,
            node.me.name,
            listener.local_addr()?,
            node.res.name,
            node.me.address,
            node.peer.name,
            node.peer.address,
            control_path.display(),
        );
        let mut stop_wait = stop_rx.clone();
        let stop = async move {
            tokio::select! {
                _ = shutdown.wait() => {}
                _ = stop_wait.wait_for(|s| *s) => tracing::info!("down: shutting down"),
            }
        };
        let config = ServerConfig {
            export_name: node.res.name.clone(),
            max_connections: node.res.max_connections,
            ..ServerConfig::default()
        };
        twinblock_nbd::serve(listener, node.clone(), config, stop).await?;
        let _ = stop_tx.send(true);
        endpoint.close(0u32.into(), b"down");
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        node.store().flush().await.context("final flush")?;
        node.close();
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    }
    .instrument(span)
    .await?;
    Ok(())
}

/// `twinblock witness`: serves the resource's quorum witness until a signal.
pub async fn witness(config: &Path, me: &str) -> Result<()> {
    let res = ResourceConfig::load(config)?;
    let span = tracing::info_span!("witness", resource = %res.name, node = %me);
    async move {
        let shutdown = Shutdown::install()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let addr = res.witness.as_ref().map(|w| w.address);
        let name = me.to_owned();
        let task = tokio::spawn(
            async move { twinblock_replicator::witness::serve(res, &name, stop_rx).await }
                .in_current_span(),
        );
        println!(
            "twinblock witness: {me} listening on {}",
            addr.map_or("-".into(), |a| a.to_string())
        );
        tokio::select! {
            _ = shutdown.wait() => { let _ = stop_tx.send(true); }
            r = task => { r.context("witness task")??; return Ok(()); }
        }
        Ok::<_, anyhow::Error>(())
    }
    .instrument(span)
    .await
}
