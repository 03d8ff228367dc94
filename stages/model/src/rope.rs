//! Rotary position embeddings, as transformers computes them: the inverse frequencies
//! (plain or Llama-3-scaled), and the rotation of queries and keys at given positions.

use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};

use crate::fused::rotate_pairs_bf16;
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

/// The rotation at some positions, for one of two layouts of a head's dimensions.
#[derive(Debug)]
pub enum Rotation {
    /// Transformers' layout, dimension i paired with i + d/2: cos and sin tables,
    /// `[batch, 1, seq, head_dim]`, applied as x·cos + rotate_half(x)·sin.
    Halves { cos: Tensor, sin: Tensor },
    /// Dimension i paired with its neighbour (the inference layout of
    /// [`pair_layout`]): each pair a complex number, rotated by one complex product
    /// with `[batch, 1, seq, head_dim / 2]` unit complex numbers (f32 only).
    Pairs(Tensor),
}

/// Precomputed inverse frequencies on the model's device.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor,
}

impl Rope {
    /// The same frequencies, shared.
    pub fn shallow_copy(&self) -> Self {
        Self {
            inv_freq: self.inv_freq.shallow_clone(),
        }
    }

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

    /// The rotation at `positions` (`[batch, seq]`, int64), in `kind`; for the pair
    /// layout when `pairs` (then `kind` must be f32).
    pub fn rotation(&self, positions: &Tensor, kind: Kind, pairs: bool) -> Rotation {
        // [b, s, 1] * [d/2] -> [b, s, d/2], in f32 as transformers does.
        let angles = (positions.to_kind(Kind::Float).unsqueeze(-1) * &self.inv_freq).unsqueeze(1);
        if pairs {
            assert_eq!(kind, Kind::Float, "the pair layout's rotation is f32");
            return Rotation::Pairs(Tensor::polar(&angles.ones_like(), &angles));
        }
        let angles = Tensor::cat(&[&angles, &angles], -1);
        Rotation::Halves {
            cos: angles.cos().to_kind(kind),
            sin: angles.sin().to_kind(kind),
        }
    }
}

/// `x` (`[..., head_dim]`, f32) as `[..., head_dim / 2]` complex numbers, sharing its
/// memory when its last dimension is contiguous (a copy otherwise).
fn as_complex(x: &Tensor) -> Tensor {
    if x.stride().last() != Some(&1) {
        return as_complex(&x.contiguous());
    }
    let mut shape = x.size();
    let d = shape.pop().expect("at least one dimension");
    shape.extend([d / 2, 2]);
    x.view(shape.as_slice()).view_as_complex()
}

impl Rotation {
    /// Rotates `x` (`[batch, heads, seq, head_dim]`); a bf16 `x` in the pair layout
    /// (on the CPU) by the fused node, in f32 and rounded once
    /// ([`crate::fused::rotate_pairs_bf16`]).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        match self {
            Self::Pairs(unit) if x.kind() == Kind::BFloat16 => rotate_pairs_bf16(x, unit),
            Self::Halves { cos, sin } => {
                let half = x.size()[3] / 2;
                let x1 = x.narrow(3, 0, half);
                let x2 = x.narrow(3, half, half);
                let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
                x * cos + rotated * sin
            }
            Self::Pairs(unit) => (as_complex(x) * unit).view_as_real().flatten(-2, -1),
        }
    }

    /// For one position per sequence in the pair layout: each sequence's `head_dim`
    /// values, the cos and sin of each pair's angle interleaved
    /// ([`crate::host_math::rotate_pairs`]); `None` for the halves layout.
    pub fn host_turns(&self) -> Option<Vec<f32>> {
        match self {
            Self::Halves { .. } => None,
            Self::Pairs(unit) => {
                let turns = unit.view_as_real().contiguous().view([-1]);
                Some(Vec::<f32>::try_from(&turns).expect("f32 turns"))
            }
        }
    }

    /// Rotates `x` into `out` (same shape; e.g. the KV cache's next positions),
    /// through autograd when `x` records a gradient.
    pub fn apply_into(&self, x: &Tensor, out: &mut Tensor) {
        match self {
            Self::Halves { .. } => {
                out.copy_(&self.apply(x));
            }
            // A product with `out=` records no gradient.
            Self::Pairs(_) if x.requires_grad() => {
                out.copy_(&self.apply(x));
            }
            Self::Pairs(unit) => {
                assert_eq!(out.stride().last(), Some(&1), "written in place");
                let _ = as_complex(x).mul_out(&as_complex(out), unit);
            }
        }
    }
}

/// The rows of a q or k projection weight (`[heads · head_dim, in]`) or bias
/// (`[heads · head_dim]`) reordered within each head so that dimensions i and
/// i + d/2 become neighbours 2i and 2i + 1: the layout [`Rotation::Pairs`] rotates.
/// Attention scores are unchanged, since q and k are permuted alike.
pub fn pair_layout(w: &Tensor, head_dim: i64) -> Tensor {
    let shape = w.size();
    let mut split = vec![shape[0] / head_dim, 2, head_dim / 2];
    split.extend(&shape[1..]);
    w.view(split.as_slice())
        .transpose(1, 2)
        .reshape(shape.as_slice())
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
        let y = rope.rotation(&positions, Kind::Float, false).apply(&x);
        let first = (y.narrow(2, 0, 1) - x.narrow(2, 0, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(first < 1e-7);
        let norms = |t: &Tensor| t.square().sum_dim_intlist(-1, false, Kind::Float);
        let diff = (norms(&y) - norms(&x)).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "{diff}");
    }

    #[test]
    fn pair_layout_rotates_as_the_halves_layout_and_keeps_dot_products() {
        let rope = Rope::new(&spec(RopeScaling::None), Device::Cpu);
        let (b, h, t, d) = (2, 3, 5, 16);
        let positions = Tensor::from_slice(&[0i64, 1, 7, 30, 200, 3, 4, 5, 6, 9]).view([b, t]);
        let q = Tensor::randn([b, h, t, d], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([b, h, t, d], (Kind::Float, Device::Cpu));
        let halves = rope.rotation(&positions, Kind::Float, false);
        let pairs = rope.rotation(&positions, Kind::Float, true);
        // Weights' rows permuted = outputs' dimensions permuted, head by head.
        let permute = |x: &Tensor| {
            pair_layout(&x.permute([3, 0, 1, 2]).reshape([d, -1]), d)
                .view([d, b, h, t])
                .permute([1, 2, 3, 0])
        };
        let expected = permute(&halves.apply(&q));
        let got = pairs.apply(&permute(&q));
        assert!((got - &expected).abs().max().double_value(&[]) < 1e-5);
        let mut into = Tensor::zeros([b, h, t, d], (Kind::Float, Device::Cpu));
        pairs.apply_into(&permute(&q), &mut into);
        assert!((into - expected).abs().max().double_value(&[]) < 1e-5);
        let scores = |q: &Tensor, k: &Tensor| q.matmul(&k.transpose(-1, -2));
        let plain = scores(&halves.apply(&q), &halves.apply(&k));
        let paired = scores(&pairs.apply(&permute(&q)), &pairs.apply(&permute(&k)));
        assert!((plain - paired).abs().max().double_value(&[]) < 1e-4);
        // A bias (one dimension) is permuted the same way as a weight's rows.
        let bias = Tensor::arange(2 * d, (Kind::Float, Device::Cpu));
        let first: Vec<f32> = Vec::try_from(&pair_layout(&bias, d).narrow(0, 0, 4)).unwrap();
        assert_eq!(first, [0.0, 8.0, 1.0, 9.0]);
    }
}
