//! Deterministic simulation: a seed drives the real `Controller` (state
//! machine + liveness) through crashes, restarts, joins, removals, drains and
//! rebuilds, with the invariants checked after every step. A failure prints
//! the seed; `TANDEM_SIM_SEED=N` replays one.

use std::collections::BTreeMap;

use controller::{
    Config, Controller, Event, Heartbeat, NodeId, NodeSpec, NodeState, PartitionId, PartitionState,
    Term,
};

const STEPS: usize = 300;
const QUIET_STEPS: usize = 60;
const NODES_MAX: u32 = 9;

/// splitmix64: small, seedable, the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct SimNode {
    id: NodeId,
    host: String,
    alive: bool,
    last_beat_ms: u64,
}

struct Sim {
    rng: Rng,
    now: u64,
    controller: Controller,
    nodes: Vec<SimNode>,
    primaries: BTreeMap<(u32, Term), NodeId>,
    terms: Vec<Term>,
    coverage: Coverage,
}

/// What the run exercised, so that a quiet generator cannot pass unnoticed.
#[derive(Default, Clone, Copy)]
struct Coverage {
    rebuilds: bool,
    removals: bool,
    failovers: bool,
    drains: bool,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed);
        let config = Config {
            partitions: 24,
            replicas: 1 + rng.below(3) as u32,
            rebuild_after_ms: rng.chance(50).then_some(6_000),
            ..Config::default()
        };
        Sim {
            rng,
            now: 0,
            controller: Controller::new(config).unwrap(),
            nodes: Vec::new(),
            primaries: BTreeMap::new(),
            terms: Vec::new(),
            coverage: Coverage::default(),
        }
    }

    fn spec(&self, i: usize) -> NodeSpec {
        NodeSpec::bare(self.nodes[i].id, self.nodes[i].host.clone())
    }

    fn pick(&mut self) -> Option<usize> {
        (!self.nodes.is_empty()).then(|| self.rng.below(self.nodes.len() as u64) as usize)
    }

    fn apply(&mut self, event: Event) -> Result<(), String> {
        // Refusals (removing below R hosts, an unknown node) are fine.
        let _ = self.controller.apply(event, self.now);
        self.check()
    }

    /// One random fault or operator action.
    fn disturb(&mut self) -> Result<(), String> {
        match self.rng.below(100) {
            0..=14 if (self.nodes.len() as u32) < NODES_MAX => {
                let id = NodeId(self.nodes.len() as u32);
                let host = format!("h{}", self.rng.below(5));
                self.nodes.push(SimNode {
                    id,
                    host,
                    alive: true,
                    last_beat_ms: self.now,
                });
                let spec = self.spec(self.nodes.len() - 1);
                self.apply(Event::Register(spec))
            }
            15..=34 => {
                if let Some(i) = self.pick() {
                    self.nodes[i].alive = false;
                }
                Ok(())
            }
            35..=59 => match self.pick() {
                Some(i) if !self.nodes[i].alive => {
                    self.nodes[i].alive = true;
                    self.nodes[i].last_beat_ms = self.now;
                    let spec = self.spec(i);
                    self.apply(Event::Register(spec))
                }
                _ => Ok(()),
            },
            60..=63 => match self.pick() {
                Some(i) => self.apply(Event::Remove {
                    node: self.nodes[i].id,
                }),
                None => Ok(()),
            },
            64..=69 => match self.pick() {
                Some(i) => self.apply(Event::Drain {
                    node: self.nodes[i].id,
                }),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// Live nodes heartbeat every 500 ms and report the partitions they
    /// could stream from a source (most of the time: catch-up takes a while).
    fn heartbeats(&mut self, eager: bool) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let node = &self.nodes[i];
            if !node.alive || self.now < node.last_beat_ms + 500 {
                continue;
            }
            let id = node.id;
            self.nodes[i].last_beat_ms = self.now;
            let map = self.controller.map();
            let caught_up: Vec<PartitionId> = (0..map.table.len() as u32)
                .map(PartitionId)
                .filter(|&p| map.needs_catch_up(p, id) && map.catch_up_source(p, id).is_some())
                .collect();
            let caught_up = if eager || self.rng.chance(60) {
                caught_up
            } else {
                Vec::new()
            };
            let hb = Heartbeat {
                node: id,
                caught_up,
                lagging: Vec::new(),
            };
            let _ = self.controller.heartbeat(&hb, self.now);
            self.check()?;
        }
        Ok(())
    }

    fn check(&mut self) -> Result<(), String> {
        let map = self.controller.map();
        map.check_invariants().map_err(|e| e.to_string())?;
        let cov = &mut self.coverage;
        cov.rebuilds |= map.nodes.iter().any(|n| n.evicted);
        cov.removals |= map.nodes.iter().any(|n| n.state == NodeState::Removed);
        cov.drains |= map.nodes.iter().any(|n| n.drained);
        cov.failovers |= map.table.iter().any(|i| i.term > Term(2));
        self.terms.resize(map.table.len(), Term(0));
        for (p, info) in map.table.iter().enumerate() {
            if info.term < self.terms[p] {
                return Err(format!("partition {p} term went back to {}", info.term));
            }
            self.terms[p] = info.term;
            if let Some(&first) = info.replicas.first() {
                let seen = *self.primaries.entry((p as u32, info.term)).or_insert(first);
                if seen != first {
                    return Err(format!(
                        "partition {p} term {} had primaries {seen} and {first}",
                        info.term
                    ));
                }
            }
        }
        // A node that heartbeats on time is never Down.
        for n in self
            .nodes
            .iter()
            .filter(|n| n.alive && self.now < n.last_beat_ms + 3_000)
        {
            if map.state_of(n.id) == Some(NodeState::Down) && n.last_beat_ms > 0 {
                let since = map.node(n.id).unwrap().since_ms;
                if since > n.last_beat_ms {
                    return Err(format!(
                        "node {} went Down at {since} though it beat at {}",
                        n.id, n.last_beat_ms
                    ));
                }
            }
        }
        Ok(())
    }

    fn tick(&mut self, eager: bool) -> Result<(), String> {
        self.now += 100 + self.rng.below(500);
        self.heartbeats(eager)?;
        let _ = self.controller.tick(self.now);
        self.check()
    }
}

