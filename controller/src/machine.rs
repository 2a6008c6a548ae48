//! The controller state machine: `(map, event, now) -> (new map, actions)`, pure.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{NodeId, PartitionId, Term};
use crate::map::{ClusterMap, Learner, NodeSpec, NodeState, PartitionInfo};
use crate::placement::{self, Mode};

/// A map-changing input. Only these are replicated (as Raft entries);
/// heartbeats are soft state in [`crate::Liveness`], which turns them into
/// events when they matter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A node announces itself: a new node joins (Add), a known one restarts.
    Register(NodeSpec),
    /// The node was silent past `--down-after`.
    Down { node: NodeId },
    /// A Down node is heard from again.
    Up { node: NodeId },
    /// The node has caught up on these partitions (stale replicas or learners).
    Progress {
        node: NodeId,
        caught_up: Vec<PartitionId>,
    },
    /// Operator: permanent removal; its copies are re-replicated.
    Remove { node: NodeId },
    /// Operator: move every primary off the node.
    Drain { node: NodeId },
    /// Operator: end a drain; the node gets its share of primaries back.
    Undrain { node: NodeId },
    /// `--rebuild-after` expired for a Down node: re-replicate its copies.
    Rebuild { node: NodeId },
}

/// What the binary must do after a step (derived from the map change).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// The map changed: send it to every node.
    Publish {
        epoch: crate::ids::Epoch,
    },
    NodeState {
        node: NodeId,
        state: NodeState,
    },
    /// `node` is now primary of `partition` in `term`.
    Promote {
        partition: PartitionId,
        node: NodeId,
        term: Term,
    },
    /// `node` must stream `partition` from `source` and report progress.
    CatchUp {
        partition: PartitionId,
        node: NodeId,
        source: NodeId,
    },
    /// `node` no longer holds `partition`: it may delete its copy.
    Drop {
        partition: PartitionId,
        node: NodeId,
    },
    /// A drain could not move these primaries: no other Active copy.
    DrainBlocked {
        node: NodeId,
        partitions: Vec<PartitionId>,
    },
}

/// Upper bound on settle rounds; each round makes monotone progress, so a
/// valid map settles in a handful.
const SETTLE_ROUNDS_MAX: usize = 64;

/// The pure transition. On error the map is unchanged (the caller keeps it).
pub fn step(map: &ClusterMap, event: Event, now_ms: u64) -> Result<(ClusterMap, Vec<Action>)> {
    let mut next = map.clone();
    let drained = match &event {
        Event::Drain { node } => Some(*node),
        _ => None,
    };
    apply(&mut next, event, now_ms)?;
    settle(&mut next, now_ms);
    if next != *map {
        next.epoch = map.epoch.next();
    }
    let mut actions = diff(map, &next);
    if let Some(node) = drained {
        let blocked: Vec<PartitionId> = (0..next.table.len() as u32)
            .map(PartitionId)
            .filter(|&p| next.replicas(p).first() == Some(&node))
            .collect();
        if !blocked.is_empty() {
            actions.push(Action::DrainBlocked {
                node,
                partitions: blocked,
            });
        }
    }
    Ok((next, actions))
}

fn apply(map: &mut ClusterMap, event: Event, now: u64) -> Result<()> {
    match event {
        Event::Register(spec) => register(map, spec, now),
        Event::Down { node } => {
            let info = live_node(map, node)?;
            if info.state != NodeState::Down {
                set_state(map, node, NodeState::Down, now);
            }
            // A Down learner stops following the primary: it must catch up again.
            for l in map.table.iter_mut().flat_map(|i| i.learners.iter_mut()) {
                if l.node == node {
                    l.caught_up = false;
                }
            }
            Ok(())
        }
        Event::Up { node } => up(map, node, now),
        Event::Progress { node, caught_up } => progress(map, node, &caught_up),
        Event::Remove { node } => remove(map, node, now),
        Event::Drain { node } => {
            live_node(map, node)?;
            map.node_mut(node).expect("checked").drained = true;
            Ok(())
        }
        Event::Undrain { node } => {
            live_node(map, node)?;
            map.node_mut(node).expect("checked").drained = false;
            Ok(())
        }
        Event::Rebuild { node } => rebuild(map, node),
    }
}

