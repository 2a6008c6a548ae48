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

/// Where the query engine reads samples from.
pub trait Source: Sync {
    /// Every series matching all `matchers` that has at least one sample in
    /// `[start_ms, end_ms]` (both inclusive), with those samples.
    fn select(&self, matchers: &[Matcher], start_ms: i64, end_ms: i64) -> Vec<SeriesData>;
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
