//! The update's section of `epoch.yaml`.

use lsp_model::Parallelism;
use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};

/// Estimator of KL(π_θ ‖ π_ref) from sampled tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KlEstimator {
    /// log(π_θ / π_ref), the paper's.
    #[default]
    K1,
    /// (r − 1) − log r with r = π_ref / π_θ: non-negative, lower variance.
    K3,
}

/// How the per-token terms `l` of a role's sequences (the answers; the queries, times
/// α_Ch) are normalised into its loss, with TRL's names. `B` is the role's sequences
/// in the iteration, `|o_i|` sequence i's tokens, `T` all its tokens in the iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    /// `(1/B) Σ_i (1/|o_i|) Σ_t l`: each sequence's token mean, averaged (TRL's
    /// `grpo`; this project's default).
    #[default]
    Grpo,
    /// `(1/B) Σ_i Σ_t l`: each sequence's token sum, the sequence log-prob of the
    /// paper's formula.
    SequenceSum,
    /// `(1/(B·L)) Σ_i Σ_t l` with `L` the role's `max_new_tokens` (Dr. GRPO: no
    /// length bias).
    DrGrpo,
    /// `(1/T) Σ_i Σ_t l`: the token mean over the whole iteration (DAPO).
    Dapo,
    /// Each micro-batch's token mean, the micro-batches weighted by their share of
    /// the role's sequences: `Σ_m (B_m/B)(1/T_m) Σ_{i∈m} Σ_t l` (TRL's `bnpo`, which
    /// is this with equal micro-batches; it depends on the micro-batch partition).
    Bnpo,
}

/// How the step corrects for the sampler computing other log-probs than the trainer
/// (bf16 rollouts, another engine): the rollout/training mismatch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutCorrection {
    /// Train on the samples as if the trainer had drawn them (the mismatch is still
    /// measured and recorded).
    #[default]
    None,
    /// Truncated importance sampling (as TRL, verl and OpenRLHF offer): each token's
    /// policy-gradient term weighed by `min(π_trainer / π_sampler, tis_cap)`, the
    /// weight without gradient.
    Tis,
}

/// Loss, optimizer and step settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpdateConfig {
    /// AdamW learning rate (paper: 3e-6).
    pub learning_rate: f64,
    /// AdamW β1, β2.
    pub betas: [f64; 2],
    /// AdamW ε.
    pub eps: f64,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// β: weight of the KL term (paper: 0.05).
    pub kl_coef: f64,
    /// α_Ch: weight of the challenger loss.
    pub challenger_coef: f64,
    /// KL estimator.
    pub kl_estimator: KlEstimator,
    /// How per-token terms are normalised ([`Loss`]).
    pub loss: Loss,
    /// Sequences per forward/backward pass; gradients accumulate over micro-batches. A
    /// query's answers stay in one pass when they fit, several queries' answers share one
    /// when they do (`answers_per_query` smaller than this); the challenger's queries
    /// have passes of their own.
    pub micro_batch_size: u64,
    /// How a micro-batch uses the worker's `run.threads`: each operator over
    /// libtorch's pool (`operators`), or its sequences split over them, one libtorch
    /// thread each (`sequences`, on the CPU: faster for micro-batches of thousands of
    /// tokens under mixed precision); `auto` (the default) chooses by that rule
    /// (`lsp_model::Parallelism`). The same gradient either way, up to the order of
    /// its sums.
    pub parallelism: Parallelism,
    /// Clip the gradient's global norm to this (0 turns clipping off).
    pub max_grad_norm: f64,
    /// μ: optimizer steps over each iteration's batch. 1 (the paper's) is on-policy:
    /// the ratio is 1 and never clipped. Above 1, PPO's clipped ratio against the
    /// sampling pass's log-probs.
    pub epochs: u64,
    /// ε_low: the ratio of a token with A < 0 is clipped at 1 − clip_low.
    pub clip_low: f64,
    /// ε_high: the ratio of a token with A > 0 is clipped at 1 + clip_high (DAPO's
    /// clip-higher: 0.28).
    pub clip_high: f64,
    /// Correction for the rollout/training mismatch ([`RolloutCorrection`]).
    pub rollout_correction: RolloutCorrection,
    /// The truncation of `tis`'s importance weights (≥ 1).
    pub tis_cap: f64,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        Self {
            learning_rate: 3e-6,
            betas: [0.9, 0.999],
            eps: 1e-8,
            weight_decay: 0.0,
            kl_coef: 0.05,
            challenger_coef: 1.0,
            kl_estimator: KlEstimator::K1,
            loss: Loss::Grpo,
            micro_batch_size: 4,
            parallelism: Parallelism::default(),
            max_grad_norm: 1.0,
            epochs: 1,
            clip_low: 0.2,
            clip_high: 0.2,
            rollout_correction: RolloutCorrection::None,
            tis_cap: 2.0,
        }
    }
}

impl Validate for UpdateConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let p = |f: &str| join_path(path, f);
        problems.check(
            self.learning_rate > 0.0 && self.learning_rate < 1.0,
            &p("learning_rate"),
            || {
                format!(
                    "{} is out of range: expected 0 < learning_rate < 1",
                    self.learning_rate
                )
            },
        );
        for (i, b) in self.betas.iter().enumerate() {
            problems.check(
                *b >= 0.0 && *b < 1.0,
                &format!("{}[{i}]", p("betas")),
                || format!("{b} is out of range: expected 0 <= beta < 1"),
            );
        }
        problems.check(self.eps > 0.0, &p("eps"), || {
            format!("{} must be > 0", self.eps)
        });
        problems.in_range(&p("weight_decay"), self.weight_decay, 0.0, 1.0);
        problems.in_range(&p("kl_coef"), self.kl_coef, 0.0, 1e3);
        problems.in_range(&p("challenger_coef"), self.challenger_coef, 0.0, 1e3);
        problems.positive(&p("micro_batch_size"), self.micro_batch_size);
        problems.in_range(&p("max_grad_norm"), self.max_grad_norm, 0.0, 1e9);
        problems.positive(&p("epochs"), self.epochs);
        problems.check(
            self.clip_low >= 0.0 && self.clip_low < 1.0,
            &p("clip_low"),
            || {
                format!(
                    "{} is out of range: expected 0 <= clip_low < 1",
                    self.clip_low
                )
            },
        );
        problems.in_range(&p("clip_high"), self.clip_high, 0.0, 1e3);
        problems.in_range(&p("tis_cap"), self.tis_cap, 1.0, 1e6);
        problems.check(
            self.rollout_correction == RolloutCorrection::None || self.epochs == 1,
            &p("rollout_correction"),
            || {
                "tis runs with epochs: 1; over several epochs PPO's ratio is taken against \
                 the sampler's log-probs and its clip already bounds the mismatch"
                    .to_string()
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_all_reported() {
        let mut ok = Problems::new();
        UpdateConfig::default().validate("update", &mut ok);
        assert!(ok.is_empty(), "{ok}");

        let bad = UpdateConfig {
            learning_rate: 0.0,
            betas: [0.9, 1.0],
            eps: 0.0,
            kl_coef: -1.0,
            micro_batch_size: 0,
            ..UpdateConfig::default()
        };
        let mut problems = Problems::new();
        bad.validate("update", &mut problems);
        let paths: Vec<_> = problems.iter().map(|p| p.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "update.learning_rate",
                "update.betas[1]",
                "update.eps",
                "update.kl_coef",
                "update.micro_batch_size"
            ]
        );
    }
}
