//! store: one node's in-memory data (partitions, series, compressed chunks) and the PromQL engine.

pub mod query;
pub mod source;

pub use source::{Labels, MatchOp, Matcher, SeriesData, Source};
