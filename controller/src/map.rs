//! The cluster map: nodes, the partition table, the epoch; its wire and disk forms.

use std::fmt;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{Epoch, NodeId, PartitionId, Term};
use crate::placement::{self, Candidate};

/// Largest cluster map accepted on the wire or from disk.
pub const MAP_BYTES_MAX: usize = 64 << 20;

/// A node's lifecycle state; spelled exactly so everywhere (Display and serde).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NodeState {
    Joining,
    Recovering,
    Active,
    Down,
    Removed,
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeState::Joining => "Joining",
            NodeState::Recovering => "Recovering",
            NodeState::Active => "Active",
            NodeState::Down => "Down",
            NodeState::Removed => "Removed",
        })
    }
}

/// What a node tells the controller when it registers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub id: NodeId,
    /// Physical host label (`--host`): copies of a partition never share one.
    pub host: String,
    /// Native protocol and peer RPC address.
    pub addr: String,
    pub http: String,
    pub graphite: String,
}

impl NodeSpec {
    /// A spec with addresses left empty (tests, simulations).
    pub fn bare(id: NodeId, host: impl Into<String>) -> NodeSpec {
        NodeSpec {
            id,
            host: host.into(),
            addr: String::new(),
            http: String::new(),
            graphite: String::new(),
        }
    }
}

/// One node as the map records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub host: String,
    pub addr: String,
    pub http: String,
    pub graphite: String,
    pub state: NodeState,
    /// Controller time (ms) of the last state change.
    pub since_ms: u64,
    /// An operator drained it: it leads no partition while another Active
    /// copy can. Cleared when the node comes back from Down or re-registers.
    #[serde(default)]
    pub drained: bool,
    /// Down for longer than `--rebuild-after`: its copies are being rebuilt
    /// elsewhere and placement ignores it until it returns.
    #[serde(default)]
    pub evicted: bool,
}

/// A replica being built by catch-up; it joins the replica set when caught up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Learner {
    pub node: NodeId,
    /// The replica it takes the slot of once it has caught up (that copy is
    /// then dropped); `None` fills a missing copy.
    pub replaces: Option<NodeId>,
    /// The node reported that it has caught up on this partition.
    pub caught_up: bool,
}

/// One partition's replica set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    /// Replica list; the first is the primary.
    pub replicas: Vec<NodeId>,
    /// Bumped at every primary change.
    pub term: Term,
    /// Replicas that may lack acknowledged writes (they were not Active while
    /// the partition took writes); they must catch up before they count.
    #[serde(default)]
    pub stale: Vec<NodeId>,
    /// Pending moves: new replicas catching up.
    #[serde(default)]
    pub learners: Vec<Learner>,
}

impl PartitionInfo {
    /// The replica list the pending moves lead to.
    pub fn target(&self) -> Vec<NodeId> {
        let mut target = self.replicas.clone();
        for l in &self.learners {
            match l.replaces.and_then(|r| target.iter().position(|&n| n == r)) {
                Some(slot) => target[slot] = l.node,
                None => target.push(l.node),
            }
        }
        target
    }

    pub fn is_stale(&self, node: NodeId) -> bool {
        self.stale.contains(&node)
    }

    /// Whether `node` holds a copy with every acknowledged write: a replica
    /// not marked stale (whatever its node's state). Only such a copy may
    /// be caught up from, or serve as a new primary's reference.
    pub fn is_in_sync(&self, node: NodeId) -> bool {
        self.replicas.contains(&node) && !self.is_stale(node)
    }

    pub fn learner(&self, node: NodeId) -> Option<&Learner> {
        self.learners.iter().find(|l| l.node == node)
    }
}

/// A partition's serving state, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionState {
    /// No Active copy: neither reads nor writes are served.
    Unavailable,
    /// Fewer Active copies than R: the primary acknowledges alone.
    Degraded,
    /// Fully replicated, with a move in progress.
    Moving,
    Healthy,
}

impl fmt::Display for PartitionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartitionState::Unavailable => "unavailable",
            PartitionState::Degraded => "degraded",
            PartitionState::Moving => "moving",
            PartitionState::Healthy => "healthy",
        })
    }
}

/// The live cluster map. Every node holds a copy; the epoch orders copies.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub epoch: Epoch,
    pub partitions: u32,
    pub replicas: u32,
    /// Sorted by id; Removed nodes stay listed so their ids are never reused.
    pub nodes: Vec<NodeInfo>,
    /// One entry per partition once the cluster has formed, empty before.
    pub table: Vec<PartitionInfo>,
}

impl ClusterMap {
    /// An empty map for a new cluster.
    pub fn new(partitions: u32, replicas: u32) -> Result<ClusterMap> {
        if partitions == 0 || partitions > placement::PARTITIONS_MAX {
            return Err(Error::InvalidPartitions(partitions));
        }
        if replicas == 0 || replicas > placement::REPLICAS_MAX {
            return Err(Error::InvalidReplicas(replicas));
        }
        Ok(ClusterMap {
            epoch: Epoch(0),
            partitions,
            replicas,
            nodes: Vec::new(),
            table: Vec::new(),
        })
    }