fn live_node(map: &ClusterMap, node: NodeId) -> Result<&crate::map::NodeInfo> {
    let info = map.node(node).ok_or(Error::UnknownNode(node))?;
    if info.state == NodeState::Removed {
        return Err(Error::NodeRemoved(node));
    }
    Ok(info)
}

fn set_state(map: &mut ClusterMap, node: NodeId, state: NodeState, now: u64) {
    let info = map.node_mut(node).expect("caller checked the node");
    info.state = state;
    info.since_ms = now;
}

fn register(map: &mut ClusterMap, spec: NodeSpec, now: u64) -> Result<()> {
    if spec.host.is_empty() {
        return Err(Error::InvalidField {
            field: "host",
            reason: format!("node {} has an empty host label", spec.id),
        });
    }
    if let Some(info) = map.node(spec.id) {
        if info.state == NodeState::Removed {
            return Err(Error::NodeRemoved(spec.id));
        }
        if info.host != spec.host {
            return Err(Error::HostMismatch {
                node: spec.id,
                registered: info.host.clone(),
                given: spec.host,
            });
        }
        let was_down = info.state == NodeState::Down;
        let info = map.node_mut(spec.id).expect("checked");
        (info.addr, info.http, info.graphite) = (spec.addr, spec.http, spec.graphite);
        info.drained = false;
        return if was_down {
            up(map, spec.id, now)
        } else {
            Ok(())
        };
    }
    if map.nodes.len() >= placement::NODES_MAX {
        return Err(Error::TooManyNodes(map.nodes.len() + 1));
    }
    let at = map.nodes.partition_point(|n| n.id < spec.id);
    map.nodes.insert(
        at,
        crate::map::NodeInfo {
            id: spec.id,
            host: spec.host,
            addr: spec.addr,
            http: spec.http,
            graphite: spec.graphite,
            state: NodeState::Joining,
            since_ms: now,
            drained: false,
            evicted: false,
        },
    );
    if map.is_formed() {
        plan(map, Mode::Balance)?;
        set_state(map, spec.id, NodeState::Recovering, now);
        return Ok(());
    }
    form(map, now);
    Ok(())
}

/// Bootstrap: once the registered nodes span at least R hosts, place every
/// partition on them. Partitions are empty, so nobody has to catch up: the
/// nodes go Joining -> Recovering here and to Active in the same settle.
fn form(map: &mut ClusterMap, now: u64) {
    let candidates = map.candidates();
    let Ok(table) = placement::place(&candidates, map.partitions, map.replicas) else {
        return; // not enough hosts yet: stay unformed, nodes stay Joining
    };
    map.table = table
        .into_iter()
        .map(|replicas| PartitionInfo {
            replicas,
            term: Term(1),
            stale: Vec::new(),
            learners: Vec::new(),
        })
        .collect();
    let joining: Vec<NodeId> = map
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Joining)
        .map(|n| n.id)
        .collect();
    for n in joining {
        set_state(map, n, NodeState::Recovering, now);
    }
}

fn up(map: &mut ClusterMap, node: NodeId, now: u64) -> Result<()> {
    let info = live_node(map, node)?;
    if info.state != NodeState::Down {
        return Ok(());
    }
    let evicted = info.evicted;
    let state = if map.is_formed() {
        NodeState::Recovering
    } else {
        NodeState::Joining
    };
    set_state(map, node, state, now);
    let info = map.node_mut(node).expect("checked");
    info.drained = false;
    info.evicted = false;
    if evicted && map.is_formed() {
        plan(map, Mode::Balance)?;
    }
    Ok(())
}

