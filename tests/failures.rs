//! Survive any one node: real `tandem` processes killed, paused, corrupted,
//! removed and added under load (issue #6). Each test prints its figures
//! (run with `--nocapture` to see them) and is bounded in time.
//!
//! The tests run one at a time: each starts a cluster and a load on a
//! 2-core machine, and a second cluster beside it would starve both and
//! blur the failure detector's timing.

mod common;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{metric_value, query_http, Cluster, Layout, ProbeOutcome};
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The synthetic load every test pushes: `resources` × 10 metrics, one
/// sample per second of timestamps from `start_ms`, sent as fast as acks
/// come back for `seconds`.
struct Load {
    start_ms: i64,
    resources: u32,
}

impl Load {
    fn new(resources: u32) -> Load {
        Load {
            // An hour back, so no sample is in the future whatever the rate.
            start_ms: now_ms() - 3_600_000,
            resources,
        }
    }

    fn args(&self, seconds: u64, prefix: &str) -> Vec<String> {
        [
            "--resources",
            &self.resources.to_string(),
            "--metrics",
            "10",
            "--samples",
            "1000000",
            "--interval",
            "1s",
            "--start-ms",
            &self.start_ms.to_string(),
            "--prefix",
            prefix,
            "--batch",
            "2000",
            "--connections",
            "2",
            "--duration",
            &format!("{seconds}s"),
        ]
        .map(String::from)
        .to_vec()
    }

