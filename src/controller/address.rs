//! Moving the service address to this node (`[controller.address]`)
//! through `twinblock-mover`: the instance and interface from the node's
//! config, or from IMDSv2 for what is missing.

use std::time::Duration;

use twinblock_mover::{imds, AddressSpec, Identity, Kind, MoveError, MoveReport, Permit};
use twinblock_replicator::config::AddressSettings;
use twinblock_replicator::units::parse_duration;
use twinblock_replicator::Node;

use crate::events::AddressOutcome;

/// The mover's view of `[controller.address]`.
pub fn spec(a: &AddressSettings) -> Result<AddressSpec, String> {
    let kind = match a.kind.as_str() {
        "aws-eip" => Kind::AwsEip,
        "aws-route" => Kind::AwsRoute,
        "aws-secondary-ip" => Kind::AwsSecondaryIp,
        "command" => Kind::Command,
        other => return Err(format!("controller.address.kind: {other:?} is not a mover")),
    };
    let s = AddressSpec {
        kind,
        allocation_id: a.allocation_id.clone(),
        route_table_ids: a.route_table_ids.clone(),
        cidr: a.cidr.clone(),
        private_ip: a.private_ip.clone(),
        command: a.command.clone(),
        region: a.region.clone(),
        endpoint: a.endpoint.clone(),
    };
    s.validate().map_err(|e| e.to_string())?;
    // Refused at `up`, not at the first promotion (found by review).
    if kind != Kind::Command && !cfg!(feature = "aws") {
        return Err(format!(
            "controller.address.kind: \"{kind}\" needs twinblock built with the `aws` feature \
             (this build moves addresses with kind \"command\" only)"
        ));
    }
    // Checked here, at `up`, not at the first promotion that needs IMDS.
    if let Some(e) = &a.imds_endpoint {
        let host = e.strip_prefix("http://").map(|h| h.trim_end_matches('/'));
        if host.is_none_or(|h| h.is_empty() || h.contains('/')) {
            return Err(format!(
                "controller.address.imds_endpoint: {e:?} is not http://host[:port] (IMDS speaks \
                 plain HTTP)"
            ));
        }
    }
    Ok(s)
}

/// How often the Primary checks that the address is still here
/// (`recheck`; default 30 s for the AWS kinds, off for `command`, whose
/// command the user may not want run again and again). Why: a move sent
/// by a node that has lost the right since (on the wire when its lease
/// ran out, or a late TCP retransmission) can land after its successor's
/// move, and a move that failed (AWS down past the deadline) left the
/// Primary without its address for good.
pub fn recheck_interval(a: &AddressSettings) -> Option<Duration> {
    let default = (a.kind != "command").then_some(Duration::from_secs(30));
    let every = match a.recheck.as_deref() {
        Some(r) => parse_duration(r).ok(),
        None => default,
    };
    every.filter(|d| !d.is_zero())
}

/// How long one move may take, retries included (`deadline`, 60 s).
pub fn deadline(a: &AddressSettings) -> Duration {
    a.deadline.as_deref().and_then(|d| parse_duration(d).ok()).unwrap_or(Duration::from_secs(60))
}

/// Where the outcome of each move goes (the events hub: an `address`
/// event and `twinblock_address_moves_total`).
pub type Outcomes = tokio::sync::mpsc::UnboundedSender<AddressOutcome>;

/// [`move_here`], its outcome sent to `outcomes` as `op` (`promote`,
/// `recheck`). `after_failure`: the last move failed or was withdrawn
/// (see [`outcome`]). Err: (withdrawn, what), as [`move_here`].
pub async fn move_and_report(
    node: &Node,
    a: &AddressSettings,
    env: &[(String, String)],
    op: &'static str,
    after_failure: bool,
    outcomes: &Outcomes,
) -> Result<(), (bool, String)> {
    let r = move_here(node, a, env).await;
    let _ = outcomes.send(outcome(op, after_failure, &r));
    r.map(|_| ())
}

