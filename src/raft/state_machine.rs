//! The replicated state machine: the cluster map as the applied state of the Raft log, and its snapshots.
//!
//! Applying an entry runs the pure `controller::step` with the event and the
//! time the leader recorded in it, so every controller computes the same map
//! from the same log. A refused event (unknown node, too few hosts...) is
//! applied as a no-op with the reason in its [`Response`]. Snapshots are the
//! applied state as JSON in `raft/snapshot.json` (atomic write + fsync); a
//! restart loads the snapshot and openraft re-applies the committed entries
//! after it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use controller::ClusterMap;
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, EntryPayload, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageIOError,
    StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{Entry, LogId, Response, StorageError, TypeConfig};

/// What the log has produced so far.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Applied {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership<u64, BasicNode>,
    pub map: ClusterMap,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    applied: Applied,
}

/// The state machine. Clones share the state (the service reads the map
/// through [`StateMachine::applied`]).
#[derive(Clone)]
pub struct StateMachine {
    applied: Arc<RwLock<Applied>>,
    path: PathBuf,
    partitions: u32,
    replicas: u32,
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_state_machine(AnyError::error(e.to_string())).into()
}

fn snapshot_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::error(e.to_string())).into()
}

impl StateMachine {
    /// Opens the state machine under `dir`: the last snapshot, or an empty
    /// map of `partitions` x `replicas` for a new group. A snapshot of
    /// another shape is refused.
    pub fn open(dir: &Path, partitions: u32, replicas: u32) -> anyhow::Result<StateMachine> {
        let path = dir.join("snapshot.json");
        let applied = match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|e| {
                    anyhow::anyhow!(
                        "controller snapshot {} does not decode: {e}",
                        path.display()
                    )
                })?;
                stored.applied
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Applied {
                last_applied: None,
                membership: StoredMembership::default(),
                map: ClusterMap::new(partitions, replicas)?,
            },
            Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
        };
        let sm = StateMachine {
            applied: Arc::new(RwLock::new(applied)),
            path,
            partitions,
            replicas,
        };
        sm.check_shape(&sm.applied().map)?;
        Ok(sm)
    }

    fn check_shape(&self, map: &ClusterMap) -> anyhow::Result<()> {
        if (map.partitions, map.replicas) != (self.partitions, self.replicas) {
            anyhow::bail!(
                "stored map has {} partitions and {} replicas, config asks for {} and {}",
                map.partitions,
                map.replicas,
                self.partitions,
                self.replicas
            );
        }
        Ok(())
    }

    /// A copy of the applied state (the map only ever holds committed changes).
    pub fn applied(&self) -> Applied {
        self.applied.read().expect("poisoned").clone()
    }

    /// The applied map, shared without copying its table for each reader.
    pub fn with_map<T>(&self, f: impl FnOnce(&ClusterMap) -> T) -> T {
        f(&self.applied.read().expect("poisoned").map)
    }

    fn snapshot_of(&self, applied: &Applied) -> SnapshotMeta<u64, BasicNode> {
        let last = applied.last_applied;
        SnapshotMeta {
            last_log_id: last,
            last_membership: applied.membership.clone(),
            snapshot_id: format!(
                "{}-{}-e{}",
                last.map_or(0, |l| l.leader_id.term),
                last.map_or(0, |l| l.index),
                applied.map.epoch.0
            ),
        }
    }

    /// Writes the snapshot file; returns the snapshot's data bytes.
    fn persist(&self, stored: &StoredSnapshot) -> std::io::Result<Vec<u8>> {
        let bytes = serde_json::to_vec(stored)?;
        super::write_atomic(&self.path, &bytes, true)?;
        Ok(serde_json::to_vec(&stored.applied)?)
    }
}

