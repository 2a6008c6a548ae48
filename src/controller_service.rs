//! `tandem controller`: the controller state machine behind a TCP listener.
//!
//! Nodes register and heartbeat here; heartbeat answers carry the map when a
//! node's copy is older, so a map change reaches every node within one
//! heartbeat period. Operator commands (`remove`, `drain`, `safe-to-stop`,
//! `status`) arrive the same way. The map is persisted (write, fsync,
//! rename) before any change is announced.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use controller::{Controller, Event, Status};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::control::{
    CommandReply, ControlRequest, ControllerInfo, HeartbeatReply, SafeToStopReply, StatusReply,
};
use crate::net::{self, Reply, ReplyFuture};
use crate::proto::{ErrorCode, Frame, Kind};

#[derive(Clone, Debug, clap::Args)]
pub struct ControllerArgs {
    #[arg(long, default_value_t = 1)]
    pub id: u32,
    /// Address for nodes and clients (native protocol, control frames).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Where the cluster map is persisted.
    #[arg(long)]
    pub data: PathBuf,
    /// Other controllers of the group. Not supported yet: a single controller only.
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

pub struct Service {
    id: u32,
    addr: String,
    controller: Mutex<Controller>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub async fn run(args: ControllerArgs, shutdown: broadcast::Sender<()>) -> anyhow::Result<()> {
    if !args.peers.is_empty() {
        anyhow::bail!("--peers: replicated controllers are not supported yet; run one controller without --peers");
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create {}", args.data.display()))?;
    let config = controller::Config {
        partitions: args.partitions,
        replicas: args.replicas,
        heartbeat_ms: args.heartbeat.as_millis() as u64,
        down_after_ms: args.down_after.as_millis() as u64,
        rebuild_after_ms: args.rebuild_after.map(|d| d.as_millis() as u64),
    };
    let map_path = args.data.join("map.json");
    let controller = Controller::open(config, &map_path).with_context(|| {
        format!(
            "cannot open the controller state in {}",
            args.data.display()
        )
    })?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let service = Arc::new(Service {
        id: args.id,
        addr: args.listen.to_string(),
        controller: Mutex::new(controller),
    });
    tracing::info!(addr = %args.listen, epoch = service.controller.lock().expect("poisoned").map().epoch.0, "controller up");

    let ticker = service.clone();
    let mut tick_shutdown = shutdown.subscribe();
    let heartbeat = args.heartbeat;
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(heartbeat);
        loop {
            tokio::select! {
                _ = tick_shutdown.recv() => return,
                _ = interval.tick() => {}
            }
            let svc = ticker.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let mut c = svc.controller.lock().expect("poisoned");
                match c.tick(now_ms()) {
                    Ok(actions) => log_actions(&actions),
                    Err(e) => tracing::error!("tick failed: {e}"),
                }
            })
            .await;
        }
    });
    net::serve(listener, service, shutdown.subscribe()).await;
    Ok(())
}

fn log_actions(actions: &[controller::Action]) {
    for a in actions {
        tracing::info!(?a, "map change");
    }
}

impl net::Handler for Service {
    fn handle(self: &Arc<Self>, frame: Frame) -> ReplyFuture {
        if frame.kind != Kind::Control {
            return net::ready(Err((
                ErrorCode::BadRequest,
                format!(
                    "a controller only takes control frames, not {:?}",
                    frame.kind
                ),
            )));
        }
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
        // Map changes fsync the map file: run them off the async workers.
        Box::pin(async move {
            tokio::task::spawn_blocking(move || svc.handle_control(request))
                .await
                .unwrap_or_else(|e| {
                    Err((ErrorCode::Internal, format!("controller task failed: {e}")))
                })
        })
    }
}

impl Service {
    fn handle_control(&self, request: ControlRequest) -> Reply {
        let now = now_ms();
        let mut c = self.controller.lock().expect("poisoned");
        let internal = |e: controller::Error| (ErrorCode::BadRequest, e.to_string());
        let json =
            |v: serde_json::Result<Vec<u8>>| v.map_err(|e| (ErrorCode::Internal, e.to_string()));
        match request {
            ControlRequest::Register { spec } => {
                let actions = c.apply(Event::Register(spec), now).map_err(internal)?;
                log_actions(&actions);
                json(serde_json::to_vec(c.map()))
            }
            ControlRequest::Heartbeat { heartbeat, epoch } => {
                let actions = c.heartbeat(&heartbeat, now).map_err(internal)?;
                log_actions(&actions);
                let map = c.map();
                let reply = HeartbeatReply {
                    epoch: map.epoch.0,
                    heartbeat_ms: c.config().heartbeat_ms,
                    map: (map.epoch.0 > epoch).then(|| map.clone()),
                };
                json(serde_json::to_vec(&reply))
            }
            ControlRequest::GetMap => json(serde_json::to_vec(c.map())),
            ControlRequest::Status { partitions } => {
                let reply = StatusReply {
                    controller: ControllerInfo {
                        id: self.id,
                        addr: self.addr.clone(),
                        leader: true,
                    },
                    status: c.status(),
                    partitions: partitions.then(|| Status::partition_rows(c.map())),
                };
                json(serde_json::to_vec(&reply))
            }
            ControlRequest::Remove { node } => command(&mut c, Event::Remove { node }, now),
            ControlRequest::Drain { node } => command(&mut c, Event::Drain { node }, now),
            ControlRequest::SafeToStop { node } => {
                if c.map().node(node).is_none() {
                    return Err((
                        ErrorCode::BadRequest,
                        format!("node {node} is not in the cluster"),
                    ));
                }
                let partitions = match controller::safe_to_stop(c.map(), node) {
                    Ok(()) => Vec::new(),
                    Err(p) => p,
                };
                json(serde_json::to_vec(&SafeToStopReply {
                    node,
                    safe: partitions.is_empty(),
                    partitions,
                }))
            }
        }
    }
}

fn command(c: &mut Controller, event: Event, now: u64) -> Reply {
    let actions = c
        .apply(event, now)
        .map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
    log_actions(&actions);
    serde_json::to_vec(&CommandReply {
        epoch: c.map().epoch.0,
        actions,
    })
    .map_err(|e| (ErrorCode::Internal, e.to_string()))
}
