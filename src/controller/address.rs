//! Moving the service address to this node (`[controller.address]`)
//! through `twinblock-mover`: the instance and interface from the node's
//! config, or from IMDSv2 for what is missing.

use std::time::Duration;

use twinblock_mover::{imds, AddressSpec, Identity, Kind, Permit};
use twinblock_replicator::config::AddressSettings;
use twinblock_replicator::units::parse_duration;
use twinblock_replicator::Node;

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

pub async fn move_here(
    node: &Node,
    a: &AddressSettings,
    env: &[(String, String)],
) -> Result<(), String> {
    let deadline = a
        .deadline
        .as_deref()
        .and_then(|d| parse_duration(d).ok())
        .unwrap_or(Duration::from_secs(60));
    let spec = spec(a)?;
    let mut me =
        Identity { instance_id: node.me.cloud_instance_id.clone(), eni: node.me.cloud_eni.clone() };
    let needs = match spec.kind {
        Kind::AwsEip => me.instance_id.is_none() && me.eni.is_none(),
        Kind::AwsRoute | Kind::AwsSecondaryIp => me.eni.is_none(),
        Kind::Command => false,
    };
    if needs {
        let endpoint = a.imds_endpoint.as_deref().unwrap_or("http://169.254.169.254");
        me = imds::resolve(endpoint, me).await.map_err(|e| format!("IMDSv2 at {endpoint}: {e}"))?;
    }
    // Asked before every change the mover makes: a node demoted or deposed
    // while its move runs must not move the address after its successor.
    let guard = || match node.address_permit() {
        Ok(()) => Permit::Go,
        Err((true, why)) => Permit::Wait(why.to_string()),
        Err((false, why)) => Permit::Stop(why.to_string()),
    };
    let report = twinblock_mover::move_address_guarded(&spec, &me, env, deadline, &guard)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("service address: {report}");
    Ok(())
}
