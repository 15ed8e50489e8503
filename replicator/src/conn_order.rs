//! The order of a node's requests at the witness, across its
//! connections (`twinblock witness`, and the simulator's witness).
//!
//! A node talks to the witness on one QUIC connection at a time: it opens
//! a new one only once it gave the last up, or its process restarted.
//! QUIC orders what one connection carries; across connections nothing
//! does. A request on a node's older connection can still reach the
//! witness after the node's newer connection carried requests: a
//! datagram held up in the network, or resent by a connection the node
//! has closed while the witness has not timed it out yet. Decided then,
//! an old `Release` cleared the right the node had claimed again since,
//! while its lease ran by its own count, and the other node could be
//! granted it (two Primaries: the simulator's lease rule, I4). So once a
//! request came on a node's newer connection, whatever comes on an older
//! one is refused, undecided.

use std::collections::BTreeMap;

use crate::core::Plant;

/// Per node, the newest of its connections a request came on.
#[derive(Debug, Clone, Default)]
pub struct ConnOrder {
    newest: BTreeMap<String, u64>,
    /// `StaleWitnessRequests`: every request is decided (the planted
    /// mistake the simulator must catch).
    pub plant: Plant,
}

impl ConnOrder {
    /// No request seen yet (`plant`: the simulator's planted mistake).
    pub fn new(plant: Plant) -> ConnOrder {
        ConnOrder { newest: BTreeMap::new(), plant }
    }

    /// Whether `node`'s request on its connection `conn` (numbered in
    /// the order the witness accepted them) is decided: not if a request
    /// came on a newer connection of the node before.
    pub fn admit(&mut self, node: &str, conn: u64) -> bool {
        let newest = self.newest.entry(node.to_owned()).or_insert(conn);
        if conn < *newest {
            return self.plant == Plant::StaleWitnessRequests;
        }
        *newest = conn;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's requests on its connections 3, then 8: 3 again is stale;
    /// the other node's numbering is its own; a newer connection goes on.
    #[test]
    fn an_older_connections_request_after_a_newer_ones_is_refused() {
        let mut o = ConnOrder::default();
        assert!(o.admit("a", 3));
        assert!(o.admit("a", 3));
        assert!(o.admit("b", 1));
        assert!(o.admit("a", 8));
        assert!(!o.admit("a", 3));
        assert!(o.admit("a", 8));
        assert!(o.admit("a", 9));
        assert!(!o.admit("a", 8));
        assert!(o.admit("b", 2));
        o.plant = Plant::StaleWitnessRequests;
        assert!(o.admit("a", 3));
    }
}
