//! Benchmarks of the partition log on real files: appending 16 KiB batches, and reopening
//! (scanning and verifying) 1 GiB of log. Files live under /work/tmp (or $FSDB_BENCH_DIR).

use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fsdb::{LogConfig, Lsn, MmapBackend, PartitionLog, Term};

const BATCH: usize = 16 << 10;

fn bench_root() -> tempfile::TempDir {
    let base = std::env::var_os("FSDB_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/tmp"));
    std::fs::create_dir_all(&base).expect("bench dir");
    tempfile::tempdir_in(base).expect("temp dir")
}

fn batch() -> Vec<u8> {
    (0..BATCH).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn append(c: &mut Criterion) {
    let root = bench_root();
    let mut log = PartitionLog::open(
        Arc::new(MmapBackend),
        &root.path().join("append"),
        LogConfig::default(),
    )
    .unwrap();
    let payload = batch();
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Bytes(BATCH as u64));
    group.bench_function("append_16KiB", |b| {
        b.iter(|| {
            let lsn = log.append(Term(1), &payload).unwrap();
            // Keep the disk bounded as a sealing store would: drop segments behind us.
            if log.disk_bytes() > 512 << 20 {
                log.trim_before(Lsn(lsn.0)).unwrap();
            }
        })
    });
    group.finish();
}

fn reopen(c: &mut Criterion) {
    let root = bench_root();
    let dir = root.path().join("reopen");
    let payload = batch();
    {
        let mut log =
            PartitionLog::open(Arc::new(MmapBackend), &dir, LogConfig::default()).unwrap();
        for _ in 0..(1usize << 30) / BATCH {
            log.append(Term(1), &payload).unwrap();
        }
        log.sync().unwrap();
    }
    let mut group = c.benchmark_group("log");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(1 << 30));
    group.bench_function("reopen_1GiB", |b| {
        b.iter(|| {
            let log =
                PartitionLog::open(Arc::new(MmapBackend), &dir, LogConfig::default()).unwrap();
            assert_eq!(log.last_lsn(), Lsn(((1usize << 30) / BATCH) as u64));
            log
        })
    });
    group.finish();
}

criterion_group!(benches, append, reopen);
criterion_main!(benches);
