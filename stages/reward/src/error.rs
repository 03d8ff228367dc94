//! Errors of the reward stage.

/// What went wrong scoring answers.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// The stage's config is invalid.
    #[error("reward config:\n{0}")]
    Config(lsp_schemas::Problems),
    /// The scoring model failed or does not fit its use.
    #[error(transparent)]
    Model(#[from] lsp_model::ModelError),
    /// A batch could not be read or built.
    #[error(transparent)]
    Schema(#[from] lsp_schemas::SchemaError),
    /// The judge's tokenizer cannot express the score scale.
    #[error("judge {model}: {message}")]
    Judge {
        /// The judge model's folder.
        model: String,
        /// What is wrong.
        message: String,
    },
}

/// Result with [`RewardError`] as the default error.
pub type Result<T, E = RewardError> = std::result::Result<T, E>;
