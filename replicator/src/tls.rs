//! Mutual TLS for the peer link (rustls 0.23, ring provider, TLS 1.3 only):
//! each node presents its certificate and trusts only certificates signed
//! by the resource's CA; the peer must also be the node the config names.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// The TLS application protocol: binds the connection to one resource, so
/// a node of another resource signed by the same CA fails the handshake.
pub fn alpn(resource: &str) -> Vec<u8> {
    format!("twinblock/2/{resource}").into_bytes()
}

/// Which of a node's TLS files an error is about: the resource file's
/// key that names it ([`TlsFile::key`]), so `up` and `witness` name that
/// key as they name every other bad value (helper-155).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    Ca,
    Cert,
    Key,
}

impl TlsFile {
    /// The resource file's key naming this file of node `node`.
    pub fn key(self, node: &str) -> String {
        match self {
            TlsFile::Ca => "tls.ca".into(),
            TlsFile::Cert => format!("nodes.{node}.cert"),
            TlsFile::Key => format!("nodes.{node}.key"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { file: TlsFile, path: String, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("TLS setup: {0}")]
    Verifier(String),
    #[error("peer presented no certificate")]
    NoPeerCert,
    #[error("peer certificate is not for node {expected:?}: {reason}")]
    WrongPeer { expected: String, reason: String },
}

fn certs(path: &Path, file: TlsFile) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let err = |reason: String| TlsError::File { file, path: path.display().to_string(), reason };
    let v = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if v.is_empty() {
        return Err(err(match (pem_holds(path), file) {
            (PemHolds::Key, TlsFile::Ca) => "no certificate in the file: it holds a private key \
                                             (`tls.ca` names the certificate of the CA that \
                                             signed the nodes', `gen-certs`'s ca.pem)"
                .into(),
            (PemHolds::Key, _) => "no certificate in the file: it holds a private key (`cert` \
                                   names the node's certificate, `key` its private key)"
                .into(),
            _ => "no certificate in the file (a PEM block -----BEGIN CERTIFICATE-----)".into(),
        }));
    }
    Ok(v)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let reason = match (&e, pem_holds(path)) {
            // (rustls said "no items found", which named neither what it
            // looked for nor what it found: review, helper-137.)
            (rustls::pki_types::pem::Error::NoItemsFound, PemHolds::Cert) => {
                "no private key in the file: it holds a certificate (`key` names the node's \
                 private key, `cert` its certificate)"
                    .into()
            }
            (rustls::pki_types::pem::Error::NoItemsFound, _) => {
                "no private key in the file (a PEM block -----BEGIN PRIVATE KEY-----, or an \
                 RSA or EC one)"
                    .into()
            }
            _ => e.to_string(),
        };
        TlsError::File { file: TlsFile::Key, path: path.display().to_string(), reason }
    })
}

/// What a PEM file holds, for an error that says so.
#[derive(Debug, PartialEq)]
enum PemHolds {
    Cert,
    Key,
    Other,
}

fn pem_holds(path: &Path) -> PemHolds {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    if text.contains("-----BEGIN CERTIFICATE-----") {
        PemHolds::Cert
    } else if text.contains("PRIVATE KEY-----") {
        PemHolds::Key
    } else {
        PemHolds::Other
    }
}

/// An incoming connection whose address has proved it receives what is
/// sent to it; one that has not is sent a QUIC Retry (RFC 9000 8.1.2,
/// stateless: no handshake state, no place among the handshakes run at
/// once) and None is returned. Without this, Initial packets from
/// addresses that never answer (spoofed, or gone) each held a handshake's
/// place for `timeout`, and a thousand a second kept the real peer out.
/// The price: one more round trip per connection.
pub fn validated(incoming: quinn::Incoming) -> Option<quinn::Incoming> {
    if incoming.remote_address_validated() {
        return Some(incoming);
    }
    // (An unvalidated address may always be retried, quinn says: the
    // retry cannot fail here.)
    let _ = incoming.retry();
    None
}

