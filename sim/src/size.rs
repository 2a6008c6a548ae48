//! `tandem sim size`: nodes, RAM, disk and CPU for a load, from a calibrated [`Profile`].
//!
//! What one node holds (the model; every cost comes from the profile):
//!
//! - **Heap (RAM that must be there)**: the process itself
//!   (`memory.base_rss_bytes`); every partition copy it holds
//!   (`partition_bytes`); every series copy: its index entry and first head
//!   sample (`series_bytes`), each further unsealed sample of its head chunk
//!   (`head_sample_bytes`, up to one seal span of samples), and each sealed
//!   chunk it has on disk (`chunk_bytes`: the chunk file's parsed index entry
//!   and the series' reference to the file). The store is in memory in this
//!   sense: the index and the recent (unsealed) samples live on the heap;
//!   sealed samples do not, but their per-chunk bookkeeping does, so heap
//!   grows with retention / seal span.
//! - **Mapped files (resident while touched, reclaimable)**: the partition
//!   log segments (memory-mapped, faulted in as they are written; see
//!   [`crate::logmodel`]) and the index part of every chunk file (read at
//!   open). Sealed chunk *data* is read through the map on demand: it is page
//!   cache, counted here neither as needed RAM nor as resident.
//! - **Disk**: chunk files (a fixed part per chunk plus compressed bytes per
//!   sample), the log segments (preallocated, emptied by a seal: see logmodel),
//!   and the per-partition files.
//!
//! A chunk holds one seal span of a series (`SealPolicy`: 2 h, or fewer
//! samples when the partition's head reaches its sample cap), so at long
//! intervals chunks are short and their fixed costs dominate.
//!
//! CPU: every sample is routed once by a gateway (`route_ns_per_sample`),
//! and appended and sealed by every copy (`ingest_ns_per_sample`,
//! `seal_ns_per_sample`). Network, replication RPC and queries are not in
//! the profile: the headroom covers them.
//!
//! Resources (the shard key) hash to partitions, so a partition holds a
//! Poisson number of resources; the log, whose segments double, is averaged
//! over that spread.
//!
//! Nodes are one per host; `n` nodes hold `P * R / n` partition copies each
//! on average, and the busiest node of the real placement holds more: its
//! share is checked too.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::logmodel::{self, LogPattern, LogPolicy};
use crate::profile::Profile;

/// How long series are kept.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Samples older than this are deleted (whole chunk files).
    Retention { seconds: f64 },
    /// A fixed number of samples per series (e.g. what one `tandem push` sends).
    Samples { per_series: u64 },
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SizeInput {
    pub resources: u64,
    pub metrics_per_resource: u64,
    pub interval_s: f64,
    pub keep: Keep,
    pub replicas: u32,
    pub partitions: u32,
    pub node_cores: f64,
    pub node_ram_bytes: f64,
    pub node_disk_bytes: f64,
    /// Fraction of each node resource left free in normal operation.
    pub headroom: f64,
    /// An outage the catch-up figures are computed for.
    pub outage_s: f64,
    /// Average series key (resource + metric + tags, encoded), bytes; the
    /// profile's costs are shifted by the difference to the calibrated keys.
    pub key_bytes: f64,
    /// Evaluate this many nodes instead of solving for the fewest.
    pub nodes: Option<u32>,
    /// What if the store sealed every this many seconds instead of the
    /// profile's seal span (longer chunks: less per-chunk overhead, a longer
    /// head in RAM and a longer log)?
    pub seal_span_s: Option<f64>,
}

/// Which node resource needs the most nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    Cpu,
    Ram,
    Disk,
}

