//! What a config asks for that runs, but probably not as its author meant: printed by
//! `pipeline validate` and logged at the start of `pipeline run`.

use lsp_model::{DeviceKind, Dtype, ModelConfig};
use lsp_update::UpdateConfig;

use super::EpochConfig;

/// The size of a trained transformer's weights, roughly: the matrices of Llama 3.2
/// and SmolLM2 have standard deviations of 0.01–0.05.
const TYPICAL_WEIGHT: f64 = 0.02;

impl EpochConfig {
    /// One line per warning: the run's threads against the machine's cores, a CUDA
    /// device this machine's libtorch does not see, and, for the run and each of its
    /// stages, a policy whose updates bf16 rounds away.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.run.oversubscription().into_iter().collect();
        out.extend(cuda_unseen(&self.model));
        out.extend(bf16_steps_lost(&self.model, &self.update));
        // A stage trains the run's model; only its own `update` can change the verdict.
        for stage in self.stages.iter().filter(|s| s.update.is_some()) {
            let staged = self.staged(stage);
            let warning = bf16_steps_lost(&staged.model, &staged.update);
            out.extend(warning.map(|w| format!("stage {}: {w}", stage.name)));
        }
        out
    }
}

/// A warning when the config asks for CUDA and this machine's libtorch sees no CUDA
/// device (a CPU build, or no GPU): not an error, since a config may be checked on a
/// machine other than the one it runs on, but `pipeline run` here stops at loading.
fn cuda_unseen(model: &ModelConfig) -> Option<String> {
    (model.device == DeviceKind::Cuda && !tch::Cuda::is_available()).then(|| {
        "model.device: cuda, but libtorch sees no CUDA device on this machine (a CPU \
         libtorch, or no GPU): `pipeline run` here would stop when it loads the policy; \
         see the README's \"libtorch with CUDA\""
            .to_string()
    })
}

/// A warning when the policy's own weights train in bf16 (`model.dtype: bf16`, no
/// LoRA) at a learning rate whose steps bf16 cannot hold.
///
/// An AdamW step moves a weight by at most about the learning rate (the bias-corrected
/// `m̂/√v̂` is about ±1 or less), and the weight, stored in bf16 (8 significant bits),
/// keeps a change only from half a unit of its last place: a weight of size `512·lr` or
/// more holds still (`lsp_update::AdamW`'s test of the bound).
fn bf16_steps_lost(model: &ModelConfig, update: &UpdateConfig) -> Option<String> {
    let lr = update.learning_rate;
    let holds_still = 512.0 * lr;
    (model.dtype == Dtype::Bf16 && model.lora.is_none() && holds_still < TYPICAL_WEIGHT).then(
        || {
            format!(
                "model.dtype: bf16 trains the policy's weights in bf16 themselves: an AdamW \
                 step moves a weight by at most about update.learning_rate ({lr:e}), which bf16 \
                 rounds away for every weight of size {holds_still:.1e} or more (a trained \
                 model's are about {TYPICAL_WEIGHT}), so most steps are lost; train with \
                 dtype: f32 and precision: mixed_bf16 (f32 master weights, bf16 products), or \
                 with model.lora"
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StageConfig;

    fn config(dtype: Dtype, lr: f64) -> EpochConfig {
        let mut config = EpochConfig::default();
        config.model.dtype = dtype;
        config.update.learning_rate = lr;
        config
    }

    fn bf16_lines(config: &EpochConfig) -> Vec<String> {
        let lines = config.warnings();
        lines.into_iter().filter(|w| w.contains("bf16")).collect()
    }

    #[test]
    fn pure_bf16_training_at_a_small_learning_rate_is_warned_about() {
        // The paper's 3e-6: a step of about 3e-6 is lost on weights from 1.5e-3 up.
        let lines = bf16_lines(&config(Dtype::Bf16, 3e-6));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("(3e-6)") && lines[0].contains("1.5e-3"),
            "{lines:?}"
        );
        // f32 weights keep every step; 1e-4 moves weights up to 0.05.
        assert!(bf16_lines(&config(Dtype::F32, 3e-6)).is_empty());
        assert!(bf16_lines(&config(Dtype::Bf16, 1e-4)).is_empty());
        // LoRA trains its own factors (B starts at zero), not the bf16 base.
        let mut lora = config(Dtype::Bf16, 3e-6);
        lora.model.lora = Some(serde_norway::from_str("{r: 8}").unwrap());
        assert!(bf16_lines(&lora).is_empty());
    }

    #[test]
    fn a_stage_with_its_own_learning_rate_is_warned_about_by_name() {
        let mut config = config(Dtype::Bf16, 1e-3);
        let stage = |name: &str, lr: Option<f64>| -> StageConfig {
            let update = lr.map(|lr| format!(", update: {{learning_rate: {lr}}}"));
            serde_norway::from_str(&format!("{{name: {name}{}}}", update.unwrap_or_default()))
                .unwrap()
        };
        config.stages = vec![stage("lsp", None), stage("grpo", Some(2e-6))];
        let lines = bf16_lines(&config);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].starts_with("stage grpo: model.dtype: bf16"),
            "{lines:?}"
        );
    }
}
