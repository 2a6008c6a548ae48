//! A partition's in-memory state: the series index (interned keys, label postings) and the series themselves.
//!
//! Interning: a series is found by the xxh3 hash of its canonical key bytes
//! (a `u64 -> id` map with an identity hasher, so a lookup hashes the batch's
//! key slice once and touches one small table); the rare hash collision goes
//! to a second map keyed by the bytes. Ids are dense `u32`s into `series`.
//!
//! Postings: label name -> value -> sorted series ids, for selects.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_64;

use crate::batch::BatchView;
use crate::head::{Outcome, Series};
use crate::series::KeyRef;
use crate::source::{Matcher, METRIC_LABEL, RESOURCE_LABEL};

/// A hasher for keys that already are hashes.
#[derive(Default)]
pub(crate) struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type HashIndex = HashMap<u64, u32, BuildHasherDefault<IdentityHasher>>;
type Postings = HashMap<Box<str>, HashMap<Box<str>, Vec<u32>>>;

/// Counters of what the writes did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Samples accepted (appended or overwriting).
    pub accepted: u64,
    /// Samples rejected because they were older than the out-of-order window.
    pub rejected: u64,
}

#[derive(Default)]
pub(crate) struct Memory {
    pub series: Vec<Series>,
    /// The canonical keys of all series, back to back.
    keys: Vec<u8>,
    by_hash: HashIndex,
    collisions: HashMap<Box<[u8]>, u32>,
    postings: Postings,
    pub counts: WriteCounts,
}

impl Memory {
    /// The canonical key bytes of a series.
    #[inline]
    pub fn key(&self, s: &Series) -> &[u8] {
        &self.keys[s.key_at as usize..][..s.key_len as usize]
    }

    /// The id of the series with canonical key `key_bytes`, created if new.
    #[inline]
    pub fn intern<'k>(&mut self, key_bytes: &[u8], key: impl Fn() -> KeyRef<'k>) -> u32 {
        let hash = xxh3_64(key_bytes);
        if let Some(&id) = self.by_hash.get(&hash) {
            if self.key(&self.series[id as usize]) == key_bytes {
                return id;
            }
            if let Some(&id) = self.collisions.get(key_bytes) {
                return id;
            }
            let id = self.add_series(key_bytes, key);
            self.collisions.insert(key_bytes.into(), id);
            return id;
        }
        let id = self.add_series(key_bytes, key);
        self.by_hash.insert(hash, id);
        id
    }

    fn add_series<'k>(&mut self, key_bytes: &[u8], key: impl Fn() -> KeyRef<'k>) -> u32 {
        let key = key();
        let id = u32::try_from(self.series.len()).expect("fewer than 2^32 series per partition");
        let key_at = u32::try_from(self.keys.len()).expect("less than 4 GiB of keys per partition");
        self.keys.extend_from_slice(key_bytes);
        self.series
            .push(Series::new(key_at, key_bytes.len() as u32));
        self.post(METRIC_LABEL, key.metric, id);
        self.post(RESOURCE_LABEL, key.resource, id);
        for (n, v) in key.tags() {
            self.post(n, v, id);
        }
        id
    }

    fn post(&mut self, name: &str, value: &str, id: u32) {
        let values = match self.postings.get_mut(name) {
            Some(values) => values,
            None => self.postings.entry(name.into()).or_default(),
        };
        match values.get_mut(value) {
            Some(ids) => ids.push(id),
            None => {
                values.insert(value.into(), vec![id]);
            }
        }
    }

    /// Applies a validated batch.
    pub fn apply(&mut self, batch: &BatchView<'_>, ooo_window_ms: i64) {
        let mut counts = self.counts;
        for s in batch.series() {
            let id = self.intern(s.key_bytes, || s.key());
            let series = &mut self.series[id as usize];
            for (ts, v) in s.samples {
                match series.write(ts, v, ooo_window_ms) {
                    Outcome::Rejected => counts.rejected += 1,
                    Outcome::Appended | Outcome::Overlaid => counts.accepted += 1,
                }
            }
        }
        self.counts = counts;
    }

    /// Ids of the series matching every matcher, ascending. Matchers that
    /// cannot match an absent label narrow the set through the postings
    /// (each distinct value is tested once); the others filter it.
    pub fn select_ids(&self, matchers: &[Matcher]) -> Vec<u32> {
        let mut candidates: Option<Vec<u32>> = None;
        let mut filters = Vec::new();
        for m in matchers {
            if m.matches(None) {
                filters.push(m);
                continue;
            }
            let mut ids: Vec<u32> = Vec::new();
            if let Some(values) = self.postings.get(m.name.as_str()) {
                let mut lists: Vec<&Vec<u32>> = match m.op {
                    crate::MatchOp::Equal => values.get(m.value.as_str()).into_iter().collect(),
                    _ => values
                        .iter()
                        .filter(|(v, _)| m.matches(Some(v)))
                        .map(|(_, ids)| ids)
                        .collect(),
                };
                if lists.len() == 1 {
                    ids = lists.pop().cloned().unwrap_or_default();
                } else {
                    for l in lists {
                        ids.extend_from_slice(l);
                    }
                    ids.sort_unstable();
                    ids.dedup();
                }
            }
            candidates = Some(match candidates {
                None => ids,
                Some(c) => intersect(&c, &ids),
            });
        }
        let all = || (0..self.series.len() as u32).collect::<Vec<_>>();
        let mut ids = candidates.unwrap_or_else(all);
        if !filters.is_empty() {
            ids.retain(|&id| {
                let key = match KeyRef::parse(self.key(&self.series[id as usize])) {
                    Ok(k) => k,
                    Err(_) => return false,
                };
                filters.iter().all(|m| m.matches(key.label(&m.name)))
            });
        }
        ids
    }

    /// Bytes of the index: per-series bookkeeping, hash tables and postings.
    pub fn index_bytes(&self) -> usize {
        let series: usize = self.series.iter().map(Series::index_bytes).sum();
        // A hashbrown bucket is the entry plus one control byte; `capacity`
        // is 7/8 of the buckets.
        let table = self.by_hash.capacity() * 8 / 7 * 17 + self.collisions.capacity() * 8 / 7 * 25;
        let postings: usize = self
            .postings
            .iter()
            .map(|(n, values)| {
                n.len()
                    + 48
                    + values
                        .iter()
                        .map(|(v, ids)| v.len() + 48 + ids.capacity() * 4)
                        .sum::<usize>()
            })
            .sum();
        series
            + self.keys.capacity()
            + table
            + postings
            + (self.series.capacity() - self.series.len()) * std::mem::size_of::<Series>()
    }

    pub fn sample_bytes(&self) -> usize {
        self.series.iter().map(Series::sample_bytes).sum()
    }

    pub fn head_samples(&self) -> usize {
        self.series
            .iter()
            .map(|s| s.head.len() + s.overlay.as_ref().map_or(0, |o| o.len()))
            .sum()
    }
}

fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}
