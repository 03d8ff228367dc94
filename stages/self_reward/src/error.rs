//! Errors of the self-reward stage.

/// What went wrong judging answers.
#[derive(Debug, thiserror::Error)]
pub enum SelfRewardError {
    /// The stage's config is invalid.
    #[error("self_reward config:\n{0}")]
    Config(lsp_schemas::Problems),
    /// The judge model failed.
    #[error(transparent)]
    Model(#[from] lsp_model::ModelError),
    /// The reference (the judge) could not be loaded.
    #[error(transparent)]
    Reference(#[from] lsp_stage::Unavailable),
    /// A batch could not be read or built.
    #[error(transparent)]
    Schema(#[from] lsp_schemas::SchemaError),
}

/// Result with [`SelfRewardError`] as the default error.
pub type Result<T, E = SelfRewardError> = std::result::Result<T, E>;
