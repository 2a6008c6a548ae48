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
    config_with_snapshots(SNAPSHOT_EVERY)
}

/// The map is small: a snapshot every 500 entries keeps the log short.
const SNAPSHOT_EVERY: u64 = 500;

/// [`config`] with another snapshot interval (tests snapshot sooner).
pub fn config_with_snapshots(every: u64) -> anyhow::Result<openraft::Config> {
    let config = openraft::Config {
        cluster_name: "tandem-controllers".into(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(every),
        max_in_snapshot_log_to_keep: every / 5,
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

#[cfg(test)]
mod tests {
    //! A whole group in one process: three Rafts over real loopback
    //! sockets and real files.

    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use controller::{ClusterMap, NodeId, NodeSpec};
    use openraft::BasicNode;
    use tokio::net::TcpListener;
    use tokio::sync::broadcast;

    use super::*;
    use crate::net::{self, ReplyFuture};
    use crate::proto::{ErrorCode, Frame};

    /// One member's listener: it outlives the member's Raft, so that a
    /// "restart" (a new Raft from the same files) keeps the address. While
    /// no Raft is set, RPCs fail as if the member were down.
    #[derive(Default)]
    struct Router(Mutex<Option<Raft>>);

    impl net::Handler for Router {
        fn handle(self: &Arc<Self>, frame: Frame) -> ReplyFuture {
            let raft = self.0.lock().unwrap().clone();
            Box::pin(async move {
                match raft {
                    Some(raft) => network::handle(raft, &frame.payload).await,
                    None => Err((ErrorCode::Unavailable, "member down".into())),
                }
            })
        }
    }

    async fn start(
        id: u64,
        dir: &std::path::Path,
        router: &Router,
    ) -> (Raft, state_machine::StateMachine) {
        let log = log_store::LogStore::open(dir).unwrap();
        let sm = state_machine::StateMachine::open(dir, 16, 2).unwrap();
        let config = Arc::new(config_with_snapshots(20).unwrap());
        let raft = Raft::new(id, config, network::Network, log, sm.clone())
            .await
            .unwrap();
        *router.0.lock().unwrap() = Some(raft.clone());
        (raft, sm)
    }

    async fn propose(raft: &Raft, event: Event) -> Response {
        raft.client_write(Request { event, now_ms: 1 })
            .await
            .unwrap()
            .data
    }

    fn timeout() -> Option<Duration> {
        Some(Duration::from_secs(20))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_that_missed_purged_entries_catches_up_by_snapshot() {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let (_stop, _) = broadcast::channel::<()>(1);
        let mut members = BTreeMap::new();
        let mut routers = Vec::new();
        for id in 1..=3u64 {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            members.insert(id, BasicNode::new(l.local_addr().unwrap().to_string()));
            let router = Arc::new(Router::default());
            tokio::spawn(net::serve(l, router.clone(), _stop.subscribe()));
            routers.push(router);
        }
        let mut group = Vec::new();
        for (i, router) in routers.iter().enumerate() {
            group.push(start(i as u64 + 1, dirs[i].path(), router).await);
        }
        group[0].0.initialize(members.clone()).await.unwrap();
        let m = group[0]
            .0
            .wait(timeout())
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .unwrap();
        let leader = &group[m.current_leader.unwrap() as usize - 1].0;
        for n in 1..=3 {
            let spec = NodeSpec::bare(NodeId(n), format!("h{n}"));
            assert_eq!(propose(leader, Event::Register(spec)).await.error, None);
        }

        // Stop a follower; the others go on far past a snapshot and a purge.
        let follower = (1..=3u64).find(|&id| Some(id) != m.current_leader).unwrap();
        let f = follower as usize - 1;
        *routers[f].0.lock().unwrap() = None;
        group[f].0.shutdown().await.unwrap();
        for round in 0..60 {
            let node = NodeId(1);
            let event = if round % 2 == 0 {
                Event::Drain { node }
            } else {
                Event::Undrain { node }
            };
            assert_eq!(propose(leader, event).await.error, None);
        }
        let lm = leader
            .wait(timeout())
            .metrics(|m| m.purged.is_some(), "the leader purges its log")
            .await
            .unwrap();
        let want = lm.last_applied.unwrap().index;
        let leader_map: ClusterMap = group[lm.id as usize - 1].1.applied().map;

        // It comes back from its files.
        let back = start(follower, dirs[f].path(), &routers[f]).await;
        back.0
            .wait(timeout())
            .applied_index_at_least(Some(want), "the follower catches up")
            .await
            .unwrap();
        let fm = back.0.metrics().borrow().clone();
        assert!(
            fm.snapshot
                .is_some_and(|s| s.index >= lm.purged.unwrap().index),
            "caught up by snapshot: {fm:?}"
        );
        assert_eq!(back.1.applied().map, leader_map);
        assert!(dirs[f].path().join("snapshot.json").exists());
        for member in group.iter().chain([&back]) {
            let _ = member.0.shutdown().await;
        }
    }
}
