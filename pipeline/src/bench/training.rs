//! The training step the benchmark times: a policy-gradient-shaped loss over the
//! batch's log-probs, backward, and AdamW.

use std::time::{Duration, Instant};

use lsp_model::{LanguageModel, Parallelism};
use lsp_update::AdamW;
use tch::Kind;

/// Where one step's time went: forward with the loss, backward, optimizer (as the
/// peer's training-step benchmark splits it).
#[derive(Debug, Default, Clone, Copy)]
pub struct Phases {
    pub forward: Duration,
    pub backward: Duration,
    pub optimizer: Duration,
}

/// The update stage's AdamW over the model's weights.
pub struct TrainStep {
    optimizer: AdamW,
}

impl TrainStep {
    /// AdamW (betas 0.9, 0.999) at the paper's learning rate.
    pub fn new(model: &LanguageModel) -> anyhow::Result<Self> {
        let params = model.trainable_variables().into_iter().collect();
        Ok(Self {
            optimizer: AdamW::new(params, (0.9, 0.999), 1e-8, 0.0),
        })
    }

    /// Forward, loss (−mean log-prob over all tokens), backward, step, with the
    /// gradient accumulated over micro-batches of `micro_batch` sequences so that only
    /// one micro-batch's activations are alive at a time, each micro-batch split over
    /// threads as `parallelism` says. Returns where the time went (clearing the
    /// gradients and the bf16 casts count as forward; with several threads, a
    /// micro-batch's forward is its slowest thread's).
    pub fn run(
        &mut self,
        model: &LanguageModel,
        batch: &[Vec<u32>],
        micro_batch: usize,
        parallelism: Parallelism,
    ) -> anyhow::Result<Phases> {
        let pairs: Vec<(&[u32], &[u32])> = batch.iter().map(|s| (&s[..1], &s[1..])).collect();
        let total: usize = pairs.iter().map(|(_, c)| c.len()).sum();
        let mut phases = Phases::default();
        let start = Instant::now();
        self.optimizer.zero_grad();
        let weights = model.training_weights();
        phases.forward += start.elapsed();
        for chunk in pairs.chunks(micro_batch.max(1)) {
            let clock = Instant::now();
            let tokens: Vec<usize> = chunk.iter().map(|(p, c)| p.len() + c.len()).collect();
            let shares = model
                .training_split(parallelism, &tokens)
                .into_iter()
                .map(|run| &chunk[run])
                .collect();
            let forwards = model.train_in_parallel(&weights, shares, |model, weights, share| {
                let clock = Instant::now();
                let pass = model.training_logprobs(weights, share)?;
                let loss = -pass.logprobs.values.sum(Kind::Float) / total as f64;
                let forward = clock.elapsed();
                loss.backward();
                pass.backward();
                anyhow::Ok(forward)
            })?;
            let forward = forwards.into_iter().max().unwrap_or_default();
            phases.forward += forward;
            phases.backward += clock.elapsed().saturating_sub(forward);
        }
        drop(weights);
        let clock = Instant::now();
        self.optimizer.step(3e-6);
        phases.optimizer += clock.elapsed();
        Ok(phases)
    }
}
