//! GGUF import: read llama.cpp's file format, dequantize its tensors and write a
//! Hugging Face folder the engine (and transformers) loads.

mod dtype;
mod import;
mod reader;
mod tokenizer_json;

pub use dtype::GgmlType;
pub use import::{ImportSummary, import_gguf};
pub use reader::{GgufFile, MetaValue, TensorInfo};
