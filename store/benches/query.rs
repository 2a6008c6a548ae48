//! Benchmarks of the PromQL engine: one long raw series, and an aggregation over 10 k series, over the real store (sealed chunk files plus head chunks, read through `Store::source`) and over a `VecSource` for comparison.
//!
//! Run: `cargo bench -p store --bench query -- --warm-up-time 1 --measurement-time 3`.
//! Instruction counts of the compare's one-metric sum: see [`profile`].

use criterion::Criterion;
use std::sync::Arc;
use store::batch::BatchBuilder;
use store::query::{
    instant_query, instant_query_folded, range_query, FoldPlan, Folded, QueryOptions, Value,
    VecSource,
};
use store::{
    Labels, MatchOp, Matcher, Partition, PartitionId, SeriesData, Source, Store, StoreConfig, Term,
};

/// The allocator the `tandem` binary ships with (src/alloc.rs).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const INTERVAL_MS: i64 = 10_000;
const PARTITIONS: u32 = 16;

fn value(resource: usize, i: i64) -> f64 {
    (i % 100) as f64 * 0.5 + resource as f64
}

fn series(metric: &str, resource: usize, samples: usize) -> SeriesData {
    SeriesData {
        labels: Labels::new(vec![
            ("__name__".into(), metric.into()),
            ("resource".into(), format!("vm{resource}")),
        ]),
        samples: (0..samples as i64)
            .map(|i| (i * INTERVAL_MS, value(resource, i)))
            .collect(),
    }
}

/// A store holding `resources` series of `metric` with `samples` samples
/// each: the first `sealed` of every series in chunk files, the rest in
/// head chunks. Returns the store (and the directory it lives in).
fn real_store(
    metric: &str,
    resources: usize,
    samples: i64,
    sealed: i64,
) -> (Store, Vec<PartitionId>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = Store::open(StoreConfig::new(dir.path())).expect("open store");
    let ids: Vec<PartitionId> = (0..PARTITIONS).map(PartitionId).collect();
    for &id in &ids {
        store.create_partition(id).expect("create partition");
    }
    let mut builders: Vec<BatchBuilder> = ids.iter().map(|_| BatchBuilder::new()).collect();
    let mut write = |from: i64, to: i64| {
        for r in 0..resources {
            let resource = format!("vm{r}");
            let p = xxhash_rust::xxh3::xxh3_64(resource.as_bytes()) % u64::from(PARTITIONS);
            for i in from..to {
                builders[p as usize]
                    .push(&resource, metric, &[], i * INTERVAL_MS, value(r, i))
                    .expect("valid key");
            }
        }
        for (b, &id) in builders.iter_mut().zip(&ids) {
            if !b.is_empty() {
                let mut bytes = Vec::new();
                b.encode(&mut bytes);
                b.clear();
                store
                    .partition(id)
                    .expect("created")
                    .append(Term(1), &bytes)
                    .expect("append");
            }
        }
    };
    // In slices, so that no batch grows past the log's record limit.
    let step = (100_000 / resources as i64).max(1);
    for (from, to) in [(0, sealed), (sealed, samples)] {
        let mut at = from;
        while at < to {
            write(at, (at + step).min(to));
            at += step;
        }
        if to == sealed {
            for &id in &ids {
                store.partition(id).expect("created").seal().expect("seal");
            }
        }
    }
    (store, ids, dir)
}

/// A query's only foldable aggregation folded over each partition apart, on
/// every core, the partials merged: how a node answers it (query/fold.rs).
fn fold_partitions(plan: &FoldPlan, partitions: &[Arc<Partition>]) -> Folded {
    Folded::from([(0, plan.fold_all(partitions).unwrap().unwrap())])
}

