//! The two traits: a config builds a stage; a stage processes a batch.

use lsp_schemas::TypedBatch;

use crate::context::{Context, Setup};

/// A phase of Algorithm 1: one typed batch in, one typed batch out.
pub trait Stage<M> {
    /// The stage's name: in logs, errors, progress and the record's timing columns.
    const NAME: &'static str;
    /// The stage's number in the seed: its seed for an iteration mixes the run's seed,
    /// the iteration and this, so two stages never draw the same numbers.
    const STREAM: u64;
    /// The batch it reads.
    type Input: TypedBatch;
    /// The batch it writes: the input's columns followed by its own.
    type Output: TypedBatch;
    /// The stage crate's error.
    type Error: std::fmt::Display;

    /// This worker's share of one iteration's batch through the stage.
    fn process(
        &mut self,
        cx: &mut Context<'_, M>,
        input: &Self::Input,
    ) -> Result<Self::Output, Self::Error>;
}

/// A stage's section of `epoch.yaml`: checked and turned into the stage.
pub trait StageConfig<M> {
    /// What it builds.
    type Stage: Stage<M>;

    /// Checks the config (every problem at once) and builds the stage for `setup`.
    fn build(&self, setup: &Setup<'_, M>) -> Result<Self::Stage, <Self::Stage as Stage<M>>::Error>;
}