fn run(seed: u64) -> Result<Coverage, String> {
    let mut sim = Sim::new(seed);
    for step in 0..STEPS {
        sim.disturb()
            .and_then(|_| sim.tick(false))
            .map_err(|e| format!("step {step}: {e}"))?;
    }
    // Heal: every node alive, no more faults. The cluster must converge.
    for n in &mut sim.nodes {
        if !n.alive {
            n.alive = true;
            n.last_beat_ms = 0;
        }
    }
    for step in 0..QUIET_STEPS {
        sim.tick(true)
            .map_err(|e| format!("quiet step {step}: {e}"))?;
    }
    let map = sim.controller.map();
    let hosts = map
        .candidates()
        .iter()
        .map(|c| c.host.clone())
        .collect::<std::collections::BTreeSet<_>>();
    if hosts.len() < map.replicas as usize {
        return Ok(sim.coverage); // never formed, or formed and lost hosts by removal refusal rules
    }
    if let Some(n) = map
        .nodes
        .iter()
        .find(|n| !matches!(n.state, NodeState::Active | NodeState::Removed))
    {
        return Err(format!("after healing node {} is {}", n.id, n.state));
    }
    for p in 0..map.table.len() as u32 {
        let state = map.partition_state(PartitionId(p));
        if state != PartitionState::Healthy {
            return Err(format!(
                "after healing partition {p} is {state}: {:?}",
                map.table[p as usize]
            ));
        }
    }
    Ok(sim.coverage)
}

#[test]
fn seeded_simulations_keep_the_invariants_and_converge() {
    // TANDEM_SIM_SEED=N replays one seed; TANDEM_SIM_SEEDS=N runs seeds 0..N.
    let count = std::env::var("TANDEM_SIM_SEEDS").map_or(12, |s| s.parse().expect("a number"));
    let seeds: Vec<u64> = match std::env::var("TANDEM_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("TANDEM_SIM_SEED is a number")],
        Err(_) => (0..count).collect(),
    };
    let mut seen = Coverage::default();
    for seed in seeds {
        match run(seed) {
            Ok(c) => {
                seen.rebuilds |= c.rebuilds;
                seen.removals |= c.removals;
                seen.failovers |= c.failovers;
                seen.drains |= c.drains;
            }
            Err(e) => panic!("simulation failed, replay with TANDEM_SIM_SEED={seed}: {e}"),
        }
    }
    if std::env::var("TANDEM_SIM_SEED").is_err() {
        assert!(
            seen.rebuilds && seen.removals && seen.failovers && seen.drains,
            "the seeds did not exercise every event kind"
        );
    }
}