fn progress(map: &mut ClusterMap, node: NodeId, caught_up: &[PartitionId]) -> Result<()> {
    let state = live_node(map, node)?.state;
    if state == NodeState::Down {
        // Liveness sends Up first; a report that overtook it is not trusted.
        return Err(Error::WrongState {
            node,
            state,
            expected: "not Down",
        });
    }
    let partitions = map.partitions;
    if let Some(&p) = caught_up.iter().find(|p| p.0 >= partitions) {
        return Err(Error::UnknownPartition {
            partition: p,
            partitions,
        });
    }
    for &p in caught_up {
        let Some(info) = map.table.get_mut(p.0 as usize) else {
            continue; // not formed yet: nothing to catch up on
        };
        info.stale.retain(|&s| s != node);
        if let Some(l) = info.learners.iter_mut().find(|l| l.node == node) {
            l.caught_up = true;
        }
    }
    Ok(())
}

fn remove(map: &mut ClusterMap, node: NodeId, now: u64) -> Result<()> {
    live_node(map, node)?;
    let hosts = map.hosts_without(node);
    if map.is_formed() && hosts < map.replicas as usize {
        return Err(Error::NotEnoughHosts {
            hosts,
            replicas: map.replicas,
        });
    }
    set_state(map, node, NodeState::Removed, now);
    for info in &mut map.table {
        if info.replicas.first() == Some(&node) {
            info.term = info.term.next();
        }
        info.replicas.retain(|&n| n != node);
        info.stale.retain(|&n| n != node);
        info.learners.retain(|l| l.node != node);
        for l in &mut info.learners {
            if l.replaces == Some(node) {
                l.replaces = None;
            }
        }
    }
    if map.is_formed() {
        plan(map, Mode::Repair)?;
    }
    Ok(())
}

fn rebuild(map: &mut ClusterMap, node: NodeId) -> Result<()> {
    let info = live_node(map, node)?;
    if info.state != NodeState::Down {
        return Err(Error::WrongState {
            node,
            state: info.state,
            expected: "Down",
        });
    }
    if info.evicted || !map.is_formed() {
        return Ok(());
    }
    map.node_mut(node).expect("checked").evicted = true;
    plan(map, Mode::Repair)
}

/// Recomputes every partition's target from the current targets and turns
/// the difference into learners: a new replica catches up first, then the
/// replica set switches, then the old copy is dropped.
fn plan(map: &mut ClusterMap, mode: Mode) -> Result<()> {
    let targets: Vec<Vec<NodeId>> = map.table.iter().map(|i| i.target()).collect();
    let new_targets = placement::rebalance(&targets, &map.candidates(), map.replicas, mode)?;
    let host = |n: NodeId| map.node(n).map(|i| i.host.clone());
    let mut learners: Vec<Vec<Learner>> = Vec::with_capacity(new_targets.len());
    for (info, target) in map.table.iter().zip(new_targets) {
        let added: Vec<NodeId> = target
            .iter()
            .copied()
            .filter(|n| !info.replicas.contains(n))
            .collect();
        let mut removed: Vec<NodeId> = info
            .replicas
            .iter()
            .copied()
            .filter(|n| !target.contains(n))
            .collect();
        // A learner on the host of a copy that goes must replace that copy,
        // or the switch would put two copies on one host.
        let mut pairs: Vec<(NodeId, Option<NodeId>)> = Vec::new();
        let mut unpaired = Vec::new();
        for a in added {
            match removed.iter().position(|&r| host(r) == host(a)) {
                Some(i) => pairs.push((a, Some(removed.remove(i)))),
                None => unpaired.push(a),
            }
        }
        let mut rest = removed.into_iter();
        pairs.extend(unpaired.into_iter().map(|a| (a, rest.next())));
        pairs.sort_by_key(|&(a, _)| target.iter().position(|&t| t == a));
        learners.push(
            pairs
                .into_iter()
                .map(|(node, replaces)| Learner {
                    node,
                    replaces,
                    caught_up: info.learner(node).is_some_and(|l| l.caught_up),
                })
                .collect(),
        );
    }
    for (info, l) in map.table.iter_mut().zip(learners) {
        info.learners = l;
    }
    Ok(())
}

