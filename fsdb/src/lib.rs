//! fsdb: tandem's persistence. Memory-mapped partition logs and immutable chunk files.
//!
//! Every file access goes through the [`Backend`] trait: [`MmapBackend`] uses
//! real files (fallocate + memmap2), [`MemBackend`] keeps files in memory and
//! can inject I/O errors and simulate power cuts for tests.
//! The on-disk layout and the recovery rules are written down in `FORMAT.md`.

pub mod backend;
pub mod chunkfile;
pub mod codec;
pub mod error;
pub mod log;
pub mod membackend;
pub mod mmap;
mod segment;
pub mod varint;

pub use backend::{Backend, Map, MapMut};
pub use chunkfile::{delete_expired, ChunkFile, ChunkFileWriter, ChunkMeta, RetentionReport};
pub use error::{Error, Result};
pub use log::{LogConfig, LogReader, PartitionLog, Record};
pub use membackend::MemBackend;
pub use mmap::MmapBackend;

use std::fmt;

/// Log sequence number: the position of a record in a partition log. The first record is 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

/// A primary's term: incremented by the controller at every primary change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
