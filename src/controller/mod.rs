//! The failover controller's shell inside `twinblock up` (when the resource
//! file has a `[controller]` table). The decisions are the node core's
//! (`replicator/src/core/quorum.rs`); this part carries them out:
//!
//! - [`witness`](twinblock_replicator::witness::client): the link to the
//!   witness (votes out, answers in);
//! - [`hooks`]: `on_promote` / `on_demote` and the address move, in order;
//! - [`leftover`]: `on_demote` at the start after a process that died
//!   with its promotion's service running;
//! - the health check: the `health` command on the Primary; three failures
//!   in a row hand over to the peer.

pub(crate) mod address;
mod hooks;
mod leftover;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{info, warn, Instrument};
use twinblock_replicator::config::ControllerSettings;
use twinblock_replicator::core::Hook;
use twinblock_replicator::node::ControllerOut;
use twinblock_replicator::protocol::wire::Role;
use twinblock_replicator::Node;

/// How often a failed address move is tried again when `recheck` is off.
const RETRY_FAILED_MOVE: Duration = Duration::from_secs(5);

/// The environment every hook and command gets.
pub fn hook_env(node: &Node) -> Vec<(String, String)> {
    vec![
        ("TWINBLOCK_RESOURCE".into(), node.res.name.clone()),
        ("TWINBLOCK_NODE".into(), node.me.name.clone()),
        ("TWINBLOCK_NBD".into(), node.me.nbd.to_string()),
        // Which daemon ran the hook: the next start finds a hook a crash
        // left running by it (`leftover`).
        (leftover::ID_VAR.into(), leftover::id_value(leftover::hooks_id())),
    ]
}

