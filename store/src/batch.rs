//! The batch: many samples grouped by series; the unit of the log, of replication and of forwarding.
//!
//! Sans-IO: [`encode`] and [`BatchBuilder`] write into a `Vec<u8>`, [`decode`]
//! validates the whole batch once and returns a zero-copy [`BatchView`].
//! [`Batch`] owns bytes known to be well formed, made here
//! ([`BatchBuilder::finish`], [`split`]), so the write path never validates
//! its own output again.
//!
//! ```text
//! u8 magic 0xB7, u8 version 2, u32 series_count,
//! zigzag varint base_ts (the batch's first timestamp),
//! series_count x (
//!     series key (canonical form, see series.rs),
//!     varint sample_count (>= 1),
//!     sample_count x (zigzag varint timestamp delta from the previous
//!                     sample, the series' first from base_ts; u64 value bits)
//! )
//! ```
//!
//! Integers are little-endian. Samples of one series may come in any order;
//! the same series may appear more than once (later samples win).
//!
//! Version 1, which logs and peers from before may still hold, has no
//! base_ts (the first delta is from 0) and a u32 samples_bytes after each
//! sample_count. Version 2 dropped both: a Graphite sample took 41 bytes
//! of log, 9 of them those two fields, and the log's pages are a quarter
//! of the ingest hot path's time.

use crate::error::{Error, Result};
use crate::memory::HashIndex;
use crate::series::{encode_parts, KeyRef, SeriesKey, STRING_BYTES_MAX, TAGS_MAX};
use crate::source::{METRIC_LABEL, RESOURCE_LABEL};
use fsdb::varint::{self, unzigzag, zigzag};
use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64;

pub const MAGIC: u8 = 0xB7;
pub const VERSION: u8 = 2;
/// The version before base timestamps, still read.
const VERSION_1: u8 = 1;
/// Most series in one batch.
pub const SERIES_MAX: usize = 1 << 20;
/// Most samples in one batch.
pub const SAMPLES_MAX: usize = 1 << 24;
/// Magic, version and series count: the fixed part of the header.
const HEADER_BYTES: usize = 6;

/// Writes a batch header of `series_count` series (patched later when not
/// known yet) and its base timestamp.
fn put_header(series_count: u32, base_ts: i64, out: &mut Vec<u8>) {
    let mut head = [0u8; HEADER_BYTES + 10];
    head[0] = MAGIC;
    head[1] = VERSION;
    head[2..HEADER_BYTES].copy_from_slice(&series_count.to_le_bytes());
    let n = varint::write(&mut head[HEADER_BYTES..], zigzag(base_ts));
    out.extend_from_slice(&head[..HEADER_BYTES + n]);
}

/// Encodes `series` (key, samples) into `out` (appended).
pub fn encode<'a, I>(series: I, out: &mut Vec<u8>)
where
    I: IntoIterator<Item = (&'a SeriesKey, &'a [(i64, f64)])>,
{
    let series: Vec<_> = series.into_iter().filter(|(_, s)| !s.is_empty()).collect();
    let base = series.first().map_or(0, |(_, s)| s[0].0);
    put_header(series.len() as u32, base, out);
    for (key, samples) in series {
        key.encode_into(out);
        put_samples(base, samples.iter().copied(), samples.len(), out);
    }
}

/// A series' sample count and `count` samples, the first a delta from `base`.
fn put_samples(
    base: i64,
    samples: impl Iterator<Item = (i64, f64)>,
    count: usize,
    out: &mut Vec<u8>,
) {
    varint::put(out, count as u64);
    let mut prev = base;
    for (ts, v) in samples {
        put_sample(ts.wrapping_sub(prev), v, out);
        prev = ts;
    }
}

/// One sample, `delta` from the one before, assembled on the stack and
/// appended with one copy.
#[inline]
fn put_sample(delta: i64, v: f64, out: &mut Vec<u8>) {
    let mut rec = [0u8; 10 + 8];
    let n = varint::write(&mut rec, zigzag(delta));
    rec[n..n + 8].copy_from_slice(&v.to_bits().to_le_bytes());
    out.extend_from_slice(&rec[..n + 8]);
}

/// [`put_samples`] of one sample: the Graphite case, one copy.
#[inline]
fn put_one_sample(base: i64, ts: i64, v: f64, out: &mut Vec<u8>) {
    let mut rec = [0u8; 1 + 10 + 8];
    rec[0] = 1;
    let n = varint::write(&mut rec[1..], zigzag(ts.wrapping_sub(base)));
    rec[1 + n..9 + n].copy_from_slice(&v.to_bits().to_le_bytes());
    out.extend_from_slice(&rec[..9 + n]);
}

/// One series of a batch being built: where its key is in the builder's key
/// arena, and how many samples it has.
#[derive(Clone, Copy)]
struct BuiltSeries {
    key_at: u32,
    key_len: u32,
    samples: u32,
}

/// Groups samples by series as they arrive, then encodes them as one batch.
/// Reuse one builder (`clear`) to keep its allocations.
///
/// Cache-friendly by layout: keys go back to back into one arena, samples
/// into one array in arrival order (tagged with their series), and a flat
/// hash index finds a key that is already in the batch. Grouping the samples
/// by series is left to [`BatchBuilder::encode`], one counting sort per batch.
#[derive(Default)]
pub struct BatchBuilder {
    series: Vec<BuiltSeries>,
    /// The xxh3 hash of each series' key, by series: handed on with the
    /// batch so that the partition's index does not hash the key again.
    hashes: Vec<u64>,
    keys: Vec<u8>,
    index: HashIndex,
    /// (series, timestamp, value) in arrival order.
    samples: Vec<(u32, i64, f64)>,
    /// Series of the previous sample: consecutive samples of one series skip the hash.
    last: Option<u32>,
}

impl BatchBuilder {
    pub fn new() -> BatchBuilder {
        BatchBuilder::default()
    }

