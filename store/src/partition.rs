//! A partition: its log, its series in memory, and its sealed chunk files; `&self` methods, internally synchronized.
//!
//! Lock order: `seal` (a mutex serializing seals, truncation and installs),
//! then `log` (a mutex), then `state` (a read-write lock). Writers hold `log`
//! and `state`, so memory applies records in LSN order; readers only take
//! `state` for reading.
//!
//! Files, under the partition's directory:
//! - `log/`: the fsdb partition log; each record's payload is one batch;
//! - `chunks/<covered_lsn>.chunk`: sealed chunk files, in seal order. Each
//!   carries the rejected-sample counter as of its seal in its header (the
//!   log records it covers are trimmed, so replay cannot recount them).
//!
//! Seal policy: [`Partition::seal`] writes *every* unsealed sample (head
//! chunks and overlays) into one chunk file whose `covered_lsn` is the last
//! LSN, then trims the log before it. The chunk file also carries the log's
//! term history, so when no record came during the seal the log keeps no
//! segment at all (`PartitionLog::trim_all`): an idle, sealed partition has
//! no log file, and open resumes the log after the newest chunk file. [`Partition::seal_due`] says when it is
//! time: the head holds at least `SealPolicy::head_samples_max` samples, or
//! its oldest unsealed sample is `SealPolicy::head_span_ms` (default 2 h)
//! older than the newest. Sealing everything keeps one simple invariant:
//! memory = chunk files (up to `covered_lsn`) + the log after it.
//!
//! A seal holds the write locks only to freeze and to swap: it moves every
//! unsealed head chunk and overlay into a [`Sealing`] (readers still see it,
//! between the chunk files and the new heads), writes the chunk file from
//! it with no lock held while appends go on into fresh heads, then adds the
//! file, drops the frozen data and trims the log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use fsdb::codec::ChunkEncoder;
use fsdb::{Backend, ChunkFile, ChunkFileWriter, LogConfig, Lsn, PartitionLog, Term};
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

use crate::batch::{self, BatchBuilder, BatchView};
use crate::error::{Error, Result};
use crate::head::{parts_bytes, parts_len, read_parts, Runs, SealedRef};
use crate::memory::{Memory, WriteCounts};
use crate::prefetch::prefetch;
use crate::series::KeyRef;
use crate::PartitionId;

/// When a partition's head is due to be sealed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealPolicy {
    pub head_samples_max: u64,
    pub head_span_ms: i64,
}

impl Default for SealPolicy {
    fn default() -> SealPolicy {
        SealPolicy {
            head_samples_max: 4 << 20,
            head_span_ms: 2 * 3600 * 1000,
        }
    }
}

/// What a partition needs from its store.
#[derive(Clone)]
pub struct PartitionConfig {
    pub backend: Arc<dyn Backend>,
    pub log: LogConfig,
    pub ooo_window_ms: i64,
    pub seal: SealPolicy,
}

/// A partition's counters and sizes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PartitionStats {
    pub series: u64,
    /// Samples accepted since the partition was created (or installed).
    pub accepted: u64,
    /// Samples rejected as older than the out-of-order window.
    pub rejected: u64,
    /// Samples in head chunks and overlays (not yet sealed).
    pub head_samples: u64,
    /// Heap bytes of head chunks and overlays.
    pub head_bytes: u64,
    /// Heap bytes of the index: keys, per-series bookkeeping, hash tables, postings.
    pub index_bytes: u64,
    pub chunk_files: u64,
    pub log_disk_bytes: u64,
    pub last_lsn: Lsn,
    pub covered_lsn: Lsn,
    /// Sealed chunks that failed their checksum on read (never served).
    pub corrupt_reads: u64,
}

