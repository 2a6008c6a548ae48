//! `tandem sim failures`: a Monte-Carlo simulation of node and host failures over the real placement.
//!
//! # The model
//!
//! - Nodes `1..=N` sit on hosts round robin (as `tandem up` places them);
//!   partitions are placed by `controller::place`, the controller's own code.
//!   Partitions with the same replica list behave alike and are simulated as
//!   one group.
//! - Each node fails after an exponential time of mean `node_mtbf` and comes
//!   back after an exponential time of mean `node_mttr` (never, if none);
//!   each host likewise with `host_mtbf`/`host_mttr`, taking all its nodes
//!   down. A failure destroys the data of the failed nodes with probability
//!   `disk_loss` (1 = every failure is a lost node, the pessimistic bound).
//! - A copy is *current* when it holds every acknowledged write. While a
//!   partition has a current copy on an Active node it takes writes and
//!   serves reads; copies on Down nodes fall behind. With no such copy the
//!   partition is unavailable; writes stop, so the copies that were current
//!   stay current (the controller keeps the last primary as the authority).
//! - A node that comes back is Recovering: it copies, one partition after
//!   another from a current copy, what it misses: the writes of its outage
//!   when the outage is shorter than `log_reach` (the primary's log still
//!   holds them: incremental catch-up at the calibrated catch-up rate), else
//!   the partition's whole content (a full copy at the calibrated full-copy
//!   rate); a lost disk always needs full copies. It is Active when it is
//!   done; partitions with no source at that time wait for one, without
//!   holding the node back (as the controller does).
//! - **Samples lost**: when the last current copy of a partition is
//!   destroyed, the writes that no other copy holds are lost: since the best
//!   remaining copy fell behind, or the partition's whole content (retention
//!   worth of samples) when no copy is left.
//! - **Writes** also pause for `failover` when a partition's acting primary
//!   fails and another copy takes over; reads switch at once.
//!
//! Every trial draws from its own ChaCha8 stream seeded from `(seed, trial)`,
//! and trials are summed in order, so a seed gives the same report whatever
//! the number of threads.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use controller::{Candidate, NodeId};

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureInput {
    pub nodes: u32,
    pub hosts: u32,
    pub replicas: u32,
    pub partitions: u32,
    pub node_mtbf_s: f64,
    /// None: a failed node never comes back.
    pub node_mttr_s: Option<f64>,
    /// None: hosts never fail (only nodes do).
    pub host_mtbf_s: Option<f64>,
    pub host_mttr_s: Option<f64>,
    /// Probability that a failure destroys the data of the nodes it takes down.
    pub disk_loss: f64,
    /// Write pause when a partition's primary fails and another copy takes over.
    pub failover_s: f64,
    /// Outages shorter than this catch up from the primary's log; longer ones need full copies.
    pub log_reach_s: f64,
    pub horizon_s: f64,
    pub trials: u32,
    pub seed: u64,
    /// The load: series, their interval and retention (what a full copy moves
    /// and what a lost partition held).
    pub series: f64,
    pub interval_s: f64,
    pub retention_s: f64,
    pub full_copy_samples_per_s: f64,
    /// Fixed seconds per partition of a full copy.
    pub full_copy_partition_s: f64,
    pub catch_up_samples_per_s: f64,
    /// Also run HA off and other host layouts for comparison.
    pub compare: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureReport {
    pub input: FailureInput,
    /// The requested cluster first, then the comparisons.
    pub scenarios: Vec<ScenarioResult>,
}

/// A mean over trials and its standard error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Estimate {
    pub mean: f64,
    pub stderr: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScenarioResult {
    pub label: String,
    pub nodes: u32,
    pub hosts: u32,
    pub replicas: u32,
    /// Fraction of partition-time with a current copy on an Active node.
    pub read_availability: Estimate,
    /// The same, less the failover pauses.
    pub write_availability: Estimate,
    /// Probability of losing any acknowledged sample within the horizon.
    pub p_data_loss: Estimate,
    /// 95% Wilson interval of `p_data_loss`.
    pub p_data_loss_95: (f64, f64),
    pub samples_lost: Estimate,
    /// Samples collectors could not write (partitions unavailable for writes).
    pub samples_refused: Estimate,
    /// Hours within the horizon during which some partition had fewer than R current Active copies.
    pub degraded_hours: Estimate,
    /// Hours during which some partition had no current Active copy.
    pub unavailable_hours: Estimate,
    /// Node and host failures per trial.
    pub failures: Estimate,
    /// Time of the first loss, in seconds, of every trial that lost data (for plots).
    #[serde(skip)]
    pub loss_times_s: Vec<f64>,
}

/// One layout to simulate.
#[derive(Clone, Debug)]
struct Scenario {
    label: String,
    hosts: u32,
    replicas: u32,
}

pub fn simulate(input: &FailureInput, progress: &(dyn Fn(u64) + Sync)) -> Result<FailureReport> {
    validate(input)?;
    let mut scenarios = vec![Scenario {
        label: "as given".into(),
        hosts: input.hosts,
        replicas: input.replicas,
    }];
    if input.compare {
        if input.replicas > 1 {
            scenarios.push(Scenario {
                label: "HA off (R=1)".into(),
                hosts: input.hosts,
                replicas: 1,
            });
        } else if input.hosts >= 2 {
            scenarios.push(Scenario {
                label: "HA on (R=2)".into(),
                hosts: input.hosts,
                replicas: 2,
            });
        }
        if input.hosts < input.nodes {
            scenarios.push(Scenario {
                label: "one node per host".into(),
                hosts: input.nodes,
                replicas: input.replicas,
            });
        } else if input.nodes / 2 >= input.replicas && input.nodes >= 4 {
            scenarios.push(Scenario {
                label: "two nodes per host".into(),
                hosts: input.nodes / 2,
                replicas: input.replicas,
            });
        }
    }
    let mut results = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        let world = World::new(input, s)?;
        let seed = input.seed.wrapping_add((i as u64) << 32);
        results.push(world.run(input, s, seed, progress));
    }
    Ok(FailureReport {
        input: input.clone(),
        scenarios: results,
    })
}

