//! Placement: partitions -> replica lists, a pure function of (nodes, partitions, R).
//!
//! Rendezvous hashing with bounded loads, then a balancing pass:
//!
//! 1. Every partition ranks every node by `xxh3(partition, node)` (a stable
//!    hash, never a per-process random one, so every controller computes the
//!    same answer).
//! 2. Empty slots are filled in rank order, skipping nodes whose host already
//!    holds a copy of the partition (host anti-affinity is a hard constraint)
//!    and nodes already at the load bound `ceil(P * R / N)`.
//! 3. [`Mode::Balance`] then moves single copies from the most loaded node to
//!    the least loaded one until no two nodes differ by more than one copy (or
//!    anti-affinity forbids every further move). Each move is chosen by the
//!    rendezvous rank of the receiving node, so the result stays
//!    deterministic, and each move strictly reduces imbalance, so the number
//!    of moves is the minimum the greedy can reach.
//! 4. Primaries (slot 0) are balanced by swapping the primary with another
//!    replica of the same partition: a primary swap moves no data.
//!
//! Incremental changes ([`rebalance`]) start from the current table, keep
//! every copy that is still allowed, and only fill holes ([`Mode::Repair`],
//! after a removal: only partitions that had a copy on the removed node
//! change) or fill holes and then balance ([`Mode::Balance`], after a node
//! joins: the new node receives about its ideal share, taken from the most
//! loaded nodes).
//!
//! When balance holds: with `N` nodes, `R` replicas and every host carrying
//! at most `N / R` nodes (`max_nodes_per_host * R <= N`), and `P` at least a
//! few dozen partitions per node, copies and primaries per node end within
//! max/mean <= 1.10. Layouts outside that condition are still placed with
//! anti-affinity intact, but a crowded host's nodes may have to hold more
//! (3 nodes on 2 hosts with R = 2: the lone node holds every partition).
//!
//! Movement: under the same condition (before and after), adding one node
//! with [`Mode::Balance`] moves at most 1.25x its ideal share of copies,
//! `P * R / (N + 1)` (in practice about 1.0x: the newcomer fills up to the
//! mean). Removing a node with [`Mode::Repair`] changes only the partitions
//! that had a copy on it, for every layout with at least R hosts left.
//! `tests/placement.rs` checks all of these with proptest.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::ids::{NodeId, PartitionId};

/// Largest replication factor accepted.
pub const REPLICAS_MAX: u32 = 5;
/// Largest partition count accepted.
pub const PARTITIONS_MAX: u32 = 1 << 16;
/// Largest number of nodes accepted by placement.
pub const NODES_MAX: usize = 1024;

const RANK_SEED: u64 = 0x7461_6e64_656d_0001; // "tandem" + version 1

/// A node that may hold copies: its id and its physical host label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: NodeId,
    pub host: String,
}

impl Candidate {
    pub fn new(id: NodeId, host: impl Into<String>) -> Candidate {
        Candidate {
            id,
            host: host.into(),
        }
    }
}

/// What an incremental placement may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Only fill missing copies; every surviving copy stays where it is.
    Repair,
    /// Fill missing copies, then move copies until loads are balanced.
    Balance,
}

/// The rendezvous rank of `node` for `partition`: higher is preferred.
pub fn rank(partition: PartitionId, node: NodeId) -> u64 {
    let mut key = [0u8; 8];
    key[..4].copy_from_slice(&partition.0.to_le_bytes());
    key[4..].copy_from_slice(&node.0.to_le_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&key, RANK_SEED)
}

/// A fresh placement of `partitions` partitions with `replicas` copies each.
///
/// Returns one replica list per partition, primary first. Pure and
/// deterministic: the same inputs (in any order) give the same table.
pub fn place(nodes: &[Candidate], partitions: u32, replicas: u32) -> Result<Vec<Vec<NodeId>>> {
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return Err(Error::InvalidPartitions(partitions));
    }
    let empty = vec![Vec::new(); partitions as usize];
    rebalance(&empty, nodes, replicas, Mode::Balance)
}

