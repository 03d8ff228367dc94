//! What a stage is built with ([`Setup`]) and what it runs with ([`Context`]).

use crate::mode::Mode;
use crate::tally::QueryTally;

/// What building a stage may read: the game's mode and the policy (whose load
/// options the stage's own models follow; whose weights the update trains).
#[derive(Debug, Clone, Copy)]
pub struct Setup<'a, M> {
    /// The game played.
    pub mode: Mode,
    /// The trained model.
    pub policy: &'a M,
}

/// The frozen reference model (the judge of the self-reward, the anchor of the KL):
/// resident, or loaded when first asked for and dropped again when released.
pub trait Reference<M> {
    /// The model, loading it first if it is not in memory.
    fn get(&mut self) -> Result<&M, Unavailable>;

    /// Done with it for now: an offloaded reference may leave memory.
    fn release(&mut self) {}
}

/// A model held in memory is its own reference.
impl<M> Reference<M> for M {
    fn get(&mut self) -> Result<&M, Unavailable> {
        Ok(self)
    }
}

/// A reference that may be absent (`None`: for stages that need none, as in a
/// test); asking an absent one for the model is an error.
impl<M> Reference<M> for Option<M> {
    fn get(&mut self) -> Result<&M, Unavailable> {
        self.as_ref()
            .ok_or_else(|| Unavailable("this context has no reference model".into()))
    }
}

/// The reference could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("the reference model could not be loaded: {0}")]
pub struct Unavailable(pub Box<dyn std::error::Error + Send + Sync>);

/// What a stage's `process` runs with, for one iteration.
pub struct Context<'a, M> {
    /// The iteration (the dataflow's timestamp).
    pub iteration: u64,
    /// This stage's seed for this iteration (the run's seed, the iteration and the
    /// stage's [`Stage::STREAM`](crate::Stage::STREAM) mixed by the caller): draws
    /// derive from it and from each sequence's number, never from the worker.
    pub seed: u64,
    /// The model being trained.
    pub policy: &'a M,
    /// The frozen reference.
    pub reference: &'a mut dyn Reference<M>,
    /// Every worker's [`QueryTally`]s of the iteration, once gathered (for the
    /// advantage and the update); `None`: the input batch is the whole iteration.
    pub tallies: Option<&'a [QueryTally]>,
}

impl<'a, M> Context<'a, M> {
    /// A context for `iteration` with the stage's `seed`, the batch taken as the
    /// whole iteration.
    pub fn new(
        policy: &'a M,
        reference: &'a mut dyn Reference<M>,
        iteration: u64,
        seed: u64,
    ) -> Self {
        Self {
            iteration,
            seed,
            policy,
            reference,
            tallies: None,
        }
    }

    /// The same, with the whole iteration's tallies.
    pub fn among(mut self, tallies: &'a [QueryTally]) -> Self {
        self.tallies = Some(tallies);
        self
    }
}
