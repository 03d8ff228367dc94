//! The per-token policy-gradient terms and their aggregation, as tensor maths.
//!
//! For a sampled token with log-prob `lp` under π_θ and `ref` under π_ref:
//! `ratio = exp(lp − stop_grad(lp))` (= 1, so the gradient is REINFORCE's), and the
//! KL estimate is `lp − ref` (k1, the paper's) or `exp(ref − lp) − (ref − lp) − 1`
//! (k3). A sequence's term is the aggregation of `ratio·A − β·kl` over its tokens.

use lsp_model::TokenLogprobs;
use tch::Tensor;

use crate::config::{KlEstimator, Loss};

/// Per-token KL estimates.
pub fn kl_per_token(lp: &Tensor, reference: &Tensor, estimator: KlEstimator) -> Tensor {
    match estimator {
        KlEstimator::K1 => lp - reference,
        KlEstimator::K3 => {
            let log_ratio = reference - lp;
            log_ratio.exp() - &log_ratio - 1.0
        }
    }
}

/// Per-sequence token sums `Σ_t (ratio·A − β·kl)` and the per-sequence KL token
/// means.
pub fn sequence_terms(
    lp: &TokenLogprobs,
    reference: &Tensor,
    advantages: &[f64],
    kl_coef: f64,
    estimator: KlEstimator,
) -> (Tensor, Tensor) {
    let device = lp.values.device();
    let ratio = (&lp.values - lp.values.detach()).exp();
    let adv: Vec<f32> = advantages.iter().map(|&a| a as f32).collect();
    let adv_tokens = Tensor::from_slice(&adv)
        .to_device(device)
        .index_select(0, &lp.sequence_index());
    let kl = kl_per_token(&lp.values, reference, estimator);
    let per_token = ratio * adv_tokens - &kl * kl_coef;
    (
        lp.sum_per_sequence(&per_token),
        lp.mean_per_sequence(&kl.detach()),
    )
}

/// What a role's sequences of one iteration count, for [`sequence_weight`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoleCounts {
    /// Sequences in the iteration (`B`).
    pub sequences: f64,
    /// Their tokens (`T`).
    pub tokens: f64,
    /// The role's `max_new_tokens` (dr_grpo's `L`).
    pub limit: f64,
}

/// The factor a sequence's token sum is multiplied by in its role's loss: `tokens`
/// is its own count, `micro` the role's (sequences, tokens) in its micro-batch.
pub fn sequence_weight(loss: Loss, role: RoleCounts, tokens: f64, micro: (f64, f64)) -> f64 {
    let b = role.sequences.max(1.0);
    match loss {
        Loss::Grpo => 1.0 / (b * tokens.max(1.0)),
        Loss::SequenceSum => 1.0 / b,
        Loss::DrGrpo => 1.0 / (b * role.limit.max(1.0)),
        Loss::Dapo => 1.0 / role.tokens.max(1.0),
        Loss::Bnpo => (micro.0 / b) / micro.1.max(1.0),
    }
}

/// Global L2 norm of `grads` (undefined ones count as zero).
pub fn grad_norm(grads: &[Tensor]) -> f64 {
    let mut total = 0.0;
    for g in grads {
        if g.defined() {
            // The norm of each tensor (no temporary of its size), summed in f64.
            total += g.norm().double_value(&[]).powi(2);
        }
    }
    total.sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_estimators_by_hand() {
        let lp = Tensor::from_slice(&[-1.0f32, -2.0]);
        let reference = Tensor::from_slice(&[-1.5f32, -2.0]);
        let k1 = Vec::<f32>::try_from(&kl_per_token(&lp, &reference, KlEstimator::K1)).unwrap();
        assert_eq!(k1, [0.5, 0.0]);
        let k3 = Vec::<f32>::try_from(&kl_per_token(&lp, &reference, KlEstimator::K3)).unwrap();
        // r = exp(−0.5): r − 1 − log r = e^−0.5 − 1 + 0.5.
        assert!((k3[0] as f64 - ((-0.5f64).exp() - 0.5)).abs() < 1e-6);
        assert_eq!(k3[1], 0.0);
    }

    #[test]
    fn terms_sum_per_sequence_and_kl_is_a_token_mean() {
        // Two sequences of 2 and 1 tokens; policy = reference so kl = 0 and the term
        // is the advantage per token.
        let lp = TokenLogprobs {
            values: Tensor::from_slice(&[-1.0f32, -2.0, -3.0]),
            lengths: vec![2, 1],
        };
        let (sum, kl) = sequence_terms(&lp, &lp.values.copy(), &[2.0, -1.0], 0.1, KlEstimator::K1);
        assert_eq!(Vec::<f32>::try_from(&sum).unwrap(), [4.0, -1.0]);
        assert_eq!(Vec::<f32>::try_from(&kl).unwrap(), [0.0, 0.0]);
        // A reference 0.5 lower on the first token: k1 = 0.5 there, mean 0.25.
        let reference = Tensor::from_slice(&[-1.5f32, -2.0, -3.0]);
        let (sum, kl) = sequence_terms(&lp, &reference, &[2.0, -1.0], 0.1, KlEstimator::K1);
        assert_eq!(Vec::<f32>::try_from(&kl).unwrap(), [0.25, 0.0]);
        assert!((sum.double_value(&[0]) - (4.0 - 0.05)).abs() < 1e-6);
    }

    #[test]
    fn each_loss_weighs_a_sequence_as_trl_does() {
        // 4 sequences of 3, 1, 2, 4 tokens (T = 10), limit 8; the sequence of 3
        // tokens sits in a micro-batch of 2 sequences and 4 tokens.
        let role = RoleCounts {
            sequences: 4.0,
            tokens: 10.0,
            limit: 8.0,
        };
        let w = |loss| sequence_weight(loss, role, 3.0, (2.0, 4.0));
        assert_eq!(w(Loss::Grpo), 1.0 / 12.0);
        assert_eq!(w(Loss::SequenceSum), 0.25);
        assert_eq!(w(Loss::DrGrpo), 1.0 / 32.0);
        assert_eq!(w(Loss::Dapo), 0.1);
        assert_eq!(w(Loss::Bnpo), 0.5 / 4.0);
    }
}
