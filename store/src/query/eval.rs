//! The evaluator: loads every selector's data once, then evaluates the AST at each step.

use std::cell::{OnceCell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use promql_parser::parser::value::ValueType;
use promql_parser::parser::{Expr, MatrixSelector, SubqueryExpr, VectorSelector};
use regex::Regex;

use super::fold::{self, Folded};
use super::plan::{self, duration_ms, key, reference_ms, subquery_times};
use super::{aggregate, binary, functions, series_major, QueryError, QueryOptions, Result, Value};
use crate::source::{Labels, SeriesData, Source, METRIC_LABEL};

/// One loaded series, with its labels with and without the metric name so
/// that steps which drop the name share one copy (made when first asked
/// for: an aggregation of a selector never asks).
pub(crate) struct Series {
    pub labels: Arc<Labels>,
    unnamed: OnceCell<Arc<Labels>>,
    pub samples: Vec<(i64, f64)>,
}

impl Series {
    pub fn new(labels: Arc<Labels>, samples: Vec<(i64, f64)>) -> Series {
        Series {
            labels,
            unnamed: OnceCell::new(),
            samples,
        }
    }

    /// The labels without the metric name.
    pub fn unnamed(&self) -> &Arc<Labels> {
        self.unnamed.get_or_init(|| without_name(&self.labels))
    }
}

/// `e` without the parentheses around it.
pub(crate) fn unparen(mut e: &Expr) -> &Expr {
    while let Expr::Paren(p) = e {
        e = &p.expr;
    }
    e
}

/// One element of an instant vector: current labels, the same labels
/// without `__name__`, and the value.
#[derive(Clone, Debug)]
pub(crate) struct Elem {
    pub labels: Arc<Labels>,
    pub unnamed: Arc<Labels>,
    pub value: f64,
}

impl Elem {
    pub fn new(labels: Labels, value: f64) -> Elem {
        let labels = Arc::new(labels);
        Elem {
            unnamed: without_name(&labels),
            labels,
            value,
        }
    }

    /// The element without its metric name, as functions and arithmetic return it.
    pub fn unnamed(&self, value: f64) -> Elem {
        Elem {
            labels: self.unnamed.clone(),
            unnamed: self.unnamed.clone(),
            value,
        }
    }
}

pub(crate) fn without_name(labels: &Arc<Labels>) -> Arc<Labels> {
    if labels.get(METRIC_LABEL).is_none() {
        return labels.clone();
    }
    Arc::new(Labels::new(
        labels
            .iter()
            .filter(|(n, _)| *n != METRIC_LABEL)
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
    ))
}

/// One series of a range vector: labels and samples.
pub(crate) type RangeSeries = (Arc<Labels>, Vec<(i64, f64)>);

/// A value during evaluation.
pub(crate) enum Val {
    Scalar(f64),
    Vector(Vec<Elem>),
    Matrix(Vec<RangeSeries>),
    Str(String),
}

/// Prometheus' check after every step of a function or operator.
pub(crate) fn check_unique(v: &[Elem]) -> Result<()> {
    if v.len() < 2 {
        return Ok(());
    }
    let mut seen = HashSet::with_capacity(v.len());
    for e in v {
        if !seen.insert(&*e.labels) {
            return Err(QueryError::Execution(
                "vector cannot contain metrics with the same labelset".into(),
            ));
        }
    }
    Ok(())
}

/// A window of one series' samples as a range function sees it.
pub(crate) struct Window<'a> {
    pub series: &'a Series,
    pub samples: &'a [(i64, f64)],
    pub range_start_ms: i64,
    pub range_end_ms: i64,
    pub range_ms: i64,
}

/// A subquery evaluated at one outer time: series and their window.
pub(crate) struct SubqueryResult {
    pub series: Vec<Series>,
    pub range_start_ms: i64,
    pub range_end_ms: i64,
    pub range_ms: i64,
}

pub(crate) struct Ctx {
    max_subquery_points: usize,
    data: HashMap<usize, Vec<Series>>,
    /// The answers of the aggregations the nodes folded, by their address
    /// in the AST: each group's values at the query's steps.
    folded: HashMap<usize, Vec<SeriesData>>,
    /// Regexes of function arguments, compiled once per query, not per step.
    regexes: RefCell<HashMap<String, Regex>>,
    pub start_ms: i64,
    pub end_ms: i64,
    lookback_ms: i64,
}

