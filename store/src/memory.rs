//! A partition's in-memory state: the series index (interned keys, label postings) and the series themselves.
//!
//! Interning: a series is found by the xxh3 hash of its canonical key bytes
//! in [`HashIndex`], a flat open-addressing table whose slot holds the hash,
//! the id and where the key is in the key arena: a lookup touches one slot
//! and the key bytes, nothing else. Ids are dense `u32`s into `series`.
//!
//! Postings: label name -> value -> sorted series ids, for selects.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64;

use crate::batch::BatchView;
use crate::head::{Outcome, SealedRef, SealedRefs, Series};
use crate::prefetch::prefetch;
use crate::series::KeyRef;
use crate::source::{Matcher, METRIC_LABEL, RESOURCE_LABEL};

type Postings = HashMap<Box<str>, HashMap<Box<str>, Vec<u32>>>;

/// Counters of what the writes did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounts {
    /// Samples accepted (appended or overwriting).
    pub accepted: u64,
    /// Samples rejected because they were older than the out-of-order window.
    pub rejected: u64,
}

/// Series of a batch resolved together before any of them is written: the
/// lookups of a window are independent loads that the CPU overlaps, and the
/// writes then find their series in cache. Small enough that a window's
/// series stay in L2 between the two passes.
const APPLY_WINDOW: usize = 64;
/// A window entry whose series is not in the index yet.
const NEW_SERIES: u32 = u32::MAX;

#[derive(Default)]
pub(crate) struct Memory {
    pub series: Vec<Series>,
    /// Where each series has sealed chunks, by series id (kept apart from
    /// `series` so the write path's per-series state stays two cache lines).
    pub sealed: Vec<SealedRefs>,
    /// The canonical keys of all series, back to back.
    keys: Vec<u8>,
    index: HashIndex,
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
        if let Some(id) = self.index.find(hash, &self.keys, key_bytes) {
            return id;
        }
        let key = key();
        let id = u32::try_from(self.series.len()).expect("fewer than 2^32 series per partition");
        assert!(id != NEW_SERIES, "fewer than 2^32 - 1 series per partition");
        let key_at = u32::try_from(self.keys.len()).expect("less than 4 GiB of keys per partition");
        reserve_quarter(&mut self.keys, key_bytes.len());
        self.keys.extend_from_slice(key_bytes);
        reserve_quarter(&mut self.series, 1);
        self.series
            .push(Series::new(key_at, key_bytes.len() as u32));
        reserve_quarter(&mut self.sealed, 1);
        self.sealed.push(SealedRefs::new());
        self.index.insert(hash, id, key_at);
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

