//! Errors of the challenger stage.

/// What went wrong generating queries.
#[derive(Debug, thiserror::Error)]
pub enum ChallengerError {
    /// The stage's config is invalid.
    #[error("challenger config:\n{0}")]
    Config(lsp_schemas::Problems),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] lsp_model::ModelError),
    /// The output batch could not be built.
    #[error(transparent)]
    Schema(#[from] lsp_schemas::SchemaError),
}

/// Result with [`ChallengerError`] as the default error.
pub type Result<T, E = ChallengerError> = std::result::Result<T, E>;