/// The unsealed data a seal in progress froze at `covered`: what its chunk
/// file will hold. Immutable, shared by the state (for reads) and the seal.
pub(crate) struct Sealing {
    covered: Lsn,
    /// The log's term history at `covered`, persisted with the file.
    terms: Vec<(Term, Lsn)>,
    /// The rejected counter at `covered`, persisted with the file.
    rejected: u64,
    /// (series id, head chunk, overlay), ascending ids.
    #[allow(clippy::type_complexity)]
    series: Vec<(u32, ChunkEncoder, Option<Box<BTreeMap<i64, f64>>>)>,
    /// Canonical keys of `series`, back to back, in the same order.
    keys: Vec<u8>,
    key_ends: Vec<usize>,
}

impl Sealing {
    fn key(&self, i: usize) -> &[u8] {
        let from = if i == 0 { 0 } else { self.key_ends[i - 1] };
        &self.keys[from..self.key_ends[i]]
    }

    /// The head chunk and overlay of series `id`, if it is being sealed.
    fn parts(&self, id: u32) -> Option<(&ChunkEncoder, Option<&BTreeMap<i64, f64>>)> {
        let i = self.series.binary_search_by_key(&id, |s| s.0).ok()?;
        let (_, head, overlay) = &self.series[i];
        Some((head, overlay.as_deref()))
    }

    fn read(&self, id: u32, start: i64, end: i64, runs: &mut Runs) {
        if let Some((head, overlay)) = self.parts(id) {
            read_parts(head, overlay, start, end, runs);
        }
    }

    /// Samples of series `id`.
    fn len_of(&self, id: u32) -> usize {
        self.parts(id)
            .map_or(0, |(head, overlay)| parts_len(head, overlay))
    }

    fn samples(&self) -> usize {
        self.series
            .iter()
            .map(|(_, h, o)| parts_len(h, o.as_deref()))
            .sum()
    }

    fn bytes(&self) -> usize {
        self.series
            .iter()
            .map(|(_, h, o)| parts_bytes(h, o.as_deref()))
            .sum::<usize>()
            + self.keys.capacity()
    }
}

pub(crate) struct State {
    pub mem: Memory,
    /// The data of a seal in progress (read after the files, before the heads).
    sealing: Option<Arc<Sealing>>,
    pub files: Vec<ChunkFile>,
    pub covered: Lsn,
    /// Rejections counted before `covered` (in the newest chunk file's header).
    rejected_sealed: u64,
    pub corrupt_reads: std::sync::atomic::AtomicU64,
    /// Bumped whenever the state is rebuilt (series ids change meaning).
    pub generation: u64,
}

pub struct Partition {
    id: PartitionId,
    dir: PathBuf,
    config: PartitionConfig,
    /// Serializes seals with each other and with what rebuilds the state.
    seal: Mutex<()>,
    log: Mutex<PartitionLog>,
    pub(crate) state: RwLock<State>,
}

/// Largest batch a snapshot produces, in samples.
const SNAPSHOT_BATCH_SAMPLES: usize = 1 << 16;

impl Partition {
    /// Opens (or creates) the partition in `dir`: maps its chunk files and
    /// replays the log after them.
    pub fn open(id: PartitionId, dir: &Path, config: PartitionConfig) -> Result<Partition> {
        let log = PartitionLog::open(config.backend.clone(), &dir.join("log"), config.log.clone())?;
        let partition = Partition {
            id,
            dir: dir.to_path_buf(),
            seal: Mutex::new(()),
            log: Mutex::new(log),
            state: RwLock::new(State::empty()),
            config,
        };
        {
            let mut log = partition.log.lock().expect("log lock");
            let state = partition.load(&log)?;
            // A log trimmed of every record continues after the newest file.
            if let Some(newest) = state.files.iter().max_by_key(|f| f.covered_lsn()) {
                log.resume_after(newest.covered_lsn(), newest.terms())?;
            }
            *partition.state.write().expect("state lock") = state;
        }
        Ok(partition)
    }

    pub fn id(&self) -> PartitionId {
        self.id
    }

