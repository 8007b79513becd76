//! The one error type of the engine. The binding layer maps each variant to a Python
//! exception; messages always name the offending argument and value.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An argument that can never be valid (bad config, mismatched lengths, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// A key or token id outside the valid range of the table or vocabulary.
    #[error("{0}")]
    OutOfRange(String),

    /// A table file that is not a valid Engram Store table (bad magic, checksum, size...).
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }

    pub fn out_of_range(msg: impl Into<String>) -> Self {
        Error::OutOfRange(msg.into())
    }

    pub fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
