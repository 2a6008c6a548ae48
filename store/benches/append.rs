//! Ingest benchmark: pre-built batches for 100 k series appended through `Partition::append` (log + memory), plus a memory report.
//!
//! Run: `cargo bench -p store --bench append -- --warm-up-time 1 --measurement-time 3`.
//! The memory report (printed first) writes the reference mix (1/3 constant,
//! 1/3 counters +0..100, 1/3 random walks with 2 decimals, 10 s interval)
//! through the same path and prints head bytes per sample and index bytes
//! per series.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use rand::{Rng, SeedableRng};
use store::batch::BatchBuilder;
use store::{Partition, PartitionId, SeriesKey, Store, StoreConfig, Term};
use xxhash_rust::xxh3::xxh3_64;

/// The allocator the `tandem` binary ships with (src/alloc.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Samples = Vec<(i64, f64)>;

const SERIES: usize = 100_000;
const METRICS_PER_RESOURCE: usize = 10;
const PARTITIONS: u32 = 16;
const INTERVAL_MS: i64 = 10_000;
const T0: i64 = 1_700_000_000_000;

const METRICS: [&str; METRICS_PER_RESOURCE] = [
    "cpu.usage",
    "cpu.ready",
    "mem.active",
    "mem.consumed",
    "disk.read",
    "disk.write",
    "net.rx",
    "net.tx",
    "load.shortterm",
    "uptime",
];

/// Series grouped by partition (shard key: the resource).
fn series_by_partition(n: usize) -> Vec<Vec<(usize, SeriesKey)>> {
    let mut parts = vec![Vec::new(); PARTITIONS as usize];
    for i in 0..n {
        let resource = format!("dc{}.host-{:05}", i % 7, i / METRICS_PER_RESOURCE);
        let metric = METRICS[i % METRICS_PER_RESOURCE];
        let key = SeriesKey::new(&resource, metric, &[("env", "prod")]).unwrap();
        let p = (xxh3_64(resource.as_bytes()) % PARTITIONS as u64) as usize;
        parts[p].push((i, key));
    }
    parts
}

/// The reference value mix, one state per series.
struct Mix {
    values: Vec<f64>,
    rng: rand::rngs::StdRng,
}

impl Mix {
    fn new(n: usize) -> Mix {
        Mix {
            values: (0..n).map(|i| (i % 1000) as f64).collect(),
            rng: rand::rngs::StdRng::seed_from_u64(7),
        }
    }

    fn next(&mut self, series: usize) -> f64 {
        let v = &mut self.values[series];
        match series % 3 {
            0 => {}
            1 => *v += self.rng.gen_range(0..=100) as f64,
            _ => {
                let cents = (*v * 100.0).round() as i64 + self.rng.gen_range(-100..=100);
                *v = cents as f64 / 100.0;
            }
        }
        *v
    }
}

/// One batch per partition holding `per_series` consecutive samples of every
/// series, starting at round `round`.
fn build_round(
    parts: &[Vec<(usize, SeriesKey)>],
    mix: &mut Mix,
    round: i64,
    per_series: i64,
    builder: &mut BatchBuilder,
) -> Vec<Vec<u8>> {
    parts
        .iter()
        .map(|series| {
            builder.clear();
            for (i, key) in series {
                for k in 0..per_series {
                    let ts = T0 + (round * per_series + k) * INTERVAL_MS;
                    builder.push_key(key, ts, mix.next(*i)).unwrap();
                }
            }
            let mut out = Vec::new();
            builder.encode(&mut out);
            out
        })
        .collect()
}

fn open_store(dir: &std::path::Path) -> (Store, Vec<Arc<Partition>>) {
    let (store, _) = Store::open(StoreConfig::new(dir)).unwrap();
    let parts = (0..PARTITIONS)
        .map(|p| store.create_partition(PartitionId(p)).unwrap())
        .collect();
    (store, parts)
}