impl std::fmt::Display for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Resource::Cpu => "CPU",
            Resource::Ram => "RAM",
            Resource::Disk => "disk",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SizeReport {
    pub input: SizeInput,
    /// The machine the profile was measured on.
    pub profile_machine: String,
    pub series: u64,
    pub samples_per_series: u64,
    /// Samples per second that collectors send (one copy).
    pub ingest_samples_per_s: f64,
    /// Samples per chunk at this interval under the seal policy.
    pub samples_per_chunk: u64,
    /// HA on (R >= 2) first, then HA off (R = 1).
    pub plans: Vec<Plan>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    pub replicas: u32,
    pub nodes: u32,
    /// The resource that needs the most nodes (absent when `--nodes` was given).
    pub binding: Option<Resource>,
    pub nodes_for_cpu: u32,
    pub nodes_for_ram: u32,
    pub nodes_for_disk: u32,
    /// Does every node, the busiest included, fit within capacity minus headroom?
    pub fits: bool,
    /// Samples per second written on all copies together.
    pub copy_samples_per_s: f64,
    /// The average node.
    pub node: NodeUse,
    /// The busiest node of the real placement (most partition copies).
    pub busiest: NodeUse,
    pub one_node_down: Degraded,
}

/// What one node uses.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeUse {
    pub partitions: f64,
    pub series: f64,
    pub cpu_cores: f64,
    pub ram: Ram,
    pub disk: DiskUse,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Ram {
    pub process_bytes: f64,
    pub partitions_bytes: f64,
    pub series_bytes: f64,
    pub head_bytes: f64,
    pub chunk_refs_bytes: f64,
    /// Resident pages of the mapped log segments.
    pub log_mapped_bytes: f64,
    /// Resident pages of the chunk files' indexes.
    pub chunk_index_mapped_bytes: f64,
    pub total_bytes: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DiskUse {
    pub chunk_files_bytes: f64,
    pub log_bytes: f64,
    pub partition_files_bytes: f64,
    pub total_bytes: f64,
}

/// One node down, and what its return or its replacement costs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Degraded {
    /// Extra share of reads and gateway work each survivor takes: 1/(n-1).
    /// Ingest does not grow: the other copies were already written.
    pub extra_load_fraction: f64,
    /// Samples the down node misses during the outage.
    pub outage_missed_samples: f64,
    /// Log bytes each node must keep so that an outage of `outage_s`
    /// catches up incrementally (the log holds uncompressed batches).
    pub catch_up_log_bytes: f64,
    /// How far back the log reaches today: it is trimmed at every seal, so an
    /// outage longer than this ends in full copies.
    pub log_reach_s: f64,
    /// Seconds to catch up incrementally (if the log reached back).
    pub catch_up_s: f64,
    /// Seconds to copy the node's whole data back (one stream per node).
    pub full_copy_s: f64,
    /// After a removal: its copies rebuilt on the n-1 survivors (each pulls its
    /// share, survivors in parallel). None with one copy: the data is lost.
    pub rebuild_s: Option<f64>,
    /// RAM and disk per survivor after a removal.
    pub after_removal_ram_bytes: f64,
    pub after_removal_disk_bytes: f64,
    /// Do survivors still fit within their full capacity after a removal?
    pub after_removal_fits: bool,
}

/// Per-node costs as `fixed + variable / n` (n = nodes).
#[derive(Clone, Copy, Debug, Default)]
struct Split {
    fixed: f64,
    variable: f64,
}

impl Split {
    /// Fewest nodes for which `at(n) <= capacity`.
    fn nodes_within(&self, capacity: f64) -> Option<u32> {
        if self.variable <= 0.0 {
            return (self.fixed <= capacity).then_some(1);
        }
        let room = capacity - self.fixed;
        if room <= 0.0 {
            return None;
        }
        let n = (self.variable / room).ceil();
        (n <= controller::placement::NODES_MAX as f64).then_some(n.max(1.0) as u32)
    }
}

/// Everything the model derives from the load, before choosing n.
struct Model<'a> {
    input: &'a SizeInput,
    profile: &'a Profile,
    series: f64,
    samples_per_series: f64,
    samples_per_chunk: f64,
    head_samples: f64,
    sealed_chunks: f64,
    sealed_samples: f64,
    log: logmodel::LogFootprint,
    rate: f64,
    key_delta: f64,
}

