//! `tandem sim`: every subcommand run as the built binary with `--json`, its output parsed.

use std::process::{Command, Output};

use serde_json::Value;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

fn tandem(args: &[&str]) -> Output {
    Command::new(TANDEM)
        .args(args)
        .output()
        .expect("tandem runs")
}

/// Runs `tandem sim ARGS --json`, expects success and one JSON document.
fn sim_json(args: &[&str]) -> Value {
    let mut all = vec!["sim"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = tandem(&all);
    assert!(
        out.status.success(),
        "tandem {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tandem {all:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn calibrate_writes_a_profile_that_size_reads() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("profile.json");
    let out_arg = out.to_str().unwrap();
    let dir_arg = dir.path().to_str().unwrap();
    let printed = sim_json(&[
        "calibrate",
        "--duration",
        "1s",
        "--dir",
        dir_arg,
        "--out",
        out_arg,
    ]);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(printed, written);
    for field in [
        "/cpu/ingest_ns_per_sample",
        "/cpu/route_ns_per_sample",
        "/memory/series_bytes",
        "/disk/chunk_sample_bytes",
        "/log/entry_bytes",
        "/query/ns_per_sample",
        "/resync/full_copy_samples_per_s",
        "/resync/catch_up_samples_per_s",
    ] {
        let v = printed.pointer(field).and_then(Value::as_f64).unwrap();
        assert!(v > 0.0 && v.is_finite(), "{field} = {v}");
    }
    // The temporary store is gone.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("profile.json")]);

    let report = sim_json(&[
        "size",
        "--resources",
        "1000",
        "--metrics-per-resource",
        "20",
        "--profile",
        out_arg,
    ]);
    assert!(report["plans"][0]["nodes"].as_u64().unwrap() >= 2);
}

#[test]
fn size_reports_ha_on_and_off() {
    let v = sim_json(&[
        "size",
        "--resources",
        "10000",
        "--metrics-per-resource",
        "200",
        "--interval",
        "5m",
        "--retention",
        "90d",
        "--replicas",
        "2",
    ]);
    assert_eq!(v["series"], 2_000_000);
    let plans = v["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[0]["replicas"], 2);
    assert_eq!(plans[1]["replicas"], 1);
    let on = plans[0]["nodes"].as_u64().unwrap();
    let off = plans[1]["nodes"].as_u64().unwrap();
    assert!(on >= off && off >= 1, "{on} {off}");
    assert!(["cpu", "ram", "disk"].contains(&plans[0]["binding"].as_str().unwrap()));
    assert!(plans[0]["one_node_down"]["rebuild_s"].as_f64().unwrap() > 0.0);
    assert!(plans[1]["one_node_down"]["rebuild_s"].is_null());
}

#[test]
fn failures_is_deterministic_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("loss.svg");
    let args = [
        "failures",
        "--nodes",
        "6",
        "--hosts",
        "3",
        "--trials",
        "200",
        "--seed",
        "42",
        "--node-mtbf",
        "2000h",
        "--plot",
        svg.to_str().unwrap(),
    ];
    let a = sim_json(&args);
    let b = sim_json(&args);
    assert_eq!(a, b);
    let scenarios = a["scenarios"].as_array().unwrap();
    // As given, HA off, one node per host.
    assert_eq!(scenarios.len(), 3);
    assert_eq!(scenarios[1]["replicas"], 1);
    assert_eq!(scenarios[2]["hosts"], 6);
    let avail = scenarios[0]["read_availability"]["mean"].as_f64().unwrap();
    assert!(avail > 0.9 && avail <= 1.0);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg") && text.contains("HA off"));
}

#[test]
fn placement_reports_balance_and_movement() {
    let v = sim_json(&[
        "placement",
        "--nodes",
        "5",
        "--replicas",
        "2",
        "--partitions",
        "256",
        "--add",
        "1",
    ]);
    assert_eq!(v["before"]["nodes"].as_array().unwrap().len(), 5);
    assert_eq!(v["after"]["nodes"].as_array().unwrap().len(), 6);
    assert!(v["movement"]["copies_moved"].as_u64().unwrap() > 0);
    let v = sim_json(&["placement", "--nodes", "4", "--remove", "2"]);
    assert_eq!(v["after"]["nodes"].as_array().unwrap().len(), 3);
}

#[test]
fn fewer_hosts_than_replicas_is_refused_with_the_controllers_error() {
    let out = tandem(&[
        "sim",
        "placement",
        "--nodes",
        "4",
        "--hosts",
        "1",
        "--replicas",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1 distinct hosts but 2 replicas"), "{err}");
    let out = tandem(&[
        "sim", "failures", "--nodes", "3", "--hosts", "1", "--trials", "1",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