/// How many scenarios `simulate` runs (for a progress bar's length).
pub fn scenario_count(input: &FailureInput) -> u32 {
    if !input.compare {
        return 1;
    }
    let mut n = 1;
    if input.replicas > 1 || input.hosts >= 2 {
        n += 1;
    }
    if input.hosts < input.nodes || (input.nodes / 2 >= input.replicas && input.nodes >= 4) {
        n += 1;
    }
    n
}

fn validate(input: &FailureInput) -> Result<()> {
    let bad = |m: &str| Err(Error::Invalid(m.into()));
    if input.nodes == 0 {
        return bad("--nodes must be at least 1");
    }
    if input.hosts == 0 || input.hosts > input.nodes {
        return Err(Error::Invalid(format!(
            "--hosts {} must be in 1..={}: every host runs at least one node",
            input.hosts, input.nodes
        )));
    }
    let positive = |v: f64| v.is_finite() && v > 0.0;
    if !positive(input.node_mtbf_s) || !positive(input.horizon_s) {
        return bad("--node-mtbf and --horizon must be positive durations");
    }
    if input.node_mttr_s.is_some_and(|v| !positive(v))
        || input.host_mttr_s.is_some_and(|v| !positive(v))
        || input.host_mtbf_s.is_some_and(|v| !positive(v))
    {
        return bad(
            "--node-mttr, --host-mtbf and --host-mttr must be positive durations or `never`",
        );
    }
    if !(0.0..=1.0).contains(&input.disk_loss) {
        return bad("--disk-loss is a probability in [0, 1]");
    }
    if input.trials == 0 {
        return bad("--trials must be at least 1");
    }
    if !positive(input.full_copy_samples_per_s)
        || !positive(input.catch_up_samples_per_s)
        || input.full_copy_partition_s.is_nan()
        || input.full_copy_partition_s < 0.0
    {
        return bad(
            "the profile's resync rates must be positive: run `tandem sim calibrate` again",
        );
    }
    if !positive(input.interval_s) || input.retention_s < 0.0 || input.series < 0.0 {
        return bad("--interval must be positive, --retention and the load non-negative");
    }
    Ok(())
}

