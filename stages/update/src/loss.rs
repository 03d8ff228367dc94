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

/// PPO's clipped ratio: the sampling pass's log-probs of the same tokens, and the
/// bounds `1 − low`, `1 + high`.
#[derive(Debug)]
pub struct Clip {
    /// Old log-probs, `[tokens]` in the log-probs' order.
    pub old: Tensor,
    /// ε_low.
    pub low: f64,
    /// ε_high.
    pub high: f64,
}

/// A micro-batch's terms.
#[derive(Debug)]
pub struct Terms {
    /// Per-sequence token sums of the objective `[sequences]` (with gradient).
    pub sums: Tensor,
    /// Per-sequence KL token means `[sequences]`.
    pub kl: Tensor,
    /// Tokens whose ratio was clipped below (A < 0) and above (A > 0).
    pub clipped: (u64, u64),
}

/// Per-sequence token sums of `w·obj − β·kl`, where `obj = ratio·A` on-policy
/// (`ratio = exp(lp − stop_grad(lp))`: 1 in value, REINFORCE's gradient) and, with
/// `clip`, `min(r·A, clamp(r, 1 − ε_low, 1 + ε_high)·A)` with `r = exp(lp − old)`;
/// `w` is each token's importance weight (`weights`, without gradient; 1 when
/// `None`); with the per-sequence KL token means and the clipped token counts.
pub fn sequence_terms(
    lp: &TokenLogprobs,
    reference: &Tensor,
    advantages: &[f64],
    kl_coef: f64,
    estimator: KlEstimator,
    clip: Option<&Clip>,
    weights: Option<&Tensor>,
) -> Terms {
    let device = lp.values.device();
    let adv: Vec<f32> = advantages.iter().map(|&a| a as f32).collect();
    let adv_tokens = Tensor::from_slice(&adv)
        .to_device(device)
        .index_select(0, &lp.sequence_index());
    let (objective, clipped) = match clip {
        None => (
            (&lp.values - lp.values.detach()).exp() * &adv_tokens,
            (0, 0),
        ),
        Some(clip) => {
            let ratio = (&lp.values - &clip.old).exp();
            let bounded = ratio.clamp(1.0 - clip.low, 1.0 + clip.high);
            let objective = (&ratio * &adv_tokens).minimum(&(bounded * &adv_tokens));
            let r = ratio.detach();
            let count = |mask: Tensor| mask.sum(tch::Kind::Int64).int64_value(&[]) as u64;
            let low = count(r.lt(1.0 - clip.low).logical_and(&adv_tokens.lt(0.0)));
            let high = count(r.gt(1.0 + clip.high).logical_and(&adv_tokens.gt(0.0)));
            (objective, (low, high))
        }
    };
    let objective = match weights {
        Some(w) => objective * w,
        None => objective,
    };
    let kl = kl_per_token(&lp.values, reference, estimator);
    let per_token = objective - &kl * kl_coef;
    Terms {
        sums: lp.sum_per_sequence(&per_token),
        kl: lp.mean_per_sequence(&kl.detach()),
        clipped,
    }
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
        let terms = |reference: &Tensor, clip: Option<&Clip>| {
            sequence_terms(
                &lp,
                reference,
                &[2.0, -1.0],
                0.1,
                KlEstimator::K1,
                clip,
                None,
            )
        };
        let on_policy = terms(&lp.values.copy(), None);
        assert_eq!(Vec::<f32>::try_from(&on_policy.sums).unwrap(), [4.0, -1.0]);
        assert_eq!(Vec::<f32>::try_from(&on_policy.kl).unwrap(), [0.0, 0.0]);
        assert_eq!(on_policy.clipped, (0, 0));
        // A reference 0.5 lower on the first token: k1 = 0.5 there, mean 0.25.
        let reference = Tensor::from_slice(&[-1.5f32, -2.0, -3.0]);
        let t = terms(&reference, None);
        assert_eq!(Vec::<f32>::try_from(&t.kl).unwrap(), [0.25, 0.0]);
        assert!((t.sums.double_value(&[0]) - (4.0 - 0.05)).abs() < 1e-6);
        // Old log-probs 1 lower on sequence 0 (r = e > 1.2, A = 2 > 0: clipped at 1.2),
        // 0.1 lower on the first token... of sequence 1 (r = e^0.1 ≈ 1.105, A = −1:
        // min(−1.105, −1.105) — unclipped, as the clip binds only below for A < 0).
        let clip = Clip {
            old: Tensor::from_slice(&[-2.0f32, -3.0, -3.1]),
            low: 0.2,
            high: 0.2,
        };
        let c = terms(&lp.values.copy(), Some(&clip));
        let sums = Vec::<f32>::try_from(&c.sums).unwrap();
        assert!((sums[0] - 2.0 * 1.2 * 2.0).abs() < 1e-5, "{sums:?}");
        assert!((sums[1] + 0.1f32.exp()).abs() < 1e-5, "{sums:?}");
        assert_eq!(c.clipped, (0, 2));
        // Old log-probs higher with A < 0: r = e^−1 < 0.8, clipped at 0.8 below.
        let below = Clip {
            old: Tensor::from_slice(&[-1.0f32, -2.0, -2.0]),
            ..clip
        };
        let b = terms(&lp.values.copy(), Some(&below));
        let sums = Vec::<f32>::try_from(&b.sums).unwrap();
        assert!((sums[1] + 0.8).abs() < 1e-6, "{sums:?}");
        assert_eq!(b.clipped, (1, 0));
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
