//! End-to-end comparison with VictoriaMetrics, in one run on one machine:
//! `cargo bench --bench compare` (see benches/README.md).
//!
//! It installs `victoria-metrics` from Debian if it is missing, then for
//! each server (single-node VictoriaMetrics, tandem 1 node R=1, tandem 3
//! nodes R=2): starts it on loopback, pushes the same Graphite lines over the
//! same number of connections, waits until a count query sees every sample,
//! flushes, and measures ingest rate, server CPU seconds, peak RSS, disk
//! bytes per sample and the latency of a few PromQL queries over a
//! keep-alive HTTP connection. It prints one table with tandem/VM ratios,
//! and stops every process it started. tandem's 1-node layout runs one
//! controller, the 3-node layout three.
//!
//! Load: `COMPARE_RESOURCES` (10 000) x `COMPARE_METRICS` (20) series,
//! `COMPARE_SAMPLES` (100) samples each at 10 s, over `COMPARE_CONNECTIONS`
//! (4) connections. `COMPARE_SERVERS` (`vm,t1,t3`) picks the servers.
//! `COMPARE_HOLD_SECS` keeps each server up that long after its queries,
//! for a profiler to attach.

use std::io::Write;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
/// No phase may take longer than this.
const PHASE_LIMIT: Duration = Duration::from_secs(300);
const INTERVAL_S: i64 = 10;

struct Load {
    resources: usize,
    metrics: usize,
    samples: usize,
    connections: usize,
    /// Unix seconds of the first sample.
    start: i64,
}

impl Load {
    fn from_env() -> Load {
        let var = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let samples = var("COMPARE_SAMPLES", 100);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        Load {
            resources: var("COMPARE_RESOURCES", 10_000),
            metrics: var("COMPARE_METRICS", 20),
            samples,
            connections: var("COMPARE_CONNECTIONS", 4),
            // The last sample two minutes ago: older than any "too recent" cut-off.
            start: now - 120 - INTERVAL_S * samples as i64,
        }
    }

    fn series(&self) -> usize {
        self.resources * self.metrics
    }

    fn total(&self) -> usize {
        self.series() * self.samples
    }

    fn end(&self) -> i64 {
        self.start + INTERVAL_S * (self.samples as i64 - 1)
    }

    /// The lines of connection `c`: its share of the resources, sample by
    /// sample, so every series arrives in time order. Values follow the
    /// reference mix: a third constant, a third counters, a third random walks.
    fn lines(&self, c: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.total() / self.connections * 40);
        let mut state: Vec<f64> = Vec::new();
        let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ c as u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mine: Vec<usize> = (c..self.resources).step_by(self.connections).collect();
        for r in &mine {
            for m in 0..self.metrics {
                // Counters start at 0, the others somewhere in [0, 100).
                let counter = (r + m) % 3 == 1;
                let first = ((r * 31 + m * 7) % 10_000) as f64 / 100.0;
                state.push(if counter { 0.0 } else { first });
            }
        }
        let mut ibuf = itoa::Buffer::new();
        for k in 0..self.samples {
            let ts = self.start + INTERVAL_S * k as i64;
            let mut i = 0;
            for r in &mine {
                for m in 0..self.metrics {
                    let v = &mut state[i];
                    i += 1;
                    if k > 0 {
                        match (r + m) % 3 {
                            0 => {}
                            1 => *v += (next() % 101) as f64,
                            _ => {
                                *v = ((*v * 100.0).round() + (next() % 1001) as f64 - 500.0) / 100.0
                            }
                        }
                    }
                    out.extend_from_slice(b"metric");
                    out.extend_from_slice(ibuf.format(m).as_bytes());
                    out.extend_from_slice(b";resource=vm");
                    out.extend_from_slice(ibuf.format(*r).as_bytes());
                    out.push(b' ');
                    let _ = write!(out, "{v}");
                    out.push(b' ');
                    out.extend_from_slice(ibuf.format(ts).as_bytes());
                    out.push(b'\n');
                }
            }
        }
        out
    }
}

/// One server under test: its processes, where it listens, where it keeps data.
struct Server {
    name: String,
    replicas: usize,
    children: Vec<Child>,
    /// Pids of processes it started that are not our children (tandem up --detach).
    pids: Vec<u32>,
    http: String,
    graphite: Vec<String>,
    data: PathBuf,
    /// Sealing the head into compressed files before disk is measured.
    flush: Box<dyn Fn(&Server)>,
}

