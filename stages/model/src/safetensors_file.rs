//! safetensors files read and written a few megabytes at a time.
//!
//! tch's `Tensor::read_safetensors` reads the whole file into memory and then copies
//! every tensor out of it, and its writer copies each tensor into a buffer of its full
//! size: loading a 0.5 GB model held 1 GB more than the model for a moment, and resuming
//! a run's 1 GB optimizer state 2 GB more. Here a file streams through one buffer of
//! [`CHUNK_BYTES`] straight into (or out of) the tensors that hold the values.
//!
//! Layout (<https://github.com/huggingface/safetensors>): an 8-byte little-endian
//! header length, a JSON header `{name: {dtype, shape, data_offsets: [begin, end]},
//! "__metadata__": {..}}` padded with spaces, then the raw little-endian data.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use crate::digest::DigestWriter;
use crate::error::{ModelError, Result};

/// Bytes moved per read or write.
pub const CHUNK_BYTES: usize = 8 << 20;

/// One tensor's entry in the header.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<i64>,
    data_offsets: [u64; 2],
}

/// The libtorch kind of a safetensors dtype name.
fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F64" => Kind::Double,
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

/// The safetensors dtype name of a libtorch kind.
fn dtype_of(kind: Kind) -> Option<&'static str> {
    Some(match kind {
        Kind::Double => "F64",
        Kind::Float => "F32",
        Kind::Half => "F16",
        Kind::BFloat16 => "BF16",
        Kind::Int64 => "I64",
        Kind::Int => "I32",
        Kind::Int16 => "I16",
        Kind::Int8 => "I8",
        Kind::Uint8 => "U8",
        Kind::Bool => "BOOL",
        _ => return None,
    })
}

/// An open safetensors file whose tensors are read one at a time.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    entries: BTreeMap<String, Entry>,
    data_start: u64,
}

impl SafetensorsFile {
    /// Opens `path` and checks its header: known dtypes, and every tensor's bytes
    /// inside the file and of the size its dtype and shape imply.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |message: String| ModelError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let mut file = File::open(path).map_err(ModelError::io(path))?;
        let file_len = file.metadata().map_err(ModelError::io(path))?.len();
        let mut len = [0u8; 8];
        file.read_exact(&mut len)
            .map_err(|_| bad("shorter than a safetensors header".into()))?;
        let header_len = u64::from_le_bytes(len);
        if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
            return Err(bad(format!(
                "header of {header_len} bytes does not fit in the file ({file_len} bytes): not a safetensors file, or truncated"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(ModelError::io(path))?;
        let mut raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
        raw.remove("__metadata__");
        let data_start = 8 + header_len;
        let mut entries = BTreeMap::new();
        for (name, value) in raw {
            let entry: Entry = serde_json::from_value(value)
                .map_err(|e| bad(format!("header entry `{name}`: {e}")))?;
            let kind = kind_of(&entry.dtype).ok_or_else(|| {
                bad(format!(
                    "tensor `{name}` has unsupported dtype {}",
                    entry.dtype
                ))
            })?;
            let numel: i64 = entry.shape.iter().product();
            let [begin, end] = entry.data_offsets;
            let expected = numel as u64 * kind.elt_size_in_bytes() as u64;
            if end < begin || end - begin != expected || data_start + end > file_len {
                return Err(bad(format!(
                    "tensor `{name}` ({} {:?}) claims bytes {begin}..{end} of a {}-byte data section: the file is truncated or corrupt",
                    entry.dtype,
                    entry.shape,
                    file_len - data_start
                )));
            }
            entries.insert(name, entry);
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            entries,
            data_start,
        })
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The shape of tensor `name`, if the file has it.
    pub fn shape(&self, name: &str) -> Option<&[i64]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| ModelError::Checkpoint {
                path: self.path.clone(),
                message: format!("no tensor `{name}`"),
            })
    }

    /// Copies tensor `name` into `dst` (contiguous, of the same shape; any kind and
    /// device: values are converted), a chunk at a time. No gradient is recorded.
    pub fn read_into(&mut self, name: &str, dst: &Tensor) -> Result<()> {
        let entry = self.entry(name)?;
        if entry.shape != dst.size() {
            return Err(ModelError::Checkpoint {
                path: self.path.clone(),
                message: format!(
                    "tensor `{name}` has shape {:?}, expected {:?}",
                    entry.shape,
                    dst.size()
                ),
            });
        }
        let kind = kind_of(&entry.dtype).expect("checked when opened");
        let elt = kind.elt_size_in_bytes();
        let numel: i64 = entry.shape.iter().product();
        let per_chunk = (CHUNK_BYTES / elt).max(1) as i64;
        self.file
            .seek(SeekFrom::Start(self.data_start + entry.data_offsets[0]))
            .map_err(ModelError::io(&self.path))?;
        let flat = dst.view([-1]);
        let mut buffer = vec![0u8; (per_chunk.min(numel) as usize) * elt];
        let mut start = 0;
        while start < numel {
            let n = per_chunk.min(numel - start);
            let bytes = &mut buffer[..n as usize * elt];
            self.file
                .read_exact(bytes)
                .map_err(ModelError::io(&self.path))?;
            let part = Tensor::from_data_size(bytes, &[n], kind);
            tch::no_grad(|| flat.narrow(0, start, n).copy_(&part));
            start += n;
        }
        Ok(())
    }

