//! Failure detection as soft state, and `Controller`: the map, the liveness tracker and persistence together.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::ids::{NodeId, PartitionId};
use crate::machine::{step, Action, Event};
use crate::map::{ClusterMap, NodeState};
use crate::status::Status;

/// Controller settings (`tandem controller` flags).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub partitions: u32,
    pub replicas: u32,
    /// How often nodes send heartbeats (nodes read it from the controller).
    pub heartbeat_ms: u64,
    /// Silence after which a node is Down (`--down-after`).
    pub down_after_ms: u64,
    /// Down time after which its copies are rebuilt elsewhere
    /// (`--rebuild-after`); `None` (the default) never rebuilds.
    pub rebuild_after_ms: Option<u64>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            partitions: 1024,
            replicas: 2,
            heartbeat_ms: 500,
            down_after_ms: 3_000,
            rebuild_after_ms: None,
        }
    }
}

impl Config {
    fn validate(&self) -> Result<()> {
        ClusterMap::new(self.partitions, self.replicas)?;
        if self.heartbeat_ms == 0 || self.down_after_ms <= self.heartbeat_ms {
            return Err(Error::InvalidField {
                field: "down_after_ms",
                reason: format!(
                    "{} ms must exceed the heartbeat interval of {} ms",
                    self.down_after_ms, self.heartbeat_ms
                ),
            });
        }
        Ok(())
    }
}

/// What a node sends every `heartbeat_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: NodeId,
    /// Partitions it has caught up on (stale replicas and learners).
    pub caught_up: Vec<PartitionId>,
    /// Partitions still catching up, with their lag in LSNs (status only).
    pub lagging: Vec<(PartitionId, u64)>,
}

/// Last-heard times and reported lag: soft state, never replicated. A
/// restarted controller starts with an empty tracker and gives every node a
/// full `down_after_ms` from its first tick before declaring it Down.
#[derive(Clone, Debug, Default)]
pub struct Liveness {
    last_seen_ms: BTreeMap<NodeId, u64>,
    lagging: BTreeMap<NodeId, Vec<(PartitionId, u64)>>,
}

impl Liveness {
    /// Records a heartbeat; returns the map-changing events it implies: `Up`
    /// for a node the map has Down, `Progress` for newly caught-up partitions.
    pub fn heartbeat(&mut self, map: &ClusterMap, hb: &Heartbeat, now_ms: u64) -> Vec<Event> {
        let Some(info) = map.node(hb.node) else {
            return Vec::new(); // unknown nodes must register first
        };
        if info.state == NodeState::Removed {
            return Vec::new();
        }
        self.last_seen_ms.insert(hb.node, now_ms);
        let mut lagging = hb.lagging.clone();
        lagging.truncate(map.partitions as usize);
        self.lagging.insert(hb.node, lagging);
        let mut events = Vec::new();
        if info.state == NodeState::Down {
            events.push(Event::Up { node: hb.node });
        }
        let mut news: Vec<PartitionId> = hb
            .caught_up
            .iter()
            .copied()
            .filter(|&p| p.0 >= map.partitions || map.needs_catch_up(p, hb.node))
            .collect();
        news.sort();
        news.dedup();
        if !news.is_empty() {
            events.push(Event::Progress {
                node: hb.node,
                caught_up: news,
            });
        }
        events
    }

    /// Turns silence into `Down`, and long downtime into `Rebuild` when
    /// `rebuild_after_ms` is set and the other hosts can take the copies.
    pub fn tick(&mut self, map: &ClusterMap, config: &Config, now_ms: u64) -> Vec<Event> {
        let mut events = Vec::new();
        for n in &map.nodes {
            match n.state {
                NodeState::Joining | NodeState::Recovering | NodeState::Active => {
                    let last = *self.last_seen_ms.entry(n.id).or_insert(now_ms);
                    if now_ms.saturating_sub(last) >= config.down_after_ms {
                        events.push(Event::Down { node: n.id });
                    }
                }
                NodeState::Down => {
                    let due = config
                        .rebuild_after_ms
                        .is_some_and(|after| now_ms.saturating_sub(n.since_ms) >= after);
                    let room = map.hosts_without(n.id) >= map.replicas as usize;
                    if due && room && !n.evicted && map.is_formed() {
                        events.push(Event::Rebuild { node: n.id });
                    }
                }
                NodeState::Removed => {}
            }
        }
        events
    }

