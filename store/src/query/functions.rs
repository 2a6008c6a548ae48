//! PromQL functions: range-vector functions (rate, *_over_time, ...) and instant-vector ones (abs, clamp, sort, ...).

use promql_parser::parser::{Call, Expr, MatrixSelector, SubqueryExpr, VectorSelector};

use super::eval::{check_unique, unparen, Ctx, Elem, Val, Window};
use super::{QueryError, Result};
use crate::source::{Labels, METRIC_LABEL};

/// Neumaier-improved Kahan summation step, as Prometheus' `kahanSumInc`.
#[inline]
pub(crate) fn kahan_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// Prometheus' mean: direct Kahan sum while it does not overflow, then an
/// incremental mean.
#[derive(Default, Clone, Copy)]
pub(crate) struct Mean {
    count: f64,
    sum: f64,
    c: f64,
    mean: f64,
    incremental: bool,
}

impl Mean {
    pub fn add(&mut self, v: f64) {
        self.count += 1.0;
        if !self.incremental {
            let (sum, c) = kahan_inc(v, self.sum, self.c);
            if self.count == 1.0 || !sum.is_infinite() {
                (self.sum, self.c) = (sum, c);
                return;
            }
            self.incremental = true;
            self.mean = self.sum / (self.count - 1.0);
            self.c /= self.count - 1.0;
        }
        let q = (self.count - 1.0) / self.count;
        (self.mean, self.c) = kahan_inc(v / self.count, q * self.mean, q * self.c);
    }

    /// Folds in another mean of other values: their Kahan sums while the
    /// total does not overflow, then the two means weighted by their counts.
    pub fn merge(&mut self, other: &Mean) {
        if other.count == 0.0 {
            return;
        }
        if self.count == 0.0 {
            *self = *other;
            return;
        }
        let count = self.count + other.count;
        if !self.incremental && !other.incremental {
            let (sum, c) = kahan_inc(other.sum, self.sum, self.c);
            if !sum.is_infinite() {
                (self.count, self.sum, self.c) = (count, sum, c + other.c);
                return;
            }
        }
        let mean = self.value() * (self.count / count) + other.value() * (other.count / count);
        *self = Mean {
            count,
            sum: 0.0,
            c: 0.0,
            mean,
            incremental: true,
        };
    }

    pub fn count(&self) -> f64 {
        self.count
    }

    /// The state as plain numbers, for [`Mean::from_fields`].
    pub fn fields(&self) -> [f64; 5] {
        let incremental = if self.incremental { 1.0 } else { 0.0 };
        [self.count, self.sum, self.c, self.mean, incremental]
    }

    pub fn from_fields([count, sum, c, mean, incremental]: [f64; 5]) -> Mean {
        Mean {
            count,
            sum,
            c,
            mean,
            incremental: incremental != 0.0,
        }
    }

    pub fn value(&self) -> f64 {
        if self.incremental {
            self.mean + self.c
        } else {
            self.sum / self.count + self.c / self.count
        }
    }
}

