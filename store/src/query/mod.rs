//! The PromQL engine: parses with promql-parser and evaluates over any [`Source`] with Prometheus' semantics.
//!
//! Every selector's data is fetched once for the whole query (an instant
//! query is a range query of one step), then each step slides over it with
//! binary searches. The node uses [`selectors`] to learn what to fetch from
//! remote replicas, builds a [`VecSource`] from it, and evaluates here.

mod aggregate;
mod binary;
mod eval;
mod fold;
mod functions;
mod names;
mod plan;
mod series_major;
mod sources;
#[cfg(test)]
mod tests;

use crate::source::{Labels, SeriesData, Source};

pub use aggregate::format_value;
pub use fold::{foldable_count, FoldPlan, Folded};
pub use plan::Selection;
pub use series_major::Partial;
pub use sources::{FetchedSource, UnionSource, VecSource};

/// Prometheus' maximum number of points per series in a range query.
pub const MAX_POINTS_PER_SERIES: usize = 11_000;

/// Limits and knobs of one query. Every field has a Prometheus-like default.
#[derive(Clone, Debug)]
pub struct QueryOptions {
    /// How far back an instant selector looks for the newest sample.
    pub lookback_ms: i64,
    /// Most series all selectors of one query may load together.
    pub max_series: usize,
    /// Most samples all selectors of one query may load together.
    pub max_samples: usize,
    /// Most steps of a range query.
    pub max_points_per_series: usize,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            lookback_ms: 5 * 60 * 1000,
            // A dashboard may sum over every series of a large node (the
            // reference load is 200 k series); memory is bounded by
            // `max_samples` either way.
            max_series: 1_000_000,
            max_samples: 50_000_000,
            max_points_per_series: MAX_POINTS_PER_SERIES,
        }
    }
}

/// A query's result, as Prometheus' HTTP API types it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `(timestamp_ms, value)`.
    Scalar(i64, f64),
    /// `(labels, timestamp_ms, value)` in the engine's output order (which
    /// `sort` and `sort_desc` control).
    Vector(Vec<(Labels, i64, f64)>),
    /// Series sorted by labels.
    Matrix(Vec<SeriesData>),
    /// `(timestamp_ms, string)`.
    String(i64, String),
}

/// Whether an error is the caller's fault (HTTP 400 `bad_data`) or arose
/// while evaluating a valid query (HTTP 422 `execution`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadData,
    Execution,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("invalid parameter: {0}")]
    BadParam(String),
    #[error("exceeded maximum resolution of {max} points per timeseries ({points} requested), try decreasing the query resolution (?step=XX)")]
    TooManyPoints { points: u64, max: usize },
    #[error("query selects {series} series, more than the limit of {max}")]
    TooManySeries { series: usize, max: usize },
    #[error("query loads {samples} samples, more than the limit of {max}")]
    TooManySamples { samples: usize, max: usize },
    #[error("{0}")]
    Execution(String),
}

impl QueryError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            QueryError::Parse(_)
            | QueryError::Unsupported(_)
            | QueryError::BadParam(_)
            | QueryError::TooManyPoints { .. } => ErrorKind::BadData,
            QueryError::TooManySeries { .. }
            | QueryError::TooManySamples { .. }
            | QueryError::Execution(_) => ErrorKind::Execution,
        }
    }
}

pub type Result<T, E = QueryError> = std::result::Result<T, E>;

/// Parses a PromQL expression, mapping the parser's error. A query that
/// does not parse is retried once with bare dotted metric names quoted
/// (see [`names`]); the original error is reported if that fails too.
fn parse(expr: &str) -> Result<promql_parser::parser::Expr> {
    parse_guarded(expr).or_else(|e| {
        names::quote_dotted_names(expr)
            .and_then(|q| parse_guarded(&q).ok())
            .ok_or(QueryError::Parse(e))
    })
}

