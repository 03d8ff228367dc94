//! Stage 5 of Algorithm 1: group-relative advantages, pure maths with no tch.
//!
//! V(q) = mean_j R(q, a_j); A_Sol = R − V(q); V̄ = mean_i V(q_i); A_Ch = V̄ − V(q).
//! With R_Q (mode `lsp`): solver reward R + w·R_Q, challenger reward −V(q) + w·V_Q(q),
//! both added before the advantages. No division by the standard deviation unless
//! `normalize_std` (off, as in the paper).
//!
//! ```
//! use lsp_advantage::{AdvantageConfig, advantages};
//! use lsp_stage::Mode;
//! let a = advantages(Mode::LspZero, &AdvantageConfig::default(), &[0, 0, 1, 1], &[1.0, 3.0, 4.0, 4.0], &[None; 4]).unwrap();
//! assert_eq!(a.adv_solver, [-1.0, 1.0, 0.0, 0.0]);
//! assert_eq!(a.adv_challenger, Some(vec![1.0, 1.0, -1.0, -1.0]));
//! ```

mod config;
mod maths;
mod stage;

pub use config::AdvantageConfig;
pub use maths::{centred, centred_in, group_advantages, groups, mean, std};
pub use stage::{AdvantageError, AdvantageStage, Advantages, advantages};