impl<'a> Model<'a> {
    fn new(input: &'a SizeInput, profile: &'a Profile) -> Model<'a> {
        let series = (input.resources * input.metrics_per_resource) as f64;
        let samples_per_series = match input.keep {
            Keep::Retention { seconds } => (seconds / input.interval_s).floor().max(1.0),
            Keep::Samples { per_series } => per_series.max(1) as f64,
        };
        let span_s = seal_span_s(input, profile);
        // Resources hash to partitions: a partition holds Poisson(resources / P)
        // resources; some hold none.
        let lambda = input.resources as f64 / input.partitions as f64;
        let data_partitions = (input.partitions as f64 * (1.0 - (-lambda).exp())).max(1.0);
        let series_per_partition = series / data_partitions;
        let by_span = (span_s / input.interval_s).floor() + 1.0;
        let by_cap = (profile.policy.seal_head_samples_max as f64 / series_per_partition).ceil();
        let samples_per_chunk = by_span.min(by_cap).max(1.0);
        let (head_samples, sealed_samples) = if samples_per_series <= samples_per_chunk {
            (samples_per_series, 0.0)
        } else {
            (samples_per_chunk, samples_per_series - samples_per_chunk)
        };
        let sealed_chunks = (sealed_samples / samples_per_chunk).ceil();
        let key_delta = input.key_bytes - profile.workload.key_bytes;
        let entry = (profile.log.entry_bytes + key_delta).max(1.0);
        let seals = samples_per_series > samples_per_chunk;
        let pattern = |resources: f64| LogPattern {
            payload_bytes: (profile.log.record_bytes - logmodel::FRAME_HEADER_BYTES as f64
                + resources * input.metrics_per_resource as f64 * entry)
                .ceil() as u64,
            // One record per collection round while the partition has data.
            records_per_period: if resources == 0.0 {
                0
            } else if seals {
                samples_per_chunk as u64
            } else {
                samples_per_series as u64
            },
            periods: if seals {
                (samples_per_series / samples_per_chunk).ceil() as u64
            } else {
                1
            },
            seals,
        };
        let log = expected_log(&LogPolicy::from(&profile.policy), lambda, &pattern);
        Model {
            input,
            profile,
            series,
            samples_per_series,
            samples_per_chunk,
            head_samples,
            sealed_chunks,
            sealed_samples,
            log,
            rate: series / input.interval_s,
            key_delta,
        }
    }

    fn ram(&self, r: f64) -> (Split, Ram) {
        let p = self.profile;
        let copies_p = self.input.partitions as f64 * r;
        let copies_s = self.series * r;
        let m = &p.memory;
        // A series' key is stored once (the postings share resource and metric names).
        let key = self.key_delta.max(-m.series_bytes / 2.0);
        let parts = Ram {
            process_bytes: m.base_rss_bytes,
            partitions_bytes: copies_p * m.partition_bytes,
            series_bytes: copies_s * (m.series_bytes + key),
            head_bytes: copies_s * (self.head_samples - 1.0).max(0.0) * m.head_sample_bytes,
            chunk_refs_bytes: copies_s * self.sealed_chunks * m.chunk_bytes,
            log_mapped_bytes: copies_p * self.log.resident_bytes as f64,
            chunk_index_mapped_bytes: copies_s
                * self.sealed_chunks
                * (p.disk.chunk_index_bytes + self.key_delta).max(0.0),
            total_bytes: 0.0,
        };
        let variable = parts.partitions_bytes
            + parts.series_bytes
            + parts.head_bytes
            + parts.chunk_refs_bytes
            + parts.log_mapped_bytes
            + parts.chunk_index_mapped_bytes;
        (
            Split {
                fixed: m.base_rss_bytes,
                variable,
            },
            parts,
        )
    }

    fn disk(&self, r: f64) -> (Split, DiskUse) {
        let d = &self.profile.disk;
        let copies_p = self.input.partitions as f64 * r;
        let copies_s = self.series * r;
        let segment = self.profile.policy.log_segment_bytes_min as f64;
        let parts = DiskUse {
            chunk_files_bytes: copies_s
                * (self.sealed_chunks * (d.chunk_fixed_bytes + self.key_delta)
                    + self.sealed_samples * d.chunk_sample_bytes),
            log_bytes: copies_p * self.log.disk_bytes as f64,
            partition_files_bytes: copies_p * (d.partition_bytes - segment).max(0.0),
            total_bytes: 0.0,
        };
        let variable = parts.chunk_files_bytes + parts.log_bytes + parts.partition_files_bytes;
        (
            Split {
                fixed: 0.0,
                variable,
            },
            parts,
        )
    }

    fn cpu(&self, r: f64) -> Split {
        let c = &self.profile.cpu;
        let ns = self.rate
            * (c.route_ns_per_sample + r * (c.ingest_ns_per_sample + c.seal_ns_per_sample));
        Split {
            fixed: 0.0,
            variable: ns * 1e-9,
        }
    }

    /// What a node holding `share` of the copies (1/n on average) uses.
    fn node_use(&self, r: f64, share: f64) -> NodeUse {
        let (ram_split, ram) = self.ram(r);
        let (disk_split, disk) = self.disk(r);
        let scale = |x: f64| x * share;
        let mut ram = Ram {
            process_bytes: ram.process_bytes,
            partitions_bytes: scale(ram.partitions_bytes),
            series_bytes: scale(ram.series_bytes),
            head_bytes: scale(ram.head_bytes),
            chunk_refs_bytes: scale(ram.chunk_refs_bytes),
            log_mapped_bytes: scale(ram.log_mapped_bytes),
            chunk_index_mapped_bytes: scale(ram.chunk_index_mapped_bytes),
            total_bytes: 0.0,
        };
        ram.total_bytes = ram_split.fixed + ram_split.variable * share;
        let disk = DiskUse {
            chunk_files_bytes: scale(disk.chunk_files_bytes),
            log_bytes: scale(disk.log_bytes),
            partition_files_bytes: scale(disk.partition_files_bytes),
            total_bytes: disk_split.variable * share,
        };
        NodeUse {
            partitions: self.input.partitions as f64 * r * share,
            series: self.series * r * share,
            cpu_cores: self.cpu(r).variable * share,
            ram,
            disk,
        }
    }

    fn plan(&self, replicas: u32) -> Result<Plan> {
        let r = replicas as f64;
        let usable = 1.0 - self.input.headroom;
        let need = |split: Split, capacity: f64, what: &str| -> Result<u32> {
            split.nodes_within(capacity * usable).ok_or_else(|| {
                Error::Invalid(format!(
                    "no cluster of up to {} nodes fits: one node needs {} of {what} for the process alone or the load does not spread; give bigger nodes (--node-{})",
                    controller::placement::NODES_MAX,
                    human_bytes(split.fixed),
                    what.to_lowercase(),
                ))
            })
        };
        let nodes_for_cpu = need(self.cpu(r), self.input.node_cores, "cores")?;
        let nodes_for_ram = need(self.ram(r).0, self.input.node_ram_bytes, "RAM")?;
        let nodes_for_disk = need(self.disk(r).0, self.input.node_disk_bytes, "disk")?;
        let (mut nodes, binding) = match self.input.nodes {
            Some(n) => (n, None),
            None => {
                let (n, b) = [
                    (nodes_for_cpu, Resource::Cpu),
                    (nodes_for_ram, Resource::Ram),
                    (nodes_for_disk, Resource::Disk),
                ]
                .into_iter()
                .max_by_key(|(n, _)| *n)
                .expect("three resources");
                (n.max(replicas), Some(b))
            }
        };
        if nodes < replicas {
            return Err(Error::Placement(controller::Error::NotEnoughHosts {
                hosts: nodes as usize,
                replicas,
            }));
        }
        // The busiest node of the real placement must fit as well.
        let mut share = busiest_share(nodes, replicas, self.input.partitions)?;
        let fits = |n: u32, share: f64| self.fits(r, n, share, usable);
        if self.input.nodes.is_none() {
            let mut tries = 0;
            while !fits(nodes, share) && tries < 32 {
                nodes += 1;
                share = busiest_share(nodes, replicas, self.input.partitions)?;
                tries += 1;
            }
        }
        let n = nodes as f64;
        let node = self.node_use(r, 1.0 / n);
        let busiest = self.node_use(r, share);
        let degraded = self.degraded(r, n, &node);
        Ok(Plan {
            replicas,
            nodes,
            binding,
            nodes_for_cpu,
            nodes_for_ram,
            nodes_for_disk,
            fits: fits(nodes, share),
            copy_samples_per_s: self.rate * r,
            node,
            busiest,
            one_node_down: degraded,
        })
    }

    fn fits(&self, r: f64, n: u32, share: f64, usable: f64) -> bool {
        let u = self.node_use(r, share.max(1.0 / n as f64));
        u.cpu_cores <= self.input.node_cores * usable
            && u.ram.total_bytes <= self.input.node_ram_bytes * usable
            && u.disk.total_bytes <= self.input.node_disk_bytes * usable
    }

    fn degraded(&self, r: f64, n: f64, node: &NodeUse) -> Degraded {
        let p = self.profile;
        let outage = self.input.outage_s;
        let node_rate = self.rate * r / n;
        let missed = node_rate * outage;
        let rounds = outage / self.input.interval_s;
        let entry = (p.log.entry_bytes + self.key_delta).max(1.0);
        let records = node.partitions.min(node.series) * rounds;
        let catch_up_log = missed * entry + records * p.log.record_bytes;
        let stored = node.series * self.samples_per_series;
        let full_copy_s = node.partitions * p.resync.full_copy_partition_s
            + stored / p.resync.full_copy_samples_per_s;
        let survivors = (n - 1.0).max(1.0);
        let after = self.node_use(r, 1.0 / survivors);
        Degraded {
            extra_load_fraction: if n > 1.0 { 1.0 / (n - 1.0) } else { 1.0 },
            outage_missed_samples: missed,
            catch_up_log_bytes: catch_up_log,
            log_reach_s: seal_span_s(self.input, p),
            catch_up_s: missed / p.resync.catch_up_samples_per_s,
            full_copy_s,
            rebuild_s: (r >= 2.0 && n > 1.0).then(|| full_copy_s / survivors),
            after_removal_ram_bytes: after.ram.total_bytes,
            after_removal_disk_bytes: after.disk.total_bytes,
            after_removal_fits: n > r
                && after.ram.total_bytes <= self.input.node_ram_bytes
                && after.disk.total_bytes <= self.input.node_disk_bytes,
        }
    }
}

