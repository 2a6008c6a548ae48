//! `tandem push`: a collector. Pushes seeded synthetic samples or Graphite lines from a file over the acknowledged native protocol, failing over between nodes and retrying until acknowledged.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use store::batch::BatchBuilder;

use crate::cluster_file::{ClusterFile, DEFAULT_PATH};
use crate::graphite::{parse_line, GraphiteConfig};
use crate::net::{Client, ClientError};
use crate::proto::{ErrorCode, Kind};

#[derive(Clone, Debug, clap::Args)]
pub struct PushArgs {
    /// The cluster file `tandem up` wrote (for the node addresses).
    #[arg(long, default_value = DEFAULT_PATH)]
    pub cluster: PathBuf,
    /// Native addresses of the nodes to push to, in order of preference (instead of the cluster file).
    #[arg(long = "node", value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Push Graphite lines from this file (`-` for stdin) instead of synthetic samples.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Synthetic load: resources.
    #[arg(long, default_value_t = 100)]
    pub resources: u32,
    /// Synthetic load: metrics per resource.
    #[arg(long, default_value_t = 10)]
    pub metrics: u32,
    /// Synthetic load: samples per series.
    #[arg(long, default_value_t = 100)]
    pub samples: u32,
    /// Synthetic load: interval between a series' samples.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Synthetic load: timestamp of the first sample, unix ms (default: so that the last sample is now).
    #[arg(long)]
    pub start_ms: Option<i64>,
    /// Synthetic load: resource names are `<prefix><n>`.
    #[arg(long, default_value = "vm")]
    pub prefix: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Samples per batch.
    #[arg(long, default_value_t = 10_000)]
    pub batch: usize,
    /// Concurrent connections (batches in flight).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Give up on a batch that is not acknowledged within this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub batch_timeout: Duration,
    /// Stop sending after this long (the batches in flight finish).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct PushReport {
    pub sent: u64,
    pub acked: u64,
    pub failed: u64,
    pub bad_lines: u64,
    pub batches: u64,
    pub retries: u64,
    pub seconds: f64,
    pub samples_per_sec: f64,
    pub ack_latency_ms: Latency,
    /// Longest time between two acknowledgements (a write gap, e.g. during a failover).
    pub max_ack_gap_ms: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// The reference mix of the fsdb issue: a third constant gauges, a third
/// counters with integer increments 0..=100, a third random walks with two
/// decimals and steps in [-5, 5].
pub struct Synthetic {
    series: Vec<(String, String, f64)>,
    rng: ChaCha8Rng,
    next: u32,
    samples: u32,
    start_ms: i64,
    interval_ms: i64,
}

impl Synthetic {
    pub fn new(args: &PushArgs) -> Synthetic {
        let interval_ms = args.interval.as_millis() as i64;
        let start_ms = args
            .start_ms
            .unwrap_or_else(|| now_ms() - interval_ms * (args.samples as i64 - 1));
        let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
        let mut series = Vec::with_capacity((args.resources * args.metrics) as usize);
        for r in 0..args.resources {
            for m in 0..args.metrics {
                let start = match (r * args.metrics + m) % 3 {
                    0 => (rng.gen_range(0..10_000) as f64) / 100.0,
                    1 => 0.0,
                    _ => (rng.gen_range(0..10_000) as f64) / 100.0,
                };
                series.push((format!("{}{r}", args.prefix), format!("metric{m}"), start));
            }
        }
        Synthetic {
            series,
            rng,
            next: 0,
            samples: args.samples,
            start_ms,
            interval_ms,
        }
    }

