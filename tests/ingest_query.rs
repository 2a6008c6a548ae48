//! End to end: a 3-node cluster on 3 host labels with R=2 takes writes over the native protocol and Graphite, and answers PromQL identically through every node.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{metric_value, query_range_http, Cluster, Layout};

fn now_s() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The soft and hard limits on open files of a process, from `/proc`.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut fields = line["Max open files".len()..].split_whitespace();
    let soft = fields.next().unwrap().to_string();
    (soft, fields.next().unwrap().to_string())
}

/// A node keeps a file handle per partition log: started under a soft limit
/// of 256 open files (a common default is 1 024, for a thousand
/// partitions), it raises the limit to the hard one.
#[test]
fn nodes_raise_their_open_file_limit() {
    let c = Cluster::up(Layout {
        partitions: 16,
        open_files_soft: Some(256),
        ..Layout::default()
    });
    for i in 0..c.file.nodes.len() {
        let (soft, hard) = open_file_limits(c.node_pid(i));
        assert_eq!(soft, hard, "node {i}");
        assert_ne!(soft, "256", "node {i}");
    }
    let (soft, _) = open_file_limits(c.controller_pid(0));
    assert_eq!(
        soft, "256",
        "controllers inherit the limit `up` was started with"
    );
}

#[test]
fn native_push_is_answered_identically_by_every_node() {
    let c = Cluster::up(Layout::default());
    let report = c.json(&[
        "push",
        "--json",
        "--quiet",
        "--resources",
        "20",
        "--metrics",
        "5",
        "--samples",
        "30",
        "--batch",
        "500",
    ]);
    println!("push: {report}");
    assert_eq!(report["sent"], 3000);
    assert_eq!(report["acked"], 3000);
    assert_eq!(report["failed"], 0);

    // count_over_time drops the metric name, so each metric is counted on
    // its own (Prometheus refuses two series with the same labels).
    let per_series = r#"count_over_time({__name__="metric1"}[10m])"#;
    // A whole second after the newest sample (now, in ms, when pushed).
    let t = now_s() + 1;
    let first = c.query_at(0, per_series, t);
    let series = first["data"]["result"].as_array().map(Vec::len);
    assert_eq!(series, Some(20), "{first}");
    for node in 0..3 {
        let total: f64 = (0..5)
            .map(|m| {
                let q = format!(r#"sum(count_over_time({{__name__="metric{m}"}}[10m]))"#);
                c.scalar_at(node, &q, t)
            })
            .sum();
        assert_eq!(total, 3000.0, "node {node}");
        let again = c.query_at(node, per_series, t);
        assert_eq!(
            again["data"], first["data"],
            "node {node} answers differently"
        );
    }
    // Both copies agree.
    let check = c.tandem(&["check"]);
    assert!(
        check.status.success(),
        "check: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}

/// Many writes in flight between gateways and primaries: 1 024 partitions
/// and 6 batches of 20 000 samples at once, two per gateway, so each
/// gateway forwards about 600 requests at once to each peer, over a
/// connection's 256 in-flight requests. No more than that: this runs
/// beside the other tests of this file on a debug build, and a larger load
/// (16 batches at once) took over 15 s per write on a slow machine, which
/// the gateway counts as a timeout even without the deadlock. A forwarded
/// write waits for replication, which must never queue behind it: when both
/// shared one connection per pair of nodes, the forwards filled its slots,
/// the replication behind them was never read, and every write timed out.
#[test]
fn many_forwards_in_flight_never_block_replication() {
    let c = Cluster::up(Layout {
        partitions: 1024,
        ..Layout::default()
    });
    let report = c.json(&[
        "push",
        "--json",
        "--quiet",
        "--resources",
        "2000",
        "--metrics",
        "10",
        "--samples",
        "12",
        "--batch",
        "20000",
        "--connections",
        "6",
    ]);
    println!("push: {report}");
    assert_eq!(report["acked"], 240_000, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    // A write that timed out somewhere was retried: there must be none.
    assert_eq!(report["retries"], 0, "{report}");
}

/// Aggregations the nodes fold over their own partitions (`sum(m)`,
/// `topk(3, m)`)
/// answer as the same aggregation over raw samples gathered to the
/// coordinator (`sum(m + 0)`, which does not fold; `label_replace` where
/// the name must stay), through every node.
#[test]
fn aggregations_folded_on_the_nodes_answer_as_raw_samples() {
    let c = Cluster::up(Layout {
        partitions: 64,
        ..Layout::default()
    });
    let report = c.json(&[
        "push",
        "--json",
        "--quiet",
        "--resources",
        "40",
        "--metrics",
        "3",
        "--samples",
        "30",
    ]);
    assert_eq!(report["acked"], 3600, "{report}");
    let folds = |node: usize| metric_value(&c.metrics(node), "tandem_query_folds_total");
    let end = now_s() + 1;
    let start = (end - 900).to_string();
    let (end, step) = (end.to_string(), "15".to_string());
    let pairs = [
        ("sum(metric1)", "sum(metric1 + 0)"),
        // Alternatives that pin two resources: both partitions are asked.
        (
            r#"sum(metric1{resource="vm1" or resource="vm2"})"#,
            r#"sum(metric1{resource="vm1" or resource="vm2"} + 0)"#,
        ),
        (
            "avg by (resource) (metric2)",
            "avg by (resource) (metric2 + 0)",
        ),
        (
            "max by (resource) (max_over_time(metric0[5m]))",
            "max by (resource) (max_over_time(metric0[5m]) + 0)",
        ),
        (
            r#"count(last_over_time({__name__=~"metric1|metric2"}[5m] offset 1m))"#,
            r#"count(label_replace(last_over_time({__name__=~"metric1|metric2"}[5m] offset 1m), "x", "", "x", ""))"#,
        ),
        (
            "sum(rate(metric0[5m])) / count(metric0)",
            "sum(rate(metric0[5m]) + 0) / count(metric0 + 0)",
        ),
        (
            "topk(3, avg_over_time(metric2[5m]))",
            "topk(3, avg_over_time(metric2[5m]) + 0)",
        ),
        (
            r#"bottomk by (resource) (1, {__name__=~"metric1|metric2"})"#,
            r#"bottomk by (resource) (1, label_replace({__name__=~"metric1|metric2"}, "x", "", "x", ""))"#,
        ),
    ];
    for node in 0..3 {
        for (folded, raw) in pairs {
            let before = folds(node);
            let range = |q: &str| {
                let form = [
                    ("query", q),
                    ("start", &start),
                    ("end", &end),
                    ("step", &step),
                ];
                let doc = query_range_http(&c.http(node), &form);
                assert_eq!(doc["status"], "success", "node {node} {q}: {doc}");
                doc["data"]["result"].clone()
            };
            let (got, want) = (range(folded), range(raw));
            assert!(folds(node) > before, "node {node} did not fold {folded}");
            assert!(
                want.as_array().is_some_and(|r| !r.is_empty()),
                "{raw}: {want}"
            );
            assert_close(&got, &want, &format!("node {node}: {folded} vs {raw}"));
        }
    }
    // Without their names, series of two metrics of one resource collide:
    // a node declines to fold, and the query fails as Prometheus fails it.
    let declined = metric_value(&c.metrics(1), "tandem_query_folds_declined_total");
    let doc = c.query(1, r#"sum(max_over_time({__name__=~"metric.*"}[5m]))"#);
    assert_eq!(
        doc["error"], "vector cannot contain metrics with the same labelset",
        "{doc}"
    );
    assert_eq!(
        metric_value(&c.metrics(1), "tandem_query_folds_declined_total"),
        declined + 1.0
    );
}

/// Two matrices with the same series and steps, and values equal up to
/// rounding (a fold adds in another order).
fn assert_close(got: &serde_json::Value, want: &serde_json::Value, what: &str) {
    let series = |v: &serde_json::Value| -> Vec<(String, Vec<(f64, f64)>)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let values = s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| {
                        (
                            p[0].as_f64().unwrap(),
                            p[1].as_str().unwrap().parse().unwrap(),
                        )
                    })
                    .collect();
                (s["metric"].to_string(), values)
            })
            .collect()
    };
    let (g, w) = (series(got), series(want));
    assert_eq!(g.len(), w.len(), "{what}: {got} vs {want}");
    for ((gl, gv), (wl, wv)) in g.iter().zip(&w) {
        assert_eq!(gl, wl, "{what}");
        assert_eq!(gv.len(), wv.len(), "{what}: {gl}");
        for (a, b) in gv.iter().zip(wv) {
            let close = (a.1 - b.1).abs() <= 1e-9 * a.1.abs().max(b.1.abs()).max(1.0);
            assert!(a.0 == b.0 && close, "{what}: {gl} {a:?} vs {b:?}");
        }
    }
}

#[test]
fn values_come_back_exactly_through_native_and_graphite() {
    let c = Cluster::up(Layout::default());
    let t = now_s() - 60;
    // Native protocol, from a Graphite-formatted file.
    let lines = format!(
        "dc1.web01.cpu.usage 12.5 {t}\ndc1.web01.cpu.usage 13.25 {}\ndc1.db01.mem.active 1e9 {t}\ncpu.steal;resource=vm7;core=3 0.01 {t}\nnot a line\n",
        t + 10
    );
    let file = c.dir.path().join("lines.txt");
    std::fs::write(&file, lines).unwrap();
    let report = c.json(&[
        "push",
        "--json",
        "--quiet",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert_eq!(
        (report["acked"].as_u64(), report["bad_lines"].as_u64()),
        (Some(4), Some(1)),
        "{report}"
    );

    // Graphite plaintext, with garbage in between on the same connection.
    let mut g = Vec::new();
    g.extend_from_slice(format!("gw.host1.load 1.5 {t}\r\n").as_bytes());
    g.extend_from_slice(b"\n\n");
    g.extend_from_slice(b"gw.host1.missing\n");
    g.extend_from_slice(format!("gw.host1.text abc {t}\n").as_bytes());
    g.extend(std::iter::repeat_n(b'x', 1 << 20));
    g.push(b'\n');
    g.extend_from_slice(&[0xff, 0xfe, 0x00, 0x01, b'\n']);
    g.extend_from_slice(format!("gw.host1.after nan {t}\n").as_bytes());
    g.extend_from_slice(format!("gw.host1.late 7 {t}").as_bytes()); // half line at close
    c.send_graphite(1, &g);

    c.wait_for("graphite samples", Duration::from_secs(15), || {
        let doc = c.query(2, r#"count({resource="gw.host1"})"#);
        doc["data"]["result"][0]["value"][1] == "3"
    });
    for node in 0..3 {
        let at = t + 10;
        assert_eq!(
            c.scalar_at(node, r#"{__name__="cpu.usage", resource="dc1.web01"}"#, at),
            13.25
        );
        assert_eq!(
            c.scalar_at(node, r#"{__name__="cpu.usage", resource="dc1.web01"}"#, t),
            12.5
        );
        assert_eq!(
            c.scalar_at(node, r#"{__name__="mem.active", resource="dc1.db01"}"#, at),
            1e9
        );
        assert_eq!(
            c.scalar_at(
                node,
                r#"{__name__="cpu.steal", resource="vm7", core="3"}"#,
                at
            ),
            0.01
        );
        assert_eq!(
            c.scalar_at(node, r#"{__name__="load", resource="gw.host1"}"#, at),
            1.5
        );
        assert!(c
            .scalar_at(node, r#"{__name__="after", resource="gw.host1"}"#, at)
            .is_nan());
        assert_eq!(
            c.scalar_at(node, r#"{__name__="late", resource="gw.host1"}"#, at),
            7.0
        );
    }

    // Every bad line was counted by reason on the node that received them.
    let metrics = ureq::get(&format!("http://{}/metrics", c.http(1)))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for (reason, n) in [
        ("missing_value", 1),
        ("bad_value", 1),
        ("too_long", 1),
        ("not_utf8", 1),
    ] {
        let line = format!("tandem_graphite_bad_lines_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
    }
    assert!(
        metrics.contains("tandem_graphite_empty_lines_total 2"),
        "{metrics}"
    );
    // Every line but the blank ones, good or bad, the half line at close
    // included (a connection adds its count once per flush).
    assert!(
        metrics.contains("tandem_graphite_lines_total 7"),
        "{metrics}"
    );
    // Nothing caught up on a fresh cluster; the counter #6's resync figure reads is there.
    assert!(
        metrics.contains("tandem_catchup_bytes_received_total 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tandem_graphite_unterminated_lines_total 1"),
        "{metrics}"
    );
    // The allocator's count covers at least what the store accounts for.
    let heap = metric_value(&metrics, "tandem_heap_allocated_bytes");
    let store = metric_value(&metrics, "tandem_store_index_bytes")
        + metric_value(&metrics, "tandem_store_head_bytes");
    assert!(store > 0.0 && heap >= store, "heap {heap}, store {store}");
}

#[test]
fn promtool_parses_the_responses() {
    let c = Cluster::up(Layout::default());
    let report = c.json(&[
        "push",
        "--json",
        "--quiet",
        "--resources",
        "5",
        "--metrics",
        "2",
        "--samples",
        "20",
    ]);
    assert_eq!(report["failed"], 0);
    let server = format!("http://{}", c.http(0));
    let run = |args: &[&str]| {
        let out = std::process::Command::new("promtool")
            .args(args)
            .output()
            .expect("promtool not found: install Debian's `prometheus` package (.ci/run does)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let instant = run(&[
        "query",
        "instant",
        &server,
        r#"sum by (resource) (rate({__name__="metric1"}[5m]))"#,
    ]);
    assert_eq!(instant.lines().count(), 5, "{instant}");
    let end = now_s();
    let range = run(&[
        "query",
        "range",
        "--start",
        &(end - 300).to_string(),
        "--end",
        &end.to_string(),
        "--step",
        "30s",
        &server,
        r#"max({__name__="metric0"})"#,
    ]);
    assert!(range.contains("=>"), "{range}");
    let _ = run(&["query", "series", "--match", r#"{resource="vm1"}"#, &server]);
    let _ = run(&["query", "labels", &server, "resource"]);
}