impl Server {
    fn all_pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .map(Child::id)
            .chain(self.pids.iter().copied())
            .collect()
    }

    fn stop(&mut self) {
        for pid in self.all_pids() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for c in &mut self.children {
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

fn ensure_victoria_metrics() -> String {
    let found = |name: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {name}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    if let Some(path) = found("victoria-metrics") {
        return path;
    }
    eprintln!("victoria-metrics is missing: installing the Debian package");
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let sudo = if root { "" } else { "sudo " };
    let status = Command::new("sh")
        .args([
            "-c",
            &format!(
                "{sudo}apt-get update -qq && DEBIAN_FRONTEND=noninteractive {sudo}apt-get install -y -qq --no-install-recommends victoria-metrics"
            ),
        ])
        .status()
        .expect("run apt-get");
    assert!(status.success(), "could not install victoria-metrics");
    found("victoria-metrics").expect("victoria-metrics installed but not on PATH")
}

fn start_victoria_metrics(root: &Path) -> Server {
    let exe = ensure_victoria_metrics();
    let data = root.join("victoria-metrics");
    let (http, graphite) = (free_addr(), free_addr());
    let log = std::fs::File::create(root.join("victoria-metrics.log")).unwrap();
    let child = Command::new(exe)
        .arg(format!("-storageDataPath={}", data.display()))
        .arg(format!("-httpListenAddr={http}"))
        .arg(format!("-graphiteListenAddr={graphite}"))
        .arg("-retentionPeriod=100y")
        .arg("-search.latencyOffset=0s")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start victoria-metrics");
    let server = Server {
        name: "VictoriaMetrics".into(),
        replicas: 1,
        children: vec![child],
        pids: vec![],
        http: http.clone(),
        graphite: vec![graphite],
        data,
        flush: Box::new(|s: &Server| {
            let agent = ureq::agent();
            let _ = agent
                .get(&format!("http://{}/internal/force_flush", s.http))
                .call();
            let _ = agent
                .get(&format!("http://{}/internal/force_merge", s.http))
                .call();
            // The merge runs in the background: wait for the parts to settle.
            let mut last = 0;
            for _ in 0..60 {
                std::thread::sleep(Duration::from_secs(1));
                let now = du(&s.data);
                if now == last {
                    break;
                }
                last = now;
            }
        }),
    };
    wait_until("VictoriaMetrics answers", || {
        ureq::get(&format!("http://{http}/health")).call().is_ok()
    });
    server
}

fn start_tandem(root: &Path, nodes: usize, replicas: usize) -> Server {
    let data = root.join(format!("tandem-{nodes}"));
    let out = Command::new(TANDEM)
        .args(["up", "--detach", "--json", "--data"])
        .arg(&data)
        .args(["--nodes", &nodes.to_string(), "--hosts", &nodes.to_string()])
        .args(["--replicas", &replicas.to_string()])
        // One node with R=1 survives no failure, so a Raft group of three
        // controllers beside it buys nothing: one, as an operator runs it.
        .args(["--controllers", if nodes == 1 { "1" } else { "3" }])
        .output()
        .expect("run tandem up");
    assert!(
        out.status.success(),
        "tandem up: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file: Value = serde_json::from_slice(&out.stdout).expect("tandem up --json");
    let entries = |k: &str| file[k].as_array().cloned().unwrap_or_default();
    let pids = entries("controllers")
        .iter()
        .chain(&entries("nodes"))
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect();
    let nodes_json = entries("nodes");
    let field = |k: &str| -> Vec<String> {
        nodes_json
            .iter()
            .map(|n| n[k].as_str().unwrap().to_string())
            .collect()
    };
    let https = field("http");
    Server {
        name: format!(
            "tandem {nodes} node{} R={replicas}",
            if nodes > 1 { "s" } else { "" }
        ),
        replicas,
        children: vec![],
        pids,
        http: https[0].clone(),
        graphite: field("graphite"),
        data,
        flush: Box::new(move |_: &Server| {
            for http in &https {
                let r = ureq::post(&format!("http://{http}/-/flush")).call();
                assert!(r.is_ok(), "flush {http}: {r:?}");
            }
        }),
    }
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PHASE_LIMIT;
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting until {what}");
}

/// CPU seconds (user + system) the processes used so far.
fn cpu_seconds(pids: &[u32]) -> f64 {
    // /proc counts in USER_HZ, which Linux fixes at 100.
    let tick = 100.0;
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / tick
        })
        .sum()
}

/// Sum of the processes' peak resident set sizes, bytes.
fn peak_rss(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum::<u64>()
        * 1024
}

/// Bytes of regular files under `dir`, log files excepted.
fn du(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && p.extension().is_none_or(|x| x != "log") {
                // Allocated bytes: preallocated, unwritten space counts too.
                total += std::os::unix::fs::MetadataExt::blocks(&m) * 512;
            }
        }
    }
    total
}

