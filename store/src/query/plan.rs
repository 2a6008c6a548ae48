//! Finds every selector of a query and the time span of data it needs, so the data is fetched once.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{AtModifier, Expr, Offset, SubqueryExpr, VectorSelector};

use super::{QueryError, Result};
use crate::source::{MatchOp, Matcher, METRIC_LABEL};

/// One fetch a query needs: series matching all `matchers` with samples in
/// `[start_ms, end_ms]` (both inclusive).
#[derive(Clone, Debug)]
pub struct Selection {
    pub matchers: Vec<Matcher>,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// A selector of the AST with what it needs over the whole query.
#[derive(Clone)]
pub(crate) struct Planned {
    /// The selector's address in the AST, which lives as long as the query.
    pub key: usize,
    /// Alternatives (`{a="1" or b="2"}`); a series matching any group is selected.
    pub groups: Vec<Vec<Matcher>>,
    pub start_ms: i64,
    pub end_ms: i64,
}

pub(crate) fn key(vs: &VectorSelector) -> usize {
    std::ptr::from_ref(vs) as usize
}

pub(crate) fn duration_ms(d: &Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => duration_ms(&d),
        Err(e) => -duration_ms(&e.duration()),
    }
}

/// The time a selector reads at when the query evaluates at `t`: `@` pins
/// it, `offset` shifts it back.
pub(crate) fn reference_ms(vs: &VectorSelector, t: i64, start_ms: i64, end_ms: i64) -> i64 {
    shifted(&vs.at, &vs.offset, t, start_ms, end_ms)
}

/// `t` moved by an `@` and an `offset` modifier; `@ start()` / `@ end()`
/// name the query's bounds.
pub(crate) fn shifted(
    at: &Option<AtModifier>,
    offset: &Option<Offset>,
    t: i64,
    start_ms: i64,
    end_ms: i64,
) -> i64 {
    let base = match at {
        None => t,
        Some(AtModifier::Start) => start_ms,
        Some(AtModifier::End) => end_ms,
        Some(AtModifier::At(st)) => system_time_ms(st),
    };
    let offset = match offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    };
    base.saturating_sub(offset)
}

/// Prometheus' default subquery step (its default evaluation interval).
pub(crate) const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// The times a subquery evaluates its expression at for an outer time `t`:
/// multiples of its step in `(reference - range, reference]`, and the window.
pub(crate) fn subquery_times(
    sq: &SubqueryExpr,
    t: i64,
    start_ms: i64,
    end_ms: i64,
) -> (i64, i64, i64) {
    let step = sq
        .step
        .as_ref()
        .map(duration_ms)
        .filter(|s| *s > 0)
        .unwrap_or(DEFAULT_SUBQUERY_STEP_MS);
    let end = shifted(&sq.at, &sq.offset, t, start_ms, end_ms);
    let window_start = end.saturating_sub(duration_ms(&sq.range));
    // Go's truncating division, as Prometheus aligns subquery steps.
    let mut first = step * (window_start / step);
    if first <= window_start {
        first = first.saturating_add(step);
    }
    (first, end, step)
}

/// The selectors of `expr` but those under the aggregations `folded` (by
/// [`super::fold::key`]), whose data the nodes folded where it lives.
pub(crate) fn plan(
    expr: &Expr,
    start_ms: i64,
    end_ms: i64,
    lookback_ms: i64,
    folded: &HashSet<usize>,
) -> Result<Vec<Planned>> {
    let mut walker = Walker {
        out: Vec::new(),
        query_start_ms: start_ms,
        query_end_ms: end_ms,
        lookback_ms,
        folded,
    };
    walker.walk(expr, start_ms, end_ms)?;
    Ok(walker.out)
}

/// One fetch per selector, and per `or` group of its matchers.
pub(crate) fn selections(planned: Vec<Planned>) -> Vec<Selection> {
    planned
        .into_iter()
        .flat_map(|p| {
            p.groups.into_iter().map(move |matchers| Selection {
                matchers,
                start_ms: p.start_ms,
                end_ms: p.end_ms,
            })
        })
        .collect()
}

