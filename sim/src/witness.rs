//! The third node: the witness (the real `Arbiter`) and its links to the
//! two nodes, in controller seeds. Each link can be cut (the node is told),
//! silently partitioned (requests and answers vanish), or the witness can
//! restart (it keeps only what `Arbiter::durable` saves).

use std::collections::VecDeque;
use std::time::Duration;

use twinblock_replicator::arbiter::Arbiter;
use twinblock_replicator::core::{Hook, Plant, Time, VoteReply, VoteRequest};

pub(crate) struct Witness {
    pub arb: Arbiter,
    pub alive: bool,
    pub restart_at: Option<Time>,
    /// Per node: the link is up (the node was told so).
    pub up: [bool; 2],
    pub heal_at: [Option<Time>; 2],
    /// Per node: messages vanish until then.
    pub silent_until: [Time; 2],
    pub to_w: VecDeque<(Time, usize, VoteRequest)>,
    pub from_w: [VecDeque<(Time, VoteReply)>; 2],
    /// Hooks the shells run: (done at, node, hook).
    pub hooks: Vec<(Time, usize, Hook)>,
    /// Restarts and healed links so far: each sends the nodes back to the
    /// witness (claims, the generations they told saved).
    pub returns: u64,
}

impl Witness {
    pub fn new(dead_time: Duration, plant: Plant) -> Witness {
        let mut arb = Arbiter::new("sim", Time::ZERO, dead_time, Default::default());
        arb.plant = plant;
        Witness {
            arb,
            alive: true,
            restart_at: None,
            up: [true, true],
            heal_at: [None, None],
            silent_until: [Time::ZERO; 2],
            to_w: VecDeque::new(),
            from_w: [VecDeque::new(), VecDeque::new()],
            hooks: Vec::new(),
            returns: 0,
        }
    }

    pub fn reachable(&self, n: usize, now: Time) -> bool {
        self.alive && self.up[n] && now >= self.silent_until[n]
    }

    pub fn next_event(&self) -> Option<Time> {
        let mut t: Option<Time> = None;
        let mut min = |x: Time| t = Some(t.map_or(x, |y: Time| y.min(x)));
        if let Some((at, _, _)) = self.to_w.front() {
            min(*at);
        }
        for q in &self.from_w {
            if let Some((at, _)) = q.front() {
                min(*at);
            }
        }
        for (at, _, _) in &self.hooks {
            min(*at);
        }
        if let Some(r) = self.restart_at {
            min(r);
        }
        for h in self.heal_at.iter().flatten() {
            min(*h);
        }
        t
    }

    /// Drops what is in flight between node `n` and the witness.
    pub fn cut(&mut self, n: usize) {
        self.to_w.retain(|(_, m, _)| *m != n);
        self.from_w[n].clear();
    }
}