fn query(agent: &ureq::Agent, http: &str, path: &str, form: &[(&str, &str)]) -> Value {
    let r = agent
        .post(&format!("http://{http}{path}"))
        .timeout(Duration::from_secs(120))
        .send_form(form);
    let body = match r {
        Ok(r) => r.into_string().unwrap(),
        Err(ureq::Error::Status(_, r)) => r.into_string().unwrap(),
        Err(e) => panic!("query {form:?} at {http}: {e}"),
    };
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

/// Samples the server holds, by a count query (one sum per metric: the
/// count drops the metric name).
fn stored(agent: &ureq::Agent, http: &str, load: &Load) -> usize {
    let expr = (0..load.metrics)
        .map(|m| format!("sum(count_over_time(metric{m}[1d]))"))
        .collect::<Vec<_>>()
        .join(" + ");
    let t = (load.end() + 1).to_string();
    let doc = query(
        agent,
        http,
        "/api/v1/query",
        &[("query", &expr), ("time", &t)],
    );
    doc["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0) as usize
}

struct Figures {
    samples_per_sec: f64,
    cpu_seconds: f64,
    peak_rss: u64,
    disk_bytes: u64,
    /// name -> (p50 ms, p99 ms)
    queries: Vec<(String, f64, f64)>,
}

fn measure(server: &mut Server, load: &Load, lines: &[Vec<u8>]) -> Figures {
    eprintln!("== {}", server.name);
    let agent = ureq::AgentBuilder::new().build();
    let pids = server.all_pids();
    let cpu_before = cpu_seconds(&pids);
    let started = Instant::now();
    let senders: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(c, bytes)| {
            let addr = server.graphite[c % server.graphite.len()].clone();
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).expect("connect graphite");
                s.write_all(&bytes).expect("send graphite");
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    let sent = started.elapsed();
    let mut polls = 0;
    wait_until("every sample is queryable", || {
        polls += 1;
        let n = stored(&agent, &server.http, load);
        eprint!(
            "\r  sent in {:.1} s; stored {n} of {}   ",
            sent.as_secs_f64(),
            load.total()
        );
        if n < load.total() {
            std::thread::sleep(Duration::from_millis(500));
        }
        n >= load.total()
    });
    let ingest = started.elapsed();
    let cpu = cpu_seconds(&pids) - cpu_before;
    eprintln!(
        "\n  all {} samples queryable after {:.1} s ({polls} count queries)",
        load.total(),
        ingest.as_secs_f64()
    );
    let peak_rss = peak_rss(&pids);
    (server.flush)(server);
    let disk_bytes = du(&server.data);

    let (start, end) = (load.start.to_string(), load.end().to_string());
    let step = INTERVAL_S.to_string();
    let range = format!("{}s", load.end() - load.start + INTERVAL_S);
    let series = format!("metric1{{resource=\"vm{}\"}}", load.resources / 2);
    let top = format!("topk(10, avg_over_time(metric2[{range}]))");
    let cases: Vec<(&str, String, &str, usize)> = vec![
        // 201 runs: with fewer than 100, the "p99" is the slowest run.
        (
            "one series, whole range",
            series,
            "/api/v1/query_range",
            201,
        ),
        (
            "sum over all series, whole range",
            "sum({__name__=~\"metric.*\"})".into(),
            "/api/v1/query_range",
            5,
        ),
        (
            "one metric summed over all resources",
            "sum(metric0)".into(),
            "/api/v1/query_range",
            5,
        ),
        ("top 10 resources by a metric", top, "/api/v1/query", 5),
    ];
    let mut queries = Vec::new();
    for (name, expr, path, runs) in cases {
        let form: Vec<(&str, &str)> = if path.ends_with("range") {
            vec![
                ("query", &expr),
                ("start", &start),
                ("end", &end),
                ("step", &step),
            ]
        } else {
            vec![("query", &expr), ("time", &end)]
        };
        let doc = query(&agent, &server.http, path, &form);
        assert_eq!(doc["status"], "success", "{} {name}: {doc}", server.name);
        let mut times: Vec<f64> = (0..runs)
            .map(|_| {
                let t = Instant::now();
                query(&agent, &server.http, path, &form);
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let p50 = times[times.len() / 2];
        let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
        eprintln!("  {name}: p50 {p50:.2} ms, p99 {p99:.2} ms");
        queries.push((name.to_string(), p50, p99));
    }
    if let Some(secs) = std::env::var("COMPARE_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!(
            "  holding {secs} s for a look: http {}, pids {:?}",
            server.http, pids
        );
        std::thread::sleep(Duration::from_secs(secs));
    }
    server.stop();
    Figures {
        samples_per_sec: load.total() as f64 / ingest.as_secs_f64(),
        cpu_seconds: cpu,
        peak_rss,
        disk_bytes,
        queries,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument that is not ours means
    // another bench was asked for.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && a != "compare")
    {
        return;
    }
    let load = Load::from_env();
    let root = tempfile::Builder::new()
        .prefix("tandem-compare-")
        .tempdir()
        .unwrap();
    eprintln!(
        "load: {} resources x {} metrics = {} series, {} samples each at {INTERVAL_S} s: {} samples over {} Graphite connections",
        load.resources,
        load.metrics,
        load.series(),
        load.samples,
        load.total(),
        load.connections
    );
    let lines: Vec<Vec<u8>> = (0..load.connections).map(|c| load.lines(c)).collect();
    // `COMPARE_SERVERS=vm,t1,t3` (the default) picks which to measure, e.g.
    // `t1` alone while profiling it.
    let servers = std::env::var("COMPARE_SERVERS").unwrap_or_else(|_| "vm,t1,t3".into());
    let wanted = |name: &str| servers.split(',').any(|s| s.trim() == name);
    let mut results = Vec::new();
    if wanted("vm") {
        let mut vm = start_victoria_metrics(root.path());
        results.push((vm.name.clone(), 1, measure(&mut vm, &load, &lines)));
    }
    for (key, nodes, r) in [("t1", 1, 1), ("t3", 3, 2)] {
        if !wanted(key) {
            continue;
        }
        let mut t = start_tandem(root.path(), nodes, r);
        let name = t.name.clone();
        let replicas = t.replicas;
        results.push((name, replicas, measure(&mut t, &load, &lines)));
    }
    if results.is_empty() {
        eprintln!("COMPARE_SERVERS={servers}: no server to measure; name some of vm, t1, t3");
        std::process::exit(2);
    }
    print_table(&load, &results);
}

fn print_table(load: &Load, results: &[(String, usize, Figures)]) {
    let total = load.total() as f64;
    let series = load.series() as f64;
    type Row = (String, Box<dyn Fn(&Figures, usize) -> f64>, bool);
    let mut rows: Vec<Row> = vec![
        (
            "Graphite ingest, samples/s until all queryable".into(),
            Box::new(|f: &Figures, _| f.samples_per_sec),
            true,
        ),
        (
            "samples per server CPU-second".into(),
            Box::new(move |f: &Figures, _| total / f.cpu_seconds),
            true,
        ),
        (
            "disk bytes per sample, per copy, after a flush".into(),
            Box::new(move |f: &Figures, r| f.disk_bytes as f64 / total / r as f64),
            false,
        ),
        (
            "peak RSS bytes per series, per copy".into(),
            Box::new(move |f: &Figures, r| f.peak_rss as f64 / series / r as f64),
            false,
        ),
    ];
    for (i, (name, _, _)) in results[0].2.queries.iter().enumerate() {
        rows.push((
            format!("{name}, p50 ms"),
            Box::new(move |f: &Figures, _| f.queries[i].1),
            false,
        ));
        if i == 0 {
            rows.push((
                format!("{name}, p99 ms"),
                Box::new(move |f: &Figures, _| f.queries[i].2),
                false,
            ));
        }
    }
    print!("| figure |");
    for (name, _, _) in results {
        print!(" {name} |");
    }
    // Ratios are against the first server measured (VictoriaMetrics unless
    // COMPARE_SERVERS leaves it out).
    for (name, _, _) in &results[1..] {
        print!(" {name} / {} |", results[0].0);
    }
    println!();
    println!("|{}", " --- |".repeat(1 + 2 * results.len() - 1));
    for (label, f, _) in &rows {
        print!("| {label} |");
        let vm = f(&results[0].2, results[0].1);
        for (_, r, fig) in results {
            print!(" {} |", human(f(fig, *r)));
        }
        for (_, r, fig) in &results[1..] {
            print!(" {:.2}x |", f(fig, *r) / vm);
        }
        println!();
    }
    println!(
        "\nload: {} series x {} samples = {} samples over {} Graphite connections; server CPU seconds: {}",
        load.series(),
        load.samples,
        load.total(),
        load.connections,
        results
            .iter()
            .map(|(n, _, f)| format!("{n} {:.1}", f.cpu_seconds))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn human(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0} k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
