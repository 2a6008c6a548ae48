//! controller: placement, the cluster map, membership and failover as a pure state machine.
//!
//! No sockets and no storage engine here: the binary wires [`Controller`] to
//! the network, and persists nothing but the map file this crate writes.
//!
//! # Pieces
//!
//! - [`partition_of`]: `resource -> partition`, `xxh3_64(resource) % P`, fixed forever.
//! - [`placement`]: `partition -> replicas`, rendezvous hashing with bounded
//!   loads plus a balancing pass; host anti-affinity is a hard constraint; a
//!   pure function. [`place`] for a new cluster, [`rebalance`] for minimal
//!   movement from the current table. The module docs state exactly for
//!   which host layouts the 1.10 balance bound holds.
//! - [`ClusterMap`]: nodes (id, addresses, host, state), the partition table
//!   (replicas with the primary first, term, stale replicas, learners), the
//!   epoch. Wire form [`ClusterMap::to_wire`]; disk form [`ClusterMap::save`]
//!   (write, fsync, rename, fsync dir) and [`ClusterMap::load`].
//! - [`step`]: `(map, event, now) -> (map, actions)`, pure and deterministic.
//! - [`Liveness`]: heartbeats as soft state; [`Controller`] ties map,
//!   liveness and persistence together.
//! - [`Status`]: what `tandem status` prints.
//!
//! # Design decisions
//!
//! **Liveness is soft state.** Heartbeats (every 500 ms by default) only
//! update [`Liveness`]; they never change the map. [`Liveness::tick`] turns
//! silence past `down_after_ms` (3 s) into [`Event::Down`], a heartbeat from
//! a Down node into [`Event::Up`], and newly caught-up partitions reported in
//! a heartbeat into [`Event::Progress`]. Only [`Event`]s change the map, so
//! only they are replicated (the binary's Raft group, `src/raft`). A new
//! leader gives every node a full `down_after_ms` before declaring it Down.
//!
//! **Terms and epochs.** Every primary change bumps that partition's term;
//! every step that changes the map bumps the epoch by one.
//!
//! **Failover.** When a primary is not an Active copy (its node is Down, or
//! it is stale), the first Active copy that is not drained becomes primary,
//! term + 1. If no Active copy exists the partition is unavailable and its
//! primary stays listed: it holds every acknowledged write (nobody took
//! writes without it), so it is the authority when it returns.
//!
//! **Stale replicas.** While a partition takes writes (its primary serves),
//! its replicas on Down or Joining nodes miss them and are marked stale; a
//! stale replica never counts as an Active copy and is never promoted, until
//! its node reports it caught up. This is what makes "only Active replicas
//! serve reads and count towards an acknowledgement" safe across failures.
//!
//! **Down is not removed.** A Down node keeps its place in every replica
//! list; nothing is re-replicated. With `rebuild_after_ms` set, a node Down
//! that long is *evicted* ([`Event::Rebuild`]): learners are planned on other
//! hosts for its copies, exactly as for a removal, but the node is kept and
//! gets a fair share back through a rebalance when it returns.
//!
//! **Catch-up and moves.** One mechanism serves recovery, re-replication and
//! rebalance. A node streams a partition from [`ClusterMap::catch_up_source`]
//! (a non-stale replica on a live node, primary first; a Recovering replica
//! that was in sync when writes stopped qualifies, which lets a cluster whose
//! every node restarted recover without deadlock) and reports the partitions
//! it has caught up on in its heartbeat. Contract for the node side: report
//! a partition only when its applied LSN equals the source's, and keep
//! following the primary's stream afterwards. A move is a [`map::Learner`]:
//! the new replica catches up, then (once its node is Active) the replica
//! set switches — it takes the slot of the copy it replaces, term + 1 if that
//! was the primary — and then the old copy is dropped ([`Action::Drop`]).
//!
//! **Recovering -> Active.** A returning node is Recovering until every
//! partition it must catch up on (stale replicas and learners) is caught up,
//! except partitions that have no source to catch up from (all their other
//! copies are Down): those wait and do not hold the node back.
//!
//! **Primary balance comes back.** After a failover the promoted nodes carry
//! extra primaries. After every step, primaries are rebalanced over Active,
//! non-drained copies by swapping the primary with another replica of the
//! same partition (no data moves) whenever the primary's node leads at least
//! two more partitions than that replica's node, term + 1 per swap. This is
//! Kafka's preferred-leader election aimed at balance rather than at a fixed
//! preferred replica: once a node is Active again it gets its share of
//! primaries back.
//!
//! **Bootstrap.** Nodes register one by one and stay Joining until the
//! registered nodes span at least R hosts ([`Status::waiting`] says so:
//! a cluster with fewer hosts than R is refused with a clear error rather
//! than placed without anti-affinity; R is 1 to 5). Then every partition is placed at
//! once; partitions are empty, so nobody has anything to catch up and the
//! nodes go Joining -> Recovering -> Active in that same step. A node that
//! registers later is an Add: a balancing rebalance gives it about its ideal
//! share of copies as learners, and it is Recovering until they caught up.
//!
//! **Restarts.** A node that re-registers while the map still has it live
//! (a restart shorter than `down_after_ms`) only updates its addresses: no
//! write was acknowledged without it, since its primary waited for it. One
//! that re-registers while Down comes back as by [`Event::Up`].
//!
//! **Operator events.** [`Event::Remove`]: the node is Removed at once (it
//! no longer counts as a copy; a primary on it fails over) and its copies are
//! re-created on hosts that keep anti-affinity; only partitions that had a
//! copy on it move; refused with [`Error::NotEnoughHosts`] when the rest
//! spans fewer than R hosts. [`Event::Drain`]: the node leads nothing while
//! another Active copy can; partitions it cannot hand over are reported in
//! [`Action::DrainBlocked`]; a drain lasts until [`Event::Undrain`], or
//! until the node re-registers or comes back from Down. [`safe_to_stop`] lists partitions whose only Active
//! copy a node holds.
//!
//! **The data path never waits for the controller.** Nodes keep serving with
//! their last map; fencing is by term, carried in every message.

pub mod error;
pub mod ids;
pub mod liveness;
pub mod machine;
pub mod map;
pub mod placement;
pub mod status;

pub use error::{Error, Result};
pub use ids::{partition_of, Epoch, NodeId, PartitionId, Term};
pub use liveness::{Config, Controller, Heartbeat, Liveness};
pub use machine::{step, Action, Event};
pub use map::{
    safe_to_stop, ClusterMap, Learner, NodeInfo, NodeSpec, NodeState, PartitionInfo, PartitionState,
};
pub use placement::{place, rebalance, Candidate, Mode};
pub use status::{NodeStatus, PartitionCounts, PartitionRow, Status};
