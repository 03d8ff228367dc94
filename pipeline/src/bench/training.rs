//! The training step the benchmark times: a policy-gradient-shaped loss over the
//! batch's log-probs, backward, and AdamW.

use std::time::{Duration, Instant};

use lsp_model::LanguageModel;
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
    /// one micro-batch's activations are alive at a time. Returns where the time went
    /// (clearing the gradients and the bf16 casts count as forward).
    pub fn run(
        &mut self,
        model: &LanguageModel,
        batch: &[Vec<u32>],
        micro_batch: usize,
    ) -> anyhow::Result<Phases> {
        let pairs: Vec<(&[u32], &[u32])> = batch.iter().map(|s| (&s[..1], &s[1..])).collect();
        let total: usize = pairs.iter().map(|(_, c)| c.len()).sum();
        let mut phases = Phases::default();
        let mut clock = Instant::now();
        let mut lap = |phase: &mut Duration| {
            *phase += clock.elapsed();
            clock = Instant::now();
        };
        self.optimizer.zero_grad();
        let weights = model.training_weights();
        for chunk in pairs.chunks(micro_batch.max(1)) {
            let pass = model.training_logprobs(&weights, chunk)?;
            let loss = -pass.logprobs.values.sum(Kind::Float) / total as f64;
            lap(&mut phases.forward);
            loss.backward();
            pass.backward();
            lap(&mut phases.backward);
        }
        drop(weights);
        self.optimizer.step(3e-6);
        lap(&mut phases.optimizer);
        Ok(phases)
    }
}