    /// Adds one sample. `tags` must be sorted by name with unique names (as
    /// [`SeriesKey::new`] makes them); an invalid key is an error.
    pub fn push(
        &mut self,
        resource: &str,
        metric: &str,
        tags: &[(&str, &str)],
        ts: i64,
        value: f64,
    ) -> Result<()> {
        check_parts(resource, metric, tags)?;
        let at = self.keys.len();
        encode_parts(resource, metric, tags.iter().copied(), &mut self.keys);
        self.push_key_at(at, ts, value)
    }

    /// Adds one sample of an owned key.
    pub fn push_key(&mut self, key: &SeriesKey, ts: i64, value: f64) -> Result<()> {
        let at = self.keys.len();
        key.encode_into(&mut self.keys);
        self.push_key_at(at, ts, value)
    }

    /// Adds a sample of the key just encoded at `keys[at..]`, which stays
    /// in the arena only if it is new to the batch.
    fn push_key_at(&mut self, at: usize, ts: i64, value: f64) -> Result<()> {
        if self.samples.len() >= SAMPLES_MAX {
            self.keys.truncate(at);
            return Err(Error::BatchFull);
        }
        let id = match self.find(at) {
            Ok(id) => {
                self.keys.truncate(at);
                id
            }
            Err(hash) => match self.new_series(at, hash) {
                Ok(id) => id,
                Err(e) => {
                    self.keys.truncate(at);
                    return Err(e);
                }
            },
        };
        self.last = Some(id);
        self.series[id as usize].samples += 1;
        self.samples.push((id, ts, value));
        Ok(())
    }

    /// The series of the key at `keys[at..]`, if the batch has it; else
    /// the key's hash, for [`Self::new_series`].
    fn find(&self, at: usize) -> Result<u32, u64> {
        let (arena, key) = (&self.keys[..at], &self.keys[at..]);
        if let Some(last) = self.last {
            let s = self.series[last as usize];
            let known = arena.get(s.key_at as usize..).unwrap_or_default();
            if s.key_len as usize == key.len() && known.starts_with(key) {
                return Ok(last);
            }
        }
        let hash = xxh3_64(key);
        self.index.find(hash, arena, key).ok_or(hash)
    }

