//! The failure simulation against closed forms, and its determinism.

use super::*;

const HOUR: f64 = 3600.0;

fn input(nodes: u32, hosts: u32, replicas: u32) -> FailureInput {
    FailureInput {
        nodes,
        hosts,
        replicas,
        partitions: 64,
        node_mtbf_s: 1000.0 * HOUR,
        node_mttr_s: None,
        host_mtbf_s: None,
        host_mttr_s: None,
        disk_loss: 1.0,
        failover_s: 5.0,
        log_reach_s: 2.0 * HOUR,
        horizon_s: 500.0 * HOUR,
        trials: 4000,
        seed: 7,
        series: 64_000.0,
        interval_s: 300.0,
        retention_s: 24.0 * HOUR,
        full_copy_samples_per_s: 1e6,
        full_copy_partition_s: 0.01,
        catch_up_samples_per_s: 2e6,
        compare: false,
    }
}

fn run(i: &FailureInput) -> FailureReport {
    simulate(i, &|_| {}).unwrap()
}

/// `estimate` within `k` standard errors of `exact` (plus a floor for a zero stderr).
fn within(e: Estimate, exact: f64, k: f64) {
    let tolerance = k * e.stderr + 1e-9;
    assert!(
        (e.mean - exact).abs() <= tolerance,
        "estimate {} +- {} vs exact {exact}",
        e.mean,
        e.stderr
    );
}

#[test]
fn one_copy_without_repair_loses_data_at_the_first_failure() {
    // R = 1, 4 nodes, no repair: data is lost at the first of 4 exponential
    // failures, so P(loss by T) = 1 - exp(-4 T / MTBF) = 1 - e^-2.
    let r = run(&input(4, 4, 1));
    let s = &r.scenarios[0];
    within(s.p_data_loss, 1.0 - (-2.0f64).exp(), 4.0);
    // The Wilson interval holds the exact value too.
    let (lo, hi) = s.p_data_loss_95;
    assert!(lo < 1.0 - (-2.0f64).exp() && 1.0 - (-2.0f64).exp() < hi);
}

#[test]
fn two_copies_without_repair_lose_data_when_both_nodes_failed() {
    // R = 2 on 2 nodes, no repair: every partition is lost once both have
    // failed: P = (1 - exp(-T / MTBF))^2.
    let mut i = input(2, 2, 2);
    i.horizon_s = 1000.0 * HOUR;
    let r = run(&i);
    let exact = (1.0 - (-1.0f64).exp()).powi(2);
    within(r.scenarios[0].p_data_loss, exact, 4.0);
    // A loss takes every partition's whole content: 64 000 series x 288 samples.
    let s = &r.scenarios[0];
    let per_loss = s.samples_lost.mean / s.p_data_loss.mean;
    assert!(
        (per_loss - 64_000.0 * 288.0).abs() < 1e-6 * per_loss,
        "{per_loss}"
    );
}

#[test]
fn a_single_node_is_available_mtbf_over_mtbf_plus_mttr() {
    // One node, no data loss, exponential repair: the expected availability
    // over [0, T] starting up is mu/(l+mu) + l/((l+mu)^2 T) (1 - e^-(l+mu)T).
    let mut i = input(1, 1, 1);
    i.node_mtbf_s = 100.0 * HOUR;
    i.node_mttr_s = Some(10.0 * HOUR);
    i.disk_loss = 0.0;
    i.horizon_s = 2000.0 * HOUR;
    i.trials = 400;
    let r = run(&i);
    let (l, mu, t): (f64, f64, f64) = (1.0 / 100.0, 1.0 / 10.0, 2000.0);
    let exact = mu / (l + mu) + l / ((l + mu).powi(2) * t) * (1.0 - (-(l + mu) * t).exp());
    let s = &r.scenarios[0];
    within(s.read_availability, exact, 4.0);
    // One copy: no failover, so writes are available exactly as reads.
    assert_eq!(s.write_availability, s.read_availability);
    assert_eq!(s.p_data_loss.mean, 0.0);
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let mut i = input(6, 3, 2);
    i.node_mttr_s = Some(8.0 * HOUR);
    i.host_mtbf_s = Some(2000.0 * HOUR);
    i.host_mttr_s = Some(24.0 * HOUR);
    i.disk_loss = 0.3;
    i.trials = 300;
    i.compare = true;
    let a = serde_json::to_string(&run(&i)).unwrap();
    let b = serde_json::to_string(&run(&i)).unwrap();
    assert_eq!(a, b);
    i.seed += 1;
    let c = serde_json::to_string(&run(&i)).unwrap();
    assert_ne!(a, c);
}

#[test]
fn fewer_hosts_than_replicas_is_refused() {
    let err = simulate(&input(4, 1, 2), &|_| {}).unwrap_err();
    assert!(matches!(
        err,
        Error::Placement(controller::Error::NotEnoughHosts {
            hosts: 1,
            replicas: 2
        })
    ));
}

#[test]
fn ha_on_loses_less_than_ha_off_and_spends_time_degraded() {
    let mut i = input(4, 4, 2);
    i.node_mttr_s = Some(24.0 * HOUR);
    i.disk_loss = 0.5;
    i.trials = 500;
    i.compare = true;
    let r = run(&i);
    let (on, off) = (&r.scenarios[0], &r.scenarios[1]);
    assert_eq!((on.replicas, off.replicas), (2, 1));
    assert!(on.p_data_loss.mean < off.p_data_loss.mean, "{on:?} {off:?}");
    assert!(on.read_availability.mean > off.read_availability.mean);
    assert!(on.degraded_hours.mean > 0.0);
    // Failovers pause writes, not reads.
    assert!(on.write_availability.mean < on.read_availability.mean);
    assert_eq!(off.degraded_hours.mean, 0.0);
}

#[test]
fn progress_counts_every_trial() {
    let mut i = input(3, 3, 2);
    i.trials = 50;
    i.compare = true;
    let count = AtomicU64::new(0);
    let r = simulate(&i, &|n| {
        count.fetch_add(n, AtomicOrdering::Relaxed);
    })
    .unwrap();
    assert_eq!(r.scenarios.len() as u32, scenario_count(&i));
    assert_eq!(
        count.load(AtomicOrdering::Relaxed),
        50 * r.scenarios.len() as u64
    );
}

#[test]
fn wilson_interval_brackets_the_proportion() {
    let (lo, hi) = wilson(10.0, 100.0);
    assert!(lo < 0.1 && 0.1 < hi && lo > 0.05 && hi < 0.18);
    assert_eq!(wilson(0.0, 100.0).0, 0.0);
    assert!(wilson(0.0, 100.0).1 > 0.0);
}
