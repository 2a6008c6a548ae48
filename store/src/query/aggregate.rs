//! Aggregation operators (sum, avg, min, max, count, group, stddev, stdvar, quantile, topk, bottomk, count_values) with `by` / `without`.

use std::collections::HashMap;

use promql_parser::parser::{AggregateExpr, LabelModifier};

use super::eval::{check_unique, Ctx, Elem, Val};
use super::functions::{kahan_inc, quantile, Mean};
use super::{QueryError, Result};
use crate::source::{Labels, METRIC_LABEL};

#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Op {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Group,
    Stddev,
    Stdvar,
    Quantile,
    Topk,
    Bottomk,
    CountValues,
}

impl Op {
    pub fn from_u8(b: u8) -> Option<Op> {
        use Op::*;
        [
            Sum,
            Avg,
            Min,
            Max,
            Count,
            Group,
            Stddev,
            Stdvar,
            Quantile,
            Topk,
            Bottomk,
            CountValues,
        ]
        .into_iter()
        .find(|op| *op as u8 == b)
    }

    /// Folds values one by one into an [`Acc`], with no parameter.
    pub fn folds(self) -> bool {
        !matches!(
            self,
            Op::Quantile | Op::Topk | Op::Bottomk | Op::CountValues
        )
    }
}

pub(crate) fn op(name: &str) -> Result<Op> {
    Ok(match name {
        "sum" => Op::Sum,
        "avg" => Op::Avg,
        "min" => Op::Min,
        "max" => Op::Max,
        "count" => Op::Count,
        "group" => Op::Group,
        "stddev" => Op::Stddev,
        "stdvar" => Op::Stdvar,
        "quantile" => Op::Quantile,
        "topk" => Op::Topk,
        "bottomk" => Op::Bottomk,
        "count_values" => Op::CountValues,
        other => {
            return Err(QueryError::Unsupported(format!(
                "unsupported aggregation: {other}"
            )))
        }
    })
}

/// The running state of one group at one step for the operators that fold
/// values one by one (every operator but topk, bottomk, quantile and
/// count_values, which need all the elements).
#[derive(Clone, Copy, Default)]
pub(crate) struct Acc {
    count: f64,
    value: f64,
    kahan: f64,
    mean: Mean,
    /// Welford's running mean for stddev / stdvar.
    welford_mean: f64,
}

impl Acc {
    #[inline]
    pub fn add(&mut self, op: Op, v: f64) {
        self.count += 1.0;
        let first = self.count == 1.0;
        match op {
            Op::Sum => (self.value, self.kahan) = kahan_inc(v, self.value, self.kahan),
            Op::Avg => self.mean.add(v),
            Op::Min => {
                if first || self.value > v || self.value.is_nan() {
                    self.value = v;
                }
            }
            Op::Max => {
                if first || self.value < v || self.value.is_nan() {
                    self.value = v;
                }
            }
            Op::Stddev | Op::Stdvar => {
                let delta = v - self.welford_mean;
                self.welford_mean += delta / self.count;
                self.value += delta * (v - self.welford_mean);
            }
            Op::Count | Op::Group | Op::Quantile | Op::Topk | Op::Bottomk | Op::CountValues => {}
        }
    }

    /// Folds in what `other` folded from other values, as if they had been
    /// added here (up to rounding: the order of additions differs).
    pub fn merge(&mut self, op: Op, other: &Acc) {
        if other.count == 0.0 {
            return;
        }
        if self.count == 0.0 {
            *self = *other;
            return;
        }
        match op {
            Op::Sum => {
                (self.value, self.kahan) = kahan_inc(other.value, self.value, self.kahan);
                self.kahan += other.kahan;
            }
            Op::Avg => self.mean.merge(&other.mean),
            Op::Min => {
                if self.value > other.value || self.value.is_nan() {
                    self.value = other.value;
                }
            }
            Op::Max => {
                if self.value < other.value || self.value.is_nan() {
                    self.value = other.value;
                }
            }
            // Chan et al.'s pairwise update of Welford's running sums.
            Op::Stddev | Op::Stdvar => {
                let n = self.count + other.count;
                let delta = other.welford_mean - self.welford_mean;
                self.welford_mean += delta * other.count / n;
                self.value += other.value + delta * delta * self.count * other.count / n;
            }
            Op::Count | Op::Group | Op::Quantile | Op::Topk | Op::Bottomk | Op::CountValues => {}
        }
        self.count += other.count;
    }

