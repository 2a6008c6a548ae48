//! The calibrated costs the sizing model runs on: what `tandem sim calibrate` measures and writes as JSON.
//!
//! Every figure here comes from running the real store and fsdb (see
//! calibrate.rs); none is typed in by hand. The repository ships one profile
//! measured on the development machine ([`Profile::builtin`]), with that
//! machine noted in [`Machine`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The profile format version; a profile of another version is refused.
pub const VERSION: u32 = 1;

const BUILTIN: &str = include_str!("../profiles/default.json");

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub version: u32,
    pub machine: Machine,
    /// What calibrate pushed through the store.
    pub workload: WorkloadInfo,
    pub cpu: Cpu,
    pub memory: Memory,
    pub disk: Disk,
    pub log: Log,
    pub query: Query,
    pub resync: Resync,
    /// The store's policies in force when measured (they shape the model).
    pub policy: Policy,
}

/// Where and how the profile was measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cores: u32,
    pub ram_bytes: u64,
    pub cpu_model: String,
    /// UTC date of the measurement, `YYYY-MM-DD`.
    pub date: String,
    /// The command that produced the profile.
    pub command: String,
    /// Wall seconds calibrate ran.
    pub seconds: f64,
    /// Free text: what else ran on the machine.
    #[serde(default)]
    pub note: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadInfo {
    pub series: u64,
    pub partitions: u32,
    /// Average canonical series key (resource + metric + tags), bytes.
    pub key_bytes: f64,
    pub samples: u64,
}

/// CPU seconds per sample (process CPU time, user + system), in nanoseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// `Partition::append`, paid by every copy: decode, log append, apply to memory.
    pub ingest_ns_per_sample: f64,
    /// The gateway: decode a collector's batch and split it by partition. Paid once.
    pub route_ns_per_sample: f64,
    /// `Partition::seal`: write the head chunks into a chunk file, trim the log. Every copy.
    pub seal_ns_per_sample: f64,
}

/// Memory, measured as growth of the bytes the process has allocated and not
/// freed (its global allocator's count) unless noted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// VmRSS of an idle tandem process (the calibrating one, before it starts).
    pub base_rss_bytes: f64,
    /// An empty partition's heap (its mapped first log segment is counted
    /// with the log, see logmodel).
    pub partition_bytes: f64,
    /// A series with its first sample: key, index entries, postings, head encoder.
    pub series_bytes: f64,
    /// Each further unsealed sample in a head chunk (store stats: encoder growth).
    pub head_sample_bytes: f64,
    /// Each sealed chunk: the chunk file's parsed index entry and the series'
    /// reference to the file (heap; grows with retention / seal span).
    pub chunk_bytes: f64,
}

/// Bytes on disk.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// An empty partition: its first log segment and files (du).
    pub partition_bytes: f64,
    /// Fixed bytes per sealed chunk: index entry (with the key), chunk header,
    /// first sample, and the file header's share.
    pub chunk_fixed_bytes: f64,
    /// Each sample of a sealed chunk after the first (compressed).
    pub chunk_sample_bytes: f64,
    /// The index part of `chunk_fixed_bytes`: read at open, so resident (mapped).
    pub chunk_index_bytes: f64,
    /// Chunk lengths (samples) of the two runs the two figures above are fitted from.
    pub fitted_at_samples: [u32; 2],
}

/// The partition log (uncompressed batches, until the next seal trims them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Log {
    /// One series with one sample in a record: key, count, length, timestamp, value.
    pub entry_bytes: f64,
    /// Per record: frame header and batch header.
    pub record_bytes: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// CPU per sample read and aggregated by a PromQL query over sealed data.
    pub ns_per_sample: f64,
    /// The query that was timed.
    pub expr: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resync {
    /// A full copy: `Partition::snapshot` on the source, `Store::install_snapshot`
    /// (decode, apply, seal, fsync) on the target, wall clock, one stream.
    pub full_copy_samples_per_s: f64,
    pub full_copy_bytes_per_s: f64,
    /// Fixed seconds per partition copied (directory, manifest and fsyncs).
    pub full_copy_partition_s: f64,
    /// Incremental catch-up: `Partition::read_log` then `apply_replicated`, one stream.
    pub catch_up_samples_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub seal_head_span_ms: i64,
    pub seal_head_samples_max: u64,
    pub log_segment_bytes_min: u64,
    pub log_segment_bytes_max: u64,
    pub log_write_ahead_bytes: u64,
}

impl Policy {
    /// The policies the store and fsdb use today.
    pub fn current() -> Policy {
        let seal = store::SealPolicy::default();
        let log = fsdb::LogConfig::default();
        Policy {
            seal_head_span_ms: seal.head_span_ms,
            seal_head_samples_max: seal.head_samples_max,
            log_segment_bytes_min: log.segment_bytes_min,
            log_segment_bytes_max: log.segment_bytes_max,
            log_write_ahead_bytes: log.write_ahead_bytes,
        }
    }
}

impl Profile {
    /// The profile measured on the development machine, shipped in the repository.
    pub fn builtin() -> Profile {
        Profile::parse(BUILTIN).expect("the shipped profile decodes")
    }

    pub fn parse(text: &str) -> Result<Profile, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Loads a profile written by `tandem sim calibrate --out`.
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let p = Profile::parse(&text).map_err(|source| Error::Profile {
            path: path.to_path_buf(),
            source,
        })?;
        if p.version != VERSION {
            return Err(Error::Invalid(format!(
                "profile {} has version {}, this tandem reads version {VERSION}: run `tandem sim calibrate --out FILE` again",
                path.display(),
                p.version
            )));
        }
        Ok(p)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a profile serializes")
    }
}
