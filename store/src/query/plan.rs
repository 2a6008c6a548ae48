//! Finds every selector of a query and the time span of data it needs, so the data is fetched once.

use std::time::{Duration, SystemTime};

use promql_parser::label::MatchOp as PMatchOp;
use promql_parser::parser::{AtModifier, Expr, Offset, VectorSelector};

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

pub(crate) fn offset_ms(vs: &VectorSelector) -> i64 {
    match &vs.offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    }
}

/// The time a selector reads at when the query evaluates at `t`: `@` pins
/// it, `offset` shifts it back.
pub(crate) fn reference_ms(vs: &VectorSelector, t: i64, start_ms: i64, end_ms: i64) -> i64 {
    let base = match &vs.at {
        None => t,
        Some(AtModifier::Start) => start_ms,
        Some(AtModifier::End) => end_ms,
        Some(AtModifier::At(st)) => system_time_ms(st),
    };
    base.saturating_sub(offset_ms(vs))
}

pub(crate) fn plan(
    expr: &Expr,
    start_ms: i64,
    end_ms: i64,
    lookback_ms: i64,
) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    walk(
        expr,
        &mut |vs, window_ms| {
            let lo = reference_ms(vs, start_ms, start_ms, end_ms);
            let hi = reference_ms(vs, end_ms, start_ms, end_ms);
            out.push(Planned {
                key: key(vs),
                groups: matcher_groups(vs)?,
                // Windows are left-open: (t - window, t].
                start_ms: lo.saturating_sub(window_ms).saturating_add(1),
                end_ms: hi,
            });
            Ok(())
        },
        lookback_ms,
    )?;
    Ok(out)
}

/// Calls `f` on every selector with the width of the window it reads.
fn walk(
    expr: &Expr,
    f: &mut dyn FnMut(&VectorSelector, i64) -> Result<()>,
    lookback_ms: i64,
) -> Result<()> {
    match expr {
        Expr::Aggregate(a) => {
            if let Some(p) = &a.param {
                walk(p, f, lookback_ms)?;
            }
            walk(&a.expr, f, lookback_ms)
        }
        Expr::Unary(u) => walk(&u.expr, f, lookback_ms),
        Expr::Binary(b) => {
            walk(&b.lhs, f, lookback_ms)?;
            walk(&b.rhs, f, lookback_ms)
        }
        Expr::Paren(p) => walk(&p.expr, f, lookback_ms),
        Expr::Subquery(_) => Err(QueryError::Unsupported(
            "subqueries are not supported".into(),
        )),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) => Ok(()),
        Expr::VectorSelector(vs) => f(vs, lookback_ms),
        Expr::MatrixSelector(ms) => f(&ms.vs, duration_ms(&ms.range)),
        Expr::Call(c) => c.args.args.iter().try_for_each(|a| walk(a, f, lookback_ms)),
        Expr::Extension(_) => Err(QueryError::Unsupported(
            "extension expressions are not supported".into(),
        )),
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