    /// The state `op` needs, for [`Acc::decode`] on another node.
    pub fn encode(&self, op: Op, out: &mut Vec<u8>) {
        let fields: &[f64] = match op {
            Op::Sum => &[self.count, self.value, self.kahan],
            Op::Avg => &self.mean.fields(),
            Op::Min | Op::Max => &[self.count, self.value],
            Op::Stddev | Op::Stdvar => &[self.count, self.value, self.welford_mean],
            _ => &[self.count],
        };
        for f in fields {
            out.extend_from_slice(&f.to_le_bytes());
        }
    }

    /// Reads what [`Acc::encode`] wrote for `op` from the front of `buf`.
    pub fn decode(op: Op, buf: &mut &[u8]) -> Option<Acc> {
        let mut f = || -> Option<f64> {
            let (head, rest) = buf.split_first_chunk::<8>()?;
            *buf = rest;
            Some(f64::from_le_bytes(*head))
        };
        let mut acc = Acc::default();
        match op {
            Op::Sum => (acc.count, acc.value, acc.kahan) = (f()?, f()?, f()?),
            Op::Avg => {
                acc.mean = Mean::from_fields([f()?, f()?, f()?, f()?, f()?]);
                acc.count = acc.mean.count();
            }
            Op::Min | Op::Max => (acc.count, acc.value) = (f()?, f()?),
            Op::Stddev | Op::Stdvar => {
                (acc.count, acc.value, acc.welford_mean) = (f()?, f()?, f()?)
            }
            _ => acc.count = f()?,
        }
        Some(acc)
    }

    /// Values added so far.
    pub fn count(&self) -> f64 {
        self.count
    }

    /// The folded value, for every operator [`Op::folds`].
    pub fn result(&self, op: Op) -> f64 {
        match op {
            Op::Sum => self.value + self.kahan,
            Op::Avg => self.mean.value(),
            Op::Min | Op::Max => self.value,
            Op::Count => self.count,
            Op::Group => 1.0,
            Op::Stdvar => self.value / self.count,
            Op::Stddev => (self.value / self.count).sqrt(),
            Op::Quantile | Op::Topk | Op::Bottomk | Op::CountValues => f64::NAN,
        }
    }
}

/// One output group's running state.
struct Group {
    labels: Labels,
    acc: Acc,
    values: Vec<f64>,
    elems: Vec<Elem>,
}

impl Group {
    fn new(labels: Labels) -> Group {
        Group {
            labels,
            acc: Acc::default(),
            values: Vec::new(),
            elems: Vec::new(),
        }
    }

    fn add(&mut self, op: Op, e: &Elem) {
        self.acc.add(op, e.value);
        match op {
            Op::Quantile => self.values.push(e.value),
            Op::Topk | Op::Bottomk => self.elems.push(e.clone()),
            _ => {}
        }
    }

    fn result(&mut self, op: Op, q: f64) -> f64 {
        match op {
            Op::Quantile => quantile(q, &mut self.values),
            _ => self.acc.result(op),
        }
    }
}

/// The labels identifying an element's group.
pub(crate) fn group_labels(l: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    let pairs = match modifier {
        None => return Labels::default(),
        Some(LabelModifier::Include(by)) => l
            .iter()
            .filter(|(n, _)| by.labels.iter().any(|b| b == n))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        Some(LabelModifier::Exclude(without)) => l
            .iter()
            .filter(|(n, _)| *n != METRIC_LABEL && !without.labels.iter().any(|b| b == n))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    };
    Labels::new(pairs)
}

