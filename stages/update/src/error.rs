//! Errors of the update stage.

/// What went wrong in the update.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The stage's config is invalid.
    #[error("update config:\n{0}")]
    Config(lsp_schemas::Problems),
    /// A model failed.
    #[error(transparent)]
    Model(#[from] lsp_model::ModelError),
    /// libtorch failed outside a model call (the optimizer).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The update was built without what its loss needs.
    #[error("update: {0}")]
    Setup(String),
    /// The reference's log-probs do not belong to the batch.
    #[error("reference log-probs: {0}")]
    Mismatch(String),
    /// The update's plan and a worker's rows disagree.
    #[error("update plan: {0}")]
    Plan(String),
    /// The reference could not be loaded.
    #[error(transparent)]
    Reference(#[from] lsp_stage::Unavailable),
    /// A batch could not be read or built.
    #[error(transparent)]
    Schema(#[from] lsp_schemas::SchemaError),
}

/// Result with [`UpdateError`] as the default error.
pub type Result<T, E = UpdateError> = std::result::Result<T, E>;
