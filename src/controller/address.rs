//! Moving the service address to this node (`[controller.address]`).

use std::time::Duration;

use twinblock_replicator::config::AddressSettings;
use twinblock_replicator::units::parse_duration;
use twinblock_replicator::Node;

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
    tracing::info!(kind = %a.kind, "moving the service address here");
    match a.kind.as_str() {
        "command" => {
            let cmd = a
                .command
                .as_deref()
                .ok_or("controller.address.command: required for kind \"command\"")?;
            super::hooks::shell(cmd, env, deadline).await
        }
        other => Err(format!("address kind {other:?} is not built into this binary")),
    }
    .map(|()| {
        let _ = node;
    })
}
