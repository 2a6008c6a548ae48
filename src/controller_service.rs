//! `tandem controller`: one member of the controller group, behind a TCP listener.
//!
//! The controller state machine is replicated with Raft (`crate::raft`):
//! the leader turns registrations, heartbeats, its failure-detector ticks
//! and operator commands into events, proposes each as a log entry, and a
//! change takes effect (on every controller) only once the entry commits.
//! Liveness is soft state on the leader; a new leader starts it empty, so
//! every node gets a full `--down-after` before the new leader may declare
//! it Down. Followers answer control requests with `NotLeader` naming the
//! leader; every controller answers `Controller` (its own view) and the
//! Raft RPCs of its peers (`Raft` frames).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use controller::{Event, Liveness, Status};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::control::{
    CommandReply, ControlRequest, ControllerInfo, ControllerView, HeartbeatReply, NotLeader,
    SafeToStopReply, StatusReply,
};
use crate::net::{self, Reply, ReplyFuture};
use crate::proto::{ErrorCode, Frame, Kind};
use crate::raft::log_store::LogStore;
use crate::raft::network::{self as raft_net, Network};
use crate::raft::state_machine::StateMachine;
use crate::raft::{self, Raft, Request};

#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    /// This controller's id in the group (unique, stable across restarts).
    #[arg(long, default_value_t = 1)]
    pub id: u64,
    /// Address for nodes, clients and the other controllers (native protocol).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where the Raft log, vote and snapshots are kept.
    #[arg(long)]
    pub data: PathBuf,
    /// The controller group as ID=ADDR,... (this controller may be listed
    /// too). Without it, a group of one. Used only when the group is first
    /// formed; afterwards the membership lives in the Raft log.
    #[arg(long, value_delimiter = ',')]
    pub peers: Vec<String>,
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    #[arg(long, default_value_t = 1024)]
    pub partitions: u32,
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub down_after: Duration,
    /// Re-replicate a Down node's partitions after this long (off by default).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub rebuild_after: Option<Duration>,
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub heartbeat: Duration,
}

/// How long a proposal may wait for its commit.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The leader's soft state: liveness, valid for one term only.
struct LeaderState {
    term: u64,
    liveness: Liveness,
}

