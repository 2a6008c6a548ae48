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
    pub fn new(series: Vec<SeriesData>) -> VecSource {
        let mut source = VecSource::default();
        for s in series {
            let sorted = s.samples.windows(2).all(|w| w[0].0 < w[1].0);
            if sorted && !source.series.contains_key(&s.labels) {
                source.series.insert(s.labels, s.samples);
                continue;
            }
            for (t, v) in s.samples {
                source.push(&s.labels, t, v);
            }
        }
        source
    }

    /// Adds one sample, overwriting a sample of the same series and timestamp.
    pub fn push(&mut self, labels: &Labels, timestamp_ms: i64, value: f64) {
        let samples = match self.series.get_mut(labels) {
            Some(s) => s,
            None => self.series.entry(labels.clone()).or_default(),
        };
        match samples.last() {
            Some(&(last, _)) if last < timestamp_ms => samples.push((timestamp_ms, value)),
            None => samples.push((timestamp_ms, value)),
            Some(_) => match samples.binary_search_by_key(&timestamp_ms, |s| s.0) {
                Ok(i) => samples[i].1 = value,
                Err(i) => samples.insert(i, (timestamp_ms, value)),
            },
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