impl Ctx {
    /// Fetches every selector's data for the whole query, within the
    /// limits, but for the aggregations in `folded`, whose answers are
    /// taken from their partials instead.
    pub fn load_folded(
        source: &dyn Source,
        ast: &Expr,
        start_ms: i64,
        end_ms: i64,
        opts: &QueryOptions,
        folded: Folded,
    ) -> Result<Ctx> {
        let foldable = fold::foldable(ast);
        let folded: HashMap<usize, Vec<SeriesData>> = folded
            .into_iter()
            .map(|(i, p)| {
                let e = *foldable.get(i).ok_or_else(|| {
                    QueryError::Execution(format!("the query has no foldable aggregation {i}"))
                })?;
                let op = series_major::Fold::of(e).map(|f| f.op());
                if op != Some(p.op) || p.start_ms != start_ms {
                    return Err(QueryError::Execution(format!(
                        "aggregation {i} was folded as {:?} from {} ms, not as the query's {op:?} from {start_ms} ms",
                        p.op, p.start_ms
                    )));
                }
                Ok((fold::key(e), p.finish()))
            })
            .collect::<Result<_>>()?;
        let skip = folded.keys().copied().collect();
        let planned = plan::plan(ast, start_ms, end_ms, opts.lookback_ms, &skip)?;
        let mut ctx = Ctx::load_planned(source, &planned, start_ms, end_ms, opts, true)?;
        ctx.folded = folded;
        Ok(ctx)
    }

    /// Loads what `planned` (the plan of the AST to be evaluated) selects:
    /// each selector's series sorted by labels, as the evaluator needs them
    /// (the order of its answers), or, without `by_labels`, in the order
    /// the source gave them (enough to fold an aggregation).
    pub fn load_planned(
        source: &dyn Source,
        planned: &[plan::Planned],
        start_ms: i64,
        end_ms: i64,
        opts: &QueryOptions,
        by_labels: bool,
    ) -> Result<Ctx> {
        let mut data = HashMap::new();
        let (mut series_total, mut samples_total) = (0usize, 0usize);
        for p in planned {
            let selected = select_groups(source, &p.groups, p.start_ms, p.end_ms, by_labels);
            series_total += selected.len();
            if series_total > opts.max_series {
                return Err(QueryError::TooManySeries {
                    series: series_total,
                    max: opts.max_series,
                });
            }
            samples_total += selected.iter().map(|s| s.samples.len()).sum::<usize>();
            if samples_total > opts.max_samples {
                return Err(QueryError::TooManySamples {
                    samples: samples_total,
                    max: opts.max_samples,
                });
            }
            let series = selected
                .into_iter()
                .map(|s| Series::new(Arc::new(s.labels), s.samples))
                .collect();
            data.insert(p.key, series);
        }
        Ok(Ctx {
            max_subquery_points: opts.max_points_per_series,
            data,
            folded: HashMap::new(),
            regexes: RefCell::default(),
            start_ms,
            end_ms,
            lookback_ms: opts.lookback_ms,
        })
    }

    /// A query's answer at `t`. A bare range selector, the raw read of a
    /// series, moves its samples out of the loaded data instead of copying
    /// them.
    pub fn into_instant(mut self, ast: &Expr, t: i64) -> Result<Value> {
        let Expr::MatrixSelector(ms) = unparen(ast) else {
            return self.instant(ast, t);
        };
        let range_ms = duration_ms(&ms.range);
        let end = reference_ms(&ms.vs, t, self.start_ms, self.end_ms);
        let start = end.saturating_sub(range_ms);
        let series = self.data.remove(&key(&ms.vs)).unwrap_or_default();
        Ok(Self::matrix(series.into_iter().filter_map(|s| {
            let mut samples = s.samples;
            samples.truncate(samples.partition_point(|p| p.0 <= end));
            samples.drain(..samples.partition_point(|p| p.0 <= start));
            (!samples.is_empty()).then_some((s.labels, samples))
        })))
    }

    pub fn instant(&self, ast: &Expr, t: i64) -> Result<Value> {
        Ok(match self.eval(ast, t)? {
            Val::Scalar(v) => Value::Scalar(t, v),
            Val::Str(s) => Value::String(t, s),
            Val::Vector(v) => Value::Vector(
                v.into_iter()
                    .map(|e| (Arc::unwrap_or_clone(e.labels), t, e.value))
                    .collect(),
            ),
            Val::Matrix(m) => Self::matrix(m),
        })
    }

    /// A range vector as an answer, sorted by labels.
    fn matrix(m: impl IntoIterator<Item = RangeSeries>) -> Value {
        let mut out: Vec<SeriesData> = m
            .into_iter()
            .map(|(labels, samples)| SeriesData {
                labels: Arc::unwrap_or_clone(labels),
                samples,
            })
            .collect();
        crate::source::sort_by_labels(&mut out);
        Value::Matrix(out)
    }

