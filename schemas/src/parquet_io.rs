//! Parquet files of typed batches. Writes go to a temporary file in the same folder
//! that is synced and renamed, so a crash never leaves a half-written file under the
//! final name.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Result, SchemaError};
use crate::typed::TypedBatch;

/// Writes `batches` (all of `T`'s schema) to `path` atomically, zstd-compressed.
pub fn write_parquet<T: TypedBatch>(path: &Path, batches: &[T]) -> Result<()> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SchemaError::Io { path, source }
    };
    let parquet_err = |source| SchemaError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = temporary_name(path);
    let result = (|| {
        let file = File::create(&tmp).map_err(io_err(&tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(3).map_err(parquet_err)?,
            ))
            .build();
        let mut writer =
            ArrowWriter::try_new(file, T::schema(), Some(props)).map_err(parquet_err)?;
        for batch in batches {
            writer.write(batch.batch()).map_err(parquet_err)?;
        }
        let file = writer.into_inner().map_err(parquet_err)?;
        file.sync_all().map_err(io_err(&tmp))?;
        fs::rename(&tmp, path).map_err(io_err(path))?;
        // Make the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads every batch of a Parquet file whose schema is `T`'s.
pub fn read_parquet<T: TypedBatch>(path: &Path) -> Result<Vec<T>> {
    read_batches(path)?.into_iter().map(T::try_new).collect()
}

/// Reads every batch of a Parquet file, whatever its schema.
pub fn read_batches(path: &Path) -> Result<Vec<RecordBatch>> {
    let parquet_err = |source| SchemaError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|source| SchemaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet_err)?
        .build()
        .map_err(parquet_err)?;
    reader
        .map(|batch| batch.map_err(SchemaError::from))
        .collect()
}

/// `dir/.name.tmp-<pid>`: hidden, in the same folder (so the rename is atomic), and
/// unique per process.
fn temporary_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}
