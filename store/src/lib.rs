//! store: one node's in-memory data (partitions, series, compressed chunks) and the PromQL engine.
//!
//! - [`series`]: series identity and its canonical byte form (what is interned);
//! - [`batch`]: the unit of the log, replication and forwarding (sans-IO codec);
//! - [`partition`]: log + memory + sealed chunk files of one partition, and the seal policy;
//! - [`Store`]: the partitions of a node, opened from disk; [`Store::source`]
//!   is the [`Source`] the query engine reads;
//! - `head`, `memory`: per-series head chunks and overlays, the series index and postings.

pub mod batch;
pub mod error;
mod head;
mod memory;
pub mod partition;
mod prefetch;
pub mod query;
pub mod series;
pub mod source;
mod store;

pub use error::{Error, Result};
pub use fsdb::{Lsn, Term};
pub use memory::WriteCounts;
pub use partition::{Partition, PartitionConfig, PartitionStats, SealPolicy};
pub use series::{KeyRef, SeriesKey};
pub use source::{Labels, MatchOp, Matcher, SeriesData, Source};
pub use store::{
    MemoryStats, OpenReport, PartitionSource, Store, StoreConfig, OOO_WINDOW_MS_DEFAULT,
};

/// A partition's id: `xxh3(resource) % P`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PartitionId(pub u32);

impl std::fmt::Display for PartitionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
