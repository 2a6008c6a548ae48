//! `tandem sim calibrate`: runs the real store and fsdb on this machine for a bounded time and measures what the sizing model needs.
//!
//! Everything happens in a temporary directory under `CalibrateConfig::dir`
//! (a real file system: the log is memory-mapped, chunk files are fsynced).
//! The phases, each bounded by a share of the time budget:
//!
//! 1. **Empty partitions**: creates 64 and measures their memory and disk.
//! 2. **Run A**, 5-minute samples, a seal every 24 rounds (the 2 h seal span
//!    at that interval): every round is one collector batch routed as the
//!    gateway does (`batch::split` by `partition_of`) and appended with
//!    `Partition::append`. Process CPU time (getrusage) is taken around the
//!    routing, the appends and the seals separately; heap growth gives the
//!    memory of a new series and of each sealed chunk (the slope over seals).
//! 3. **Query**: a PromQL `count_over_time` over every sealed sample of run A.
//! 4. **Full copy**: `Partition::snapshot` of run A's partitions, installed
//!    with `Store::install_snapshot` as one large partition (wall clock: it
//!    includes fsync), and the fixed cost of installing a partition, apart.
//! 5. **Run B**, 10-second samples, a seal every 720 rounds: a second chunk
//!    length, so disk bytes split into a per-chunk and a per-sample part.
//!    Before its seal, its logs are read and applied to a fresh store
//!    (`read_log` + `apply_replicated`): the incremental catch-up rate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use store::batch::{self, BatchBuilder};
use store::{Lsn, Partition, PartitionId, Store, StoreConfig, Term};

use crate::error::{Error, Result};
use crate::measure::{self, cpu_seconds, resident};
use crate::profile::{self, Profile};
use crate::workload::Workload;

/// Bytes of a log record's frame header (fsdb/FORMAT.md, "Records").
pub const LOG_FRAME_HEADER_BYTES: f64 = 24.0;

const METRICS_PER_RESOURCE: u32 = 20;
const EMPTY_PARTITIONS: u32 = 64;
const RUN_A_PARTITIONS: u32 = 16;
const RUN_A_INTERVAL_MS: i64 = 300_000;
const RUN_B_PARTITIONS: u32 = 8;
const RUN_B_INTERVAL_MS: i64 = 10_000;
const CATCH_UP_READ_BYTES: usize = 4 << 20;
/// Timed once per metric name (`METRIC`), over every sample of run A.
const QUERY_EXPR: &str = r#"sum(count_over_time({__name__="METRIC"}[RANGE]))"#;

#[derive(Clone, Debug)]
pub struct CalibrateConfig {
    /// Parent of the temporary working directory (use a real disk, not tmpfs).
    pub dir: PathBuf,
    pub duration: Duration,
    pub seed: u64,
    /// The command line, recorded in the profile.
    pub command: String,
    pub note: String,
    /// Bytes the process has allocated and not freed (by its global
    /// allocator's count); only differences are used. Resident memory cannot
    /// stand in: an allocator serves small allocations from pages it holds.
    pub heap: fn() -> i64,
}

