//! Rotary position embeddings, as transformers computes them: the inverse frequencies
//! (plain or Llama-3-scaled), and the rotation of queries and keys at given positions.

use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};

use crate::spec::{ModelSpec, RopeScaling};

/// The inverse frequencies θ^(−2i/d), i < d/2, with the spec's scaling applied.
pub fn inverse_frequencies(spec: &ModelSpec) -> Vec<f64> {
    let d = spec.head_dim as f64;
    let plain = (0..spec.head_dim / 2).map(|i| 1.0 / spec.rope_theta.powf(2.0 * i as f64 / d));
    match spec.rope_scaling {
        RopeScaling::None => plain.collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_context,
        } => {
            let low_freq_wavelen = old_context / low_freq_factor;
            let high_freq_wavelen = old_context / high_freq_factor;
            plain
                .map(|f| {
                    let wavelen = 2.0 * PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_context / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// cos and sin tables for the rotation, `[batch, 1, seq, head_dim]`.
#[derive(Debug)]
pub struct Rotation {
    cos: Tensor,
    sin: Tensor,
}

/// Precomputed inverse frequencies on the model's device.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    /// The spec's frequencies on `device`.
    pub fn new(spec: &ModelSpec, device: Device) -> Self {
        let freqs: Vec<f32> = inverse_frequencies(spec)
            .iter()
            .map(|&f| f as f32)
            .collect();
        Self {
            inv_freq: Tensor::from_slice(&freqs).to_device(device),
        }
    }

    /// The rotation at `positions` (`[batch, seq]`, int64), in `kind`.
    pub fn rotation(&self, positions: &Tensor, kind: Kind) -> Rotation {
        // [b, s, 1] * [d/2] -> [b, s, d/2], in f32 as transformers does.
        let angles = positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq;
        let angles = Tensor::cat(&[&angles, &angles], -1).unsqueeze(1);
        Rotation {
            cos: angles.cos().to_kind(kind),
            sin: angles.sin().to_kind(kind),
        }
    }
}

impl Rotation {
    /// Rotates `x` (`[batch, heads, seq, head_dim]`): x·cos + rotate_half(x)·sin.
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let half = x.size()[3] / 2;
        let x1 = x.narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
        x * &self.cos + rotated * &self.sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Architecture, Head};

    fn spec(rope_scaling: RopeScaling) -> ModelSpec {
        ModelSpec {
            architecture: Architecture::Llama,
            head: Head::CausalLm,
            vocab_size: 10,
            hidden_size: 64,
            intermediate_size: 8,
            num_layers: 1,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 16,
            rms_norm_eps: 1e-5,
            rope_theta: 500_000.0,
            rope_scaling,
            max_position_embeddings: 512,
            tie_word_embeddings: true,
            attention_bias: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            pad_token_id: None,
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_divides_low_and_blends_between() {
        let plain = inverse_frequencies(&spec(RopeScaling::None));
        assert_eq!(plain[0], 1.0);
        assert!((plain[1] - 500_000f64.powf(-2.0 / 16.0)).abs() < 1e-15);
        let scaled = inverse_frequencies(&spec(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 64.0,
        }));
        // Wavelengths 2π/f: below 64/4 = 16 kept, above 64 divided by 8, else blended.
        for (p, s) in plain.iter().zip(&scaled) {
            let wavelen = 2.0 * PI / p;
            if wavelen < 16.0 {
                assert_eq!(s, p);
            } else if wavelen > 64.0 {
                assert!((s - p / 8.0).abs() < 1e-18);
            } else {
                assert!(
                    *s < *p && *s > p / 8.0,
                    "{s} not between {} and {p}",
                    p / 8.0
                );
            }
        }
        // This spec has frequencies in all three bands.
        assert!(plain.iter().any(|p| 2.0 * PI / p < 16.0));
        assert!(plain.iter().any(|p| 2.0 * PI / p > 64.0));
        assert!(
            plain
                .iter()
                .any(|p| (16.0..=64.0).contains(&(2.0 * PI / p)))
        );
    }

    #[test]
    fn rotation_at_position_zero_is_identity_and_preserves_norm() {
        let rope = Rope::new(&spec(RopeScaling::None), Device::Cpu);
        let x = Tensor::randn([1, 2, 3, 16], (Kind::Float, Device::Cpu));
        let positions = Tensor::from_slice(&[0i64, 5, 100]).unsqueeze(0);
        let y = rope.rotation(&positions, Kind::Float).apply(&x);
        let first = (y.narrow(2, 0, 1) - x.narrow(2, 0, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(first < 1e-7);
        let norms = |t: &Tensor| t.square().sum_dim_intlist(-1, false, Kind::Float);
        let diff = (norms(&y) - norms(&x)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
    }
}
