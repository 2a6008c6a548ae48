//! `tandem sim placement`: balance and movement figures of the real placement code (`controller::place`, `controller::rebalance`).
//!
//! Nodes are numbered from 1 and spread over hosts round robin, as `tandem
//! up` does (`h1`, `h2`, ...); added nodes continue the round robin over the
//! same hosts.

use serde::Serialize;

use controller::{Candidate, Mode, NodeId};

use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Add this many nodes (a balancing rebalance).
    Add(u32),
    /// Remove this node for good (a repair: its copies are re-created elsewhere).
    Remove(u32),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlacementInput {
    pub nodes: u32,
    pub hosts: u32,
    pub replicas: u32,
    pub partitions: u32,
    pub change: Option<Change>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlacementReport {
    pub input: PlacementInput,
    pub before: Balance,
    pub after: Option<Balance>,
    pub movement: Option<Movement>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Balance {
    pub nodes: Vec<NodeLoad>,
    pub copies: Spread,
    pub primaries: Spread,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeLoad {
    pub id: u32,
    pub host: String,
    pub copies: u32,
    pub primaries: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub min: u32,
    pub max: u32,
    pub mean: f64,
    pub stddev: f64,
    pub max_over_mean: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Movement {
    /// Partition copies that now live on a node that did not hold them.
    pub copies_moved: u32,
    /// Partitions whose replica set changed.
    pub partitions_changed: u32,
    /// Partitions whose primary changed.
    pub primaries_changed: u32,
    /// The least that must move: the newcomers' fair share
    /// (`P * R / N_after` per added node), or the removed node's copies.
    pub ideal_copies: f64,
    /// `copies_moved / ideal_copies` (DESIGN.md bounds it at 1.25 for one node).
    pub moved_over_ideal: f64,
}

fn candidates(ids: impl Iterator<Item = u32>, hosts: u32) -> Vec<Candidate> {
    ids.map(|id| Candidate::new(NodeId(id), crate::host_of(id, hosts)))
        .collect()
}

pub fn placement(input: &PlacementInput) -> Result<PlacementReport> {
    if input.nodes == 0 {
        return Err(Error::Invalid("--nodes must be at least 1".into()));
    }
    if input.hosts == 0 || input.hosts > input.nodes {
        return Err(Error::Invalid(format!(
            "--hosts {} must be in 1..={}: every host runs at least one node",
            input.hosts, input.nodes
        )));
    }
    let before_nodes = candidates(1..=input.nodes, input.hosts);
    let table = controller::place(&before_nodes, input.partitions, input.replicas)?;
    let before = balance(&table, &before_nodes);
    let (after_nodes, after_table, ideal) = match input.change {
        None => {
            return Ok(PlacementReport {
                input: input.clone(),
                before,
                after: None,
                movement: None,
            })
        }
        Some(Change::Add(add)) => {
            if add == 0 {
                return Err(Error::Invalid("--add must be at least 1".into()));
            }
            let nodes = candidates(1..=input.nodes + add, input.hosts);
            let t = controller::rebalance(&table, &nodes, input.replicas, Mode::Balance)?;
            let ideal = input.partitions as f64 * input.replicas as f64 * add as f64
                / (input.nodes + add) as f64;
            (nodes, t, ideal)
        }
        Some(Change::Remove(id)) => {
            if id == 0 || id > input.nodes {
                return Err(Error::Placement(controller::Error::UnknownNode(NodeId(id))));
            }
            let nodes: Vec<Candidate> = before_nodes
                .iter()
                .filter(|c| c.id.0 != id)
                .cloned()
                .collect();
            let t = controller::rebalance(&table, &nodes, input.replicas, Mode::Repair)?;
            let held = table.iter().filter(|l| l.contains(&NodeId(id))).count();
            (nodes, t, held as f64)
        }
    };
    let movement = movement(&table, &after_table, ideal);
    Ok(PlacementReport {
        input: input.clone(),
        before,
        after: Some(balance(&after_table, &after_nodes)),
        movement: Some(movement),
    })
}

fn balance(table: &[Vec<NodeId>], nodes: &[Candidate]) -> Balance {
    let mut loads: Vec<NodeLoad> = nodes
        .iter()
        .map(|c| NodeLoad {
            id: c.id.0,
            host: c.host.clone(),
            copies: 0,
            primaries: 0,
        })
        .collect();
    let index = |id: NodeId| nodes.iter().position(|c| c.id == id);
    for list in table {
        for (slot, n) in list.iter().enumerate() {
            if let Some(i) = index(*n) {
                loads[i].copies += 1;
                if slot == 0 {
                    loads[i].primaries += 1;
                }
            }
        }
    }
    let copies = spread(loads.iter().map(|l| l.copies));
    let primaries = spread(loads.iter().map(|l| l.primaries));
    Balance {
        nodes: loads,
        copies,
        primaries,
    }
}

fn spread(values: impl Iterator<Item = u32> + Clone) -> Spread {
    let n = values.clone().count().max(1) as f64;
    let mean = values.clone().map(f64::from).sum::<f64>() / n;
    let var = values
        .clone()
        .map(|v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let max = values.clone().max().unwrap_or(0);
    Spread {
        min: values.min().unwrap_or(0),
        max,
        mean,
        stddev: var.sqrt(),
        max_over_mean: if mean > 0.0 { max as f64 / mean } else { 0.0 },
    }
}

fn movement(before: &[Vec<NodeId>], after: &[Vec<NodeId>], ideal: f64) -> Movement {
    let mut m = Movement {
        copies_moved: 0,
        partitions_changed: 0,
        primaries_changed: 0,
        ideal_copies: ideal,
        moved_over_ideal: 0.0,
    };
    for (old, new) in before.iter().zip(after) {
        let moved = new.iter().filter(|n| !old.contains(n)).count() as u32;
        m.copies_moved += moved;
        if moved > 0 || old.len() != new.len() {
            m.partitions_changed += 1;
        }
        if old.first() != new.first() {
            m.primaries_changed += 1;
        }
    }
    m.moved_over_ideal = if ideal > 0.0 {
        m.copies_moved as f64 / ideal
    } else {
        0.0
    };
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(nodes: u32, hosts: u32, replicas: u32, change: Option<Change>) -> PlacementInput {
        PlacementInput {
            nodes,
            hosts,
            replicas,
            partitions: 1024,
            change,
        }
    }

    #[test]
    fn a_balanced_cluster_spreads_copies_and_primaries() {
        let r = placement(&input(6, 6, 2, None)).unwrap();
        assert_eq!(r.before.nodes.len(), 6);
        let total: u32 = r.before.nodes.iter().map(|n| n.copies).sum();
        assert_eq!(total, 2048);
        let primaries: u32 = r.before.nodes.iter().map(|n| n.primaries).sum();
        assert_eq!(primaries, 1024);
        assert!(r.before.copies.max_over_mean <= 1.10);
        assert!(r.before.primaries.max_over_mean <= 1.10);
        assert!(r.after.is_none() && r.movement.is_none());
    }

    #[test]
    fn adding_a_node_moves_about_its_share() {
        let r = placement(&input(6, 6, 2, Some(Change::Add(1)))).unwrap();
        let m = r.movement.unwrap();
        assert!((m.ideal_copies - 2048.0 / 7.0).abs() < 1e-9);
        assert!(m.copies_moved > 0 && m.moved_over_ideal <= 1.25, "{m:?}");
        assert_eq!(r.after.unwrap().nodes.len(), 7);
    }

    #[test]
    fn removing_a_node_changes_only_its_partitions() {
        let r = placement(&input(4, 4, 2, Some(Change::Remove(2)))).unwrap();
        let held = r.before.nodes[1].copies;
        let m = r.movement.unwrap();
        assert_eq!(m.ideal_copies, held as f64);
        assert_eq!(m.copies_moved, held);
        assert_eq!(m.partitions_changed, held);
        let after = r.after.unwrap();
        assert!(after.nodes.iter().all(|n| n.id != 2));
    }

    #[test]
    fn fewer_hosts_than_replicas_is_refused_as_the_controller_does() {
        let err = placement(&input(4, 1, 2, None)).unwrap_err();
        assert!(matches!(
            err,
            Error::Placement(controller::Error::NotEnoughHosts {
                hosts: 1,
                replicas: 2
            })
        ));
        // Removing one of two hosts' nodes leaves one host for two copies.
        let err = placement(&input(2, 2, 2, Some(Change::Remove(1)))).unwrap_err();
        assert!(matches!(
            err,
            Error::Placement(controller::Error::NotEnoughHosts { .. })
        ));
        assert!(placement(&input(3, 4, 2, None)).is_err());
        assert!(placement(&input(3, 3, 2, Some(Change::Remove(9)))).is_err());
    }
}
