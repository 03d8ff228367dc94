//! Stage 6 of Algorithm 1: the parameter update. L = L_Sol + α_Ch·L_Ch, on-policy
//! policy-gradient terms with β·KL to the frozen reference, one AdamW step per
//! iteration with gradient accumulation over micro-batches.
//!
//! Today this crate holds the stage's config ([`UpdateConfig`]); the loss and the step
//! ([`lsp_schemas::AdvantageBatch`] in, [`lsp_schemas::UpdatedBatch`] and
//! [`lsp_schemas::StepBatch`] out) are the six-stages issue's work.

mod config;

pub use config::{Aggregation, KlEstimator, UpdateConfig};