    fn chunk_dir(&self) -> PathBuf {
        self.dir.join("chunks")
    }

    /// Builds the memory state from the chunk files and the log.
    fn load(&self, log: &PartitionLog) -> Result<State> {
        let backend = &*self.config.backend;
        let chunk_dir = self.chunk_dir();
        backend.create_dir_all(&chunk_dir)?;
        let mut state = State::empty();
        for name in backend.list_dir(&chunk_dir)? {
            if !name.ends_with(fsdb::chunkfile::CHUNK_FILE_SUFFIX) {
                continue;
            }
            let file = ChunkFile::open(backend, &chunk_dir.join(&name))?;
            // Damage is found here, at open, so that the node refetches the
            // partition instead of failing queries later.
            file.verify()?;
            state.add_file(file)?;
        }
        state.mem.counts.rejected = state.rejected_sealed;
        let from = Lsn(state.covered.0 + 1);
        if from < log.first_lsn() {
            // The log was trimmed (or reset) past what the chunk files hold:
            // records are missing, e.g. a full copy that did not finish.
            return Err(Error::PartitionCorrupted(self.id));
        }
        for record in log.read_from(from.min(Lsn(log.last_lsn().0 + 1)))? {
            let record = record?;
            let view =
                batch::decode(record.payload).map_err(|_| Error::PartitionCorrupted(self.id))?;
            state.mem.apply(&view, self.config.ooo_window_ms);
        }
        Ok(state)
    }

    /// Primary write: validates `batch`, appends it to the log with the next
    /// LSN, then applies it to memory.
    pub fn append(&self, term: Term, batch: &[u8]) -> Result<Lsn> {
        self.append_batch(term, &batch::decode(batch)?)
    }

    /// [`Self::append`] of a batch already validated (decoded once, or built).
    pub fn append_batch(&self, term: Term, batch: &BatchView<'_>) -> Result<Lsn> {
        let mut log = self.log.lock().expect("log lock");
        let lsn = log.append(term, batch.bytes())?;
        let mut state = self.state.write().expect("state lock");
        state.mem.apply(batch, self.config.ooo_window_ms);
        Ok(lsn)
    }

    /// Replica write: `append_at` then memory. An LSN at or before the last
    /// one is a duplicate delivery and is skipped (returns false).
    pub fn apply_replicated(&self, lsn: Lsn, term: Term, batch: &[u8]) -> Result<bool> {
        let view = batch::decode(batch)?;
        let mut log = self.log.lock().expect("log lock");
        if lsn <= log.last_lsn() {
            return Ok(false);
        }
        log.append_at(lsn, term, batch)?;
        let mut state = self.state.write().expect("state lock");
        state.mem.apply(&view, self.config.ooo_window_ms);
        Ok(true)
    }

    /// Makes every appended record durable.
    pub fn sync(&self) -> Result<()> {
        self.log.lock().expect("log lock").sync()?;
        Ok(())
    }

    pub fn last_lsn(&self) -> Lsn {
        self.log.lock().expect("log lock").last_lsn()
    }

    pub fn last_term(&self) -> Term {
        self.log.lock().expect("log lock").last_term()
    }

    /// First LSN of each term, oldest first (for divergence detection).
    pub fn term_history(&self) -> Vec<(Term, Lsn)> {
        self.log.lock().expect("log lock").term_history().to_vec()
    }

