//! End to end: the controller group (3 controllers, Raft) survives the death or pause of its leader, keeps its map across restarts, and never holds up the data path.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Cluster, Layout};
use nix::sys::signal::Signal;
use serde_json::Value;

const LEADER_TIMEOUT: Duration = Duration::from_secs(30);

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Pushes synthetic samples for resources `<prefix>N`, one metric.
fn push(c: &Cluster, prefix: &str, resources: u32, samples: u32, extra: &[&str]) -> Value {
    let (r, s) = (resources.to_string(), samples.to_string());
    let mut args = vec![
        "push",
        "--json",
        "--quiet",
        "--prefix",
        prefix,
        "--resources",
        &r,
        "--metrics",
        "1",
        "--samples",
        &s,
        "--interval",
        "1ms",
        "--batch",
        "500",
    ];
    args.extend_from_slice(extra);
    let report = c.json(&args);
    println!("push {prefix}: {report}");
    report
}

fn acked(report: &Value) -> u64 {
    report["acked"].as_u64().expect("acked")
}

/// Samples stored for the resources of the given prefixes, through `node`
/// (0 while there are none).
fn count(c: &Cluster, node: usize, prefixes: &[&str]) -> u64 {
    let re = prefixes
        .iter()
        .map(|p| format!("{p}.*"))
        .collect::<Vec<_>>()
        .join("|");
    let q = format!(r#"sum(count_over_time({{__name__="metric0", resource=~"{re}"}}[1h]))"#);
    let doc = c.query_at(node, &q, now_s() + 1);
    assert_eq!(doc["status"], "success", "{q}: {doc}");
    match doc["data"]["result"].as_array().map(Vec::as_slice) {
        Some([]) => 0,
        Some([one]) => one["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{q}: {doc}")) as u64,
        _ => panic!("{q}: {doc}"),
    }
}

fn controller_row(status: &Value, id: u64) -> Value {
    status["controllers"]
        .as_array()
        .expect("controllers")
        .iter()
        .find(|r| r["id"].as_u64() == Some(id))
        .cloned()
        .unwrap_or_else(|| panic!("controller {id} in {status}"))
}

fn node_states(status: &Value) -> Vec<(u64, String, bool)> {
    status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["state"].as_str().unwrap().to_string(),
                n["drained"].as_bool().unwrap(),
            )
        })
        .collect()
}

#[test]
fn killing_the_leader_under_load_elects_another_and_loses_nothing() {
    let c = Cluster::up(Layout::default());
    let (leader, _) = c.wait_for_leader(None, LEADER_TIMEOUT);
    // A committed map change just before the kill must survive it.
    let drain = c.json(&["drain", "3", "--json"]);
    let drained_epoch = drain["epoch"].as_u64().expect("epoch");
    println!("leader {leader}; drain committed at epoch {drained_epoch}");

    let (report, took) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            push(
                &c,
                "ka",
                50,
                200_000,
                &["--connections", "2", "--duration", "8s"],
            )
        });
        c.wait_for("ingest under way", Duration::from_secs(20), || {
            count(&c, 0, &["ka"]) > 0
        });
        c.kill9(c.controller(leader).pid);
        let (new_leader, took) = c.wait_for_leader(Some(leader), Duration::from_secs(5));
        println!("controller {leader} killed; controller {new_leader} leads after {took:?}");
        (load.join().expect("push thread"), took)
    });
    assert!(took <= Duration::from_secs(5), "{took:?}");

    let status = c.status();
    assert!(
        status["committed_epoch"].as_u64().unwrap() >= drained_epoch,
        "{status}"
    );
    let drained: Vec<u64> = node_states(&status)
        .into_iter()
        .filter(|n| n.2)
        .map(|n| n.0)
        .collect();
    assert_eq!(drained, vec![3], "the committed drain is lost: {status}");

    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["acked"], report["sent"], "{report}");
    let stored = count(&c, 1, &["ka"]);
    println!(
        "acked {} stored {stored} (lost {})",
        acked(&report),
        acked(&report).saturating_sub(stored)
    );
    assert_eq!(stored, acked(&report));
}

#[test]
fn a_paused_leader_cannot_change_the_map_and_rejoins_as_follower() {
    let c = Cluster::up(Layout::default());
    let (old, _) = c.wait_for_leader(None, LEADER_TIMEOUT);
    let before = c.status();
    let pid = c.controller(old).pid;
    let paused = Instant::now();
    c.signal(pid, Signal::SIGSTOP);
    let (new, took) = c.wait_for_leader(Some(old), LEADER_TIMEOUT);
    println!("controller {old} paused; controller {new} leads after {took:?}");
    // Ten seconds of pause: the paused leader's soft state now says every
    // node has been silent far past --down-after.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(paused.elapsed()));
    c.signal(pid, Signal::SIGCONT);

    let mut after = Value::Null;
    c.wait_for(
        "the old leader to follow the new term",
        Duration::from_secs(20),
        || {
            after = c.status();
            let row = controller_row(&after, old);
            let leader_term = after["term"].as_u64();
            row["role"] == "Follower"
                && row["term"].as_u64() == leader_term
                && row["epoch"] == after["committed_epoch"]
        },
    );
    println!(
        "after SIGCONT: {}",
        serde_json::to_string(&after["controllers"]).unwrap()
    );
    assert!(after["term"].as_u64() > controller_row(&before, old)["term"].as_u64());
    // Nothing the old leader decided in its old term took effect: no node
    // went Down, the map is the one from before the pause.
    assert_eq!(
        after["committed_epoch"], before["committed_epoch"],
        "{after}"
    );
    assert_eq!(node_states(&after), node_states(&before), "{after}");
    let log = std::fs::read_to_string(c.dir.path().join(format!("controller-{old}.log")))
        .unwrap_or_default();
    let refused = log.matches("proposal not applied").count();
    println!("proposals the paused leader tried and could not commit: {refused}");
}