    pub fn range(&self, ast: &Expr, start_ms: i64, step_ms: i64, points: usize) -> Result<Value> {
        let vt = ast.value_type();
        if vt != ValueType::Scalar && vt != ValueType::Vector {
            return Err(QueryError::BadParam(format!(
                "invalid expression type {vt} for range query, must be scalar or instant vector"
            )));
        }
        if let Some(m) = self.folded.get(&fold::key(unparen(ast))) {
            return Ok(Value::Matrix(m.clone()));
        }
        if let Some(m) = series_major::range(self, ast, start_ms, step_ms, points) {
            return Ok(Value::Matrix(m));
        }
        let mut out: HashMap<Arc<Labels>, Vec<(i64, f64)>> = HashMap::new();
        for k in 0..points as i64 {
            let t = start_ms + k * step_ms;
            match self.eval(ast, t)? {
                Val::Scalar(v) => out
                    .entry(Arc::new(Labels::default()))
                    .or_default()
                    .push((t, v)),
                Val::Vector(v) => {
                    for e in v {
                        out.entry(e.labels).or_default().push((t, e.value));
                    }
                }
                Val::Matrix(_) | Val::Str(_) => {
                    return Err(QueryError::Execution(format!(
                        "expression of type {vt} evaluated to another type"
                    )))
                }
            }
        }
        Ok(Self::matrix(out))
    }

