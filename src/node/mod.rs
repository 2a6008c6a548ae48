//! `tandem node`: one data node. Opens its store, registers with the controller, follows the map, and serves the listeners.
//!
//! Every node is a gateway (it takes writes for any partition and forwards
//! them to the primary), a primary and a replica for the partitions the map
//! gives it, and a query coordinator (it scatters a query over the Active
//! copies and evaluates it on the gathered series).

mod catchup;
mod graphite_listener;
mod http;
mod metrics;
pub mod msg;
mod query;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use controller::{ClusterMap, Heartbeat, NodeId, NodeSpec, PartitionId};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use crate::control::{self, ControlRequest, HeartbeatReply};
use crate::graphite::GraphiteConfig;
use crate::net::{self, Client, ReplyFuture};
use crate::proto::{ErrorCode, Frame, Kind};

pub use metrics::Metrics;

#[derive(Clone, Debug, clap::Args)]
pub struct NodeArgs {
    #[arg(long)]
    pub id: u32,
    /// Physical host label: the two copies of a partition never share one.
    #[arg(long)]
    pub host: String,
    #[arg(long)]
    pub data: PathBuf,
    /// Native protocol and peer RPC.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Graphite plaintext listener.
    #[arg(long)]
    pub graphite: SocketAddr,
    /// HTTP API (Prometheus-compatible queries, /metrics, health).
    #[arg(long)]
    pub http: SocketAddr,
    /// Controller addresses.
    #[arg(long, value_delimiter = ',', required = true)]
    pub controller: Vec<String>,
    /// Leading Graphite path components that name the resource.
    #[arg(long, default_value_t = 2)]
    pub graphite_resource_depth: usize,
    /// How often the logs are msynced to disk.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub sync_interval: Duration,
}

/// Which connection to a peer a request takes. A connection reads its next
/// request only while fewer than `net::IN_FLIGHT_MAX` are in flight, so
/// requests that wait on other nodes (forwarded writes, which wait for
/// replication; queries) must never share one with the requests they wait
/// for (replication and catch-up, answered at once): under load the
/// forwards filled every slot and the replication behind them was never
/// read, a deadlock between two nodes broken only by timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Forwarded writes and query fan-out.
    Requests,
    /// Replicate, catch-up and snapshot requests.
    Replication,
}

/// How long a write waits for a replica before it looks at the map again.
const REPLICA_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long a gateway keeps retrying a write before it gives up.
const WRITE_DEADLINE: Duration = Duration::from_secs(15);

pub struct Node {
    pub id: NodeId,
    store: store::Store,
    map: RwLock<Arc<ClusterMap>>,
    /// One connection per peer and [`Lane`].
    peers: Mutex<HashMap<(NodeId, Lane), Arc<Client>>>,
    controllers: Vec<String>,
    /// One lock per partition: a primary appends, replicates and waits for
    /// its replica in LSN order under it.
    sequencers: Vec<tokio::sync::Mutex<()>>,
    /// One lock per partition on the copy's side: a replica checks fences
    /// and appends under it, a source fences and reads its log under it, so
    /// a new primary's fencing read sees every record an old primary got
    /// acknowledged here, and none is appended after it.
    apply_locks: Vec<Mutex<()>>,
    catchup: Mutex<catchup::Progress>,
    /// Per partition, the newest term a primary announced to this copy:
    /// records sent by a primary of an older term are refused (fencing
    /// ahead of the map).
    fences: Mutex<HashMap<u32, u64>>,
    /// Per partition, the term in which this node, as primary, took over
    /// its peers' records.
    synced: Mutex<HashMap<u32, u64>>,
    graphite: GraphiteConfig,
    pub metrics: Metrics,
    /// Per partition, bytes of records this copy appended from live writes
    /// (as primary or replica, not catch-up): what a copy that was away
    /// missed, to compare with what its catch-up fetched.
    written: Vec<std::sync::atomic::AtomicU64>,
    map_changed: tokio::sync::Notify,
}

