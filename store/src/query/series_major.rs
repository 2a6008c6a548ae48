//! Range queries of the shape dashboards send most, `agg(selector)` and
//! `agg(f(selector[r]))`, evaluated one series at a time over every step
//! instead of one step at a time over every series.
//!
//! The generic evaluator, at each of the steps, finds every series' sample
//! by binary search, builds an element for it and hashes its group's
//! labels. Here each series' group is found once, its samples are walked
//! once with cursors that only move forward, and each value is folded
//! straight into its group's accumulator at that step. The values are
//! folded in the same order as the generic evaluator's (series order, at
//! each step), so the answer is the same bit for bit. Any other shape
//! returns `None` and takes the generic path.

use std::collections::{HashMap, HashSet};

use promql_parser::parser::{AggregateExpr, Expr, MatrixSelector, VectorSelector};

use super::aggregate::{group_labels, op, Acc};
use super::eval::{unparen, Ctx, Series, Window};
use super::functions::{range_fn, range_value, RangeFn};
use super::plan::{duration_ms, reference_ms};
use crate::source::{Labels, SeriesData};

/// Accumulators (groups × steps) above which the generic path, which holds
/// one step at a time, is used instead.
const MAX_CELLS: usize = 1 << 20;

/// What is aggregated: an instant selector, or a range function of a
/// matrix selector with a constant parameter.
enum Inner<'a> {
    Selector(&'a VectorSelector),
    Range {
        f: RangeFn,
        ms: &'a MatrixSelector,
        q: f64,
    },
}

impl<'a> Inner<'a> {
    fn of(e: &'a Expr) -> Option<Inner<'a>> {
        match unparen(e) {
            Expr::VectorSelector(vs) => Some(Inner::Selector(vs)),
            Expr::Call(c) => {
                let f = range_fn(c.func.name)?;
                let args: Vec<&Expr> = c.args.args.iter().map(|a| unparen(a)).collect();
                // Where the range and the scalar parameter are, as in
                // functions::range_call; a parameter must be a literal.
                let (range, q) = match (f, args.as_slice()) {
                    (RangeFn::Quantile, [Expr::NumberLiteral(q), r]) => (*r, q.val),
                    (RangeFn::PredictLinear, [r, Expr::NumberLiteral(q)]) => (*r, q.val),
                    (RangeFn::Quantile | RangeFn::PredictLinear, _) => return None,
                    (_, [r]) => (*r, 0.0),
                    _ => return None,
                };
                match range {
                    Expr::MatrixSelector(ms) => Some(Inner::Range { f, ms, q }),
                    _ => None,
                }
            }
            _ => None,
        }
    }

    fn series<'c>(&self, ctx: &'c Ctx) -> &'c [Series] {
        match self {
            Inner::Selector(vs) => ctx.series(vs),
            Inner::Range { ms, .. } => ctx.series(&ms.vs),
        }
    }

    /// The labels an element of series `s` carries: a range function drops
    /// the metric name, except last_over_time.
    fn labels<'s>(&self, s: &'s Series) -> &'s Labels {
        match self {
            Inner::Range { f, .. } if *f != RangeFn::Last => &s.unnamed,
            _ => &s.labels,
        }
    }

    /// Calls `add(k, value)` for every step `k` at which series `s` has an
    /// element, in step order.
    fn each_step(
        &self,
        ctx: &Ctx,
        s: &Series,
        (start_ms, step_ms, points): (i64, i64, usize),
        scratch: &mut Vec<f64>,
        mut add: impl FnMut(usize, f64),
    ) {
        let samples = &s.samples;
        // The first sample after `at`, from `i` on: cursors only move
        // forward (every step's reference time is at or after the last's),
        // so all the steps together walk each sample once.
        let after = |mut i: usize, at: i64| {
            while samples.get(i).is_some_and(|p| p.0 <= at) {
                i += 1;
            }
            i
        };
        match self {
            Inner::Selector(vs) => {
                let mut i = 0;
                for k in 0..points {
                    let t = start_ms + k as i64 * step_ms;
                    let at = reference_ms(vs, t, ctx.start_ms, ctx.end_ms);
                    i = after(i, at);
                    if let Some(&(ts, v)) = i.checked_sub(1).map(|j| &samples[j]) {
                        if ts > at.saturating_sub(ctx.lookback_ms()) {
                            add(k, v);
                        }
                    }
                }
            }
            Inner::Range { f, ms, q } => {
                let range_ms = duration_ms(&ms.range);
                let (mut lo, mut hi) = (0, 0);
                for k in 0..points {
                    let t = start_ms + k as i64 * step_ms;
                    let end = reference_ms(&ms.vs, t, ctx.start_ms, ctx.end_ms);
                    let start = end.saturating_sub(range_ms);
                    lo = after(lo, start);
                    hi = after(hi.max(lo), end);
                    if lo >= hi {
                        continue;
                    }
                    let w = Window {
                        series: s,
                        samples: &samples[lo..hi],
                        range_start_ms: start,
                        range_end_ms: end,
                        range_ms,
                    };
                    if let Some(v) = range_value(*f, &w, *q, t, scratch) {
                        add(k, v);
                    }
                }
            }
        }
    }
}

