//! Sources built from plain vectors (tests, benches, data fetched from remote replicas) and their union.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::Selection;
use crate::source::{Labels, Matcher, SeriesData, Source};

/// Series held in memory, each with samples sorted by timestamp.
#[derive(Clone, Debug, Default)]
pub struct VecSource {
    series: BTreeMap<Labels, Vec<(i64, f64)>>,
}

impl VecSource {
    /// Builds a source from series in any order; samples of series with
    /// equal labels are merged, and for one timestamp the later sample wins
    /// (as a retried write overwrites).
    ///
    /// One sort by labels and one bulk build: per series, not per sample,
    /// since a query over a whole node gathers hundreds of thousands.
    pub fn new(series: Vec<SeriesData>) -> VecSource {
        VecSource {
            // From sorted, distinct keys: built in one pass.
            series: sorted_merged(series)
                .into_iter()
                .map(|s| (s.labels, s.samples))
                .collect(),
        }
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }
}

impl Source for VecSource {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesData> {
        self.series
            .iter()
            .filter(|(labels, _)| matchers.iter().all(|m| m.matches_labels(labels)))
            .filter_map(|(labels, samples)| {
                let lo = samples.partition_point(|s| s.0 < start_ms);
                let hi = samples.partition_point(|s| s.0 <= end_ms);
                (lo < hi).then(|| SeriesData {
                    labels: labels.clone(),
                    samples: samples[lo..hi].to_vec(),
                })
            })
            .collect()
    }
}

/// Several sources seen as one: series with equal labels are merged, and
/// for one timestamp the first source that has it wins (replicas hold the
/// same samples, so any copy will do).
pub struct UnionSource<'a> {
    sources: Vec<&'a dyn Source>,
}

impl<'a> UnionSource<'a> {
    pub fn new(sources: Vec<&'a dyn Source>) -> UnionSource<'a> {
        UnionSource { sources }
    }
}

impl Source for UnionSource<'_> {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesData> {
        let mut merged: BTreeMap<Labels, Vec<(i64, f64)>> = BTreeMap::new();
        for source in &self.sources {
            for s in source.select(matchers, start_ms, end_ms) {
                match merged.get_mut(&s.labels) {
                    None => {
                        merged.insert(s.labels, s.samples);
                    }
                    Some(existing) => *existing = merge_first_wins(existing, &s.samples),
                }
            }
        }
        merged
            .into_iter()
            .map(|(labels, samples)| SeriesData { labels, samples })
            .collect()
    }
}

/// Series sorted by labels, those with equal labels merged: for one
/// timestamp the later sample wins (as a retried write overwrites).
fn sorted_merged(mut series: Vec<SeriesData>) -> Vec<SeriesData> {
    // Stable: series with equal labels stay in input order.
    crate::source::sort_by_labels(&mut series);
    let mut merged: Vec<SeriesData> = Vec::with_capacity(series.len());
    for mut s in series {
        match merged.last_mut() {
            Some(last) if last.labels == s.labels => {
                last.samples.extend(s.samples);
                last_wins(&mut last.samples);
            }
            _ => {
                last_wins(&mut s.samples);
                merged.push(s);
            }
        }
    }
    merged
}

/// What a node fetched for each selection of one query (see
/// [`super::selectors`]), handed to the engine as it asks for it: moved on
/// the last request for a selection instead of copied, so that a large
/// query holds its samples once, not twice.
///
/// The engine asks for exactly the selections `selectors` listed, as many
/// times as listed, since both come from the same plan.
pub struct FetchedSource {
    fetched: Mutex<Vec<Fetched>>,
}

struct Fetched {
    selection: Selection,
    /// Requests still to come; the last one takes the series.
    left: usize,
    series: Vec<SeriesData>,
}

impl Selection {
    fn is(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> bool {
        self.start_ms == start_ms
            && self.end_ms == end_ms
            && self.matchers.len() == matchers.len()
            && self
                .matchers
                .iter()
                .zip(matchers)
                .all(|(a, b)| a.name == b.name && a.op == b.op && a.value == b.value)
    }
}

impl FetchedSource {
    /// A source for `selections` as `selectors` listed them, each distinct
    /// one to be filled once with [`FetchedSource::fill`].
    pub fn new(selections: Vec<Selection>) -> FetchedSource {
        let mut fetched: Vec<Fetched> = Vec::new();
        for selection in selections {
            let (s, start, end) = (&selection.matchers, selection.start_ms, selection.end_ms);
            match fetched.iter_mut().find(|f| f.selection.is(s, start, end)) {
                Some(f) => f.left += 1,
                None => fetched.push(Fetched {
                    selection,
                    left: 1,
                    series: Vec::new(),
                }),
            }
        }
        FetchedSource {
            fetched: Mutex::new(fetched),
        }
    }

    /// The distinct selections to fetch, in the order `fill` takes them.
    pub fn selections(&self) -> Vec<Selection> {
        let fetched = self.fetched.lock().expect("poisoned");
        fetched.iter().map(|f| f.selection.clone()).collect()
    }

    /// The series fetched for selection `i` of [`FetchedSource::selections`].
    pub fn fill(&mut self, i: usize, series: Vec<SeriesData>) {
        let fetched = self.fetched.get_mut().expect("poisoned");
        fetched[i].series = sorted_merged(series);
    }
}

impl Source for FetchedSource {
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesData> {
        let mut fetched = self.fetched.lock().expect("poisoned");
        if let Some(f) = fetched
            .iter_mut()
            .find(|f| f.left > 0 && f.selection.is(matchers, start_ms, end_ms))
        {
            f.left -= 1;
            return if f.left == 0 {
                std::mem::take(&mut f.series)
            } else {
                f.series.clone()
            };
        }
        // Not a listed selection (the plan changed under us): answer from
        // what is still held, as a VecSource over all of it would.
        let held = fetched
            .iter()
            .flat_map(|f| f.series.iter().cloned())
            .collect();
        VecSource::new(held).select(matchers, start_ms, end_ms)
    }
}

/// Sorts samples by timestamp, keeping the last of equal timestamps (the
/// sort is stable); a no-op on strictly increasing samples.
fn last_wins(samples: &mut Vec<(i64, f64)>) {
    if samples.windows(2).all(|w| w[0].0 < w[1].0) {
        return;
    }
    samples.sort_by_key(|s| s.0);
    let mut out: Vec<(i64, f64)> = Vec::with_capacity(samples.len());
    for &(t, v) in samples.iter() {
        match out.last_mut() {
            Some(last) if last.0 == t => last.1 = v,
            _ => out.push((t, v)),
        }
    }
    *samples = out;
}

/// Merges two sorted sample lists; on equal timestamps `first` wins.
fn merge_first_wins(first: &[(i64, f64)], second: &[(i64, f64)]) -> Vec<(i64, f64)> {
    let mut out = Vec::with_capacity(first.len() + second.len());
    let (mut i, mut j) = (0, 0);
    while i < first.len() && j < second.len() {
        match first[i].0.cmp(&second[j].0) {
            std::cmp::Ordering::Less => {
                out.push(first[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(second[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push(first[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&first[i..]);
    out.extend_from_slice(&second[j..]);
    out
}