    /// Applies a validated batch, a window of series at a time, in passes
    /// that each wait on memory once: the window's index slots are
    /// prefetched, then its keys and series state, then each series' head
    /// chunk, and the writes find all of it in cache.
    pub fn apply(&mut self, batch: &BatchView<'_>, ooo_window_ms: i64) {
        let mut counts = self.counts;
        let capacity = APPLY_WINDOW.min(batch.series_count());
        let mut window = Vec::with_capacity(capacity);
        let mut ids = Vec::with_capacity(capacity);
        let mut series = batch.series();
        loop {
            window.clear();
            window.extend(series.by_ref().take(APPLY_WINDOW).map(|s| {
                let hash = s.key_hash.unwrap_or_else(|| xxh3_64(s.key_bytes));
                self.index.prefetch(hash);
                (hash, s)
            }));
            if window.is_empty() {
                break;
            }
            for &(hash, _) in &window {
                let Some(slot) = self.index.first(hash) else {
                    continue;
                };
                if let Some(key) = self.keys.get(slot.key_at as usize) {
                    prefetch(key);
                }
                if let Some(series) = self.series.get(slot.id as usize) {
                    series.prefetch();
                }
            }
            ids.clear();
            ids.extend(window.iter().map(|(hash, s)| {
                match self.index.find(*hash, &self.keys, s.key_bytes) {
                    Some(id) => {
                        self.series[id as usize].prefetch_head();
                        id
                    }
                    None => NEW_SERIES,
                }
            }));
            for ((_, s), &id) in window.drain(..).zip(&ids) {
                let id = match id {
                    NEW_SERIES => self.intern(s.key_bytes, || s.key()),
                    id => id,
                };
                let series = &mut self.series[id as usize];
                for (ts, v) in s.samples {
                    match series.write(ts, v, ooo_window_ms) {
                        Outcome::Rejected => counts.rejected += 1,
                        Outcome::Appended | Outcome::Overlaid => counts.accepted += 1,
                    }
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

    /// Bytes of the index: per-series bookkeeping, hash table and postings.
    pub fn index_bytes(&self) -> usize {
        let series: usize = self.series.iter().map(Series::index_bytes).sum();
        let sealed: usize = self
            .sealed
            .iter()
            .map(|r| {
                std::mem::size_of::<SealedRefs>()
                    + if r.spilled() {
                        r.capacity() * std::mem::size_of::<SealedRef>()
                    } else {
                        0
                    }
            })
            .sum();
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
            + sealed
            + self.keys.capacity()
            + self.index.heap_bytes()
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

/// Grows a vector a quarter at a time, where doubling would leave up to
/// half of it unused: a partition's series, 128 bytes each (a thousand
/// partitions of about 200 series each held 7 MB of unused series slots).
fn reserve_quarter<T>(v: &mut Vec<T>, more: usize) {
    if v.len() + more > v.capacity() {
        v.reserve_exact((v.len() / 4).max(more).max(4));
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

/// One slot of [`HashIndex`]: 16 bytes, four to a cache line.
#[derive(Clone, Copy)]
pub(crate) struct Slot {
    hash: u64,
    /// `NEW_SERIES` marks an empty slot.
    pub id: u32,
    pub key_at: u32,
}

const EMPTY: Slot = Slot {
    hash: 0,
    id: NEW_SERIES,
    key_at: 0,
};

/// Series key hash -> id, linear probing, at most 3/4 full. Hash collisions
/// need no special case: a probe goes on past slots whose key differs.
#[derive(Default)]
pub(crate) struct HashIndex {
    /// Empty, or a power of two of slots.
    slots: Vec<Slot>,
    len: usize,
}

impl HashIndex {
    /// The id of `key` (hashing to `hash`), whose bytes are compared with
    /// the arena `keys`. Canonical keys are prefix-free (their length fields
    /// say where they end), so the arena bytes at a slot's `key_at` that
    /// equal `key` over `key.len()` bytes are that very key.
    #[inline]
    pub fn find(&self, hash: u64, keys: &[u8], key: &[u8]) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot.id == NEW_SERIES {
                return None;
            }
            if slot.hash == hash && keys.get(slot.key_at as usize..)?.starts_with(key) {
                return Some(slot.id);
            }
            i = (i + 1) & mask;
        }
    }

    /// Starts loading the first slot of `hash`'s probe.
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        if let Some(slot) = self
            .slots
            .get(hash as usize & self.slots.len().wrapping_sub(1))
        {
            prefetch(slot);
        }
    }

    /// The first slot of `hash`'s probe, when it holds that hash: where
    /// `find` will most likely end, for loading ahead of it.
    #[inline]
    pub fn first(&self, hash: u64) -> Option<Slot> {
        let slot = *self
            .slots
            .get(hash as usize & self.slots.len().wrapping_sub(1))?;
        (slot.hash == hash && slot.id != NEW_SERIES).then_some(slot)
    }

    /// Adds a key that `find` did not find.
    pub fn insert(&mut self, hash: u64, id: u32, key_at: u32) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        self.place(Slot { hash, id, key_at });
        self.len += 1;
    }

    fn place(&mut self, slot: Slot) {
        let mask = self.slots.len() - 1;
        let mut i = slot.hash as usize & mask;
        while self.slots[i].id != NEW_SERIES {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; size]);
        for slot in old {
            if slot.id != NEW_SERIES {
                self.place(slot);
            }
        }
    }

    /// Forgets every key, keeping the table's size.
    pub fn clear(&mut self) {
        if self.len > 0 {
            self.slots.fill(EMPTY);
            self.len = 0;
        }
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_index_finds_every_key_despite_equal_hashes() {
        let mut index = HashIndex::default();
        let mut keys = Vec::new();
        let key = |i: u32| {
            crate::SeriesKey::new(&format!("r{i}"), "m", &[])
                .unwrap()
                .to_bytes()
        };
        for i in 0..1000u32 {
            let k = key(i);
            // Every third key shares its hash with the one before: the probe
            // must tell them apart by their bytes.
            let hash = u64::from(i - i % 3 / 2);
            assert_eq!(index.find(hash, &keys, &k), None);
            index.insert(hash, i, keys.len() as u32);
            keys.extend_from_slice(&k);
        }
        let mut at = 0;
        for i in 0..1000u32 {
            let k = key(i);
            let hash = u64::from(i - i % 3 / 2);
            assert_eq!(index.find(hash, &keys, &k), Some(i), "key {i}");
            assert_eq!(index.find(hash ^ 1 << 40, &keys, &k), None);
            at += k.len();
        }
        assert_eq!(at, keys.len());
        assert!(index.slots.len() * 3 >= index.len * 4);
    }
}
