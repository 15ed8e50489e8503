//! The application's requests on the Primary: self-describing writes,
//! zeroes, flushes and bench probes.

use twinblock_replicator::protocol::wire::Role;

use crate::content::payload;
use crate::node::{AppKind, AppReq};
use crate::world::Sim;
use crate::{BLOCK, CELL, SIZE};

impl Sim {
    pub(crate) fn submit(&mut self, n: usize) {
        self.submit_as(n, false)
    }

    /// [`Sim::submit`], a FLUSH if `flush` (the same random draws).
    pub(crate) fn submit_as(&mut self, n: usize, flush: bool) {
        let Some(core) = self.nodes[n].core.as_ref() else { return };
        if self.nodes[n].reqs.len() >= 8 {
            return;
        }
        // Only a Primary replicates its requests.
        let linked = match core.session_id() {
            Some(sid)
                if core.connection() == twinblock_replicator::core::Connection::Connected
                    && core.role() == Role::Primary =>
            {
                Some((sid, self.nodes[n].link_gen))
            }
            _ => None,
        };
        let req = self.next_req;
        self.next_req += 1;
        let uid = self.next_uid;
        self.next_uid += 1;
        let r = self.rng.below(100);
        // Half the requests are block-aligned, half start and end at any
        // cell (partial blocks: the bitmap and resync work on whole ones).
        let unit = if self.rng.chance(1, 2) { BLOCK } else { CELL };
        let units = SIZE / unit;
        let scale = BLOCK / unit;
        let k = scale
            * (1 + if self.rng.chance(1, 4) { self.rng.below(12) } else { self.rng.below(3) });
        let k = if unit == CELL { k.saturating_sub(self.rng.below(scale)).max(1) } else { k };
        let first = self.rng.below(units - k + 1);
        // Hot spots: most writes go to two extents, so overlaps happen.
        let first = if self.rng.chance(2, 3) {
            (first % (40 * scale)) + if uid.is_multiple_of(2) { 0 } else { 128 * scale }
        } else {
            first
        };
        let first = first.min(units - k);
        let (off, len) = (first * unit, k * unit);
        let fua = self.rng.chance(1, 6);
        let now = self.now;
        let kind = if r < 4 {
            use twinblock_replicator::core::ProbeMode;
            let modes = [ProbeMode::A, ProbeMode::B, ProbeMode::C, ProbeMode::Link];
            AppKind::Probe(modes[self.rng.below(4) as usize])
        } else if r < 72 {
            AppKind::Write { id: uid, off, len, fua }
        } else if r < 84 {
            AppKind::Flush
        } else {
            AppKind::Zero { id: uid, off, len, fua }
        };
        let kind = if flush { AppKind::Flush } else { kind };
        let snapshot = matches!(kind, AppKind::Flush).then(|| self.chk.flush_snap(n));
        if let AppKind::Zero { id, off, len, .. } = &kind {
            self.chk.zero_submitted(*id, *off, *len);
        }
        let switches = self.nodes[n].core.as_ref().map_or(0, |c| c.status().counters.mode_switches);
        let peer_power = self.chk.power_losses[1 - n];
        let primary = self.nodes[n].core.as_ref().is_some_and(|c| c.role() == Role::Primary);
        self.nodes[n].reqs.insert(
            req,
            AppReq { kind: kind.clone(), linked, snapshot, switches, peer_power, at: now, primary },
        );
        let core = self.nodes[n].core.as_mut().expect("alive");
        match kind {
            AppKind::Write { id, off, len, fua } => {
                core.write(now, req, off, payload(id, off, len), fua)
            }
            AppKind::Zero { off, len, fua, .. } => {
                if self.rng.chance(1, 2) {
                    core.trim(now, req, off, len as u32, fua)
                } else {
                    core.write_zeroes(now, req, off, len as u32, self.rng.chance(1, 2), fua)
                }
            }
            AppKind::Flush => core.flush(now, req),
            AppKind::Probe(mode) => {
                core.bench_write(now, req, mode, off % (1 << 20), payload(uid, 0, len))
            }
        }
        self.drain(n);
    }
}