/// What a move as `op` (`promote`, `recheck`) reports: `in-place` when
/// the mover found the address here, `moved` when it moved it, `failed`
/// or `withdrawn`. A `command` mover's command that did not say which
/// (its last line of stdout is neither `moved` nor `in-place`) moved it
/// at a promotion, and at a re-check only `checked` it: not an event.
/// Before, every such re-check was an `address moved` event, nothing
/// having changed (review, helper-107). Except `after_failure`, when the
/// last move failed (or was withdrawn): then the address was not here,
/// and a re-check that succeeds moved it (review, helper-108: it was
/// `checked`, no event, and `twinblock events` showed the failure for
/// good).
fn outcome(
    op: &'static str,
    after_failure: bool,
    r: &Result<MoveReport, (bool, String)>,
) -> AddressOutcome {
    let (result, detail) = match r {
        Ok(report) if report.already_in_place => ("in-place", report.to_string()),
        Ok(report) if !report.known && op == "recheck" && !after_failure => {
            ("checked", report.to_string())
        }
        Ok(report) => ("moved", report.to_string()),
        Err((true, e)) => ("withdrawn", e.clone()),
        Err((false, e)) => ("failed", e.clone()),
    };
    AddressOutcome { op, result, detail }
}

/// Err: (withdrawn, what): withdrawn, the node was to demote meanwhile
/// ([`MoveError::Withdrawn`]); else the move failed.
pub async fn move_here(
    node: &Node,
    a: &AddressSettings,
    env: &[(String, String)],
) -> Result<MoveReport, (bool, String)> {
    let failed = |e: String| (false, e);
    let deadline = deadline(a);
    let spec = spec(a).map_err(failed)?;
    let mut me =
        Identity { instance_id: node.me.cloud_instance_id.clone(), eni: node.me.cloud_eni.clone() };
    let needs = match spec.kind {
        Kind::AwsEip => me.instance_id.is_none() && me.eni.is_none(),
        Kind::AwsRoute | Kind::AwsSecondaryIp => me.eni.is_none(),
        Kind::Command => false,
    };
    // Asked before every change the mover makes: a node demoted or deposed
    // while its move runs must not move the address after its successor.
    let guard = || match node.address_permit() {
        Ok(()) => Permit::Go,
        Err((true, why)) => Permit::Wait(why.to_string()),
        Err((false, why)) => Permit::Stop(why.to_string()),
    };
    if needs {
        let endpoint = a.imds_endpoint.as_deref().unwrap_or("http://169.254.169.254");
        // Asked once per process: the answer cannot change.
        me = unless_stopped(&guard, imds::resolve_cached(endpoint, me))
            .await
            .map_err(|why| (true, format!("IMDSv2 at {endpoint}: move withdrawn: {why}")))?
            .map_err(|e| failed(format!("IMDSv2 at {endpoint}: {e}")))?;
    }
    let report = twinblock_mover::move_address_guarded(&spec, &me, env, deadline, &guard)
        .await
        .map_err(|e| (matches!(e, MoveError::Withdrawn { .. }), e.to_string()))?;
    tracing::info!("service address: {report}");
    Ok(report)
}

/// How often a step the mover does not guard itself asks the guard.
const GUARD_POLL: Duration = Duration::from_millis(100);