/// A new placement derived from `current` with minimal movement.
///
/// Copies on nodes absent from `nodes`, and second copies on one host, are
/// dropped; missing copies are filled; in [`Mode::Balance`] copies move until
/// loads are even and primaries are rebalanced. A surviving copy keeps its
/// slot, so a partition whose primary survives keeps its primary.
pub fn rebalance(
    current: &[Vec<NodeId>],
    nodes: &[Candidate],
    replicas: u32,
    mode: Mode,
) -> Result<Vec<Vec<NodeId>>> {
    let cluster = Cluster::new(nodes, replicas)?;
    if current.is_empty() || current.len() > PARTITIONS_MAX as usize {
        return Err(Error::InvalidPartitions(current.len() as u32));
    }
    let mut table = Table::keep(&cluster, current);
    table.fill(&cluster);
    if mode == Mode::Balance {
        table.balance(&cluster);
    }
    let mut out: Vec<Vec<NodeId>> = table
        .slots
        .iter()
        .map(|s| s.iter().map(|&i| cluster.ids[i]).collect())
        .collect();
    if mode == Mode::Balance {
        balance_primaries(&mut out, |_, _| true);
    }
    Ok(out)
}

/// Swaps primaries within replica lists until no partition's primary has at
/// least two more primaries than another replica of it that may lead.
///
/// `can_lead(partition, node)` says whether `node` may be primary of
/// `partition` (the controller passes "is an Active copy and not drained").
/// Returns the partitions whose primary changed, in order.
pub fn balance_primaries(
    table: &mut [Vec<NodeId>],
    can_lead: impl Fn(PartitionId, NodeId) -> bool,
) -> Vec<PartitionId> {
    let mut count: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (p, replicas) in table.iter().enumerate() {
        for (slot, &n) in replicas.iter().enumerate() {
            let c = count.entry(n).or_default();
            if slot == 0 && can_lead(PartitionId(p as u32), n) {
                *c += 1;
            }
        }
    }
    let mut changed = Vec::new();
    // Every swap lowers the sum of squared counts by at least 2, so this ends.
    loop {
        let mut swapped = false;
        for (p, replicas) in table.iter_mut().enumerate() {
            let pid = PartitionId(p as u32);
            let Some(&o) = replicas.first() else { continue };
            if !can_lead(pid, o) {
                continue;
            }
            let best = replicas
                .iter()
                .enumerate()
                .skip(1)
                .filter(|&(_, &u)| can_lead(pid, u) && count[&u] + 2 <= count[&o])
                .min_by_key(|&(_, u)| count[u])
                .map(|(slot, _)| slot);
            if let Some(slot) = best {
                let u = replicas[slot];
                replicas.swap(0, slot);
                *count.get_mut(&o).expect("counted") -= 1;
                *count.get_mut(&u).expect("counted") += 1;
                changed.push(pid);
                swapped = true;
            }
        }
        if !swapped {
            break;
        }
    }
    changed.sort();
    changed.dedup();
    changed
}