/// The parser panics on some inputs it should reject (a number used as a
/// duration that is negative or too large, `m offset 1e308`); a query is
/// user input, so that panic becomes a parse error instead of a failed
/// request.
fn parse_guarded(expr: &str) -> std::result::Result<promql_parser::parser::Expr, String> {
    std::panic::catch_unwind(|| promql_parser::parser::parse(expr)).unwrap_or_else(|_| {
        Err("a duration in the query is negative or too large; use a unit, e.g. 5m".to_string())
    })
}

/// Evaluates `expr` at one instant.
pub fn instant_query(
    source: &dyn Source,
    expr: &str,
    time_ms: i64,
    opts: &QueryOptions,
) -> Result<Value> {
    instant_query_folded(source, expr, time_ms, opts, Folded::new())
}

/// [`instant_query`] with the aggregations in `folded` already folded by
/// the nodes (with [`FoldPlan`] at `time_ms`, one step): `source` need not
/// hold their data.
pub fn instant_query_folded(
    source: &dyn Source,
    expr: &str,
    time_ms: i64,
    opts: &QueryOptions,
    folded: Folded,
) -> Result<Value> {
    let ast = parse(expr)?;
    let ctx = eval::Ctx::load_folded(source, &ast, time_ms, time_ms, opts, folded)?;
    ctx.into_instant(&ast, time_ms)
}

/// Evaluates `expr` at `start_ms + k * step_ms` up to `end_ms` and returns a
/// matrix sorted by labels.
pub fn range_query(
    source: &dyn Source,
    expr: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    opts: &QueryOptions,
) -> Result<Value> {
    range_query_folded(source, expr, start_ms, end_ms, step_ms, opts, Folded::new())
}

/// [`range_query`] with the aggregations in `folded` already folded by the
/// nodes at the query's steps.
pub fn range_query_folded(
    source: &dyn Source,
    expr: &str,
    start_ms: i64,
    end_ms: i64,
    step_ms: i64,
    opts: &QueryOptions,
    folded: Folded,
) -> Result<Value> {
    let points = check_range(start_ms, end_ms, step_ms, opts)?;
    let ast = parse(expr)?;
    let ctx = eval::Ctx::load_folded(source, &ast, start_ms, end_ms, opts, folded)?;
    ctx.range(&ast, start_ms, step_ms, points)
}

/// Checks a range query's bounds and returns its number of steps.
fn check_range(start_ms: i64, end_ms: i64, step_ms: i64, opts: &QueryOptions) -> Result<usize> {
    if step_ms <= 0 {
        return Err(QueryError::BadParam(format!(
            "zero or negative query resolution step widths are not accepted, got {step_ms} ms"
        )));
    }
    if end_ms < start_ms {
        return Err(QueryError::BadParam(format!(
            "end timestamp {end_ms} must not be before start time {start_ms}"
        )));
    }
    let intervals = end_ms.abs_diff(start_ms) / step_ms as u64;
    let points = intervals.saturating_add(1);
    // As Prometheus: the limit bounds the intervals, so it allows one more point.
    if intervals > opts.max_points_per_series as u64 {
        return Err(QueryError::TooManyPoints {
            points,
            max: opts.max_points_per_series,
        });
    }
    Ok(points as usize)
}

/// What each selector of `expr` needs so that evaluating it over
/// `[start_ms, end_ms]` (equal for an instant query) finds all its data:
/// one entry per selector (and per `or` group of matchers).
///
/// The aggregations in `folded` need nothing: the nodes folded them.
pub fn selectors(
    expr: &str,
    start_ms: i64,
    end_ms: i64,
    opts: &QueryOptions,
    folded: &Folded,
) -> Result<Vec<Selection>> {
    let ast = parse(expr)?;
    let skip = fold::folded_keys(&ast, folded)?;
    let planned = plan::plan(&ast, start_ms, end_ms, opts.lookback_ms, &skip)?;
    Ok(plan::selections(planned))
}