fn seal_span_s(input: &SizeInput, profile: &Profile) -> f64 {
    input
        .seal_span_s
        .unwrap_or(profile.policy.seal_head_span_ms as f64 / 1000.0)
}

/// The log footprint of a partition averaged over how many resources it
/// holds (Poisson with mean `lambda`): segments double, so the mean load
/// alone would understate it. Above a mean of 50 resources the spread is
/// small and the mean is used.
fn expected_log(
    policy: &LogPolicy,
    lambda: f64,
    pattern: &dyn Fn(f64) -> LogPattern,
) -> logmodel::LogFootprint {
    if lambda > 50.0 {
        return logmodel::replay(policy, &pattern(lambda));
    }
    let (mut disk, mut resident, mut records) = (0.0, 0.0, 0.0);
    let mut pmf = (-lambda).exp();
    let mut total = 0.0;
    let k_max = (lambda + 10.0 * lambda.sqrt() + 10.0).ceil() as u32;
    for k in 0..=k_max {
        if k > 0 {
            pmf *= lambda / k as f64;
        }
        let f = logmodel::replay(policy, &pattern(k as f64));
        disk += pmf * f.disk_bytes as f64;
        resident += pmf * f.resident_bytes as f64;
        records += pmf * f.record_bytes as f64;
        total += pmf;
    }
    logmodel::LogFootprint {
        disk_bytes: (disk / total) as u64,
        resident_bytes: (resident / total) as u64,
        record_bytes: (records / total) as u64,
    }
}

