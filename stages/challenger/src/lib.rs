//! Stage 1 of Algorithm 1: the Challenger. Given Box 1 of the paper (its `{task}` and
//! `{template}` filled from config) through the policy's chat template, the policy
//! samples N queries meant to be hard for the Solver; no timely here, only
//! `process(policy, iteration, seed) -> QueryBatch`.
//!
//! ```ignore
//! let challenger = Challenger::new(ChallengerConfig::default())?;
//! let queries: QueryBatch = challenger.process(&policy, iteration, seed)?;
//! ```

mod clean;
mod config;
mod error;
mod prompt;
mod stage;

pub use clean::{QueryStatus, clean_query};
pub use config::ChallengerConfig;
pub use error::{ChallengerError, Result};
pub use prompt::{CHALLENGER_PROMPT, challenger_prompt};
pub use stage::{Challenger, PROMPT_ID};
