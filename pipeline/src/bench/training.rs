//! The training step the benchmark times: a policy-gradient-shaped loss over the
//! batch's log-probs, backward, and AdamW.

use lsp_model::LanguageModel;
use lsp_update::AdamW;
use tch::Kind;

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
    /// one micro-batch's activations are alive at a time.
    pub fn run(
        &mut self,
        model: &LanguageModel,
        batch: &[Vec<u32>],
        micro_batch: usize,
    ) -> anyhow::Result<f64> {
        let pairs: Vec<(&[u32], &[u32])> = batch.iter().map(|s| (&s[..1], &s[1..])).collect();
        let total: usize = pairs.iter().map(|(_, c)| c.len()).sum();
        self.optimizer.zero_grad();
        let mut loss_sum = 0.0;
        let weights = model.training_weights();
        for chunk in pairs.chunks(micro_batch.max(1)) {
            let pass = model.training_logprobs(&weights, chunk)?;
            let loss = -pass.logprobs.values.sum(Kind::Float) / total as f64;
            loss.backward();
            pass.backward();
            loss_sum += loss.double_value(&[]);
        }
        self.optimizer.step(3e-6);
        Ok(loss_sum)
    }
}
