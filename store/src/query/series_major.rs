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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use promql_parser::parser::{AggregateExpr, Expr, LabelModifier, MatrixSelector, VectorSelector};

use super::aggregate::{group_labels, op, rank_order, Acc, Op};
use super::eval::{unparen, without_name, Ctx, Series, Window};
use super::functions::{range_fn, range_value, RangeFn};
use super::plan::{duration_ms, reference_ms};
use super::QueryOptions;
use crate::source::{Labels, Matcher, SeriesData, Source};

/// Accumulators (groups × steps, times k for topk/bottomk) above which the
/// generic path, which holds one step at a time, is used instead.
const MAX_CELLS: usize = 1 << 20;
/// The largest k of a topk/bottomk that folds (a literal): each partition
/// keeps k elements per group and step.
const MAX_FOLDED_K: usize = 10_000;

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

    /// Whether elements drop the metric name: a range function does, but
    /// last_over_time.
    fn unnamed(&self) -> bool {
        matches!(self, Inner::Range { f, .. } if *f != RangeFn::Last)
    }

    /// The labels an element of series `s` carries.
    fn labels<'s>(&self, s: &'s Series) -> &'s Labels {
        if self.unnamed() {
            s.unnamed()
        } else {
            &s.labels
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
        match self {
            Inner::Selector(vs) => {
                SelectorSteps::new(vs, ctx, (start_ms, step_ms, points)).each(samples, add)
            }
            Inner::Range { f, ms, q } => {
                let range_ms = duration_ms(&ms.range);
                let (mut lo, mut hi) = (0, 0);
                for k in 0..points {
                    let t = start_ms + k as i64 * step_ms;
                    let end = reference_ms(&ms.vs, t, ctx.start_ms, ctx.end_ms);
                    let start = end.saturating_sub(range_ms);
                    lo = after(samples, lo, start);
                    hi = after(samples, hi.max(lo), end);
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

/// The first sample after `at`, from `i` on: cursors only move forward
/// (every step's reference time is at or after the last's), so all the
/// steps together walk each sample once.
fn after(samples: &[(i64, f64)], mut i: usize, at: i64) -> usize {
    while samples.get(i).is_some_and(|p| p.0 <= at) {
        i += 1;
    }
    i
}

/// Where each step of an instant selector looks for its sample: the
/// step's reference time (its `@` and `offset` applied) and the time its
/// lookback ends before, computed once for every series.
struct SelectorSteps(Vec<(i64, i64)>);

impl SelectorSteps {
    fn new(vs: &VectorSelector, ctx: &Ctx, (start_ms, step_ms, points): (i64, i64, usize)) -> Self {
        SelectorSteps(
            (0..points)
                .map(|k| {
                    let t = start_ms + k as i64 * step_ms;
                    let at = reference_ms(vs, t, ctx.start_ms, ctx.end_ms);
                    (at, at.saturating_sub(ctx.lookback_ms()))
                })
                .collect(),
        )
    }

    /// [`Inner::each_step`] of the selector: the sample each step's
    /// lookback finds. Reference times never decrease, so one cursor walks
    /// the samples once; steps before the first sample are skipped, and the
    /// walk stops once the last sample is out of every later lookback.
    #[inline]
    fn each(&self, samples: &[(i64, f64)], mut add: impl FnMut(usize, f64)) {
        let Some(&(first, _)) = samples.first() else {
            return;
        };
        let from = self.0.partition_point(|&(at, _)| at < first);
        let mut i = 0;
        for (k, &(at, floor)) in self.0.iter().enumerate().skip(from) {
            while i < samples.len() && samples[i].0 <= at {
                i += 1;
            }
            // i >= 1: `at` is at or after the first sample.
            let (ts, v) = samples[i - 1];
            if ts > floor {
                add(k, v);
            } else if i == samples.len() {
                break;
            }
        }
    }
}

/// What [`Fold::fold_streamed`] reads: the series `matchers` select
/// from `source` in `range`, within the limits of `opts`.
pub(crate) struct Read<'a> {
    pub ctx: &'a Ctx,
    pub source: &'a dyn Source,
    pub matchers: &'a [Matcher],
    pub range: (i64, i64),
    pub opts: &'a QueryOptions,
}

/// How [`Fold::fold_streamed`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Streamed {
    /// The partial holds the aggregation.
    Folded,
    /// The aggregation does not fold here (as [`Fold::fold`]'s `None`).
    Declined,
    /// Fold the loaded series instead.
    Fallback,
}

/// An aggregation of the shape this path evaluates: `op by/without (...)
/// (inner)` with an operator that folds values one by one, or
/// `topk`/`bottomk` with a literal k, which keeps each group's k best.
pub(crate) struct Fold<'a> {
    op: Op,
    inner: Inner<'a>,
    modifier: Option<&'a LabelModifier>,
    /// topk/bottomk's k; 0 for the other operators.
    k: usize,
}

impl<'a> Fold<'a> {
    pub fn of(e: &'a Expr) -> Option<Fold<'a>> {
        let Expr::Aggregate(AggregateExpr {
            op: name,
            expr,
            param,
            modifier,
        }) = unparen(e)
        else {
            return None;
        };
        let op = op(&name.to_string()).ok()?;
        let k = match (op, param) {
            (op, None) if op.folds() => 0,
            // k truncated as the evaluator takes it; any other parameter
            // (k < 1, NaN, an expression) is the generic path's to answer.
            (Op::Topk | Op::Bottomk, Some(p)) => match unparen(p) {
                Expr::NumberLiteral(n) if (1.0..MAX_FOLDED_K as f64 + 1.0).contains(&n.val) => {
                    n.val as usize
                }
                _ => return None,
            },
            _ => return None,
        };
        Some(Fold {
            op,
            inner: Inner::of(expr)?,
            modifier: modifier.as_ref(),
            k,
        })
    }

    pub fn op(&self) -> Op {
        self.op
    }

    pub fn modifier(&self) -> Option<&'a LabelModifier> {
        self.modifier
    }

    /// The partial of no series at all, at `points` steps from `start_ms`.
    pub fn empty(&self, start_ms: i64, step_ms: i64, points: usize) -> Partial {
        let mut p = Partial::new(self.op, start_ms, step_ms, points);
        p.k = self.k;
        p.unnamed = self.inner.unnamed();
        p
    }

    /// Folds the series `ctx` loaded for this aggregation into `partial`,
    /// each at every step of it. `None` when two of them would carry the
    /// same labels (the generic evaluator fails at the steps where both
    /// have an element) or the groups would take too many cells.
    pub fn fold(&self, ctx: &Ctx, partial: &mut Partial) -> Option<()> {
        let series = self.inner.series(ctx);
        // A source answers each series once: only a function that drops
        // the metric name can make two carry the same labels. Labels in
        // strictly increasing order (as the evaluator loads a selector's
        // series) are distinct without hashing them.
        let renamed = self.inner.unnamed();
        let increasing = || {
            series
                .windows(2)
                .all(|w| self.inner.labels(&w[0]) < self.inner.labels(&w[1]))
        };
        if renamed && !increasing() {
            let mut seen = HashSet::with_capacity(series.len());
            if !series.iter().all(|s| seen.insert(self.inner.labels(s))) {
                return None;
            }
        }
        let group_of: Vec<usize> = match self.modifier {
            // Everything in one group.
            None if series.is_empty() => Vec::new(),
            None => vec![partial.group(Labels::default())?; series.len()],
            Some(m) => series
                .iter()
                .map(|s| partial.group(group_labels(self.inner.labels(s), Some(m))))
                .collect::<Option<_>>()?,
        };
        if self.k > 0 {
            let points = partial.points;
            let steps = (partial.start_ms, partial.step_ms, points);
            let mut scratch = Vec::new();
            for (s, &g) in series.iter().zip(group_of.iter()) {
                self.inner.each_step(ctx, s, steps, &mut scratch, |k, v| {
                    partial.rank(g * points + k, v, &s.labels)
                });
            }
            return Some(());
        }
        // The loop made once per operator that dashboards fold most, so
        // that its accumulator step is inlined without a match per value.
        match self.op {
            Op::Sum => self.fold_rows(ctx, series, &group_of, partial, |a, v| a.add(Op::Sum, v)),
            Op::Avg => self.fold_rows(ctx, series, &group_of, partial, |a, v| a.add(Op::Avg, v)),
            op => self.fold_rows(ctx, series, &group_of, partial, |a, v| a.add(op, v)),
        }
        Some(())
    }

    /// [`Fold::fold`] of an instant selector over what `read` selects, each
    /// series folded as the source reads it: no copy of its samples, and
    /// no labels built unless `by`/`without` groups them. The series come
    /// in the order `select` gives them, so the answer is the same bit for
    /// bit. `Fallback` (with `partial` to be thrown away) for any other
    /// shape, when a limit of `read.opts` is exceeded (the loading path
    /// reports it), or when the source could not finish.
    pub fn fold_streamed(&self, read: &Read<'_>, partial: &mut Partial) -> Streamed {
        let Inner::Selector(vs) = self.inner else {
            return Streamed::Fallback;
        };
        if self.k > 0 {
            // topk/bottomk rank series by their labels on ties: loaded.
            return Streamed::Fallback;
        }
        match self.op {
            Op::Sum => self.stream(vs, read, partial, |a, v| a.add(Op::Sum, v)),
            Op::Avg => self.stream(vs, read, partial, |a, v| a.add(Op::Avg, v)),
            op => self.stream(vs, read, partial, |a, v| a.add(op, v)),
        }
    }

    fn stream(
        &self,
        vs: &VectorSelector,
        read: &Read<'_>,
        partial: &mut Partial,
        add: impl Fn(&mut Acc, f64),
    ) -> Streamed {
        let (opts, (start_ms, end_ms)) = (read.opts, read.range);
        let steps = SelectorSteps::new(
            vs,
            read.ctx,
            (partial.start_ms, partial.step_ms, partial.points),
        );
        let (mut series, mut samples) = (0usize, 0usize);
        let mut outcome = Streamed::Folded;
        // The one group of an aggregation without `by`/`without`, made
        // with the first series (no series, no group).
        let mut all = None;
        let finished =
            read.source
                .for_each_series(read.matchers, start_ms, end_ms, &mut |labels, s| {
                    if outcome != Streamed::Folded {
                        return;
                    }
                    series += 1;
                    samples += s.len();
                    if series > opts.max_series || samples > opts.max_samples {
                        outcome = Streamed::Fallback;
                        return;
                    }
                    let g = match (self.modifier, all) {
                        (None, Some(g)) => Some(g),
                        (None, None) => {
                            all = partial.group(Labels::default());
                            all
                        }
                        (Some(m), _) => partial.group(group_labels(&labels(), Some(m))),
                    };
                    let Some(g) = g else {
                        outcome = Streamed::Declined;
                        return;
                    };
                    let points = partial.points;
                    let row = &mut partial.acc[g * points..(g + 1) * points];
                    steps.each(s, |k, v| add(&mut row[k], v));
                });
        if finished {
            outcome
        } else {
            Streamed::Fallback
        }
    }

    fn fold_rows(
        &self,
        ctx: &Ctx,
        series: &[Series],
        group_of: &[usize],
        partial: &mut Partial,
        add: impl Fn(&mut Acc, f64),
    ) {
        let points = partial.points;
        let steps = (partial.start_ms, partial.step_ms, points);
        let mut scratch = Vec::new();
        for (s, &g) in series.iter().zip(group_of) {
            let row = &mut partial.acc[g * points..(g + 1) * points];
            self.inner
                .each_step(ctx, s, steps, &mut scratch, |k, v| add(&mut row[k], v));
        }
    }
}

/// An aggregation's groups at each step of a query, still open: partials
/// of disjoint series (one per partition, one per node) merge into the
/// partial of all of them, which [`Partial::finish`] turns into the answer.
#[derive(Clone)]
pub struct Partial {
    pub(crate) op: Op,
    pub(crate) start_ms: i64,
    pub(crate) step_ms: i64,
    pub(crate) points: usize,
    groups: Vec<Labels>,
    index: HashMap<Labels, usize>,
    /// `points` cells per group, group by group.
    acc: Vec<Acc>,
    /// topk/bottomk: how many elements a cell keeps (0 for the other
    /// operators), and whether elements drop the metric name.
    k: usize,
    unnamed: bool,
    /// topk/bottomk's cells, laid out as `acc`: the best `k` values with
    /// their series' labels, best first; equal values rank in label order,
    /// which is the evaluator's input order.
    ranked: Vec<Ranked>,
}

/// A topk/bottomk cell: values and their series' labels, best first.
type Ranked = Vec<(f64, Arc<Labels>)>;

impl Partial {
    pub(crate) fn new(op: Op, start_ms: i64, step_ms: i64, points: usize) -> Partial {
        Partial {
            op,
            start_ms,
            step_ms,
            points,
            groups: Vec::new(),
            index: HashMap::new(),
            acc: Vec::new(),
            k: 0,
            unnamed: false,
            ranked: Vec::new(),
        }
    }

    /// The index of the group with `labels`, added if new; `None` when the
    /// groups would take more than [`MAX_CELLS`] cells.
    fn group(&mut self, labels: Labels) -> Option<usize> {
        if let Some(&g) = self.index.get(&labels) {
            return Some(g);
        }
        let cells = (self.groups.len() + 1).checked_mul(self.points)?;
        if cells.checked_mul(self.k.max(1))? > MAX_CELLS {
            return None;
        }
        self.index.insert(labels.clone(), self.groups.len());
        self.groups.push(labels);
        if self.k > 0 {
            self.ranked.resize(cells, Vec::new());
        } else {
            self.acc.resize(cells, Acc::default());
        }
        Some(self.groups.len() - 1)
    }

    /// Offers the value `v` of the series labelled `key` to topk/bottomk's
    /// cell `cell`: kept if it ranks among the cell's best `k`.
    fn rank(&mut self, cell: usize, v: f64, key: &Arc<Labels>) {
        let (op, k) = (self.op, self.k);
        let list = &mut self.ranked[cell];
        let at = list
            .partition_point(|(w, l)| rank_order(op, *w, v).then_with(|| (**l).cmp(key)).is_lt());
        if at < k {
            list.insert(at, (v, key.clone()));
            list.truncate(k);
        }
    }

    /// Folds in `other`, the partial of other series of the same
    /// aggregation; `None` (and `self` unusable) when the two do not fold
    /// the same aggregation or together they take too many cells.
    pub fn merge(&mut self, other: Partial) -> Option<()> {
        if (other.op, other.start_ms, other.step_ms, other.points)
            != (self.op, self.start_ms, self.step_ms, self.points)
            || (other.k, other.unnamed) != (self.k, self.unnamed)
        {
            return None;
        }
        let points = self.points;
        for (i, labels) in other.groups.into_iter().enumerate() {
            let g = self.group(labels)?;
            let cells = i * points..(i + 1) * points;
            if self.k > 0 {
                for (j, cell) in other.ranked[cells].iter().enumerate() {
                    for (v, key) in cell {
                        self.rank(g * points + j, *v, key);
                    }
                }
            } else {
                let row = &other.acc[cells];
                for (acc, o) in self.acc[g * points..(g + 1) * points].iter_mut().zip(row) {
                    acc.merge(self.op, o);
                }
            }
        }
        Some(())
    }

    /// Each group's series of results, at the steps where it has values,
    /// sorted by labels.
    pub(crate) fn finish(self) -> Vec<SeriesData> {
        let (op, points) = (self.op, self.points);
        if self.k > 0 {
            // Each kept element's series, at the steps where it ranked; a
            // series is in one group, whose cells come step by step.
            let mut out: BTreeMap<Arc<Labels>, Vec<(i64, f64)>> = BTreeMap::new();
            for (j, cell) in self.ranked.iter().enumerate() {
                let t = self.start_ms + (j % points.max(1)) as i64 * self.step_ms;
                for (v, key) in cell {
                    let labels = if self.unnamed {
                        without_name(key)
                    } else {
                        key.clone()
                    };
                    out.entry(labels).or_default().push((t, *v));
                }
            }
            return out
                .into_iter()
                .map(|(labels, samples)| SeriesData {
                    labels: Arc::unwrap_or_clone(labels),
                    samples,
                })
                .collect();
        }
        let mut out: Vec<SeriesData> = self
            .groups
            .into_iter()
            .zip(self.acc.chunks(points.max(1)))
            .filter_map(|(labels, row)| {
                let samples: Vec<(i64, f64)> = row
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.count() > 0.0)
                    .map(|(k, a)| (self.start_ms + k as i64 * self.step_ms, a.result(op)))
                    .collect();
                (!samples.is_empty()).then_some(SeriesData { labels, samples })
            })
            .collect();
        crate::source::sort_by_labels(&mut out);
        out
    }

    /// The partial as bytes, for [`Partial::decode`] on another node: the
    /// groups' labels, and the state of each cell that folded a value
    /// (topk/bottomk: each cell's kept values and their series' labels).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.op as u8);
        out.extend_from_slice(&self.start_ms.to_le_bytes());
        out.extend_from_slice(&self.step_ms.to_le_bytes());
        put_num(out, self.points);
        put_num(out, self.k);
        out.push(u8::from(self.unnamed));
        put_num(out, self.groups.len());
        let points = self.points;
        for (g, labels) in self.groups.iter().enumerate() {
            put_labels(out, labels);
            let cells = g * points..(g + 1) * points;
            if self.k > 0 {
                let present: Vec<(usize, &Ranked)> = self.ranked[cells]
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| !c.is_empty())
                    .collect();
                put_num(out, present.len());
                for (j, cell) in present {
                    put_num(out, j);
                    put_num(out, cell.len());
                    for (v, key) in cell {
                        out.extend_from_slice(&v.to_le_bytes());
                        put_labels(out, key);
                    }
                }
            } else {
                let present: Vec<(usize, &Acc)> = self.acc[cells]
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| a.count() > 0.0)
                    .collect();
                put_num(out, present.len());
                for (j, acc) in present {
                    put_num(out, j);
                    acc.encode(self.op, out);
                }
            }
        }
    }

    /// Reads what [`Partial::encode`] wrote.
    pub fn decode(mut buf: &[u8]) -> Result<Partial, String> {
        let buf = &mut buf;
        let bad = || "truncated or malformed partial aggregate".to_string();
        let op = *take(buf, 1).ok_or_else(bad)?.first().ok_or_else(bad)?;
        let op = Op::from_u8(op).ok_or_else(bad)?;
        let start_ms = take_num(buf).ok_or_else(bad)? as i64;
        let step_ms = take_num(buf).ok_or_else(bad)? as i64;
        let points = take_num(buf).ok_or_else(bad)? as usize;
        let k = take_num(buf).ok_or_else(bad)? as usize;
        let unnamed = match take(buf, 1).ok_or_else(bad)? {
            [0] => false,
            [1] => true,
            _ => return Err(bad()),
        };
        if (k > 0) != matches!(op, Op::Topk | Op::Bottomk) || k > MAX_FOLDED_K {
            return Err(bad());
        }
        let mut p = Partial::new(op, start_ms, step_ms, points);
        (p.k, p.unnamed) = (k, unnamed);
        let groups = take_num(buf).ok_or_else(bad)?;
        for _ in 0..groups {
            let labels = take_labels(buf).ok_or_else(bad)?;
            let g = p
                .group(labels)
                .ok_or_else(|| format!("a partial aggregate of more than {MAX_CELLS} cells"))?;
            for _ in 0..take_num(buf).ok_or_else(bad)? {
                let j = take_num(buf).ok_or_else(bad)? as usize;
                if j >= points {
                    return Err(bad());
                }
                if k > 0 {
                    let n = take_num(buf).ok_or_else(bad)?;
                    if n as usize > k {
                        return Err(bad());
                    }
                    for _ in 0..n {
                        let v = f64::from_le_bytes(
                            take(buf, 8)
                                .ok_or_else(bad)?
                                .try_into()
                                .map_err(|_| bad())?,
                        );
                        let key = Arc::new(take_labels(buf).ok_or_else(bad)?);
                        p.rank(g * points + j, v, &key);
                    }
                } else {
                    p.acc[g * points + j] = Acc::decode(op, buf).ok_or_else(bad)?;
                }
            }
        }
        if !buf.is_empty() {
            return Err(bad());
        }
        Ok(p)
    }
}

