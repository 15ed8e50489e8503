//! systemd's readiness protocol (`Type=notify`): a datagram such as
//! `READY=1` to the Unix socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name when it starts with `@`). Without `$NOTIFY_SOCKET` (not
//! started by systemd) nothing happens.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if it
/// asked for notifications. Returns whether a message was sent.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let target = target.to_string_lossy().into_owned();
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &target)?;
    }
    Ok(true)
}

/// `notify`, with a failure logged rather than returned: systemd's
/// bookkeeping must never stop the node.
pub fn tell(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state = %state.replace('\n', " "), "told systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot notify systemd ($NOTIFY_SOCKET): {e}"),
    }
}