/// Prometheus' quantile: linear interpolation between the closest ranks,
/// NaN sorting first.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// Go's `math.Max`: +Inf wins over NaN, NaN over everything else.
fn go_max(x: f64, y: f64) -> f64 {
    if x == f64::INFINITY || y == f64::INFINITY {
        f64::INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else {
        x.max(y)
    }
}

/// Go's `math.Min`: -Inf wins over NaN, NaN over everything else.
fn go_min(x: f64, y: f64) -> f64 {
    if x == f64::NEG_INFINITY || y == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else {
        x.min(y)
    }
}

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum RangeFn {
    Rate,
    Increase,
    Delta,
    Irate,
    Idelta,
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Last,
    Present,
    Quantile,
    Stddev,
    Stdvar,
    Changes,
    Resets,
    Deriv,
    PredictLinear,
}

pub(crate) fn range_fn(name: &str) -> Option<RangeFn> {
    Some(match name {
        "rate" => RangeFn::Rate,
        "increase" => RangeFn::Increase,
        "delta" => RangeFn::Delta,
        "irate" => RangeFn::Irate,
        "idelta" => RangeFn::Idelta,
        "avg_over_time" => RangeFn::Avg,
        "min_over_time" => RangeFn::Min,
        "max_over_time" => RangeFn::Max,
        "sum_over_time" => RangeFn::Sum,
        "count_over_time" => RangeFn::Count,
        "last_over_time" => RangeFn::Last,
        "present_over_time" => RangeFn::Present,
        "quantile_over_time" => RangeFn::Quantile,
        "stddev_over_time" => RangeFn::Stddev,
        "stdvar_over_time" => RangeFn::Stdvar,
        "changes" => RangeFn::Changes,
        "resets" => RangeFn::Resets,
        "deriv" => RangeFn::Deriv,
        "predict_linear" => RangeFn::PredictLinear,
        _ => return None,
    })
}

pub(crate) fn call(ctx: &Ctx, c: &Call, t: i64) -> Result<Val> {
    let name = c.func.name;
    let args: Vec<&Expr> = c.args.args.iter().map(|a| a.as_ref()).collect();
    if let Some(f) = range_fn(name) {
        return range_call(ctx, f, &args, t);
    }
    let out = match name {
        "time" => return Ok(Val::Scalar(t as f64 / 1000.0)),
        "vector" => {
            return Ok(Val::Vector(vec![Elem::new(
                Labels::default(),
                scalar_arg(ctx, &args, 0, t)?,
            )]))
        }
        "scalar" => {
            let v = vector_arg(ctx, &args, 0, t)?;
            return Ok(Val::Scalar(if v.len() == 1 {
                v[0].value
            } else {
                f64::NAN
            }));
        }
        "sort" | "sort_desc" => return sort(vector_arg(ctx, &args, 0, t)?, name == "sort_desc"),
        "absent" => return absent(ctx, &args, t),
        "absent_over_time" => return absent_over_time(ctx, &args, t),
        "timestamp" => timestamp(ctx, &args, t)?,
        "label_replace" => label_replace(ctx, &args, t)?,
        "abs" => simple(ctx, &args, t, f64::abs)?,
        "ceil" => simple(ctx, &args, t, f64::ceil)?,
        "floor" => simple(ctx, &args, t, f64::floor)?,
        "sqrt" => simple(ctx, &args, t, f64::sqrt)?,
        "exp" => simple(ctx, &args, t, f64::exp)?,
        "ln" => simple(ctx, &args, t, f64::ln)?,
        "log2" => simple(ctx, &args, t, f64::log2)?,
        "log10" => simple(ctx, &args, t, f64::log10)?,
        "sgn" => simple(ctx, &args, t, |v| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        })?,
        "round" => {
            let to_nearest = if args.len() > 1 {
                scalar_arg(ctx, &args, 1, t)?
            } else {
                1.0
            };
            let inverse = 1.0 / to_nearest;
            simple(ctx, &args, t, |v| (v * inverse + 0.5).floor() / inverse)?
        }
        "clamp_min" => {
            let min = scalar_arg(ctx, &args, 1, t)?;
            simple(ctx, &args, t, |v| go_max(min, v))?
        }
        "clamp_max" => {
            let max = scalar_arg(ctx, &args, 1, t)?;
            simple(ctx, &args, t, |v| go_min(max, v))?
        }
        "clamp" => {
            let (min, max) = (scalar_arg(ctx, &args, 1, t)?, scalar_arg(ctx, &args, 2, t)?);
            if max < min {
                return Ok(Val::Vector(Vec::new()));
            }
            simple(ctx, &args, t, |v| go_max(min, go_min(max, v)))?
        }
        _ => {
            return Err(QueryError::Unsupported(format!(
                "unsupported function: {name}"
            )))
        }
    };
    check_unique(&out)?;
    Ok(Val::Vector(out))
}

fn arg<'a>(args: &[&'a Expr], i: usize) -> Result<&'a Expr> {
    args.get(i)
        .copied()
        .ok_or_else(|| QueryError::Execution(format!("missing argument {}", i + 1)))
}

pub(crate) fn scalar_arg(ctx: &Ctx, args: &[&Expr], i: usize, t: i64) -> Result<f64> {
    match ctx.eval(arg(args, i)?, t)? {
        Val::Scalar(v) => Ok(v),
        _ => Err(QueryError::Execution(format!(
            "argument {} must be a scalar",
            i + 1
        ))),
    }
}