    fn new_series(&mut self, at: usize, hash: u64) -> Result<u32> {
        if self.series.len() >= SERIES_MAX {
            return Err(Error::BatchFull);
        }
        let id = self.series.len() as u32;
        let key_at = u32::try_from(at).map_err(|_| Error::BatchFull)?;
        let key_len = (self.keys.len() - at) as u32;
        self.index.insert(hash, id, key_at);
        self.hashes.push(hash);
        self.series.push(BuiltSeries {
            key_at,
            key_len,
            samples: 0,
        });
        Ok(id)
    }

    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    pub fn series(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Appends the batch to `out`: series in order of first arrival, the
    /// samples of each in arrival order.
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Per series a count (up to 3 bytes), per sample a delta (4 bytes
        // up to 2^27 ms) and the value. An estimate short of the batch
        // regrows it, a copy of all of it.
        out.reserve(
            HEADER_BYTES + 10 + self.keys.len() + self.series.len() * 3 + self.samples.len() * 12,
        );
        let base = self.samples.first().map_or(0, |s| s.1);
        put_header(self.series.len() as u32, base, out);
        if self.samples.len() == self.series.len() {
            // One sample per series (the Graphite case): arrival order is
            // series order, nothing to group.
            for (s, &(_, ts, v)) in self.series.iter().zip(&self.samples) {
                out.extend_from_slice(&self.keys[s.key_at as usize..][..s.key_len as usize]);
                put_one_sample(base, ts, v, out);
            }
            return;
        }
        // A stable counting sort by series.
        let mut next = Vec::with_capacity(self.series.len());
        let mut at = 0usize;
        for s in &self.series {
            next.push(at);
            at += s.samples as usize;
        }
        let mut grouped = vec![(0, 0.0); self.samples.len()];
        for &(id, ts, v) in &self.samples {
            let slot = &mut next[id as usize];
            grouped[*slot] = (ts, v);
            *slot += 1;
        }
        let mut from = 0;
        for s in &self.series {
            let to = from + s.samples as usize;
            out.extend_from_slice(&self.keys[s.key_at as usize..][..s.key_len as usize]);
            put_samples(base, grouped[from..to].iter().copied(), to - from, out);
            from = to;
        }
    }

    /// Takes the batch out as one that needs no validation (every key was
    /// checked as it was pushed), leaving the builder empty.
    pub fn finish(&mut self) -> Batch {
        let mut bytes = Vec::new();
        self.encode(&mut bytes);
        let batch = Batch {
            bytes,
            series_count: self.series.len() as u32,
            sample_count: self.samples.len(),
            key_hashes: self.hashes.clone(),
        };
        debug_assert!(decode(&batch.bytes).is_ok(), "a built batch decodes");
        self.clear();
        batch
    }

    /// Empties the builder, keeping its allocations.
    pub fn clear(&mut self) {
        self.series.clear();
        self.hashes.clear();
        self.keys.clear();
        self.index.clear();
        self.samples.clear();
        self.last = None;
    }
}

/// A Graphite connection's samples until it flushes them, as one batch
/// per partition, fed a sample at a time: the batches one
/// [`BatchBuilder`] per partition would make (series in order of first
/// arrival, each with its samples in arrival order).
///
/// A sample is encoded into its partition's batch as it is pushed: a new
/// entry, or one more sample of the entry the batch ends with when it is of
/// the same series (a sender that writes a series' history in one go). At
/// [`Self::finish`] a batch in which no series has two entries (the usual
/// flush: every series once) is handed on as it is; in another, the
/// entries of each series are merged into its first, one batch at a time,
/// while it is in cache. Grouping every sample by series as it came (a
/// hash index over every key of the flush, then a copy of each key and
/// sample into its batch) was a third of the ingest hot path: the index
/// and the copies hit memory far bigger than the caches in no order.
/// Left ungrouped, a replay's batches (four samples of each series in a
/// flush) had each key logged, sent and looked up four times: the compare
/// load's 3-node CPU and memory figures missed their targets.
///
/// Between flushes a connection keeps no samples: only, per partition,
/// the size of its last batch, so that the next one starts big enough.
pub struct PartitionBuilders {
    open: Vec<OpenBatch>,
    /// Partitions whose batch has samples, in order of their first.
    touched: Vec<u32>,
    samples: usize,
    regroup: Regroup,
}

/// One partition's batch being built.
#[derive(Default)]
struct OpenBatch {
    /// Header and series entries; empty until the flush's first sample.
    bytes: Vec<u8>,
    /// The xxh3 hash of each entry's key, handed on with the batch so that
    /// the partition's index does not hash the keys again.
    hashes: Vec<u64>,
    /// Where each entry is in `bytes`.
    entries: Vec<Entry>,
    samples: usize,
    /// The batch's base timestamp: its first sample's.
    base: i64,
    /// The sample count of the last entry, which a sample of the same
    /// series joins while it is below 128 (a one-byte varint).
    last_count: u8,
    /// Bytes and entries of this partition's previous batch.
    hint: (usize, usize),
}

/// Where a series entry of an [`OpenBatch`] is.
#[derive(Clone, Copy)]
struct Entry {
    at: u32,
    key_len: u32,
    /// Its newest sample's timestamp.
    last_ts: i64,
}

impl PartitionBuilders {
    pub fn new(partitions: u32) -> PartitionBuilders {
        PartitionBuilders {
            open: (0..partitions).map(|_| OpenBatch::default()).collect(),
            touched: Vec::new(),
            samples: 0,
            regroup: Regroup::default(),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.open.len() as u32
    }

    /// Samples held, over all partitions.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Adds one sample to `partition`'s batch (which must be below
    /// [`Self::partitions`]). `tags` must be sorted by name with unique
    /// names; an invalid key is an error, as is a sample past
    /// [`SERIES_MAX`] held in all (finish before). After an error, what
    /// was pushed before is kept.
    pub fn push(
        &mut self,
        partition: u32,
        resource: &str,
        metric: &str,
        tags: &[(&str, &str)],
        ts: i64,
        value: f64,
    ) -> Result<()> {
        check_parts(resource, metric, tags)?;
        if self.samples >= SERIES_MAX {
            return Err(Error::BatchFull);
        }
        let open = &mut self.open[partition as usize];
        // Entries start at u32 offsets, and a key is far below 2 GiB.
        if open.bytes.len() > (u32::MAX >> 1) as usize {
            return Err(Error::BatchFull);
        }
        if open.bytes.is_empty() {
            let (bytes, entries) = open.hint;
            open.bytes.reserve_exact(bytes + bytes / 4);
            open.hashes.reserve_exact(entries + entries / 4);
            open.entries.reserve_exact(entries + entries / 4);
            put_header(0, ts, &mut open.bytes);
            open.base = ts;
            self.touched.push(partition);
        }
        self.samples += 1;
        open.samples += 1;
        let at = open.bytes.len();
        encode_parts(resource, metric, tags.iter().copied(), &mut open.bytes);
        let hash = xxh3_64(&open.bytes[at..]);
        if open.joins(at, hash) {
            open.bytes.truncate(at);
            let last = open.entries.last_mut().expect("a joined entry");
            put_sample(ts.wrapping_sub(last.last_ts), value, &mut open.bytes);
            last.last_ts = ts;
            open.last_count += 1;
            open.bytes[(last.at + last.key_len) as usize] = open.last_count;
            return Ok(());
        }
        let key_len = open.bytes.len() - at;
        put_one_sample(open.base, ts, value, &mut open.bytes);
        open.hashes.push(hash);
        open.entries.push(Entry {
            at: at as u32,
            key_len: key_len as u32,
            last_ts: ts,
        });
        open.last_count = 1;
        Ok(())
    }

    /// The batches of every partition that has samples, in partition order,
    /// leaving the builders empty.
    pub fn finish(&mut self) -> Vec<(u32, Batch)> {
        self.touched.sort_unstable();
        self.samples = 0;
        let (open, regroup) = (&mut self.open, &mut self.regroup);
        self.touched
            .drain(..)
            .map(|p| (p, open[p as usize].finish(regroup)))
            .collect()
    }
}

impl OpenBatch {
    /// Whether the key just encoded at `bytes[at..]` (hashing to `hash`)
    /// is the last entry's and that entry can take one more sample.
    fn joins(&self, at: usize, hash: u64) -> bool {
        let (Some(last), Some(&last_hash)) = (self.entries.last(), self.hashes.last()) else {
            return false;
        };
        let (known, key) = self.bytes.split_at(at);
        last_hash == hash
            && self.last_count < 127
            && known[last.at as usize..][..last.key_len as usize] == *key
    }

    fn finish(&mut self, regroup: &mut Regroup) -> Batch {
        let mut bytes = std::mem::take(&mut self.bytes);
        let mut key_hashes = std::mem::take(&mut self.hashes);
        self.hint = (bytes.len(), key_hashes.len());
        self.last_count = 0;
        if regroup.number(&bytes, &self.entries, &key_hashes) {
            (bytes, key_hashes) = regroup.merge(&bytes, &self.entries, &key_hashes, self.base);
        }
        self.entries.clear();
        let series_count = key_hashes.len() as u32;
        bytes[2..HEADER_BYTES].copy_from_slice(&series_count.to_le_bytes());
        let batch = Batch {
            bytes,
            series_count,
            sample_count: std::mem::take(&mut self.samples),
            key_hashes,
        };
        debug_assert!(decode(&batch.bytes).is_ok(), "a built batch decodes");
        batch
    }
}

/// Merges the entries of each series in a batch, one batch at a time.
#[derive(Default)]
struct Regroup {
    /// Open addressing over the entries' key hashes: a series' number + 1,
    /// 0 for an empty slot.
    table: Vec<u32>,
    /// Each entry's series, numbered in order of first arrival.
    series_of: Vec<u32>,
    /// Each series' first entry.
    firsts: Vec<u32>,
}

impl Regroup {
    /// Numbers the series of `entries` (of `bytes`); true when one has
    /// more than one entry.
    fn number(&mut self, bytes: &[u8], entries: &[Entry], hashes: &[u64]) -> bool {
        let slots = (entries.len() * 2).next_power_of_two().max(16);
        self.table.clear();
        self.table.resize(slots, 0);
        self.series_of.clear();
        self.firsts.clear();
        let key = |e: usize| &bytes[entries[e].at as usize..][..entries[e].key_len as usize];
        for (entry, &hash) in hashes.iter().enumerate() {
            let mut slot = hash as usize & (slots - 1);
            let series = loop {
                match self.table[slot] {
                    0 => {
                        let series = self.firsts.len() as u32;
                        self.firsts.push(entry as u32);
                        self.table[slot] = series + 1;
                        break series;
                    }
                    n => {
                        let first = self.firsts[n as usize - 1] as usize;
                        if hashes[first] == hash && key(first) == key(entry) {
                            break n - 1;
                        }
                    }
                }
                slot = (slot + 1) & (slots - 1);
            };
            self.series_of.push(series);
        }
        self.firsts.len() < entries.len()
    }

