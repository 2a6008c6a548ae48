//! The client commands: `status`, `query`, `check`, `remove`, `drain`, `safe-to-stop`. They find the cluster through `cluster.json` or explicit addresses.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use controller::{ClusterMap, NodeId, PartitionId};

use crate::cluster_file::{ClusterFile, DEFAULT_PATH};
use crate::control::{self, CommandReply, ControlRequest, SafeToStopReply, StatusReply};
use crate::net;
use crate::proto::Kind;

/// Where the cluster is: a cluster file, or explicit addresses that override it.
#[derive(Clone, Debug, clap::Args)]
pub struct Target {
    /// The cluster file `tandem up` wrote.
    #[arg(long, default_value = DEFAULT_PATH)]
    pub cluster: PathBuf,
    /// Controller addresses (instead of the cluster file).
    #[arg(long = "controller", value_delimiter = ',')]
    pub controllers: Vec<String>,
    /// Node HTTP addresses (instead of the cluster file).
    #[arg(long = "http", value_delimiter = ',')]
    pub http: Vec<String>,
}

impl Target {
    fn file(&self) -> anyhow::Result<ClusterFile> {
        ClusterFile::load(&self.cluster)
    }

    pub fn controllers(&self) -> anyhow::Result<Vec<String>> {
        if !self.controllers.is_empty() {
            return Ok(self.controllers.clone());
        }
        Ok(self.file()?.controller_addrs())
    }