    /// Records from `from` on, up to about `max_bytes` of payload (at least
    /// one record when there is one). `TrimmedAway` when the log no longer
    /// reaches back to `from`: the peer needs a full copy.
    pub fn read_log(&self, from: Lsn, max_bytes: usize) -> Result<Vec<(Lsn, Term, Vec<u8>)>> {
        let log = self.log.lock().expect("log lock");
        if from.0 > log.last_lsn().0 {
            return Ok(Vec::new());
        }
        let reader = log.read_from(from).map_err(|e| match e {
            fsdb::Error::TrimmedAway { lsn, first, .. } => Error::TrimmedAway {
                partition: self.id,
                lsn: lsn.0,
                first: first.0,
            },
            e => e.into(),
        })?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for record in reader {
            let record = record?;
            if !out.is_empty() && bytes + record.payload.len() > max_bytes {
                break;
            }
            bytes += record.payload.len();
            out.push((record.lsn, record.term, record.payload.to_vec()));
        }
        Ok(out)
    }

    /// Drops the log after `lsn` (a divergent suffix) and rebuilds memory
    /// from what remains. A suffix already sealed into a chunk file cannot be
    /// dropped: that is `NeedsFullCopy`.
    pub fn truncate_after(&self, lsn: Lsn) -> Result<()> {
        let _seal = self.seal.lock().expect("seal lock");
        let mut log = self.log.lock().expect("log lock");
        if lsn >= log.last_lsn() {
            return Ok(());
        }
        let covered = self.state.read().expect("state lock").covered;
        if lsn < covered {
            return Err(Error::NeedsFullCopy {
                partition: self.id,
                lsn: lsn.0,
                covered: covered.0,
            });
        }
        log.truncate_after(lsn)?;
        let mut fresh = self.load(&log)?;
        let mut state = self.state.write().expect("state lock");
        fresh.generation = state.generation + 1;
        *state = fresh;
        Ok(())
    }

    /// Is the head due to be sealed under the partition's policy?
    pub fn seal_due(&self) -> bool {
        let state = self.state.read().expect("state lock");
        let policy = self.config.seal;
        let mut samples = 0u64;
        let (mut oldest, mut newest) = (i64::MAX, i64::MIN);
        for s in &state.mem.series {
            samples += s.head.len() as u64 + s.overlay.as_ref().map_or(0, |o| o.len() as u64);
            if let Some((first, last)) = s.head.first_ts().zip(s.head.last_ts()) {
                oldest = oldest.min(first);
                newest = newest.max(last);
            }
            if let Some(o) = &s.overlay {
                oldest = oldest.min(o.keys().next().copied().unwrap_or(i64::MAX));
            }
        }
        samples >= policy.head_samples_max
            || (samples > 0 && newest.saturating_sub(oldest) >= policy.head_span_ms)
    }

    /// Writes every unsealed sample into a new chunk file covering the last
    /// LSN, then trims the log before it. Returns the number of chunks written.
    /// Appends and reads go on while the file is written (see the module doc).
    pub fn seal(&self) -> Result<usize> {
        let _seal = self.seal.lock().expect("seal lock");
        self.seal_locked()
    }

    fn seal_locked(&self) -> Result<usize> {
        let Some(sealing) = self.freeze()? else {
            return Ok(0);
        };
        let written = self.write_sealing(&sealing);
        let mut log = self.log.lock().expect("log lock");
        let mut state = self.state.write().expect("state lock");
        let (file, chunks) = match written {
            Ok(done) => done,
            Err(e) => {
                // Memory is rebuilt from what is on disk (the log still holds
                // every frozen record); if even that fails, the frozen data
                // stays readable and the next seal retries the rebuild.
                self.reload(&log, &mut state)?;
                return Err(e);
            }
        };
        state.add_file(file)?;
        state.sealing = None;
        if log.last_lsn() == sealing.covered {
            log.trim_all()?;
        } else {
            log.trim_before(Lsn(sealing.covered.0 + 1))?;
        }
        Ok(chunks)
    }

