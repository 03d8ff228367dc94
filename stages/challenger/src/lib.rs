//! Stage 1 of Algorithm 1: the Challenger. Given Box 1 of the paper (its `{task}` and
//! `{template}` filled from config) through the policy's chat template, the policy
//! samples the iteration's queries meant to be hard for the Solver (a worker's share
//! of the N, named by a `SlotBatch`); no timely here, only the
//! [`lsp_stage::Stage`] interface.
//!
//! ```ignore
//! let mut challenger = ChallengerConfig::default().build(&Setup { mode, policy: &policy })?;
//! let mut cx = Context::new(&policy, &mut None, iteration, seed);
//! let queries: QueryBatch = challenger.process(&mut cx, &SlotBatch::all(iteration, 8)?)?;
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
