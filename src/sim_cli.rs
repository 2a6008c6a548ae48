//! `tandem sim`: the command line of the sizing simulator (the logic lives in the `sim` crate).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use sim::size::{human_bytes, human_seconds, Keep, Plan, SizeInput};
use sim::Profile;

#[derive(Debug, clap::Args)]
pub struct SimArgs {
    #[command(subcommand)]
    pub command: SimCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SimCommand {
    /// Measure the real store and fsdb on this machine and write a cost profile.
    Calibrate(CalibrateArgs),
    /// Nodes, RAM, disk and CPU for a load, HA on and off.
    Size(SizeArgs),
    /// Monte-Carlo simulation of node and host failures: availability and data loss.
    Failures(FailuresArgs),
    /// Balance and movement of the real placement code.
    Placement(PlacementArgs),
}

pub fn run(args: SimArgs) -> anyhow::Result<i32> {
    match args.command {
        SimCommand::Calibrate(a) => calibrate(a),
        SimCommand::Size(a) => size(a),
        SimCommand::Failures(a) => failures(a),
        SimCommand::Placement(a) => placement(a),
    }
}

/// A duration, or `never` (None).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrNever(pub Option<Duration>);

/// A duration like `5m`, `90d`, `1y`, or `never`.
fn parse_optional_duration(s: &str) -> Result<OrNever, String> {
    match s {
        "never" | "inf" | "none" => Ok(OrNever(None)),
        _ => humantime::parse_duration(s)
            .map(|d| OrNever(Some(d)))
            .map_err(|e| format!("{e} (e.g. 8h, 90d, 1y, or never)")),
    }
}

/// A size like `32GiB`, `1.5T`, `500GB` (K, M, G, T and KiB.. are powers of 1024; KB.. of 1000).
pub fn parse_bytes(s: &str) -> Result<f64, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 32GiB, 2T, 500GB)"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "p" | "pib" => 1024f64.powi(5),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "pb" => 1e15,
        u => {
            return Err(format!(
                "unknown size unit {u:?} (use B, KiB, MiB, GiB, TiB or KB, MB, GB, TB)"
            ))
        }
    };
    Ok(v * mult)
}

fn load_profile(path: &Option<PathBuf>) -> anyhow::Result<Profile> {
    Ok(match path {
        Some(p) => Profile::load(p)?,
        None => Profile::builtin(),
    })
}

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

// ---------------------------------------------------------------- calibrate

