//! What `twinblock status --json` prints (the contract's field names).

use serde::Serialize;

use crate::protocol::wire::{DiskState, Role};

#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub node: String,
    /// Where this node sends to reach the peer (the peer's `connect`, else
    /// its `address`): a peer that never answers shows only as
    /// `Connecting`, and a wrong address is seen here.
    pub address: String,
    pub role: Option<Role>,
    pub disk: Option<DiskState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SyncStatus {
    pub percent: f64,
    pub bytes_total: u64,
    pub eta_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub written_bytes: u64,
    pub replicated_bytes: u64,
    pub resync_bytes: u64,
    /// Bytes a SyncSource read from its disk for resync (a hole of a
    /// sparse disk goes as zeroes, unread).
    pub resync_read_bytes: u64,
    pub verify_mismatches: u64,
    pub mode_switches: u64,
}

/// The replication link's transport as QUIC counts it: totals over every
/// session since the node started (UDP payload bytes), and the current
/// session's path (null while not connected). Refreshed on the session's
/// tick (`ping-interval`).
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LinkStatus {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    /// Batches of datagrams quinn handed to the socket (one segmented
    /// send of up to ten; the link's socket cuts one into sends of at
    /// most seven).
    pub send_batches: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Packets QUIC declared lost (and sent again).
    pub lost_packets: u64,
    /// The path's UDP payload size found by MTU discovery.
    pub path_mtu: Option<u16>,
    pub congestion_window_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub resource: String,
    pub node: String,
    pub role: Role,
    pub disk: DiskState,
    pub connection: String,
    /// Replication state (Established, SyncSource, SyncTarget, VerifySource, ...; Off when not connected).
    pub replication: String,
    pub protocol: String,
    pub peer: PeerStatus,
    pub out_of_sync_bytes: u64,
    pub split_brain: bool,
    /// This node may lack writes it confirmed to its peer (a lost page
    /// cache, or in protocol B received writes, after it took in the
    /// peer's writes) and has not met the peer since: `primary` without
    /// `--force` and the failover controller wait for a session with it.
    pub lost_since_synced: bool,
    /// `discard-my-data` waits for the next handshake, which takes the
    /// peer's data in full; the controller does not promote this node
    /// until then (review, helper-114: nothing showed it).
    pub discard_pending: bool,
    pub rtt_us: Option<u64>,
    pub sync: Option<SyncStatus>,
    pub counters: Counters,
    /// The link's transport (datagrams, send batches, losses, path).
    pub link: LinkStatus,
    /// Replication operations of the device sent and not yet applied by
    /// the peer (not the bench's probes: `bench_in_flight`).
    pub in_flight: usize,
    /// `twinblock bench` probes sent on the replication stream and not yet
    /// answered by the peer.
    pub bench_in_flight: usize,
    /// Extents in the on-disk activity log: what a crash now would mark
    /// out of sync (each `extent` bytes).
    pub activity_log_extents: usize,
    pub io_backend: String,
    pub last_error: Option<String>,
    /// The last replication handshake refused, by this node (who, and
    /// why: a certificate of another CA or for another name) or by its
    /// peer's certificate as this node dialed; none once a handshake with
    /// the real peer passes.
    pub link_refusal: Option<String>,
    /// This node's current data generation (hex).
    pub generation: String,
    /// The failover controller, when one runs.
    pub controller: Option<ControllerView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ControllerView {
    /// Watching, Claiming, Holding, Suspended, Fenced, Demoting.
    pub state: String,
    pub quorum: bool,
    pub witness_connected: bool,
    pub last_refusal: Option<String>,
    /// Demoted without quorum (deposed, or `secondary --force` while
    /// fenced) and not met its peer since: another node may have been
    /// Primary with writes this copy lacks, so its reads fail with EIO.
    pub superseded: bool,
    /// Promoted, but its hooks (the address move, `on_promote`) wait for
    /// the metadata record saying it is Primary to be saved.
    pub hooks_await_record: bool,
}