fn bench(c: &mut Criterion) {
    let opts = QueryOptions::default();

    // One day of one series at 10 s: 8 640 samples, returned raw; 6 000 of
    // them in a sealed chunk file, the rest in the head chunk.
    let end = 8_639 * INTERVAL_MS;
    let (store, ids, _dir) = real_store("m", 1, 8_640, 6_000);
    let source = store.source(&ids);
    let m = Matcher::new("__name__", MatchOp::Equal, "m").unwrap();
    let all = source.select(std::slice::from_ref(&m), 0, end);
    assert_eq!(all[0].samples.len(), 8_640);
    assert!(
        store.memory_stats().head_samples == 2_640,
        "6 000 samples sealed"
    );
    c.bench_function("store: raw m[1d], 1 series x 8640 samples", |b| {
        b.iter(|| instant_query(&source, "m[1d]", end, &opts).unwrap())
    });
    drop((source, store));
    let one = VecSource::new(vec![series("m", 0, 8_640)]);
    c.bench_function("vec source: raw m[1d], 1 series x 8640 samples", |b| {
        b.iter(|| instant_query(&one, "m[1d]", end, &opts).unwrap())
    });

    // 10 k series with a little over an hour each at 10 s: 200 samples per
    // series sealed, 200 in head chunks.
    let end = 399 * INTERVAL_MS;
    let (store, ids, _dir) = real_store("m", 10_000, 400, 200);
    let source = store.source(&ids);
    assert_eq!(
        source.select(std::slice::from_ref(&m), 0, end).len(),
        10_000
    );
    assert_eq!(store.memory_stats().head_samples, 2_000_000, "half sealed");
    let many = VecSource::new((0..10_000).map(|r| series("m", r, 400)).collect());
    let q = "sum(avg_over_time(m[1h]))";
    assert_eq!(
        format!("{:?}", instant_query(&source, q, end, &opts).unwrap()),
        format!("{:?}", instant_query(&many, q, end, &opts).unwrap()),
        "the store and the vectors answer alike"
    );
    c.bench_function("store: select m over 1h, 10k series (source only)", |b| {
        b.iter(|| source.select(std::slice::from_ref(&m), end - 3_600_000 + 1, end))
    });
    c.bench_function("store: sum(avg_over_time(m[1h])), 10k series", |b| {
        b.iter(|| instant_query(&source, "sum(avg_over_time(m[1h]))", end, &opts).unwrap())
    });
    // As a node answers it: folded over each partition apart, on every
    // core, the partials merged (query/fold.rs).
    let partitions: Vec<_> = ids.iter().map(|&id| store.partition(id).unwrap()).collect();
    let folded = || {
        let plan = FoldPlan::new(q, 0, end, end, 1, &opts).unwrap();
        let folded = fold_partitions(&plan, &partitions);
        instant_query_folded(&VecSource::default(), q, end, &opts, folded).unwrap()
    };
    match (folded(), instant_query(&source, q, end, &opts).unwrap()) {
        (Value::Vector(a), Value::Vector(b)) => {
            assert!(
                (a[0].2 - b[0].2).abs() < 1e-9 * b[0].2.abs(),
                "{a:?} vs {b:?}"
            )
        }
        other => panic!("{other:?}"),
    }
    c.bench_function(
        "store: sum(avg_over_time(m[1h])), 10k series, folded per partition",
        |b| b.iter(folded),
    );
    // A dashboard panel's range query as a node answers it (the compare
    // bench's "one metric summed over all resources").
    let folded_range = |q: &str| {
        let plan = FoldPlan::new(q, 0, 0, end, INTERVAL_MS, &opts).unwrap();
        let folded = fold_partitions(&plan, &partitions);
        store::query::range_query_folded(
            &VecSource::default(),
            q,
            0,
            end,
            INTERVAL_MS,
            &opts,
            folded,
        )
        .unwrap()
    };
    assert_eq!(
        format!("{:?}", folded_range("sum(m)")),
        format!(
            "{:?}",
            range_query(&many, "sum(m)", 0, end, INTERVAL_MS, &opts).unwrap()
        ),
        "folded over the store as over the vectors"
    );
    c.bench_function(
        "store: sum(m) range, 10k series x 400 steps, folded per partition",
        |b| b.iter(|| folded_range("sum(m)")),
    );
    drop((partitions, source, store));
    c.bench_function(
        "vec source: select m over 1h, 10k series (source only)",
        |b| b.iter(|| many.select(std::slice::from_ref(&m), end - 3_600_000 + 1, end)),
    );
    c.bench_function("vec source: sum(avg_over_time(m[1h])), 10k series", |b| {
        b.iter(|| instant_query(&many, "sum(avg_over_time(m[1h]))", end, &opts).unwrap())
    });

    // Range queries over the whole 400 samples at their 10 s interval: 400
    // steps of 10 k series, as a dashboard panel asks them.
    for q in ["sum(m)", "sum(rate(m[5m]))"] {
        c.bench_function(
            &format!("vec source: {q} range, 10k series x 400 steps"),
            |b| b.iter(|| range_query(&many, q, 0, end, INTERVAL_MS, &opts).unwrap()),
        );
    }
}