/// The busiest node's share of partition copies in the real placement of
/// `nodes` nodes, one per host.
fn busiest_share(nodes: u32, replicas: u32, partitions: u32) -> Result<f64> {
    let candidates: Vec<controller::Candidate> = (1..=nodes)
        .map(|id| controller::Candidate::new(controller::NodeId(id), crate::host_of(id, nodes)))
        .collect();
    let table = controller::place(&candidates, partitions, replicas)?;
    let mut copies = vec![0u64; nodes as usize + 1];
    for list in &table {
        for n in list {
            copies[n.0 as usize] += 1;
        }
    }
    let max = copies.iter().copied().max().unwrap_or(0) as f64;
    Ok(max / (partitions as f64 * replicas as f64))
}

/// Sizes the cluster for `input`: HA on (the given R, or 2 if R = 1) and HA off.
pub fn size(input: &SizeInput, profile: &Profile) -> Result<SizeReport> {
    validate(input)?;
    let model = Model::new(input, profile);
    let on = input.replicas.max(2);
    let mut plans = vec![model.plan(on)?];
    plans.push(model.plan(1)?);
    Ok(SizeReport {
        input: input.clone(),
        profile_machine: format!(
            "{} cores, {}, {} ({})",
            profile.machine.cores,
            human_bytes(profile.machine.ram_bytes as f64),
            profile.machine.cpu_model,
            profile.machine.date
        ),
        series: model.series as u64,
        samples_per_series: model.samples_per_series as u64,
        ingest_samples_per_s: model.rate,
        samples_per_chunk: model.samples_per_chunk as u64,
        plans,
    })
}

