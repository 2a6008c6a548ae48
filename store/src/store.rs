//! The store: one node's partitions, opened from disk, and a [`Source`] over any set of them.
//!
//! Layout under `StoreConfig::dir`: `partitions` lists the partition ids the
//! node holds (one per line, rewritten durably at every create and drop),
//! and each partition lives in `p<id>/` (see partition.rs).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use fsdb::{Backend, LogConfig, Lsn, Term};

use crate::error::{Error, Result};
use crate::head::Runs;
use crate::partition::{Partition, PartitionConfig, PartitionStats, SealPolicy, State};
use crate::series::KeyRef;
use crate::source::{Matcher, SeriesData, SeriesVisitor, Source};
use crate::PartitionId;

/// Default out-of-order window: one hour behind a series' newest sample.
pub const OOO_WINDOW_MS_DEFAULT: i64 = 3600 * 1000;

#[derive(Clone)]
pub struct StoreConfig {
    pub dir: PathBuf,
    pub ooo_window_ms: i64,
    pub log: LogConfig,
    pub backend: Arc<dyn Backend>,
    pub seal: SealPolicy,
}

impl StoreConfig {
    /// Defaults on real files (mmap) under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig {
            dir: dir.into(),
            ooo_window_ms: OOO_WINDOW_MS_DEFAULT,
            log: LogConfig::default(),
            backend: Arc::new(fsdb::MmapBackend),
            seal: SealPolicy::default(),
        }
    }
}

/// What `Store::open` found.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Partitions opened and served.
    pub opened: Vec<PartitionId>,
    /// Partitions whose files are damaged: not served; fetch them from the peer.
    pub corrupted: Vec<(PartitionId, String)>,
}

/// Memory used by the whole store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub partitions: u64,
    pub series: u64,
    pub head_samples: u64,
    pub head_bytes: u64,
    pub index_bytes: u64,
}

pub struct Store {
    config: StoreConfig,
    partitions: RwLock<BTreeMap<PartitionId, Arc<Partition>>>,
}

impl Store {
    /// Opens every partition listed on disk (chunk files + log replay).
    pub fn open(config: StoreConfig) -> Result<(Store, OpenReport)> {
        config.backend.create_dir_all(&config.dir)?;
        let store = Store {
            config,
            partitions: RwLock::new(BTreeMap::new()),
        };
        let mut report = OpenReport::default();
        for id in store.read_manifest()? {
            match Partition::open(id, &store.partition_dir(id), store.partition_config()) {
                Ok(p) => {
                    store
                        .partitions
                        .write()
                        .expect("lock")
                        .insert(id, Arc::new(p));
                    report.opened.push(id);
                }
                Err(e) if is_corruption(&e) => report.corrupted.push((id, e.to_string())),
                Err(e) => return Err(e),
            }
        }
        Ok((store, report))
    }

    fn partition_config(&self) -> PartitionConfig {
        PartitionConfig {
            backend: self.config.backend.clone(),
            log: self.config.log.clone(),
            ooo_window_ms: self.config.ooo_window_ms,
            seal: self.config.seal,
        }
    }

    fn partition_dir(&self, id: PartitionId) -> PathBuf {
        self.config.dir.join(format!("p{}", id.0))
    }

    fn manifest_path(&self) -> PathBuf {
        self.config.dir.join("partitions")
    }