/// Finds each selector with the span of evaluation times it serves, which
/// subqueries widen.
struct Walker<'f> {
    out: Vec<Planned>,
    query_start_ms: i64,
    query_end_ms: i64,
    lookback_ms: i64,
    folded: &'f HashSet<usize>,
}

impl Walker<'_> {
    fn selector(
        &mut self,
        vs: &VectorSelector,
        window_ms: i64,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<()> {
        let (qs, qe) = (self.query_start_ms, self.query_end_ms);
        let lo = reference_ms(vs, start_ms, qs, qe);
        let hi = reference_ms(vs, end_ms, qs, qe);
        self.out.push(Planned {
            key: key(vs),
            groups: matcher_groups(vs)?,
            // Windows are left-open: (t - window, t].
            start_ms: lo.min(hi).saturating_sub(window_ms).saturating_add(1),
            end_ms: hi.max(lo),
        });
        Ok(())
    }

    fn walk(&mut self, expr: &Expr, start_ms: i64, end_ms: i64) -> Result<()> {
        match expr {
            Expr::Aggregate(_) if self.folded.contains(&super::fold::key(expr)) => Ok(()),
            Expr::Aggregate(a) => {
                if let Some(p) = &a.param {
                    self.walk(p, start_ms, end_ms)?;
                }
                self.walk(&a.expr, start_ms, end_ms)
            }
            Expr::Unary(u) => self.walk(&u.expr, start_ms, end_ms),
            Expr::Binary(b) => {
                self.walk(&b.lhs, start_ms, end_ms)?;
                self.walk(&b.rhs, start_ms, end_ms)
            }
            Expr::Paren(p) => self.walk(&p.expr, start_ms, end_ms),
            Expr::Subquery(sq) => {
                let (qs, qe) = (self.query_start_ms, self.query_end_ms);
                let (lo, _, _) = subquery_times(sq, start_ms, qs, qe);
                let (_, hi, _) = subquery_times(sq, end_ms, qs, qe);
                self.walk(&sq.expr, lo.min(hi), hi.max(lo))
            }
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
            Expr::VectorSelector(vs) => self.selector(vs, self.lookback_ms, start_ms, end_ms),
            Expr::MatrixSelector(ms) => {
                self.selector(&ms.vs, duration_ms(&ms.range), start_ms, end_ms)
            }
            Expr::Call(c) => c
                .args
                .args
                .iter()
                .try_for_each(|a| self.walk(a, start_ms, end_ms)),
            Expr::Extension(_) => Err(QueryError::Unsupported(
                "extension expressions are not supported".into(),
            )),
        }
    }
}

/// The selector's matchers as source matchers, the metric name included.
fn matcher_groups(vs: &VectorSelector) -> Result<Vec<Vec<Matcher>>> {
    let mut groups: Vec<Vec<&promql_parser::label::Matcher>> = if vs.matchers.or_matchers.is_empty()
    {
        vec![vs.matchers.matchers.iter().collect()]
    } else {
        vs.matchers
            .or_matchers
            .iter()
            .map(|g| g.iter().collect())
            .collect()
    };
    let name = vs
        .name
        .as_ref()
        .map(|n| promql_parser::label::Matcher::new(PMatchOp::Equal, METRIC_LABEL, n));
    groups
        .iter_mut()
        .map(|g| {
            name.iter()
                .chain(g.iter().copied())
                .map(convert)
                .collect::<Result<Vec<_>>>()
        })
        .collect()
}

fn convert(m: &promql_parser::label::Matcher) -> Result<Matcher> {
    let op = match m.op {
        PMatchOp::Equal => MatchOp::Equal,
        PMatchOp::NotEqual => MatchOp::NotEqual,
        PMatchOp::Re(_) => MatchOp::Regex,
        PMatchOp::NotRe(_) => MatchOp::NotRegex,
    };
    Matcher::new(&m.name, op, &m.value).map_err(|e| {
        QueryError::Parse(format!(
            "invalid regex {:?} for label {}: {e}",
            m.value, m.name
        ))
    })
}
