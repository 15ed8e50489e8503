//! What `status` shows, and the state changes watchers follow.

use super::*;

impl Node {
    /// Every state change from now on (see [`StateKey`]).
    pub fn transitions(&self) -> tokio::sync::broadcast::Receiver<StateKey> {
        self.transitions.subscribe()
    }

    pub fn status(&self) -> Status {
        self.status_locked(&self.lock())
    }

    /// The state changes `rx` has not seen yet, and the status right after
    /// the last of them (taken together: nothing falls in between).
    pub fn status_since(
        &self,
        rx: &mut tokio::sync::broadcast::Receiver<StateKey>,
    ) -> (Vec<StateKey>, Status) {
        let sh = self.lock();
        let mut keys = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(k) => keys.push(k),
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => break,
            }
        }
        (keys, self.status_locked(&sh))
    }

    fn status_locked(&self, sh: &Shell) -> Status {
        let st = sh.core.status();
        let connection = StateKey {
            role: st.role,
            disk: st.disk,
            connection: st.connection,
            replication: st.replication,
        }
        .connection_name();
        let now = self.now();
        Status {
            resource: self.res.name.clone(),
            node: self.me.name.clone(),
            role: st.role,
            disk: st.disk,
            connection,
            replication: st.replication.to_string(),
            protocol: self.res.protocol.to_string(),
            peer: PeerStatus {
                node: self.peer.name.clone(),
                address: self.peer.connect.to_string(),
                role: st.peer_role,
                disk: st.peer_disk,
            },
            out_of_sync_bytes: st.out_of_sync_bytes,
            split_brain: st.split_brain,
            lost_since_synced: st.lost_since_synced,
            discard_pending: st.discard_pending,
            rtt_us: st.rtt.map(|d| d.as_micros() as u64),
            sync: st.sync.map(|p| {
                let secs = now.saturating_sub(p.started).as_secs_f64().max(1e-3);
                let rate = p.done as f64 / secs;
                let left = p.total.saturating_sub(p.done);
                SyncStatus {
                    percent: if p.total == 0 {
                        100.0
                    } else {
                        p.done as f64 * 100.0 / p.total as f64
                    },
                    bytes_total: p.total,
                    eta_s: (rate > 0.0).then(|| left as f64 / rate),
                }
            }),
            counters: Counters {
                written_bytes: st.counters.written_bytes,
                replicated_bytes: st.counters.replicated_bytes,
                resync_bytes: st.counters.resync_bytes,
                resync_read_bytes: st.counters.resync_read_bytes,
                verify_mismatches: st.counters.verify_mismatches,
                mode_switches: st.counters.mode_switches,
            },
            link: self.link_tally().view(),
            in_flight: st.in_flight,
            bench_in_flight: st.bench_in_flight,
            activity_log_extents: st.al_extents,
            io_backend: self.store.backend().to_string(),
            last_error: st.last_error,
            link_refusal: self.link_refusal.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            generation: format!("{:016x}", st.gen.current),
            controller: sh.core.controller().map(|c| crate::status::ControllerView {
                state: format!("{:?}", c.standing),
                quorum: c.quorum,
                witness_connected: c.witness_connected,
                last_refusal: c.last_refusal,
                superseded: c.superseded,
                hooks_await_record: c.hooks_await_record,
            }),
        }
    }

    pub fn role(&self) -> Role {
        self.lock().core.role()
    }
}