pub struct Service {
    id: u64,
    addr: String,
    raft: Raft,
    sm: StateMachine,
    config: controller::Config,
    leader: Mutex<LeaderState>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Parses `--peers` (ID=ADDR) into the group's members, this one included.
pub fn members(
    id: u64,
    listen: &str,
    peers: &[String],
) -> anyhow::Result<BTreeMap<u64, BasicNode>> {
    let mut members = BTreeMap::new();
    for p in peers.iter().filter(|p| !p.is_empty()) {
        let (pid, addr) = p
            .split_once('=')
            .with_context(|| format!("--peers {p:?}: expected ID=ADDR"))?;
        let pid: u64 = pid
            .parse()
            .with_context(|| format!("--peers {p:?}: the id is not a number"))?;
        addr.parse::<SocketAddr>()
            .with_context(|| format!("--peers {p:?}: not an ip:port address"))?;
        if members.insert(pid, BasicNode::new(addr)).is_some() {
            bail!("--peers lists controller {pid} twice");
        }
    }
    members.entry(id).or_insert_with(|| BasicNode::new(listen));
    if members.len() % 2 == 0 {
        bail!(
            "a controller group of {} cannot survive more failures than one of {}; use 1 or 3 controllers",
            members.len(),
            members.len() - 1
        );
    }
    Ok(members)
}

pub async fn run(args: ControllerArgs, shutdown: broadcast::Sender<()>) -> anyhow::Result<()> {
    let members = members(args.id, &args.listen.to_string(), &args.peers)?;
    let raft_dir = args.data.join("raft");
    std::fs::create_dir_all(&raft_dir)
        .with_context(|| format!("cannot create {}", raft_dir.display()))?;
    let config = controller::Config {
        partitions: args.partitions,
        replicas: args.replicas,
        heartbeat_ms: args.heartbeat.as_millis() as u64,
        down_after_ms: args.down_after.as_millis() as u64,
        rebuild_after_ms: args.rebuild_after.map(|d| d.as_millis() as u64),
    };
    // Validates the config the same way a single controller did.
    controller::Controller::new(config.clone())?;
    let log = LogStore::open(&raft_dir)
        .with_context(|| format!("cannot open the raft log in {}", raft_dir.display()))?;
    let sm = StateMachine::open(&raft_dir, args.partitions, args.replicas)?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let raft = Raft::new(args.id, Arc::new(raft::config()?), Network, log, sm.clone())
        .await
        .context("cannot start raft")?;
    let service = Arc::new(Service {
        id: args.id,
        addr: members[&args.id].addr.clone(),
        raft: raft.clone(),
        sm,
        config,
        leader: Mutex::new(LeaderState {
            term: 0,
            liveness: Liveness::default(),
        }),
    });
    tracing::info!(id = args.id, addr = %args.listen, members = ?members.keys().collect::<Vec<_>>(), epoch = service.sm.with_map(|m| m.epoch.0), "controller up");

    let server = tokio::spawn(net::serve(listener, service.clone(), shutdown.subscribe()));
    // Forming the group: every member may initialize with the same
    // membership (openraft allows it); one already formed refuses, which is
    // expected after a restart.
    if !raft.is_initialized().await? {
        match raft.initialize(members).await {
            Ok(()) => tracing::info!("controller group formed"),
            Err(e) => tracing::info!("not forming the group: {e}"),
        }
    }
    tokio::spawn(watch_leadership(service.clone(), shutdown.subscribe()));
    tokio::spawn(tick_loop(
        service.clone(),
        args.heartbeat,
        shutdown.subscribe(),
    ));
    let _ = server.await;
    let _ = raft.shutdown().await;
    Ok(())
}

/// Logs leadership changes (the takeover bench reads these lines too).
async fn watch_leadership(service: Arc<Service>, mut shutdown: broadcast::Receiver<()>) {
    let mut metrics = service.raft.metrics();
    let mut seen = (None, 0);
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            (m.current_leader, m.current_term)
        };
        if now != seen {
            seen = now;
            match now.0 {
                Some(l) if l == service.id => {
                    tracing::info!(term = now.1, "this controller is the leader")
                }
                Some(l) => tracing::info!(term = now.1, leader = l, "following the leader"),
                None => tracing::info!(term = now.1, "no leader"),
            }
        }
        tokio::select! {
            _ = shutdown.recv() => return,
            changed = metrics.changed() => if changed.is_err() { return },
        }
    }
}

/// On the leader, every heartbeat period: silent nodes become `Down`
/// proposals (and due rebuilds `Rebuild`).
async fn tick_loop(service: Arc<Service>, period: Duration, mut shutdown: broadcast::Receiver<()>) {
    let mut interval = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = interval.tick() => {}
        }
        let Ok(term) = service.leader_term() else {
            continue;
        };
        let now = now_ms();
        let events = service
            .sm
            .with_map(|map| service.liveness(term, |l| l.tick(map, &service.config, now)));
        for event in events {
            match service.propose(event.clone(), now).await {
                Ok(r) => log_actions(&r.actions),
                Err((_, e)) => tracing::warn!(?event, "proposal not applied: {e}"),
            }
        }
    }
}

fn log_actions(actions: &[controller::Action]) {
    for a in actions {
        tracing::info!(?a, "map change");
    }
}

