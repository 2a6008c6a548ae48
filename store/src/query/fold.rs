//! Aggregations folded next to the data: a node folds an aggregation of a
//! query over each of its partitions into a [`Partial`], and the
//! coordinator merges the nodes' partials instead of gathering every raw
//! sample and aggregating them in one place.
//!
//! Which aggregations fold: those the series-major path evaluates
//! (`sum`, `avg`, `min`, `max`, `count`, `group`, `stddev`, `stdvar`, and
//! `topk`/`bottomk` with a literal k, of a selector or of a range function
//! of one, see [`series_major::Fold`]),
//! wherever they sit in the query but under a subquery (which evaluates
//! them at times other than the query's steps). They are numbered in a
//! fixed walk of the query, so a request names one by the query text and
//! its number.
//!
//! Partials of disjoint series merge exactly but for rounding: sums are
//! added in another order than one node would add them. A topk/bottomk
//! partial keeps each group's k best per step with their series' labels,
//! which break ties as the evaluator's input order does; a folded topk
//! lists its groups in label order (the evaluator: first appearance).
//! Series of two partitions never collide (they differ in their
//! resource), so the uniqueness check a single evaluator makes is made
//! per partition.

use std::collections::{BTreeMap, HashSet};

use promql_parser::parser::Expr;

use super::eval::Ctx;
use super::plan::{self, Selection};
use super::series_major::{Fold, Partial, Read, Streamed};
use super::{check_range, parse, QueryError, QueryOptions, Result};
use crate::source::Source;

/// Folded aggregations of one query, by their number.
pub type Folded = BTreeMap<usize, Partial>;

/// The aggregations of `ast` that fold, in walk order.
pub(crate) fn foldable(ast: &Expr) -> Vec<&Expr> {
    fn walk<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
        match e {
            Expr::Aggregate(a) => {
                if Fold::of(e).is_some() {
                    out.push(e);
                    return;
                }
                if let Some(p) = &a.param {
                    walk(p, out);
                }
                walk(&a.expr, out);
            }
            Expr::Unary(u) => walk(&u.expr, out),
            Expr::Binary(b) => {
                walk(&b.lhs, out);
                walk(&b.rhs, out);
            }
            Expr::Paren(p) => walk(&p.expr, out),
            Expr::Call(c) => c.args.args.iter().for_each(|a| walk(a, out)),
            // Evaluated at the subquery's own steps: not foldable by the query's.
            Expr::Subquery(_) => {}
            Expr::NumberLiteral(_)
            | Expr::StringLiteral(_)
            | Expr::VectorSelector(_)
            | Expr::MatrixSelector(_)
            | Expr::Extension(_) => {}
        }
    }
    let mut out = Vec::new();
    walk(ast, &mut out);
    out
}

/// The address of a node of the AST, which lives as long as the query.
pub(crate) fn key(e: &Expr) -> usize {
    std::ptr::from_ref(e) as usize
}

/// The keys of the aggregations of `ast` listed in `folded`.
pub(crate) fn folded_keys(ast: &Expr, folded: &Folded) -> Result<HashSet<usize>> {
    let all = foldable(ast);
    folded
        .keys()
        .map(|&i| {
            all.get(i).map(|e| key(e)).ok_or_else(|| {
                QueryError::Execution(format!("the query has no foldable aggregation {i}"))
            })
        })
        .collect()
}

/// How many aggregations of `expr` fold: a coordinator asks the nodes for
/// numbers `0..n`.
pub fn foldable_count(expr: &str) -> Result<usize> {
    Ok(foldable(&parse(expr)?).len())
}

/// Consecutive sources [`FoldPlan::fold_all`] folds and merges as one task
/// (a node's 1 024 partitions make 64 tasks for the cores to share).
const FOLD_RUN: usize = 16;

/// One aggregation of a query, as a node folds it over its partitions at
/// the query's steps `start_ms + k * step_ms` (an instant query is one
/// step).
pub struct FoldPlan {
    /// Boxed: `planned` addresses its selectors, which must not move.
    agg: Box<Expr>,
    /// What the aggregation selects, planned (and its regexes compiled)
    /// once for every partition.
    planned: Vec<plan::Planned>,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    points: usize,
    opts: QueryOptions,
}

