//! Errors of the model crate. Each says what was wrong, where, and what to do.

use std::path::PathBuf;

/// What went wrong loading, running or saving a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed or lacks a required field.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        #[source]
        source: serde_json::Error,
    },
    /// The checkpoint's `config.json` describes something this engine cannot run.
    #[error("{path}: {message}")]
    Config {
        /// The `config.json`.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A weight file is not a readable safetensors file.
    #[error("{path}: not a readable safetensors file: {message}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// libtorch's message.
        message: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("{folder}: tensor `{name}` is missing from the checkpoint")]
    MissingTensor {
        /// The model folder.
        folder: PathBuf,
        /// The Hugging Face tensor name.
        name: String,
    },
    /// A checkpoint tensor's shape differs from what `config.json` implies.
    #[error("{folder}: tensor `{name}` has shape {actual:?}, config.json implies {expected:?}")]
    ShapeMismatch {
        /// The model folder.
        folder: PathBuf,
        /// The Hugging Face tensor name.
        name: String,
        /// Shape implied by the config.
        expected: Vec<i64>,
        /// Shape in the file.
        actual: Vec<i64>,
    },
    /// The tokenizer files are missing, malformed or do not fit the model.
    #[error("{path}: {message}")]
    Tokenizer {
        /// The tokenizer file or model folder.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The chat template could not be parsed or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// The request cannot be served (empty batch, prompt longer than the context, ...).
    #[error("{0}")]
    Invalid(String),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    /// An I/O error at `path`, for `map_err`.
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// Result with [`ModelError`] as the default error.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;