    fn read_manifest(&self) -> Result<Vec<PartitionId>> {
        let map = match self.config.backend.open_read(&self.manifest_path()) {
            Ok(map) => map,
            Err(fsdb::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let text = std::str::from_utf8(map.bytes()).map_err(|_| manifest_corrupted())?;
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.parse().map(PartitionId).map_err(|_| manifest_corrupted()))
            .collect()
    }

    fn write_manifest(&self, ids: impl Iterator<Item = PartitionId>) -> Result<()> {
        let text: String = ids.map(|id| format!("{}\n", id.0)).collect();
        self.config
            .backend
            .write_file(&self.manifest_path(), text.as_bytes())?;
        Ok(())
    }

    pub fn partition(&self, id: PartitionId) -> Option<Arc<Partition>> {
        self.partitions.read().expect("lock").get(&id).cloned()
    }

    pub fn partition_ids(&self) -> Vec<PartitionId> {
        self.partitions
            .read()
            .expect("lock")
            .keys()
            .copied()
            .collect()
    }

    /// Creates an empty partition (its directory is wiped first, so leftovers
    /// of a corrupted copy never come back).
    pub fn create_partition(&self, id: PartitionId) -> Result<Arc<Partition>> {
        let mut map = self.partitions.write().expect("lock");
        if map.contains_key(&id) {
            return Err(Error::PartitionExists(id));
        }
        self.remove_files(id)?;
        let p = Arc::new(Partition::open(
            id,
            &self.partition_dir(id),
            self.partition_config(),
        )?);
        map.insert(id, p.clone());
        self.write_manifest(map.keys().copied())?;
        Ok(p)
    }

    /// Forgets a partition and deletes its files.
    pub fn drop_partition(&self, id: PartitionId) -> Result<()> {
        let mut map = self.partitions.write().expect("lock");
        if map.remove(&id).is_none() {
            return Err(Error::NoPartition(id));
        }
        self.write_manifest(map.keys().copied())?;
        self.remove_files(id)
    }

    fn remove_files(&self, id: PartitionId) -> Result<()> {
        match self.config.backend.remove_dir_all(&self.partition_dir(id)) {
            Ok(()) | Err(fsdb::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Replaces partition `id` (existing, corrupted or absent) by a full copy
    /// from a peer, durable when it returns.
    pub fn install_snapshot(
        &self,
        id: PartitionId,
        lsn: Lsn,
        term: Term,
        batches: &[Vec<u8>],
    ) -> Result<Arc<Partition>> {
        for b in batches {
            crate::batch::decode(b)?;
        }
        let mut map = self.partitions.write().expect("lock");
        map.remove(&id);
        self.remove_files(id)?;
        let p = Arc::new(Partition::open(
            id,
            &self.partition_dir(id),
            self.partition_config(),
        )?);
        p.install(lsn, term, batches)?;
        map.insert(id, p.clone());
        self.write_manifest(map.keys().copied())?;
        Ok(p)
    }

    pub fn memory_stats(&self) -> MemoryStats {
        let parts: Vec<Arc<Partition>> = self
            .partitions
            .read()
            .expect("lock")
            .values()
            .cloned()
            .collect();
        let mut m = MemoryStats::default();
        for p in parts {
            let s: PartitionStats = p.stats();
            m.partitions += 1;
            m.series += s.series;
            m.head_samples += s.head_samples;
            m.head_bytes += s.head_bytes;
            m.index_bytes += s.index_bytes;
        }
        m
    }

    /// A [`Source`] over the given partitions (those this node holds; unknown
    /// ids are skipped).
    pub fn source(&self, ids: &[PartitionId]) -> PartitionSource {
        let map = self.partitions.read().expect("lock");
        PartitionSource {
            partitions: ids.iter().filter_map(|id| map.get(id).cloned()).collect(),
        }
    }
}

fn manifest_corrupted() -> Error {
    Error::Fsdb(fsdb::Error::Corrupted {
        dir: PathBuf::new(),
        file: "partitions".into(),
        offset: 0,
        reason: "unreadable partition list".into(),
    })
}

fn is_corruption(e: &Error) -> bool {
    match e {
        Error::PartitionCorrupted(_) => true,
        Error::Fsdb(e) => e.is_corruption(),
        _ => false,
    }
}

/// A [`Source`] over a fixed set of partitions.
pub struct PartitionSource {
    partitions: Vec<Arc<Partition>>,
}

/// Selected series above which a select reads its partitions on every
/// core: below it, handing work to other threads costs more than it saves
/// (one 8 640-sample series: 412 µs through the pool against 225 µs).
const PARALLEL_SELECT_SERIES: usize = 512;

impl Source for PartitionSource {
    /// Reads large selects on every core (rayon's pool): decoding chunks is
    /// most of a large query's time, and partitions are independent. The
    /// answer is in partition order, as a sequential read gives it.
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesData> {
        use rayon::prelude::*;
        if start_ms > end_ms {
            return Vec::new();
        }
        let matching: Vec<(Vec<u32>, u64)> = self
            .partitions
            .iter()
            .map(|p| p.matching(matchers))
            .collect();
        let read = |(p, (ids, generation)): (&Arc<Partition>, &(Vec<u32>, u64))| {
            let mut out = Vec::with_capacity(ids.len());
            p.read_matching(matchers, ids, *generation, start_ms, end_ms, &mut out);
            out
        };
        let series: usize = matching.iter().map(|(ids, _)| ids.len()).sum();
        let parts: Vec<Vec<SeriesData>> = if series >= PARALLEL_SELECT_SERIES {
            self.partitions
                .par_iter()
                .zip(&matching)
                .map(read)
                .collect()
        } else {
            self.partitions.iter().zip(&matching).map(read).collect()
        };
        // Moved, not cloned as `concat` would.
        parts.into_iter().flatten().collect()
    }
}

impl Source for Partition {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesData> {
        let mut out = Vec::new();
        self.select_into(matchers, start_ms, end_ms, &mut out);
        out
    }

    /// Reads each series into one buffer and hands it to `f` under the
    /// state lock, in slices as `select` reads.
    fn for_each_series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        f: &mut SeriesVisitor<'_>,
    ) -> bool {
        if start_ms > end_ms {
            return true;
        }
        let (ids, generation) = self.matching(matchers);
        self.read_slices(&ids, generation, start_ms, end_ms, |key, runs| {
            f(&|| parse_key(key).labels(), runs.finish())
        })
    }
}

impl Partition {
    fn select_into(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        out: &mut Vec<SeriesData>,
    ) {
        if start_ms > end_ms {
            return;
        }
        let (ids, generation) = self.matching(matchers);
        self.read_matching(matchers, &ids, generation, start_ms, end_ms, out);
    }

    /// The ids of the series `matchers` select, and the state generation
    /// they belong to.
    fn matching(&self, matchers: &[Matcher]) -> (Vec<u32>, u64) {
        let state = self.state.read().expect("state lock");
        (state.mem.select_ids(matchers), state.generation)
    }

    /// Reads the series `ids` of state `generation` (from [`Self::matching`]).
    fn read_matching(
        &self,
        matchers: &[Matcher],
        ids: &[u32],
        generation: u64,
        start_ms: i64,
        end_ms: i64,
        out: &mut Vec<SeriesData>,
    ) {
        let first = out.len();
        let push = |out: &mut Vec<SeriesData>, key: &[u8], runs: &mut Runs| {
            out.push(SeriesData {
                labels: parse_key(key).labels(),
                samples: runs.take(),
            })
        };
        if !self.read_slices(ids, generation, start_ms, end_ms, |k, r| push(out, k, r)) {
            // The state was rebuilt (truncate_after): read it all again
            // under one lock.
            out.truncate(first);
            let state = self.state.read().expect("state lock");
            let ids = state.mem.select_ids(matchers);
            let mut runs = Runs::default();
            read_ids(&state, &ids, start_ms, end_ms, &mut runs, |k, r| {
                push(out, k, r)
            });
        }
    }

    /// Reads the series `ids` of state `generation` in slices, releasing the
    /// lock in between so that a large read never stalls ingest for long,
    /// and calls `f` with each one that has samples in the range. `false`
    /// when the state was rebuilt meanwhile (series ids changed meaning).
    fn read_slices(
        &self,
        ids: &[u32],
        generation: u64,
        start_ms: i64,
        end_ms: i64,
        mut f: impl FnMut(&[u8], &mut Runs),
    ) -> bool {
        let mut runs = Runs::default();
        for slice in ids.chunks(SELECT_SERIES_PER_LOCK) {
            let state = self.state.read().expect("state lock");
            if state.generation != generation {
                return false;
            }
            read_ids(&state, slice, start_ms, end_ms, &mut runs, &mut f);
        }
        true
    }
}

/// Series read under one lock acquisition by a select.
const SELECT_SERIES_PER_LOCK: usize = 256;

/// Reads each of `ids` into `runs` and calls `f` with its key for those
/// with samples in the range. The key is the index's, validated when the
/// series was created: parsed only by those who need its labels (a sum
/// over every series never does), with [`parse_key`].
fn read_ids(
    state: &State,
    ids: &[u32],
    start_ms: i64,
    end_ms: i64,
    runs: &mut Runs,
    mut f: impl FnMut(&[u8], &mut Runs),
) {
    // Series j is read while the next ones are prefetched, one step each
    // (State::prefetch_series): a series takes microseconds to read, far
    // longer than a load from memory.
    const STEPS: u8 = 3;
    let at = |j: usize, back: u8| j.checked_sub(back.into()).and_then(|i| ids.get(i).copied());
    for j in 0..ids.len() + usize::from(STEPS) {
        for step in 0..STEPS {
            if let Some(ahead) = at(j, step) {
                state.prefetch_series(ahead, step);
            }
        }
        let Some(id) = at(j, STEPS) else {
            continue;
        };
        state.read_series(id, start_ms, end_ms, runs);
        if runs.finish().is_empty() {
            continue;
        }
        f(state.mem.key(&state.mem.series[id as usize]), runs);
    }
}

/// A key of the index, which only keys that parse enter.
fn parse_key(key: &[u8]) -> KeyRef<'_> {
    KeyRef::parse(key).unwrap_or(KeyRef::EMPTY)
}
