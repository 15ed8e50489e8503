//! Generation ids and the sync handshake decision (sans-IO), as
//! shared/DESIGN.md "Connecting: the sync handshake" lays out. Both nodes
//! run [`decide`] on the same pair of ids and reach mirrored answers.

use serde::{Deserialize, Serialize};

/// The id of data that was never synced (a new or replaced disk).
pub const NEVER_SYNCED: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenIds {
    /// The generation of this node's data.
    pub current: u64,
    /// The generation from which the bitmap tracks changes (0: none).
    pub bitmap: u64,
    /// Earlier generations, newest first (0: none).
    pub history: [u64; 2],
}

impl GenIds {
    pub fn never_synced() -> GenIds {
        GenIds { current: NEVER_SYNCED, bitmap: 0, history: [0, 0] }
    }

    /// The generations this data descends from, its current first (the
    /// bitmap's and earlier ones after it; none is 0).
    pub fn lineage(&self) -> Vec<u64> {
        let mut v = vec![self.current];
        for g in [self.bitmap, self.history[0], self.history[1]] {
            if g != 0 && !v.contains(&g) {
                v.push(g);
            }
        }
        v
    }

    /// What this data descends from: [`GenIds::lineage`], without the
    /// bitmap's base where `forced_base` says it only names the peer's
    /// generation (`primary --force` on a failed or partly synced disk
    /// keeps the peer recognised that way, every block marked) and the
    /// history does not name it.
    pub fn descent(&self, forced_base: bool) -> Vec<u64> {
        let mut v = self.lineage();
        if forced_base && self.bitmap != self.current && !self.history.contains(&self.bitmap) {
            v.retain(|&g| g != self.bitmap);
        }
        v
    }

    /// Starts a new generation (first write while the peer is away, or
    /// `primary --force`): the old one becomes the bitmap's base.
    pub fn new_current(&mut self, id: u64) {
        if self.current != NEVER_SYNCED {
            if self.bitmap == 0 {
                self.bitmap = self.current;
            }
            if self.history[0] != self.current {
                self.history = [self.current, self.history[0]];
            }
        }
        self.current = id;
    }

    /// After a completed sync both sides share `current` and no bitmap.
    pub fn synced_to(&mut self, current: u64) {
        if self.current != current
            && self.current != NEVER_SYNCED
            && self.history[0] != self.current
        {
            self.history = [self.current, self.history[0]];
        }
        self.current = current;
        self.bitmap = 0;
    }

    fn knows(&self, id: u64) -> bool {
        id != 0 && (self.history.contains(&id) || self.bitmap == id)
    }

    /// The bitmap holds every change since data on generation `id` parted
    /// from this one: `id` is the bitmap's base, or a generation this data
    /// went through after it (the history, newest first, names it before
    /// the base, or the base has left the history). A base outlives the
    /// generation it names when the peer's State saying it took a newer
    /// one was lost (`core::session::Adoption`); the bits still cover the
    /// peer's departure from any later generation, as they cover its
    /// departure from the base.
    fn bitmap_covers(&self, id: u64) -> bool {
        if self.bitmap == 0 || id == 0 || id == NEVER_SYNCED {
            return false;
        }
        if id == self.bitmap {
            return true;
        }
        let Some(at) = self.history.iter().position(|&h| h == id) else { return false };
        self.history.iter().position(|&h| h == self.bitmap).is_none_or(|base| at < base)
    }
}

/// How data must move, from this node's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Same generation: nothing to do.
    InSync,
    /// This node is newer: send the bitmap's blocks (bitmap) or everything.
    SyncSource { full: bool },
    /// The peer is newer: receive.
    SyncTarget { full: bool },
    /// Neither was ever synced: wait for `primary --force` on one.
    WaitForForce,
    /// Both changed apart: refuse, overwrite nothing.
    SplitBrain,
    /// No common history: two unrelated devices.
    Unrelated,
}

impl Decision {
    /// The same decision as the peer sees it (both sides must agree).
    pub fn mirrored(self) -> Decision {
        match self {
            Decision::SyncSource { full } => Decision::SyncTarget { full },
            Decision::SyncTarget { full } => Decision::SyncSource { full },
            other => other,
        }
    }
}

