//! The ingest hot path on one thread: parse Graphite lines, route each sample to its partition, append to the store and the fsdb log.
//!
//! 100 k series (10 k resources x 10 metrics), one sample per series per
//! round; every iteration is one round with new timestamps. Beside it, the
//! reference the issue names: a minimal loop that parses, looks each series
//! up in a hash map and appends to a `Vec`.
//!
//! Instruction counts (repeatable on a busy machine): with
//! `INGEST_PROFILE=store` (or `reference`), `INGEST_PROFILE_WARMUP=W` (30)
//! and `INGEST_PROFILE_ROUNDS=N` (5) the bench runs W unmeasured rounds, then
//! N rounds through `measured_*`, and exits, printing the thread's CPU time for the measured rounds (from
//! `/proc/thread-self/schedstat`, so time spent waiting for a core on a busy
//! machine is not counted). Run it under
//! `valgrind --tool=callgrind --toggle-collect='*measured_*'` for counts.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use controller::partition_of;
use criterion::{Criterion, Throughput};
use store::batch::PartitionBuilders;
use store::{PartitionId, Store, StoreConfig, Term};
use tandem::graphite::{find_byte, parse_text, GraphiteConfig, LineSplitter, Piece};
use xxhash_rust::xxh3::xxh3_64_with_seed;

const RESOURCES: usize = 10_000;
const METRICS: usize = 10;
const SERIES: usize = RESOURCES * METRICS;
const PARTITIONS: u32 = 128;

/// One round of Graphite lines: every series once, at `ts_s`.
fn round(ts_s: i64, walk: &mut [f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SERIES * 40);
    for r in 0..RESOURCES {
        for m in 0..METRICS {
            let i = r * METRICS + m;
            walk[i] += ((i as i64 * 7 + ts_s) % 11 - 5) as f64 / 100.0;
            out.extend_from_slice(
                format!("dc1.vm{r}.metric{m} {:.2} {ts_s}\n", walk[i]).as_bytes(),
            );
        }
    }
    out
}

/// The hot path: parse, route, append (log + memory).
fn ingest(
    text: &[u8],
    store: &Store,
    builders: &mut PartitionBuilders,
    config: &GraphiteConfig,
) -> usize {
    let mut n = 0;
    for_each_line(text, config, |line| {
        let l = parse_text(line, config, 0).expect("valid line");
        let p = partition_of(l.resource.as_bytes(), PARTITIONS).0;
        builders
            .push(p, l.resource, l.metric, &[], l.timestamp_ms, l.value)
            .expect("valid key");
        n += 1;
    });
    for (p, batch) in builders.finish() {
        let part = store.partition(PartitionId(p)).expect("created");
        part.append_batch(Term(1), &batch.view()).expect("append");
    }
    n
}

/// Splits `text` into lines as the node's Graphite listener does.
fn for_each_line(text: &[u8], config: &GraphiteConfig, mut on_line: impl FnMut(&str)) {
    let mut splitter = LineSplitter::default();
    splitter.feed(text, config.line_bytes_max, |piece| {
        if let Piece::Line(line) = piece {
            on_line(line)
        }
    });
    assert!(splitter.finish().is_none(), "rounds end with a line end");
}

/// The store's files go under cargo's scratch directory for benches, not
/// `/tmp`: on this machine creating a file in `/tmp` costs about 200 µs of
/// CPU against 5 to 20 µs elsewhere on the same disk, and the log creates
/// segments as it grows.
fn store_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

type Reference<S> = HashMap<Vec<u8>, Vec<(i64, f64)>, S>;

/// The reference: parse, look the series (its path) up in a hash
/// map, append to a Vec. Nothing more: the same line splitting and parser as
/// the hot path, the key found with one `find_byte`.
fn minimal_loop<S: BuildHasher>(
    text: &[u8],
    series: &mut Reference<S>,
    config: &GraphiteConfig,
) -> usize {
    let mut n = 0;
    for_each_line(text, config, |line| {
        let l = parse_text(line, config, 0).expect("valid line");
        let key = &line.as_bytes()[..find_byte(b' ', line.as_bytes()).expect("has fields")];
        match series.get_mut(key) {
            Some(v) => v.push((l.timestamp_ms, l.value)),
            None => {
                series.insert(key.to_vec(), vec![(l.timestamp_ms, l.value)]);
            }
        }
        n += 1;
    });
    n
}

/// xxh3 as the reference map's hash, the one the store uses: std's default
/// SipHash is DoS-resistant and slower.
#[derive(Clone, Copy, Default)]
struct Xxh3Build;

#[derive(Default)]
struct Xxh3Hasher(u64);

impl BuildHasher for Xxh3Build {
    type Hasher = Xxh3Hasher;
    fn build_hasher(&self) -> Xxh3Hasher {
        Xxh3Hasher(0)
    }
}

impl Hasher for Xxh3Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxh3_64_with_seed(bytes, self.0);
    }
    fn write_usize(&mut self, n: usize) {
        self.0 ^= n as u64;
    }
}