/// Partitions a node can hold without running short of file handles under a
/// limit of this many: each log segment keeps one, and a busy partition has
/// up to two segments between seals.
const FDS_WANTED: u64 = 8192;

/// Raises the soft limit on open files to the hard one, as a server that
/// keeps a file handle per log segment needs (a soft limit of 1 024 is common,
/// and a node holds up to a thousand partitions). Warns when the hard limit
/// is still low.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let raised = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    if raised < FDS_WANTED {
        tracing::warn!(
            limit = raised,
            "the open-file limit is low: each log segment keeps a file handle; raise it (ulimit -n {FDS_WANTED}, or LimitNOFILE= in a systemd unit)"
        );
    }
}

pub async fn run(args: NodeArgs, shutdown: broadcast::Sender<()>) -> anyhow::Result<()> {
    raise_fd_limit();
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create {}", args.data.display()))?;
    let store_config = store::StoreConfig::new(args.data.join("store"));
    let (store, report) = tokio::task::spawn_blocking(move || store::Store::open(store_config))
        .await?
        .context("cannot open the store")?;
    for (p, e) in &report.corrupted {
        tracing::error!(
            partition = p.0,
            "partition is corrupt and will be refetched from its peer copy: {e}"
        );
    }
    let spec = NodeSpec {
        id: NodeId(args.id),
        host: args.host.clone(),
        addr: args.listen.to_string(),
        http: args.http.to_string(),
        graphite: args.graphite.to_string(),
    };
    // Bind before registering, so that the addresses the map announces answer.
    let native = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let graphite = TcpListener::bind(args.graphite)
        .await
        .with_context(|| format!("cannot listen on {}", args.graphite))?;
    let http = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("cannot listen on {}", args.http))?;

    let map = register(&args.controller, &spec).await?;
    let map_partitions = map.partitions;
    let node = Arc::new(Node {
        id: spec.id,
        store,
        sequencers: (0..map.partitions)
            .map(|_| tokio::sync::Mutex::new(()))
            .collect(),
        apply_locks: (0..map.partitions).map(|_| Mutex::new(())).collect(),
        map: RwLock::new(Arc::new(map)),
        peers: Mutex::new(HashMap::new()),
        fences: Mutex::new(HashMap::new()),
        synced: Mutex::new(HashMap::new()),
        controllers: args.controller.clone(),
        catchup: Mutex::new(catchup::Progress::new(
            report.corrupted.iter().map(|(p, _)| p.0).collect(),
        )),
        graphite: GraphiteConfig {
            resource_depth: args.graphite_resource_depth,
            ..GraphiteConfig::default()
        },
        metrics: Metrics::default(),
        written: (0..map_partitions)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
        map_changed: tokio::sync::Notify::new(),
    });
    tracing::info!(id = args.id, native = %args.listen, graphite = %args.graphite, http = %args.http, "node up");

    tokio::spawn(node.clone().sync_new_primaries());
    tokio::spawn(heartbeat_loop(node.clone(), shutdown.subscribe()));
    tokio::spawn(catchup::run(node.clone(), shutdown.subscribe()));
    tokio::spawn(sync_loop(
        node.clone(),
        args.sync_interval,
        shutdown.subscribe(),
    ));
    tokio::spawn(graphite_listener::serve(
        graphite,
        node.clone(),
        shutdown.subscribe(),
    ));
    tokio::spawn(http::serve(http, node.clone(), shutdown.subscribe()));
    net::serve(native, node.clone(), shutdown.subscribe()).await;
    // Stopping: make everything appended durable.
    let n = node.clone();
    tokio::task::spawn_blocking(move || n.sync_all()).await?;
    Ok(())
}