    /// The batch (base timestamp `base`) with the entries of each series
    /// [`Self::number`]ed merged into one, and the series' key hashes. The
    /// samples' bytes are copied as they are but for a later entry's first
    /// timestamp, a delta from `base` that becomes one from the sample
    /// before it.
    fn merge(
        &self,
        bytes: &[u8],
        entries: &[Entry],
        hashes: &[u64],
        base: i64,
    ) -> (Vec<u8>, Vec<u64>) {
        // Entries by series, in order: a counting sort.
        let mut next = vec![0usize; self.firsts.len() + 1];
        for &s in &self.series_of {
            next[s as usize + 1] += 1;
        }
        for s in 1..next.len() {
            next[s] += next[s - 1];
        }
        let mut order = vec![0u32; entries.len()];
        for (entry, &s) in self.series_of.iter().enumerate() {
            order[next[s as usize]] = entry as u32;
            next[s as usize] += 1;
        }
        // An entry's sample count and samples (up to the next entry).
        let samples = |e: u32| {
            let Entry { at, key_len, .. } = entries[e as usize];
            let end = entries
                .get(e as usize + 1)
                .map_or(bytes.len(), |n| n.at as usize);
            let rest = &bytes[(at + key_len) as usize..end];
            let (count, used) = varint::get(rest).unwrap_or((0, 0));
            (count, &rest[used..])
        };
        let mut out = Vec::with_capacity(bytes.len());
        put_header(self.firsts.len() as u32, base, &mut out);
        let mut from = 0;
        for (s, &first) in self.firsts.iter().enumerate() {
            // `next[s]` is where the series' entries end now.
            let series = &order[from..next[s]];
            from = next[s];
            let Entry { at, key_len, .. } = entries[first as usize];
            out.extend_from_slice(&bytes[at as usize..][..key_len as usize]);
            varint::put(&mut out, series.iter().map(|&e| samples(e).0).sum());
            let mut prev = base;
            for (i, &e) in series.iter().enumerate() {
                let (_, mut sample_bytes) = samples(e);
                if i > 0 {
                    let (delta, used) = varint::get(sample_bytes).unwrap_or((0, 0));
                    let ts = base.wrapping_add(unzigzag(delta));
                    varint::put(&mut out, zigzag(ts.wrapping_sub(prev)));
                    sample_bytes = &sample_bytes[used..];
                }
                out.extend_from_slice(sample_bytes);
                prev = entries[e as usize].last_ts;
            }
        }
        let key_hashes = self.firsts.iter().map(|&e| hashes[e as usize]).collect();
        (out, key_hashes)
    }
}

/// What [`KeyRef::parse`] would check of the key made of these parts (the
/// strings are `&str`, so already UTF-8).
fn check_parts(resource: &str, metric: &str, tags: &[(&str, &str)]) -> Result<()> {
    let long = |s: &str| s.len() > STRING_BYTES_MAX;
    if long(resource) || long(metric) {
        return Err(Error::InvalidKey("string too long"));
    }
    if tags.len() > TAGS_MAX {
        return Err(Error::InvalidKey("too many tags"));
    }
    let mut prev: Option<&str> = None;
    for &(name, value) in tags {
        if long(name) || long(value) {
            return Err(Error::InvalidKey("string too long"));
        }
        if name.is_empty() || name == METRIC_LABEL || name == RESOURCE_LABEL {
            return Err(Error::InvalidKey("tag name is empty or reserved"));
        }
        if prev.is_some_and(|p| p >= name) {
            return Err(Error::InvalidKey("tag names not strictly increasing"));
        }
        prev = Some(name);
    }
    Ok(())
}

/// A validated batch, borrowed from its bytes.
#[derive(Clone, Copy, Debug)]
pub struct BatchView<'a> {
    /// The whole batch, header included.
    bytes: &'a [u8],
    layout: Layout,
    series_count: u32,
    sample_count: usize,
    /// Each series' key hash (xxh3), when the batch's maker computed them;
    /// else empty.
    key_hashes: &'a [u64],
}

/// An owned batch known to be well formed.
#[derive(Clone, Debug)]
pub struct Batch {
    bytes: Vec<u8>,
    series_count: u32,
    sample_count: usize,
    key_hashes: Vec<u64>,
}

impl Batch {
    pub fn view(&self) -> BatchView<'_> {
        let layout = layout(&self.bytes).unwrap_or_default();
        BatchView {
            bytes: &self.bytes,
            layout,
            series_count: self.series_count,
            sample_count: self.sample_count,
            key_hashes: &self.key_hashes,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// How a batch's version lays it out, read from its header.
#[derive(Clone, Copy, Debug, Default)]
struct Layout {
    /// Version 1: a u32 length before each series' samples, no base.
    v1: bool,
    /// Where a series' first timestamp delta starts from.
    base_ts: i64,
    /// Where the series entries start.
    body_at: usize,
}

/// The layout of a batch whose magic and version were checked.
fn layout(bytes: &[u8]) -> Option<Layout> {
    if bytes.get(1) == Some(&VERSION_1) {
        return Some(Layout {
            v1: true,
            base_ts: 0,
            body_at: HEADER_BYTES,
        });
    }
    let (base, used) = varint::get(bytes.get(HEADER_BYTES..)?)?;
    Some(Layout {
        v1: false,
        base_ts: unzigzag(base),
        body_at: HEADER_BYTES + used,
    })
}

/// The end of `n` samples (a varint and 8 bytes each) starting at `pos`,
/// if they are within `bytes`.
#[inline]
fn samples_end(bytes: &[u8], mut pos: usize, n: u64) -> Option<usize> {
    for _ in 0..n {
        let (_, used) = varint::get(bytes.get(pos..)?)?;
        pos += used + 8;
    }
    (pos <= bytes.len()).then_some(pos)
}

/// Where the samples of an entry are, `(start, end)`, its count read just
/// before `pos`: version 1 gives their length, version 2 is walked.
#[inline]
fn samples_span(body: &[u8], pos: usize, n: u64, v1: bool) -> Option<(usize, usize)> {
    if !v1 {
        return Some((pos, samples_end(body, pos, n)?));
    }
    let len = u32::from_le_bytes(body.get(pos..pos + 4)?.try_into().ok()?) as usize;
    let end = (pos + 4).checked_add(len).filter(|&e| e <= body.len())?;
    Some((pos + 4, end))
}

/// Validates `bytes` as one whole batch.
pub fn decode(bytes: &[u8]) -> Result<BatchView<'_>> {
    let header = bytes
        .get(..HEADER_BYTES)
        .ok_or_else(|| malformed(0, "truncated header"))?;
    if header[0] != MAGIC {
        return Err(malformed(0, "bad magic"));
    }
    if header[1] != VERSION && header[1] != VERSION_1 {
        return Err(Error::BatchVersion(header[1]));
    }
    let series_count = u32::from_le_bytes([header[2], header[3], header[4], header[5]]);
    if series_count as usize > SERIES_MAX {
        return Err(malformed(2, "too many series"));
    }
    let layout = layout(bytes).ok_or_else(|| malformed(HEADER_BYTES, "bad base timestamp"))?;
    let body = &bytes[layout.body_at..];
    let at = |pos: usize| layout.body_at + pos;
    let mut pos = 0;
    let mut sample_count = 0usize;
    for _ in 0..series_count {
        let used = crate::series::validate_prefix(&body[pos..])
            .ok_or_else(|| malformed(at(pos), "bad series key"))?;
        pos += used;
        let (n, used) = varint::get(&body[pos..]).ok_or_else(|| malformed(at(pos), "bad count"))?;
        pos += used;
        if n == 0 || n as usize > SAMPLES_MAX - sample_count {
            return Err(malformed(at(pos), "bad sample count"));
        }
        sample_count += n as usize;
        let (start, end) = samples_span(body, pos, n, layout.v1)
            .ok_or_else(|| malformed(at(pos), "samples beyond the batch"))?;
        // Version 1's length must be exactly its samples' (version 2's
        // span was found by walking them).
        if layout.v1 && samples_end(&body[..end], start, n) != Some(end) {
            return Err(malformed(at(start), "samples length mismatch"));
        }
        pos = end;
    }
    if pos != body.len() {
        return Err(malformed(at(pos), "trailing bytes"));
    }
    Ok(BatchView {
        bytes,
        layout,
        series_count,
        sample_count,
        key_hashes: &[],
    })
}

fn malformed(offset: usize, reason: &'static str) -> Error {
    Error::BatchMalformed { offset, reason }
}

impl<'a> BatchView<'a> {
    /// The whole batch, as it is logged and replicated.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    pub fn series_count(&self) -> usize {
        self.series_count as usize
    }

