//! The sim crate's error type: one variant per cause.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error(transparent)]
    Placement(#[from] controller::Error),
    #[error("store: {0}")]
    Store(#[from] store::Error),
    #[error("query: {0}")]
    Query(#[from] store::query::QueryError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("profile {path} does not decode: {source}; run `tandem sim calibrate --out FILE` to make one")]
    Profile {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot measure {what}: {reason}")]
    Measure { what: &'static str, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