fn validate(input: &SizeInput) -> Result<()> {
    let bad = |m: String| Err(Error::Invalid(m));
    if input.resources == 0 || input.metrics_per_resource == 0 {
        return bad("--resources and --metrics-per-resource must be at least 1".into());
    }
    if input.interval_s.is_nan() || input.interval_s <= 0.0 {
        return bad("--interval must be positive (e.g. 5m)".into());
    }
    if !(0.0..0.95).contains(&input.headroom) {
        return bad(format!(
            "--headroom {} must be a fraction in [0, 0.95) (e.g. 0.3 keeps 30% free)",
            input.headroom
        ));
    }
    if input.replicas == 0 || input.replicas > controller::placement::REPLICAS_MAX {
        return Err(Error::Placement(controller::Error::InvalidReplicas(
            input.replicas,
        )));
    }
    if input.partitions == 0 || input.partitions > controller::placement::PARTITIONS_MAX {
        return Err(Error::Placement(controller::Error::InvalidPartitions(
            input.partitions,
        )));
    }
    if input.node_cores <= 0.0 || input.node_ram_bytes <= 0.0 || input.node_disk_bytes <= 0.0 {
        return bad("--node-cores, --node-ram and --node-disk must be positive".into());
    }
    if let Keep::Retention { seconds } = input.keep {
        if seconds < input.interval_s {
            return bad("--retention is shorter than --interval: nothing would be kept".into());
        }
    }
    if input.seal_span_s.is_some_and(|s| s.is_nan() || s <= 0.0) {
        return bad("--seal-span must be positive (e.g. 24h)".into());
    }
    if input.nodes == Some(0) {
        return bad("--nodes must be at least 1".into());
    }
    Ok(())
}

/// `1.5 GiB`-style bytes.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `2h 5m`-style seconds.
pub fn human_seconds(s: f64) -> String {
    if !s.is_finite() {
        return "never".into();
    }
    if s < 1.0 {
        return format!("{:.0} ms", s * 1000.0);
    }
    if s < 120.0 {
        return format!("{s:.0} s");
    }
    let m = (s / 60.0).round() as u64;
    if m < 120 {
        return format!("{m} min");
    }
    let h = s / 3600.0;
    if h < 72.0 {
        return format!("{h:.1} h");
    }
    format!("{:.1} d", h / 24.0)
}

#[cfg(test)]
mod tests;