impl FoldPlan {
    pub fn new(
        expr: &str,
        index: usize,
        start_ms: i64,
        end_ms: i64,
        step_ms: i64,
        opts: &QueryOptions,
    ) -> Result<FoldPlan> {
        let points = check_range(start_ms, end_ms, step_ms, opts)?;
        let ast = parse(expr)?;
        let agg = foldable(&ast)
            .get(index)
            .map(|e| Box::new((*e).clone()))
            .ok_or_else(|| {
                QueryError::BadParam(format!("{expr:?} has no foldable aggregation {index}"))
            })?;
        let planned = plan::plan(&agg, start_ms, end_ms, opts.lookback_ms, &HashSet::new())?;
        Ok(FoldPlan {
            agg,
            planned,
            start_ms,
            end_ms,
            step_ms,
            points,
            opts: opts.clone(),
        })
    }

    /// The partial of no series at all.
    pub fn empty(&self) -> Partial {
        Fold::of(&self.agg)
            .expect("foldable by construction")
            .empty(self.start_ms, self.step_ms, self.points)
    }

    /// What the aggregation reads, as a coordinator would fetch it.
    pub fn selections(&self) -> Vec<Selection> {
        plan::selections(self.planned.clone())
    }

    /// The aggregation over every source of `sources` (a node's
    /// partitions), each folded on its own ([`FoldPlan::fold`]) on every
    /// core. Runs of [`FOLD_RUN`] consecutive sources are merged in order
    /// as they are folded, then the runs in turn: the same sources always
    /// give the same sums, and a query holds a partial per run, not one
    /// per source (a partial is its groups' cells at every step: at 1 440
    /// steps about 100 KB, for each of 1 024 partitions). `None` where a
    /// source declines, as [`FoldPlan::fold`].
    pub fn fold_all<S: std::ops::Deref<Target = P> + Sync, P: Source>(
        &self,
        sources: &[S],
    ) -> Result<Option<Partial>> {
        use rayon::prelude::*;
        let fold_run = |run: &[S]| -> Result<Option<Partial>> {
            let mut merged = self.empty();
            for source in run {
                let Some(()) = self.fold(&**source)?.and_then(|p| merged.merge(p)) else {
                    return Ok(None);
                };
            }
            Ok(Some(merged))
        };
        let runs: Vec<Option<Partial>> = sources
            .par_chunks(FOLD_RUN)
            .map(fold_run)
            .collect::<Result<_>>()?;
        let mut merged = self.empty();
        for run in runs {
            let Some(()) = run.and_then(|p| merged.merge(p)) else {
                return Ok(None);
            };
        }
        Ok(Some(merged))
    }

    /// The aggregation over the series of `source` (one partition). An
    /// aggregation of one instant selector is folded series by series as
    /// the source reads them ([`Fold::fold_streamed`]); any other loads its
    /// series whole first. `None` when it does not fold there: two of
    /// its series carry the same labels once their name is dropped, or
    /// the groups take too many cells. The coordinator then evaluates the
    /// query from raw samples, with the generic evaluator's answer.
    pub fn fold(&self, source: &dyn Source) -> Result<Option<Partial>> {
        let fold = Fold::of(&self.agg).expect("foldable by construction");
        // One selector without alternatives: fold each series as it is read.
        if let [plan::Planned {
            groups,
            start_ms,
            end_ms,
            ..
        }] = self.planned.as_slice()
        {
            if let [matchers] = groups.as_slice() {
                // Nothing loaded: the context only carries the query's
                // bounds and lookback.
                let ctx =
                    Ctx::load_planned(source, &[], self.start_ms, self.end_ms, &self.opts, false)?;
                let read = Read {
                    ctx: &ctx,
                    source,
                    matchers,
                    range: (*start_ms, *end_ms),
                    opts: &self.opts,
                };
                let mut partial = self.empty();
                match fold.fold_streamed(&read, &mut partial) {
                    Streamed::Folded => return Ok(Some(partial)),
                    Streamed::Declined => return Ok(None),
                    Streamed::Fallback => {}
                }
            }
        }
        let ctx = Ctx::load_planned(
            source,
            &self.planned,
            self.start_ms,
            self.end_ms,
            &self.opts,
            false,
        )?;
        let mut partial = self.empty();
        Ok(fold.fold(&ctx, &mut partial).map(|()| partial))
    }
}