    /// Under the write locks: moves every unsealed head chunk and overlay
    /// into a [`Sealing`] at the last LSN. `None` when there is nothing to seal.
    fn freeze(&self) -> Result<Option<Arc<Sealing>>> {
        let log = self.log.lock().expect("log lock");
        let mut state = self.state.write().expect("state lock");
        if state.sealing.is_some() {
            // A seal failed half-way and could not rebuild memory then.
            self.reload(&log, &mut state)?;
        }
        let covered = log.last_lsn();
        if covered <= state.covered || !state.mem.series.iter().any(|s| s.has_unsealed()) {
            return Ok(None);
        }
        let mut sealing = Sealing {
            covered,
            terms: log.term_history().to_vec(),
            rejected: state.mem.counts.rejected,
            series: Vec::new(),
            keys: Vec::new(),
            key_ends: Vec::new(),
        };
        let State { mem, .. } = &mut *state;
        for id in 0..mem.series.len() {
            if !mem.series[id].has_unsealed() {
                continue;
            }
            sealing.keys.extend_from_slice(mem.key(&mem.series[id]));
            sealing.key_ends.push(sealing.keys.len());
            let s = &mut mem.series[id];
            let head = std::mem::take(&mut s.head);
            sealing.series.push((id as u32, head, s.overlay.take()));
        }
        let sealing = Arc::new(sealing);
        state.sealing = Some(sealing.clone());
        Ok(Some(sealing))
    }

    /// Without any lock: writes the frozen data as a chunk file (with the
    /// rejected counter in its header) and opens the file.
    fn write_sealing(&self, sealing: &Sealing) -> Result<(ChunkFile, usize)> {
        let mut writer = ChunkFileWriter::new(self.id.0, sealing.covered);
        writer.set_rejected(sealing.rejected);
        writer.set_terms(&sealing.terms);
        let mut runs = Runs::default();
        for (i, (_, head, overlay)) in sealing.series.iter().enumerate() {
            runs.clear();
            read_parts(head, overlay.as_deref(), i64::MIN, i64::MAX, &mut runs);
            let samples = runs.finish();
            let (Some(first), Some(last)) = (samples.first(), samples.last()) else {
                continue;
            };
            let (min_ts, max_ts) = (first.0, last.0);
            if overlay.is_none() {
                writer.add(
                    sealing.key(i),
                    min_ts,
                    max_ts,
                    head.len() as u32,
                    head.bytes(),
                )?;
            } else {
                let mut enc = ChunkEncoder::new();
                for &(t, v) in samples {
                    enc.push(t, v);
                }
                writer.add(
                    sealing.key(i),
                    min_ts,
                    max_ts,
                    samples.len() as u32,
                    enc.bytes(),
                )?;
            }
        }
        let chunks = writer.len();
        let path = self.chunk_dir().join(format!(
            "{:020}{}",
            sealing.covered.0,
            fsdb::chunkfile::CHUNK_FILE_SUFFIX
        ));
        writer.finish(&*self.config.backend, &path)?;
        let file = ChunkFile::open(&*self.config.backend, &path)?;
        Ok((file, chunks))
    }

    /// Rebuilds memory from the chunk files and the log (the caller holds
    /// the seal, log and state locks).
    fn reload(&self, log: &PartitionLog, state: &mut State) -> Result<()> {
        let mut fresh = self.load(log)?;
        fresh.generation = state.generation + 1;
        *state = fresh;
        Ok(())
    }

    /// A full copy: the last LSN and term, and the logical data as batches.
    pub fn snapshot(&self) -> Result<(Lsn, Term, Vec<Vec<u8>>)> {
        let log = self.log.lock().expect("log lock");
        let state = self.state.read().expect("state lock");
        let mut batches = Vec::new();
        let mut builder = BatchBuilder::new();
        let mut runs = Runs::default();
        for (id, s) in state.mem.series.iter().enumerate() {
            state.read_series(id as u32, i64::MIN, i64::MAX, &mut runs);
            let key = KeyRef::parse(state.mem.key(s))?.to_owned_key();
            for &(t, v) in runs.finish() {
                if builder.samples() >= SNAPSHOT_BATCH_SAMPLES {
                    let mut out = Vec::new();
                    builder.encode(&mut out);
                    batches.push(out);
                    builder.clear();
                }
                builder.push_key(&key, t, v)?;
            }
        }
        if !builder.is_empty() {
            let mut out = Vec::new();
            builder.encode(&mut out);
            batches.push(out);
        }
        Ok((log.last_lsn(), log.last_term(), batches))
    }