/// Measures this machine. `progress` receives one line per phase.
pub fn calibrate(config: &CalibrateConfig, progress: &mut dyn FnMut(&str)) -> Result<Profile> {
    if config.duration < Duration::from_millis(500) {
        return Err(Error::Invalid(format!(
            "--duration {:?} is too short to measure anything; give at least 1s",
            config.duration
        )));
    }
    let started = Instant::now();
    let base_rss = resident()?.rss_bytes as f64;
    std::fs::create_dir_all(&config.dir).map_err(|e| Error::io(&config.dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix("tandem-calibrate-")
        .tempdir_in(&config.dir)
        .map_err(|e| Error::io(&config.dir, e))?;
    let budget = config.duration.as_secs_f64();
    let mut progress =
        |m: &str| progress(&format!("{:5.1} s  {m}", started.elapsed().as_secs_f64()));
    let scale = budget.clamp(1.0, 10.0);

    progress("empty partitions");
    let (partition_rss, partition_disk) = empty_partitions(&tmp.path().join("empty"), config.heap)?;

    progress("run A: 5-minute samples, 24 per chunk");
    let resources_a = (100.0 * scale) as u32;
    let mut a = Run::new(
        &tmp.path().join("a"),
        RUN_A_PARTITIONS,
        Workload::new(
            resources_a,
            METRICS_PER_RESOURCE,
            RUN_A_INTERVAL_MS,
            config.seed,
        ),
        config.heap,
    )?;
    let chunk_a = seal_every(RUN_A_INTERVAL_MS);
    a.run_periods(chunk_a, 2, Duration::from_secs_f64(0.45 * budget), false)?;
    let key_bytes = a.workload.key_bytes();
    let disk_a = chunk_disk(&tmp.path().join("a"))?;

    progress("query over sealed chunks");
    let (query_ns, query_expr) = a.query()?;

    progress("full copy (snapshot + install)");
    let (copy_samples_s, copy_bytes_s, copy_partition_s) =
        full_copy(&a.store, &tmp.path().join("copy"))?;
    let run_a = a.finish();

    progress("run B: 10-second samples, 720 per chunk");
    let resources_b = (resources_a / 20).max(5);
    let mut b = Run::new(
        &tmp.path().join("b"),
        RUN_B_PARTITIONS,
        Workload::new(
            resources_b,
            METRICS_PER_RESOURCE,
            RUN_B_INTERVAL_MS,
            config.seed + 1,
        ),
        config.heap,
    )?;
    let chunk_b = seal_every(RUN_B_INTERVAL_MS);
    let remaining = budget - started.elapsed().as_secs_f64();
    b.run_periods(
        chunk_b,
        1,
        Duration::from_secs_f64((remaining * 0.8).max(0.1)),
        true,
    )?;
    let disk_b = chunk_disk(&tmp.path().join("b"))?;
    let catch_up = b.catch_up_samples_per_s.ok_or_else(|| Error::Measure {
        what: "catch-up rate",
        reason: "run B ended before its first seal".into(),
    })?;
    let run_b = b.finish();

    progress("done");
    let (fixed, per_sample) = fit_chunk_disk(&disk_a, &disk_b)?;
    let (cores, ram_bytes, cpu_model) = measure::machine();
    let samples = run_a.samples + run_b.samples;
    Ok(Profile {
        version: profile::VERSION,
        machine: profile::Machine {
            cores,
            ram_bytes,
            cpu_model,
            date: today(),
            command: config.command.clone(),
            seconds: started.elapsed().as_secs_f64(),
            note: config.note.clone(),
        },
        workload: profile::WorkloadInfo {
            series: run_a.series + run_b.series,
            partitions: RUN_A_PARTITIONS + RUN_B_PARTITIONS,
            key_bytes,
            samples,
        },
        cpu: profile::Cpu {
            ingest_ns_per_sample: (run_a.ingest_cpu + run_b.ingest_cpu) / samples as f64 * 1e9,
            route_ns_per_sample: (run_a.route_cpu + run_b.route_cpu) / samples as f64 * 1e9,
            seal_ns_per_sample: (run_a.seal_cpu + run_b.seal_cpu)
                / (run_a.sealed + run_b.sealed).max(1) as f64
                * 1e9,
        },
        memory: profile::Memory {
            base_rss_bytes: base_rss,
            partition_bytes: partition_rss,
            series_bytes: run_a.series_bytes,
            head_sample_bytes: run_a.head_sample_bytes,
            chunk_bytes: run_a.chunk_heap_bytes,
        },
        disk: profile::Disk {
            partition_bytes: partition_disk,
            chunk_fixed_bytes: fixed,
            chunk_sample_bytes: per_sample,
            chunk_index_bytes: disk_a.index_bytes as f64 / disk_a.chunks.max(1) as f64,
            fitted_at_samples: [chunk_a as u32, chunk_b as u32],
        },
        log: profile::Log {
            entry_bytes: (run_a.log_payload + run_b.log_payload
                - (run_a.records + run_b.records) as f64 * batch_header_bytes())
                / samples as f64,
            record_bytes: LOG_FRAME_HEADER_BYTES + batch_header_bytes(),
        },
        query: profile::Query {
            ns_per_sample: query_ns,
            expr: query_expr,
        },
        resync: profile::Resync {
            full_copy_samples_per_s: copy_samples_s,
            full_copy_bytes_per_s: copy_bytes_s,
            full_copy_partition_s: copy_partition_s,
            catch_up_samples_per_s: catch_up,
        },
        policy: profile::Policy::current(),
    })
}

/// Rounds per seal at `interval_ms`: the seal span divided by the interval.
fn seal_every(interval_ms: i64) -> usize {
    (store::SealPolicy::default().head_span_ms / interval_ms).max(1) as usize
}

/// The encoded size of an empty batch: the header every record carries.
fn batch_header_bytes() -> f64 {
    let mut out = Vec::new();
    batch::encode(std::iter::empty(), &mut out);
    out.len() as f64
}

fn open_store(dir: &Path) -> Result<Store> {
    let (store, _) = Store::open(StoreConfig::new(dir))?;
    Ok(store)
}

/// (heap bytes, disk bytes) of one empty partition. Its mapped first log
/// segment is resident file memory, counted with the log (logmodel).
fn empty_partitions(dir: &Path, heap: fn() -> i64) -> Result<(f64, f64)> {
    let store = open_store(dir)?;
    let before = heap();
    for p in 0..EMPTY_PARTITIONS {
        store.create_partition(PartitionId(p))?;
    }
    let grown = (heap() - before).max(0);
    let (disk, _) = measure::disk_usage(dir)?;
    let n = EMPTY_PARTITIONS as f64;
    Ok((grown as f64 / n, disk as f64 / n))
}

/// One ingest run over its own store.
struct Run {
    store: Store,
    partitions: Vec<Arc<Partition>>,
    partition_count: u32,
    workload: Workload,
    builder: BatchBuilder,
    round: Vec<u8>,
    out: RunFigures,
    /// Pre-seal points: (sealed chunks so far, heap bytes).
    pre_seal: Vec<(u64, i64)>,
    heap: fn() -> i64,
    catch_up_samples_per_s: Option<f64>,
    dir: PathBuf,
}

#[derive(Default)]
struct RunFigures {
    series: u64,
    samples: u64,
    sealed: u64,
    records: u64,
    log_payload: f64,
    ingest_cpu: f64,
    route_cpu: f64,
    seal_cpu: f64,
    series_bytes: f64,
    head_sample_bytes: f64,
    chunk_heap_bytes: f64,
}

impl Run {
    fn new(dir: &Path, partitions: u32, workload: Workload, heap: fn() -> i64) -> Result<Run> {
        let store = open_store(dir)?;
        let parts = (0..partitions)
            .map(|p| store.create_partition(PartitionId(p)))
            .collect::<store::Result<Vec<_>>>()?;
        Ok(Run {
            store,
            partitions: parts,
            partition_count: partitions,
            workload,
            builder: BatchBuilder::new(),
            round: Vec::new(),
            out: RunFigures::default(),
            pre_seal: Vec::new(),
            heap,
            catch_up_samples_per_s: None,
            dir: dir.to_path_buf(),
        })
    }

    /// Ingests rounds and seals every `rounds` rounds, for at least
    /// `min_periods` periods and until `budget` is spent. Run B
    /// (`measure_catch_up`) times a catch-up before its first seal; run A
    /// measures the memory of sealed chunks instead.
    fn run_periods(
        &mut self,
        rounds: usize,
        min_periods: usize,
        budget: Duration,
        measure_catch_up: bool,
    ) -> Result<()> {
        let started = Instant::now();
        let series = self.workload.series() as u64;
        self.out.series = series;
        let mut first_head: Option<(u64, u64)> = None;
        let mut periods = 0;
        while periods < min_periods || started.elapsed() < budget {
            for _ in 0..rounds {
                let first = first_head.is_none();
                if let Some(grown) = self.round(first)? {
                    self.out.series_bytes = grown.max(0) as f64 / series as f64;
                }
                if first {
                    let m = self.store.memory_stats();
                    first_head = Some((m.head_bytes, m.head_samples));
                }
            }
            for p in &self.partitions {
                p.sync()?;
            }
            let stats = self.store.memory_stats();
            if periods == 0 {
                let (b0, s0) = first_head.expect("a round ran");
                self.out.head_sample_bytes = stats.head_bytes.saturating_sub(b0) as f64
                    / stats.head_samples.saturating_sub(s0).max(1) as f64;
            }
            let chunks = periods as u64 * series;
            self.pre_seal.push((chunks, (self.heap)()));
            if measure_catch_up && self.catch_up_samples_per_s.is_none() {
                let rate = self.catch_up(stats.head_samples)?;
                self.catch_up_samples_per_s = Some(rate);
            }
            let cpu = cpu_seconds()?;
            for p in &self.partitions {
                p.seal()?;
            }
            self.out.seal_cpu += cpu_seconds()? - cpu;
            self.out.sealed += stats.head_samples;
            periods += 1;
        }
        if !measure_catch_up {
            // One more ingest period without a seal, so the slope of memory
            // over sealed chunks has a point after the last seal as well.
            for _ in 0..rounds {
                self.round(false)?;
            }
            self.pre_seal.push((periods as u64 * series, (self.heap)()));
            self.out.chunk_heap_bytes = slope(&self.pre_seal).max(0.0);
        }
        Ok(())
    }

    /// One collector round: route it as the gateway does, then append every
    /// group. With `measure`, returns the growth of the heap over the appends
    /// alone (the batches are already built and still alive then).
    fn round(&mut self, measure: bool) -> Result<Option<i64>> {
        self.workload.next_round(&mut self.builder, &mut self.round);
        let partitions = self.partition_count;
        let cpu0 = cpu_seconds()?;
        let view = batch::decode(&self.round)?;
        let samples = view.sample_count() as u64;
        let groups = batch::split(&view, |key| {
            controller::partition_of(key.resource.as_bytes(), partitions).0
        });
        let heap = measure.then(self.heap);
        let cpu1 = cpu_seconds()?;
        for (p, group) in &groups {
            self.partitions[*p as usize].append_batch(Term(1), &group.view())?;
        }
        let cpu2 = cpu_seconds()?;
        let grown = heap.map(|before| (self.heap)() - before);
        self.out.route_cpu += cpu1 - cpu0;
        self.out.ingest_cpu += cpu2 - cpu1;
        self.out.samples += samples;
        self.out.records += groups.len() as u64;
        self.out.log_payload += groups
            .iter()
            .map(|(_, g)| g.bytes().len() as f64)
            .sum::<f64>();
        Ok(grown)
    }

    /// Reads every partition's log and applies it to a fresh store, as a
    /// replica catching up does. Returns samples per second (wall clock).
    fn catch_up(&self, samples: u64) -> Result<f64> {
        let target = open_store(&self.dir.with_extension("catchup"))?;
        let copies = self
            .partitions
            .iter()
            .map(|p| target.create_partition(p.id()))
            .collect::<store::Result<Vec<_>>>()?;
        let started = Instant::now();
        for (p, copy) in self.partitions.iter().zip(&copies) {
            let mut from = Lsn(1);
            loop {
                let records = p.read_log(from, CATCH_UP_READ_BYTES)?;
                let Some(&(last, _, _)) = records.last() else {
                    break;
                };
                for (lsn, term, batch) in &records {
                    copy.apply_replicated(*lsn, *term, batch)?;
                }
                from = Lsn(last.0 + 1);
            }
            copy.sync()?;
        }
        let seconds = started.elapsed().as_secs_f64();
        Ok(samples as f64 / seconds.max(1e-9))
    }

    /// CPU nanoseconds per sample of queries over every sample, one per metric.
    fn query(&self) -> Result<(f64, String)> {
        let end = self.workload.next_ts();
        let range_s = (end - 1_700_000_000_000) / 1000 + 1;
        let template = QUERY_EXPR.replace("RANGE", &format!("{range_s}s"));
        let ids = self.store.partition_ids();
        let source = self.store.source(&ids);
        let opts = store::query::QueryOptions {
            max_samples: usize::MAX,
            max_series: usize::MAX,
            ..Default::default()
        };
        let (mut seconds, mut counted) = (0.0, 0.0);
        for m in 0..METRICS_PER_RESOURCE {
            let expr = template.replace("METRIC", &format!("metric{m}"));
            let cpu = cpu_seconds()?;
            let value = store::query::instant_query(&source, &expr, end, &opts)?;
            seconds += cpu_seconds()? - cpu;
            let store::query::Value::Vector(v) = value else {
                return Err(Error::Measure {
                    what: "query cost",
                    reason: format!("{expr} did not return a vector"),
                });
            };
            counted += v.first().map_or(0.0, |e| e.2);
        }
        if counted < 1.0 {
            return Err(Error::Measure {
                what: "query cost",
                reason: "the calibration queries counted no sample".into(),
            });
        }
        Ok((seconds / counted * 1e9, template))
    }

    fn finish(self) -> RunFigures {
        self.out
    }
}

/// Least-squares slope of y over x.
fn slope(points: &[(u64, i64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxy: f64 = points
        .iter()
        .map(|p| (p.0 as f64 - mx) * (p.1 as f64 - my))
        .sum();
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

/// What the chunk files of one store hold.
#[derive(Debug, Default)]
struct ChunkDisk {
    files: u64,
    chunks: u64,
    samples: u64,
    /// File sizes, all files.
    bytes: u64,
    /// Everything but chunk bytes: headers and index entries.
    index_bytes: u64,
}

fn chunk_disk(dir: &Path) -> Result<ChunkDisk> {
    let backend = fsdb::MmapBackend;
    let mut out = ChunkDisk::default();
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for part in entries {
        let part = part.map_err(|e| Error::io(dir, e))?.path();
        let chunks = part.join("chunks");
        let Ok(files) = std::fs::read_dir(&chunks) else {
            continue;
        };
        for f in files {
            let path = f.map_err(|e| Error::io(&chunks, e))?.path();
            if !path
                .to_string_lossy()
                .ends_with(fsdb::chunkfile::CHUNK_FILE_SUFFIX)
            {
                continue;
            }
            let len = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len();
            let file = fsdb::ChunkFile::open(&backend, &path).map_err(store::Error::from)?;
            let data: u64 = file.chunks().map(|m| m.len as u64).sum();
            out.files += 1;
            out.chunks += file.len() as u64;
            out.samples += file.chunks().map(|m| m.count as u64).sum::<u64>();
            out.bytes += len;
            out.index_bytes += len - data;
        }
    }
    Ok(out)
}

/// Fits `bytes per chunk = fixed + per_sample * samples per chunk` through
/// the two runs' averages.
fn fit_chunk_disk(a: &ChunkDisk, b: &ChunkDisk) -> Result<(f64, f64)> {
    let point = |d: &ChunkDisk| {
        let c = d.chunks.max(1) as f64;
        (d.samples as f64 / c, d.bytes as f64 / c)
    };
    let ((na, ya), (nb, yb)) = (point(a), point(b));
    if a.chunks == 0 || b.chunks == 0 || (nb - na).abs() < 1.0 {
        return Err(Error::Measure {
            what: "chunk disk bytes",
            reason: format!(
                "runs sealed {} and {} chunks of {na:.0} and {nb:.0} samples: give calibrate more time",
                a.chunks, b.chunks
            ),
        });
    }
    let per_sample = (yb - ya) / (nb - na);
    Ok((ya - per_sample * na, per_sample))
}

/// A full copy of all of `source` as one partition (a snapshot of every
/// partition, installed as one: partitions of a real cluster are large, so
/// the per-partition fixed cost is measured apart, on empty installs).
/// Returns (samples/s, snapshot bytes/s, seconds per partition), wall clock.
fn full_copy(source: &Store, dir: &Path) -> Result<(f64, f64, f64)> {
    let target = open_store(dir)?;
    let started = Instant::now();
    let (mut lsn, mut term, mut all) = (Lsn(0), Term(0), Vec::new());
    for id in source.partition_ids() {
        let p = source.partition(id).expect("listed partition");
        let (l, t, batches) = p.snapshot()?;
        (lsn, term) = (lsn.max(l), term.max(t));
        all.extend(batches);
    }
    target.install_snapshot(PartitionId(0), lsn, term, &all)?;
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    let samples: u64 = all
        .iter()
        .map(|b| batch::decode(b).map(|v| v.sample_count() as u64))
        .sum::<store::Result<u64>>()?;
    let bytes: u64 = all.iter().map(|b| b.len() as u64).sum();
    let empties = 8;
    let started = Instant::now();
    for p in 1..=empties {
        target.install_snapshot(PartitionId(p), Lsn(1), Term(1), &[])?;
    }
    let per_partition = started.elapsed().as_secs_f64() / empties as f64;
    Ok((
        samples as f64 / seconds,
        bytes as f64 / seconds,
        per_partition,
    ))
}

/// Today's UTC date, `YYYY-MM-DD`.
fn today() -> String {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    stamp[..10].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_fits_a_line() {
        assert_eq!(slope(&[(0, 100), (10, 300)]), 20.0);
        assert_eq!(slope(&[(0, 100), (10, 300), (20, 500)]), 20.0);
        assert_eq!(slope(&[(5, 100)]), 0.0);
    }

    #[test]
    fn chunk_disk_fit_recovers_fixed_and_per_sample_bytes() {
        // 80 bytes per chunk + 1.5 per sample, at 24 and 720 samples per chunk.
        let a = ChunkDisk {
            chunks: 100,
            samples: 2400,
            bytes: 100 * 80 + 3600,
            ..Default::default()
        };
        let b = ChunkDisk {
            chunks: 10,
            samples: 7200,
            bytes: 10 * 80 + 10800,
            ..Default::default()
        };
        let (fixed, per) = fit_chunk_disk(&a, &b).unwrap();
        assert!((fixed - 80.0).abs() < 1e-9 && (per - 1.5).abs() < 1e-9);
        assert!(fit_chunk_disk(&a, &ChunkDisk::default()).is_err());
    }
}