    /// The next batch of at most `max` samples, or `None` when done.
    fn next_batch(&mut self, builder: &mut BatchBuilder, max: usize) -> Option<()> {
        if self.next >= self.samples {
            return None;
        }
        builder.clear();
        while self.next < self.samples
            && builder.samples() + self.series.len() <= max.max(self.series.len())
        {
            let ts = self.start_ms + self.next as i64 * self.interval_ms;
            for (i, (resource, metric, value)) in self.series.iter_mut().enumerate() {
                if self.next > 0 {
                    match i % 3 {
                        0 => {}
                        1 => *value += self.rng.gen_range(0..=100) as f64,
                        _ => {
                            *value = ((*value * 100.0).round()
                                + self.rng.gen_range(-500..=500) as f64)
                                / 100.0
                        }
                    }
                }
                builder
                    .push(resource, metric, &[], ts, *value)
                    .expect("synthetic keys are valid");
            }
            self.next += 1;
        }
        Some(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Batches to send: synthetic or from Graphite lines.
enum Input {
    Synthetic(Box<Synthetic>),
    Lines(Box<dyn BufRead + Send>, GraphiteConfig),
}

impl Input {
    fn next(
        &mut self,
        max: usize,
        bad_lines: &AtomicU64,
    ) -> anyhow::Result<Option<(Vec<u8>, u64)>> {
        let mut builder = BatchBuilder::new();
        match self {
            Input::Synthetic(s) => {
                if s.next_batch(&mut builder, max).is_none() {
                    return Ok(None);
                }
            }
            Input::Lines(reader, config) => {
                let mut line = Vec::new();
                let now = now_ms();
                while builder.samples() < max {
                    line.clear();
                    if reader.read_until(b'\n', &mut line)? == 0 {
                        break;
                    }
                    let trimmed = line.strip_suffix(b"\n").unwrap_or(&line);
                    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
                    if trimmed.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match parse_line(trimmed, config, now) {
                        Ok(l) => {
                            let mut tags = l.tags.clone();
                            tags.sort_unstable();
                            if builder
                                .push(l.resource, l.metric, &tags, l.timestamp_ms, l.value)
                                .is_err()
                            {
                                bad_lines.fetch_add(1, Relaxed);
                            }
                        }
                        Err(e) => {
                            if bad_lines.fetch_add(1, Relaxed) < 10 {
                                eprintln!("bad line ({e}): {}", String::from_utf8_lossy(trimmed));
                            }
                        }
                    }
                }
                if builder.is_empty() {
                    return Ok(None);
                }
            }
        }
        let mut bytes = Vec::new();
        builder.encode(&mut bytes);
        Ok(Some((bytes, builder.samples() as u64)))
    }
}

struct Shared {
    input: Mutex<Input>,
    nodes: Vec<String>,
    sent: AtomicU64,
    acked: AtomicU64,
    failed: AtomicU64,
    retries: AtomicU64,
    batches: AtomicU64,
    bad_lines: AtomicU64,
    latency: Mutex<Histogram<u64>>,
    last_ack: Mutex<(Instant, Duration)>,
    stop_at: Option<Instant>,
}

pub fn run(args: PushArgs) -> anyhow::Result<i32> {
    let nodes = if args.nodes.is_empty() {
        ClusterFile::load(&args.cluster)?.node_addrs()
    } else {
        args.nodes.clone()
    };
    if nodes.is_empty() {
        bail!("no node to push to: pass --node ADDR or start a cluster with `tandem up`");
    }
    if args.batch == 0 || args.connections == 0 {
        bail!("--batch and --connections must be at least 1");
    }
    let input = match &args.file {
        None => Input::Synthetic(Box::new(Synthetic::new(&args))),
        Some(path) if path.as_os_str() == "-" => Input::Lines(
            Box::new(BufReader::new(std::io::stdin())),
            GraphiteConfig::default(),
        ),
        Some(path) => {
            let f = std::fs::File::open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            Input::Lines(Box::new(BufReader::new(f)), GraphiteConfig::default())
        }
    };
    let started = Instant::now();
    let shared = Arc::new(Shared {
        input: Mutex::new(input),
        nodes,
        sent: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        retries: AtomicU64::new(0),
        batches: AtomicU64::new(0),
        bad_lines: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")),
        last_ack: Mutex::new((started, Duration::ZERO)),
        stop_at: args.duration.map(|d| started + d),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut workers = Vec::new();
        for i in 0..args.connections {
            let shared = shared.clone();
            let (batch, timeout) = (args.batch, args.batch_timeout);
            workers.push(tokio::spawn(async move {
                worker(shared, i, batch, timeout).await
            }));
        }
        let progress = (!args.quiet).then(|| {
            let shared = shared.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let secs = started.elapsed().as_secs_f64();
                    let acked = shared.acked.load(Relaxed);
                    eprint!(
                        "\rsent {} acked {} failed {} ({:.0} samples/s)   ",
                        shared.sent.load(Relaxed),
                        acked,
                        shared.failed.load(Relaxed),
                        acked as f64 / secs
                    );
                }
            })
        });
        for w in workers {
            w.await??;
        }
        if let Some(p) = progress {
            p.abort();
            eprintln!();
        }
        anyhow::Ok(())
    })?;
    let report = report(&shared, started.elapsed());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "sent {} acked {} failed {} bad lines {} in {:.2} s: {:.0} samples/s; ack latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms; longest gap between acks {:.0} ms; {} retries",
            report.sent, report.acked, report.failed, report.bad_lines, report.seconds, report.samples_per_sec,
            report.ack_latency_ms.p50, report.ack_latency_ms.p99, report.ack_latency_ms.max, report.max_ack_gap_ms, report.retries
        );
    }
    Ok(if report.failed > 0 { 1 } else { 0 })
}