fn put_num(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn put_labels(out: &mut Vec<u8>, labels: &Labels) {
    put_num(out, labels.len());
    for (n, v) in labels.iter() {
        for s in [n, v] {
            put_num(out, s.len());
            out.extend_from_slice(s.as_bytes());
        }
    }
}

fn take<'b>(buf: &mut &'b [u8], n: usize) -> Option<&'b [u8]> {
    let (head, rest) = buf.split_at_checked(n)?;
    *buf = rest;
    Some(head)
}

fn take_num(buf: &mut &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(take(buf, 8)?.try_into().ok()?))
}

fn take_labels(buf: &mut &[u8]) -> Option<Labels> {
    let pairs = take_num(buf)?;
    let mut labels = Vec::new();
    for _ in 0..pairs {
        let mut s = || -> Option<String> {
            let n = take_num(buf)? as usize;
            String::from_utf8(take(buf, n)?.to_vec()).ok()
        };
        labels.push((s()?, s()?));
    }
    Some(Labels::new(labels))
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
    let fold = Fold::of(ast)?;
    let mut partial = fold.empty(start_ms, step_ms, points);
    fold.fold(ctx, &mut partial)?;
    Some(partial.finish())
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

    /// A series that stops for longer than the lookback and starts again
    /// has no value in between, and values again after.
    #[test]
    fn a_gap_longer_than_the_lookback_ends_and_resumes_the_series() {
        let source = VecSource::new(vec![SeriesData {
            labels: Labels::new(vec![("__name__".into(), "m".into())]),
            samples: vec![(0, 1.0), (400_000, 2.0)],
        }]);
        let o = QueryOptions::default();
        let got = match crate::query::range_query(&source, "sum(m)", 0, 500_000, 50_000, &o) {
            Ok(crate::query::Value::Matrix(m)) => m[0].samples.clone(),
            other => panic!("{other:?}"),
        };
        let mut want: Vec<(i64, f64)> = (0..6).map(|k| (k * 50_000, 1.0)).collect();
        want.extend([(400_000, 2.0), (450_000, 2.0), (500_000, 2.0)]);
        assert_eq!(got, want);
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
            let ctx = Ctx::load_folded(
                &source,
                &ast,
                0,
                60_000,
                &QueryOptions::default(),
                Default::default(),
            )
            .unwrap();
            range(&ctx, &ast, 0, 10_000, 7).is_some()
        };
        for q in [
            "sum(m)",
            "(max by (resource) (m offset 1m))",
            "sum(rate(m[1m]))",
            "avg(quantile_over_time(0.5, m[1m]))",
            "min(predict_linear(m[1m], 60))",
            "count(last_over_time({resource=\"a\"}[1m]))",
            "topk(1, m)",
            "bottomk by (resource) ((2.7), avg_over_time(m[1m]))",
        ] {
            assert!(taken(q), "{q}");
        }
        for q in [
            "m",
            "topk(0.5, m)",
            "topk(scalar(m), m)",
            "bottomk(20000, m)",
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