/// ring's provider with TLS 1.3's AES-128-GCM first. ring lists
/// AES-256-GCM first; both are TLS 1.3's standard suites, and every byte
/// replicated is sealed once and opened once, so the 10 AES rounds of
/// AES-128 instead of 14 are a fifth less of the link's largest
/// per-byte cost (issue 10's profiles). Both nodes run this code: the
/// client offers this order and the server follows it.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// The largest UDP payload a node accepts (the most UDP allows; it probes
/// up to what the route to its peer carries, [`probe_bound`]). QUIC's
/// per-packet work (header protection, AEAD setup, packet numbers, ACK
/// tracking, one `sendmsg`/`recvmsg`) dominates the replicated path's CPU
/// cost: a 1 MiB write is 16 packets at this size, 118 at AWS's 9001-byte
/// jumbo frames and 712 at quinn's default of 1472. Path MTU
/// discovery finds what the path really carries (9001 inside a VPC, 1500
/// elsewhere): probes larger than that are merely lost.
pub const MAX_UDP_PAYLOAD: u16 = 65527;

/// The least MTU discovery probes up to, whatever the route to the peer
/// says ([`probe_bound`]): AWS's in-VPC jumbo frames (9001-byte MTU),
/// where the pairs run. The witness's links use it (they carry a few
/// small messages).
pub const PROBE_UP_TO: u16 = 8951;

/// The largest datagram worth probing for on the way from `local` to
/// `peer`: what the local route there carries (the interface's MTU), less
/// the IP and UDP headers, as TCP's MSS is bounded by it, and never less
/// than [`PROBE_UP_TO`] (a route seen at start, or a path MTU the kernel
/// had learnt, must not cap the link for the process's life: a probe the
/// path cannot carry is merely lost). Discovery then finds the path's own
/// limit below that (loopback: 65507, where TCP on the same host sends 64
/// KiB segments too; a 9001-byte interface: 8973).
pub fn probe_bound(local: std::net::IpAddr, peer: std::net::SocketAddr) -> u16 {
    bound_for(route_mtu(local, peer), peer.is_ipv4())
}

/// [`probe_bound`] for a route of `mtu` bytes (None: unknown).
fn bound_for(mtu: Option<u32>, v4: bool) -> u16 {
    mtu.map_or(PROBE_UP_TO, |mtu| payload_within(mtu, v4).max(PROBE_UP_TO))
}

/// QUIC's smallest datagram, which every path must carry: where a
/// connection starts unless it knows better ([`initial_mtu`]).
pub const QUIC_FLOOR: u16 = 1200;

/// The UDP payload a link from `local` to `peer` starts with, MTU
/// discovery probing up from there ([`probe_bound`]): a loopback peer is
/// reached through the loopback device alone, whose MTU is the path's, so
/// such a link starts at what that MTU carries and searches nothing
/// (unless `lo`'s MTU is below the bound); elsewhere at QUIC's floor, and
/// discovery finds what the path carries. (A search on loopback is about
/// 12 probes each way of up to 64 KiB of PADDING, which quinn parses a
/// byte at a time on the link's thread: for the first 25 ms of every
/// connection the writes waited behind them, 1.5 to 4.5 ms each instead
/// of 0.05 in a release build; README, "The first writes of a
/// connection".)
pub fn initial_mtu(local: std::net::IpAddr, peer: std::net::SocketAddr) -> u16 {
    start_for(peer.ip().is_loopback().then(|| route_mtu(local, peer)).flatten(), peer.is_ipv4())
}

/// [`initial_mtu`] for a loopback route of `mtu` bytes (None: not
/// loopback, or unknown).
fn start_for(loopback_mtu: Option<u32>, v4: bool) -> u16 {
    loopback_mtu.map_or(QUIC_FLOOR, |mtu| payload_within(mtu, v4))
}

/// The largest UDP payload in an IP packet of `mtu` bytes (QUIC's floor
/// of 1200 at least): IPv4 counts its header in its 64 KiB limit, IPv6
/// does not.
fn payload_within(mtu: u32, v4: bool) -> u16 {
    let payload =
        if v4 { mtu.min(65535).saturating_sub(20 + 8) } else { mtu.saturating_sub(40 + 8) };
    payload.clamp(u32::from(QUIC_FLOOR), u32::from(MAX_UDP_PAYLOAD)) as u16
}