/// The compare bench's layout (benches/compare.rs): `resources` x 20
/// metrics x `samples` samples at 10 s over 1 024 partitions, all sealed,
/// with its three kinds of values (constant, a counter, a random walk of
/// two decimals), in a store at `dir`: opened if it is there, else built.
/// Returns the store, its partitions and the last timestamp.
fn compare_store(
    dir: &std::path::Path,
    resources: usize,
    samples: i64,
) -> (Store, Vec<Arc<Partition>>, i64) {
    const METRICS: usize = 20;
    const COMPARE_PARTITIONS: u32 = 1_024;
    let end = (samples - 1) * INTERVAL_MS;
    let (store, _) = Store::open(StoreConfig::new(dir)).expect("open store");
    if store.partition_ids().len() == COMPARE_PARTITIONS as usize {
        let partitions = (0..COMPARE_PARTITIONS)
            .map(|id| store.partition(PartitionId(id)).expect("opened"))
            .collect();
        return (store, partitions, end);
    }
    let partitions: Vec<Arc<Partition>> = (0..COMPARE_PARTITIONS)
        .map(|id| store.create_partition(PartitionId(id)).expect("create"))
        .collect();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut state: Vec<f64> = (0..resources * METRICS)
        .map(|i| match i % 3 {
            1 => 0.0,
            _ => (i * 31 % 10_000) as f64 / 100.0,
        })
        .collect();
    let names: Vec<String> = (0..METRICS).map(|m| format!("metric{m}")).collect();
    let mut builders: Vec<BatchBuilder> = partitions.iter().map(|_| BatchBuilder::new()).collect();
    for k in 0..samples {
        for r in 0..resources {
            let resource = format!("vm{r}");
            let p = xxhash_rust::xxh3::xxh3_64(resource.as_bytes()) % u64::from(COMPARE_PARTITIONS);
            for (m, name) in names.iter().enumerate() {
                let v = &mut state[r * METRICS + m];
                match (r * METRICS + m) % 3 {
                    0 => {}
                    1 => *v += (next() % 101) as f64,
                    _ => *v = ((*v * 100.0).round() + (next() % 1001) as f64 - 500.0) / 100.0,
                }
                builders[p as usize]
                    .push(&resource, name, &[], k * INTERVAL_MS, *v)
                    .expect("valid key");
            }
        }
        for (b, p) in builders.iter_mut().zip(&partitions) {
            let mut bytes = Vec::new();
            b.encode(&mut bytes);
            b.clear();
            p.append(Term(1), &bytes).expect("append");
        }
    }
    for p in &partitions {
        p.seal().expect("seal");
    }
    assert_eq!(store.memory_stats().head_samples, 0, "all sealed");
    (store, partitions, end)
}

/// The compare bench's "one metric summed over all resources" as a node
/// answers it.
fn one_metric_sum(partitions: &[Arc<Partition>], end: i64) -> Value {
    let (q, opts) = ("sum(metric0)", QueryOptions::default());
    let plan = FoldPlan::new(q, 0, 0, end, INTERVAL_MS, &opts).unwrap();
    let folded = fold_partitions(&plan, partitions);
    store::query::range_query_folded(&VecSource::default(), q, 0, end, INTERVAL_MS, &opts, folded)
        .unwrap()
}

/// [`one_metric_sum`] over the compare's layout (10 k resources x 20
/// metrics x 100 samples).
fn bench_compare_layout(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_store, partitions, end) = compare_store(dir.path(), 10_000, 100);
    match one_metric_sum(&partitions, end) {
        Value::Matrix(m) => assert_eq!(m[0].samples.len(), 100, "a point per step"),
        other => panic!("{other:?}"),
    }
    c.bench_function(
        "store: sum(metric0) range, 10k of 200k series x 100 steps, sealed, 1024 partitions",
        |b| b.iter(|| one_metric_sum(&partitions, end)),
    );
}

#[inline(never)]
fn measured_one_metric_sum(partitions: &[Arc<Partition>], end: i64) -> Value {
    one_metric_sum(partitions, end)
}

/// Instruction counts of [`one_metric_sum`] (repeatable on a busy
/// machine): `QUERY_PROFILE=<dir>` keeps the compare layout's store in
/// `<dir>` (built on the first run, about 20 s), runs
/// `QUERY_PROFILE_WARMUP` (3) queries and then `QUERY_PROFILE_ROUNDS` (10)
/// through `measured_one_metric_sum`, all on this one thread, prints the
/// process CPU time per measured query and exits. Run it under
/// `valgrind --tool=callgrind --toggle-collect='*measured_*'` for counts.
fn profile(dir: &str) {
    let var = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(default)
    };
    let (_store, partitions, end) = compare_store(std::path::Path::new(dir), 10_000, 100);
    // One worker, this thread: callgrind collects the measured function on
    // the thread that calls it.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .use_current_thread()
        .build()
        .expect("rayon pool");
    // Nanoseconds this thread has run on a CPU (time waiting for a core
    // on a busy machine is not counted).
    let cpu = || -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    pool.install(|| {
        for _ in 0..var("QUERY_PROFILE_WARMUP", 3) {
            one_metric_sum(&partitions, end);
        }
        let rounds = var("QUERY_PROFILE_ROUNDS", 10);
        let before = cpu();
        for _ in 0..rounds {
            criterion::black_box(measured_one_metric_sum(&partitions, end));
        }
        let ns = cpu() - before;
        eprintln!(
            "one-metric sum: {rounds} measured queries, {:.2} ms of thread CPU each",
            ns as f64 / 1e6 / rounds as f64
        );
    });
}

fn main() {
    if let Ok(dir) = std::env::var("QUERY_PROFILE") {
        return profile(&dir);
    }
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    bench_compare_layout(&mut c);
    c.final_summary();
}
