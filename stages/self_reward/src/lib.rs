//! Stage 4 of Algorithm 1: the quality self-reward R_Q. The frozen reference model,
//! given Box 3 of the paper through its chat template, writes a justification, a
//! `<Calculation>` and a `<Score>k</Score>` (0–7); the reply is kept, read
//! ([`parse_judgement`]) and its status recorded. A reply without a usable score
//! (most of a small judge's) has `<Score>` appended and R_Q is read out of the
//! judge's distribution over the score tokens ([`ReadOut`]); with read-out off it
//! gets a configured fallback. Either way it is counted and never stops a run.
//!
//! ```ignore
//! let mut stage = SelfRewardConfig::default().build(&Setup { mode: Mode::Lsp, policy: &policy })?;
//! let mut cx = Context::new(&policy, &mut reference, iteration, seed);
//! let judged: SelfRewardBatch = stage.process(&mut cx, &rewarded)?;
//! ```

mod config;
mod error;
mod parse;
mod prompt;
mod stage;

pub use config::{ReadOut, SelfRewardConfig};
pub use error::{Result, SelfRewardError};
pub use parse::{ParseStatus, READ_OUT, ScoreSource, parse_judgement};
pub use prompt::{SELF_REWARD_PROMPT, self_reward_prompt};
pub use stage::SelfReward;
