//! Stage 1 of Algorithm 1: the Challenger. Given Box 1 of the paper (its `{task}` and
//! `{template}` filled from config) through the policy's chat template, the policy
//! samples N queries meant to be hard for the Solver.
//!
//! Today this crate holds the stage's config ([`ChallengerConfig`]) and the verbatim
//! prompt ([`challenger_prompt`]). The stage itself (sampling, clean-up of stray tags,
//! flags for empty or truncated queries, a [`lsp_schemas::QueryBatch`] out) is the
//! six-stages issue's work and needs the model engine.

mod config;
mod prompt;

pub use config::ChallengerConfig;
pub use prompt::{CHALLENGER_PROMPT, challenger_prompt};