fn report(shared: &Shared, elapsed: Duration) -> PushReport {
    let h = shared.latency.lock().expect("poisoned");
    let ms = |us: u64| us as f64 / 1000.0;
    let acked = shared.acked.load(Relaxed);
    PushReport {
        sent: shared.sent.load(Relaxed),
        acked,
        failed: shared.failed.load(Relaxed),
        bad_lines: shared.bad_lines.load(Relaxed),
        batches: shared.batches.load(Relaxed),
        retries: shared.retries.load(Relaxed),
        seconds: elapsed.as_secs_f64(),
        samples_per_sec: acked as f64 / elapsed.as_secs_f64().max(1e-9),
        ack_latency_ms: Latency {
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        },
        max_ack_gap_ms: shared.last_ack.lock().expect("poisoned").1.as_secs_f64() * 1000.0,
    }
}

/// The longest one attempt to write a batch through one node may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends batches one at a time on its own connection, starting at node
/// `first % n` and moving to the next node on any failure.
async fn worker(
    shared: Arc<Shared>,
    first: usize,
    batch_max: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let clients: Vec<Client> = shared
        .nodes
        .iter()
        .map(|a| Client::new(a.clone()))
        .collect();
    let mut current = first % clients.len();
    loop {
        if shared.stop_at.is_some_and(|t| Instant::now() >= t) {
            return Ok(());
        }
        let next = shared
            .input
            .lock()
            .expect("poisoned")
            .next(batch_max, &shared.bad_lines)?;
        let Some((bytes, samples)) = next else {
            return Ok(());
        };
        shared.sent.fetch_add(samples, Relaxed);
        shared.batches.fetch_add(1, Relaxed);
        let sent_at = Instant::now();
        let deadline = sent_at + timeout;
        let mut delay = Duration::from_millis(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                shared.failed.fetch_add(samples, Relaxed);
                break;
            }
            // One attempt waits at most ATTEMPT_TIMEOUT (a gateway gives up
            // on a write after 15 s): a hung node costs one attempt, not the batch.
            let attempt = left.min(ATTEMPT_TIMEOUT);
            match clients[current].request(Kind::Write, &bytes, attempt).await {
                Ok(_) => {
                    let now = Instant::now();
                    shared.acked.fetch_add(samples, Relaxed);
                    let _ = shared
                        .latency
                        .lock()
                        .expect("poisoned")
                        .record(sent_at.elapsed().as_micros().max(1) as u64);
                    let mut last = shared.last_ack.lock().expect("poisoned");
                    let gap = now.duration_since(last.0);
                    *last = (now, last.1.max(gap));
                    break;
                }
                Err(ClientError::Remote {
                    code: ErrorCode::BadRequest,
                    message,
                    ..
                }) => {
                    eprintln!("batch rejected as malformed: {message}");
                    shared.failed.fetch_add(samples, Relaxed);
                    break;
                }
                Err(_) => {
                    // Same batch, next node: writes are idempotent, so a retry of
                    // a batch that did land overwrites, never duplicates.
                    shared.retries.fetch_add(1, Relaxed);
                    current = (current + 1) % clients.len();
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(500));
                }
            }
        }
    }
}