fn bench_append(c: &mut Criterion) {
    let parts = series_by_partition(SERIES);
    let mut group = c.benchmark_group("append");
    for per_series in [1i64, 6] {
        let dir = tempfile::tempdir().unwrap();
        let (store, partitions) = open_store(dir.path());
        let mut mix = Mix::new(SERIES);
        let mut builder = BatchBuilder::new();
        let mut round = 0;
        group.throughput(Throughput::Elements(SERIES as u64 * per_series as u64));
        group.bench_function(format!("100k_series_{per_series}_samples_each"), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let batches = build_round(&parts, &mut mix, round, per_series, &mut builder);
                    round += 1;
                    let start = Instant::now();
                    for (p, batch) in partitions.iter().zip(&batches) {
                        p.append(Term(1), batch).unwrap();
                    }
                    elapsed += start.elapsed();
                }
                elapsed
            })
        });
        let m = store.memory_stats();
        println!(
            "after {round} rounds of {per_series}: {} series, index {:.0} bytes/series, head {:.2} bytes/sample",
            m.series,
            m.index_bytes as f64 / m.series as f64,
            m.head_bytes as f64 / m.head_samples.max(1) as f64
        );
    }
    group.finish();
}

/// The reference point: a minimal loop that looks each series up in a hash
/// map (by its key bytes) and appends the samples to a `Vec`, on the same
/// rounds, under the same machine load.
fn bench_baseline(c: &mut Criterion) {
    let parts = series_by_partition(SERIES);
    let mut group = c.benchmark_group("baseline");
    for per_series in [1i64, 6] {
        let mut maps: Vec<HashMap<Vec<u8>, Samples>> = vec![HashMap::new(); PARTITIONS as usize];
        let mut mix = Mix::new(SERIES);
        let mut round = 0;
        group.throughput(Throughput::Elements(SERIES as u64 * per_series as u64));
        group.bench_function(format!("hashmap_vec_{per_series}_samples_each"), |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let rounds: Vec<Vec<(Vec<u8>, Samples)>> = parts
                        .iter()
                        .map(|series| {
                            series
                                .iter()
                                .map(|(i, key)| {
                                    let samples = (0..per_series)
                                        .map(|k| {
                                            let ts = T0 + (round * per_series + k) * INTERVAL_MS;
                                            (ts, mix.next(*i))
                                        })
                                        .collect();
                                    (key.to_bytes(), samples)
                                })
                                .collect()
                        })
                        .collect();
                    round += 1;
                    let start = Instant::now();
                    for (map, batch) in maps.iter_mut().zip(&rounds) {
                        for (key, samples) in batch {
                            match map.get_mut(key.as_slice()) {
                                Some(v) => v.extend_from_slice(samples),
                                None => {
                                    map.insert(key.clone(), samples.clone());
                                }
                            }
                        }
                    }
                    elapsed += start.elapsed();
                }
                elapsed
            })
        });
    }
    group.finish();
}

/// Head bytes per sample and index bytes per series on the reference mix.
fn memory_report(series: usize, samples_per_series: i64) {
    let parts = series_by_partition(series);
    let dir = tempfile::tempdir().unwrap();
    let (store, partitions) = open_store(dir.path());
    let mut mix = Mix::new(series);
    let mut builder = BatchBuilder::new();
    let per_round = 360; // one hour per batch
    let start = Instant::now();
    for round in 0..samples_per_series / per_round {
        let batches = build_round(&parts, &mut mix, round, per_round, &mut builder);
        for (p, batch) in partitions.iter().zip(&batches) {
            p.append(Term(1), batch).unwrap();
        }
    }
    let m = store.memory_stats();
    println!(
        "memory: {} series x {} samples (reference mix) in {:.1?}: head {:.3} bytes/sample, index {:.0} bytes/series",
        m.series,
        samples_per_series,
        start.elapsed(),
        m.head_bytes as f64 / m.head_samples as f64,
        m.index_bytes as f64 / m.series as f64,
    );
}

fn main() {
    let series = std::env::var("MEMORY_SERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000);
    memory_report(series, 8_640);
    let mut c = Criterion::default().configure_from_args();
    bench_baseline(&mut c);
    bench_append(&mut c);
    c.final_summary();
}
