//! The sizing model on hand-computed cases.

use super::*;
use crate::profile::{self, Profile};

/// Round numbers, so that every figure below can be checked by hand.
fn profile() -> Profile {
    Profile {
        version: profile::VERSION,
        machine: profile::Machine {
            cores: 2,
            ram_bytes: 1 << 30,
            cpu_model: "test".into(),
            date: "2026-01-01".into(),
            command: "hand-written".into(),
            seconds: 0.0,
            note: String::new(),
        },
        workload: profile::WorkloadInfo {
            series: 0,
            partitions: 0,
            key_bytes: 15.0,
            samples: 0,
        },
        cpu: profile::Cpu {
            ingest_ns_per_sample: 1000.0,
            route_ns_per_sample: 500.0,
            seal_ns_per_sample: 100.0,
        },
        memory: profile::Memory {
            base_rss_bytes: 1e8,
            partition_bytes: 1000.0,
            series_bytes: 500.0,
            head_sample_bytes: 2.0,
            chunk_bytes: 80.0,
        },
        disk: profile::Disk {
            partition_bytes: 65536.0 + 4096.0,
            chunk_fixed_bytes: 100.0,
            chunk_sample_bytes: 1.5,
            chunk_index_bytes: 70.0,
            fitted_at_samples: [25, 721],
        },
        log: profile::Log {
            entry_bytes: 40.0,
            record_bytes: 30.0,
        },
        query: profile::Query {
            ns_per_sample: 10.0,
            expr: String::new(),
        },
        resync: profile::Resync {
            full_copy_samples_per_s: 1e6,
            full_copy_bytes_per_s: 1e7,
            full_copy_partition_s: 0.01,
            catch_up_samples_per_s: 2e6,
        },
        policy: profile::Policy {
            seal_head_span_ms: 2 * 3600 * 1000,
            seal_head_samples_max: 4 << 20,
            log_segment_bytes_min: 64 << 10,
            log_segment_bytes_max: 64 << 20,
            log_write_ahead_bytes: 8 << 20,
        },
    }
}