    /// The partition of `resource` in this cluster ([`crate::partition_of`]).
    pub fn partition_for(&self, resource: &[u8]) -> PartitionId {
        crate::ids::partition_of(resource, self.partitions)
    }

    /// Whether placement has happened (enough hosts have registered).
    pub fn is_formed(&self) -> bool {
        !self.table.is_empty()
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(|i| &self.nodes[i])
    }

    pub(crate) fn node_mut(&mut self, id: NodeId) -> Option<&mut NodeInfo> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .map(move |i| &mut self.nodes[i])
    }

    pub fn state_of(&self, id: NodeId) -> Option<NodeState> {
        self.node(id).map(|n| n.state)
    }

    pub fn partition(&self, p: PartitionId) -> Option<&PartitionInfo> {
        self.table.get(p.0 as usize)
    }

    /// The replica list of `p`, primary first (empty before formation).
    pub fn replicas(&self, p: PartitionId) -> &[NodeId] {
        self.partition(p).map_or(&[], |i| i.replicas.as_slice())
    }

    /// Whether `node` holds an Active, caught-up copy of `p`: it serves reads
    /// and counts towards acknowledgements.
    pub fn is_active_copy(&self, p: PartitionId, node: NodeId) -> bool {
        self.partition(p)
            .is_some_and(|i| i.is_in_sync(node) && self.state_of(node) == Some(NodeState::Active))
    }

    /// The primary of `p` if it serves (an Active copy); `None` means the
    /// partition is unavailable.
    pub fn primary(&self, p: PartitionId) -> Option<NodeId> {
        let first = *self.replicas(p).first()?;
        self.is_active_copy(p, first).then_some(first)
    }

    /// The Active copies of `p`, primary first.
    pub fn active_replicas(&self, p: PartitionId) -> Vec<NodeId> {
        self.replicas(p)
            .iter()
            .copied()
            .filter(|&n| self.is_active_copy(p, n))
            .collect()
    }

    pub fn partition_state(&self, p: PartitionId) -> PartitionState {
        let Some(info) = self.partition(p) else {
            return PartitionState::Unavailable;
        };
        let active = self.active_replicas(p).len();
        if self.primary(p).is_none() {
            PartitionState::Unavailable
        } else if active < self.replicas as usize {
            PartitionState::Degraded
        } else if !info.learners.is_empty() {
            PartitionState::Moving
        } else {
            PartitionState::Healthy
        }
    }

    pub fn is_degraded(&self, p: PartitionId) -> bool {
        self.partition_state(p) == PartitionState::Degraded
    }

    /// The node `node` should stream `p` from to catch up: a caught-up
    /// replica (not stale) on a live node, the primary first. A Recovering
    /// node that was in sync when writes stopped is a valid source, which is
    /// how a cluster whose every node restarted recovers without deadlock.
    pub fn catch_up_source(&self, p: PartitionId, node: NodeId) -> Option<NodeId> {
        let info = self.partition(p)?;
        info.replicas.iter().copied().find(|&r| {
            r != node
                && info.is_in_sync(r)
                && matches!(
                    self.state_of(r),
                    Some(NodeState::Active | NodeState::Recovering)
                )
        })
    }

    /// Whether `node` still has to catch up on `p` (stale replica or learner
    /// not yet caught up).
    pub fn needs_catch_up(&self, p: PartitionId, node: NodeId) -> bool {
        self.partition(p).is_some_and(|i| {
            (i.replicas.contains(&node) && i.is_stale(node))
                || i.learner(node).is_some_and(|l| !l.caught_up)
        })
    }

    /// Nodes placement may use: neither Removed nor evicted.
    pub fn candidates(&self) -> Vec<Candidate> {
        self.nodes
            .iter()
            .filter(|n| n.state != NodeState::Removed && !n.evicted)
            .map(|n| Candidate::new(n.id, n.host.clone()))
            .collect()
    }

    /// Distinct hosts among placement candidates, leaving `without` out.
    pub fn hosts_without(&self, without: NodeId) -> usize {
        let rest: Vec<Candidate> = self
            .candidates()
            .into_iter()
            .filter(|c| c.id != without)
            .collect();
        placement::host_count(&rest)
    }

    /// Partitions whose primary is `node`.
    pub fn primaries_of(&self, node: NodeId) -> usize {
        self.table
            .iter()
            .filter(|i| i.replicas.first() == Some(&node))
            .count()
    }

    /// Partitions where `node` is a non-primary replica.
    pub fn secondaries_of(&self, node: NodeId) -> usize {
        self.table
            .iter()
            .filter(|i| i.replicas.iter().skip(1).any(|&n| n == node))
            .count()
    }

    /// The wire form (JSON; the map is small and read by operators too).
    pub fn to_wire(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a cluster map always serializes")
    }

    /// Decodes and validates a wire form.
    pub fn from_wire(bytes: &[u8]) -> Result<ClusterMap> {
        if bytes.len() > MAP_BYTES_MAX {
            return Err(Error::InvalidField {
                field: "map",
                reason: format!(
                    "{} bytes exceed the {MAP_BYTES_MAX} byte limit",
                    bytes.len()
                ),
            });
        }
        let map: ClusterMap = serde_json::from_slice(bytes).map_err(Error::Wire)?;
        map.validate()?;
        Ok(map)
    }

    /// Persists atomically: write a temporary file, fsync it, rename it over
    /// `path`, fsync the directory. A crash leaves the old or the new map.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(&serde_json::to_vec_pretty(self).expect("a cluster map always serializes"))
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        fs::rename(&tmp, path).map_err(io)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(())
    }

    /// Loads and validates a map written by [`ClusterMap::save`].
    pub fn load(path: &Path) -> Result<ClusterMap> {
        let bytes = fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let map: ClusterMap = serde_json::from_slice(&bytes).map_err(|source| Error::Decode {
            path: path.to_path_buf(),
            source,
        })?;
        map.validate()?;
        Ok(map)
    }

    /// Structural checks for a map from outside (disk, wire).
    pub fn validate(&self) -> Result<()> {
        let bad = |s: String| Err(Error::Inconsistent(s));
        ClusterMap::new(self.partitions, self.replicas)?;
        if self.nodes.windows(2).any(|w| w[0].id >= w[1].id) {
            return bad("nodes are not sorted by unique id".into());
        }
        if !self.table.is_empty() && self.table.len() != self.partitions as usize {
            return bad(format!(
                "table has {} partitions, expected {}",
                self.table.len(),
                self.partitions
            ));
        }
        for (p, info) in self.table.iter().enumerate() {
            self.validate_partition(PartitionId(p as u32), info)
                .or_else(bad)?;
        }
        Ok(())
    }

    fn validate_partition(&self, p: PartitionId, info: &PartitionInfo) -> Result<(), String> {
        if info.replicas.len() > self.replicas as usize {
            return Err(format!(
                "partition {p} has more than {} replicas",
                self.replicas
            ));
        }
        let distinct_hosts = |list: &[NodeId]| -> Result<(), String> {
            let mut hosts = Vec::new();
            for &n in list {
                let node = self
                    .node(n)
                    .ok_or(format!("partition {p} names unknown node {n}"))?;
                if node.state == NodeState::Removed {
                    return Err(format!("partition {p} names removed node {n}"));
                }
                if hosts.contains(&node.host) {
                    return Err(format!(
                        "partition {p} has two copies on host {}",
                        node.host
                    ));
                }
                hosts.push(node.host.clone());
            }
            Ok(())
        };
        distinct_hosts(&info.replicas)?;
        distinct_hosts(&info.target())?;
        if let Some(s) = info.stale.iter().find(|s| !info.replicas.contains(s)) {
            return Err(format!("partition {p} marks non-replica {s} stale"));
        }
        if let Some(l) = info
            .learners
            .iter()
            .find(|l| info.replicas.contains(&l.node))
        {
            return Err(format!(
                "partition {p} learner {} is already a replica",
                l.node
            ));
        }
        Ok(())
    }

    /// Every invariant the state machine maintains: the structural ones, and
    /// "a partition with an Active copy has an Active primary".
    pub fn check_invariants(&self) -> Result<()> {
        self.validate()?;
        for p in 0..self.table.len() {
            let p = PartitionId(p as u32);
            if !self.active_replicas(p).is_empty() && self.primary(p).is_none() {
                return Err(Error::Inconsistent(format!(
                    "partition {p} has an active copy but its primary is not active"
                )));
            }
        }
        Ok(())
    }
}