/// The handshake decision for `mine` meeting `peer`.
pub fn decide(mine: &GenIds, peer: &GenIds) -> Decision {
    let (m, p) = (mine.current, peer.current);
    match (m == NEVER_SYNCED, p == NEVER_SYNCED) {
        (true, true) => return Decision::WaitForForce,
        (true, false) => return Decision::SyncTarget { full: true },
        (false, true) => return Decision::SyncSource { full: true },
        (false, false) => {}
    }
    if m == p {
        return Decision::InSync;
    }
    match (mine.bitmap_covers(p), peer.bitmap_covers(m)) {
        (true, false) => return Decision::SyncSource { full: false },
        (false, true) => return Decision::SyncTarget { full: false },
        // (Both: each went through the other's current, which no course
        // makes; decided below, from both sides alike.)
        _ => {}
    }
    let mine_newer = mine.knows(p);
    let peer_newer = peer.knows(m);
    match (mine_newer, peer_newer) {
        (true, false) => Decision::SyncSource { full: true },
        (false, true) => Decision::SyncTarget { full: true },
        // Each has a current the other does not know: split brain.
        _ if shares_history(mine, peer) => Decision::SplitBrain,
        _ => Decision::Unrelated,
    }
}

/// What a split brain is resolved by, when the operator chose a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitBrainPolicy {
    /// Refuse and wait for `discard-my-data` (the default).
    Disconnect,
    /// The node promoted last gives up its changes.
    DiscardYoungerPrimary,
    /// The node with fewer changed bytes gives up its changes.
    DiscardLeastChanges,
    /// A node that changed nothing takes the other's data.
    DiscardZeroChanges,
}

impl SplitBrainPolicy {
    const ALL: [SplitBrainPolicy; 4] = [
        SplitBrainPolicy::Disconnect,
        SplitBrainPolicy::DiscardYoungerPrimary,
        SplitBrainPolicy::DiscardLeastChanges,
        SplitBrainPolicy::DiscardZeroChanges,
    ];

    /// The policy as the resource file spells it.
    pub fn name(self) -> &'static str {
        match self {
            SplitBrainPolicy::Disconnect => "disconnect",
            SplitBrainPolicy::DiscardYoungerPrimary => "discard-younger-primary",
            SplitBrainPolicy::DiscardLeastChanges => "discard-least-changes",
            SplitBrainPolicy::DiscardZeroChanges => "discard-zero-changes",
        }
    }
}

impl std::str::FromStr for SplitBrainPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SplitBrainPolicy::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            format!(
                "unknown policy {s:?} (disconnect, discard-younger-primary, \
                 discard-least-changes, discard-zero-changes)"
            )
        })
    }
}

/// One side of a split brain, as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitSide {
    /// Bytes changed since the split (its out-of-sync bitmap).
    pub changes: u64,
    /// When it was last promoted (ms since the epoch; 0: never).
    pub promoted_at: u64,
    /// Only a Secondary's data is ever discarded automatically.
    pub secondary: bool,
}

/// Some(true): this node discards its data; Some(false): the peer does;
/// None: refuse (no policy, a tie, or the loser is Primary). Both nodes
/// reach mirrored answers.
pub fn resolve_split_brain(
    policy: SplitBrainPolicy,
    mine: SplitSide,
    peer: SplitSide,
) -> Option<bool> {
    let i_lose = match policy {
        SplitBrainPolicy::Disconnect => return None,
        SplitBrainPolicy::DiscardZeroChanges => match (mine.changes == 0, peer.changes == 0) {
            (true, false) => true,
            (false, true) => false,
            _ => return None,
        },
        SplitBrainPolicy::DiscardLeastChanges => match mine.changes.cmp(&peer.changes) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => return None,
        },
        SplitBrainPolicy::DiscardYoungerPrimary => match mine.promoted_at.cmp(&peer.promoted_at) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            std::cmp::Ordering::Equal => return None,
        },
    };
    let loser = if i_lose { mine } else { peer };
    loser.secondary.then_some(i_lose)
}

