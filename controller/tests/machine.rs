//! Model-based property test of the controller state machine: random event
//! sequences against a model of acknowledged writes per partition.

use std::collections::BTreeMap;

use controller::{step, ClusterMap, Event, NodeId, NodeSpec, NodeState, PartitionId, Term};
use proptest::prelude::*;

const P: u32 = 12;

#[derive(Clone, Debug)]
enum Op {
    Register(u32),
    Down(u32),
    Up(u32),
    CatchUp(u32),
    Remove(u32),
    Drain(u32),
    Undrain(u32),
    Rebuild(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let id = 0u32..7;
    prop_oneof![
        3 => id.clone().prop_map(Op::Register),
        2 => id.clone().prop_map(Op::Down),
        2 => id.clone().prop_map(Op::Up),
        4 => id.clone().prop_map(Op::CatchUp),
        1 => id.clone().prop_map(Op::Remove),
        1 => id.clone().prop_map(Op::Drain),
        1 => id.clone().prop_map(Op::Undrain),
        1 => id.prop_map(Op::Rebuild),
    ]
}

/// Node `id` lives on host `id % 4`: some hosts carry two nodes.
fn spec(id: u32) -> NodeSpec {
    NodeSpec::bare(NodeId(id), format!("h{}", id % 4))
}

/// The model: how many writes each partition acknowledged, and how many each
/// copy (replica or learner) holds. Writes are in order, so a count is a prefix.
#[derive(Default)]
struct Model {
    acked: BTreeMap<u32, u64>,
    held: BTreeMap<(u32, NodeId), u64>,
    /// The primary seen for each (partition, term).
    primaries: BTreeMap<(u32, Term), NodeId>,
}

impl Model {
    fn held(&self, p: u32, n: NodeId) -> u64 {
        self.held.get(&(p, n)).copied().unwrap_or(0)
    }

    /// One write to every writable partition: the primary and every copy
    /// following its stream (Active copies, caught-up Recovering replicas,
    /// caught-up learners) apply it; only Active copies count for the ack.
    fn write(&mut self, map: &ClusterMap) {
        for (p, info) in map.table.iter().enumerate() {
            let pid = PartitionId(p as u32);
            if map.primary(pid).is_none() {
                continue;
            }
            let acked = self.acked.entry(p as u32).or_default();
            *acked += 1;
            let w = *acked;
            let following = info
                .replicas
                .iter()
                .copied()
                .filter(|&n| !info.is_stale(n) && map.state_of(n) != Some(NodeState::Down))
                .chain(info.learners.iter().filter(|l| l.caught_up).map(|l| l.node))
                .filter(|&n| map.state_of(n) != Some(NodeState::Down));
            for n in following.collect::<Vec<_>>() {
                self.held.insert((p as u32, n), w);
            }
        }
    }

    /// The node copies every partition it needs from its source; returns
    /// the partitions it can report as caught up.
    fn catch_up(&mut self, map: &ClusterMap, node: NodeId) -> Vec<PartitionId> {
        let mut done = Vec::new();
        for p in 0..map.table.len() as u32 {
            let pid = PartitionId(p);
            if !map.needs_catch_up(pid, node) {
                continue;
            }
            if let Some(source) = map.catch_up_source(pid, node) {
                let h = self.held(p, source);
                self.held.insert((p, node), h);
                done.push(pid);
            }
        }
        done
    }

    /// An operator removal of the only up-to-date copy loses its writes by
    /// definition: the surviving copies restart the partition's history.
    fn accept_removal_loss(&mut self, before: &ClusterMap, after: &ClusterMap, gone: NodeId) {
        for (p, info) in before.table.iter().enumerate() {
            let p32 = p as u32;
            let sole = info.replicas.contains(&gone)
                && !info.is_stale(gone)
                && info.replicas.iter().all(|&n| n == gone || info.is_stale(n));
            if sole {
                let new = &after.table[p];
                let level = new.replicas.first().map_or(0, |&n| self.held(p32, n));
                self.acked.insert(p32, level);
                for &n in new
                    .replicas
                    .iter()
                    .chain(new.learners.iter().map(|l| &l.node))
                {
                    self.held.insert((p32, n), level);
                }
            }
        }
    }