/// Starts the controller's tasks for `node`.
/// `outcomes`: each address move's outcome (for the events hub).
pub fn start(
    node: Arc<Node>,
    settings: ControllerSettings,
    stop: watch::Receiver<bool>,
    outcomes: address::Outcomes,
) {
    let mut rx = node.attach_controller();
    let (votes_tx, votes_rx) = mpsc::unbounded_channel();
    let span = tracing::Span::current();
    {
        let node = node.clone();
        let stop = stop.clone();
        tokio::spawn(
            async move {
                if let Err(e) = twinblock_replicator::witness::client(node, votes_rx, stop).await {
                    warn!("witness link: {e}");
                }
            }
            .instrument(span.clone()),
        );
    }
    // Hooks run one at a time, in the order the core asked for them.
    let (hooks_tx, mut hooks_rx) = mpsc::unbounded_channel::<Hook>();
    // Promotions whose hooks (address, on_promote) are not done yet: the
    // health check does not count meanwhile (review, helper-106: it failed
    // three times while on_promote still started the service, and handed
    // over to the peer, which did the same).
    let promoting = Arc::new(AtomicUsize::new(0));
    // Since when `on_promote` waits for a failed address move (None: it
    // does not): the health check waits for it at most two move
    // deadlines, then counts again, so a node whose own moves keep
    // failing (its identity, its permissions) hands over to its peer.
    let owed_since: Arc<Mutex<Option<Instant>>> = Arc::default();
    {
        let owed_since = owed_since.clone();
        let node = node.clone();
        let settings = settings.clone();
        let promoting = promoting.clone();
        // The address re-check runs in the same task: never beside a
        // hook's move.
        let recheck = settings.address.as_ref().and_then(address::recheck_interval);
        tokio::spawn(
            async move {
                // Without a re-check (`command`'s default), the tick only
                // tries a failed move again.
                let mut tick = tokio::time::interval(recheck.unwrap_or(RETRY_FAILED_MOVE));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.reset();
                // The promotion's address move failed: `on_promote` waits
                // for a re-check that moves the address.
                let mut owed = false;
                // The last move failed or was withdrawn: a re-check that
                // succeeds moved the address (an event, even when the
                // command does not say `moved`; review, helper-108).
                let mut unsure = false;
                // Before any hook of this process: the service a crashed
                // one left (`leftover`). Not the core's demotion (the
                // node starts Secondary): nothing is reported to it.
                let left = leftover::left(&node);
                if left != leftover::Left::Nothing {
                    warn!(
                        "the last process stopped after this node's promotion hooks and before \
                         an on_demote that succeeded (a crash?): on_demote runs now"
                    );
                    // A hook it was running when it died runs on (its
                    // process group is not the daemon's): an on_promote
                    // that starts the service after this on_demote found
                    // nothing to stop (review, helper-160). Killed first.
                    if let leftover::Left::By(old) = left {
                        leftover::stop_hooks_of(old).await;
                    }
                    leftover::mark(&node);
                    match hooks::run(&node, &settings, Hook::Demote, &outcomes, &mut owed).await {
                        Ok(()) => info!("on_demote after the unclean stop done"),
                        // In `status` too: the service the crash left may
                        // still run (it was only in the log; review,
                        // helper-160).
                        Err(e) => node.note_hook_failure(format!(
                            "on_demote after the last process's unclean stop failed (the \
                             service it left may still run): {e}"
                        )),
                    }
                }
                loop {
                    tokio::select! {
                        h = hooks_rx.recv() => {
                            let Some(h) = h else { return };
                            // A promotion whose on_promote was owed counts
                            // as promoting until this hook (a demotion)
                            // clears what it owed.
                            let owed_before = owed;
                            let r = hooks::run(&node, &settings, h, &outcomes, &mut owed).await;
                            match &r {
                                Ok(()) => info!(hook = ?h, "hooks done"),
                                Err(e) => warn!(hook = ?h, "hooks failed: {e}"),
                            }
                            node.hook_done(h, r);
                            unsure = owed;
                            let mut since = owed_since.lock().unwrap_or_else(|e| e.into_inner());
                            match (owed, owed_before) {
                                (true, false) => *since = Some(Instant::now()),
                                (false, _) => *since = None,
                                (true, true) => {}
                            }
                            drop(since);
                            if unsure && recheck.is_none() {
                                // The first retry a full interval after the failure.
                                tick.reset();
                            }
                            if owed_before {
                                promoting.fetch_sub(1, Ordering::SeqCst);
                            }
                            // Still owed (the move failed): the health
                            // check waits for the re-check's on_promote
                            // too. Before, it counted meanwhile, failed
                            // (the service not started, by design) and
                            // handed over to the peer, whose move failed
                            // as well: the role went back and forth
                            // (review, helper-118).
                            if h == Hook::Promoted && !owed {
                                promoting.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        // A failed move is tried again even when no
                        // re-check is set: before, with `command`'s
                        // default (no `recheck`), a promotion whose
                        // command failed left the Primary without its
                        // address and without `on_promote` for good
                        // (review, helper-118).
                        _ = tick.tick(), if recheck.is_some() || unsure => {
                            let Some(a) = &settings.address else { continue };
                            if node.address_permit().is_err() {
                                continue;
                            }
                            let env = hook_env(&node);
                            let r = address::move_and_report(
                                &node, a, &env, "recheck", unsure, &outcomes,
                            )
                            .await;
                            unsure = r.is_err();
                            match r {
                                Err((_, e)) => warn!("service address re-check: {e}"),
                                // The address is here now: the promotion
                                // it failed for is completed (address
                                // first, then on_promote). Before, the
                                // address came to a Primary whose
                                // on_promote never ran (review,
                                // helper-106).
                                Ok(()) if owed => {
                                    owed = false;
                                    *owed_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
                                    info!("service address in place after a failed move: on_promote");
                                    // No health check until on_promote has
                                    // started the service: the promotion's
                                    // count, held since its failed move.
                                    let r = hooks::run_on_promote(&node, &settings).await;
                                    promoting.fetch_sub(1, Ordering::SeqCst);
                                    if let Err(e) = &r {
                                        warn!("on_promote after the re-check failed: {e}");
                                    }
                                    node.hook_done(Hook::Promoted, r);
                                }
                                Ok(()) => {}
                            }
                        }
                    }
                }
            }
            .instrument(span.clone()),
        );
    }
    let forwarded = promoting.clone();
    tokio::spawn(
        async move {
            while let Some(out) = rx.recv().await {
                match out {
                    ControllerOut::Vote(v) => {
                        let _ = votes_tx.send(v);
                    }
                    ControllerOut::Hook(h) => {
                        if h == Hook::Promoted {
                            forwarded.fetch_add(1, Ordering::SeqCst);
                        }
                        let _ = hooks_tx.send(h);
                    }
                }
            }
        }
        .instrument(span.clone()),
    );
    if let Some(cmd) = settings.health.clone() {
        let interval = settings.health_interval;
        let hold = settings.address.as_ref().map_or(Duration::ZERO, |a| 2 * address::deadline(a));
        let owed = Owed { since: owed_since, hold };
        tokio::spawn(health_loop(node, cmd, interval, stop, promoting, owed).instrument(span));
    }
}

/// A promotion's `on_promote` waiting for a failed address move: since
/// when, and how long the health check waits for it.
struct Owed {
    since: Arc<Mutex<Option<Instant>>>,
    hold: Duration,
}

impl Owed {
    /// Waited for longer than the hold.
    fn overdue(&self) -> bool {
        let since = *self.since.lock().unwrap_or_else(|e| e.into_inner());
        since.is_some_and(|t| t.elapsed() >= self.hold)
    }
}

async fn health_loop(
    node: Arc<Node>,
    cmd: String,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
    promoting: Arc<AtomicUsize>,
    owed: Owed,
) {
    let mut overdue_said = false;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        // Not while the promotion's hooks still start the service, nor
        // while `on_promote` waits for a failed address move, for two
        // move deadlines at most (then a node whose moves keep failing
        // hands over; before, it held the role without its service for
        // good, or, with no bound, handed over at once and the role went
        // back and forth while the API was down for both).
        let overdue = owed.overdue();
        if node.role() != Role::Primary || (promoting.load(Ordering::SeqCst) > 0 && !overdue) {
            failures = 0;
            overdue_said = false;
            continue;
        }
        if overdue && !std::mem::replace(&mut overdue_said, true) {
            warn!(
                waited = ?owed.hold,
                "the service address is still not here: the health check counts again"
            );
        }
        let env = hook_env(&node);
        match hooks::shell(&cmd, &env, interval.max(Duration::from_secs(1))).await {
            Ok(()) => {
                if failures > 0 {
                    info!("health check passes again");
                }
                failures = 0;
                node.health(true);
            }
            Err(e) => {
                failures += 1;
                warn!(failures, "health check failed: {e}");
                if failures >= 3 {
                    node.health(false);
                    failures = 0;
                }
            }
        }
    }
}
