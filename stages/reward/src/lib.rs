//! Stage 3 of Algorithm 1: the external reward R(q, a), from a reward model, a judge
//! model's score-token probabilities, or a verifier of reference answers.
//!
//! Today this crate holds the stage's config ([`RewardConfig`]); the stage itself
//! ([`lsp_schemas::AnswerBatch`] in, [`lsp_schemas::RewardBatch`] out) is the
//! six-stages issue's work and needs the model engine.

mod config;

pub use config::{RewardConfig, RewardKind};
