//! The controller crate's error type: one variant per cause, messages name the ids.

use std::path::PathBuf;

use crate::ids::{NodeId, PartitionId};

/// Everything that can go wrong in placement, the map, or the state machine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cluster has {hosts} distinct hosts but {replicas} replicas need as many hosts (host anti-affinity)")]
    NotEnoughHosts { hosts: usize, replicas: u32 },
    #[error("replication factor {0} is out of range 1..={max}", max = crate::placement::REPLICAS_MAX)]
    InvalidReplicas(u32),
    #[error("partition count {0} is out of range 1..={max}", max = crate::placement::PARTITIONS_MAX)]
    InvalidPartitions(u32),
    #[error("too many nodes: {0} (limit {max})", max = crate::placement::NODES_MAX)]
    TooManyNodes(usize),
    #[error("node {0} is listed twice")]
    DuplicateNode(NodeId),
    #[error("node {0} is not in the cluster map")]
    UnknownNode(NodeId),
    #[error("node {0} was removed and cannot come back under the same id")]
    NodeRemoved(NodeId),
    #[error("node {node} is registered on host {registered:?}, not {given:?}")]
    HostMismatch {
        node: NodeId,
        registered: String,
        given: String,
    },
    #[error("node {node} is {state}, expected {expected}")]
    WrongState {
        node: NodeId,
        state: crate::map::NodeState,
        expected: &'static str,
    },
    #[error("partition {partition} is out of range (the cluster has {partitions})")]
    UnknownPartition {
        partition: PartitionId,
        partitions: u32,
    },
    #[error("current placement has {got} partitions, expected {expected}")]
    PlacementSize { got: usize, expected: usize },
    #[error("invalid field {field}: {reason}")]
    InvalidField { field: &'static str, reason: String },
    #[error("cluster map {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster map {path} does not decode: {source}")]
    Decode {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cluster map wire form does not decode: {0}")]
    Wire(serde_json::Error),
    #[error("cluster map is inconsistent: {0}")]
    Inconsistent(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