impl Service {
    /// The current term if this controller is the leader, else the
    /// `NotLeader` error naming the leader it knows.
    fn leader_term(&self) -> Result<u64, (ErrorCode, String)> {
        let m = self.raft.metrics().borrow().clone();
        if m.state == ServerState::Leader && m.current_leader == Some(self.id) {
            // A new leader's first entry is the blank entry of its term:
            // until it is applied, the map may lack entries committed by
            // the previous leader, and must not be served or acted on.
            if m.last_applied.map(|l| l.leader_id.term) != Some(m.current_term) {
                return Err((
                    ErrorCode::Unavailable,
                    format!(
                        "controller {} was just elected (term {}) and is still applying the log; retry",
                        self.id, m.current_term
                    ),
                ));
            }
            return Ok(m.current_term);
        }
        let leader = m.current_leader.filter(|&l| l != self.id).and_then(|l| {
            m.membership_config
                .nodes()
                .find(|(id, _)| **id == l)
                .map(|(id, n)| (*id, n.addr.clone()))
        });
        Err((
            ErrorCode::NotLeader,
            NotLeader::message(self.id, leader.as_ref().map(|(i, a)| (*i, a.as_str()))),
        ))
    }

    /// Runs `f` on the liveness of `term`; the first use in a new term
    /// starts from nothing (the grace period of a new leader).
    fn liveness<T>(&self, term: u64, f: impl FnOnce(&mut Liveness) -> T) -> T {
        let mut state = self.leader.lock().expect("poisoned");
        if state.term != term {
            tracing::info!(
                term,
                "new term: liveness starts over, every node gets a full --down-after"
            );
            *state = LeaderState {
                term,
                liveness: Liveness::default(),
            };
        }
        f(&mut state.liveness)
    }