pub(crate) fn aggregate(ctx: &Ctx, a: &AggregateExpr, t: i64) -> Result<Val> {
    let op = op(&a.op.to_string())?;
    let param = match &a.param {
        None => None,
        Some(p) => Some(ctx.eval(p, t)?),
    };
    let input = match ctx.eval(&a.expr, t)? {
        Val::Vector(v) => v,
        _ => {
            return Err(QueryError::Execution(
                "aggregation needs an instant vector".into(),
            ))
        }
    };
    let modifier = a.modifier.as_ref();
    match op {
        Op::Topk | Op::Bottomk => top(op, &input, modifier, param_k(param)?),
        Op::CountValues => count_values(&input, modifier, param),
        _ => {
            let q = match param {
                Some(Val::Scalar(q)) => q,
                _ if op == Op::Quantile => {
                    return Err(QueryError::Execution(
                        "quantile needs a scalar parameter".into(),
                    ))
                }
                _ => 0.0,
            };
            let mut groups = grouped(&input, modifier, op);
            Ok(Val::Vector(
                groups
                    .iter_mut()
                    .map(|g| {
                        let v = g.result(op, q);
                        Elem::new(std::mem::take(&mut g.labels), v)
                    })
                    .collect(),
            ))
        }
    }
}

/// Groups in first-seen order, as Prometheus outputs them.
fn grouped(input: &[Elem], modifier: Option<&LabelModifier>, op: Op) -> Vec<Group> {
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    for e in input {
        let key = group_labels(&e.labels, modifier);
        let i = match index.get(&key) {
            Some(&i) => i,
            None => {
                index.insert(key.clone(), groups.len());
                groups.push(Group::new(key));
                groups.len() - 1
            }
        };
        groups[i].add(op, e);
    }
    groups
}

fn param_k(param: Option<Val>) -> Result<i64> {
    match param {
        Some(Val::Scalar(k)) if k.is_nan() => {
            Err(QueryError::Execution("parameter value is NaN".into()))
        }
        Some(Val::Scalar(k)) if k >= i64::MAX as f64 || k <= i64::MIN as f64 => Err(
            QueryError::Execution(format!("scalar value {k} overflows int64")),
        ),
        Some(Val::Scalar(k)) => Ok(k as i64),
        _ => Err(QueryError::Execution(
            "topk and bottomk need a scalar parameter".into(),
        )),
    }
}

/// topk / bottomk: the k largest (smallest) elements of each group with
/// their labels kept; NaN ranks last, and among equal values the earlier
/// element wins, as with Prometheus' heap.
fn top(op: Op, input: &[Elem], modifier: Option<&LabelModifier>, k: i64) -> Result<Val> {
    if k < 1 {
        return Ok(Val::Vector(Vec::new()));
    }
    let k = usize::try_from(k).unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for mut g in grouped(input, modifier, op) {
        g.elems.sort_by(|a, b| rank_order(op, a.value, b.value));
        g.elems.truncate(k);
        out.append(&mut g.elems);
    }
    Ok(Val::Vector(out))
}

/// The order topk (bottomk) ranks values in: largest (smallest) first, NaN
/// last; `Equal` leaves the order to the caller (input order).
pub(crate) fn rank_order(op: Op, a: f64, b: f64) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) if op == Op::Topk => b.total_cmp(&a),
        (false, false) => a.total_cmp(&b),
    }
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`: how Prometheus prints a
/// sample value (shortest form, `NaN`, `+Inf`, `-Inf`).
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

pub(crate) fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// count_values("label", v): per group, how many elements have each value.
fn count_values(
    input: &[Elem],
    modifier: Option<&LabelModifier>,
    param: Option<Val>,
) -> Result<Val> {
    let Some(Val::Str(label)) = param else {
        return Err(QueryError::Execution(
            "count_values needs a string parameter".into(),
        ));
    };
    if !valid_label_name(&label) {
        return Err(QueryError::Execution(format!(
            "invalid label name {label:?}"
        )));
    }
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<Elem> = Vec::new();
    for e in input {
        let mut pairs = group_labels(&e.labels, modifier).into_pairs();
        pairs.push((label.clone(), format_value(e.value)));
        let key = Labels::new(pairs);
        match index.get(&key) {
            Some(&i) => out[i].value += 1.0,
            None => {
                index.insert(key.clone(), out.len());
                out.push(Elem::new(key, 1.0));
            }
        }
    }
    check_unique(&out)?;
    Ok(Val::Vector(out))
}