fn string_arg(ctx: &Ctx, args: &[&Expr], i: usize, t: i64) -> Result<String> {
    match ctx.eval(arg(args, i)?, t)? {
        Val::Str(s) => Ok(s),
        _ => Err(QueryError::Execution(format!(
            "argument {} must be a string",
            i + 1
        ))),
    }
}

fn vector_arg(ctx: &Ctx, args: &[&Expr], i: usize, t: i64) -> Result<Vec<Elem>> {
    match ctx.eval(arg(args, i)?, t)? {
        Val::Vector(v) => Ok(v),
        _ => Err(QueryError::Execution(format!(
            "argument {} must be an instant vector",
            i + 1
        ))),
    }
}

/// Applies `f` to every value; the metric name goes, as in Prometheus.
fn simple(ctx: &Ctx, args: &[&Expr], t: i64, f: impl Fn(f64) -> f64) -> Result<Vec<Elem>> {
    Ok(vector_arg(ctx, args, 0, t)?
        .iter()
        .map(|e| e.unnamed(f(e.value)))
        .collect())
}

/// `sort` ascending / `sort_desc` descending, NaN last either way; ties keep
/// their order.
fn sort(mut v: Vec<Elem>, descending: bool) -> Result<Val> {
    v.sort_by(|a, b| match (a.value.is_nan(), b.value.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Greater,
        (false, true) => std::cmp::Ordering::Less,
        (false, false) if descending => b.value.total_cmp(&a.value),
        (false, false) => a.value.total_cmp(&b.value),
    });
    Ok(Val::Vector(v))
}

/// `absent(v)`: nothing if `v` has elements, else 1 labelled with the
/// selector's equality matchers (a label matched twice is left out).
fn absent(ctx: &Ctx, args: &[&Expr], t: i64) -> Result<Val> {
    if !vector_arg(ctx, args, 0, t)?.is_empty() {
        return Ok(Val::Vector(Vec::new()));
    }
    let vs = match arg(args, 0)? {
        Expr::VectorSelector(vs) => Some(vs),
        _ => None,
    };
    Ok(Val::Vector(vec![Elem::new(absent_labels(vs), 1.0)]))
}

/// `timestamp(v)`: a selected sample's own time in seconds; for any other
/// expression, the evaluation time.
fn timestamp(ctx: &Ctx, args: &[&Expr], t: i64) -> Result<Vec<Elem>> {
    let e = unparen(arg(args, 0)?);
    if let Expr::VectorSelector(vs) = e {
        return Ok(ctx
            .newest_samples(vs, t)
            .map(|(s, ts, _)| Elem {
                labels: s.unnamed().clone(),
                unnamed: s.unnamed().clone(),
                value: ts as f64 / 1000.0,
            })
            .collect());
    }
    simple(ctx, args, t, |_| t as f64 / 1000.0)
}

/// `absent_over_time(m[r])`: like `absent`, for a window.
fn absent_over_time(ctx: &Ctx, args: &[&Expr], t: i64) -> Result<Val> {
    let (present, vs) = match matrix_arg(args, 0)? {
        RangeArg::Selector(ms) => (ctx.windows(ms, t).next().is_some(), Some(&ms.vs)),
        RangeArg::Subquery(sq) => (
            ctx.subquery(sq, t)?
                .series
                .iter()
                .any(|s| !s.samples.is_empty()),
            None,
        ),
    };
    if present {
        return Ok(Val::Vector(Vec::new()));
    }
    Ok(Val::Vector(vec![Elem::new(absent_labels(vs), 1.0)]))
}

/// The labels `absent` reports: the selector's equality matchers, minus
/// the name and any label matched twice.
fn absent_labels(vs: Option<&VectorSelector>) -> Labels {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut conflicts: Vec<String> = Vec::new();
    let matchers = vs
        .filter(|vs| vs.matchers.or_matchers.is_empty())
        .map(|vs| &vs.matchers.matchers);
    for m in matchers.into_iter().flatten() {
        if m.name == METRIC_LABEL || m.op != promql_parser::label::MatchOp::Equal {
            continue;
        }
        if pairs.iter().any(|(n, _)| *n == m.name) {
            conflicts.push(m.name.clone());
        } else {
            pairs.push((m.name.clone(), m.value.clone()));
        }
    }
    pairs.retain(|(n, _)| !conflicts.contains(n));
    Labels::new(pairs)
}

