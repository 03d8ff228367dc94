//! Stage 2 of Algorithm 1: the Solver. The policy answers each query G times through
//! its chat template; finish reasons, token ids and log-probs are kept for the update.
//!
//! ```ignore
//! let mut solver = SolverConfig::default().build(&Setup { mode, policy: &policy })?;
//! let mut cx = Context::new(&policy, &mut None, iteration, seed);
//! let answers: AnswerBatch = solver.process(&mut cx, &queries)?;
//! ```

mod config;
mod error;
mod stage;

pub use config::SolverConfig;
pub use error::{Result, SolverError};
pub use stage::Solver;
