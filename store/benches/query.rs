//! Benchmarks of the PromQL engine over a `VecSource`: one long raw series, and an aggregation over 10 k series.

use criterion::{criterion_group, criterion_main, Criterion};
use store::query::{instant_query, QueryOptions, VecSource};
use store::{Labels, MatchOp, Matcher, SeriesData, Source};

const INTERVAL_MS: i64 = 10_000;

fn series(metric: &str, resource: usize, samples: usize) -> SeriesData {
    SeriesData {
        labels: Labels::new(vec![
            ("__name__".into(), metric.into()),
            ("resource".into(), format!("vm{resource}")),
        ]),
        samples: (0..samples as i64)
            .map(|i| (i * INTERVAL_MS, (i % 100) as f64 * 0.5 + resource as f64))
            .collect(),
    }
}

fn bench(c: &mut Criterion) {
    let opts = QueryOptions::default();

    // One day of one series at 10 s: 8 640 samples, returned raw.
    let one = VecSource::new(vec![series("m", 0, 8_640)]);
    let end = 8_639 * INTERVAL_MS;
    c.bench_function("raw m[1d], 1 series x 8640 samples", |b| {
        b.iter(|| instant_query(&one, "m[1d]", end, &opts).unwrap())
    });

    // 10 k series with a little over an hour each at 10 s.
    let many = VecSource::new((0..10_000).map(|r| series("m", r, 400)).collect());
    let end = 399 * INTERVAL_MS;
    // The source's share of it: selecting and copying the hour of samples.
    let m = Matcher::new("__name__", MatchOp::Equal, "m").unwrap();
    c.bench_function("select m over 1h, 10k series (source only)", |b| {
        b.iter(|| many.select(std::slice::from_ref(&m), end - 3_600_000 + 1, end))
    });
    c.bench_function("sum(avg_over_time(m[1h])), 10k series", |b| {
        b.iter(|| instant_query(&many, "sum(avg_over_time(m[1h]))", end, &opts).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