/// 1000 resources x 10 metrics every 5 minutes for a day, R = 2, 100 partitions.
fn input() -> SizeInput {
    SizeInput {
        resources: 1000,
        metrics_per_resource: 10,
        interval_s: 300.0,
        keep: Keep::Retention { seconds: 86_400.0 },
        replicas: 2,
        partitions: 100,
        node_cores: 4.0,
        node_ram_bytes: 120e6,
        node_disk_bytes: 1e12,
        headroom: 0.0,
        outage_s: 8.0 * 3600.0,
        key_bytes: 15.0,
        nodes: None,
        seal_span_s: None,
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn a_day_of_five_minute_samples_by_hand() {
    let p = profile();
    let report = size(&input(), &p).unwrap();
    // 10 000 series; 86 400 / 300 = 288 samples each; a 2 h seal span at
    // 5 min is 25 samples per chunk; the head holds 25, 263 are sealed in
    // ceil(263 / 25) = 11 chunks.
    assert_eq!(report.series, 10_000);
    assert_eq!(report.samples_per_series, 288);
    assert_eq!(report.samples_per_chunk, 25);
    assert!(close(report.ingest_samples_per_s, 10_000.0 / 300.0));

    // The log of one partition holding k resources (10 series each): one
    // record per round of 30 - 24 + 10 k * 40 bytes, 25 per seal, 12 seals;
    // k is Poisson with mean 1000 / 100 = 10.
    let mut log = crate::logmodel::LogFootprint::default();
    let (mut disk_sum, mut resident_sum, mut pmf, mut total) = (0.0, 0.0, (-10.0f64).exp(), 0.0);
    for k in 0..=(10 + 32 + 10) {
        if k > 0 {
            pmf *= 10.0 / k as f64;
        }
        let f = crate::logmodel::replay(
            &LogPolicy::from(&p.policy),
            &LogPattern {
                payload_bytes: 6 + 400 * k,
                records_per_period: if k == 0 { 0 } else { 25 },
                periods: 12,
                seals: true,
            },
        );
        disk_sum += pmf * f.disk_bytes as f64;
        resident_sum += pmf * f.resident_bytes as f64;
        total += pmf;
    }
    log.disk_bytes = (disk_sum / total) as u64;
    log.resident_bytes = (resident_sum / total) as u64;

    let on = &report.plans[0];
    assert_eq!(on.replicas, 2);
    // RAM for R = 2 (20 000 series copies, 200 partition copies):
    let variable = 200.0 * 1000.0          // partitions
        + 20_000.0 * 500.0                 // series
        + 20_000.0 * 24.0 * 2.0            // 24 more head samples each
        + 20_000.0 * 11.0 * 80.0           // sealed chunk references
        + 200.0 * log.resident_bytes as f64 // mapped log
        + 20_000.0 * 11.0 * 70.0; // mapped chunk indexes
                                  // 120 MB nodes less the 100 MB process leave 20 MB each.
    assert_eq!(on.nodes_for_ram, (variable / 20e6).ceil() as u32);
    assert_eq!(on.binding, Some(Resource::Ram));
    assert!(on.nodes >= on.nodes_for_ram && on.fits);
    let n = on.nodes as f64;
    assert!(close(on.node.ram.total_bytes, 1e8 + variable / n));
    assert!(close(
        on.node.ram.chunk_refs_bytes,
        20_000.0 * 11.0 * 80.0 / n
    ));

    // Disk: chunk files 20 000 x (11 x 100 + 263 x 1.5), logs, 4 KiB per partition.
    let disk =
        20_000.0 * (11.0 * 100.0 + 263.0 * 1.5) + 200.0 * log.disk_bytes as f64 + 200.0 * 4096.0;
    assert!(close(on.node.disk.total_bytes, disk / n));
    // CPU: 33.3 samples/s x (500 + 2 x 1100) ns.
    assert!(close(on.node.cpu_cores, 10_000.0 / 300.0 * 2700e-9 / n));
    assert_eq!(on.nodes_for_cpu, 1);
    assert_eq!(on.nodes_for_disk, 1);

    // One node down for 8 h: it misses 8 h of its share of the copies.
    let d = &on.one_node_down;
    let missed = 10_000.0 * 2.0 / 300.0 / n * 8.0 * 3600.0;
    assert!(close(d.outage_missed_samples, missed));
    assert!(close(d.catch_up_s, missed / 2e6));
    assert!(close(d.extra_load_fraction, 1.0 / (n - 1.0)));
    assert_eq!(d.log_reach_s, 7200.0);
    // Its whole data: 20 000 / n series x 288 samples at 1 M samples/s, and
    // 10 ms for each of its 200 / n partitions.
    let full = 200.0 / n * 0.01 + 20_000.0 / n * 288.0 / 1e6;
    assert!(close(d.full_copy_s, full));
    assert!(close(d.rebuild_s.unwrap(), full / (n - 1.0)));

    // HA off: half the copies, and a removal loses data instead of rebuilding.
    let off = &report.plans[1];
    assert_eq!(off.replicas, 1);
    assert!(off.nodes < on.nodes);
    assert_eq!(off.one_node_down.rebuild_s, None);
}

#[test]
fn a_fixed_sample_count_never_seals() {
    // What one `tandem push --resources 1000 --metrics 20 --samples 100` leaves.
    let mut i = input();
    i.metrics_per_resource = 20;
    i.interval_s = 10.0;
    i.keep = Keep::Samples { per_series: 100 };
    i.nodes = Some(3);
    i.partitions = 1024;
    let report = size(&i, &profile()).unwrap();
    let on = &report.plans[0];
    assert_eq!(on.nodes, 3);
    assert_eq!(on.binding, None);
    // 100 samples are fewer than a 2 h chunk (721 at 10 s): all in the head.
    assert_eq!(on.node.ram.chunk_refs_bytes, 0.0);
    assert_eq!(on.node.disk.chunk_files_bytes, 0.0);
    assert!(close(on.node.ram.head_bytes, 40_000.0 / 3.0 * 99.0 * 2.0));
}

#[test]
fn fewer_nodes_than_replicas_is_refused() {
    let mut i = input();
    i.nodes = Some(1);
    let err = size(&i, &profile()).unwrap_err();
    assert!(err.to_string().contains("hosts"), "{err}");
}

#[test]
fn nodes_too_small_for_the_process_are_refused_with_a_hint() {
    let mut i = input();
    i.node_ram_bytes = 50e6;
    let err = size(&i, &profile()).unwrap_err().to_string();
    assert!(err.contains("--node-ram"), "{err}");
}

#[test]
fn longer_keys_cost_more() {
    let base = size(&input(), &profile()).unwrap();
    let mut i = input();
    i.key_bytes = 55.0;
    let long = size(&i, &profile()).unwrap();
    // Cluster totals (the node count may grow with the keys).
    let total =
        |r: &SizeReport, f: &dyn Fn(&NodeUse) -> f64| f(&r.plans[0].node) * r.plans[0].nodes as f64;
    assert!(total(&long, &|n| n.ram.series_bytes) > total(&base, &|n| n.ram.series_bytes));
    assert!(
        total(&long, &|n| n.disk.chunk_files_bytes) > total(&base, &|n| n.disk.chunk_files_bytes)
    );
}

#[test]
fn split_solves_for_the_fewest_nodes() {
    let s = Split {
        fixed: 10.0,
        variable: 100.0,
    };
    assert_eq!(s.nodes_within(60.0), Some(2));
    assert_eq!(s.nodes_within(35.0), Some(4));
    assert_eq!(s.nodes_within(10.0), None);
    assert_eq!(
        Split {
            fixed: 0.0,
            variable: 0.0
        }
        .nodes_within(1.0),
        Some(1)
    );
}

#[test]
fn a_longer_seal_span_trades_chunk_overhead_for_head_and_log() {
    let mut i = input();
    i.seal_span_s = Some(24.0 * 3600.0);
    let r = size(&i, &profile()).unwrap();
    // 24 h at 5 min: 289 samples per chunk, so a day fits in the head.
    assert_eq!(r.samples_per_chunk, 289);
    let n = &r.plans[0].node;
    assert_eq!(n.ram.chunk_refs_bytes, 0.0);
    assert!(n.ram.head_bytes > 0.0);
    assert_eq!(r.plans[0].one_node_down.log_reach_s, 86_400.0);
}
