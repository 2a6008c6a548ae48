//! Sources built from plain vectors (tests, benches, data fetched from remote replicas) and their union.

use std::collections::BTreeMap;

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
    pub fn new(mut series: Vec<SeriesData>) -> VecSource {
        // Stable: series with equal labels stay in input order.
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        let mut merged: Vec<(Labels, Vec<(i64, f64)>)> = Vec::with_capacity(series.len());
        for s in series {
            match merged.last_mut() {
                Some((labels, samples)) if *labels == s.labels => {
                    samples.extend(s.samples);
                    last_wins(samples);
                }
                _ => {
                    let mut samples = s.samples;
                    last_wins(&mut samples);
                    merged.push((s.labels, samples));
                }
            }
        }
        VecSource {
            // From sorted, distinct keys: built in one pass.
            series: merged.into_iter().collect(),
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