    /// Every invariant, after every step.
    fn check(&mut self, before: &ClusterMap, after: &ClusterMap) -> Result<(), String> {
        after.check_invariants().map_err(|e| e.to_string())?;
        let changed = before != after;
        let expected_epoch = if changed {
            before.epoch.next()
        } else {
            before.epoch
        };
        if after.epoch != expected_epoch {
            return Err(format!("epoch {} after {}", after.epoch, before.epoch));
        }
        for n in &after.nodes {
            let old = before.state_of(n.id);
            if !allowed(old, n.state) {
                return Err(format!("node {} went {old:?} -> {}", n.id, n.state));
            }
        }
        for (p, info) in after.table.iter().enumerate() {
            let p32 = p as u32;
            if let Some(old) = before.table.get(p) {
                if info.term < old.term {
                    return Err(format!(
                        "partition {p} term went back {} -> {}",
                        old.term, info.term
                    ));
                }
            }
            if let Some(&first) = info.replicas.first() {
                let seen = *self.primaries.entry((p32, info.term)).or_insert(first);
                if seen != first {
                    return Err(format!(
                        "partition {p} term {} has primaries {seen} and {first}",
                        info.term
                    ));
                }
            }
            let acked = self.acked.get(&p32).copied().unwrap_or(0);
            for &n in &info.replicas {
                if !info.is_stale(n) && self.held(p32, n) != acked {
                    return Err(format!(
                        "partition {p}: non-stale replica {n} holds {} of {acked} acknowledged writes",
                        self.held(p32, n)
                    ));
                }
            }
        }
        Ok(())
    }
}

fn allowed(old: Option<NodeState>, new: NodeState) -> bool {
    use NodeState::*;
    match old {
        // A registration may form the cluster or join it in the same step.
        None => matches!(new, Joining | Recovering | Active),
        Some(old) if old == new => true,
        Some(old) => matches!(
            (old, new),
            (_, Removed)
                | (Joining, Recovering | Active | Down)
                | (Recovering, Active | Down)
                | (Active, Down)
                | (Down, Recovering | Active | Joining)
        ),
    }
}

fn run(replicas: u32, ops: &[Op]) -> Result<(), String> {
    let mut map = ClusterMap::new(P, replicas).unwrap();
    let mut model = Model::default();
    for (i, op) in ops.iter().enumerate() {
        let now = i as u64 * 100;
        let event = match *op {
            Op::Register(id) => Event::Register(spec(id)),
            Op::Down(id) => Event::Down { node: NodeId(id) },
            Op::Up(id) => Event::Up { node: NodeId(id) },
            Op::CatchUp(id) => Event::Progress {
                node: NodeId(id),
                caught_up: model.catch_up(&map, NodeId(id)),
            },
            Op::Remove(id) => Event::Remove { node: NodeId(id) },
            Op::Drain(id) => Event::Drain { node: NodeId(id) },
            Op::Undrain(id) => Event::Undrain { node: NodeId(id) },
            Op::Rebuild(id) => Event::Rebuild { node: NodeId(id) },
        };
        let Ok((next, _actions)) = step(&map, event.clone(), now) else {
            continue; // refused: the map is unchanged
        };
        if let Op::Remove(id) = *op {
            model.accept_removal_loss(&map, &next, NodeId(id));
        }
        model
            .check(&map, &next)
            .map_err(|e| format!("step {i} {event:?}: {e}"))?;
        map = next;
        model.write(&map);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_after_any_event_sequence(
        replicas in 1u32..=3,
        ops in prop::collection::vec(op(), 1..60),
    ) {
        if let Err(e) = run(replicas, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// Found by the proptest: a learner on the host of a departing copy was
/// paired with another copy, and its switch put two copies on one host.
#[test]
fn frozen_learner_must_replace_the_copy_on_its_host() {
    use Op::*;
    let ops = [
        Register(2),
        Register(0),
        Register(5),
        Register(4),
        Down(0),
        Register(0),
        Register(1),
        CatchUp(4),
    ];
    run(3, &ops).unwrap();
}

/// Found by the proptest: a Down learner's catch-up report was trusted, so
/// it switched in without the writes acknowledged while it was away.
#[test]
fn frozen_down_learner_must_catch_up_again() {
    use Op::*;
    run(1, &[Register(0), Register(6), Down(6), CatchUp(6), Up(6)]).unwrap();
}