/// Number of distinct hosts among `nodes`.
pub fn host_count(nodes: &[Candidate]) -> usize {
    let mut hosts: Vec<&str> = nodes.iter().map(|c| c.host.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    hosts.len()
}

/// The validated node set, indexed densely and sorted by id.
struct Cluster {
    ids: Vec<NodeId>,
    host: Vec<usize>,
    replicas: usize,
}

impl Cluster {
    fn new(nodes: &[Candidate], replicas: u32) -> Result<Cluster> {
        if replicas == 0 || replicas > REPLICAS_MAX {
            return Err(Error::InvalidReplicas(replicas));
        }
        if nodes.len() > NODES_MAX {
            return Err(Error::TooManyNodes(nodes.len()));
        }
        let mut sorted: Vec<&Candidate> = nodes.iter().collect();
        sorted.sort_by_key(|c| c.id);
        if let Some(w) = sorted.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(Error::DuplicateNode(w[0].id));
        }
        let hosts = host_count(nodes);
        if hosts < replicas as usize {
            return Err(Error::NotEnoughHosts { hosts, replicas });
        }
        let mut names: Vec<&str> = sorted.iter().map(|c| c.host.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let host = sorted
            .iter()
            .map(|c| names.binary_search(&c.host.as_str()).expect("host listed"))
            .collect();
        Ok(Cluster {
            ids: sorted.iter().map(|c| c.id).collect(),
            host,
            replicas: replicas as usize,
        })
    }

    fn index(&self, id: NodeId) -> Option<usize> {
        self.ids.binary_search(&id).ok()
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

/// Replica slots by dense node index, with per-node copy counts.
struct Table {
    slots: Vec<Vec<usize>>,
    load: Vec<usize>,
}

impl Table {
    /// Keeps every current copy that is on a known node and on a host not
    /// already used by an earlier slot of the same partition.
    fn keep(cluster: &Cluster, current: &[Vec<NodeId>]) -> Table {
        let mut load = vec![0; cluster.len()];
        let slots = current
            .iter()
            .map(|replicas| {
                let mut kept: Vec<usize> = Vec::with_capacity(cluster.replicas);
                for i in replicas.iter().filter_map(|&id| cluster.index(id)) {
                    let host_free = kept.iter().all(|&k| cluster.host[k] != cluster.host[i]);
                    if host_free && kept.len() < cluster.replicas {
                        kept.push(i);
                        load[i] += 1;
                    }
                }
                kept
            })
            .collect();
        Table { slots, load }
    }

    fn host_free(&self, cluster: &Cluster, p: usize, node: usize) -> bool {
        self.slots[p]
            .iter()
            .all(|&k| cluster.host[k] != cluster.host[node])
    }

    /// Fills missing copies in rendezvous order under the load bound; when
    /// every allowed node is at the bound, the least loaded allowed node.
    fn fill(&mut self, cluster: &Cluster) {
        let total = self.slots.len() * cluster.replicas;
        let cap = total.div_ceil(cluster.len());
        for p in 0..self.slots.len() {
            if self.slots[p].len() >= cluster.replicas {
                continue;
            }
            let order = preference(cluster, p);
            while self.slots[p].len() < cluster.replicas {
                let allowed: Vec<usize> = order
                    .iter()
                    .copied()
                    .filter(|&n| self.host_free(cluster, p, n))
                    .collect();
                let pick = allowed
                    .iter()
                    .copied()
                    .find(|&n| self.load[n] < cap)
                    .or_else(|| allowed.iter().copied().min_by_key(|&n| self.load[n]));
                // Cluster::new checked hosts >= R, so a free host always exists.
                let n = pick.expect("a host without a copy exists");
                self.slots[p].push(n);
                self.load[n] += 1;
            }
        }
    }

    /// Moves copies from loaded to light nodes until loads differ by at most
    /// one or anti-affinity forbids every remaining move.
    fn balance(&mut self, cluster: &Cluster) {
        let mut order: Vec<usize> = (0..cluster.len()).collect();
        loop {
            order.sort_by_key(|&n| (std::cmp::Reverse(self.load[n]), n));
            let mut moved = false;
            'search: for &o in &order {
                for &u in order.iter().rev() {
                    if self.load[o] < self.load[u] + 2 {
                        break;
                    }
                    if let Some((p, slot)) = self.best_move(cluster, o, u) {
                        self.slots[p][slot] = u;
                        self.load[o] -= 1;
                        self.load[u] += 1;
                        moved = true;
                        break 'search;
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// The copy on `from` that `to` ranks highest among those it may take.
    fn best_move(&self, cluster: &Cluster, from: usize, to: usize) -> Option<(usize, usize)> {
        let same_host = cluster.host[from] == cluster.host[to];
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.contains(&to))
            .filter(|&(p, _)| same_host || self.host_free(cluster, p, to))
            .filter_map(|(p, s)| s.iter().position(|&n| n == from).map(|slot| (p, slot)))
            .max_by_key(|&(p, _)| rank(PartitionId(p as u32), cluster.ids[to]))
    }
}

/// Node indexes in rendezvous order for partition `p`.
fn preference(cluster: &Cluster, p: usize) -> Vec<usize> {
    let pid = PartitionId(p as u32);
    let mut order: Vec<(u64, usize)> = (0..cluster.len())
        .map(|n| (rank(pid, cluster.ids[n]), n))
        .collect();
    order.sort_unstable_by(|a, b| b.cmp(a));
    order.into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(spec: &[(u32, &str)]) -> Vec<Candidate> {
        spec.iter()
            .map(|&(id, h)| Candidate::new(NodeId(id), h))
            .collect()
    }

    /// Places and renders the table as "p: a,b" lines, or the error message.
    fn check(spec: &[(u32, &str)], partitions: u32, replicas: u32, expected: &str) {
        let got = match place(&nodes(spec), partitions, replicas) {
            Ok(table) => table
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|n| n.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .collect::<Vec<_>>()
                .join(" "),
            Err(e) => e.to_string(),
        };
        assert_eq!(got, expected);
    }

    #[test]
    fn refuses_bad_inputs_with_clear_errors() {
        check(
            &[(1, "a"), (2, "a")],
            4,
            2,
            "cluster has 1 distinct hosts but 2 replicas need as many hosts (host anti-affinity)",
        );
        check(
            &[],
            4,
            1,
            "cluster has 0 distinct hosts but 1 replicas need as many hosts (host anti-affinity)",
        );
        check(
            &[(1, "a")],
            4,
            0,
            "replication factor 0 is out of range 1..=5",
        );
        check(
            &[(1, "a")],
            0,
            1,
            "partition count 0 is out of range 1..=65536",
        );
        check(&[(1, "a"), (1, "b")], 4, 1, "node 1 is listed twice");
    }

    #[test]
    fn small_tables_are_balanced_and_respect_hosts() {
        // Two nodes on one host and one alone, R = 2: the lone node holds all.
        let table = place(&nodes(&[(1, "a"), (2, "a"), (3, "b")]), 6, 2).unwrap();
        assert!(table.iter().all(|r| r.len() == 2 && r.contains(&NodeId(3))));
        check(&[(1, "a")], 3, 1, "1 1 1");
        let table = place(&nodes(&[(1, "a"), (2, "b"), (3, "c")]), 3, 3).unwrap();
        assert!(table.iter().all(|r| r.len() == 3));
        let primaries: Vec<NodeId> = table.iter().map(|r| r[0]).collect();
        let mut sorted = primaries.clone();
        sorted.sort();
        assert_eq!(sorted, vec![NodeId(1), NodeId(2), NodeId(3)], "{table:?}");
    }

    #[test]
    fn placement_ignores_input_order() {
        let a = nodes(&[(1, "a"), (2, "b"), (3, "c"), (4, "a")]);
        let mut b = a.clone();
        b.reverse();
        assert_eq!(place(&a, 64, 2).unwrap(), place(&b, 64, 2).unwrap());
    }

    #[test]
    fn balance_primaries_respects_can_lead() {
        let mut table = vec![vec![NodeId(1), NodeId(2)]; 4];
        let changed = balance_primaries(&mut table, |_, n| n != NodeId(2));
        assert!(changed.is_empty());
        let changed = balance_primaries(&mut table, |_, _| true);
        assert_eq!(changed, vec![PartitionId(0), PartitionId(1)]);
        assert_eq!(table[0][0], NodeId(2));
        assert_eq!(table[2][0], NodeId(1));
    }
}
