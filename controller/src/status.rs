//! `Status`: the summary `tandem status` prints, computed from the map (and lag reports).

use serde::{Deserialize, Serialize};

use crate::ids::{Epoch, NodeId, PartitionId, Term};
use crate::liveness::Liveness;
use crate::map::{ClusterMap, NodeState, PartitionState};

/// One node's line in `tandem status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    pub host: String,
    pub addr: String,
    pub http: String,
    pub graphite: String,
    pub state: NodeState,
    pub drained: bool,
    pub primaries: usize,
    pub secondaries: usize,
    /// Partitions it is building as a learner (pending moves onto it).
    pub learning: usize,
    /// Partitions this node still has to catch up on (stale or learning).
    pub catching_up: usize,
    /// Sum of the lag it last reported, in LSNs.
    pub lag_lsn: u64,
}

/// Partition counts by state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionCounts {
    pub total: u32,
    pub healthy: u32,
    pub moving: u32,
    pub degraded: u32,
    pub unavailable: u32,
}

/// One row of `tandem status --partitions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRow {
    pub id: PartitionId,
    pub replicas: Vec<NodeId>,
    pub term: Term,
    pub state: PartitionState,
    pub learners: Vec<NodeId>,
}

/// The cluster summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub epoch: Epoch,
    pub replicas: u32,
    pub formed: bool,
    /// Why the cluster has not formed yet (too few hosts), if it has not.
    pub waiting: Option<String>,
    pub nodes: Vec<NodeStatus>,
    pub partitions: PartitionCounts,
}

impl Status {
    pub fn new(map: &ClusterMap, liveness: Option<&Liveness>) -> Status {
        let pids = || (0..map.table.len() as u32).map(PartitionId);
        let nodes = map
            .nodes
            .iter()
            .map(|n| NodeStatus {
                id: n.id,
                host: n.host.clone(),
                addr: n.addr.clone(),
                http: n.http.clone(),
                graphite: n.graphite.clone(),
                state: n.state,
                drained: n.drained,
                primaries: map.primaries_of(n.id),
                secondaries: map.secondaries_of(n.id),
                learning: map
                    .table
                    .iter()
                    .filter(|i| i.learner(n.id).is_some())
                    .count(),
                catching_up: pids().filter(|&p| map.needs_catch_up(p, n.id)).count(),
                lag_lsn: liveness.map_or(0, |l| l.lagging(n.id).iter().map(|&(_, lag)| lag).sum()),
            })
            .collect();
        let mut counts = PartitionCounts {
            total: map.partitions,
            ..PartitionCounts::default()
        };
        if map.is_formed() {
            for p in pids() {
                match map.partition_state(p) {
                    PartitionState::Healthy => counts.healthy += 1,
                    PartitionState::Moving => counts.moving += 1,
                    PartitionState::Degraded => counts.degraded += 1,
                    PartitionState::Unavailable => counts.unavailable += 1,
                }
            }
        } else {
            counts.unavailable = map.partitions;
        }
        let waiting = (!map.is_formed()).then(|| {
            let hosts = crate::placement::host_count(&map.candidates());
            crate::Error::NotEnoughHosts {
                hosts,
                replicas: map.replicas,
            }
            .to_string()
        });
        Status {
            epoch: map.epoch,
            replicas: map.replicas,
            formed: map.is_formed(),
            waiting,
            nodes,
            partitions: counts,
        }
    }

    /// The per-partition rows for `--partitions`.
    pub fn partition_rows(map: &ClusterMap) -> Vec<PartitionRow> {
        map.table
            .iter()
            .enumerate()
            .map(|(p, info)| PartitionRow {
                id: PartitionId(p as u32),
                replicas: info.replicas.clone(),
                term: info.term,
                state: map.partition_state(PartitionId(p as u32)),
                learners: info.learners.iter().map(|l| l.node).collect(),
            })
            .collect()
    }
}
