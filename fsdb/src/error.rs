//! The error type of fsdb: one variant per cause, each naming the file or partition involved.

use std::path::PathBuf;

use crate::{Lsn, Term};

/// Result alias of fsdb.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in fsdb. Bad bytes on disk are `Corrupted`, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system call failed.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The disk (or the test backend's capacity) is full when preallocating a file.
    #[error("no space left to allocate {bytes} bytes for {}", path.display())]
    NoSpace { path: PathBuf, bytes: u64 },
    /// Bytes that were durable fail their checksum or framing. The partition must be refetched.
    #[error("corrupted data in {}/{file} at offset {offset}: {reason}", dir.display())]
    Corrupted {
        dir: PathBuf,
        file: String,
        offset: u64,
        reason: String,
    },
    /// An append carries a term older than the log's last term.
    #[error("term regressed in log {}: last term {last}, got {got}", dir.display())]
    TermRegressed { dir: PathBuf, last: Term, got: Term },
    /// A replica append does not continue the log.
    #[error("lsn gap in log {}: expected {expected}, got {got}", dir.display())]
    LsnGap {
        dir: PathBuf,
        expected: Lsn,
        got: Lsn,
    },
    /// The requested LSN was trimmed away (it is before the first retained record).
    #[error("lsn {lsn} trimmed away from log {}: first retained is {first}", dir.display())]
    TrimmedAway { dir: PathBuf, lsn: Lsn, first: Lsn },
    /// A read starts after the end of the log.
    #[error("lsn {lsn} is beyond the end of log {}: last is {last}", dir.display())]
    BeyondEnd { dir: PathBuf, lsn: Lsn, last: Lsn },
    /// A record payload is larger than the configured limit.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { len: u64, max: u64 },
    /// A configuration value is out of range.
    #[error("invalid config: {0}")]
    InvalidConfig(String),
    /// An argument is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A chunk handed to the chunk-file writer is malformed.
    #[error("invalid chunk for series {series:?}: {reason}")]
    InvalidChunk { series: String, reason: String },
    /// A file that was expected does not exist.
    #[error("not found: {}", path.display())]
    NotFound { path: PathBuf },
    /// The test backend injected a fault.
    #[error("injected fault on {op} {}", path.display())]
    Injected { op: &'static str, path: PathBuf },
}

impl Error {
    /// Wraps an `io::Error`, turning ENOSPC into `NoSpace` and ENOENT into `NotFound`.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        let path = path.into();
        match source.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound { path },
            _ if source.raw_os_error() == Some(libc::ENOSPC) => Error::NoSpace { path, bytes: 0 },
            _ => Error::Io { op, path, source },
        }
    }

    /// True for data damage (the partition must be refetched from its peer copy).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupted { .. })
    }
}