    /// Replaces everything by a full copy at (`lsn`, `term`), sealed at once
    /// so that it is durable. Used by `Store::install_snapshot`.
    pub(crate) fn install(&self, lsn: Lsn, term: Term, batches: &[Vec<u8>]) -> Result<()> {
        let views = batches
            .iter()
            .map(|b| batch::decode(b))
            .collect::<Result<Vec<_>>>()?;
        let _seal = self.seal.lock().expect("seal lock");
        let mut log = self.log.lock().expect("log lock");
        log.reset(Lsn(lsn.0 + 1), term)?;
        {
            let mut state = self.state.write().expect("state lock");
            for v in &views {
                state.mem.apply(v, i64::MAX);
            }
            state.mem.counts = WriteCounts::default();
        }
        drop(log);
        self.seal_locked()?;
        Ok(())
    }

    /// An order-independent digest of the logical data: (series, timestamp,
    /// value bits) after overwrites. Equal data gives equal digests.
    pub fn digest(&self) -> u64 {
        let state = self.state.read().expect("state lock");
        let mut runs = Runs::default();
        let mut acc = 0u64;
        for (id, s) in state.mem.series.iter().enumerate() {
            state.read_series(id as u32, i64::MIN, i64::MAX, &mut runs);
            let seed = xxh3_64(state.mem.key(s));
            for &(t, v) in runs.finish() {
                let mut b = [0u8; 16];
                b[..8].copy_from_slice(&t.to_le_bytes());
                b[8..].copy_from_slice(&v.to_bits().to_le_bytes());
                acc = acc.wrapping_add(xxh3_64_with_seed(&b, seed));
            }
        }
        acc
    }