    pub fn sample_count(&self) -> usize {
        self.sample_count
    }

    pub fn series(&self) -> SeriesIter<'a> {
        SeriesIter {
            body: &self.bytes[self.layout.body_at..],
            pos: 0,
            left: self.series_count,
            layout: self.layout,
            key_hashes: self.key_hashes.iter(),
        }
    }
}

/// One series of a batch.
#[derive(Clone, Debug)]
pub struct SeriesView<'a> {
    /// The canonical key bytes (what the index interns).
    pub key_bytes: &'a [u8],
    /// `xxh3_64(key_bytes)`, if the batch came with it.
    pub key_hash: Option<u64>,
    pub samples: SampleIter<'a>,
}

impl<'a> SeriesView<'a> {
    /// The series key (validated by [`decode`]; parsed on demand because
    /// the ingest path only needs the bytes of known series).
    pub fn key(&self) -> KeyRef<'a> {
        KeyRef::parse(self.key_bytes).unwrap_or(KeyRef::EMPTY)
    }
}

pub struct SeriesIter<'a> {
    body: &'a [u8],
    pos: usize,
    left: u32,
    layout: Layout,
    key_hashes: std::slice::Iter<'a, u64>,
}

impl<'a> Iterator for SeriesIter<'a> {
    type Item = SeriesView<'a>;
    fn next(&mut self) -> Option<SeriesView<'a>> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // The batch was validated by `decode`; a failure ends iteration.
        let rest = self.body.get(self.pos..)?;
        let key_len = crate::series::key_len(rest)?;
        let (n, used) = varint::get(&rest[key_len..])?;
        let (start, end) = samples_span(rest, key_len + used, n, self.layout.v1)?;
        let it = SampleIter {
            bytes: &rest[start..end],
            pos: 0,
            left: n,
            prev: self.layout.base_ts,
        };
        self.pos += end;
        Some(SeriesView {
            key_bytes: &rest[..key_len],
            key_hash: self.key_hashes.next().copied(),
            samples: it,
        })
    }
}

/// The samples of one series in a batch, in batch order.
#[derive(Clone, Debug)]
pub struct SampleIter<'a> {
    bytes: &'a [u8],
    pos: usize,
    left: u64,
    prev: i64,
}

