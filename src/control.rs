//! The control protocol: JSON requests to the controller in `Control` frames, and the client side the CLI and nodes use.
//!
//! Only the leader of the controller group answers; a follower answers
//! with a `NotLeader` error that names the leader (see [`NotLeader`]), and
//! [`call_blocking`] follows it. The one exception is
//! [`ControlRequest::Controller`], which every controller answers about
//! itself, so that `tandem status` works while no leader exists.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use controller::{ClusterMap, Heartbeat, NodeId, NodeSpec, PartitionId, Status};
use serde::{Deserialize, Serialize};

use crate::net::{self, ClientError};
use crate::proto::{ErrorCode, Kind};

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
    /// Any controller, leader or not: its own Raft view and the status of
    /// its last committed map.
    Controller,
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
    /// Whether this controller is the group's leader (the one that makes map changes).
    pub leader: bool,
}

/// One controller's view of the group, answered by every controller.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControllerView {
    pub id: u64,
    pub addr: String,
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub role: String,
    /// The leader this controller knows of, if any.
    pub leader: Option<u64>,
    pub term: u64,
    /// The epoch of the last map change this controller applied (committed).
    pub epoch: u64,
    /// Index of the last Raft entry it applied.
    pub last_applied: Option<u64>,
    /// The group's members, id and address.
    pub members: Vec<(u64, String)>,
    /// The status of its last committed map (without liveness details).
    pub status: Status,
}

/// The message of a `NotLeader` error: "controller 1 is not the leader;
/// the leader is controller 2 at 127.0.0.1:7000", or "...; no leader is
/// elected". [`NotLeader::parse`] reads the leader's address back.
pub struct NotLeader;

const LEADER_IS: &str = "the leader is controller ";

impl NotLeader {
    pub fn message(me: u64, leader: Option<(u64, &str)>) -> String {
        match leader {
            Some((id, addr)) => format!("controller {me} is not the leader; {LEADER_IS}{id} at {addr}"),
            None => format!(
                "controller {me} is not the leader; no leader is elected (a majority of the controllers must be up)"
            ),
        }
    }

    /// The leader's address named in a `NotLeader` message.
    pub fn parse(message: &str) -> Option<String> {
        let rest = &message[message.find(LEADER_IS)? + LEADER_IS.len()..];
        let addr = &rest[rest.find(" at ")? + 4..];
        Some(addr.trim().to_string())
    }
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

/// How long one controller may take to answer. A live leader answers in
/// milliseconds (one Raft round at most); a paused one must not hold a
/// node's heartbeat past `--down-after`, so the next address is tried soon.
const CONTROL_TIMEOUT: Duration = Duration::from_millis(1500);
/// A controller that failed is tried after the others for this long.
const PENALTY: Duration = Duration::from_secs(10);

/// The leader last seen by this process, tried first, and recent failures,
/// tried last. Process-wide: every caller (heartbeats, CLI) benefits.
static LEADER: Mutex<Option<String>> = Mutex::new(None);
static FAILED: Mutex<Option<HashMap<String, Instant>>> = Mutex::new(None);

fn order(controllers: &[String]) -> VecDeque<String> {
    let leader = LEADER.lock().expect("poisoned").clone();
    let failed = FAILED.lock().expect("poisoned");
    let recently_failed = |a: &String| {
        failed
            .as_ref()
            .and_then(|f| f.get(a))
            .is_some_and(|t| t.elapsed() < PENALTY)
    };
    let mut healthy: Vec<String> = Vec::new();
    let mut sick: Vec<String> = Vec::new();
    for a in leader.iter().chain(controllers) {
        if healthy.contains(a) || sick.contains(a) {
            continue;
        }
        if recently_failed(a) {
            sick.push(a.clone());
        } else {
            healthy.push(a.clone());
        }
    }
    healthy.into_iter().chain(sick).collect()
}

fn note(addr: &str, ok: bool) {
    let mut failed = FAILED.lock().expect("poisoned");
    let failed = failed.get_or_insert_with(HashMap::new);
    if ok {
        failed.remove(addr);
        *LEADER.lock().expect("poisoned") = Some(addr.to_string());
    } else {
        failed.insert(addr.to_string(), Instant::now());
        let mut leader = LEADER.lock().expect("poisoned");
        if leader.as_deref() == Some(addr) {
            *leader = None;
        }
    }
}

/// Sends one control request to the controller group's leader: the last
/// known leader first, then every address (recently failed ones last); a
/// follower's `NotLeader` answer sends the request on to the leader it
/// names. Fails when no controller is the leader.
pub fn call_blocking<T: for<'de> Deserialize<'de>>(
    controllers: &[String],
    request: &ControlRequest,
) -> anyhow::Result<T> {
    let payload = serde_json::to_vec(request)?;
    let mut queue = order(controllers);
    let mut tried: Vec<String> = Vec::new();
    let mut last: Option<anyhow::Error> = None;
    let mut followers = 0;
    while let Some(addr) = queue.pop_front() {
        if tried.contains(&addr) {
            continue;
        }
        tried.push(addr.clone());
        match net::request_blocking(&addr, Kind::Control, &payload, CONTROL_TIMEOUT) {
            Ok(bytes) => {
                note(&addr, true);
                return serde_json::from_slice(&bytes)
                    .with_context(|| format!("controller {addr} sent a malformed answer"));
            }
            Err(ClientError::Remote {
                code: ErrorCode::NotLeader,
                message,
                ..
            }) => {
                followers += 1;
                if let Some(leader) = NotLeader::parse(&message) {
                    queue.push_front(leader);
                }
                last = Some(anyhow!("{addr}: {message}"));
            }
            Err(e @ ClientError::Remote { .. }) => return Err(anyhow!(e)),
            Err(e) => {
                note(&addr, false);
                last = Some(anyhow!(e));
            }
        }
    }
    match last {
        Some(e) if followers > 0 => Err(e.context(
            "no controller leader: map changes (failover, recovery) wait for one; the data path keeps serving with the last map",
        )),
        Some(e) => Err(e.context("no controller answered; is the cluster running? (`tandem up`)")),
        None => Err(anyhow!("no controller address given")),
    }
}

/// Asks every controller for its own view, in parallel; `None` for one
/// that does not answer.
pub fn controller_views(controllers: &[String]) -> Vec<(String, Option<ControllerView>)> {
    let payload = serde_json::to_vec(&ControlRequest::Controller).expect("serializable");
    std::thread::scope(|s| {
        let handles: Vec<_> = controllers
            .iter()
            .map(|addr| {
                let payload = &payload;
                s.spawn(move || {
                    net::request_blocking(addr, Kind::Control, payload, CONTROL_TIMEOUT)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<ControllerView>(&b).ok())
                })
            })
            .collect();
        controllers
            .iter()
            .cloned()
            .zip(handles.into_iter().map(|h| h.join().ok().flatten()))
            .collect()
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_leader_names_the_leader() {
        let m = NotLeader::message(1, Some((2, "127.0.0.1:7000")));
        assert_eq!(NotLeader::parse(&m).as_deref(), Some("127.0.0.1:7000"));
        let none = NotLeader::message(1, None);
        assert!(none.contains("no leader"), "{none}");
        assert_eq!(NotLeader::parse(&none), None);
    }
}