    pub fn stats(&self) -> PartitionStats {
        let log = self.log.lock().expect("log lock");
        let state = self.state.read().expect("state lock");
        PartitionStats {
            series: state.mem.series.len() as u64,
            accepted: state.mem.counts.accepted,
            rejected: state.mem.counts.rejected,
            head_samples: (state.mem.head_samples()
                + state.sealing.as_ref().map_or(0, |s| s.samples()))
                as u64,
            head_bytes: (state.mem.sample_bytes() + state.sealing.as_ref().map_or(0, |s| s.bytes()))
                as u64,
            index_bytes: state.mem.index_bytes() as u64,
            chunk_files: state.files.len() as u64,
            log_disk_bytes: log.disk_bytes(),
            last_lsn: log.last_lsn(),
            covered_lsn: state.covered,
            corrupt_reads: state
                .corrupt_reads
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

impl State {
    fn empty() -> State {
        State {
            mem: Memory::default(),
            sealing: None,
            files: Vec::new(),
            covered: Lsn(0),
            rejected_sealed: 0,
            corrupt_reads: Default::default(),
            generation: 0,
        }
    }

    /// Registers a chunk file (files come in seal order).
    fn add_file(&mut self, file: ChunkFile) -> Result<()> {
        let idx = self.files.len() as u32;
        for (n, meta) in file.chunks().enumerate() {
            let key = KeyRef::parse(meta.series_key).map_err(|_| fsdb::Error::Corrupted {
                dir: file.path().to_path_buf(),
                file: String::new(),
                offset: meta.offset,
                reason: "bad series key".into(),
            })?;
            let id = self.mem.intern(meta.series_key, || key) as usize;
            let series = &mut self.mem.series[id];
            series.newest = series.newest.max(meta.max_ts);
            let sealed = &mut self.mem.sealed[id];
            match sealed.last_mut() {
                Some(r) if r.file == idx => {
                    r.min_ts = r.min_ts.min(meta.min_ts);
                    r.max_ts = r.max_ts.max(meta.max_ts);
                }
                _ => {
                    // The first ref is inline; past it, most series have a
                    // few, and doubling would hold as many unused. Growing
                    // by a quarter keeps pushes amortized.
                    if sealed.len() == sealed.capacity() {
                        sealed.reserve_exact(sealed.len() / 4 + 1);
                    }
                    sealed.push(SealedRef {
                        file: idx,
                        first: n as u32,
                        min_ts: meta.min_ts,
                        max_ts: meta.max_ts,
                    })
                }
            }
        }
        if file.covered_lsn() >= self.covered {
            // The newest file carries the rejected count as of its seal.
            self.covered = file.covered_lsn();
            self.rejected_sealed = file.rejected();
        }
        self.files.push(file);
        Ok(())
    }

    /// Asks the CPU for what [`Self::read_series`] of `id` reads first,
    /// one of three steps that each need what the one before loaded: 0,
    /// its sealed refs and state; 1, the index entries of its first
    /// sealed chunk; 2, that chunk's first bytes. A read over many series
    /// runs the steps three, two and one series ahead ([`crate::store`]'s
    /// `read_ids`): their memory waits overlap the reads in between.
    pub fn prefetch_series(&self, id: u32, step: u8) {
        let id = id as usize;
        let first = || {
            let r = self.mem.sealed.get(id)?.first()?;
            Some((self.files.get(r.file as usize)?, r.first as usize))
        };
        match step {
            0 => {
                if let (Some(refs), Some(series)) =
                    (self.mem.sealed.get(id), self.mem.series.get(id))
                {
                    prefetch(refs);
                    series.prefetch();
                }
            }
            1 => {
                if let Some(entries) = first().and_then(|(f, i)| f.entries_to_prefetch(i)) {
                    entries.iter().for_each(prefetch);
                }
            }
            _ => {
                if let Some(bytes) = first().and_then(|(f, i)| f.bytes_to_prefetch(i)) {
                    bytes.iter().step_by(64).for_each(prefetch);
                }
            }
        }
    }

    /// Reads one series' samples in `start..=end` into `runs` (call
    /// `runs.finish()` for the merged result). Sealed chunks that fail their
    /// checksum are skipped and counted, never served.
    pub fn read_series(&self, id: u32, start: i64, end: i64, runs: &mut Runs) {
        runs.clear();
        let s = &self.mem.series[id as usize];
        let chunks = || {
            self.mem.sealed[id as usize]
                .iter()
                .filter(|r| r.max_ts >= start && r.min_ts <= end)
                .flat_map(|r| {
                    let file = &self.files[r.file as usize];
                    file.series_chunks(r.first as usize)
                        .filter(|m| m.max_ts >= start && m.min_ts <= end)
                        .map(move |m| (file, m))
                })
        };
        // One allocation for the whole read, sized from the chunk index and
        // the in-memory parts: growing it as each part is decoded copies
        // the samples again, into fresh pages.
        let sealed: usize = chunks().map(|(_, m)| m.count as usize).sum();
        let sealing = self.sealing.as_ref().map_or(0, |x| x.len_of(id));
        runs.samples
            .reserve_exact(sealed + sealing + s.unsealed_len());
        for (file, meta) in chunks() {
            runs.begin();
            let ok = file
                .chunk_data(&meta)
                .ok()
                .is_some_and(|bytes| fsdb::codec::decode_into(bytes, &mut runs.samples).is_ok());
            if !ok {
                let from = runs.run_start();
                runs.samples.truncate(from);
                self.corrupt_reads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            runs.end_filtered(start, end);
        }
        if let Some(sealing) = &self.sealing {
            sealing.read(id, start, end, runs);
        }
        s.read_unsealed(start, end, runs);
    }
}