/// Applies one entry to `applied`; pure apart from the state it changes.
pub fn apply_entry(applied: &mut Applied, entry: Entry) -> Response {
    applied.last_applied = Some(entry.log_id);
    match entry.payload {
        EntryPayload::Blank => Response {
            epoch: applied.map.epoch.0,
            ..Response::default()
        },
        EntryPayload::Normal(request) => {
            match controller::step(&applied.map, request.event, request.now_ms) {
                Ok((next, actions)) => {
                    applied.map = next;
                    Response {
                        epoch: applied.map.epoch.0,
                        actions,
                        error: None,
                    }
                }
                Err(e) => Response {
                    epoch: applied.map.epoch.0,
                    actions: Vec::new(),
                    error: Some(e.to_string()),
                },
            }
        }
        EntryPayload::Membership(m) => {
            applied.membership = StoredMembership::new(Some(entry.log_id), m);
            Response {
                epoch: applied.map.epoch.0,
                ..Response::default()
            }
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let applied = self.applied();
        let stored = StoredSnapshot {
            meta: self.snapshot_of(&applied),
            applied,
        };
        let this = self.clone();
        let (meta, data) = tokio::task::spawn_blocking(move || {
            this.persist(&stored).map(|data| (stored.meta, data))
        })
        .await
        .map_err(snapshot_err)?
        .map_err(snapshot_err)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<u64, BasicNode>), StorageError> {
        let a = self.applied.read().expect("poisoned");
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut applied = self.applied.write().expect("poisoned");
        Ok(entries
            .into_iter()
            .map(|e| apply_entry(&mut applied, e))
            .collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let applied: Applied = serde_json::from_slice(snapshot.get_ref()).map_err(read_err)?;
        self.check_shape(&applied.map).map_err(read_err)?;
        applied.map.validate().map_err(read_err)?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            applied: applied.clone(),
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.persist(&stored))
            .await
            .map_err(snapshot_err)?
            .map_err(snapshot_err)?;
        *self.applied.write().expect("poisoned") = applied;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(read_err(e)),
        };
        let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(read_err)?;
        let data = serde_json::to_vec(&stored.applied).map_err(read_err)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use controller::{Event, NodeId, NodeSpec};
    use openraft::{CommittedLeaderId, Membership};

    use super::*;
    use crate::raft::Request;

    fn normal(index: u64, event: Event) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                event,
                now_ms: 1_000 + index,
            }),
        }
    }

    #[test]
    fn every_replica_computes_the_same_map_and_epochs_advance_only_on_change() {
        let log: Vec<Entry> = (1..=3)
            .map(|n| {
                normal(
                    n,
                    Event::Register(NodeSpec::bare(NodeId(n as u32), format!("h{n}"))),
                )
            })
            .chain([
                normal(4, Event::Remove { node: NodeId(9) }), // refused: unknown node
                normal(5, Event::Down { node: NodeId(2) }),
            ])
            .collect();
        let run = || {
            let mut a = Applied {
                last_applied: None,
                membership: StoredMembership::new(None, Membership::new(vec![], None)),
                map: ClusterMap::new(16, 2).unwrap(),
            };
            let responses: Vec<Response> = log
                .iter()
                .cloned()
                .map(|e| apply_entry(&mut a, e))
                .collect();
            (a, responses)
        };
        let (a, ra) = run();
        let (b, rb) = run();
        assert_eq!(a.map, b.map);
        assert_eq!(ra, rb);
        let epochs: Vec<u64> = ra.iter().map(|r| r.epoch).collect();
        assert_eq!(
            epochs[3], epochs[2],
            "a refused event leaves the epoch: {ra:?}"
        );
        assert!(
            ra[3].error.as_deref().unwrap().contains("node 9"),
            "{:?}",
            ra[3]
        );
        assert!(epochs[4] > epochs[3], "{epochs:?}");
        assert_eq!(a.last_applied.map(|l| l.index), Some(5));
    }

    #[tokio::test]
    async fn snapshots_survive_a_restart_and_refuse_another_shape() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path(), 16, 2).unwrap();
        sm.apply(vec![
            normal(1, Event::Register(NodeSpec::bare(NodeId(1), "h1"))),
            normal(2, Event::Register(NodeSpec::bare(NodeId(2), "h2"))),
        ])
        .await
        .unwrap();
        let before = sm.applied();
        let snap = sm.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(2));
        let reopened = StateMachine::open(dir.path(), 16, 2).unwrap();
        assert_eq!(reopened.applied().map, before.map);
        assert_eq!(reopened.applied().last_applied, before.last_applied);
        // Another follower installs it and ends up with the same map.
        let other = tempfile::tempdir().unwrap();
        let mut follower = StateMachine::open(other.path(), 16, 2).unwrap();
        follower
            .install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        assert_eq!(follower.applied().map, before.map);
        let err = StateMachine::open(dir.path(), 32, 2).err().unwrap();
        assert!(err.to_string().contains("16 partitions"), "{err}");
    }
}