/// Applies the consequences of the event until nothing changes: Recovering
/// nodes that have caught up become Active, caught-up learners switch in,
/// primaries that cannot serve are replaced, replicas that miss writes are
/// marked stale; then primaries are rebalanced over Active copies.
fn settle(map: &mut ClusterMap, now: u64) {
    for _ in 0..SETTLE_ROUNDS_MAX {
        let mut changed = activate_ready(map, now);
        changed |= switch_learners(map);
        changed |= promote(map);
        changed |= mark_stale(map);
        changed |= rescue_orphans(map);
        if !changed {
            break;
        }
    }
    let snapshot = map.clone();
    let mut replicas: Vec<Vec<NodeId>> = map.table.iter().map(|i| i.replicas.clone()).collect();
    let changed = placement::balance_primaries(&mut replicas, |p, n| {
        snapshot.is_active_copy(p, n) && !snapshot.node(n).is_some_and(|i| i.drained)
    });
    for p in changed {
        let info = &mut map.table[p.0 as usize];
        info.replicas = std::mem::take(&mut replicas[p.0 as usize]);
        info.term = info.term.next();
    }
}

/// A Recovering node becomes Active once it has caught up on everything it
/// can: every stale replica and learner of it either caught up or has no
/// source to catch up from (that partition then waits for its source).
fn activate_ready(map: &mut ClusterMap, now: u64) -> bool {
    let ready: Vec<NodeId> = map
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Recovering)
        .map(|n| n.id)
        .filter(|&n| {
            (0..map.table.len() as u32)
                .map(PartitionId)
                .all(|p| !map.needs_catch_up(p, n) || map.catch_up_source(p, n).is_none())
        })
        .collect();
    for &n in &ready {
        set_state(map, n, NodeState::Active, now);
    }
    !ready.is_empty()
}

fn switch_learners(map: &mut ClusterMap) -> bool {
    let mut changed = false;
    for p in 0..map.table.len() {
        let ready: Vec<Learner> = map.table[p]
            .learners
            .iter()
            .filter(|l| l.caught_up && map.state_of(l.node) == Some(NodeState::Active))
            .cloned()
            .collect();
        for l in ready {
            let hosts_ok = {
                let info = &map.table[p];
                let host = &map.node(l.node).expect("learner is a known node").host;
                info.replicas
                    .iter()
                    .filter(|&&r| Some(r) != l.replaces)
                    .all(|&r| map.node(r).is_some_and(|i| &i.host != host))
            };
            let r = map.replicas as usize;
            let info = &mut map.table[p];
            info.learners.retain(|x| x.node != l.node);
            changed = true;
            let slot = l
                .replaces
                .and_then(|x| info.replicas.iter().position(|&n| n == x));
            match slot {
                _ if !hosts_ok => {}
                Some(slot) => {
                    let old = std::mem::replace(&mut info.replicas[slot], l.node);
                    info.stale.retain(|&s| s != old);
                    if slot == 0 {
                        info.term = info.term.next();
                    }
                }
                None if info.replicas.len() < r => {
                    info.replicas.push(l.node);
                    if info.replicas.len() == 1 {
                        info.term = info.term.next();
                    }
                }
                None => {}
            }
        }
    }
    changed
}

/// Replaces primaries that do not serve (or are drained) by an Active copy,
/// non-drained first; term + 1.
fn promote(map: &mut ClusterMap) -> bool {
    let mut changed = false;
    for p in 0..map.table.len() {
        let pid = PartitionId(p as u32);
        let drained = |n: NodeId| map.node(n).is_some_and(|i| i.drained);
        let active = map.active_replicas(pid);
        let Some(&first) = map.table[p].replicas.first() else {
            continue;
        };
        let current_ok = active.first() == Some(&first) && !drained(first);
        if current_ok || active.is_empty() {
            continue;
        }
        let pick = active
            .iter()
            .copied()
            .find(|&n| !drained(n))
            .unwrap_or(active[0]);
        if pick == first {
            continue;
        }
        let info = &mut map.table[p];
        let slot = info
            .replicas
            .iter()
            .position(|&n| n == pick)
            .expect("active copy");
        info.replicas.swap(0, slot);
        info.term = info.term.next();
        changed = true;
    }
    changed
}

