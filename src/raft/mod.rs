//! The controller group: the controller state machine replicated with Raft (openraft).
//!
//! Every map change is a log entry ([`Request`]: one [`controller::Event`] and
//! the leader's clock reading). An entry changes the map only when it is
//! committed and applied by [`state_machine::StateMachine`], which runs the
//! pure `controller::step` on every controller, so every controller computes
//! the same map, and the map's epoch advances only when an entry commits.
//! Liveness (heartbeats) stays soft state on the leader.
//!
//! - [`log_store`]: the Raft log, vote and committed id in files under the
//!   controller's `--data` (fsync before an append is acknowledged).
//! - [`state_machine`]: the map as applied state; snapshots on disk.
//! - [`network`]: Raft RPCs as `Raft` frames of the native protocol.

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use controller::{Action, Event};
use serde::{Deserialize, Serialize};

/// One map-changing input, as the leader proposes it. `now_ms` is read
/// once, on the leader, so that applying the entry is deterministic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub event: Event,
    pub now_ms: u64,
}

/// What applying one entry did: the map's epoch after it and the actions,
/// or why the state machine refused the event (the map is then unchanged).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub epoch: u64,
    pub actions: Vec<Action>,
    pub error: Option<String>,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} at {}", self.event, self.now_ms)
    }
}

openraft::declare_raft_types!(
    /// The controller group's Raft types: node ids are controller ids, a
    /// node is its RPC address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<u64>;

/// Timing of the group. Leaders heartbeat every 100 ms. A follower that
/// has followed a leader honours its lease (`election_timeout_max`, 1 s)
/// and then waits its own randomized election timeout (0.5-1 s) before it
/// stands: a dead leader is replaced about 1.5-2 s after its last
/// heartbeat, and a busy two-core machine needs a stall of more than 1.5 s
/// to trigger an election by accident.
pub fn config() -> anyhow::Result<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "tandem-controllers".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        // The map is small: a snapshot every 500 entries keeps the log short.
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(500),
        max_in_snapshot_log_to_keep: 100,
        ..Default::default()
    };
    Ok(config.validate()?)
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, fsync
/// the directory. A reader sees the old or the new content, never a mix.
pub(crate) fn write_atomic(
    path: &std::path::Path,
    bytes: &[u8],
    sync: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    if sync {
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    if sync {
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}