    pub fn http(&self) -> anyhow::Result<Vec<String>> {
        if !self.http.is_empty() {
            return Ok(self.http.clone());
        }
        Ok(self.file()?.http_addrs())
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: Target,
    /// List every partition with its replicas, term and state.
    #[arg(long)]
    pub partitions: bool,
    #[arg(long)]
    pub json: bool,
}

pub fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let controllers = args.target.controllers()?;
    let views = control::controller_views(&controllers);
    // A paused, deposed leader may still believe it leads: the one with the
    // highest term that the others agree on is the leader.
    let leader = views
        .iter()
        .filter_map(|(_, v)| v.as_ref())
        .filter(|v| v.role == "Leader" && v.leader == Some(v.id))
        .max_by_key(|v| v.term)
        .cloned();
    let reply: Option<StatusReply> = match &leader {
        Some(l) => control::call_blocking(
            std::slice::from_ref(&l.addr),
            &ControlRequest::Status {
                partitions: args.partitions,
            },
        )
        .ok(),
        None => None,
    };
    // Without a leader: the last committed map of the most advanced controller.
    let freshest = views
        .iter()
        .filter_map(|(_, v)| v.as_ref())
        .max_by_key(|v| (v.epoch, v.last_applied))
        .cloned();
    let (status, rows) = match (&reply, &freshest) {
        (Some(r), _) => (r.status.clone(), r.partitions.clone()),
        (None, Some(f)) => (f.status.clone(), None),
        (None, None) => bail!(
            "no controller answered at {}; is the cluster running? (`tandem up`)",
            controllers.join(",")
        ),
    };
    let leader_id = reply.as_ref().and(leader.as_ref()).map(|l| l.id);
    let ids: BTreeMap<String, u64> = views
        .iter()
        .filter_map(|(_, v)| v.as_ref())
        .flat_map(|v| v.members.iter().map(|(id, a)| (a.clone(), *id)))
        .collect();
    let rows_json: Vec<serde_json::Value> = views
        .iter()
        .map(|(addr, v)| match v {
            Some(v) => serde_json::json!({
                "id": v.id, "addr": addr, "reachable": true, "role": v.role,
                "leader": Some(v.id) == leader_id, "term": v.term,
                "epoch": v.epoch, "last_applied": v.last_applied,
            }),
            None => serde_json::json!({
                "id": ids.get(addr), "addr": addr, "reachable": false, "role": null,
                "leader": false, "term": null, "epoch": null, "last_applied": null,
            }),
        })
        .collect();
    if args.json {
        let mut doc = serde_json::to_value(&status)?;
        doc["controllers"] = serde_json::Value::Array(rows_json);
        doc["leader"] = serde_json::json!(leader_id);
        doc["term"] = serde_json::json!(leader
            .as_ref()
            .filter(|_| leader_id.is_some())
            .map(|l| l.term));
        doc["committed_epoch"] = serde_json::json!(status.epoch.0);
        if let Some(rows) = &rows {
            doc["partitions"]["list"] = serde_json::to_value(rows)?;
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(0);
    }
    println!(
        "{:<10} {:<21} {:<9} {:>5} {:>15}",
        "CONTROLLER", "ADDRESS", "ROLE", "TERM", "COMMITTED-EPOCH"
    );
    for row in &rows_json {
        let id = row["id"].as_u64().map_or("?".into(), |i| i.to_string());
        let role = if row["leader"] == true {
            "leader".to_string()
        } else {
            row["role"]
                .as_str()
                .map_or("down".to_string(), |r| r.to_lowercase())
        };
        let num = |k: &str| row[k].as_u64().map_or("-".into(), |v| v.to_string());
        println!(
            "{:<10} {:<21} {:<9} {:>5} {:>15}",
            id,
            row["addr"].as_str().unwrap_or("?"),
            role,
            num("term"),
            num("epoch")
        );
    }
    match (&leader, leader_id) {
        (Some(l), Some(_)) => println!(
            "leader: controller {} at {} (term {}), map epoch {}",
            l.id, l.addr, l.term, status.epoch.0
        ),
        _ => println!(
            "no controller leader: map changes (failover, recovery, moves) wait until a majority of controllers is up; the data path serves with the last map (epoch {} shown)",
            status.epoch.0
        ),
    }
    let s = &status;
    println!(
        "{:<5} {:<8} {:<11} {:>9} {:>11} {:>11}  ADDRESS",
        "NODE", "HOST", "STATE", "PRIMARIES", "SECONDARIES", "CATCHING-UP"
    );
    for n in &s.nodes {
        let state = if n.drained {
            format!("{} (drained)", n.state)
        } else {
            n.state.to_string()
        };
        let catching = if n.catching_up > 0 {
            format!("{} (lag {})", n.catching_up, n.lag_lsn)
        } else {
            "0".into()
        };
        println!(
            "{:<5} {:<8} {:<11} {:>9} {:>11} {:>11}  {}",
            n.id.0, n.host, state, n.primaries, n.secondaries, catching, n.addr
        );
    }
    let p = &s.partitions;
    println!(
        "partitions: {} total, {} healthy, {} moving, {} degraded, {} unavailable (R={})",
        p.total, p.healthy, p.moving, p.degraded, p.unavailable, s.replicas
    );
    if let Some(rows) = &rows {
        println!(
            "{:<9} {:<6} {:<12} REPLICAS (primary first)",
            "PARTITION", "TERM", "STATE"
        );
        for r in rows {
            let replicas: Vec<String> = r.replicas.iter().map(|n| n.0.to_string()).collect();
            println!(
                "{:<9} {:<6} {:<12} {}",
                r.id.0,
                r.term.0,
                format!("{:?}", r.state),
                replicas.join(",")
            );
        }
    }
    Ok(0)
}

#[derive(Clone, Debug, clap::Args)]
pub struct QueryArgs {
    /// A PromQL expression.
    pub expr: String,
    /// Range query start (unix seconds or RFC 3339); without it, an instant query.
    #[arg(long)]
    pub start: Option<String>,
    #[arg(long)]
    pub end: Option<String>,
    #[arg(long, default_value = "60s")]
    pub step: String,
    /// Instant query time (default: now).
    #[arg(long)]
    pub time: Option<String>,
    #[command(flatten)]
    pub target: Target,
    /// Print the API's JSON answer.
    #[arg(long)]
    pub json: bool,
}

pub fn query(args: QueryArgs) -> anyhow::Result<i32> {
    let http = args.target.http()?;
    let (path, mut params) = match &args.start {
        Some(start) => {
            let end = args
                .end
                .clone()
                .unwrap_or_else(|| format!("{}", now_secs()));
            (
                "/api/v1/query_range",
                vec![
                    ("start", start.clone()),
                    ("end", end),
                    ("step", args.step.clone()),
                ],
            )
        }
        None => (
            "/api/v1/query",
            args.time.iter().map(|t| ("time", t.clone())).collect(),
        ),
    };
    params.push(("query", args.expr.clone()));
    let body = http_post_form(&http, path, &params)?;
    if args.json {
        println!("{body}");
        return Ok(0);
    }
    let doc: serde_json::Value =
        serde_json::from_str(&body).context("the node sent malformed JSON")?;
    if doc["status"] != "success" {
        bail!(
            "query failed: {} ({})",
            doc["error"].as_str().unwrap_or("?"),
            doc["errorType"].as_str().unwrap_or("?")
        );
    }
    for w in doc["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
    print_result(&doc["data"]);
    Ok(0)
}

fn print_result(data: &serde_json::Value) {
    let labels = |m: &serde_json::Value| -> String {
        let obj = m.as_object().cloned().unwrap_or_default();
        let name = obj
            .get("__name__")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let rest: Vec<String> = obj
            .iter()
            .filter(|(k, _)| *k != "__name__")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!("{name}{{{}}}", rest.join(", "))
    };
    match data["resultType"].as_str() {
        Some("vector") => {
            for r in data["result"].as_array().into_iter().flatten() {
                println!(
                    "{} => {} @[{}]",
                    labels(&r["metric"]),
                    r["value"][1].as_str().unwrap_or("?"),
                    r["value"][0]
                );
            }
        }
        Some("matrix") => {
            for r in data["result"].as_array().into_iter().flatten() {
                println!("{} =>", labels(&r["metric"]));
                for v in r["values"].as_array().into_iter().flatten() {
                    println!("  {} @[{}]", v[1].as_str().unwrap_or("?"), v[0]);
                }
            }
        }
        Some("scalar") | Some("string") => {
            println!("{} @[{}]", data["result"][1], data["result"][0])
        }
        _ => println!("{data}"),
    }
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// POSTs a form to the first node that answers.
pub fn http_post_form(
    http: &[String],
    path: &str,
    params: &[(&str, String)],
) -> anyhow::Result<String> {
    let mut last = None;
    for addr in http {
        let url = format!("http://{addr}{path}");
        let form: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match ureq::post(&url)
            .timeout(Duration::from_secs(60))
            .send_form(&form)
        {
            Ok(resp) => return Ok(resp.into_string()?),
            // An HTTP error status still carries Prometheus' JSON error.
            Err(ureq::Error::Status(_, resp)) => return Ok(resp.into_string()?),
            Err(e) => last = Some(anyhow!("{addr}: {e}")),
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow!("no node HTTP address given"))
        .context("no node answered"))
}

#[derive(Clone, Debug, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub json: bool,
}

/// One partition's copies as `check` saw them: `(node, last lsn, digest)`.
type Copies = Vec<(NodeId, u64, u64)>;

pub fn check(args: CheckArgs) -> anyhow::Result<i32> {
    let controllers = args.target.controllers()?;
    let map: ClusterMap = control::call_blocking(&controllers, &ControlRequest::GetMap)?;
    let mut digests: BTreeMap<NodeId, BTreeMap<u32, (u64, u64)>> = BTreeMap::new();
    let mut unreachable = Vec::new();
    for n in &map.nodes {
        if n.state != controller::NodeState::Active {
            continue;
        }
        match net::request_blocking(&n.addr, Kind::Digest, &[], Duration::from_secs(30)) {
            Ok(bytes) => {
                let list: Vec<(u32, u64, u64)> = serde_json::from_slice(&bytes)?;
                digests.insert(
                    n.id,
                    list.into_iter().map(|(p, lsn, d)| (p, (lsn, d))).collect(),
                );
            }
            Err(e) => unreachable.push(format!("node {}: {e}", n.id)),
        }
    }
    let mut divergent: Vec<(u32, Copies)> = Vec::new();
    let mut compared = 0;
    for p in 0..map.partitions {
        let copies: Copies = map
            .active_replicas(PartitionId(p))
            .into_iter()
            .filter_map(|n| {
                digests
                    .get(&n)
                    .map(|d| (n, d.get(&p).copied().unwrap_or((0, empty_digest()))))
            })
            .map(|(n, (lsn, d))| (n, lsn, d))
            .collect();
        if copies.len() < 2 {
            continue;
        }
        compared += 1;
        if copies.iter().any(|c| c.2 != copies[0].2) {
            divergent.push((p, copies));
        }
    }
    if args.json {
        let doc = serde_json::json!({
            "compared": compared,
            "divergent": divergent.iter().map(|(p, c)| serde_json::json!({"partition": p, "copies": c.iter().map(|(n, lsn, d)| serde_json::json!({"node": n.0, "lsn": lsn, "digest": format!("{d:016x}")})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
            "unreachable": unreachable,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        for u in &unreachable {
            eprintln!("warning: could not read {u}");
        }
        for (p, copies) in &divergent {
            let shown: Vec<String> = copies
                .iter()
                .map(|(n, lsn, d)| format!("node {} lsn {} digest {:016x}", n.0, lsn, d))
                .collect();
            println!("partition {p} DIVERGES: {}", shown.join("; "));
        }
        println!(
            "checked {compared} partitions with 2 or more Active copies: {} divergent",
            divergent.len()
        );
    }
    Ok(if divergent.is_empty() && unreachable.is_empty() {
        0
    } else {
        1
    })
}

/// The digest of a partition with no samples (a sum over nothing), for a
/// copy that was never created because nothing was written to it.
fn empty_digest() -> u64 {
    0
}

#[derive(Clone, Debug, clap::Args)]
pub struct NodeCommandArgs {
    /// The node id.
    pub node: u32,
    #[command(flatten)]
    pub target: Target,
    #[arg(long)]
    pub json: bool,
}

pub fn remove(args: NodeCommandArgs) -> anyhow::Result<i32> {
    node_command(
        args,
        |node| ControlRequest::Remove { node },
        "removed; its partitions are being re-replicated",
    )
}

pub fn drain(args: NodeCommandArgs) -> anyhow::Result<i32> {
    node_command(
        args,
        |node| ControlRequest::Drain { node },
        "drained; its primaries moved to other copies",
    )
}

fn node_command(
    args: NodeCommandArgs,
    request: impl Fn(NodeId) -> ControlRequest,
    done: &str,
) -> anyhow::Result<i32> {
    let controllers = args.target.controllers()?;
    let reply: CommandReply = control::call_blocking(&controllers, &request(NodeId(args.node)))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        return Ok(0);
    }
    let blocked: Vec<_> = reply
        .actions
        .iter()
        .filter_map(|a| match a {
            controller::Action::DrainBlocked { partitions, .. } => Some(partitions.len()),
            _ => None,
        })
        .collect();
    println!("node {} {done} (map epoch {})", args.node, reply.epoch);
    for n in blocked {
        println!(
            "warning: {n} partitions have no other Active copy and keep their primary on node {}",
            args.node
        );
    }
    Ok(0)
}

pub fn safe_to_stop(args: NodeCommandArgs) -> anyhow::Result<i32> {
    let controllers = args.target.controllers()?;
    let reply: SafeToStopReply = control::call_blocking(
        &controllers,
        &ControlRequest::SafeToStop {
            node: NodeId(args.node),
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else if reply.safe {
        println!(
            "node {} is safe to stop: every partition keeps an Active copy elsewhere",
            args.node
        );
    } else {
        let shown: Vec<String> = reply
            .partitions
            .iter()
            .take(20)
            .map(|p| p.0.to_string())
            .collect();
        println!(
            "node {} is NOT safe to stop: {} partitions would have no Active copy ({}{})",
            args.node,
            reply.partitions.len(),
            shown.join(","),
            if reply.partitions.len() > 20 {
                ",..."
            } else {
                ""
            }
        );
    }
    Ok(if reply.safe { 0 } else { 1 })
}
