//! The one interface every stage of Algorithm 1 has, after vector's
//! `TransformConfig::build` → `Transform`: a serde config that [`StageConfig::build`]s
//! the stage from a [`Setup`], and [`Stage::process`]`(context, batch) -> batch`, the
//! [`Context`] carrying the models, the iteration and the stage's seed.
//!
//! | stage | input | output |
//! |---|---|---|
//! | challenger | `SlotBatch` | `QueryBatch` |
//! | solver | `QueryBatch` | `AnswerBatch` |
//! | reward | `AnswerBatch` | `RewardBatch` |
//! | self-reward | `RewardBatch` | `SelfRewardBatch` |
//! | advantage | `SelfRewardBatch` | `AdvantageBatch` |
//! | update | `AdvantageBatch` | `UpdatedBatch` (and a gradient for the step) |
//!
//! A stage knows nothing of timely: the pipeline runs each in one operator that times
//! it, and unit tests call `process` on hand-built batches. The crate is generic over
//! the model type `M`, so the stages that need no model (the advantage) stay free of
//! tch.
//!
//! ```
//! use lsp_stage::{Context, Stage};
//! use lsp_schemas::{SlotBatch, TypedBatch};
//!
//! /// A stage that hands its input on.
//! struct Pass;
//! impl<M> Stage<M> for Pass {
//!     const NAME: &'static str = "pass";
//!     const STREAM: u64 = 0;
//!     type Input = SlotBatch;
//!     type Output = SlotBatch;
//!     type Error = lsp_schemas::SchemaError;
//!     fn process(&mut self, _: &mut Context<'_, M>, input: &SlotBatch) -> Result<SlotBatch, Self::Error> {
//!         Ok(input.clone())
//!     }
//! }
//! let mut none: Option<()> = None;
//! let mut cx = Context::new(&(), &mut none, 3, 42);
//! let out = Pass.process(&mut cx, &SlotBatch::all(3, 2).unwrap()).unwrap();
//! assert_eq!(out.num_rows(), 2);
//! ```

mod context;
mod mode;
mod stage;
mod tally;

pub use context::{Context, Reference, Setup, Unavailable};
pub use mode::Mode;
pub use stage::{Stage, StageConfig};
pub use tally::QueryTally;