async fn register(controllers: &[String], spec: &NodeSpec) -> anyhow::Result<ClusterMap> {
    let request = ControlRequest::Register { spec: spec.clone() };
    let mut delay = Duration::from_millis(100);
    let mut attempts = 0;
    loop {
        let c = controllers.to_vec();
        let r = request.clone();
        match tokio::task::spawn_blocking(move || control::call_blocking::<ClusterMap>(&c, &r))
            .await?
        {
            Ok(map) => return Ok(map),
            Err(e) if attempts < 100 => {
                attempts += 1;
                tracing::warn!("cannot register with the controller yet: {e:#}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.context("cannot register with any controller")),
        }
    }
}

async fn heartbeat_loop(node: Arc<Node>, mut shutdown: broadcast::Receiver<()>) {
    let mut period = Duration::from_millis(500);
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let (caught_up, lagging) = node.catchup.lock().expect("poisoned").report();
        let request = ControlRequest::Heartbeat {
            heartbeat: Heartbeat {
                node: node.id,
                caught_up,
                lagging,
            },
            epoch: node.map().epoch.0,
        };
        let controllers = node.controllers.clone();
        let reply = tokio::task::spawn_blocking(move || {
            control::call_blocking::<HeartbeatReply>(&controllers, &request)
        })
        .await;
        match reply {
            Ok(Ok(reply)) => {
                period = Duration::from_millis(reply.heartbeat_ms.max(50));
                if let Some(map) = reply.map {
                    node.install_map(map);
                }
            }
            // The data path does not need the controller: keep serving with the last map.
            Ok(Err(e)) => tracing::warn!("heartbeat failed: {e:#}"),
            Err(e) => tracing::warn!("heartbeat task failed: {e}"),
        }
    }
}

async fn sync_loop(node: Arc<Node>, interval: Duration, mut shutdown: broadcast::Receiver<()>) {
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let n = node.clone();
        let _ = tokio::task::spawn_blocking(move || {
            n.sync_all();
            n.seal_due();
        })
        .await;
    }
}

impl Node {
    pub fn map(&self) -> Arc<ClusterMap> {
        self.map.read().expect("poisoned").clone()
    }

    /// Takes a newer map (an older or equal one is ignored), drops copies it
    /// no longer places here, and starts the new-primary sync for the
    /// partitions it now leads, whichever path brought the map.
    pub fn install_map(self: &Arc<Self>, map: ClusterMap) {
        {
            let mut current = self.map.write().expect("poisoned");
            if map.epoch <= current.epoch {
                return;
            }
            tracing::info!(epoch = map.epoch.0, "new cluster map");
            *current = Arc::new(map);
        }
        self.map_changed.notify_waiters();
        self.drop_unowned();
        tokio::spawn(self.clone().sync_new_primaries());
    }

    /// Fetches the map from the controller now (after a stale-map error).
    pub async fn refresh_map(self: &Arc<Self>) {
        let controllers = self.controllers.clone();
        let fetched = tokio::task::spawn_blocking(move || {
            control::call_blocking::<ClusterMap>(&controllers, &ControlRequest::GetMap)
        })
        .await;
        if let Ok(Ok(map)) = fetched {
            self.install_map(map);
        }
    }

    /// Deletes local copies of partitions the map no longer gives this node.
    fn drop_unowned(&self) {
        let map = self.map();
        for p in self.store.partition_ids() {
            let pid = PartitionId(p.0);
            let owned = map.replicas(pid).contains(&self.id)
                || map
                    .partition(pid)
                    .is_some_and(|info| info.learner(self.id).is_some());
            if !owned {
                tracing::info!(
                    partition = p.0,
                    "dropping the local copy: the map no longer places it here"
                );
                if let Err(e) = self.store.drop_partition(p) {
                    tracing::warn!(partition = p.0, "cannot drop: {e}");
                }
            }
        }
    }

