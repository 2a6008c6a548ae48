//! The contract between stored data and the query engine: select series by label matchers over a time range.
//!
//! The store implements [`Source`] over its partitions; the node implements it
//! over data gathered from remote replicas; tests implement it over plain
//! vectors. The PromQL engine only ever sees this trait.

use regex::Regex;

/// Label name of the metric, as in Prometheus.
pub const METRIC_LABEL: &str = "__name__";
/// Label name of the resource (the shard key).
pub const RESOURCE_LABEL: &str = "resource";

/// A series' labels, sorted by name, names unique. Always holds `__name__`
/// (the metric) and `resource`, plus the series' tags.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Builds labels from pairs in any order. A later pair with the same name wins.
    pub fn new(mut pairs: Vec<(String, String)>) -> Labels {
        pairs.reverse();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        pairs.dedup_by(|later, earlier| later.0 == earlier.0);
        Labels(pairs)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

/// One label matcher. Regexes are anchored at both ends, as in Prometheus,
/// and compiled once when the matcher is built.
#[derive(Clone, Debug)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Regex>,
}

impl Matcher {
    pub fn new(name: &str, op: MatchOp, value: &str) -> Result<Matcher, regex::Error> {
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(Regex::new(&format!("^(?s:{value})$"))?),
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Matcher {
            name: name.to_string(),
            op,
            value: value.to_string(),
            regex,
        })
    }

    /// Does a label value match? A missing label matches as the empty string,
    /// as in Prometheus.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let value = value.unwrap_or("");
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(value)),
            MatchOp::NotRegex => !self.regex.as_ref().is_some_and(|r| r.is_match(value)),
        }
    }

    pub fn matches_labels(&self, labels: &Labels) -> bool {
        self.matches(labels.get(&self.name))
    }
}

/// One series' samples in a time range, sorted by timestamp, one sample per
/// timestamp.
#[derive(Clone, Debug, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    /// `(timestamp_ms, value)`, strictly increasing timestamps.
    pub samples: Vec<(i64, f64)>,
}

/// Sorts series by labels, stably. Large sets (a query over a whole node
/// gathers hundreds of thousands of series) are sorted by one byte string
/// per series, compared with one `memcmp`: each name and value followed by
/// a 0 byte orders as the labels do, as long as no string holds a 0 byte.
pub fn sort_by_labels(series: &mut Vec<SeriesData>) {
    const KEYED_FROM: usize = 64;
    if series.is_sorted_by(|a, b| a.labels <= b.labels) {
        return;
    }
    let has_zero = |s: &SeriesData| {
        s.labels
            .iter()
            .any(|(n, v)| n.contains('\0') || v.contains('\0'))
    };
    if series.len() < KEYED_FROM || series.iter().any(has_zero) {
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
        return;
    }
    let mut keys = Vec::new();
    let mut ends = Vec::with_capacity(series.len());
    for s in series.iter() {
        for (n, v) in s.labels.iter() {
            keys.extend_from_slice(n.as_bytes());
            keys.push(0);
            keys.extend_from_slice(v.as_bytes());
            keys.push(0);
        }
        ends.push(keys.len());
    }
    let key = |i: usize| &keys[if i == 0 { 0 } else { ends[i - 1] }..ends[i]];
    let mut order: Vec<usize> = (0..series.len()).collect();
    order.sort_by(|&a, &b| key(a).cmp(key(b)));
    let mut slots: Vec<Option<SeriesData>> = std::mem::take(series).into_iter().map(Some).collect();
    series.extend(order.into_iter().filter_map(|i| slots[i].take()));
}

/// What [`Source::for_each_series`] calls with each series: a way to build
/// its labels, and its samples.
pub type SeriesVisitor<'f> = dyn FnMut(&dyn Fn() -> Labels, &[(i64, f64)]) + 'f;

/// Where the query engine reads samples from.
pub trait Source: Sync {
    /// Every series matching all `matchers` that has at least one sample in
    /// `[start_ms, end_ms]` (both inclusive), with those samples; each once
    /// (no two with equal labels), in any order.
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesData>;

    /// Calls `f` once for each series [`Source::select`] answers, in the
    /// same order, with a way to build its labels and its samples, borrowed:
    /// a fold that needs no labels reads without building them, and without
    /// a copy of each series' samples. `false` when the source could not
    /// finish (a partition rebuilt meanwhile): what `f` saw is void, and
    /// `select` answers instead.
    fn for_each_series(
        &self,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        f: &mut SeriesVisitor<'_>,
    ) -> bool {
        for s in self.select(matchers, start_ms, end_ms) {
            f(&|| s.labels.clone(), &s.samples);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        Labels::new(
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    proptest::proptest! {
        #[test]
        fn sorting_by_keys_orders_as_the_labels(
            sets in proptest::collection::vec(
                proptest::collection::vec(("[ab_]{0,2}", "[ab\\x00]{0,3}"), 0..3),
                0..150,
            ),
            zero_free in proptest::bool::ANY,
        ) {
            // Few distinct strings: equal labels, prefixes and missing
            // pairs are common; the index in `samples` shows stability.
            let mut series: Vec<SeriesData> = sets
                .iter()
                .enumerate()
                .map(|(i, pairs)| SeriesData {
                    labels: Labels::new(
                        pairs
                            .iter()
                            .map(|(n, v): &(String, String)| {
                                let v = if zero_free { v.replace('\0', "z") } else { v.clone() };
                                (n.clone(), v)
                            })
                            .collect(),
                    ),
                    samples: vec![(i as i64, 0.0)],
                })
                .collect();
            let mut want = series.clone();
            want.sort_by(|a, b| a.labels.cmp(&b.labels));
            sort_by_labels(&mut series);
            proptest::prop_assert_eq!(series, want);
        }
    }

    #[test]
    fn labels_sort_and_dedup_keep_last() {
        let l = labels(&[("b", "1"), ("a", "2"), ("b", "3")]);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "2"), ("b", "3")]);
        assert_eq!(l.get("b"), Some("3"));
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn matchers_follow_prometheus() {
        let l = labels(&[("__name__", "cpu.usage"), ("resource", "vm1")]);
        let check = |name: &str, op: MatchOp, value: &str, expected: bool| {
            let m = Matcher::new(name, op, value).unwrap();
            assert_eq!(m.matches_labels(&l), expected, "{name} {op:?} {value}");
        };
        check("resource", MatchOp::Equal, "vm1", true);
        check("resource", MatchOp::NotEqual, "vm1", false);
        check("resource", MatchOp::Regex, "vm", false); // anchored
        check("resource", MatchOp::Regex, "vm.*", true);
        check("resource", MatchOp::NotRegex, "vm.*", false);
        check("missing", MatchOp::Equal, "", true); // absent label is ""
        check("missing", MatchOp::NotEqual, "", false);
        check("missing", MatchOp::Regex, ".*", true);
    }
}
