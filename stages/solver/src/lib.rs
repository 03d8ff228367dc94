//! Stage 2 of Algorithm 1: the Solver. The policy answers each query G times through
//! its chat template; finish reasons, token ids and log-probs are kept for the update.
//!
//! Today this crate holds the stage's config ([`SolverConfig`]); the stage itself
//! ([`lsp_schemas::QueryBatch`] in, [`lsp_schemas::AnswerBatch`] out) is the
//! six-stages issue's work and needs the model engine.

mod config;

pub use config::SolverConfig;