#[derive(Debug, clap::Args)]
pub struct CalibrateArgs {
    /// Write the profile (JSON) here; `size` and `failures` read it with --profile.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// How long to measure (the phases share it).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Where the temporary store lives (a real disk, not tmpfs); removed at the end.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Free text recorded with the machine (e.g. what else was running).
    #[arg(long, default_value = "")]
    pub note: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the profile as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn calibrate(args: CalibrateArgs) -> anyhow::Result<i32> {
    let command = std::env::args()
        .enumerate()
        .map(|(i, a)| if i == 0 { "tandem".to_string() } else { a })
        .collect::<Vec<_>>()
        .join(" ");
    let config = sim::calibrate::CalibrateConfig {
        dir: args.dir.unwrap_or_else(std::env::temp_dir),
        duration: args.duration,
        seed: args.seed,
        command,
        note: args.note,
        heap: crate::alloc::heap_bytes,
    };
    let quiet = args.json;
    let profile = sim::calibrate::calibrate(&config, &mut |phase| {
        if !quiet {
            eprintln!("calibrate: {phase}");
        }
    })?;
    if let Some(out) = &args.out {
        std::fs::write(out, profile.to_json() + "\n")
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    if args.json {
        print_json(&profile)?;
    } else {
        print_profile(&profile);
        if let Some(out) = &args.out {
            println!("profile written to {}", out.display());
        }
    }
    Ok(0)
}

fn print_profile(p: &Profile) {
    let m = &p.machine;
    println!(
        "machine: {} cores, {}, {} ({}, {:.1} s)",
        m.cores,
        human_bytes(m.ram_bytes as f64),
        m.cpu_model,
        m.date,
        m.seconds
    );
    println!(
        "workload: {} series over {} partitions, {} samples, keys of {:.0} bytes",
        p.workload.series, p.workload.partitions, p.workload.samples, p.workload.key_bytes
    );
    let rows: Vec<(&str, String)> = vec![
        (
            "ingest CPU per sample and copy",
            format!("{:.0} ns", p.cpu.ingest_ns_per_sample),
        ),
        (
            "routing CPU per sample (gateway)",
            format!("{:.0} ns", p.cpu.route_ns_per_sample),
        ),
        (
            "seal CPU per sample and copy",
            format!("{:.0} ns", p.cpu.seal_ns_per_sample),
        ),
        ("idle process RSS", human_bytes(p.memory.base_rss_bytes)),
        (
            "RAM per empty partition",
            human_bytes(p.memory.partition_bytes),
        ),
        (
            "RAM per series (first sample)",
            format!("{:.0} B", p.memory.series_bytes),
        ),
        (
            "RAM per unsealed sample",
            format!("{:.2} B", p.memory.head_sample_bytes),
        ),
        (
            "RAM per sealed chunk",
            format!("{:.0} B", p.memory.chunk_bytes),
        ),
        (
            "disk per empty partition",
            human_bytes(p.disk.partition_bytes),
        ),
        (
            "disk per sealed chunk (fixed)",
            format!("{:.0} B", p.disk.chunk_fixed_bytes),
        ),
        (
            "disk per sealed sample",
            format!("{:.2} B", p.disk.chunk_sample_bytes),
        ),
        (
            "chunk index per chunk (mapped)",
            format!("{:.0} B", p.disk.chunk_index_bytes),
        ),
        (
            "log bytes per sample (1 per series per record)",
            format!("{:.1} B", p.log.entry_bytes),
        ),
        (
            "query CPU per sample read",
            format!("{:.1} ns", p.query.ns_per_sample),
        ),
        (
            "full copy",
            format!(
                "{:.2} M samples/s, {}/s, + {:.1} ms per partition",
                p.resync.full_copy_samples_per_s / 1e6,
                human_bytes(p.resync.full_copy_bytes_per_s),
                p.resync.full_copy_partition_s * 1e3
            ),
        ),
        (
            "incremental catch-up",
            format!("{:.2} M samples/s", p.resync.catch_up_samples_per_s / 1e6),
        ),
    ];
    for (name, value) in rows {
        println!("  {name:<48} {value}");
    }
}

// ---------------------------------------------------------------- size

#[derive(Debug, clap::Args)]
pub struct SizeArgs {
    /// Resources measured (VMs, hosts, datastores...).
    #[arg(long)]
    pub resources: u64,
    /// Metrics per resource.
    #[arg(long)]
    pub metrics_per_resource: u64,
    /// Collection interval.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// How long samples are kept.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration, conflicts_with = "samples")]
    pub retention: Duration,
    /// Instead of a retention: this many samples per series (e.g. what one `tandem push` sent).
    #[arg(long)]
    pub samples: Option<u64>,
    /// Copies of every partition (the HA-off plan is shown beside it).
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    #[arg(long, default_value_t = 1024)]
    pub partitions: u32,
    #[arg(long, default_value_t = 8.0)]
    pub node_cores: f64,
    /// RAM per node (e.g. 32GiB).
    #[arg(long, default_value = "32GiB", value_parser = parse_bytes)]
    pub node_ram: f64,
    /// Disk per node (e.g. 2TiB).
    #[arg(long, default_value = "1TiB", value_parser = parse_bytes)]
    pub node_disk: f64,
    /// Fraction of every node resource kept free.
    #[arg(long, default_value_t = 0.3)]
    pub headroom: f64,
    /// Outage the catch-up figures are computed for.
    #[arg(long, default_value = "8h", value_parser = humantime::parse_duration)]
    pub outage: Duration,
    /// Average series key bytes (resource + metric + tags + 5); default: the profile's.
    #[arg(long)]
    pub key_bytes: Option<f64>,
    /// Evaluate this many nodes instead of solving for the fewest.
    #[arg(long)]
    pub nodes: Option<u32>,
    /// What if the store sealed every DURATION (default: the profile's seal span, 2h)?
    #[arg(long, value_parser = humantime::parse_duration)]
    pub seal_span: Option<Duration>,
    /// A profile from `tandem sim calibrate --out`; default: the shipped one.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

fn size(args: SizeArgs) -> anyhow::Result<i32> {
    let profile = load_profile(&args.profile)?;
    let keep = match args.samples {
        Some(n) => Keep::Samples { per_series: n },
        None => Keep::Retention {
            seconds: args.retention.as_secs_f64(),
        },
    };
    let input = SizeInput {
        resources: args.resources,
        metrics_per_resource: args.metrics_per_resource,
        interval_s: args.interval.as_secs_f64(),
        keep,
        replicas: args.replicas,
        partitions: args.partitions,
        node_cores: args.node_cores,
        node_ram_bytes: args.node_ram,
        node_disk_bytes: args.node_disk,
        headroom: args.headroom,
        outage_s: args.outage.as_secs_f64(),
        key_bytes: args.key_bytes.unwrap_or(profile.workload.key_bytes),
        nodes: args.nodes,
        seal_span_s: args.seal_span.map(|d| d.as_secs_f64()),
    };
    let report = sim::size::size(&input, &profile)?;
    if args.json {
        print_json(&report)?;
        return Ok(0);
    }
    let i = &report.input;
    let kept = match i.keep {
        Keep::Retention { seconds } => format!("kept {}", human_seconds(seconds)),
        Keep::Samples { per_series } => format!("{per_series} samples per series"),
    };
    println!(
        "load: {} resources x {} metrics = {} series every {}, {kept}: {:.0} samples/s in, {} samples per series, {} per chunk",
        i.resources,
        i.metrics_per_resource,
        report.series,
        human_seconds(i.interval_s),
        report.ingest_samples_per_s,
        report.samples_per_series,
        report.samples_per_chunk,
    );
    println!(
        "nodes: {} cores, {} RAM, {} disk, {:.0}% headroom; profile measured on {}",
        i.node_cores,
        human_bytes(i.node_ram_bytes),
        human_bytes(i.node_disk_bytes),
        i.headroom * 100.0,
        report.profile_machine
    );
    print_plans(&report.plans);
    Ok(0)
}

fn print_plans(plans: &[Plan]) {
    let header: Vec<String> = plans
        .iter()
        .map(|p| {
            if p.replicas >= 2 {
                format!("HA on (R={})", p.replicas)
            } else {
                "HA off (R=1)".to_string()
            }
        })
        .collect();
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Plan) -> String| {
        rows.push((name.to_string(), plans.iter().map(f).collect()));
    };
    row("nodes", &|p| {
        let why = p.binding.map_or(String::new(), |b| format!(" ({b} binds)"));
        format!("{}{why}", p.nodes)
    });
    row("nodes for CPU / RAM / disk", &|p| {
        format!(
            "{} / {} / {}",
            p.nodes_for_cpu, p.nodes_for_ram, p.nodes_for_disk
        )
    });
    row("fits (busiest node within headroom)", &|p| {
        if p.fits { "yes" } else { "NO" }.to_string()
    });
    row("samples/s written (all copies)", &|p| {
        format!("{:.0}", p.copy_samples_per_s)
    });
    row("series copies per node", &|p| {
        format!("{:.0}", p.node.series)
    });
    row("partition copies per node", &|p| {
        format!("{:.0}", p.node.partitions)
    });
    row("CPU cores per node (ingest)", &|p| {
        format!("{:.4}", p.node.cpu_cores)
    });
    row("RAM per node", &|p| human_bytes(p.node.ram.total_bytes));
    row("  heap: index + first samples", &|p| {
        human_bytes(p.node.ram.series_bytes + p.node.ram.partitions_bytes)
    });
    row("  heap: unsealed head samples", &|p| {
        human_bytes(p.node.ram.head_bytes)
    });
    row("  heap: sealed-chunk references", &|p| {
        human_bytes(p.node.ram.chunk_refs_bytes)
    });
    row("  mapped: log segments", &|p| {
        human_bytes(p.node.ram.log_mapped_bytes)
    });
    row("  mapped: chunk file indexes", &|p| {
        human_bytes(p.node.ram.chunk_index_mapped_bytes)
    });
    row("  process", &|p| human_bytes(p.node.ram.process_bytes));
    row("RAM on the busiest node", &|p| {
        human_bytes(p.busiest.ram.total_bytes)
    });
    row("disk per node", &|p| human_bytes(p.node.disk.total_bytes));
    row("  chunk files", &|p| {
        human_bytes(p.node.disk.chunk_files_bytes)
    });
    row("  log segments", &|p| human_bytes(p.node.disk.log_bytes));
    row("disk on the busiest node", &|p| {
        human_bytes(p.busiest.disk.total_bytes)
    });
    row("one node down: extra reads/routing per survivor", &|p| {
        format!("{:.0}%", p.one_node_down.extra_load_fraction * 100.0)
    });
    row("  samples it misses in the outage", &|p| {
        format!("{:.3e}", p.one_node_down.outage_missed_samples)
    });
    row("  log to keep per node for that outage", &|p| {
        human_bytes(p.one_node_down.catch_up_log_bytes)
    });
    row("  log reaches back today (seal span)", &|p| {
        human_seconds(p.one_node_down.log_reach_s)
    });
    row("  catch-up if the log reached back", &|p| {
        human_seconds(p.one_node_down.catch_up_s)
    });
    row("  full copy of the node", &|p| {
        human_seconds(p.one_node_down.full_copy_s)
    });
    row("rebuild after a removal", &|p| {
        p.one_node_down
            .rebuild_s
            .map_or("data lost (one copy)".into(), human_seconds)
    });
    row("  RAM / disk per survivor after it", &|p| {
        format!(
            "{} / {}{}",
            human_bytes(p.one_node_down.after_removal_ram_bytes),
            human_bytes(p.one_node_down.after_removal_disk_bytes),
            if p.one_node_down.after_removal_fits {
                ""
            } else {
                " (over capacity)"
            }
        )
    });
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let col = rows
        .iter()
        .flat_map(|r| r.1.iter().map(|c| c.len()))
        .chain(header.iter().map(|h| h.len()))
        .max()
        .unwrap_or(0);
    print!("{:width$}", "");
    for h in &header {
        print!("  {h:>col$}");
    }
    println!();
    for (name, cells) in rows {
        print!("{name:width$}");
        for c in cells {
            print!("  {c:>col$}");
        }
        println!();
    }
}

// ---------------------------------------------------------------- failures

#[derive(Debug, clap::Args)]
pub struct FailuresArgs {
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Physical hosts the nodes are spread over, round robin (default: one per node).
    #[arg(long)]
    pub hosts: Option<u32>,
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    #[arg(long, default_value_t = 1024)]
    pub partitions: u32,
    /// Mean time between failures of one node.
    #[arg(long, default_value = "4000h", value_parser = humantime::parse_duration)]
    pub node_mtbf: Duration,
    /// Mean time to bring a failed node back (`never`: no repair).
    #[arg(long, default_value = "8h", value_parser = parse_optional_duration)]
    pub node_mttr: OrNever,
    /// Mean time between failures of one host, all its nodes at once (`never`: hosts do not fail).
    #[arg(long, default_value = "20000h", value_parser = parse_optional_duration)]
    pub host_mtbf: OrNever,
    #[arg(long, default_value = "24h", value_parser = parse_optional_duration)]
    pub host_mttr: OrNever,
    /// Probability that a failure destroys the failed nodes' data (1: every
    /// failure is a lost node, the pessimistic bound; 0: crashes only).
    #[arg(long, default_value_t = 1.0)]
    pub disk_loss: f64,
    /// Write pause when a primary fails (down-after plus the map's propagation).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub failover: Duration,
    /// Outages shorter than this catch up from the log (default: the profile's seal span, where the log is trimmed).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub log_reach: Option<Duration>,
    #[arg(long, default_value = "1y", value_parser = humantime::parse_duration)]
    pub horizon: Duration,
    #[arg(long, default_value_t = 10_000)]
    pub trials: u32,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The load (what a full copy moves and what a lost partition held).
    #[arg(long, default_value_t = 10_000)]
    pub resources: u64,
    #[arg(long, default_value_t = 200)]
    pub metrics_per_resource: u64,
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub retention: Duration,
    /// Simulate only the given cluster (no HA-off or host-layout comparison).
    #[arg(long)]
    pub no_compare: bool,
    /// Draw P(data lost by day d) per scenario into this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    #[arg(long)]
    pub profile: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

fn failures(args: FailuresArgs) -> anyhow::Result<i32> {
    let profile = load_profile(&args.profile)?;
    let hosts = args.hosts.unwrap_or(args.nodes);
    if args.host_mtbf.0.is_some() && args.host_mttr.0.is_none() {
        bail!("--host-mttr never with a finite --host-mtbf would leave every host down for good; give a repair time");
    }
    let input = sim::failures::FailureInput {
        nodes: args.nodes,
        hosts,
        replicas: args.replicas,
        partitions: args.partitions,
        node_mtbf_s: args.node_mtbf.as_secs_f64(),
        node_mttr_s: args.node_mttr.0.map(|d| d.as_secs_f64()),
        host_mtbf_s: args.host_mtbf.0.map(|d| d.as_secs_f64()),
        host_mttr_s: args.host_mttr.0.map(|d| d.as_secs_f64()),
        disk_loss: args.disk_loss,
        failover_s: args.failover.as_secs_f64(),
        log_reach_s: args
            .log_reach
            .map_or(profile.policy.seal_head_span_ms as f64 / 1000.0, |d| {
                d.as_secs_f64()
            }),
        horizon_s: args.horizon.as_secs_f64(),
        trials: args.trials,
        seed: args.seed,
        series: (args.resources * args.metrics_per_resource) as f64,
        interval_s: args.interval.as_secs_f64(),
        retention_s: args.retention.as_secs_f64(),
        full_copy_samples_per_s: profile.resync.full_copy_samples_per_s,
        full_copy_partition_s: profile.resync.full_copy_partition_s,
        catch_up_samples_per_s: profile.resync.catch_up_samples_per_s,
        compare: !args.no_compare,
    };
    let total = u64::from(args.trials) * u64::from(sim::failures::scenario_count(&input));
    let bar = if args.json || !std::io::stderr().is_terminal() {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} trials, {eta} left")
                .expect("a valid template"),
        );
        bar
    };
    let report = sim::failures::simulate(&input, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    if let Some(path) = &args.plot {
        sim::plot::write_svg(&report, path)?;
    }
    if args.json {
        print_json(&report)?;
        return Ok(0);
    }
    print_failures(&report);
    if let Some(path) = &args.plot {
        println!("plot written to {}", path.display());
    }
    Ok(0)
}

fn print_failures(r: &sim::failures::FailureReport) {
    let i = &r.input;
    let opt = |d: Option<f64>| d.map_or("never".into(), human_seconds);
    println!(
        "{} nodes, {} partitions; node MTBF {} MTTR {}, host MTBF {} MTTR {}, disk loss {:.0}% of failures; {} trials over {}, seed {}",
        i.nodes,
        i.partitions,
        human_seconds(i.node_mtbf_s),
        opt(i.node_mttr_s),
        opt(i.host_mtbf_s),
        opt(i.host_mttr_s),
        i.disk_loss * 100.0,
        i.trials,
        human_seconds(i.horizon_s),
        i.seed
    );
    println!(
        "load {:.0} series every {}, kept {}; full copy {:.2} M samples/s, catch-up {:.2} M samples/s, log reach {}",
        i.series,
        human_seconds(i.interval_s),
        human_seconds(i.retention_s),
        i.full_copy_samples_per_s / 1e6,
        i.catch_up_samples_per_s / 1e6,
        human_seconds(i.log_reach_s)
    );
    let pm = |e: sim::failures::Estimate, digits: usize| {
        format!("{:.digits$} ±{:.digits$}", e.mean, e.stderr)
    };
    let nines = |a: f64| {
        if a >= 1.0 {
            "100%".to_string()
        } else {
            format!("{:.6}% ({:.1} nines)", a * 100.0, -(1.0 - a).log10())
        }
    };
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&sim::failures::ScenarioResult) -> String| {
        rows.push((name.to_string(), r.scenarios.iter().map(f).collect()));
    };
    row("", &|s| s.label.clone());
    row("replicas / hosts", &|s| {
        format!("R={} on {} hosts", s.replicas, s.hosts)
    });
    row("read availability", &|s| nines(s.read_availability.mean));
    row("write availability", &|s| nines(s.write_availability.mean));
    row("P(any data lost)", &|s| {
        format!(
            "{:.4} [{:.4}, {:.4}]",
            s.p_data_loss.mean, s.p_data_loss_95.0, s.p_data_loss_95.1
        )
    });
    row("expected samples lost", &|s| {
        format!("{:.3e}", s.samples_lost.mean)
    });
    row("expected samples refused", &|s| {
        format!("{:.3e}", s.samples_refused.mean)
    });
    row("hours degraded (< R copies)", &|s| pm(s.degraded_hours, 1));
    row("hours with a partition down", &|s| {
        pm(s.unavailable_hours, 2)
    });
    row("failures per trial", &|s| pm(s.failures, 2));
    let width = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let col = rows
        .iter()
        .flat_map(|r| r.1.iter().map(|c| c.len()))
        .max()
        .unwrap_or(0);
    for (name, cells) in rows {
        print!("{name:width$}");
        for c in cells {
            print!("  {c:>col$}");
        }
        println!();
    }
}

// ---------------------------------------------------------------- placement

#[derive(Debug, clap::Args)]
pub struct PlacementArgs {
    #[arg(long)]
    pub nodes: u32,
    /// Physical hosts, round robin (default: one per node).
    #[arg(long)]
    pub hosts: Option<u32>,
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    #[arg(long, default_value_t = 1024)]
    pub partitions: u32,
    /// Add this many nodes and show what moves.
    #[arg(long, conflicts_with = "remove")]
    pub add: Option<u32>,
    /// Remove this node (by id, 1-based) and show what moves.
    #[arg(long)]
    pub remove: Option<u32>,
    #[arg(long)]
    pub json: bool,
}

fn placement(args: PlacementArgs) -> anyhow::Result<i32> {
    let input = sim::placement::PlacementInput {
        nodes: args.nodes,
        hosts: args.hosts.unwrap_or(args.nodes),
        replicas: args.replicas,
        partitions: args.partitions,
        change: match (args.add, args.remove) {
            (Some(n), _) => Some(sim::placement::Change::Add(n)),
            (_, Some(id)) => Some(sim::placement::Change::Remove(id)),
            _ => None,
        },
    };
    let report = sim::placement::placement(&input)?;
    if args.json {
        print_json(&report)?;
        return Ok(0);
    }
    println!(
        "{} nodes on {} hosts, R={}, {} partitions",
        input.nodes, input.hosts, input.replicas, input.partitions
    );
    print_balance("before", &report.before);
    if let (Some(after), Some(m)) = (&report.after, &report.movement) {
        print_balance("after", after);
        println!(
            "moved: {} copies ({:.2}x the ideal {:.0}), {} partitions changed, {} primaries changed",
            m.copies_moved, m.moved_over_ideal, m.ideal_copies, m.partitions_changed, m.primaries_changed
        );
    }
    Ok(0)
}

fn print_balance(when: &str, b: &sim::placement::Balance) {
    println!("{when}:");
    println!("  NODE  HOST      COPIES  PRIMARIES");
    for n in &b.nodes {
        println!(
            "  {:<4}  {:<8} {:>7} {:>10}",
            n.id, n.host, n.copies, n.primaries
        );
    }
    for (name, s) in [("copies", &b.copies), ("primaries", &b.primaries)] {
        println!(
            "  {name:<9} min {} max {} mean {:.1} stddev {:.2} max/mean {:.3}",
            s.min, s.max, s.mean, s.stddev, s.max_over_mean
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_both_unit_families() {
        assert_eq!(parse_bytes("32GiB").unwrap(), 32.0 * 1024f64.powi(3));
        assert_eq!(parse_bytes("32g").unwrap(), 32.0 * 1024f64.powi(3));
        assert_eq!(parse_bytes("500GB").unwrap(), 500e9);
        assert_eq!(parse_bytes("1.5T").unwrap(), 1.5 * 1024f64.powi(4));
        assert_eq!(parse_bytes("4096").unwrap(), 4096.0);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
    }

    #[test]
    fn durations_may_be_never() {
        assert_eq!(parse_optional_duration("never").unwrap(), OrNever(None));
        assert_eq!(
            parse_optional_duration("8h").unwrap(),
            OrNever(Some(Duration::from_secs(8 * 3600)))
        );
        assert!(parse_optional_duration("soon").is_err());
    }
}