/// `ast` over `points` steps from `start_ms`, if it has a shape this path
/// evaluates; the matrix is sorted by labels.
pub(crate) fn range(
    ctx: &Ctx,
    ast: &Expr,
    start_ms: i64,
    step_ms: i64,
    points: usize,
) -> Option<Vec<SeriesData>> {
    let Expr::Aggregate(AggregateExpr {
        op: name,
        expr,
        param: None,
        modifier,
    }) = unparen(ast)
    else {
        return None;
    };
    let op = op(&name.to_string()).ok().filter(|op| op.folds())?;
    let inner = Inner::of(expr)?;
    let series = inner.series(ctx);
    // Two series whose elements carry the same labels make the generic
    // evaluator fail at the steps where both have one; leave that to it.
    // Labels in strictly increasing order (a selector's series, as loaded)
    // are distinct without hashing them.
    let increasing = series
        .windows(2)
        .all(|w| inner.labels(&w[0]) < inner.labels(&w[1]));
    if !increasing {
        let mut seen = HashSet::with_capacity(series.len());
        if !series.iter().all(|s| seen.insert(inner.labels(s))) {
            return None;
        }
    }

    let (groups, group_of) = match modifier {
        // Everything in one group.
        None => (vec![Labels::default()], vec![0; series.len()]),
        Some(modifier) => {
            let mut index: HashMap<Labels, usize> = HashMap::new();
            let mut groups: Vec<Labels> = Vec::new();
            let group_of: Vec<usize> = series
                .iter()
                .map(|s| {
                    let key = group_labels(inner.labels(s), Some(modifier));
                    *index.entry(key).or_insert_with_key(|key| {
                        groups.push(key.clone());
                        groups.len() - 1
                    })
                })
                .collect();
            (groups, group_of)
        }
    };
    let cells = groups.len().checked_mul(points)?;
    if cells > MAX_CELLS {
        return None;
    }
    let mut acc = vec![Acc::default(); cells];
    let mut scratch = Vec::new();
    for (s, &g) in series.iter().zip(&group_of) {
        let row = &mut acc[g * points..(g + 1) * points];
        inner.each_step(ctx, s, (start_ms, step_ms, points), &mut scratch, |k, v| {
            row[k].add(op, v)
        });
    }

    let mut out: Vec<SeriesData> = groups
        .into_iter()
        .zip(acc.chunks(points.max(1)))
        .filter_map(|(labels, row)| {
            let samples: Vec<(i64, f64)> = row
                .iter()
                .enumerate()
                .filter(|(_, a)| a.count() > 0.0)
                .map(|(k, a)| (start_ms + k as i64 * step_ms, a.result(op)))
                .collect();
            (!samples.is_empty()).then_some(SeriesData { labels, samples })
        })
        .collect();
    crate::source::sort_by_labels(&mut out);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::{parse, QueryOptions, VecSource};

    /// Windows are open on the left: a sample exactly a lookback (or a
    /// range) before a step is not in it.
    #[test]
    fn windows_are_open_on_the_left() {
        let source = VecSource::new(vec![SeriesData {
            labels: Labels::new(vec![("__name__".into(), "m".into())]),
            samples: vec![(0, 1.0), (10_000, 2.0)],
        }]);
        let run = |q: &str, start: i64, end: i64| {
            let o = QueryOptions::default();
            match crate::query::range_query(&source, q, start, end, 10_000, &o).unwrap() {
                crate::query::Value::Matrix(m) => m[0].samples.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            run("sum(m)", 290_000, 320_000),
            vec![(290_000, 2.0), (300_000, 2.0)]
        );
        assert_eq!(
            run("sum(count_over_time(m[10s]))", 0, 30_000),
            vec![(0, 1.0), (10_000, 1.0)]
        );
    }

    /// Which queries take this path; that its answers are the generic
    /// evaluator's is `range_equals_instant_at_each_step` (tests.rs).
    #[test]
    fn takes_the_shapes_it_evaluates_and_leaves_the_rest() {
        let labels = |name: &str| {
            Labels::new(vec![
                ("__name__".into(), name.into()),
                ("resource".into(), "a".into()),
            ])
        };
        let samples = vec![(0, 1.0), (10_000, 2.0)];
        let source = VecSource::new(vec![
            SeriesData {
                labels: labels("m"),
                samples: samples.clone(),
            },
            SeriesData {
                labels: labels("n"),
                samples,
            },
        ]);
        let taken = |q: &str| {
            let ast = parse(q).unwrap();
            let ctx = Ctx::load(&source, &ast, 0, 60_000, &QueryOptions::default()).unwrap();
            range(&ctx, &ast, 0, 10_000, 7).is_some()
        };
        for q in [
            "sum(m)",
            "(max by (resource) (m offset 1m))",
            "sum(rate(m[1m]))",
            "avg(quantile_over_time(0.5, m[1m]))",
            "min(predict_linear(m[1m], 60))",
            "count(last_over_time({resource=\"a\"}[1m]))",
        ] {
            assert!(taken(q), "{q}");
        }
        for q in [
            "m",
            "topk(1, m)",
            "quantile(0.5, m)",
            "sum(m + 1)",
            "sum(quantile_over_time(scalar(m), m[1m]))",
            "sum(rate(m[1m:10s]))",
            // m and n without their name collide: the generic path's error.
            "sum(rate({resource=\"a\"}[1m]))",
        ] {
            assert!(!taken(q), "{q}");
        }
    }
}