fn shares_history(a: &GenIds, b: &GenIds) -> bool {
    let ids = |g: &GenIds| [g.current, g.bitmap, g.history[0], g.history[1]];
    ids(a).iter().any(|&x| x != 0 && x != NEVER_SYNCED && ids(b).contains(&x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;

    fn g(current: u64, bitmap: u64, h0: u64, h1: u64) -> GenIds {
        GenIds { current, bitmap, history: [h0, h1] }
    }

    /// Every row, checked from both sides.
    #[test]
    fn decision_table() {
        let never = GenIds::never_synced();
        let rows: Vec<(&str, GenIds, GenIds, Decision)> = vec![
            ("both fresh", never, never, WaitForForce),
            ("fresh meets UpToDate", never, g(10, 0, 0, 0), SyncTarget { full: true }),
            ("same current", g(10, 0, 0, 0), g(10, 0, 0, 0), InSync),
            ("same current, stale bitmap ids", g(10, 7, 7, 0), g(10, 0, 7, 0), InSync),
            (
                "primary wrote apart: bitmap resync",
                g(11, 10, 10, 0),
                g(10, 0, 0, 0),
                SyncSource { full: false },
            ),
            (
                "secondary came back newer",
                g(10, 0, 0, 0),
                g(11, 10, 10, 0),
                SyncTarget { full: false },
            ),
            (
                "in history only: full sync",
                g(12, 0, 11, 10),
                g(10, 0, 0, 0),
                SyncSource { full: true },
            ),
            (
                "a stale base, the peer on a later generation: bitmap resync",
                g(13, 10, 12, 10),
                g(12, 0, 10, 0),
                SyncSource { full: false },
            ),
            (
                "the base left the history: both entries are later",
                g(14, 10, 13, 12),
                g(12, 0, 10, 0),
                SyncSource { full: false },
            ),
            (
                "older than the base: full sync",
                g(14, 12, 12, 10),
                g(10, 0, 0, 0),
                SyncSource { full: true },
            ),
            (
                "a base of 0 covers nothing: full sync",
                g(14, 0, 13, 12),
                g(13, 0, 12, 0),
                SyncSource { full: true },
            ),
            ("both wrote apart: split brain", g(11, 10, 10, 0), g(12, 10, 10, 0), SplitBrain),
            ("split brain, deeper history", g(21, 20, 20, 10), g(30, 10, 10, 0), SplitBrain),
            ("unrelated devices", g(11, 0, 9, 0), g(12, 0, 8, 0), Unrelated),
            ("unrelated, no history", g(11, 0, 0, 0), g(12, 0, 0, 0), Unrelated),
        ];
        for (what, a, b, want) in rows {
            assert_eq!(decide(&a, &b), want, "{what} (a's view)");
            assert_eq!(decide(&b, &a), want.mirrored(), "{what} (b's view)");
        }
    }

    #[test]
    fn split_brain_policies() {
        use SplitBrainPolicy::*;
        let side = |changes, promoted_at, secondary| SplitSide { changes, promoted_at, secondary };
        let rows = [
            (Disconnect, side(0, 1, true), side(9, 2, true), None),
            (DiscardZeroChanges, side(0, 1, true), side(9, 2, true), Some(true)),
            (DiscardZeroChanges, side(5, 1, true), side(9, 2, true), None),
            (DiscardZeroChanges, side(0, 1, true), side(0, 2, true), None),
            (DiscardLeastChanges, side(5, 1, true), side(9, 2, true), Some(true)),
            (DiscardLeastChanges, side(5, 1, true), side(5, 2, true), None),
            (DiscardLeastChanges, side(5, 1, false), side(9, 2, true), None), // loser is Primary
            (DiscardYoungerPrimary, side(5, 3, true), side(9, 2, false), Some(true)),
            (DiscardYoungerPrimary, side(5, 2, true), side(9, 2, true), None),
        ];
        for (policy, a, b, want) in rows {
            assert_eq!(resolve_split_brain(policy, a, b), want, "{policy:?} {a:?} {b:?}");
            assert_eq!(resolve_split_brain(policy, b, a), want.map(|x| !x), "{policy:?} mirrored");
        }
    }

    #[test]
    fn generations_move_as_writes_happen_apart() {
        let mut a = GenIds::never_synced();
        a.new_current(10); // primary --force
        assert_eq!(a, g(10, 0, 0, 0));
        let mut b = a;
        b.synced_to(10);
        assert_eq!(decide(&a, &b), InSync);
        a.new_current(11); // a writes while b is away
        assert_eq!(a, g(11, 10, 10, 0));
        assert_eq!(decide(&a, &b), SyncSource { full: false });
        // b was promoted apart and wrote too.
        b.new_current(12);
        assert_eq!(decide(&a, &b), SplitBrain);
        // Resolved by discarding b's data: b takes a's generation after a full sync.
        b.synced_to(a.current);
        a.synced_to(a.current);
        assert_eq!(decide(&a, &b), InSync);
    }
}