    /// Counts `node` as heard from at `now_ms` (a registration): a node
    /// that restarts gets a full `down_after_ms` before it can be Down.
    pub fn seen(&mut self, node: NodeId, now_ms: u64) {
        self.last_seen_ms.insert(node, now_ms);
    }

    /// The last reported lag of `node` per partition.
    pub fn lagging(&self, node: NodeId) -> &[(PartitionId, u64)] {
        self.lagging.get(&node).map_or(&[], |v| v.as_slice())
    }
}

/// The controller: the map, the liveness tracker, and optional persistence.
/// The binary feeds it registrations, heartbeats, operator commands and
/// ticks, and carries out the returned actions.
#[derive(Debug)]
pub struct Controller {
    map: ClusterMap,
    liveness: Liveness,
    config: Config,
    path: Option<PathBuf>,
}

impl Controller {
    /// A controller for a new cluster, in memory only.
    pub fn new(config: Config) -> Result<Controller> {
        config.validate()?;
        let map = ClusterMap::new(config.partitions, config.replicas)?;
        Ok(Controller {
            map,
            liveness: Liveness::default(),
            config,
            path: None,
        })
    }

    /// A controller persisting its map at `path`: it resumes from the map
    /// there if there is one (a restart), or starts a new cluster and writes
    /// it. A stored map with other partition or replica counts is refused.
    pub fn open(config: Config, path: &Path) -> Result<Controller> {
        config.validate()?;
        let map = if path.exists() {
            let map = ClusterMap::load(path)?;
            if (map.partitions, map.replicas) != (config.partitions, config.replicas) {
                return Err(Error::InvalidField {
                    field: "config",
                    reason: format!(
                        "stored map has {} partitions and {} replicas, config asks for {} and {}",
                        map.partitions, map.replicas, config.partitions, config.replicas
                    ),
                });
            }
            map
        } else {
            let map = ClusterMap::new(config.partitions, config.replicas)?;
            map.save(path)?;
            map
        };
        Ok(Controller {
            map,
            liveness: Liveness::default(),
            config,
            path: Some(path.to_path_buf()),
        })
    }

    pub fn map(&self) -> &ClusterMap {
        &self.map
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// Applies one map-changing event; the map is persisted before the
    /// actions are returned, so nothing is announced that a restart forgets.
    pub fn apply(&mut self, event: Event, now_ms: u64) -> Result<Vec<Action>> {
        if let Event::Register(spec) = &event {
            self.liveness.seen(spec.id, now_ms);
        }
        let (next, actions) = step(&self.map, event, now_ms)?;
        if next != self.map {
            if let Some(path) = &self.path {
                next.save(path)?;
            }
            self.map = next;
        }
        Ok(actions)
    }

    /// Records a heartbeat and applies what it implies.
    pub fn heartbeat(&mut self, hb: &Heartbeat, now_ms: u64) -> Result<Vec<Action>> {
        let events = self.liveness.heartbeat(&self.map, hb, now_ms);
        self.apply_all(events, now_ms)
    }

    /// Checks for silent nodes and due rebuilds; call every heartbeat period.
    pub fn tick(&mut self, now_ms: u64) -> Result<Vec<Action>> {
        let events = self.liveness.tick(&self.map, &self.config, now_ms);
        self.apply_all(events, now_ms)
    }

    fn apply_all(&mut self, events: Vec<Event>, now_ms: u64) -> Result<Vec<Action>> {
        let mut actions = Vec::new();
        for e in events {
            actions.extend(self.apply(e, now_ms)?);
        }
        Ok(actions)
    }

    pub fn status(&self) -> Status {
        Status::new(&self.map, Some(&self.liveness))
    }
}