    fn count_written(&self, p: u32, bytes: usize) {
        if let Some(w) = self.written.get(p as usize) {
            w.fetch_add(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Raises partition `p`'s fence to `term`.
    fn fence(&self, p: u32, term: u64) {
        let mut fences = self.fences.lock().expect("poisoned");
        let f = fences.entry(p).or_insert(0);
        *f = (*f).max(term);
    }

    fn apply_lock(&self, p: u32) -> std::sync::MutexGuard<'_, ()> {
        self.apply_locks[p as usize % self.apply_locks.len()]
            .lock()
            .expect("poisoned")
    }

    fn fence_of(&self, p: u32) -> u64 {
        self.fences
            .lock()
            .expect("poisoned")
            .get(&p)
            .copied()
            .unwrap_or(0)
    }

    fn peer(&self, node: NodeId, lane: Lane) -> Option<Arc<Client>> {
        let map = self.map();
        let addr = map.node(node)?.addr.clone();
        let mut peers = self.peers.lock().expect("poisoned");
        let client = peers
            .entry((node, lane))
            .or_insert_with(|| Arc::new(Client::new(addr.clone())));
        if client.addr() != addr {
            *client = Arc::new(Client::new(addr));
        }
        Some(client.clone())
    }

    /// The local copy of `p`, created empty if it has none yet. A copy
    /// found damaged at open is refused until it is refetched: an empty
    /// stand-in would take LSNs its peers already hold.
    fn partition(&self, p: u32) -> Result<Arc<store::Partition>, (ErrorCode, String)> {
        if self.catchup.lock().expect("poisoned").is_corrupted(p) {
            return Err((
                ErrorCode::Unavailable,
                format!(
                    "partition {p}: node {}'s copy was damaged and is being refetched",
                    self.id
                ),
            ));
        }
        let id = store::PartitionId(p);
        if let Some(part) = self.store.partition(id) {
            return Ok(part);
        }
        self.store
            .create_partition(id)
            .map_err(|e| (ErrorCode::Internal, format!("partition {p}: {e}")))
    }

    fn sync_all(&self) {
        for p in self.store.partition_ids() {
            if let Some(part) = self.store.partition(p) {
                if let Err(e) = part.sync() {
                    tracing::error!(partition = p.0, "sync failed: {e}");
                }
            }
        }
    }

    /// Seals every local partition now; the count sealed.
    fn seal_all(&self) -> Result<usize, store::Error> {
        let mut n = 0;
        for p in self.store.partition_ids() {
            if let Some(part) = self.store.partition(p) {
                part.seal()?;
                n += 1;
            }
        }
        Ok(n)
    }

    fn seal_due(&self) {
        for p in self.store.partition_ids() {
            if let Some(part) = self.store.partition(p) {
                if part.seal_due() {
                    if let Err(e) = part.seal() {
                        tracing::error!(partition = p.0, "seal failed: {e}");
                    }
                }
            }
        }
    }

    /// Per-partition digests of the local copies, for `tandem check`.
    fn digests(&self) -> BTreeMap<u32, (u64, u64)> {
        self.store
            .partition_ids()
            .into_iter()
            .filter_map(|p| {
                self.store
                    .partition(p)
                    .map(|part| (p.0, (part.last_lsn().0, part.digest())))
            })
            .collect()
    }
}

impl net::Handler for Node {
    fn handle(self: &Arc<Self>, frame: Frame) -> ReplyFuture {
        match frame.kind {
            Kind::Write => write::handle_write(self, frame.payload),
            Kind::Forward => write::handle_forward(self, frame.payload),
            Kind::Replicate => net::ready(write::handle_replicate(self, &frame.payload)),
            Kind::CatchUp => net::ready(catchup::handle_catch_up(self, &frame.payload)),
            Kind::Snapshot => net::ready(catchup::handle_snapshot(self, &frame.payload)),
            Kind::Select => query::handle_select(self, frame.payload),
            Kind::Fold => query::handle_fold(self, frame.payload),
            Kind::Digest => {
                let digests: Vec<(u32, u64, u64)> = self
                    .digests()
                    .into_iter()
                    .map(|(p, (lsn, d))| (p, lsn, d))
                    .collect();
                net::ready(
                    serde_json::to_vec(&digests).map_err(|e| (ErrorCode::Internal, e.to_string())),
                )
            }
            Kind::Map => net::ready(Ok(self.map().to_wire())),
            other => net::ready(Err((
                ErrorCode::BadRequest,
                format!("a node does not take {other:?} frames"),
            ))),
        }
    }
}
