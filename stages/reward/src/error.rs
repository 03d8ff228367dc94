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
    /// The reference (the judge by default) could not be loaded.
    #[error(transparent)]
    Reference(#[from] lsp_stage::Unavailable),
    /// A batch could not be read or built.
    #[error(transparent)]
    Schema(#[from] lsp_schemas::SchemaError),
    /// The user's reward code failed on a row and `on_failure` is `error`.
    #[error(
        "the `{name}` reward failed on query {query_id}, answer {answer_index} of iteration \
         {iteration}: {message} (set `on_failure: fallback` to give such rows `fallback_reward`)"
    )]
    External {
        /// The reward's name (its kind, or its name in a sum).
        name: String,
        /// Where.
        iteration: u64,
        /// Where.
        query_id: u32,
        /// Where.
        answer_index: u32,
        /// What went wrong.
        message: String,
    },
}

/// Result with [`RewardError`] as the default error.
pub type Result<T, E = RewardError> = std::result::Result<T, E>;
