//! Stage 3 of Algorithm 1: the external reward R(q, a), from a reward model (the
//! paper's kind), a judge model's score-token probabilities (the offline default), or
//! a verifier of reference answers (the data-based GRPO baseline).
//!
//! ```ignore
//! let mut stage = RewardConfig::default().build(&Setup { mode, policy: &policy })?;
//! let mut cx = Context::new(&policy, &mut reference, iteration, seed);
//! let rewarded: RewardBatch = stage.process(&mut cx, &answers)?;
//! ```

mod config;
mod error;
mod external;
mod judge;
mod stage;
mod verifier;

pub use config::{OnFailure, RewardConfig, RewardKind};
pub use error::{Result, RewardError};
pub use external::{Failure, RewardRequest};
pub use judge::{JUDGE_PROMPT, choice_probabilities, judge_prompt, judge_scores};
pub use stage::{RewardStage, reward_model_scores};
pub use verifier::{last_number, reference_number, verify};
