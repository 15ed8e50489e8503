//! A replication-link QUIC endpoint of the tests' own, with a node's real
//! certificate: to push data through the link's socket, or to play a peer
//! that passes mutual TLS and then lies.

use std::path::Path;
use std::time::Duration;

use twinblock_replicator::{link, tls};

/// An endpoint on a free loopback port with node `name`'s certificate
/// from `certs` (`twinblock gen-certs` output) for resource `resource`,
/// dialing with the same client config.
pub fn link_endpoint(certs: &Path, name: &str, resource: &str) -> quinn::Endpoint {
    // Probing up to jumbo frames (AWS's), not loopback's 64 KiB: batches
    // of several such datagrams are what the link's socket must cut.
    let transport = tls::transport(
        Duration::from_secs(10),
        Duration::from_secs(1),
        tls::QUIC_FLOOR,
        tls::PROBE_UP_TO,
    );
    let (server, client) = tls::endpoint_configs(
        &certs.join("ca.pem"),
        &certs.join(format!("{name}.pem")),
        &certs.join(format!("{name}.key")),
        resource,
        transport,
    )
    .expect("TLS configs");
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut e = link::endpoint(socket, server).expect("endpoint");
    e.set_default_client_config(client);
    e
}