/// Would stopping `node` leave some partition without an Active copy?
/// `Err` lists those partitions (where `node` holds the only Active copy).
pub fn safe_to_stop(map: &ClusterMap, node: NodeId) -> Result<(), Vec<PartitionId>> {
    let at_risk: Vec<PartitionId> = (0..map.table.len() as u32)
        .map(PartitionId)
        .filter(|&p| map.active_replicas(p) == [node])
        .collect();
    if at_risk.is_empty() {
        Ok(())
    } else {
        Err(at_risk)
    }
}

#[cfg(test)]
mod tests {
    use super::{Learner, PartitionInfo};
    use crate::ids::{NodeId, Term};

    #[test]
    fn only_a_replica_not_marked_stale_is_in_sync() {
        let info = PartitionInfo {
            replicas: vec![NodeId(1), NodeId(2)],
            term: Term(3),
            stale: vec![NodeId(2)],
            learners: vec![Learner {
                node: NodeId(4),
                replaces: Some(NodeId(2)),
                caught_up: true,
            }],
        };
        assert!(info.is_in_sync(NodeId(1)));
        assert!(!info.is_in_sync(NodeId(2)), "stale");
        assert!(!info.is_in_sync(NodeId(4)), "a learner, even caught up");
        assert!(!info.is_in_sync(NodeId(5)), "no copy at all (dropped)");
    }
}