/// A range-vector argument: a selector, or a subquery.
enum RangeArg<'a> {
    Selector(&'a MatrixSelector),
    Subquery(&'a SubqueryExpr),
}

fn matrix_arg<'a>(args: &[&'a Expr], i: usize) -> Result<RangeArg<'a>> {
    let e = unparen(arg(args, i)?);
    match e {
        Expr::MatrixSelector(ms) => Ok(RangeArg::Selector(ms)),
        Expr::Subquery(sq) => Ok(RangeArg::Subquery(sq)),
        _ => Err(QueryError::Execution(format!(
            "argument {} must be a range vector",
            i + 1
        ))),
    }
}

fn range_call(ctx: &Ctx, f: RangeFn, args: &[&Expr], t: i64) -> Result<Val> {
    // The scalar parameter: quantile_over_time's first argument,
    // predict_linear's second (seconds ahead).
    let (q, range) = match f {
        RangeFn::Quantile => (scalar_arg(ctx, args, 0, t)?, matrix_arg(args, 1)?),
        RangeFn::PredictLinear => (scalar_arg(ctx, args, 1, t)?, matrix_arg(args, 0)?),
        _ => (0.0, matrix_arg(args, 0)?),
    };
    let sub;
    let windows: Vec<Window> = match range {
        RangeArg::Selector(ms) => ctx.windows(ms, t).collect(),
        RangeArg::Subquery(sq) => {
            sub = ctx.subquery(sq, t)?;
            sub.series
                .iter()
                .filter(|s| !s.samples.is_empty())
                .map(|s| Window {
                    series: s,
                    samples: &s.samples,
                    range_start_ms: sub.range_start_ms,
                    range_end_ms: sub.range_end_ms,
                    range_ms: sub.range_ms,
                })
                .collect()
        }
    };
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    for w in &windows {
        let Some(v) = range_value(f, w, q, t, &mut scratch) else {
            continue;
        };
        // last_over_time acts like an offset, so it keeps the metric name.
        let labels = if f == RangeFn::Last {
            &w.series.labels
        } else {
            w.series.unnamed()
        };
        out.push(Elem {
            labels: labels.clone(),
            unnamed: w.series.unnamed().clone(),
            value: v,
        });
    }
    check_unique(&out)?;
    Ok(Val::Vector(out))
}

pub(crate) fn range_value(
    f: RangeFn,
    w: &Window,
    q: f64,
    t: i64,
    scratch: &mut Vec<f64>,
) -> Option<f64> {
    let s = w.samples;
    let values = || s.iter().map(|p| p.1);
    Some(match f {
        RangeFn::Rate => extrapolated_rate(w, true, true)?,
        RangeFn::Increase => extrapolated_rate(w, true, false)?,
        RangeFn::Delta => extrapolated_rate(w, false, false)?,
        RangeFn::Irate => instant_value(s, true)?,
        RangeFn::Idelta => instant_value(s, false)?,
        RangeFn::Avg => {
            // Mean's direct Kahan sum, without its per-sample switch check:
            // a finite total means it never switched (an infinite running
            // sum never turns finite again); otherwise replay it exactly.
            let (sum, c) = values().fold((0.0, 0.0), |(sum, c), v| kahan_inc(v, sum, c));
            if sum.is_finite() {
                let n = s.len() as f64;
                sum / n + c / n
            } else {
                let mut m = Mean::default();
                values().for_each(|v| m.add(v));
                m.value()
            }
        }
        RangeFn::Min => values().fold(s[0].1, |m, v| if v < m || m.is_nan() { v } else { m }),
        RangeFn::Max => values().fold(s[0].1, |m, v| if v > m || m.is_nan() { v } else { m }),
        RangeFn::Sum => {
            let (sum, c) = values().fold((0.0, 0.0), |(sum, c), v| kahan_inc(v, sum, c));
            if sum.is_infinite() {
                sum
            } else {
                sum + c
            }
        }
        RangeFn::Count => s.len() as f64,
        RangeFn::Last => s[s.len() - 1].1,
        RangeFn::Present => 1.0,
        RangeFn::Quantile => {
            scratch.clear();
            scratch.extend(values());
            quantile(q, scratch)
        }
        RangeFn::Stddev => stdvar_over_time(s).sqrt(),
        RangeFn::Stdvar => stdvar_over_time(s),
        RangeFn::Changes => s
            .windows(2)
            .filter(|p| p[1].1 != p[0].1 && !(p[1].1.is_nan() && p[0].1.is_nan()))
            .count() as f64,
        // The intercept is taken near the samples to keep precision.
        RangeFn::Deriv if s.len() >= 2 => linear_regression(s, s[0].0).0,
        RangeFn::PredictLinear if s.len() >= 2 => {
            let (slope, intercept) = linear_regression(s, t);
            slope * q + intercept
        }
        RangeFn::Deriv | RangeFn::PredictLinear => return None,
        RangeFn::Resets => s.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64,
    })
}