#[test]
fn with_two_controllers_down_the_data_path_serves_and_failover_waits_for_a_leader() {
    let c = Cluster::up(Layout::default());
    let (leader, _) = c.wait_for_leader(None, LEADER_TIMEOUT);
    let a = push(&c, "na", 20, 50, &[]);
    assert_eq!(a["failed"], 0, "{a}");

    // Two of three controllers down (the leader among them): no leader.
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let down: Vec<u64> = (1..=3).filter(|&i| i != follower).collect();
    for &id in &down {
        c.kill9(c.controller(id).pid);
    }
    c.wait_for("no leader", Duration::from_secs(10), || {
        c.leader().is_none()
    });
    let status = c.status();
    assert_eq!(status["leader"], Value::Null, "{status}");
    let text = c.tandem(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout).to_string();
    println!("{text}");
    assert!(text.contains("no controller leader"), "{text}");

    // Ingest and queries go on with the last map.
    let b = push(&c, "nb", 20, 50, &[]);
    assert_eq!(b["failed"], 0, "{b}");
    assert_eq!(count(&c, 2, &["na", "nb"]), acked(&a) + acked(&b));

    // A data node dies while nobody can fail it over: the map keeps it.
    c.kill9(c.file.nodes[0].pid);
    std::thread::sleep(Duration::from_secs(4)); // past --down-after (3 s)
    let status = c.status();
    assert_eq!(node_states(&status)[0].1, "Active", "{status}");
    assert_eq!(count(&c, 1, &["na", "nb"]), acked(&a) + acked(&b));

    // A majority again: a leader, then the failover.
    let restarted = Instant::now();
    for &id in &down {
        c.restart_entry(c.controller(id));
    }
    let (new_leader, took) = c.wait_for_leader(None, LEADER_TIMEOUT);
    println!("controllers back; controller {new_leader} leads after {took:?}");
    c.wait_for(
        "node 1 Down and failed over",
        Duration::from_secs(30),
        || {
            let s = c.status();
            node_states(&s)[0].1 == "Down" && s["partitions"]["unavailable"] == 0
        },
    );
    println!("failover done {:?} after the restart", restarted.elapsed());
    let d = push(&c, "nd", 20, 50, &[]);
    assert_eq!(d["failed"], 0, "{d}");
    let acked_all = acked(&a) + acked(&b) + acked(&d);
    // Right after a failover a partition may briefly have no copy that
    // answers reads (its new primary syncs first, its other copy is dead):
    // the answer then names it in `warnings`. Acknowledged samples must all
    // be there once it answers.
    let t0 = Instant::now();
    let mut stored = count(&c, 2, &["na", "nb", "nd"]);
    while stored != acked_all && t0.elapsed() < Duration::from_secs(20) {
        let q = r#"sum(count_over_time({__name__="metric0"}[1h]))"#;
        println!("partial answer: {}", c.query_at(2, q, now_s() + 1));
        std::thread::sleep(Duration::from_millis(500));
        stored = count(&c, 2, &["na", "nb", "nd"]);
    }
    println!("acked {acked_all} stored {stored} after {:?}", t0.elapsed());
    assert_eq!(stored, acked_all);
}

fn restart_keeps_the_map(controllers: &str) {
    let c = Cluster::up_with(Layout::default(), &["--controllers", controllers]);
    c.wait_for_leader(None, LEADER_TIMEOUT);
    c.json(&["drain", "2", "--json"]);
    let before = c.json(&["status", "--partitions", "--json"]);
    for entry in &c.file.controllers {
        c.kill9(entry.pid);
    }
    for entry in &c.file.controllers {
        c.restart_entry(entry);
    }
    let (leader, took) = c.wait_for_leader(None, LEADER_TIMEOUT);
    let after = c.json(&["status", "--partitions", "--json"]);
    println!(
        "{controllers} controller(s) restarted: controller {leader} leads after {took:?}, epoch {} -> {}",
        before["committed_epoch"], after["committed_epoch"]
    );
    assert_eq!(after["committed_epoch"], before["committed_epoch"]);
    assert_eq!(after["partitions"]["list"], before["partitions"]["list"]);
    assert_eq!(node_states(&after), node_states(&before));
}

#[test]
fn restarting_every_controller_keeps_the_map() {
    restart_keeps_the_map("3");
}

#[test]
fn a_single_controller_restarts_with_its_map() {
    restart_keeps_the_map("1");
}