/// The MTU of the route from `local` (the link's own address: with
/// source routing it picks the route; unspecified or not this host's,
/// any) to `peer` (Linux: a connected UDP socket's `IP_MTU`); nothing is
/// sent.
fn route_mtu(local: std::net::IpAddr, peer: std::net::SocketAddr) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let any: std::net::IpAddr = if peer.is_ipv4() { [0, 0, 0, 0].into() } else { [0u16; 8].into() };
    let from = if local.is_ipv4() == peer.is_ipv4() { local } else { any };
    let s = std::net::UdpSocket::bind((from, 0))
        .or_else(|_| std::net::UdpSocket::bind((any, 0)))
        .ok()?;
    s.connect(peer).ok()?;
    let (level, opt) = if peer.is_ipv4() {
        (libc::IPPROTO_IP, libc::IP_MTU)
    } else {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on a valid fd into an int of the length passed.
    let r = unsafe {
        libc::getsockopt(s.as_raw_fd(), level, opt, (&mut mtu as *mut libc::c_int).cast(), &mut len)
    };
    (r == 0 && mtu > 0).then_some(mtu as u32)
}

/// The endpoint settings of the peer link: accept datagrams as large as
/// [`MAX_UDP_PAYLOAD`] (quinn's default endpoint refuses to announce more
/// than 1472 bytes, which caps MTU discovery there whatever its bound).
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut e = quinn::EndpointConfig::default();
    // In range by construction (1200..=65527).
    let _ = e.max_udp_payload_size(MAX_UDP_PAYLOAD);
    e
}

/// The endpoint settings of a server that must be noticed when it
/// restarts (the witness): its stateless-reset key, and the key its
/// connection ids are signed with, are derived (HKDF-SHA256) from its
/// private key and `context` (the resource and address it serves, so two
/// witnesses sharing a key do not answer for each other's connections,
/// RFC 9000 section 21.11). A restarted process then takes a packet of a
/// connection its predecessor held for one of its own ids and answers it
/// with a stateless reset the client accepts (section 10.3: the token
/// depends on the key and the connection id; quinn's default keys are new
/// at every start, and the new process dropped such packets as bearing
/// invalid ids). The client drops the connection at once and dials
/// again, instead of sending into it until its idle timeout (10 s on the
/// witness link). The ids carry 64 random bits and a 64-bit HMAC tag
/// ([`SignedCids`]): none can be forged or foreseen, so no reset token
/// can be gathered ahead of a connection (quinn's keyed generator has
/// 24 random bits and a non-cryptographic hash: review, helper-91).
pub fn restart_noticed_endpoint_config(
    key_path: &Path,
    context: &str,
) -> Result<quinn::EndpointConfig, TlsError> {
    let der = key(key_path)?;
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"twinblock restart-noticed v1")
        .extract(der.secret_der());
    let derive = |label: &[u8]| -> Result<[u8; 32], TlsError> {
        let mut out = [0u8; 32];
        prk.expand(&[label, context.as_bytes()], OkmLen(32))
            .and_then(|okm| okm.fill(&mut out))
            .map_err(|_| TlsError::Verifier("key derivation failed".into()))?;
        Ok(out)
    };
    let reset = derive(b"stateless reset\0")?;
    let cids = derive(b"connection id\0")?;
    let mut e =
        quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset)));
    let cid_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &cids);
    e.cid_generator(move || Box::new(SignedCids::new(cid_key.clone())));
    Ok(e)
}

/// An HKDF output length (ring's `KeyType`).
struct OkmLen(usize);

impl ring::hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

/// Connection ids of 16 bytes: 8 random, then the first 8 of their
/// HMAC-SHA256 under the endpoint's derived key. A restarted endpoint
/// with the same key recognises its predecessor's ids (and answers their
/// packets with a stateless reset); nobody without the key can make one.
pub struct SignedCids {
    key: ring::hmac::Key,
    rng: ring::rand::SystemRandom,
    /// Distinct nonces should the system's random source ever fail.
    fallback: u64,
}

