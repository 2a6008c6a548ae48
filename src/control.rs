//! The control protocol: JSON requests to the controller in `Control` frames, and the client side the CLI and nodes use.

use std::time::Duration;

use anyhow::{anyhow, Context};
use controller::{ClusterMap, Heartbeat, NodeId, NodeSpec, PartitionId, Status};
use serde::{Deserialize, Serialize};

use crate::net::{self, ClientError};
use crate::proto::Kind;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    /// A node announces itself; the answer is the current map.
    Register {
        spec: NodeSpec,
    },
    /// A node's heartbeat; the answer carries the map when the node's epoch is older.
    Heartbeat {
        heartbeat: Heartbeat,
        epoch: u64,
    },
    GetMap,
    Status {
        partitions: bool,
    },
    Remove {
        node: NodeId,
    },
    Drain {
        node: NodeId,
    },
    SafeToStop {
        node: NodeId,
    },
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HeartbeatReply {
    pub epoch: u64,
    pub heartbeat_ms: u64,
    /// Set when the node's map is older than the controller's.
    pub map: Option<ClusterMap>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    pub controller: ControllerInfo,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<controller::PartitionRow>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControllerInfo {
    pub id: u32,
    pub addr: String,
    /// Whether this controller makes map changes (always, until controllers are replicated).
    pub leader: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SafeToStopReply {
    pub node: NodeId,
    pub safe: bool,
    /// Partitions whose only Active copy the node holds.
    pub partitions: Vec<PartitionId>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CommandReply {
    pub epoch: u64,
    pub actions: Vec<controller::Action>,
}

const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends one control request to the first controller that answers.
pub fn call_blocking<T: for<'de> Deserialize<'de>>(
    controllers: &[String],
    request: &ControlRequest,
) -> anyhow::Result<T> {
    let payload = serde_json::to_vec(request)?;
    let mut last: Option<ClientError> = None;
    for addr in controllers {
        match net::request_blocking(addr, Kind::Control, &payload, CONTROL_TIMEOUT) {
            Ok(bytes) => {
                return serde_json::from_slice(&bytes)
                    .with_context(|| format!("controller {addr} sent a malformed answer"))
            }
            Err(e @ ClientError::Remote { .. }) => return Err(anyhow!(e)),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => {
            Err(anyhow!(e).context("no controller answered; is the cluster running? (`tandem up`)"))
        }
        None => Err(anyhow!("no controller address given")),
    }
}

/// Waits until `nodes` nodes are registered and Active.
pub fn wait_until_active(
    controllers: &[String],
    nodes: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while std::time::Instant::now() < deadline {
        match call_blocking::<StatusReply>(
            controllers,
            &ControlRequest::Status { partitions: false },
        ) {
            Ok(reply) => {
                let active = reply
                    .status
                    .nodes
                    .iter()
                    .filter(|n| n.state == controller::NodeState::Active)
                    .count();
                if active >= nodes && reply.status.partitions.unavailable == 0 {
                    // Ready once every node also holds the controller's map:
                    // until then a node may still route by an older one.
                    let epoch = reply.status.epoch.0;
                    let behind: Vec<String> = reply
                        .status
                        .nodes
                        .iter()
                        .filter(|n| node_epoch(&n.addr) != Some(epoch))
                        .map(|n| n.id.to_string())
                        .collect();
                    if behind.is_empty() {
                        return Ok(());
                    }
                    last = format!(
                        "nodes {} do not have map epoch {epoch} yet",
                        behind.join(",")
                    );
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                last = format!("{active} of {nodes} nodes Active");
            }
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(anyhow!("not ready after {timeout:?}: {last}"))
}

/// The map epoch a node holds, if it answers.
fn node_epoch(addr: &str) -> Option<u64> {
    let bytes = net::request_blocking(addr, Kind::Map, &[], Duration::from_secs(2)).ok()?;
    ClusterMap::from_wire(&bytes).ok().map(|m| m.epoch.0)
}
