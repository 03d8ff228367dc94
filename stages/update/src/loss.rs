//! The per-token policy-gradient terms and their aggregation, as tensor maths.
//!
//! For a sampled token with log-prob `lp` under π_θ and `ref` under π_ref:
//! `ratio = exp(lp − stop_grad(lp))` (= 1, so the gradient is REINFORCE's), and the
//! KL estimate is `lp − ref` (k1, the paper's) or `exp(ref − lp) − (ref − lp) − 1`
//! (k3). A sequence's term is the aggregation of `ratio·A − β·kl` over its tokens.

use lsp_model::TokenLogprobs;
use tch::Tensor;

use crate::config::{Aggregation, KlEstimator};

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

/// Per-sequence aggregation of per-token values (`[tokens]` → `[sequences]`).
pub fn aggregate(values: &Tensor, lp: &TokenLogprobs, aggregation: Aggregation) -> Tensor {
    let sums = lp.sum_per_sequence(values);
    match aggregation {
        Aggregation::SequenceSum => sums,
        Aggregation::TokenMean => {
            let lengths: Vec<f32> = lp.lengths.iter().map(|&n| n.max(1) as f32).collect();
            sums / Tensor::from_slice(&lengths).to_device(values.device())
        }
    }
}

/// Per-sequence terms `agg(ratio·A − β·kl)` and the aggregated KL values.
pub fn sequence_terms(
    lp: &TokenLogprobs,
    reference: &Tensor,
    advantages: &[f64],
    kl_coef: f64,
    estimator: KlEstimator,
    aggregation: Aggregation,
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
        aggregate(&per_token, lp, aggregation),
        aggregate(&kl.detach(), lp, aggregation),
    )
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
    fn terms_aggregate_per_sequence() {
        // Two sequences of 2 and 1 tokens; policy = reference so kl = 0 and the term
        // is the advantage per token.
        let lp = TokenLogprobs {
            values: Tensor::from_slice(&[-1.0f32, -2.0, -3.0]),
            lengths: vec![2, 1],
        };
        let reference = lp.values.copy();
        let (sum, kl) = sequence_terms(
            &lp,
            &reference,
            &[2.0, -1.0],
            0.1,
            KlEstimator::K1,
            Aggregation::SequenceSum,
        );
        assert_eq!(Vec::<f32>::try_from(&sum).unwrap(), [4.0, -1.0]);
        assert_eq!(Vec::<f32>::try_from(&kl).unwrap(), [0.0, 0.0]);
        let (mean, _) = sequence_terms(
            &lp,
            &reference,
            &[2.0, -1.0],
            0.1,
            KlEstimator::K1,
            Aggregation::TokenMean,
        );
        assert_eq!(Vec::<f32>::try_from(&mean).unwrap(), [2.0, -1.0]);
    }
}