fn bench(c: &mut Criterion) {
    let config = GraphiteConfig::default();
    let mut group = c.benchmark_group("ingest_100k_series");
    group.throughput(Throughput::Elements(SERIES as u64));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));

    let dir = store_dir();
    let (store, _) = Store::open(StoreConfig::new(dir.path().join("store"))).expect("open store");
    for p in 0..PARTITIONS {
        store
            .create_partition(PartitionId(p))
            .expect("create partition");
    }
    let mut builders = PartitionBuilders::new(PARTITIONS);
    let mut walk = vec![50.0; SERIES];
    let mut ts = 1_700_000_000i64;
    group.bench_function("parse_route_append_log", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                ts += 10;
                let text = round(ts, &mut walk);
                let started = Instant::now();
                let n = ingest(&text, &store, &mut builders, &config);
                total += started.elapsed();
                assert_eq!(n, SERIES);
            }
            total
        })
    });

    reference(
        &mut group,
        "reference_minimal_loop",
        HashMap::new(),
        &config,
    );
    reference(
        &mut group,
        "reference_minimal_loop_xxh3",
        HashMap::with_hasher(Xxh3Build),
        &config,
    );
    group.finish();
    let mem = store.memory_stats();
    eprintln!("store after the run: {mem:?}");
}

fn reference<S: BuildHasher>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut series: Reference<S>,
    config: &GraphiteConfig,
) {
    let mut ts = 1_700_000_000i64;
    let mut walk = vec![50.0; SERIES];
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                ts += 10;
                let text = round(ts, &mut walk);
                let started = Instant::now();
                let n = minimal_loop(&text, &mut series, config);
                total += started.elapsed();
                assert_eq!(n, SERIES);
            }
            total
        })
    });
}

#[inline(never)]
fn measured_ingest(
    text: &[u8],
    store: &Store,
    builders: &mut PartitionBuilders,
    config: &GraphiteConfig,
) -> usize {
    ingest(text, store, builders, config)
}

#[inline(never)]
fn measured_minimal_loop<S: BuildHasher>(
    text: &[u8],
    series: &mut Reference<S>,
    config: &GraphiteConfig,
) -> usize {
    minimal_loop(text, series, config)
}

/// Fixed input for instruction counting: `warmup` unmeasured rounds (so
/// head chunks are past their first samples, as in a long run), then `rounds`.
fn profile(which: &str, warmup: usize, rounds: usize) {
    let config = GraphiteConfig::default();
    let mut walk = vec![50.0; SERIES];
    let mut ts = 1_700_000_000i64;
    let mut next_text = || {
        ts += 10;
        round(ts, &mut walk)
    };
    let (mut n, mut cpu_ns) = (0, 0);
    match which {
        "store" => {
            let dir = store_dir();
            let (store, _) =
                Store::open(StoreConfig::new(dir.path().join("store"))).expect("open store");
            for p in 0..PARTITIONS {
                store
                    .create_partition(PartitionId(p))
                    .expect("create partition");
            }
            let mut builders = PartitionBuilders::new(PARTITIONS);
            for _ in 0..warmup {
                ingest(&next_text(), &store, &mut builders, &config);
            }
            for _ in 0..rounds {
                let text = next_text();
                let started = thread_cpu_ns();
                n += measured_ingest(&text, &store, &mut builders, &config);
                cpu_ns += thread_cpu_ns() - started;
            }
        }
        "reference" => {
            let mut series = HashMap::new();
            (n, cpu_ns) = profile_reference(&mut series, warmup, rounds, &mut next_text, &config);
        }
        "reference_xxh3" => {
            let mut series = HashMap::with_hasher(Xxh3Build);
            (n, cpu_ns) = profile_reference(&mut series, warmup, rounds, &mut next_text, &config);
        }
        other => {
            panic!("INGEST_PROFILE is `store`, `reference` or `reference_xxh3`, not {other:?}")
        }
    }
    eprintln!(
        "{which}: {n} samples in {rounds} measured rounds, {:.1} ms of thread CPU time: {:.2} M samples per CPU second",
        cpu_ns as f64 / 1e6,
        n as f64 / cpu_ns as f64 * 1e3
    );
}

fn profile_reference<S: BuildHasher>(
    series: &mut Reference<S>,
    warmup: usize,
    rounds: usize,
    next_text: &mut impl FnMut() -> Vec<u8>,
    config: &GraphiteConfig,
) -> (usize, u64) {
    let (mut n, mut cpu_ns) = (0, 0);
    for _ in 0..warmup {
        minimal_loop(&next_text(), series, config);
    }
    for _ in 0..rounds {
        let text = next_text();
        let started = thread_cpu_ns();
        n += measured_minimal_loop(&text, series, config);
        cpu_ns += thread_cpu_ns() - started;
    }
    (n, cpu_ns)
}

/// Nanoseconds this thread has run on a CPU (Linux schedstat; 0 elsewhere).
fn thread_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    if let Ok(which) = std::env::var("INGEST_PROFILE") {
        let var = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|r| r.parse().ok())
                .unwrap_or(default)
        };
        let warmup = var("INGEST_PROFILE_WARMUP", 30);
        return profile(&which, warmup, var("INGEST_PROFILE_ROUNDS", 5));
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