/// The static part of a scenario: placement grouped by replica list.
struct World {
    nodes: usize,
    hosts: usize,
    host_of: Vec<usize>,
    groups: Vec<GroupDef>,
    /// For each node, (group, copy index) pairs.
    node_copies: Vec<Vec<(usize, usize)>>,
    partitions: f64,
    rate_p: f64,
    content_p: f64,
}

struct GroupDef {
    replicas: Vec<usize>,
    weight: f64,
}

impl World {
    fn new(input: &FailureInput, s: &Scenario) -> Result<World> {
        let candidates: Vec<Candidate> = (1..=input.nodes)
            .map(|id| Candidate::new(NodeId(id), crate::host_of(id, s.hosts)))
            .collect();
        let table = controller::place(&candidates, input.partitions, s.replicas)?;
        let mut by_list: BTreeMap<Vec<usize>, f64> = BTreeMap::new();
        for list in &table {
            let idx: Vec<usize> = list.iter().map(|n| n.0 as usize - 1).collect();
            *by_list.entry(idx).or_default() += 1.0;
        }
        let groups: Vec<GroupDef> = by_list
            .into_iter()
            .map(|(replicas, weight)| GroupDef { replicas, weight })
            .collect();
        let nodes = input.nodes as usize;
        let mut node_copies = vec![Vec::new(); nodes];
        for (g, def) in groups.iter().enumerate() {
            for (j, &n) in def.replicas.iter().enumerate() {
                node_copies[n].push((g, j));
            }
        }
        let per_partition = input.series / input.partitions as f64;
        Ok(World {
            nodes,
            hosts: s.hosts as usize,
            host_of: (0..nodes).map(|n| n % s.hosts as usize).collect(),
            groups,
            node_copies,
            partitions: input.partitions as f64,
            rate_p: per_partition / input.interval_s,
            content_p: per_partition * (input.retention_s / input.interval_s).floor(),
        })
    }

    fn run(
        &self,
        input: &FailureInput,
        s: &Scenario,
        seed: u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> ScenarioResult {
        let trials = input.trials as usize;
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 8)
            .min(trials);
        let next = AtomicU64::new(0);
        let mut outcomes: Vec<Option<Trial>> = vec![None; trials];
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let t = next.fetch_add(1, AtomicOrdering::Relaxed) as usize;
                            if t >= trials {
                                break;
                            }
                            let rng = ChaCha8Rng::seed_from_u64(
                                seed ^ (t as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                            );
                            done.push((t, Sim::new(self, input, rng).run()));
                            progress(1);
                        }
                        done
                    })
                })
                .collect();
            for h in handles {
                for (t, trial) in h.join().expect("a simulation thread panicked") {
                    outcomes[t] = Some(trial);
                }
            }
        });
        let trials: Vec<Trial> = outcomes
            .into_iter()
            .map(|t| t.expect("every trial ran"))
            .collect();
        self.summarize(input, s, &trials)
    }

    fn summarize(&self, input: &FailureInput, s: &Scenario, trials: &[Trial]) -> ScenarioResult {
        let total = self.partitions * input.horizon_s;
        let est = |f: &dyn Fn(&Trial) -> f64| estimate(trials.iter().map(f));
        let losses = trials.iter().filter(|t| t.lost_samples > 0.0).count();
        ScenarioResult {
            label: s.label.clone(),
            nodes: input.nodes,
            hosts: s.hosts,
            replicas: s.replicas,
            read_availability: est(&|t| 1.0 - t.unreadable / total),
            write_availability: est(&|t| 1.0 - (t.unwritable + t.paused).min(total) / total),
            p_data_loss: est(&|t| f64::from(u8::from(t.lost_samples > 0.0))),
            p_data_loss_95: wilson(losses as f64, trials.len() as f64),
            samples_lost: est(&|t| t.lost_samples),
            samples_refused: est(&|t| (t.unwritable + t.paused) * self.rate_p),
            degraded_hours: est(&|t| t.any_degraded / 3600.0),
            unavailable_hours: est(&|t| t.any_unavailable / 3600.0),
            failures: est(&|t| t.failures as f64),
            loss_times_s: trials.iter().filter_map(|t| t.first_loss_s).collect(),
        }
    }
}