impl SampleIter<'_> {
    pub fn len(&self) -> usize {
        self.left as usize
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

impl Iterator for SampleIter<'_> {
    type Item = (i64, f64);
    #[inline]
    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let (d, used) = varint::get(self.bytes.get(self.pos..)?)?;
        let p = self.pos + used;
        let raw: [u8; 8] = self.bytes.get(p..p + 8)?.try_into().ok()?;
        self.pos = p + 8;
        self.prev = self.prev.wrapping_add(unzigzag(d));
        Some((self.prev, f64::from_bits(u64::from_le_bytes(raw))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Owned = Vec<(SeriesKey, Vec<(i64, f64)>)>;

    fn round_trip(input: &Owned) -> Owned {
        let mut bytes = Vec::new();
        encode(input.iter().map(|(k, s)| (k, s.as_slice())), &mut bytes);
        let view = decode(&bytes).unwrap();
        assert_eq!(
            view.series_count(),
            input.iter().filter(|s| !s.1.is_empty()).count()
        );
        view.series()
            .map(|s| (s.key().to_owned_key(), s.samples.collect()))
            .collect()
    }

    /// A batch as version 1 wrote it.
    fn encode_v1(input: &Owned) -> Vec<u8> {
        let mut out = vec![MAGIC, VERSION_1];
        out.extend_from_slice(&(input.len() as u32).to_le_bytes());
        for (key, samples) in input {
            key.encode_into(&mut out);
            varint::put(&mut out, samples.len() as u64);
            let mut body = Vec::new();
            let mut prev = 0i64;
            for &(ts, v) in samples {
                varint::put(&mut body, zigzag(ts.wrapping_sub(prev)));
                body.extend_from_slice(&v.to_bits().to_le_bytes());
                prev = ts;
            }
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&body);
        }
        out
    }

    /// A version 1 batch whose samples length is not its samples' is an
    /// error, whether it reaches past them or stops inside them.
    #[test]
    fn version_1_lengths_must_match_their_samples() {
        let one = vec![(key("vm1", "cpu"), vec![(10, 1.0), (20, 2.0)])];
        let good = encode_v1(&one);
        assert!(decode(&good).is_ok());
        let len_at = good.len() - 2 * 9 - 4;
        for len in [17u32, 19] {
            let mut bad = good.clone();
            bad[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
            bad.push(0);
            assert!(decode(&bad).is_err(), "length {len}");
        }
    }

    /// Keys and samples (values as bits, so NaNs compare).
    fn read_owned(view: &BatchView<'_>) -> Vec<(SeriesKey, Vec<(i64, u64)>)> {
        view.series()
            .map(|s| {
                let key = s.key().to_owned_key();
                (key, s.samples.map(|(t, v)| (t, v.to_bits())).collect())
            })
            .collect()
    }

    fn check(input: Owned) {
        let expected: Owned = input.iter().filter(|s| !s.1.is_empty()).cloned().collect();
        let got = round_trip(&input);
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g.0, e.0);
            let bits =
                |v: &[(i64, f64)]| v.iter().map(|(t, v)| (*t, v.to_bits())).collect::<Vec<_>>();
            assert_eq!(bits(&g.1), bits(&e.1));
        }
    }

    fn key(r: &str, m: &str) -> SeriesKey {
        SeriesKey::new(r, m, &[("dc", "eu")]).unwrap()
    }

    #[test]
    fn batches_round_trip() {
        check(vec![]);
        check(vec![(
            key("vm1", "cpu"),
            vec![(1, 0.5), (0, f64::NAN), (i64::MIN, -0.0)],
        )]);
        check(vec![
            (key("vm1", "cpu"), vec![(i64::MAX, f64::INFINITY)]),
            (key("vm2", "cpu"), vec![]),
            (key("vm1", "cpu"), vec![(5, 1.0)]),
        ]);
    }

    #[test]
    fn builder_groups_by_series() {
        let mut b = BatchBuilder::new();
        for round in 0..2 {
            b.push("vm1", "cpu", &[], 10, 1.0).unwrap();
            b.push("vm2", "cpu", &[("a", "1")], 10, 2.0).unwrap();
            b.push("vm1", "cpu", &[], 20, 3.0).unwrap();
            assert!(b
                .push("vm1", "cpu", &[("b", "1"), ("a", "1")], 20, 3.0)
                .is_err());
            let mut bytes = vec![0xEE]; // encode appends
            b.encode(&mut bytes);
            let view = decode(&bytes[1..]).unwrap();
            assert_eq!(
                (view.series_count(), view.sample_count()),
                (2, 3),
                "round {round}"
            );
            let first = view.series().next().unwrap();
            assert_eq!(first.key().resource, "vm1");
            assert_eq!(
                first.samples.collect::<Vec<_>>(),
                vec![(10, 1.0), (20, 3.0)]
            );
            b.clear();
            assert!(b.is_empty());
        }
    }

    #[test]
    fn a_finished_batch_is_what_decoding_its_bytes_finds() {
        let mut b = BatchBuilder::new();
        b.push("vm1", "cpu", &[], 10, 1.0).unwrap();
        b.push("vm2", "cpu", &[("a", "1")], 10, 2.0).unwrap();
        b.push("vm1", "cpu", &[], 20, 3.0).unwrap();
        let batch = b.finish();
        assert!(b.is_empty());
        let decoded = decode(batch.bytes()).unwrap();
        let kept = batch.view();
        assert_eq!(kept.series_count(), 2);
        assert_eq!(kept.sample_count(), 3);
        assert_eq!(
            (kept.series_count(), kept.sample_count()),
            (decoded.series_count(), decoded.sample_count())
        );
        type Read = Vec<(Vec<u8>, Vec<(i64, f64)>)>;
        let series = |v: BatchView<'_>| -> Read {
            v.series()
                .map(|s| (s.key_bytes.to_vec(), s.samples.collect()))
                .collect()
        };
        assert_eq!(series(kept), series(decoded));
        // The builder's key hashes travel with the batch, one per series.
        let hashes: Vec<Option<u64>> = kept.series().map(|s| s.key_hash).collect();
        let want: Vec<Option<u64>> = kept.series().map(|s| Some(xxh3_64(s.key_bytes))).collect();
        assert_eq!(hashes, want);
        assert!(decoded.series().all(|s| s.key_hash.is_none()));
    }

    #[test]
    fn malformed_batches_are_errors() {
        let mut bytes = Vec::new();
        encode(
            [(&key("vm1", "cpu"), &[(1i64, 2.0f64), (3, 4.0)][..])],
            &mut bytes,
        );
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut version = bytes.clone();
        version[1] = 9;
        assert!(matches!(decode(&version), Err(Error::BatchVersion(9))));
    }

    /// What `PartitionBuilders` holds, read back per partition.
    type Grouped = Vec<(u32, Vec<(Vec<u8>, Option<u64>, Vec<(i64, u64)>)>)>;

    fn read(batches: &[(u32, Batch)]) -> Grouped {
        batches
            .iter()
            .map(|(p, b)| {
                let series = b.view().series();
                let read = series.map(|s| {
                    let samples = s.samples.map(|(t, v)| (t, v.to_bits()));
                    (s.key_bytes.to_vec(), s.key_hash, samples.collect())
                });
                (*p, read.collect())
            })
            .collect()
    }

    #[test]
    fn partition_builders_keep_what_was_pushed_before_an_error() {
        let mut b = PartitionBuilders::new(3);
        b.push(2, "vm1", "cpu", &[], 10, 1.0).unwrap();
        assert!(b
            .push(0, "vm1", "cpu", &[("b", "1"), ("a", "1")], 10, 1.0)
            .is_err());
        assert!(b.push(1, "vm1", "cpu", &[("", "1")], 10, 1.0).is_err());
        assert_eq!(b.samples(), 1);
        let got = read(&b.finish());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 2);
        assert_eq!(got[0].1[0].2, vec![(10, 1.0f64.to_bits())]);
        assert_eq!(b.samples(), 0);
        assert!(b.finish().is_empty());
    }

    /// Samples pushed back to back to one series share its entry, up to
    /// 127 (a one-byte count), and the entries are merged at the finish;
    /// timestamps anywhere: each is a wrapping delta from the one before.
    #[test]
    fn partition_builders_join_a_series_pushed_back_to_back() {
        let edges = [1_700_000_000_000i64, i64::MIN, i64::MAX, -1, 0, i64::MIN];
        let stamps: Vec<i64> = (0..300)
            .map(|i| edges[i % edges.len()] ^ i as i64)
            .collect();
        let mut b = PartitionBuilders::new(2);
        for (i, &ts) in stamps.iter().enumerate() {
            b.push(1, "vm1", "cpu", &[], ts, i as f64).unwrap();
        }
        let got = read(&b.finish());
        assert_eq!(got.len(), 1);
        let entries: Vec<usize> = got[0].1.iter().map(|e| e.2.len()).collect();
        assert_eq!(entries, vec![300]);
        let samples: Vec<(i64, u64)> = got[0].1.iter().flat_map(|e| e.2.clone()).collect();
        let want: Vec<(i64, u64)> = stamps
            .iter()
            .enumerate()
            .map(|(i, &ts)| (ts, (i as f64).to_bits()))
            .collect();
        assert_eq!(samples, want);
    }

    #[test]
    fn partition_builders_hold_series_max_samples_then_refuse() {
        let mut b = PartitionBuilders::new(2);
        for i in 0..SERIES_MAX {
            let resource = format!("vm{i}");
            b.push((i % 2) as u32, &resource, "cpu", &[], 1, 0.0)
                .unwrap();
        }
        assert!(matches!(
            b.push(0, "vm", "cpu", &[], 1, 0.0),
            Err(Error::BatchFull)
        ));
        let batches = b.finish();
        let held: usize = batches.iter().map(|(_, b)| b.view().sample_count()).sum();
        assert_eq!(held, SERIES_MAX);
        b.push(0, "vm", "cpu", &[], 1, 0.0).unwrap();
    }

    fn arb_batch() -> impl Strategy<Value = Owned> {
        let key = (
            "[a-c]{0,3}",
            "[a-c]{0,3}",
            proptest::collection::vec(("[x-z]{1,2}", "[0-9]{0,2}"), 0..3),
        )
            .prop_map(|(r, m, tags)| {
                let tags: Vec<(&str, &str)> =
                    tags.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                SeriesKey::new(&r, &m, &tags).unwrap()
            });
        let samples = proptest::collection::vec((any::<i64>(), any::<f64>()), 0..20);
        proptest::collection::vec((key, samples), 0..8)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn one_sample_is_written_as_a_list_of_one(base in any::<i64>(), ts in any::<i64>(), v in any::<f64>(), shift in 0u32..64) {
            for ts in [ts, ts >> shift, base.wrapping_add(ts >> shift)] {
                let (mut one, mut list) = (vec![7], vec![7]);
                put_one_sample(base, ts, v, &mut one);
                put_samples(base, [(ts, v)].into_iter(), 1, &mut list);
                prop_assert_eq!(one, list);
            }
        }

        /// Batches of version 1 (no base timestamp, a length before each
        /// series' samples), which older logs and peers hold, still read,
        /// and split keeps their version.
        #[test]
        fn version_1_batches_still_read(input in arb_batch()) {
            let kept: Owned = input.iter().filter(|s| !s.1.is_empty()).cloned().collect();
            let bytes = encode_v1(&kept);
            let view = decode(&bytes).unwrap();
            let expected: Vec<_> = kept
                .iter()
                .map(|(k, s)| (k.clone(), s.iter().map(|&(t, v)| (t, v.to_bits())).collect::<Vec<_>>()))
                .collect();
            prop_assert_eq!(read_owned(&view), expected.clone());
            let parts = split(&view, |k| k.resource.len() as u32 % 2);
            let mut got = Vec::new();
            for (_, part) in &parts {
                prop_assert_eq!(part.bytes()[1], VERSION_1);
                got.extend(read_owned(&decode(part.bytes()).unwrap()));
            }
            prop_assert_eq!(got.len(), expected.len());
        }

        /// Partition builders give the bytes one batch builder per
        /// partition gives, round after round: series in order of first
        /// arrival, each with its samples in arrival order. Keys repeat, in
        /// runs (one entry) and apart (entries merged at the finish).
        #[test]
        fn partition_builders_batch_as_one_builder_per_partition(
            rounds in proptest::collection::vec(
                proptest::collection::vec(
                    (0u32..4, 0usize..6, 1usize..4, any::<i64>(), any::<f64>()),
                    0..40,
                ),
                1..3,
            ),
        ) {
            let names = ["vm1", "vm2", "vm3"];
            let tags: [&[(&str, &str)]; 2] = [&[], &[("dc", "eu")]];
            let mut all = PartitionBuilders::new(4);
            for round in rounds {
                let mut each: Vec<BatchBuilder> = (0..4).map(|_| BatchBuilder::new()).collect();
                let mut pushed = 0;
                for (p, k, run, ts, v) in round {
                    let (r, t) = (names[k % 3], tags[k / 3]);
                    for i in 0..run as i64 {
                        all.push(p, r, "cpu", t, ts ^ i, v).unwrap();
                        each[p as usize].push(r, "cpu", t, ts ^ i, v).unwrap();
                        pushed += 1;
                    }
                }
                prop_assert_eq!(all.samples(), pushed);
                let want: Vec<(u32, Batch)> = each
                    .iter_mut()
                    .enumerate()
                    .filter(|(_, b)| !b.is_empty())
                    .map(|(p, b)| (p as u32, b.finish()))
                    .collect();
                let got = all.finish();
                prop_assert_eq!(read(&got), read(&want));
                for ((_, g), (_, w)) in got.iter().zip(&want) {
                    prop_assert_eq!(g.bytes(), w.bytes());
                }
                prop_assert_eq!(all.samples(), 0);
            }
        }

        #[test]
        fn any_batch_round_trips(input in arb_batch()) {
            check(input);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(view) = decode(&bytes) {
                let n: usize = view.series().map(|s| s.samples.count()).sum();
                prop_assert_eq!(n, view.sample_count());
            }
        }

        #[test]
        fn mutated_batches_never_panic(input in arb_batch(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut bytes = Vec::new();
            encode(input.iter().map(|(k, s)| (k, s.as_slice())), &mut bytes);
            let i = at.index(bytes.len());
            bytes[i] = byte;
            if let Ok(view) = decode(&bytes) {
                let n: usize = view.series().map(|s| s.samples.count()).sum();
                prop_assert_eq!(n, view.sample_count());
            }
        }
    }
}

