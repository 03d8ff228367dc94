//! Stage 4 of Algorithm 1: the quality self-reward R_Q. The frozen reference model,
//! given Box 3 of the paper through its chat template, writes a justification, a
//! `<Calculation>` and a `<Score>k</Score>` (0–7).
//!
//! Today this crate holds the stage's config ([`SelfRewardConfig`]) and the verbatim
//! prompt ([`self_reward_prompt`]). The stage itself (generation, parsing with a
//! recorded status and a counted fallback, [`lsp_schemas::RewardBatch`] in,
//! [`lsp_schemas::SelfRewardBatch`] out) is the six-stages issue's work.

mod config;
mod prompt;

pub use config::SelfRewardConfig;
pub use prompt::{SELF_REWARD_PROMPT, self_reward_prompt};
