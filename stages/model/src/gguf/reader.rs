//! Reading a GGUF file (version 2 or 3): its metadata, its tensor directory, and each
//! tensor's raw bytes on demand (the file is never read whole).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::dtype::GgmlType;
use crate::error::{ModelError, Result};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// Any integer type, widened.
    Int(i64),
    /// `u64` values above `i64::MAX` do not occur in practice; kept exact here.
    UInt(u64),
    /// f32 or f64.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    Str(String),
    /// An array of values.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an integer, if it is one.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::UInt(u) => i64::try_from(*u).ok(),
            _ => None,
        }
    }

    /// The value as a float (integers convert).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Float(f) => Some(*f),
            other => other.as_i64().map(|i| i as f64),
        }
    }

    /// The value as a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// llama.cpp's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` varies fastest. A torch shape is the reverse.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// The torch shape (`[out, in]` for a weight).
    pub fn torch_shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// An open GGUF file.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    /// Format version.
    pub version: u32,
    /// Metadata, by key.
    pub metadata: BTreeMap<String, MetaValue>,
    /// The tensor directory, in file order.
    pub tensors: Vec<TensorInfo>,
    data_start: u64,
}

const MAGIC: &[u8; 4] = b"GGUF";
/// Longest string or array accepted, so a corrupt length fails instead of allocating.
const MAX_LEN: u64 = 1 << 28;

struct Cursor<R> {
    inner: R,
    path: PathBuf,
}

impl<R: Read> Cursor<R> {
    fn bad(&self, message: String) -> ModelError {
        ModelError::Checkpoint {
            path: self.path.clone(),
            message,
        }
    }

    fn bytes<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.bad(format!("truncated GGUF header ({e})")))?;
        Ok(buf)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn len(&mut self, what: &str) -> Result<u64> {
        let n = self.u64()?;
        if n > MAX_LEN {
            return Err(self.bad(format!("{what} of length {n}: not a valid GGUF file")));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.len("string")? as usize;
        let mut buf = vec![0u8; n];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.bad(format!("truncated GGUF string ({e})")))?;
        String::from_utf8(buf).map_err(|_| self.bad("metadata string is not UTF-8".to_string()))
    }

    fn value(&mut self, kind: u32) -> Result<MetaValue> {
        Ok(match kind {
            0 => MetaValue::Int(u8::from_le_bytes(self.bytes()?) as i64),
            1 => MetaValue::Int(i8::from_le_bytes(self.bytes()?) as i64),
            2 => MetaValue::Int(u16::from_le_bytes(self.bytes()?) as i64),
            3 => MetaValue::Int(i16::from_le_bytes(self.bytes()?) as i64),
            4 => MetaValue::Int(u32::from_le_bytes(self.bytes()?) as i64),
            5 => MetaValue::Int(i32::from_le_bytes(self.bytes()?) as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.bytes()?) as f64),
            7 => MetaValue::Bool(self.bytes::<1>()?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                let item = self.u32()?;
                let n = self.len("array")?;
                let items = (0..n).map(|_| self.value(item)).collect::<Result<_>>()?;
                MetaValue::Array(items)
            }
            10 => MetaValue::UInt(self.u64()?),
            11 => MetaValue::Int(i64::from_le_bytes(self.bytes()?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.bytes()?)),
            other => return Err(self.bad(format!("unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Reads the header, metadata and tensor directory of `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(ModelError::io(path))?;
        let mut r = Cursor {
            inner: BufReader::new(file),
            path: path.to_path_buf(),
        };
        let magic = r.bytes::<4>()?;
        if &magic != MAGIC {
            return Err(r.bad("not a GGUF file (the magic bytes are not `GGUF`)".to_string()));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.bad(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let n_tensors = r.len("tensor count")?;
        let n_meta = r.len("metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_meta {
            let key = r.string()?;
            let kind = r.u32()?;
            let value = r.value(kind)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims > 4 {
                return Err(r.bad(format!("tensor {name} has {n_dims} dimensions")));
            }
            let dims = (0..n_dims).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            let type_id = r.u32()?;
            let ggml_type = GgmlType::from_id(type_id)
                .ok_or_else(|| r.bad(format!("tensor {name} has unknown ggml type {type_id}")))?;
            let offset = r.u64()?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(MetaValue::as_i64)
            .unwrap_or(32) as u64;
        let here = r.inner.stream_position().map_err(ModelError::io(path))?;
        let data_start = here.div_ceil(alignment) * alignment;
        Ok(Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
        })
    }

    /// A metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// The raw bytes of a tensor.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<Vec<u8>> {
        let size =
            info.ggml_type
                .bytes_for(info.elements())
                .ok_or_else(|| ModelError::Checkpoint {
                    path: self.path.clone(),
                    message: format!(
                        "tensor {} has {} elements, not a whole number of {:?} blocks",
                        info.name,
                        info.elements(),
                        info.ggml_type
                    ),
                })?;
        let mut file = File::open(&self.path).map_err(ModelError::io(&self.path))?;
        file.seek(SeekFrom::Start(self.data_start + info.offset))
            .map_err(ModelError::io(&self.path))?;
        let mut buf = vec![0u8; size as usize];
        file.read_exact(&mut buf)
            .map_err(|e| ModelError::Checkpoint {
                path: self.path.clone(),
                message: format!("tensor {} is cut short: {e}", info.name),
            })?;
        Ok(buf)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