/// Splits a batch into one batch per group (the gateway groups by
/// partition), copying each series' encoded bytes as they are.
pub fn split(
    view: &BatchView<'_>,
    mut group_of: impl FnMut(&KeyRef<'_>) -> u32,
) -> Vec<(u32, Batch)> {
    let mut groups: Vec<(u32, Batch)> = Vec::new();
    let mut index: HashMap<u32, usize> = HashMap::new();
    let header = &view.bytes[..view.layout.body_at];
    let body = &view.bytes[view.layout.body_at..];
    let mut it = view.series();
    loop {
        let start = it.pos;
        let Some(series) = it.next() else { break };
        let raw = &body[start..it.pos];
        let group = group_of(&series.key());
        let slot = *index.entry(group).or_insert_with(|| {
            // The same version and base: the entries are copied as they are.
            let bytes = header.to_vec();
            let batch = Batch {
                bytes,
                series_count: 0,
                sample_count: 0,
                key_hashes: Vec::new(),
            };
            groups.push((group, batch));
            groups.len() - 1
        });
        let batch = &mut groups[slot].1;
        batch.bytes.extend_from_slice(raw);
        batch.series_count += 1;
        batch.sample_count += series.samples.len();
    }
    for (_, batch) in &mut groups {
        let count = batch.series_count.to_le_bytes();
        batch.bytes[2..HEADER_BYTES].copy_from_slice(&count);
    }
    groups
}

#[cfg(test)]
mod split_tests {
    use super::*;

    #[test]
    fn split_keeps_every_sample_in_its_group() {
        let mut b = BatchBuilder::new();
        for r in 0..20 {
            for m in 0..3 {
                for t in 0..4 {
                    b.push(
                        &format!("vm{r}"),
                        &format!("m{m}"),
                        &[("k", "v")],
                        t * 1000 - 1500,
                        r as f64 + t as f64 / 8.0,
                    )
                    .unwrap();
                }
            }
        }
        let mut bytes = Vec::new();
        b.encode(&mut bytes);
        let view = decode(&bytes).unwrap();
        let group_of =
            |k: &KeyRef<'_>| k.resource.len() as u32 + k.resource.as_bytes()[2] as u32 % 3;
        let groups = split(&view, group_of);
        let mut seen = Vec::new();
        for (g, part) in &groups {
            // The counts split keeps are the ones decoding finds.
            let v = decode(part.bytes()).unwrap();
            let kept = part.view();
            assert_eq!(
                (kept.series_count(), kept.sample_count()),
                (v.series_count(), v.sample_count())
            );
            for s in v.series() {
                assert_eq!(group_of(&s.key()), *g);
                for (t, x) in s.samples.clone() {
                    seen.push((
                        s.key().resource.to_string(),
                        s.key().metric.to_string(),
                        t,
                        x.to_bits(),
                    ));
                }
            }
        }
        let mut want = Vec::new();
        for s in view.series() {
            for (t, x) in s.samples.clone() {
                want.push((
                    s.key().resource.to_string(),
                    s.key().metric.to_string(),
                    t,
                    x.to_bits(),
                ));
            }
        }
        seen.sort();
        want.sort();
        assert_eq!(seen, want);
        assert_eq!(want.len(), 240);
    }
}
