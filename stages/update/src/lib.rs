//! Stage 6 of Algorithm 1: the parameter update. L = L_Sol + α_Ch·L_Ch with
//!
//! - L_Sol = −1/(NG) Σ_ij agg_t[ ratio·A_Sol − β·KL ] over the answers' tokens,
//! - L_Ch = −1/N Σ_i agg_t[ ratio·A_Ch − β·KL ] over the queries' tokens,
//!
//! where ratio = π_θ/stop_grad(π_θ) (= 1: on-policy REINFORCE, no clipping) and KL is
//! the sampled log-ratio (k1, the paper's) or k3. `agg` is the per-token mean
//! (default) or the sequence sum. Gradients accumulate over micro-batches; one AdamW
//! step (with global-norm clipping) per iteration, skipped and recorded when the loss
//! or gradient is not finite. The reference model is never changed.
//!
//! ```ignore
//! let mut update = UpdateConfig::default().build(&Setup { mode, policy: &policy })?;
//! let mut cx = Context::new(&policy, &mut reference, iteration, seed);
//! let (updated, step) = update.train(&mut cx, &advantaged)?;
//! ```

mod adamw;
mod adamw_fused;
mod config;
mod error;
mod loss;
mod plan;
mod stage;

pub use adamw::AdamW;
pub use config::{KlEstimator, Loss, RolloutCorrection, UpdateConfig};
pub use error::{Result, UpdateError};
pub use loss::{Clip, RoleCounts, Terms, grad_norm, kl_per_token, sequence_terms, sequence_weight};
pub use plan::{Item, ItemKey, Plan};
pub use stage::over_epochs;
pub use stage::{BatchTotals, LocalStep, Measured, ReferenceLogprobs, StepSums, Update};