fn stdvar_over_time(s: &[(i64, f64)]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in s {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Prometheus' `extrapolatedRate` (rate, increase, delta): the change over
/// the window, corrected for counter resets, extrapolated to the window's
/// edges unless the series seems to start or end inside it, and never to
/// below zero for a counter.
fn extrapolated_rate(w: &Window, is_counter: bool, is_rate: bool) -> Option<f64> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    let (first, last) = (s[0], s[s.len() - 1]);
    let mut result = last.1 - first.1;
    if is_counter {
        let mut prev = 0.0;
        for &(_, v) in s {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first.0 - w.range_start_ms) as f64 / 1000.0;
    let mut to_end = (w.range_end_ms - last.0) as f64 / 1000.0;
    let sampled = (last.0 - first.0) as f64 / 1000.0;
    let average = sampled / (s.len() - 1) as f64;
    let threshold = average * 1.1;
    if to_start >= threshold {
        to_start = average / 2.0;
    }
    if is_counter && result > 0.0 && first.1 >= 0.0 {
        let to_zero = sampled * (first.1 / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    if to_end >= threshold {
        to_end = average / 2.0;
    }
    let mut factor = (sampled + to_start + to_end) / sampled;
    if is_rate {
        factor /= w.range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// Prometheus' `instantValue` (irate, idelta): from the last two samples.
fn instant_value(s: &[(i64, f64)], is_rate: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let (prev, last) = (s[s.len() - 2], s[s.len() - 1]);
    let mut v = if is_rate && last.1 < prev.1 {
        last.1
    } else {
        last.1 - prev.1
    };
    let interval = last.0 - prev.0;
    if interval == 0 {
        return None;
    }
    if is_rate {
        v /= interval as f64 / 1000.0;
    }
    Some(v)
}

/// `label_replace(v, dst, replacement, src, regex)`: where the anchored
/// regex matches label `src`, label `dst` becomes the expanded replacement
/// (removed when empty); other elements pass unchanged, name included.
fn label_replace(ctx: &Ctx, args: &[&Expr], t: i64) -> Result<Vec<Elem>> {
    let v = vector_arg(ctx, args, 0, t)?;
    let (dst, replacement) = (string_arg(ctx, args, 1, t)?, string_arg(ctx, args, 2, t)?);
    let (src, regex) = (string_arg(ctx, args, 3, t)?, string_arg(ctx, args, 4, t)?);
    if !super::aggregate::valid_label_name(&dst) {
        return Err(QueryError::Execution(format!(
            "invalid destination label name in label_replace(): {dst}"
        )));
    }
    let re = ctx.regex(&regex)?;
    Ok(v.into_iter()
        .map(|e| {
            let Some(caps) = re.captures(e.labels.get(&src).unwrap_or("")) else {
                return e;
            };
            let mut value = String::new();
            caps.expand(&replacement, &mut value);
            let mut pairs: Vec<(String, String)> = e
                .labels
                .iter()
                .filter(|(n, _)| *n != dst)
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            if !value.is_empty() {
                pairs.push((dst.clone(), value));
            }
            Elem::new(Labels::new(pairs), e.value)
        })
        .collect())
}

/// Prometheus' `linearRegression`: least squares with Kahan sums over
/// seconds relative to `intercept_ms`; `(slope, intercept)`.
fn linear_regression(s: &[(i64, f64)], intercept_ms: i64) -> (f64, f64) {
    let init_y = s[0].1;
    let mut const_y = true;
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    for (i, &(ts, v)) in s.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (ts - intercept_ms) as f64 / 1e3;
        (sum_x, c_x) = kahan_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_inc(v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_inc(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    (slope, sum_y / n - slope * sum_x / n)
}