const CID_NONCE: usize = 8;
const CID_TAG: usize = 8;

impl SignedCids {
    pub fn new(key: ring::hmac::Key) -> SignedCids {
        SignedCids { key, rng: ring::rand::SystemRandom::new(), fallback: 0 }
    }

    fn tag(&self, nonce: &[u8]) -> [u8; CID_TAG] {
        let mut t = [0u8; CID_TAG];
        t.copy_from_slice(&ring::hmac::sign(&self.key, nonce).as_ref()[..CID_TAG]);
        t
    }
}

impl quinn_proto::ConnectionIdGenerator for SignedCids {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        let mut b = [0u8; CID_NONCE + CID_TAG];
        if ring::rand::SecureRandom::fill(&self.rng, &mut b[..CID_NONCE]).is_err() {
            // (Unique still; only foreseeable, and signed all the same.)
            self.fallback += 1;
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            b[..CID_NONCE].copy_from_slice(&(t ^ self.fallback.rotate_left(40)).to_le_bytes());
        }
        let tag = self.tag(&b[..CID_NONCE]);
        b[CID_NONCE..].copy_from_slice(&tag);
        quinn_proto::ConnectionId::new(&b)
    }

    fn validate(&self, cid: &quinn_proto::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        if cid.len() != CID_NONCE + CID_TAG {
            return Err(quinn_proto::InvalidCid);
        }
        let tag = self.tag(&cid[..CID_NONCE]);
        // (In constant time: the comparison says nothing of the tag.)
        let diff = tag.iter().zip(&cid[CID_NONCE..]).fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff == 0 {
            Ok(())
        } else {
            Err(quinn_proto::InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_NONCE + CID_TAG
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The flow-control windows (stream, connection, send): what may be in
/// flight unconsumed. Enough for 8 GB/s at a 2 ms RTT; small enough that
/// the receiver's socket buffer (`link::set_socket_buffers`, twice this)
/// holds it all, so a burst is not dropped on the floor of a loaded
/// receiver (which QUIC reads as congestion or an MTU black hole).
pub const WINDOW: u32 = 16 << 20;

/// Transport settings for many small writes in flight on a LAN-like link;
/// packets start at `start` bytes of UDP payload ([`initial_mtu`]) and MTU
/// discovery probes up to `probe_up_to` ([`probe_bound`]).
pub fn transport(
    timeout: Duration,
    keep_alive: Duration,
    start: u16,
    probe_up_to: u16,
) -> Arc<quinn::TransportConfig> {
    transport_with(timeout, keep_alive, start, probe_up_to, WINDOW, 4)
}

/// What the witness lets a node's connection send ahead of what it read:
/// a request (at most 64 KiB and its length) twice.
pub const WITNESS_WINDOW: u32 = 160 << 10;

/// The witness's side of its connections: [`transport`] with one stream
/// and [`WITNESS_WINDOW`] (before, the link's 16 MiB windows and four
/// streams: a node could make the witness hold 16 MiB per connection
/// that it never read).
pub fn witness_transport(timeout: Duration, keep_alive: Duration) -> Arc<quinn::TransportConfig> {
    transport_with(timeout, keep_alive, QUIC_FLOOR, PROBE_UP_TO, WITNESS_WINDOW, 1)
}

fn transport_with(
    timeout: Duration,
    keep_alive: Duration,
    start: u16,
    probe_up_to: u16,
    window: u32,
    streams: u32,
) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.initial_mtu(start.clamp(QUIC_FLOOR, probe_up_to.max(QUIC_FLOOR)));
    // Fewer, larger packets cost less CPU per byte: probe up to what the
    // route carries (the peer's `max_udp_payload_size`, see
    // `endpoint_config`, bounds it too). Discovery falls back where the
    // path is smaller.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(probe_up_to);
    // A spurious black-hole verdict (a burst of losses of large packets
    // under load) costs 1200-byte packets until the next search: retry
    // after 10 s rather than quinn's minute.
    mtu.black_hole_cooldown(Duration::from_secs(10));
    t.mtu_discovery_config(Some(mtu));
    // Segmentation offload (GSO) stays on: one `sendmsg` carries a batch
    // of datagrams. The link's socket (`udp::BoundedGso`) cuts a batch to
    // what one send may carry.
    // A lost MTU probe (up to 64 KiB) counts in flight until it is
    // declared lost, a probe timeout later: in quinn's 15 KB initial
    // window (or ten jumbo frames') one such probe stalled the first
    // writes of a connection for tens of milliseconds, enough to send
    // adaptive mode Ahead on a fast link. A dedicated replication link
    // starts with 1 MiB.
    let mut cc = quinn::congestion::CubicConfig::default();
    cc.initial_window(1 << 20);
    t.congestion_controller_factory(Arc::new(cc));
    t.max_concurrent_bidi_streams(streams.into())
        .max_concurrent_uni_streams(0u32.into())
        .stream_receive_window(window.into())
        .receive_window(window.into())
        .send_window(window.into())
        .initial_rtt(Duration::from_millis(1))
        .keep_alive_interval(Some(keep_alive))
        .max_idle_timeout(quinn::IdleTimeout::try_from(timeout).ok());
    Arc::new(t)
}

/// The application protocol between a node and the witness.
pub fn witness_alpn(resource: &str) -> Vec<u8> {
    format!("twinblock-witness/1/{resource}").into_bytes()
}

/// Server and client configs of one node.
pub fn endpoint_configs(
    ca: &Path,
    cert: &Path,
    key_path: &Path,
    resource: &str,
    transport: Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    endpoint_configs_for(ca, cert, key_path, alpn(resource), transport)
}

/// The same, for another application protocol (the witness's).
pub fn endpoint_configs_for(
    ca: &Path,
    cert: &Path,
    key_path: &Path,
    alpn_id: Vec<u8>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca, TlsFile::Ca)? {
        roots.add(c).map_err(|e| TlsError::File {
            file: TlsFile::Ca,
            path: ca.display().to_string(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let roots = Arc::new(roots);
    let chain = certs(cert, TlsFile::Cert)?;
    let key = key(key_path)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut sc = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| TlsError::File {
            file: TlsFile::Key,
            path: key_path.display().to_string(),
            reason: format!("the key does not go with the certificate {}: {e}", cert.display()),
        })?;
    sc.alpn_protocols = vec![alpn_id.clone()];
    sc.max_early_data_size = 0;
    let mut cc = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    cc.alpn_protocols = vec![alpn_id];
    cc.enable_early_data = false; // never send writes as 0-RTT data
    let qsc = QuicServerConfig::try_from(sc).map_err(|e| TlsError::Verifier(e.to_string()))?;
    let qcc = QuicClientConfig::try_from(cc).map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(qsc));
    server.transport_config(transport.clone());
    // A peer whose source address changes (NAT rebinding, a relay such as
    // `twinblock netem` restarted) keeps its connection: packets from the
    // new address must still be authenticated, and the path is validated
    // (RFC 9000 section 9) before it carries more than a little data.
    server.migration(true);
    let mut client = quinn::ClientConfig::new(Arc::new(qcc));
    client.transport_config(transport);
    Ok((server, client))
}

/// A link's TLS handshake that failed because a certificate is not
/// signed by the CA of the node that checked it, in words that say what to
/// check: the CA file (`tls.ca`, at `ca`), with rustls's own words kept.
/// Before, the log and the status said only "invalid peer certificate:
/// BadSignature" (README walk-through). Either this node refused the
/// peer's certificate (a local TLS error: as the dialer, the listener's
/// certificate; as the listener, the dialer's), or the peer refused this
/// node's (its close says why, in the same rustls words). None: another
/// failure.
pub fn ca_refusal(e: &quinn::ConnectionError, ca: &Path) -> Option<String> {
    // (webpki says BadSignature where a CA of the same name signed the
    // certificate, as `gen-certs` run twice makes, and UnknownIssuer where
    // none of that name did.)
    #[allow(deprecated)]
    let not_ours = |reason: &str| {
        [rustls::CertificateError::BadSignature, rustls::CertificateError::UnknownIssuer]
            .into_iter()
            .any(|c| reason.trim() == rustls::Error::InvalidCertificate(c).to_string())
    };
    let ca = ca.display();
    match e {
        quinn::ConnectionError::TransportError(t) if not_ours(&t.reason) => Some(format!(
            "the peer's certificate is not signed by the CA in tls.ca ({ca}) (TLS: {})",
            t.reason
        )),
        quinn::ConnectionError::ConnectionClosed(c)
            if not_ours(&String::from_utf8_lossy(&c.reason)) =>
        {
            // (Short: the status and the log keep 200 characters. The
            // reason is the peer's bytes: trimmed, as it was compared, so
            // no line break it was padded with reaches the log; review,
            // helper-159.)
            Some(format!(
                "the peer refused this node's certificate, not signed by the CA in its tls.ca \
                 (ours: {ca}) (TLS: {})",
                String::from_utf8_lossy(&c.reason).trim()
            ))
        }
        _ => None,
    }
}

/// Checks that the (already CA-verified) peer certificate names `expected`.
pub fn check_peer(conn: &quinn::Connection, expected: &str) -> Result<(), TlsError> {
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(TlsError::NoPeerCert)?;
    let leaf = certs.first().ok_or(TlsError::NoPeerCert)?;
    let wrong = |reason: String| TlsError::WrongPeer { expected: expected.to_owned(), reason };
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| wrong(e.to_string()))?;
    let name = ServerName::try_from(expected.to_owned()).map_err(|e| wrong(e.to_string()))?;
    ee.verify_is_valid_for_subject_name(&name).map_err(|e| wrong(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate of another CA names `tls.ca` and its file, and keeps
    /// rustls's words, whichever node refused it; other failures are not
    /// taken for it (README walk-through).
    #[test]
    fn a_certificate_of_another_ca_names_tls_ca() {
        let ca = Path::new("/etc/tb/certs/ca.pem");
        let local = |reason: &str| {
            quinn::ConnectionError::TransportError(quinn_proto::TransportError {
                code: quinn_proto::TransportErrorCode::crypto(51),
                frame: None,
                reason: reason.into(),
            })
        };
        let remote = |reason: &str| {
            quinn::ConnectionError::ConnectionClosed(quinn_proto::ConnectionClose {
                error_code: quinn_proto::TransportErrorCode::crypto(48),
                frame_type: None,
                reason: bytes::Bytes::copy_from_slice(reason.as_bytes()),
            })
        };
        for rustls in
            ["invalid peer certificate: BadSignature", "invalid peer certificate: UnknownIssuer"]
        {
            assert_eq!(
                ca_refusal(&local(rustls), ca).unwrap(),
                format!(
                    "the peer's certificate is not signed by the CA in tls.ca \
                     (/etc/tb/certs/ca.pem) (TLS: {rustls})"
                )
            );
            assert_eq!(
                ca_refusal(&remote(rustls), ca).unwrap(),
                format!(
                    "the peer refused this node's certificate, not signed by the CA in its \
                     tls.ca (ours: /etc/tb/certs/ca.pem) (TLS: {rustls})"
                )
            );
        }
        // The peer's reason is its own bytes: padded with line breaks, it
        // is still taken, and its breaks do not reach the log (review,
        // helper-159: the untrimmed reason was printed).
        let padded = remote(
            "\n\n2026-12-07T00:00:00Z  WARN forged\ninvalid peer certificate: BadSignature\n",
        );
        assert_eq!(ca_refusal(&padded, ca), None, "more than padding");
        let padded = remote("\r\n\ninvalid peer certificate: BadSignature\n\u{2028}");
        let why = ca_refusal(&padded, ca).unwrap();
        assert!(!why.contains(['\n', '\r', '\u{2028}']), "{why:?}");
        assert!(why.ends_with("(TLS: invalid peer certificate: BadSignature)"), "{why:?}");
        let other = "invalid peer certificate: certificate expired";
        assert_eq!(ca_refusal(&local(other), ca), None);
        assert_eq!(ca_refusal(&remote(other), ca), None);
        assert_eq!(ca_refusal(&quinn::ConnectionError::TimedOut, ca), None);
    }

    /// A restarted witness (same key) recognises its predecessor's
    /// connection ids; another key does not, and ids made up without the
    /// key are refused (before, quinn's 24-bit, FxHash-signed ids could be
    /// forged from a few seen ones: review, helper-91). Ids do not repeat.
    #[test]
    fn connection_ids_are_signed_and_survive_a_restart() {
        use quinn_proto::ConnectionIdGenerator;
        let key = |b: u8| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[b; 32]);
        let mut before = SignedCids::new(key(1));
        let after = SignedCids::new(key(1));
        let other = SignedCids::new(key(2));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..20_000 {
            let cid = before.generate_cid();
            assert_eq!(cid.len(), 16);
            assert!(after.validate(&cid).is_ok(), "a restart does not know its own id");
            assert!(other.validate(&cid).is_err(), "another key took the id");
            assert!(seen.insert(cid.to_vec()), "an id repeated");
        }
        let mut forged = 0;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&x.to_le_bytes());
            b[8..].copy_from_slice(&x.rotate_left(17).to_le_bytes());
            forged += usize::from(after.validate(&quinn_proto::ConnectionId::new(&b)).is_ok());
        }
        assert_eq!(forged, 0, "ids made up without the key were taken");
        assert!(after.validate(&quinn_proto::ConnectionId::new(&[7u8; 8])).is_err());
    }

    #[test]
    fn aes_128_gcm_is_offered_first_and_the_others_stay() {
        let p = provider();
        let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let ring = rustls::crypto::ring::default_provider();
        assert_eq!(suites.len(), ring.cipher_suites.len());
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
    }

    #[test]
    fn discovery_probes_up_to_what_the_route_carries() {
        // Loopback's 64 KiB MTU: the largest IPv4 UDP payload, from any
        // local address or the loopback one.
        let lo: std::net::SocketAddr = ([127, 0, 0, 1], 9).into();
        assert_eq!(probe_bound([0, 0, 0, 0].into(), lo), 65507);
        assert_eq!(probe_bound([127, 0, 0, 1].into(), lo), 65507);
        // A local address this host does not have: any route.
        assert_eq!(probe_bound([192, 0, 2, 7].into(), lo), 65507);
        // A loopback peer's link starts at what loopback carries (no
        // search); any other at QUIC's floor, and searches.
        assert_eq!(initial_mtu([127, 0, 0, 1].into(), lo), 65507);
        assert_eq!(initial_mtu([0, 0, 0, 0].into(), ([10, 0, 2, 7], 7788).into()), QUIC_FLOOR);
        assert_eq!(start_for(Some(1500), true), 1472);
        assert_eq!(start_for(None, true), QUIC_FLOOR);
        // A jumbo-frame interface (AWS in a VPC), a plain Ethernet one.
        assert_eq!(payload_within(9001, true), 8973);
        assert_eq!(payload_within(9001, false), 8953);
        assert_eq!(payload_within(1500, true), 1472);
        // Never under QUIC's floor, never over what a node accepts.
        assert_eq!(payload_within(576, true), 1200);
        assert_eq!(payload_within(65536, false), 65488);
        assert_eq!(payload_within(1 << 20, false), MAX_UDP_PAYLOAD);
        // The bound: the route's payload, never under jumbo frames (a
        // 1500-byte route seen at start must not cap the link for good:
        // larger probes are merely lost, as before), jumbo when unknown.
        assert_eq!(bound_for(Some(65536), true), 65507);
        assert_eq!(bound_for(Some(9001), true), 8973);
        assert_eq!(bound_for(Some(1500), true), PROBE_UP_TO);
        assert_eq!(bound_for(None, false), PROBE_UP_TO);
    }
}
