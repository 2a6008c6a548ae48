//! The store's error type: one variant per cause, messages name the ids.

use crate::PartitionId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid series key: {0}")]
    InvalidKey(&'static str),
    #[error("malformed batch at byte {offset}: {reason}")]
    BatchMalformed { offset: usize, reason: &'static str },
    #[error("unsupported batch version {0}")]
    BatchVersion(u8),
    #[error("batch is full")]
    BatchFull,
    #[error("partition {0} does not exist")]
    NoPartition(PartitionId),
    #[error("partition {0} already exists")]
    PartitionExists(PartitionId),
    #[error("partition {0} is corrupted on disk and must be fetched from its peer")]
    PartitionCorrupted(PartitionId),
    #[error(
        "partition {partition}: the log no longer reaches back to lsn {lsn} (first is {first})"
    )]
    TrimmedAway {
        partition: PartitionId,
        lsn: u64,
        first: u64,
    },
    #[error("partition {partition}: lsn {lsn} is already sealed (covered up to {covered}); a full copy is needed")]
    NeedsFullCopy {
        partition: PartitionId,
        lsn: u64,
        covered: u64,
    },
    #[error(transparent)]
    Fsdb(#[from] fsdb::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