fn estimate(values: impl Iterator<Item = f64> + Clone) -> Estimate {
    let n = values.clone().count() as f64;
    if n == 0.0 {
        return Estimate::default();
    }
    let mean = values.clone().sum::<f64>() / n;
    let var = if n > 1.0 {
        values.map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    Estimate {
        mean,
        stderr: (var / n).sqrt(),
    }
}

/// 95% Wilson score interval of `k` successes in `n` trials.
pub fn wilson(k: f64, n: f64) -> (f64, f64) {
    if n == 0.0 {
        return (0.0, 1.0);
    }
    let z: f64 = 1.96;
    let p = k / n;
    let d = 1.0 + z * z / n;
    let c = (p + z * z / (2.0 * n)) / d;
    let h = z * ((p * (1.0 - p) + z * z / (4.0 * n)) / n).sqrt() / d;
    ((c - h).max(0.0), (c + h).min(1.0))
}

/// What one trial measured.
#[derive(Clone, Debug, Default)]
struct Trial {
    /// Partition-seconds without a current Active copy.
    unreadable: f64,
    unwritable: f64,
    /// Partition-seconds of failover write pauses.
    paused: f64,
    /// Seconds during which some partition was degraded / unavailable.
    any_degraded: f64,
    any_unavailable: f64,
    lost_samples: f64,
    first_loss_s: Option<f64>,
    failures: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Holds {
    /// Every acknowledged write.
    Current,
    /// Every write up to this time.
    Until(f64),
    /// Nothing (a lost disk, not yet copied back).
    Empty,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    NodeFail(usize),
    NodeRepair(usize),
    HostFail(usize),
    HostRepair(usize),
    /// A returning node finished its recovery (with the node's epoch).
    NodeActive(usize, u64),
    /// One late copy (group, copy) finished (with the node's epoch).
    CopyDone(usize, usize, u64),
}

struct Event {
    at: f64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    /// Reversed: the earliest event is the heap's maximum.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .total_cmp(&self.at)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

#[derive(Clone, Debug)]
struct NodeState {
    failed: bool,
    active: bool,
    /// Bumped whenever the node goes down: stale completion events are ignored.
    epoch: u64,
    /// The node's copy stream is busy until then.
    queue_free_at: f64,
}

#[derive(Clone, Debug)]
struct GroupState {
    holds: Vec<Holds>,
    pending: Vec<bool>,
    writable: bool,
    /// When writes stopped (the time every current copy is current as of).
    frozen_at: f64,
    acting_primary: Option<usize>,
    degraded: bool,
}

/// One trial's mutable state.
struct Sim<'w> {
    world: &'w World,
    input: &'w FailureInput,
    rng: ChaCha8Rng,
    now: f64,
    seq: u64,
    queue: BinaryHeap<Event>,
    nodes: Vec<NodeState>,
    host_down: Vec<bool>,
    groups: Vec<GroupState>,
    /// Weighted partitions currently unavailable / degraded.
    unavailable: f64,
    degraded: f64,
    out: Trial,
}

impl<'w> Sim<'w> {
    fn new(world: &'w World, input: &'w FailureInput, rng: ChaCha8Rng) -> Sim<'w> {
        let groups = world
            .groups
            .iter()
            .map(|g| GroupState {
                holds: vec![Holds::Current; g.replicas.len()],
                pending: vec![false; g.replicas.len()],
                writable: true,
                frozen_at: 0.0,
                acting_primary: Some(0),
                degraded: false,
            })
            .collect();
        Sim {
            world,
            input,
            rng,
            now: 0.0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: vec![
                NodeState {
                    failed: false,
                    active: true,
                    epoch: 0,
                    queue_free_at: 0.0,
                };
                world.nodes
            ],
            host_down: vec![false; world.hosts],
            groups,
            unavailable: 0.0,
            degraded: 0.0,
            out: Trial::default(),
        }
    }

    fn exp(&mut self, mean: f64) -> f64 {
        let u: f64 = self.rng.gen();
        -mean * (1.0 - u).ln()
    }

    fn schedule(&mut self, at: f64, kind: Kind) {
        if at <= self.input.horizon_s {
            self.seq += 1;
            self.queue.push(Event {
                at,
                seq: self.seq,
                kind,
            });
        }
    }

    fn run(mut self) -> Trial {
        for n in 0..self.world.nodes {
            let at = self.exp(self.input.node_mtbf_s);
            self.schedule(at, Kind::NodeFail(n));
        }
        if let Some(mtbf) = self.input.host_mtbf_s {
            for h in 0..self.world.hosts {
                let at = self.exp(mtbf);
                self.schedule(at, Kind::HostFail(h));
            }
        }
        while let Some(e) = self.queue.pop() {
            self.advance(e.at);
            self.apply(e.kind);
        }
        self.advance(self.input.horizon_s);
        self.out
    }

    /// Integrates the current state up to `t`.
    fn advance(&mut self, t: f64) {
        let dt = t - self.now;
        if dt > 0.0 {
            self.out.unreadable += self.unavailable * dt;
            self.out.unwritable += self.unavailable * dt;
            if self.degraded > 0.0 {
                self.out.any_degraded += dt;
            }
            if self.unavailable > 0.0 {
                self.out.any_unavailable += dt;
            }
            self.now = t;
        }
    }

    fn is_down(&self, n: usize) -> bool {
        self.nodes[n].failed || self.host_down[self.world.host_of[n]]
    }

    fn serving(&self, n: usize) -> bool {
        !self.is_down(n) && self.nodes[n].active
    }

    fn apply(&mut self, kind: Kind) {
        match kind {
            Kind::NodeFail(n) => {
                self.out.failures += 1;
                let was_down = self.is_down(n);
                self.nodes[n].failed = true;
                let lose = self.rng.gen_bool(self.input.disk_loss);
                if let Some(mttr) = self.input.node_mttr_s {
                    let at = self.now + self.exp(mttr);
                    self.schedule(at, Kind::NodeRepair(n));
                }
                self.went_down(&[n], was_down, lose);
            }
            Kind::NodeRepair(n) => {
                self.nodes[n].failed = false;
                let at = self.now + self.exp(self.input.node_mtbf_s);
                self.schedule(at, Kind::NodeFail(n));
                if !self.is_down(n) {
                    self.came_back(n);
                }
            }
            Kind::HostFail(h) => {
                self.out.failures += 1;
                let on_host: Vec<usize> = (0..self.world.nodes)
                    .filter(|&n| self.world.host_of[n] == h && !self.is_down(n))
                    .collect();
                self.host_down[h] = true;
                let lose = self.rng.gen_bool(self.input.disk_loss);
                if let Some(mttr) = self.input.host_mttr_s {
                    let at = self.now + self.exp(mttr);
                    self.schedule(at, Kind::HostRepair(h));
                }
                self.went_down(&on_host, false, lose);
            }
            Kind::HostRepair(h) => {
                self.host_down[h] = false;
                if let Some(mtbf) = self.input.host_mtbf_s {
                    let at = self.now + self.exp(mtbf);
                    self.schedule(at, Kind::HostFail(h));
                }
                for n in 0..self.world.nodes {
                    if self.world.host_of[n] == h && !self.is_down(n) {
                        self.came_back(n);
                    }
                }
            }
            Kind::NodeActive(n, epoch) => {
                if self.nodes[n].epoch == epoch && !self.is_down(n) {
                    self.nodes[n].active = true;
                    let copies = self.world.node_copies[n].clone();
                    for (g, j) in copies {
                        if self.groups[g].pending[j] {
                            self.groups[g].pending[j] = false;
                            if self.source(g, j).is_some() {
                                self.groups[g].holds[j] = Holds::Current;
                            }
                        }
                    }
                    self.refresh_node(n);
                }
            }
            Kind::CopyDone(g, j, epoch) => {
                let n = self.world.groups[g].replicas[j];
                if self.nodes[n].epoch == epoch && !self.is_down(n) && self.groups[g].pending[j] {
                    self.groups[g].pending[j] = false;
                    if self.source(g, j).is_some() {
                        self.groups[g].holds[j] = Holds::Current;
                    }
                    self.refresh_group(g);
                }
            }
        }
    }

    /// `nodes` just went down (a node, or a host's nodes); `lose`: their data is destroyed.
    fn went_down(&mut self, nodes: &[usize], was_down: bool, lose: bool) {
        for &n in nodes {
            let node = &mut self.nodes[n];
            node.epoch += 1;
            node.active = false;
            node.queue_free_at = self.now;
            let copies = self.world.node_copies[n].clone();
            for &(g, j) in &copies {
                self.groups[g].pending[j] = false;
            }
            if lose {
                for &(g, j) in &copies {
                    self.destroy(g, j);
                }
            }
            if !was_down {
                for &(g, j) in &copies {
                    let primary = self.groups[g].acting_primary == Some(j);
                    self.refresh_group(g);
                    let st = &self.groups[g];
                    if primary && st.writable && st.acting_primary != Some(j) {
                        self.out.paused += self.input.failover_s * self.world.groups[g].weight;
                    }
                }
            }
            self.refresh_node(n);
        }
    }

    /// Copy `j` of group `g` loses its data; count what no other copy holds.
    fn destroy(&mut self, g: usize, j: usize) {
        let held = self.groups[g].holds[j];
        self.groups[g].holds[j] = Holds::Empty;
        if held != Holds::Current {
            return;
        }
        let st = &self.groups[g];
        if st.holds.contains(&Holds::Current) {
            return;
        }
        let latest = if st.writable { self.now } else { st.frozen_at };
        let best = st
            .holds
            .iter()
            .enumerate()
            .filter_map(|(k, h)| match h {
                Holds::Until(t) => Some((k, *t)),
                _ => None,
            })
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let weight = self.world.groups[g].weight;
        let lost = match best {
            Some((k, t)) => {
                // The best remaining copy becomes the partition's data.
                self.groups[g].holds[k] = Holds::Current;
                self.groups[g].frozen_at = t;
                weight * self.world.rate_p * (latest - t).max(0.0)
            }
            None => {
                // Nothing left: the partition's whole content is gone (the
                // cluster holds a full retention from the start), and it
                // starts again empty, so every copy is trivially current.
                for h in &mut self.groups[g].holds {
                    *h = Holds::Current;
                }
                weight * self.world.content_p.max(self.world.rate_p)
            }
        };
        if lost > 0.0 {
            self.out.lost_samples += lost;
            self.out.first_loss_s.get_or_insert(self.now);
        }
    }

    /// A current copy (other than `j`) on a node that is up: where `j` copies from.
    fn source(&self, g: usize, j: usize) -> Option<usize> {
        let st = &self.groups[g];
        (0..st.holds.len()).find(|&k| {
            k != j
                && st.holds[k] == Holds::Current
                && !self.is_down(self.world.groups[g].replicas[k])
        })
    }

    /// Seconds to bring copy `j` of group `g` up to date.
    fn copy_seconds(&self, g: usize, j: usize) -> f64 {
        let w = self.world.groups[g].weight;
        let full = w
            * (self.input.full_copy_partition_s
                + self.world.content_p / self.input.full_copy_samples_per_s);
        match self.groups[g].holds[j] {
            Holds::Current => 0.0,
            Holds::Empty => full,
            Holds::Until(t) => {
                let st = &self.groups[g];
                let latest = if st.writable { self.now } else { st.frozen_at };
                if self.now - t > self.input.log_reach_s {
                    full
                } else {
                    w * self.world.rate_p * (latest - t).max(0.0)
                        / self.input.catch_up_samples_per_s
                }
            }
        }
    }

    /// Node `n` is up again: it copies what it misses, then is Active.
    fn came_back(&mut self, n: usize) {
        self.nodes[n].queue_free_at = self.now;
        let copies = self.world.node_copies[n].clone();
        for &(g, j) in &copies {
            if self.groups[g].holds[j] != Holds::Current && self.source(g, j).is_some() {
                let s = self.copy_seconds(g, j);
                self.nodes[n].queue_free_at += s;
                self.groups[g].pending[j] = true;
            }
        }
        let at = self.nodes[n].queue_free_at;
        let epoch = self.nodes[n].epoch;
        if at <= self.now {
            self.nodes[n].active = true;
        } else {
            self.schedule(at, Kind::NodeActive(n, epoch));
        }
        self.refresh_node(n);
    }

    fn refresh_node(&mut self, n: usize) {
        let copies = self.world.node_copies[n].clone();
        for (g, _) in copies {
            self.refresh_group(g);
        }
    }

    /// Recomputes a group's status after a change, keeps the counters, and
    /// starts copies that found a source.
    fn refresh_group(&mut self, g: usize) {
        let def = &self.world.groups[g];
        let down: Vec<bool> = def.replicas.iter().map(|&n| self.is_down(n)).collect();
        let serving: Vec<bool> = def.replicas.iter().map(|&n| self.serving(n)).collect();
        let now = self.now;
        let st = &mut self.groups[g];
        let copies = st.holds.len();
        let writable = (0..copies).any(|k| serving[k] && st.holds[k] == Holds::Current);
        if writable {
            // Copies that are down fall behind from now on.
            for (h, &d) in st.holds.iter_mut().zip(&down) {
                if *h == Holds::Current && d {
                    *h = Holds::Until(now);
                }
            }
        }
        if st.writable && !writable {
            st.frozen_at = now;
        }
        let current_serving = (0..copies)
            .filter(|&k| serving[k] && st.holds[k] == Holds::Current)
            .count();
        let degraded = writable && current_serving < copies;
        let w = def.weight;
        if st.writable != writable {
            self.unavailable += if writable { -w } else { w };
        }
        if st.degraded != degraded {
            self.degraded += if degraded { w } else { -w };
        }
        st.writable = writable;
        st.degraded = degraded;
        st.acting_primary = (0..copies).find(|&k| serving[k] && st.holds[k] == Holds::Current);
        self.kick(g);
    }

    /// Schedules a copy for every stale copy on an Active node that has a source now.
    fn kick(&mut self, g: usize) {
        for j in 0..self.groups[g].holds.len() {
            let n = self.world.groups[g].replicas[j];
            if self.groups[g].holds[j] == Holds::Current
                || self.groups[g].pending[j]
                || !self.serving(n)
                || self.source(g, j).is_none()
            {
                continue;
            }
            let s = self.copy_seconds(g, j);
            let start = self.nodes[n].queue_free_at.max(self.now);
            self.nodes[n].queue_free_at = start + s;
            self.groups[g].pending[j] = true;
            let epoch = self.nodes[n].epoch;
            self.schedule(start + s, Kind::CopyDone(g, j, epoch));
        }
    }
}

#[cfg(test)]
mod tests;
