//! Errors of the solver stage.

/// What went wrong sampling answers.
#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    /// The stage's config is invalid.
    #[error("solver config:\n{0}")]
    Config(lsp_schemas::Problems),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] lsp_model::ModelError),
    /// A batch could not be read or built.
    #[error(transparent)]
    Schema(#[from] lsp_schemas::SchemaError),
}

/// Result with [`SolverError`] as the default error.
pub type Result<T, E = SolverError> = std::result::Result<T, E>;