/// While a partition takes writes (its primary serves), replicas on nodes
/// that are Down or Joining miss them: they become stale.
fn mark_stale(map: &mut ClusterMap) -> bool {
    let mut changed = false;
    for p in 0..map.table.len() {
        let pid = PartitionId(p as u32);
        if map.primary(pid).is_none() {
            continue;
        }
        let missing: Vec<NodeId> = map.table[p]
            .replicas
            .iter()
            .copied()
            .filter(|&n| {
                matches!(map.state_of(n), Some(NodeState::Down | NodeState::Joining))
                    && !map.table[p].is_stale(n)
            })
            .collect();
        changed |= !missing.is_empty();
        map.table[p].stale.extend(missing);
    }
    changed
}

/// A partition whose every remaining replica is stale (its up-to-date copy
/// was removed by the operator) would stay unavailable forever: its
/// remaining copies become authoritative, accepting the loss the removal
/// implied. A partition left with no replica at all (every copy removed)
/// restarts, empty, on its learners.
fn rescue_orphans(map: &mut ClusterMap) -> bool {
    let mut changed = false;
    for info in &mut map.table {
        if info.replicas.is_empty() && !info.learners.is_empty() {
            info.replicas = info.learners.drain(..).map(|l| l.node).collect();
            info.term = info.term.next();
            changed = true;
        }
        if !info.replicas.is_empty() && info.replicas.iter().all(|n| info.stale.contains(n)) {
            info.stale.clear();
            changed = true;
        }
    }
    changed
}

/// The actions implied by the change from `old` to `new`.
fn diff(old: &ClusterMap, new: &ClusterMap) -> Vec<Action> {
    let mut actions = Vec::new();
    if old.epoch != new.epoch {
        actions.push(Action::Publish { epoch: new.epoch });
    }
    for n in &new.nodes {
        if old.state_of(n.id) != Some(n.state) {
            actions.push(Action::NodeState {
                node: n.id,
                state: n.state,
            });
        }
    }
    for p in 0..new.table.len() as u32 {
        diff_partition(old, new, PartitionId(p), &mut actions);
    }
    actions
}

fn diff_partition(old: &ClusterMap, new: &ClusterMap, p: PartitionId, actions: &mut Vec<Action>) {
    let info = new.partition(p).expect("in range");
    let old_info = old.partition(p);
    if old_info.map(|i| i.term) != Some(info.term) {
        if let Some(&node) = info.replicas.first() {
            actions.push(Action::Promote {
                partition: p,
                node,
                term: info.term,
            });
        }
    }
    let holders = |i: &PartitionInfo| -> Vec<NodeId> {
        let mut h = i.replicas.clone();
        h.extend(i.learners.iter().map(|l| l.node));
        h
    };
    let now_held = holders(info);
    if let Some(o) = old_info {
        for n in holders(o).into_iter().filter(|n| !now_held.contains(n)) {
            actions.push(Action::Drop {
                partition: p,
                node: n,
            });
        }
    }
    let wants = |m: &ClusterMap, n: NodeId| -> Option<NodeId> {
        let live = !matches!(
            m.state_of(n),
            Some(NodeState::Down | NodeState::Removed) | None
        );
        if live && m.needs_catch_up(p, n) {
            m.catch_up_source(p, n)
        } else {
            None
        }
    };
    for n in now_held {
        if let Some(source) = wants(new, n) {
            if wants(old, n) != Some(source) {
                actions.push(Action::CatchUp {
                    partition: p,
                    node: n,
                    source,
                });
            }
        }
    }
}
