//! Errors of the schemas crate.

use std::path::PathBuf;

/// What went wrong building, checking, writing or reading a batch.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A batch handed to a typed wrapper does not have the boundary's schema.
    #[error("{batch}: {problem}")]
    Mismatch {
        /// The typed wrapper that refused the batch (`QueryBatch`).
        batch: &'static str,
        /// Which column differs and how.
        problem: String,
    },
    /// Rows could not be turned into a batch, or a batch into rows.
    #[error("{batch}: converting rows: {source}")]
    Rows {
        /// The typed wrapper.
        batch: &'static str,
        /// The serde_arrow error.
        #[source]
        source: serde_arrow::Error,
    },
    /// An Arrow compute or construction error.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// A Parquet file could not be written or read.
    #[error("{path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The Parquet error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// A file-system error at `path`.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Result with [`SchemaError`] as the default error.
pub type Result<T, E = SchemaError> = std::result::Result<T, E>;