    pub fn eval(&self, e: &Expr, t: i64) -> Result<Val> {
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Val::Str(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Val::Scalar(v) => Ok(Val::Scalar(-v)),
                Val::Vector(v) => {
                    let out: Vec<Elem> = v.iter().map(|e| e.unnamed(-e.value)).collect();
                    check_unique(&out)?;
                    Ok(Val::Vector(out))
                }
                _ => Err(QueryError::Execution(
                    "unary minus needs a scalar or a vector".into(),
                )),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.instant_selector(vs, t))),
            Expr::MatrixSelector(ms) => Ok(Val::Matrix(
                self.windows(ms, t)
                    .map(|w| (w.series.labels.clone(), w.samples.to_vec()))
                    .collect(),
            )),
            Expr::Call(c) => functions::call(self, c, t),
            Expr::Aggregate(_) if self.folded.contains_key(&fold::key(e)) => {
                Ok(Val::Vector(self.folded_at(e, t)))
            }
            Expr::Aggregate(a) => aggregate::aggregate(self, a, t),
            Expr::Binary(b) => binary::binary(self, b, t),
            Expr::Subquery(sq) => Ok(Val::Matrix(
                self.subquery(sq, t)?
                    .series
                    .into_iter()
                    .map(|s| (s.labels, s.samples))
                    .collect(),
            )),
            Expr::Extension(_) => Err(QueryError::Unsupported(
                "extension expressions are not supported".into(),
            )),
        }
    }

    /// A folded aggregation's elements at step `t`.
    fn folded_at(&self, e: &Expr, t: i64) -> Vec<Elem> {
        let groups = self.folded.get(&fold::key(e)).map(Vec::as_slice);
        let mut elems: Vec<Elem> = groups
            .unwrap_or_default()
            .iter()
            .filter_map(|g| {
                let i = g.samples.binary_search_by_key(&t, |p| p.0).ok()?;
                Some(Elem::new(g.labels.clone(), g.samples[i].1))
            })
            .collect();
        let fold = series_major::Fold::of(e);
        if let Some(f) =
            fold.filter(|f| matches!(f.op(), aggregate::Op::Topk | aggregate::Op::Bottomk))
        {
            // As `topk` lists its elements: group by group (in label order
            // here; the evaluator's first appearance), best first.
            elems.sort_by(|a, b| {
                aggregate::rank_order(f.op(), a.value, b.value)
                    .then_with(|| a.labels.cmp(&b.labels))
            });
            elems.sort_by_cached_key(|e| aggregate::group_labels(&e.labels, f.modifier()));
        }
        elems
    }

    /// How far back an instant selector looks for a sample.
    pub fn lookback_ms(&self) -> i64 {
        self.lookback_ms
    }

    /// A function argument's regex, anchored as in Prometheus, compiled once.
    pub fn regex(&self, pattern: &str) -> Result<Regex> {
        if let Some(re) = self.regexes.borrow().get(pattern) {
            return Ok(re.clone());
        }
        let re = Regex::new(&format!("^(?s:{pattern})$")).map_err(|e| {
            QueryError::Execution(format!(
                "invalid regular expression in label_replace(): {pattern}: {e}"
            ))
        })?;
        self.regexes
            .borrow_mut()
            .insert(pattern.to_string(), re.clone());
        Ok(re)
    }

    pub fn series(&self, vs: &VectorSelector) -> &[Series] {
        self.data.get(&key(vs)).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The newest sample of each series in `(t - lookback, t]`.
    fn instant_selector(&self, vs: &VectorSelector, t: i64) -> Vec<Elem> {
        self.newest_samples(vs, t)
            .map(|(s, _, v)| Elem {
                labels: s.labels.clone(),
                unnamed: s.unnamed().clone(),
                value: v,
            })
            .collect()
    }

    /// Each series with its newest sample in `(t - lookback, t]`, as `(series, timestamp_ms, value)`.
    pub fn newest_samples<'a>(
        &'a self,
        vs: &'a VectorSelector,
        t: i64,
    ) -> impl Iterator<Item = (&'a Series, i64, f64)> + 'a {
        let at = reference_ms(vs, t, self.start_ms, self.end_ms);
        let oldest = at.saturating_sub(self.lookback_ms);
        self.series(vs).iter().filter_map(move |s| {
            let i = s.samples.partition_point(|p| p.0 <= at);
            let (ts, v) = *s.samples.get(i.checked_sub(1)?)?;
            (ts > oldest).then_some((s, ts, v))
        })
    }

    /// A subquery's series at outer time `t`: its expression evaluated at
    /// each of its steps in the window.
    pub fn subquery(&self, sq: &SubqueryExpr, t: i64) -> Result<SubqueryResult> {
        let (first, end, step) = subquery_times(sq, t, self.start_ms, self.end_ms);
        let points = if end < first {
            0
        } else {
            (end - first) / step + 1
        };
        if points > self.max_subquery_points as i64 {
            return Err(QueryError::TooManyPoints {
                points: points as u64,
                max: self.max_subquery_points,
            });
        }
        let mut index: HashMap<Arc<Labels>, usize> = HashMap::new();
        let mut series: Vec<Series> = Vec::new();
        for k in 0..points {
            let ts = first + k * step;
            let elems = match self.eval(&sq.expr, ts)? {
                Val::Vector(v) => v,
                Val::Scalar(v) => vec![Elem::new(Labels::default(), v)],
                _ => {
                    return Err(QueryError::Execution(
                        "subquery needs an instant vector".into(),
                    ))
                }
            };
            for e in elems {
                let i = *index.entry(e.labels.clone()).or_insert_with(|| {
                    series.push(Series {
                        labels: e.labels.clone(),
                        unnamed: OnceCell::from(e.unnamed.clone()),
                        samples: Vec::new(),
                    });
                    series.len() - 1
                });
                series[i].samples.push((ts, e.value));
            }
        }
        Ok(SubqueryResult {
            series,
            range_start_ms: end.saturating_sub(duration_ms(&sq.range)),
            range_end_ms: end,
            range_ms: duration_ms(&sq.range),
        })
    }

    /// Each series' samples in `(t - range, t]`, series without any skipped.
    pub fn windows<'a>(
        &'a self,
        ms: &'a MatrixSelector,
        t: i64,
    ) -> impl Iterator<Item = Window<'a>> + 'a {
        let range_ms = duration_ms(&ms.range);
        let end = reference_ms(&ms.vs, t, self.start_ms, self.end_ms);
        let start = end.saturating_sub(range_ms);
        self.series(&ms.vs).iter().filter_map(move |s| {
            let lo = s.samples.partition_point(|p| p.0 <= start);
            let hi = s.samples.partition_point(|p| p.0 <= end);
            (lo < hi).then(|| Window {
                series: s,
                samples: &s.samples[lo..hi],
                range_start_ms: start,
                range_end_ms: end,
                range_ms,
            })
        })
    }
}

/// Selects every `or` group and merges series seen by several groups.
fn select_groups(
    source: &dyn Source,
    groups: &[Vec<crate::Matcher>],
    start_ms: i64,
    end_ms: i64,
    by_labels: bool,
) -> Vec<SeriesData> {
    if start_ms > end_ms {
        return Vec::new();
    }
    if let [only] = groups {
        let mut selected = source.select(only, start_ms, end_ms);
        if by_labels {
            crate::source::sort_by_labels(&mut selected);
        }
        return selected;
    }
    let mut merged = BTreeMap::new();
    for g in groups {
        for s in source.select(g, start_ms, end_ms) {
            merged.entry(s.labels).or_insert(s.samples);
        }
    }
    merged
        .into_iter()
        .map(|(labels, samples)| SeriesData { labels, samples })
        .collect()
}