    /// Proposes one event and waits until it is committed and applied.
    /// A controller that lost its leadership cannot get it committed.
    async fn propose(
        &self,
        event: Event,
        now_ms: u64,
    ) -> Result<raft::Response, (ErrorCode, String)> {
        let write = self.raft.client_write(Request { event, now_ms });
        // A leader cut off from the majority would wait forever: give up
        // (the entry may still commit later; the map is the truth).
        let Ok(written) = tokio::time::timeout(PROPOSE_TIMEOUT, write).await else {
            return Err((
                ErrorCode::Unavailable,
                format!("map change not committed within {PROPOSE_TIMEOUT:?}: no majority of controllers"),
            ));
        };
        match written {
            Ok(r) => match r.data.error {
                Some(e) => Err((ErrorCode::BadRequest, e)),
                None => Ok(r.data),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err((
                ErrorCode::NotLeader,
                NotLeader::message(
                    self.id,
                    f.leader_id
                        .zip(f.leader_node.as_ref().map(|n| n.addr.as_str())),
                ),
            )),
            Err(e) => Err((
                ErrorCode::Unavailable,
                format!("map change not committed: {e}"),
            )),
        }
    }

    fn view(&self) -> ControllerView {
        let m = self.raft.metrics().borrow().clone();
        let (epoch, status) = self
            .sm
            .with_map(|map| (map.epoch.0, Status::new(map, None)));
        ControllerView {
            id: self.id,
            addr: self.addr.clone(),
            role: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            epoch,
            last_applied: m.last_applied.map(|l| l.index),
            members: m
                .membership_config
                .nodes()
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
            status,
        }
    }

    async fn handle_control(&self, request: ControlRequest) -> Reply {
        let json =
            |v: serde_json::Result<Vec<u8>>| v.map_err(|e| (ErrorCode::Internal, e.to_string()));
        if let ControlRequest::Controller = request {
            return json(serde_json::to_vec(&self.view()));
        }
        let term = self.leader_term()?;
        let now = now_ms();
        match request {
            ControlRequest::Register { spec } => {
                self.liveness(term, |l| l.seen(spec.id, now));
                let r = self.propose(Event::Register(spec), now).await?;
                log_actions(&r.actions);
                json(self.sm.with_map(serde_json::to_vec))
            }
            ControlRequest::Heartbeat { heartbeat, epoch } => {
                let events = self
                    .sm
                    .with_map(|map| self.liveness(term, |l| l.heartbeat(map, &heartbeat, now)));
                for event in events {
                    match self.propose(event.clone(), now).await {
                        Ok(r) => log_actions(&r.actions),
                        Err((ErrorCode::BadRequest, e)) => {
                            tracing::warn!(?event, "event refused: {e}")
                        }
                        Err(e) => return Err(e),
                    }
                }
                let reply = self.sm.with_map(|map| HeartbeatReply {
                    epoch: map.epoch.0,
                    heartbeat_ms: self.config.heartbeat_ms,
                    map: (map.epoch.0 > epoch).then(|| map.clone()),
                });
                json(serde_json::to_vec(&reply))
            }
            ControlRequest::GetMap => json(self.sm.with_map(serde_json::to_vec)),
            ControlRequest::Status { partitions } => {
                let (status, rows) = self.sm.with_map(|map| {
                    let leader = self.leader.lock().expect("poisoned");
                    let liveness = (leader.term == term).then_some(&leader.liveness);
                    (
                        Status::new(map, liveness),
                        partitions.then(|| Status::partition_rows(map)),
                    )
                });
                json(serde_json::to_vec(&StatusReply {
                    controller: ControllerInfo {
                        id: self.id as u32,
                        addr: self.addr.clone(),
                        leader: true,
                    },
                    status,
                    partitions: rows,
                }))
            }
            ControlRequest::Remove { node } => self.command(Event::Remove { node }, now).await,
            ControlRequest::Drain { node } => self.command(Event::Drain { node }, now).await,
            ControlRequest::SafeToStop { node } => {
                let verdict = self.sm.with_map(|map| {
                    map.node(node).map(|_| {
                        controller::safe_to_stop(map, node)
                            .err()
                            .unwrap_or_default()
                    })
                });
                let Some(partitions) = verdict else {
                    return Err((
                        ErrorCode::BadRequest,
                        format!("node {node} is not in the cluster"),
                    ));
                };
                json(serde_json::to_vec(&SafeToStopReply {
                    node,
                    safe: partitions.is_empty(),
                    partitions,
                }))
            }
            ControlRequest::Controller => unreachable!("answered above"),
        }
    }

    async fn command(&self, event: Event, now: u64) -> Reply {
        let r = self.propose(event, now).await?;
        log_actions(&r.actions);
        serde_json::to_vec(&CommandReply {
            epoch: r.epoch,
            actions: r.actions,
        })
        .map_err(|e| (ErrorCode::Internal, e.to_string()))
    }
}

impl net::Handler for Service {
    fn handle(self: &Arc<Self>, frame: Frame) -> ReplyFuture {
        match frame.kind {
            Kind::Raft => {
                let raft = self.raft.clone();
                Box::pin(async move { raft_net::handle(raft, &frame.payload).await })
            }
            Kind::Control => {
                let request: ControlRequest = match serde_json::from_slice(&frame.payload) {
                    Ok(r) => r,
                    Err(e) => {
                        return net::ready(Err((
                            ErrorCode::BadRequest,
                            format!("malformed control request: {e}"),
                        )))
                    }
                };
                let svc = self.clone();
                Box::pin(async move { svc.handle_control(request).await })
            }
            other => net::ready(Err((
                ErrorCode::BadRequest,
                format!("a controller only takes control and raft frames, not {other:?}"),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_parse_into_an_odd_group() {
        let m = members(1, "127.0.0.1:1", &[]).unwrap();
        assert_eq!(m.len(), 1);
        let peers = vec!["2=127.0.0.1:2".to_string(), "3=127.0.0.1:3".to_string()];
        let m = members(1, "127.0.0.1:1", &peers).unwrap();
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(m[&1].addr, "127.0.0.1:1");
        let err = members(1, "127.0.0.1:1", &peers[..1]).unwrap_err();
        assert!(err.to_string().contains("use 1 or 3"), "{err}");
        let err = members(1, "127.0.0.1:1", &["2:127.0.0.1:2".to_string()]).unwrap_err();
        assert!(err.to_string().contains("ID=ADDR"), "{err}");
    }
}
