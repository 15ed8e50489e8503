//! `twinblock up`: run one node in the foreground: the local store, the
//! peer link, the control socket and the NBD export (writable while
//! Primary).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;
use twinblock_nbd::ServerConfig;
use twinblock_replicator::config::ResourceConfig;
use twinblock_replicator::witness::{WitnessError, WitnessStatus};
use twinblock_replicator::{link, tls, Node, StoreOptions};

use crate::control::ControlServer;
use crate::signals::Shutdown;

/// The files a start of node `me` makes that are not there now: its disk
/// and its metadata with its siblings.
fn new_files(me: &twinblock_replicator::config::NodeConfig) -> Vec<std::path::PathBuf> {
    use twinblock_replicator::{al, disk_id};
    [
        me.disk.clone(),
        me.meta.clone(),
        disk_id::id_path(&me.meta),
        al::sibling(&me.meta, "al"),
        al::sibling(&me.meta, "bitmap"),
    ]
    .into_iter()
    .filter(|p| p.symlink_metadata().is_err())
    .collect()
}

pub async fn run(config: &Path, me: &str) -> Result<()> {
    let res = ResourceConfig::load(config)?;
    let span = tracing::info_span!("node", resource = %res.name, node = %me);
    async move {
        crate::serve::tune_malloc();
        let shutdown = Shutdown::install()?;
        match twinblock_timeline::start(me) {
            Ok(Some(path)) => tracing::info!("recording a write timeline to {}", path.display()),
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
        // The certificates first: a missing or mismatched file fails the
        // start before the disk and its metadata are created (found by
        // review: a start that failed on its certificate left a new disk
        // file and metadata behind).
        let (mine, peer) = res.pair(me)?;
        let tls = link::configs(&res, mine, peer).map_err(|e| match e {
            link::LinkError::Tls(e) => name_tls_key(&res, &mine.name, e),
            e => e.into(),
        })?;
        // A disk or metadata file whose directory does not exist is named
        // by its key, before anything is made (before, found by helper-155:
        // "nodir/a.meta.disk: No such file or directory", a file nobody
        // wrote in the resource file, after the disk file was opened). A
        // missing disk whose metadata is there is left to `Node::open`,
        // which says it may be on a file system not mounted yet.
        missing_directory(&res, mine)?;
        // So are the address mover's settings (a kind this build cannot
        // move, found by review), a node already up (its control socket
        // answers) and ports in use.
        if let Some(a) = res.controller.as_ref().and_then(|c| c.address.as_ref()) {
            crate::controller::address::spec(a).map_err(anyhow::Error::msg)?;
        }
        let control = ControlServer::bind(&mine.control)?;
        let control_path = control.path().to_owned();
        let listener = TcpListener::bind(mine.nbd)
            .await
            .with_context(|| format!("cannot listen for NBD on {}", mine.nbd))?;
        let metrics_listener = match mine.metrics {
            Some(addr) => Some(crate::metrics::bind(addr).await?),
            None => None,
        };
        let link_socket = link::bind(mine)?;
        // A first start that fails part-way (the metadata's directory
        // missing, a metadata file that cannot be written) leaves none of
        // the files it made behind (before, a new disk file stayed: review,
        // helper-137); files that were there are left as they are.
        let made = new_files(mine);
        let node = match Node::open(res, me, &StoreOptions::default()) {
            Ok(node) => node,
            Err(e) => {
                for path in made {
                    if path.symlink_metadata().is_ok_and(|m| m.is_file()) {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                return Err(e.into());
            }
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        // `down` asks for the stop: the export drains and a Primary
        // demotes while the link and the controller still run; `stop_tx`
        // then ends them.
        let (down_tx, mut down_rx) = watch::channel(false);
        let endpoint = link::start(node.clone(), tls, link_socket, stop_rx.clone())?;
        // Address moves' outcomes, controller to events hub.
        let (outcomes_tx, outcomes_rx) = tokio::sync::mpsc::unbounded_channel();
        if let Some(c) = node.res.controller.clone() {
            crate::controller::start(node.clone(), c, stop_rx.clone(), outcomes_tx);
            println!(
                "twinblock up: failover controller on (dead_time {:?}, witness {})",
                node.res.controller.as_ref().map(|c| c.rules.dead_time).unwrap_or_default(),
                node.res.witness.as_ref().map_or("-".into(), |w| w.connect.to_string()),
            );
        }
        let mut metrics_url = String::new();
        let metrics = match metrics_listener {
            Some(l) => {
                let m = Arc::new(crate::metrics::Metrics::new(&node));
                node.set_observer(m.clone());
                metrics_url = format!(", metrics on http://{}/metrics", l.local_addr()?);
                let (n, mm) = (node.clone(), m.clone());
                let render: crate::metrics::Render = Arc::new(move || mm.render(&n.status()));
                tokio::spawn(crate::metrics::serve(l, render, stop_rx.clone()).in_current_span());
                Some(m)
            }
            None => None,
        };
        let hub = crate::events::Hub::start(node.clone(), metrics, outcomes_rx, stop_rx.clone());
        tokio::spawn(control.run(node.clone(), down_tx.clone(), hub).in_current_span());
        println!(
            "twinblock up: {} node {} (Secondary): NBD on nbd://{}/{}, replication on {} (peer {} at {}), control {}{}",
            node.res.name,
            node.me.name,
            listener.local_addr()?,
            node.res.name,
            node.me.address,
            node.peer.name,
            node.peer.address,
            control_path.display(),
            metrics_url,
        );
        crate::sd_notify::tell(&format!(
            "READY=1\nSTATUS=Secondary, NBD on {}, control {}\nMAINPID={}",
            node.me.nbd,
            control_path.display(),
            std::process::id()
        ));
        let stopping = node.clone();
        // A signal stops the node as `down` does: the control socket then
        // refuses verbs that would change its state.
        let signalled = down_tx;
        let stop = async move {
            tokio::select! {
                _ = shutdown.wait() => {
                    let _ = signalled.send(true);
                }
                _ = down_rx.wait_for(|s| *s) => tracing::info!("down: shutting down"),
            }
            // With a controller, `on_demote` (stop the service, unmount)
            // needs the export: the demotion comes before it closes.
            if stopping.res.controller.is_some() {
                stopping.demote_for_stop(demote_wait(&stopping), DRAIN_WAIT_MAX).await;
            }
        };
        let config = ServerConfig {
            export_name: node.res.name.clone(),
            max_connections: node.res.max_connections,
            ..ServerConfig::default()
        };
        twinblock_nbd::serve(listener, node.clone(), config, stop).await?;
        crate::sd_notify::tell("STOPPING=1");
        node.demote_for_stop(demote_wait(&node), DRAIN_WAIT_MAX).await;
        let _ = stop_tx.send(true);
        twinblock_replicator::link::close_on_stop(&endpoint);
        let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
        // The final flush covers every write the core issued: those still
        // on the store lane are performed first. Not on a detached disk
        // (it holds nothing anyone relies on, and one that stopped
        // answering would hold the stop for ever).
        if node.lane_idle().await {
            let flushed = match node.res.disk_timeout {
                Some(limit) => {
                    tokio::time::timeout(limit, node.store().flush()).await.map_err(|_| limit)
                }
                None => Ok(node.store().flush().await),
            };
            match flushed {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    // Recorded as a failed disk, not left UpToDate (the wait
                    // for that record is not the disk's: outside its limit).
                    if !node.final_flush_failed(&e).await {
                        // The record still says what it said: the next
                        // start (a new descriptor no longer hears of the
                        // failed writeback) would trust the disk.
                        let id = twinblock_replicator::disk_id::id_path(&node.me.meta);
                        return Err(anyhow::Error::new(e).context(format!(
                            "final flush, and the record saying the disk failed could not be \
                             saved ({} still trusts it): before the next start, remove {} (the \
                             disk is then taken for another and takes a full sync from its peer)",
                            node.me.meta.display(),
                            id.display()
                        )));
                    }
                    return Err(anyhow::Error::new(e).context("final flush"));
                }
                // (A disk that stops answering now: the stop fails, and
                // the metadata is not marked clean.)
                Err(limit) => {
                    anyhow::bail!("final flush: no completion for {limit:?} (disk-timeout)")
                }
            }
        } else {
            tracing::warn!("the local disk is detached (Failed): stopping without a final flush");
        }
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
        let named = res.clone();
        let control = res.witness.as_ref().map(|w| w.control.clone());
        let metrics_listener = match res.witness.as_ref().and_then(|w| w.metrics) {
            Some(addr) => Some(crate::metrics::bind(addr).await?),
            None => None,
        };
        let name = me.to_owned();
        let first = WitnessStatus {
            resource: res.name.clone(),
            node: me.to_owned(),
            role: "Witness",
            ..WitnessStatus::default()
        };
        let (report_tx, report_rx) = watch::channel(first);
        let mut metrics_url = String::new();
        if let Some(l) = metrics_listener {
            metrics_url = format!(", metrics on http://{}/metrics", l.local_addr()?);
            let status = report_rx.clone();
            let render: crate::metrics::Render =
                Arc::new(move || crate::metrics::witness::render(&status.borrow()));
            tokio::spawn(crate::metrics::serve(l, render, stop_rx.clone()).in_current_span());
        }
        // Its first report comes once its certificates are read and its
        // address bound: only then does it say it listens (before, the
        // line and READY=1 came first, and a witness whose certificate
        // was missing failed after them: review, helper-137).
        let mut ready = report_rx.clone();
        let mut task = tokio::spawn(
            async move {
                twinblock_replicator::witness::serve_reporting(res, &name, stop_rx, Some(report_tx))
                    .await
            }
            .in_current_span(),
        );
        // (A witness that fails drops its report's sender: `changed` then
        // errs at once, which must not count as its report; the select
        // took that branch at random and the failing witness said it
        // listened, CI once.)
        tokio::select! {
            Ok(()) = ready.changed() => {}
            r = &mut task => {
                r.context("witness task")?.map_err(|e| match e {
                    WitnessError::Tls(e) => name_tls_key(&named, me, e),
                    e => e.into(),
                })?;
                return Ok(());
            }
        }
        if let Some(path) = control {
            let server = ControlServer::bind(&path)?;
            tokio::spawn(server.run_witness(report_rx, stop_tx.clone()).in_current_span());
        }
        println!(
            "twinblock witness: {me} listening on {}{metrics_url}",
            addr.map_or("-".into(), |a| a.to_string())
        );
        crate::sd_notify::tell("READY=1");
        tokio::select! {
            _ = shutdown.wait() => { let _ = stop_tx.send(true); }
            r = &mut task => { r.context("witness task")??; return Ok(()); }
        }
        Ok::<_, anyhow::Error>(())
    }
    .instrument(span)
    .await
}

/// Refuses a `meta`, or a new node's `disk`, in a directory that does not
/// exist, naming the key: twinblock makes the files, not their directories.
fn missing_directory(
    res: &ResourceConfig,
    me: &twinblock_replicator::config::NodeConfig,
) -> Result<()> {
    let new_node = me.meta.symlink_metadata().is_err();
    for (key, path, check) in [("meta", &me.meta, true), ("disk", &me.disk, new_node)] {
        let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else { continue };
        if check && !dir.is_dir() {
            anyhow::bail!(
                "{}: nodes.{}.{key}: {}: the directory {} does not exist (twinblock makes the \
                 file, not its directory: create it, or mount what belongs there)",
                res.path.display(),
                me.name,
                path.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// Names the resource file's key of a CA, certificate or key file that
/// cannot be used, as every other bad value is named (`r0.toml: tls.ca:
/// certs/ca.pem: ...`). Before (found by helper-155 walking the README),
/// `up` said only "certs/nope.pem: I/O error: No such file or directory
/// (os error 2)", naming neither the resource file nor the key.
fn name_tls_key(res: &ResourceConfig, node: &str, e: tls::TlsError) -> anyhow::Error {
    match e {
        tls::TlsError::File { file, path, reason } => {
            anyhow::anyhow!("{}: {}: {path}: {reason}", res.path.display(), file.key(node))
        }
        e => e.into(),
    }
}

/// How long a stopping Primary waits for its demotion: every `on_demote`
/// command's deadline and two seconds for the witness's answer, at most
/// `DEMOTE_WAIT_MAX`.
pub(crate) fn demote_wait(node: &Node) -> Duration {
    let hooks = node
        .res
        .controller
        .as_ref()
        .map_or(Duration::ZERO, |c| c.hook_timeout.saturating_mul(c.on_demote.len() as u32));
    (hooks + Duration::from_secs(2)).min(DEMOTE_WAIT_MAX)
}

/// The stop must end within the systemd unit's `TimeoutStopSec` (60 s)
/// and `down`'s own wait (80 s), with the export's drain, the link's close
/// and the final flush after it: a demotion still running after this is
/// given up (found by review: one slow `on_demote` had the node killed by
/// systemd mid-stop, still Primary).
pub(crate) const DEMOTE_WAIT_MAX: Duration = Duration::from_secs(30);

/// After the demotion, how long the link stays up at most for the writes
/// the peer has not applied yet (protocol A answered them): its own bound,
/// not the demotion's (without a controller that is 2 s, too short for a
/// full `max-lag` on a slow link; found by review). With the demotion's
/// 30 s it stays within systemd's 60 s.
const DRAIN_WAIT_MAX: Duration = Duration::from_secs(20);