    /// Tensor `name` as a new CPU tensor of the file's kind.
    pub fn read(&mut self, name: &str) -> Result<Tensor> {
        let entry = self.entry(name)?;
        let kind = kind_of(&entry.dtype).expect("checked when opened");
        let out = Tensor::empty(entry.shape.as_slice(), (kind, Device::Cpu));
        self.read_into(name, &out)?;
        Ok(out)
    }
}

/// Writes `tensors` to `path` as safetensors (metadata `format: pt`, as transformers
/// expects), a chunk at a time. Names must be unique; the order in the file is by name.
/// Returns the file's digest (as [`crate::digest_file`] gives it), taken as it is
/// written.
pub fn write_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<String> {
    let mut sorted: Vec<&(String, Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0u64;
    for (name, t) in &sorted {
        let dtype = dtype_of(t.kind()).ok_or_else(|| ModelError::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "tensor `{name}` has kind {:?}, which safetensors cannot hold",
                t.kind()
            ),
        })?;
        let bytes = t.numel() as u64 * t.kind().elt_size_in_bytes() as u64;
        let entry = Entry {
            dtype: dtype.into(),
            shape: t.size(),
            data_offsets: [offset, offset + bytes],
        };
        let value = serde_json::to_value(entry).expect("an entry serializes");
        if header.insert(name.clone(), value).is_some() {
            return Err(ModelError::Invalid(format!("tensor `{name}` given twice")));
        }
        offset += bytes;
    }
    let mut json = serde_json::to_vec(&header).expect("a header serializes");
    // Pad with spaces so the data starts 8-byte aligned.
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let file = File::create(path).map_err(ModelError::io(path))?;
    let mut out = DigestWriter::new(BufWriter::new(file));
    let mut buffer = Vec::new();
    let mut write_all = || -> std::io::Result<()> {
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        for (_, t) in &sorted {
            let flat = t.detach().contiguous().view([-1]);
            let elt = t.kind().elt_size_in_bytes();
            let per_chunk = (CHUNK_BYTES / elt).max(1) as i64;
            let numel = flat.numel() as i64;
            let mut start = 0;
            while start < numel {
                let n = per_chunk.min(numel - start);
                buffer.resize(n as usize * elt, 0);
                flat.narrow(0, start, n)
                    .copy_data_u8(&mut buffer, n as usize);
                out.write_all(&buffer)?;
                start += n;
            }
        }
        out.flush()
    };
    write_all().map_err(ModelError::io(path))?;
    Ok(out.finish().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_kind_across_chunks_and_tch_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        // Larger than one chunk, so it crosses chunk boundaries.
        let big = Tensor::arange(3 * (CHUNK_BYTES as i64 / 4) + 5, (Kind::Float, Device::Cpu))
            .view([-1, 1]);
        let tensors = vec![
            ("z.big".to_string(), big.shallow_clone()),
            (
                "a.half".to_string(),
                Tensor::from_slice(&[1.5f32, -2.0]).to_kind(Kind::Half),
            ),
            (
                "b.bf16".to_string(),
                Tensor::from_slice(&[0.25f32, 8.0]).to_kind(Kind::BFloat16),
            ),
            ("step".to_string(), Tensor::from_slice(&[7i64])),
        ];
        write_safetensors(&tensors, &path).unwrap();
        // tch's own reader (the safetensors crate) agrees.
        let theirs: BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
            .unwrap()
            .into_iter()
            .collect();
        let mut file = SafetensorsFile::open(&path).unwrap();
        assert_eq!(
            file.names().collect::<Vec<_>>(),
            ["a.half", "b.bf16", "step", "z.big"]
        );
        for (name, t) in &tensors {
            assert!(theirs[name].equal(t), "{name}");
            let ours = file.read(name).unwrap();
            assert_eq!(ours.kind(), t.kind());
            assert!(ours.equal(t), "{name}");
        }
        // Reading into a tensor of another kind converts.
        let into = Tensor::zeros([2], (Kind::Float, Device::Cpu));
        file.read_into("a.half", &into).unwrap();
        assert_eq!(Vec::<f32>::try_from(&into).unwrap(), [1.5, -2.0]);
        let err = file.read_into("step", &into).unwrap_err().to_string();
        assert!(err.contains("shape [1], expected [2]"), "{err}");
    }

    #[test]
    fn truncated_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let t = vec![(
            "w".to_string(),
            Tensor::ones([64], (Kind::Float, Device::Cpu)),
        )];
        write_safetensors(&t, &path).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("truncated or corrupt"), "{err}");
        std::fs::write(&path, b"not a safetensors file at all").unwrap();
        let err = SafetensorsFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }
}