    /// Samples stored with resource prefix `prefix`, counted by the node
    /// at HTTP address `http`.
    fn count(&self, http: &str, prefix: &str) -> f64 {
        // One sum per metric: count_over_time drops the metric name, so
        // the metrics of one resource cannot share one vector.
        let expr = (0..10)
            .map(|m| format!("sum(count_over_time(metric{m}{{resource=~\"{prefix}.*\"}}[1d]))"))
            .collect::<Vec<_>>()
            .join(" + ");
        let at = self.start_ms / 1000 + 12 * 3600;
        // A warning that a secondary answered is fine (the copies agree);
        // one that series are missing is not, once the node has had time
        // to learn the controller's newest map (a heartbeat or two).
        let partial = |doc: &Value| {
            doc["warnings"].as_array().is_some_and(|w| {
                w.iter()
                    .any(|w| w.as_str().unwrap_or("").contains("missing"))
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let doc = loop {
            let doc = query_http(http, &[("query", &expr), ("time", &at.to_string())]);
            if !partial(&doc) || Instant::now() > deadline {
                break doc;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert_eq!(doc["status"], "success", "count at {http}: {doc}");
        assert!(!partial(&doc), "count at {http} is partial: {doc}");
        doc["data"]["result"][0]["value"][1]
            .as_str()
            .map_or(0.0, |v| v.parse().unwrap())
    }
}

fn push_args(load: &[String], extra: &[String]) -> Vec<String> {
    extra.iter().chain(load).cloned().collect()
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Every acknowledged sample is there, counted through every live node.
fn assert_nothing_lost(c: &Cluster, load: &Load, prefix: &str, report: &Value, nodes: &[usize]) {
    let https: Vec<String> = nodes.iter().map(|&i| c.http(i)).collect();
    assert_all_acked_stored(c, load, prefix, report, &https);
}

/// The push acknowledged everything it sent, and every node at `https` counts exactly that.
fn assert_all_acked_stored(
    c: &Cluster,
    load: &Load,
    prefix: &str,
    report: &Value,
    https: &[String],
) {
    let acked = report["acked"].as_f64().unwrap();
    assert_eq!(report["failed"], 0, "push failed samples: {report}");
    assert_eq!(report["acked"], report["sent"], "push: {report}");
    assert!(acked > 0.0, "nothing was pushed: {report}");
    for http in https {
        let stored = load.count(http, prefix);
        if stored != acked {
            panic!(
                "node at {http} counts {stored} samples of {acked} acknowledged\n{}\n{}",
                shortfall(c, load, prefix, https),
                c.logs()
            );
        }
    }
}

/// For a failure message: per resource, the samples each node counts where they differ.
fn shortfall(c: &Cluster, load: &Load, prefix: &str, https: &[String]) -> String {
    let at = (load.start_ms / 1000 + 12 * 3600).to_string();
    let mut by_node = Vec::new();
    for http in https {
        let expr = (0..10)
            .map(|m| format!("sum by (resource) (count_over_time(metric{m}{{resource=~\"{prefix}.*\"}}[1d]))"))
            .collect::<Vec<_>>()
            .join(" + ");
        let doc = query_http(http, &[("query", &expr), ("time", &at)]);
        let counts: std::collections::BTreeMap<String, String> = doc["data"]["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|s| {
                        (
                            s["metric"]["resource"].as_str().unwrap_or("").to_string(),
                            s["value"][1].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        by_node.push((http.clone(), counts, doc["warnings"].clone()));
    }
    let partitions = c.partitions();
    let mut out = String::new();
    let resources: std::collections::BTreeSet<&String> =
        by_node.iter().flat_map(|(_, m, _)| m.keys()).collect();
    for r in resources {
        let counts: Vec<&str> = by_node
            .iter()
            .map(|(_, m, _)| m.get(r).map_or("-", String::as_str))
            .collect();
        if counts.iter().any(|x| *x != counts[0]) {
            let p = controller::partition_of(r.as_bytes(), partitions.len() as u32).0;
            out.push_str(&format!(
                "resource {r} (partition {p}, replicas {:?}): {counts:?}\n",
                partitions[p as usize]
            ));
        }
    }
    for (http, _, w) in &by_node {
        out.push_str(&format!("warnings at {http}: {w}\n"));
    }
    out
}

/// Bytes of live writes the copies of `partitions` on the other nodes took.
fn written_elsewhere(c: &Cluster, partitions: &[(u32, Vec<u64>)], victim: u64) -> f64 {
    let pages: Vec<(u64, String)> = (0..c.file.nodes.len())
        .filter(|&i| c.node_id(i) != victim)
        .map(|i| (c.node_id(i), c.metrics(i)))
        .collect();
    let mut total = 0.0;
    for (p, replicas) in partitions {
        // One surviving copy per partition: with R=2 the other replica.
        if let Some((_, page)) = pages.iter().find(|(id, _)| replicas.contains(id)) {
            total += metric_value(
                page,
                &format!("tandem_partition_written_bytes_total{{partition=\"{p}\"}}"),
            );
        }
    }
    total
}

fn answered_share(probes: &[(Instant, ProbeOutcome)], from: Instant, to: Instant) -> (usize, f64) {
    let window: Vec<_> = probes
        .iter()
        .filter(|(t, _)| *t >= from && *t <= to)
        .collect();
    let answered = window
        .iter()
        .filter(|(_, o)| matches!(o, ProbeOutcome::Answered | ProbeOutcome::Warning))
        .count();
    (
        window.len(),
        100.0 * answered as f64 / window.len().max(1) as f64,
    )
}

/// Kill -9 node 3 under load, let the cluster fail over, restart it, and
/// check that nothing acknowledged was lost and that it resynced only
/// what it missed. `through_victim`: the pusher's connections go to the
/// killed node (it is their gateway), else to the survivors.
fn kill_under_load_then_restart(through_victim: bool) {
    let _serial = serial();
    let c = Cluster::up(Layout::default());
    let victim = 2;
    let victim_id = c.node_id(victim);
    let (a, b) = (
        c.file.nodes[0].listen.clone(),
        c.file.nodes[1].listen.clone(),
    );
    let v = c.file.nodes[victim].listen.clone();
    let targets = if through_victim {
        // Both connections start on the victim and fail over to node 1.
        format!("{v},{v},{a}")
    } else {
        format!("{a},{b}")
    };
    let load = Load::new(200);
    let push = c.start_push(&as_strs(&push_args(
        &load.args(20, "vm"),
        &["--node".into(), targets],
    )));
    let probe = c.start_probe(
        0,
        "sum(count_over_time({__name__=\"metric0\"}[1d]))",
        Duration::from_millis(250),
    );
    std::thread::sleep(Duration::from_secs(3));

    let held: Vec<(u32, Vec<u64>)> = c
        .partitions()
        .into_iter()
        .enumerate()
        .filter(|(_, r)| r.contains(&victim_id))
        .map(|(p, r)| (p as u32, r))
        .collect();
    let primaries = held.iter().filter(|(_, r)| r[0] == victim_id).count();
    assert!(primaries > 0, "node {victim_id} leads no partition");

    let killed_at = Instant::now();
    c.kill(victim);
    let written_at_kill = written_elsewhere(&c, &held, victim_id);
    c.wait_state(victim_id, "Down", Duration::from_secs(20));
    let down_after = killed_at.elapsed();
    std::thread::sleep(Duration::from_secs(4));

    let written_before_restart = written_elsewhere(&c, &held, victim_id);
    let restarted_at = Instant::now();
    c.restart(victim);
    c.wait_for("the node to register", Duration::from_secs(30), || {
        c.try_status().is_some_and(|s| {
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["id"] == victim_id && n["state"] != "Down")
        })
    });
    let written_while_down = written_elsewhere(&c, &held, victim_id) - written_at_kill;
    let registered = restarted_at.elapsed();
    c.wait_state(victim_id, "Active", Duration::from_secs(60));
    let active = restarted_at.elapsed();
    let back_at = Instant::now();

    let report = push.finish();
    let probes = probe.finish();
    let (probed, answered) = answered_share(&probes, killed_at, back_at);
    let resync = metric_value(&c.metrics(victim), "tandem_catchup_bytes_received_total");
    println!(
        "kill -9 node {victim_id} ({} partitions, {primaries} primaries; pusher through {}): \
         acked {} failed {}, longest gap between acks {:.0} ms; declared Down after {:.1} s; \
         {answered:.0} % of {probed} probe queries answered from kill to Active; \
         restart: registered in {:.1} s, Active in {:.1} s; \
         resync {resync:.0} bytes for {written_while_down:.0} bytes written while down \
         ({:.0} before restart)",
        held.len(),
        if through_victim {
            "the victim"
        } else {
            "the survivors"
        },
        report["acked"],
        report["failed"],
        report["max_ack_gap_ms"].as_f64().unwrap(),
        down_after.as_secs_f64(),
        registered.as_secs_f64(),
        active.as_secs_f64(),
        written_before_restart - written_at_kill,
    );
    assert_nothing_lost(&c, &load, "vm", &report, &[0, 1, 2]);
    c.check();
    assert!(
        answered >= 90.0,
        "only {answered:.0} % of probe queries were answered during the failover"
    );
    assert!(
        written_while_down > 0.0,
        "no write reached the victim's partitions while it was down"
    );
    assert!(
        resync <= 1.2 * written_while_down,
        "resync fetched {resync} bytes for {written_while_down} missed: not incremental"
    );
}

#[test]
fn kill_a_primary_under_load_then_restart_it() {
    kill_under_load_then_restart(false);
}

#[test]
fn kill_the_gateway_under_load_then_restart_it() {
    kill_under_load_then_restart(true);
}

/// Every node's state as the controller reports it, by node id.
fn states(c: &Cluster) -> Vec<(u64, String)> {
    c.try_status()
        .map(|s| {
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| {
                    (
                        n["id"].as_u64().unwrap(),
                        n["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn state_of(c: &Cluster, id: u64) -> Option<String> {
    states(c)
        .into_iter()
        .find(|(n, _)| *n == id)
        .map(|(_, s)| s)
}

/// Waits until every partition has R Active copies on distinct hosts.
fn wait_healthy(c: &Cluster, timeout: Duration) {
    c.wait_for("every partition healthy", timeout, || {
        c.try_status().is_some_and(|s| {
            s["partitions"]["healthy"] == s["partitions"]["total"]
                && s["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|n| n["state"] == "Active" || n["state"] == "Removed")
        })
    });
}

fn epoch(c: &Cluster) -> u64 {
    c.status()["epoch"].as_u64().unwrap()
}

#[test]
fn a_primary_paused_past_down_after_is_fenced_and_rejoins() {
    let _serial = serial();
    let c = Cluster::up(Layout::default());
    let victim = 2;
    let victim_id = c.node_id(victim);
    let (a, b, v) = (
        c.file.nodes[0].listen.clone(),
        c.file.nodes[1].listen.clone(),
        c.file.nodes[victim].listen.clone(),
    );
    let load = Load::new(100);
    // One pusher on the survivors, one whose connections sit on the paused
    // node: its writes hang there and must not be acknowledged in the old term.
    let push = c.start_push(&as_strs(&push_args(
        &load.args(16, "vm"),
        &["--node".into(), format!("{a},{b}")],
    )));
    let stuck = c.start_push(&as_strs(&push_args(
        &load.args(16, "gw"),
        &["--node".into(), format!("{v},{v},{a}")],
    )));
    std::thread::sleep(Duration::from_secs(3));

    let paused_at = Instant::now();
    c.pause(victim);
    c.wait_state(victim_id, "Down", Duration::from_secs(20));
    let down_after = paused_at.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    c.resume(victim);
    let resumed_at = Instant::now();
    let mut seen = Vec::new();
    while resumed_at.elapsed() < Duration::from_secs(60) {
        if let Some(s) = state_of(&c, victim_id) {
            if seen.last() != Some(&s) {
                seen.push(s.clone());
            }
            if s == "Active" {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let active = resumed_at.elapsed();
    let report = push.finish();
    let stuck_report = stuck.finish();
    let fenced = metric_value(&c.metrics(victim), "tandem_fenced_writes_total");
    println!(
        "SIGSTOP node {victim_id}: declared Down after {:.1} s; after SIGCONT its states were {seen:?}, \
         Active after {:.1} s; writes it refused as a deposed primary: {fenced}; \
         survivors' pusher: acked {} failed {}, longest gap {:.0} ms; \
         pusher on the paused node: acked {} failed {}, longest gap {:.0} ms",
        down_after.as_secs_f64(),
        active.as_secs_f64(),
        report["acked"],
        report["failed"],
        report["max_ack_gap_ms"].as_f64().unwrap(),
        stuck_report["acked"],
        stuck_report["failed"],
        stuck_report["max_ack_gap_ms"].as_f64().unwrap(),
    );
    assert_eq!(seen.last().map(String::as_str), Some("Active"), "{seen:?}");
    assert!(
        seen.iter().any(|s| s == "Recovering")
            && !seen
                .iter()
                .take_while(|s| *s != "Recovering")
                .any(|s| s == "Active"),
        "node {victim_id} must rejoin through Recovering: {seen:?}"
    );
    assert_nothing_lost(&c, &load, "vm", &report, &[0, 1, 2]);
    assert_nothing_lost(&c, &load, "gw", &stuck_report, &[0, 1, 2]);
    c.check();
}

#[test]
fn a_short_pause_is_not_declared_down() {
    let _serial = serial();
    let c = Cluster::up(Layout::default());
    let victim = 1;
    let victim_id = c.node_id(victim);
    let load = Load::new(100);
    let push = c.start_push(&as_strs(&load.args(8, "vm")));
    std::thread::sleep(Duration::from_secs(2));
    let before = epoch(&c);
    // Half of --down-after (3 s by default).
    c.pause(victim);
    let paused_at = Instant::now();
    let mut seen = BTreeSetLike::default();
    while paused_at.elapsed() < Duration::from_millis(1500) {
        if let Some(s) = state_of(&c, victim_id) {
            seen.insert(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    c.resume(victim);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Some(s) = state_of(&c, victim_id) {
            seen.insert(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = epoch(&c);
    let report = push.finish();
    println!(
        "SIGSTOP node {victim_id} for 1.5 s (down-after 3 s): states seen {:?}, map epoch {before} -> {after}; \
         acked {} failed {}, longest gap {:.0} ms",
        seen.0,
        report["acked"],
        report["failed"],
        report["max_ack_gap_ms"].as_f64().unwrap()
    );
    assert_eq!(seen.0, vec!["Active".to_string()], "a false Down");
    assert_eq!(before, after, "the map changed for a short pause");
    assert_nothing_lost(&c, &load, "vm", &report, &[0, 1, 2]);
    c.check();
}

/// A set that keeps first-seen order, for state sequences.
#[derive(Default)]
struct BTreeSetLike(Vec<String>);

impl BTreeSetLike {
    fn insert(&mut self, s: String) {
        if !self.0.contains(&s) {
            self.0.push(s);
        }
    }
}

#[test]
fn a_double_fault_answers_with_an_error_or_a_warning_and_loses_nothing_acknowledged() {
    let _serial = serial();
    let c = Cluster::up(Layout::default());
    let load = Load::new(100);
    let mut args = load.args(600, "vm");
    // A fixed amount this time: 100 resources x 10 metrics x 300 samples.
    let at = args.iter().position(|a| a == "--samples").unwrap();
    args[at + 1] = "300".into();
    let report = c.start_push(&as_strs(&args)).finish();
    assert_nothing_lost(&c, &load, "vm", &report, &[0, 1, 2]);

    // Both copies of every partition held by nodes 2 and 3 die.
    let both: Vec<usize> = c
        .partitions()
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.contains(&c.node_id(0)))
        .map(|(p, _)| p)
        .collect();
    assert!(!both.is_empty(), "no partition lives only on nodes 2 and 3");
    c.kill(1);
    c.kill(2);
    c.wait_state(c.node_id(1), "Down", Duration::from_secs(20));
    c.wait_state(c.node_id(2), "Down", Duration::from_secs(20));
    let expr = "sum(count_over_time(metric0[1d]))";
    let t = (load.start_ms / 1000 + 12 * 3600).to_string();
    let doc = query_http(&c.http(0), &[("query", expr), ("time", &t)]);
    let warned = doc["warnings"].as_array().is_some_and(|w| !w.is_empty());
    println!(
        "double fault: {} partitions lost both copies; node 1 answered {}",
        both.len(),
        serde_json::to_string(&doc).unwrap()
    );
    assert!(
        doc["status"] == "error" || warned,
        "a query over partitions with no live copy must fail or warn, not succeed quietly: {doc}"
    );
    let status = c.status();
    assert!(
        status["partitions"]["unavailable"].as_u64().unwrap() >= both.len() as u64,
        "status must count the unavailable partitions: {status}"
    );

    c.restart(1);
    c.restart(2);
    wait_healthy(&c, Duration::from_secs(60));
    assert_nothing_lost(&c, &load, "vm", &report, &[0, 1, 2]);
    c.check();
}

/// Flips one byte at `offset` of `path`.
fn flip_byte(path: &std::path::Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0x55]).unwrap();
    f.sync_all().unwrap();
}

fn files_under(dir: &std::path::Path, suffix: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(suffix) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn corrupt_files_are_detected_at_open_and_refetched() {
    let _serial = serial();
    let c = Cluster::up(Layout::default());
    let victim = 2;
    // 2 h 10 min of 10 s samples: past the seal span, so chunk files exist.
    let load = Load::new(30);
    let sealed = c
        .start_push(&[
            "--resources",
            "30",
            "--metrics",
            "10",
            "--samples",
            "800",
            "--interval",
            "10s",
            "--start-ms",
            &(load.start_ms - 8_000_000).to_string(),
            "--prefix",
            "old",
        ])
        .finish();
    let store = c.file.nodes[victim].data.join("store");
    c.wait_for("chunk files on node 3", Duration::from_secs(30), || {
        !files_under(&store, ".chunk").is_empty()
    });
    // Then records that stay in the log.
    let mut args = load.args(600, "new");
    let at = args.iter().position(|a| a == "--samples").unwrap();
    args[at + 1] = "50".into();
    let logged = c.start_push(&as_strs(&args)).finish();

    c.stop(victim);
    let chunk = files_under(&store, ".chunk")[0].clone();
    let chunk_len = std::fs::metadata(&chunk).unwrap().len();
    // Inside the chunk data, past the 72-byte header.
    flip_byte(&chunk, 72 + (chunk_len - 72) / 3);
    // A segment with records: corrupt a byte inside the synced records.
    let segment = files_under(&store, ".seg")
        .into_iter()
        .filter(|p| !p.starts_with(chunk.parent().unwrap().parent().unwrap()))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    flip_byte(&segment, 4096 + 200);
    // Away longer than --down-after, as a disk repair would be: its copies
    // go stale and the damaged ones are refetched while it recovers.
    std::thread::sleep(Duration::from_secs(4));
    c.restart(victim);
    c.wait_for(
        "the damaged partitions refetched",
        Duration::from_secs(60),
        || {
            ureq::get(&format!("http://{}/metrics", c.http(victim)))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .is_some_and(|page| {
                    page.contains("tandem_partitions_corrupted 0")
                        && page.contains("tandem_catchup_bytes_received_total ")
                        && metric_value(&page, "tandem_catchup_bytes_received_total") > 0.0
                })
        },
    );
    let log = std::fs::read_to_string(c.dir.path().join("node-3.log")).unwrap();
    let reported = log.matches("is corrupt and will be refetched").count();
    println!(
        "corrupted {} and {}: node 3 reported {reported} damaged partitions at open and refetched them \
         ({} bytes)",
        chunk.display(),
        segment.display(),
        metric_value(&c.metrics(victim), "tandem_catchup_bytes_received_total")
    );
    assert!(
        reported >= 2,
        "both damaged partitions are found at open:\n{log}"
    );
    wait_healthy(&c, Duration::from_secs(30));
    assert_nothing_lost(&c, &load, "old", &sealed, &[0, 1, 2]);
    assert_nothing_lost(&c, &load, "new", &logged, &[0, 1, 2]);
    c.check();
}

#[test]
fn removing_a_node_restores_every_partition_to_r_copies() {
    let _serial = serial();
    let c = Cluster::up(Layout {
        nodes: 4,
        hosts: 4,
        ..Layout::default()
    });
    let load = Load::new(100);
    let push = c.start_push(&as_strs(&load.args(12, "vm")));
    std::thread::sleep(Duration::from_secs(3));
    let gone = c.node_id(3);
    let out = c.tandem(&["remove", &gone.to_string()]);
    assert!(
        out.status.success(),
        "remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let removed_at = Instant::now();
    wait_healthy(&c, Duration::from_secs(60));
    let rebuilt = removed_at.elapsed();
    c.stop(3);
    let report = push.finish();
    let rows = c.partitions();
    let hosts: std::collections::HashMap<u64, String> = c
        .file
        .nodes
        .iter()
        .map(|n| (n.id as u64, n.host.clone()))
        .collect();
    for (p, r) in rows.iter().enumerate() {
        assert_eq!(r.len(), 2, "partition {p}: {r:?}");
        assert!(
            !r.contains(&gone),
            "partition {p} still on the removed node: {r:?}"
        );
        assert_ne!(hosts[&r[0]], hosts[&r[1]], "partition {p}: one host: {r:?}");
    }
    println!(
        "remove node {gone} under load: every partition back to 2 Active copies in {:.1} s; \
         acked {} failed {}, longest gap {:.0} ms",
        rebuilt.as_secs_f64(),
        report["acked"],
        report["failed"],
        report["max_ack_gap_ms"].as_f64().unwrap()
    );
    let https: Vec<String> = (0..3).map(|i| c.http(i)).collect();
    assert_all_acked_stored(&c, &load, "vm", &report, &https);
    c.check();
}

#[test]
fn adding_a_node_under_load_moves_few_partitions_and_loses_nothing() {
    let _serial = serial();
    let c = Cluster::up(Layout::default());
    let load = Load::new(100);
    let push = c.start_push(&as_strs(&load.args(16, "vm")));
    std::thread::sleep(Duration::from_secs(3));
    let before = c.partitions();
    let (_, http) = c.add_node(4, "h4");
    let added_at = Instant::now();
    c.wait_for("node 4 registered", Duration::from_secs(30), || {
        state_of(&c, 4).is_some()
    });
    wait_healthy(&c, Duration::from_secs(90));
    c.wait_for("the moves to finish", Duration::from_secs(60), || {
        c.try_status().is_some_and(|s| {
            s["partitions"]["moving"] == 0 && s["partitions"]["healthy"] == s["partitions"]["total"]
        })
    });
    let settled = added_at.elapsed();
    let report = push.finish();
    let after = c.partitions();
    let moved: usize = before
        .iter()
        .zip(&after)
        .map(|(b, a)| a.iter().filter(|n| !b.contains(n)).count())
        .sum();
    let onto_new = after.iter().filter(|r| r.contains(&4)).count();
    let copies = before.iter().map(Vec::len).sum::<usize>();
    let ideal = copies / 4;
    println!(
        "add node 4 under load: {moved} of {copies} copies moved ({onto_new} onto the new node, \
         ideal {ideal}); settled in {:.1} s; acked {} failed {}, longest gap {:.0} ms",
        settled.as_secs_f64(),
        report["acked"],
        report["failed"],
        report["max_ack_gap_ms"].as_f64().unwrap()
    );
    assert!(onto_new > 0, "nothing moved to the new node");
    assert!(
        moved <= ideal + ideal / 4,
        "{moved} copies moved for an ideal of {ideal}: not minimal"
    );
    let mut https: Vec<String> = (0..3).map(|i| c.http(i)).collect();
    https.push(http);
    assert_all_acked_stored(&c, &load, "vm", &report, &https);
    c.check();
}

#[test]
fn ingest_and_queries_go_on_without_the_controller() {
    let _serial = serial();
    let c = Cluster::up(Layout {
        extra: vec!["--controllers".into(), "1".into()],
        ..Layout::default()
    });
    let load = Load::new(100);
    let push = c.start_push(&as_strs(&load.args(10, "vm")));
    std::thread::sleep(Duration::from_secs(2));
    let map_before = c.partitions();
    let epoch_before = epoch(&c);
    c.kill_controller(0);
    let killed_at = Instant::now();
    let probe = c.start_probe(
        1,
        "sum(count_over_time(metric0[1d]))",
        Duration::from_millis(250),
    );
    std::thread::sleep(Duration::from_secs(5));
    let probes = probe.finish();
    let (probed, answered) = answered_share(&probes, killed_at, Instant::now());
    c.restart_controller(0);
    c.wait_for("the controller back", Duration::from_secs(30), || {
        c.try_status().is_some()
    });
    let epoch_after = epoch(&c);
    let map_after = c.partitions();
    let report = push.finish();
    println!(
        "controller killed for 5 s under load: {answered:.0} % of {probed} probe queries answered; \
         map epoch {epoch_before} -> {epoch_after} after restart; acked {} failed {}, longest gap {:.0} ms",
        report["acked"],
        report["failed"],
        report["max_ack_gap_ms"].as_f64().unwrap()
    );
    assert_eq!(answered, 100.0, "queries need no controller");
    assert_eq!(
        epoch_after, epoch_before,
        "the restarted controller has another map"
    );
    assert_eq!(map_after, map_before);
    assert_nothing_lost(&c, &load, "vm", &report, &[0, 1, 2]);
    wait_healthy(&c, Duration::from_secs(30));
    c.check();
}

#[test]
fn a_rolling_restart_with_drain_loses_nothing() {
    let _serial = serial();
    let c = Cluster::up(Layout::default());
    let load = Load::new(100);
    let push = c.start_push(&as_strs(&load.args(40, "vm")));
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    for i in 0..3 {
        let id = c.node_id(i).to_string();
        let drain = c.tandem(&["drain", &id]);
        assert!(
            drain.status.success(),
            "drain {id}: {}",
            String::from_utf8_lossy(&drain.stderr)
        );
        c.wait_for("the drain", Duration::from_secs(30), || {
            c.try_status().is_some_and(|s| {
                s["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n["id"] == c.node_id(i) && n["primaries"] == 0)
            })
        });
        let safe = c.json(&["safe-to-stop", &id, "--json"]);
        assert_eq!(safe["safe"], true, "node {id} not safe to stop: {safe}");
        c.stop(i);
        c.restart(i);
        c.wait_state(c.node_id(i), "Active", Duration::from_secs(60));
        wait_healthy(&c, Duration::from_secs(60));
    }
    let rolled = started.elapsed();
    let report = push.finish();
    println!(
        "rolling restart of 3 nodes with drain in {:.1} s under load: acked {} failed {}, \
         longest gap between acks {:.0} ms, ack latency p99 {:.0} ms",
        rolled.as_secs_f64(),
        report["acked"],
        report["failed"],
        report["max_ack_gap_ms"].as_f64().unwrap(),
        report["ack_latency_ms"]["p99"].as_f64().unwrap()
    );
    let https: Vec<String> = (0..3).map(|i| c.http(i)).collect();
    assert_all_acked_stored(&c, &load, "vm", &report, &https);
    c.check();
}

/// After a flush a node keeps no log segment for its sealed partitions
/// (their position is in the chunk files). Stopped, it misses writes;
/// restarted, it resumes each log after its chunk files and catches up
/// from there, incrementally: it pulls about what it missed, not full
/// copies of what it had sealed. Nothing is lost and the copies agree.
#[test]
fn a_flushed_node_restarts_from_its_chunk_files_and_catches_up() {
    let _serial = serial();
    let c = Cluster::up(Layout::default());
    let load = Load::new(20);
    let push = |prefix: &str, samples: u32| {
        let mut args = load.args(600, prefix);
        let at = args.iter().position(|a| a == "--samples").unwrap();
        args[at + 1] = samples.to_string();
        c.start_push(&as_strs(&args)).finish()
    };
    let sealed = push("vm", 200);
    assert_nothing_lost(&c, &load, "vm", &sealed, &[0, 1, 2]);
    for i in 0..3 {
        let r = ureq::post(&format!("http://{}/-/flush", c.http(i))).call();
        assert!(r.is_ok(), "flush node {i}: {r:?}");
    }
    let victim = 2;
    let segments = files_under(&c.file.nodes[victim].data.join("store"), ".seg");
    assert!(
        segments.is_empty(),
        "log segments after a flush: {segments:?}"
    );

    c.stop(victim);
    let missed = push("db", 5);
    c.restart(victim);
    c.wait_state(c.node_id(victim), "Active", Duration::from_secs(60));
    wait_healthy(&c, Duration::from_secs(60));
    assert_nothing_lost(&c, &load, "vm", &sealed, &[0, 1, 2]);
    assert_nothing_lost(&c, &load, "db", &missed, &[0, 1, 2]);
    c.check();
    // A full copy of the sealed samples alone would be more than 9 bytes
    // each (a timestamp and a value) for the two thirds of them the
    // victim holds.
    let pulled = metric_value(&c.metrics(victim), "tandem_catchup_bytes_received_total");
    let full = 9.0 * sealed["acked"].as_f64().unwrap() * 2.0 / 3.0;
    println!("catch-up after a flush pulled {pulled} bytes (full copies: over {full})");
    assert!(pulled > 0.0, "the restarted node pulled nothing");
    assert!(pulled < full / 2.0, "pulled {pulled} bytes: full copies?");
}

#[test]
fn check_finds_a_copy_that_differs_and_exits_1() {
    let _serial = serial();
    let c = Cluster::up(Layout {
        // Room to tamper with a stopped node before it would be declared Down.
        extra: vec!["--down-after".into(), "20s".into()],
        ..Layout::default()
    });
    let load = Load::new(20);
    let mut args = load.args(600, "vm");
    let at = args.iter().position(|a| a == "--samples").unwrap();
    args[at + 1] = "20".into();
    let report = c.start_push(&as_strs(&args)).finish();
    assert_nothing_lost(&c, &load, "vm", &report, &[0, 1, 2]);
    c.check();

    // Behind the cluster's back, one copy takes a sample the other never saw.
    let victim = 2;
    c.stop(victim);
    let dir = c.file.nodes[victim].data.join("store");
    let (store, _) = store::Store::open(store::StoreConfig::new(&dir)).unwrap();
    let p = store.partition_ids()[0];
    let part = store.partition(p).unwrap();
    let mut b = store::batch::BatchBuilder::new();
    b.push("rogue", "metric0", &[], load.start_ms, 1.0).unwrap();
    let mut bytes = Vec::new();
    b.encode(&mut bytes);
    part.append(part.last_term(), &bytes).unwrap();
    part.sync().unwrap();
    drop((part, store));
    c.restart(victim);
    c.wait_for("node 3 serving again", Duration::from_secs(15), || {
        ureq::get(&format!("http://{}/-/ready", c.http(victim)))
            .call()
            .is_ok()
    });

    let out = c.tandem(&["check", "--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("check after tampering with partition {}: {doc}", p.0);
    assert_eq!(out.status.code(), Some(1), "check must fail: {doc}");
    let listed: Vec<u64> = doc["divergent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["partition"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![p.0 as u64]);
}
