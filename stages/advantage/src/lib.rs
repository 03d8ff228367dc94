//! Stage 5 of Algorithm 1: group-relative advantages, pure maths with no tch.
//!
//! V(q) = mean_j R(q, a_j); A_Sol = R − V(q); V̄ = mean_i V(q_i); A_Ch = V̄ − V(q).
//! With R_Q (mode `lsp`): solver reward R + R_Q, challenger reward −V(q) + V_Q(q).
//!
//! Today this crate holds the stage's config ([`AdvantageConfig`]) and the training
//! [`Mode`]; the computation ([`lsp_schemas::SelfRewardBatch`] in,
//! [`lsp_schemas::AdvantageBatch`] out) is the six-stages issue's work.

mod config;

pub use config::{AdvantageConfig, Mode};