/// `fut`, given up as soon as `guard` says [`Permit::Stop`] (Err: why).
/// Found by review (helper-106): the IMDSv2 look-up (up to 10 s when IMDS
/// does not answer; at the first move when the node's config names no
/// instance or ENI) ran to its end after the node was told to demote, and
/// the Demote hook (`on_demote`, `down`) waited behind it.
async fn unless_stopped<T>(
    guard: &(dyn Fn() -> Permit + Send + Sync),
    fut: impl std::future::Future<Output = T>,
) -> Result<T, String> {
    if let Permit::Stop(why) = guard() {
        return Err(why);
    }
    let stopped = async {
        loop {
            tokio::time::sleep(GUARD_POLL).await;
            if let Permit::Stop(why) = guard() {
                return why;
            }
        }
    };
    tokio::select! {
        v = fut => Ok(v),
        why = stopped => Err(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Found by review (helper-103): a bad imds_endpoint was found only at
    // the first promotion that needed IMDS, failing the address move then.
    #[test]
    fn a_bad_imds_endpoint_is_refused_naming_the_key() {
        let a = AddressSettings {
            kind: "command".into(),
            command: Some("true".into()),
            imds_endpoint: Some("https://169.254.169.254".into()),
            ..AddressSettings::default()
        };
        let e = spec(&a).unwrap_err();
        assert!(e.starts_with("controller.address.imds_endpoint:"), "{e}");
        let ok = AddressSettings { imds_endpoint: Some("http://127.0.0.1:5000/".into()), ..a };
        assert!(spec(&ok).is_ok());
    }

    // Checked by review (helper-106): the user's command is not run every
    // 30 s unasked; the AWS kinds re-check by default; "0s" is off.
    #[test]
    fn the_recheck_is_off_for_a_command_unless_set() {
        let cmd = AddressSettings {
            kind: "command".into(),
            command: Some("true".into()),
            ..AddressSettings::default()
        };
        assert_eq!(recheck_interval(&cmd), None);
        let set = AddressSettings { recheck: Some("10s".into()), ..cmd.clone() };
        assert_eq!(recheck_interval(&set), Some(Duration::from_secs(10)));
        let eip = AddressSettings {
            kind: "aws-eip".into(),
            allocation_id: Some("eipalloc-1".into()),
            region: Some("eu-west-1".into()),
            ..AddressSettings::default()
        };
        assert_eq!(recheck_interval(&eip), Some(Duration::from_secs(30)));
        let off = AddressSettings { recheck: Some("0s".into()), ..eip.clone() };
        assert_eq!(recheck_interval(&off), None);
        // A bare "0" is zero too (README: durations).
        let bare = AddressSettings { recheck: Some("0".into()), ..eip };
        assert_eq!(recheck_interval(&bare), None);
    }

    // Found by review (helper-107): a `command` re-check was an `address
    // moved` event at every interval, nothing having changed.
    #[tokio::test]
    async fn a_command_recheck_is_an_event_only_when_the_command_says_it_moved() {
        let run = |cmd: &str| {
            let spec = AddressSpec {
                kind: Kind::Command,
                command: Some(cmd.into()),
                ..AddressSpec::default()
            };
            async move {
                twinblock_mover::move_address(
                    &spec,
                    &Identity::default(),
                    &[],
                    Duration::from_secs(10),
                )
                .await
                .map_err(|e| (false, e.to_string()))
            }
        };
        let quiet = run("true").await;
        let o = outcome("recheck", false, &quiet);
        assert_eq!(o.result, "checked", "{o:?}");
        assert!(!o.is_event(), "{o:?}");
        assert_eq!(outcome("promote", false, &quiet).result, "moved");
        // After a failed move, the re-check that succeeds moved it
        // (review, helper-108).
        let o = outcome("recheck", true, &quiet);
        assert_eq!(o.result, "moved", "{o:?}");
        assert!(o.is_event());
        let o = outcome("recheck", true, &run("echo in-place").await);
        assert_eq!(o.result, "in-place", "{o:?}");
        let o = outcome("recheck", false, &run("echo in-place").await);
        assert_eq!(o.result, "in-place", "{o:?}");
        assert!(!o.is_event());
        let o = outcome("recheck", false, &run("echo moved").await);
        assert_eq!(o.result, "moved", "{o:?}");
        assert!(o.is_event());
    }

    // Found by review (helper-106): the IMDSv2 look-up was not asked the
    // guard: with IMDS silent it held a move (or a re-check) for its 10 s
    // after the node was told to demote, on_demote waiting behind it.
    #[tokio::test]
    async fn an_imds_lookup_is_given_up_when_the_node_is_to_demote() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        let demoting = AtomicBool::new(false);
        let guard = || {
            if demoting.load(Ordering::SeqCst) {
                Permit::Stop("demoting".into())
            } else {
                Permit::Go
            }
        };
        let started = std::time::Instant::now();
        let flip = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            demoting.store(true, Ordering::SeqCst);
        };
        let lookup = imds::resolve(&endpoint, Identity::default());
        let (r, ()) = tokio::join!(unless_stopped(&guard, lookup), flip);
        assert_eq!(r.err().as_deref(), Some("demoting"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
        hold.abort();
    }
}
