//! The training step the benchmark times: a policy-gradient-shaped loss over the
//! batch's log-probs, backward, and AdamW.

use lsp_model::LanguageModel;
use tch::{Kind, nn, nn::OptimizerConfig};

/// An AdamW optimizer over the model's weights.
pub struct TrainStep {
    optimizer: nn::Optimizer,
}

impl TrainStep {
    /// AdamW with the paper's learning rate.
    pub fn new(model: &LanguageModel) -> anyhow::Result<Self> {
        let optimizer = nn::AdamW {
            wd: 0.0,
            ..nn::AdamW::default()
        }
        .build(model.var_store(), 3e-6)?;
        Ok(Self { optimizer })
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
        for chunk in pairs.chunks(micro_batch.max(1)) {
            let lp = model.completion_logprobs(chunk)?;
            let loss = -lp.values.sum(Kind::Float) / total as f64;
            loss.backward();
            loss_sum += loss.double_value(&[]);
        }
        self.optimizer.step();
        Ok(loss_sum)
    }
}
