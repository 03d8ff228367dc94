//! The arithmetic of a decoding step on host vectors ([`super::blocks`], and the
//! sampler's over the logits, `crate::sampling`): RMSNorm, RoPE in the pair layout,
//! SwiGLU's activation, the exponential, a dot product and lane-wise max and sum, in
//! forms the compiler vectorizes (lanes of independent accumulators, branch-free),
//! each built for AVX-512 and AVX2 where it loops over much data.

use multiversion::multiversion;

/// Lanes of the vectorized reductions: one AVX-512 register of f32.
const LANES: usize = 16;

/// `Σ a·b` in [`LANES`] lanes, summed at the end.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    for (a, b) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for l in 0..LANES {
            lanes[l] = a[l].mul_add(b[l], lanes[l]);
        }
    }
    let (a, b) = (
        a.chunks_exact(LANES).remainder(),
        b.chunks_exact(LANES).remainder(),
    );
    lanes.iter().sum::<f32>() + a.iter().zip(b).map(|(a, b)| a * b).sum::<f32>()
}

/// The largest of `x` (`f32::MIN` if empty), in [`LANES`] lanes.
#[inline(always)]
pub fn lanes_max(x: &[f32]) -> f32 {
    let mut lanes = [f32::MIN; LANES];
    for chunk in x.chunks_exact(LANES) {
        for l in 0..LANES {
            lanes[l] = lanes[l].max(chunk[l]);
        }
    }
    let tail = x.chunks_exact(LANES).remainder().iter();
    lanes.iter().chain(tail).copied().fold(f32::MIN, f32::max)
}

/// The largest magnitude of `x` (0 if empty), in [`LANES`] lanes.
#[inline(always)]
pub fn lanes_max_abs(x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    for chunk in x.chunks_exact(LANES) {
        for l in 0..LANES {
            lanes[l] = lanes[l].max(chunk[l].abs());
        }
    }
    let tail = x.chunks_exact(LANES).remainder().iter().map(|v| v.abs());
    lanes.iter().copied().chain(tail).fold(0f32, f32::max)
}

/// `Σ x` in [`LANES`] lanes.
#[inline(always)]
pub fn lanes_sum(x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    for chunk in x.chunks_exact(LANES) {
        for l in 0..LANES {
            lanes[l] += chunk[l];
        }
    }
    lanes.iter().sum::<f32>() + x.chunks_exact(LANES).remainder().iter().sum::<f32>()
}

/// `eˣ` to about 2 ulp for `x` in [−87, 88] (clamped to it), in branch-free
/// arithmetic that vectorizes: Cephes' `expf` (`x = n·ln 2 + r`, a degree-6
/// polynomial for `eʳ`, `2ⁿ` from the exponent bits). `n` is rounded by adding
/// 1.5·2²³, which leaves it in the low bits of the sum's mantissa: a float-to-integer
/// cast (`as i32`) saturates, and LLVM writes that one value at a time with compares
/// and conditional moves, which kept every loop calling this from vectorizing
/// (the head's softmax took ~11 cycles a value).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x.mul_add(std::f32::consts::LOG2_E, ROUNDER);
    let n = shifted - ROUNDER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4_f32
        .mul_add(r, 1.398_199_9e-3)
        .mul_add(r, 8.333_452e-3)
        .mul_add(r, 4.166_579_6e-2)
        .mul_add(r, 0.166_666_66)
        .mul_add(r, 0.5);
    let er = p.mul_add(r * r, r + 1.0);
    // n ∈ [−126, 127] as the mantissa's low bits, two's complement; + 127 is 2ⁿ's
    // biased exponent.
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    er * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// Each row of `x` (rows of `weight.len()`) normalised by its root mean square and
/// scaled by `weight`, as transformers' `LlamaRMSNorm` in f32: `w · (x / √(mean x² +
/// ε))`.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(weight.len()) {
        let scale = 1.0 / (dot(row, row) / row.len() as f32 + eps).sqrt();
        out.extend(row.iter().zip(weight).map(|(x, w)| w * (x * scale)));
    }
    out
}

/// Rotates each head (`d` values in the pair layout of [`crate::rope::pair_layout`])
/// of `heads` by `turn` (`d` values: cos and sin of each pair's angle, interleaved),
/// as the complex product of [`crate::rope::Rotation::Pairs`].
pub fn rotate_pairs(heads: &mut [f32], turn: &[f32]) {
    for head in heads.chunks_exact_mut(turn.len()) {
        for (pair, cs) in head.chunks_exact_mut(2).zip(turn.chunks_exact(2)) {
            let (a, b, cos, sin) = (pair[0], pair[1], cs[0], cs[1]);
            pair[0] = a * cos - b * sin;
            pair[1] = a * sin + b * cos;
        }
    }
}

/// SwiGLU's activation: each row of `gate_up` (`[gate | up]`, `2i` values) gives
/// `silu(gate) · up` (`i` values), `silu(g) = g / (1 + e⁻ᵍ)`.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
pub fn silu_times(gate_up: &[f32], i: usize, out: &mut [f32]) {
    assert_eq!(gate_up.len(), 2 * out.len());
    for (row, out) in gate_up.chunks_exact(2 * i).zip(out.chunks_exact_mut(i)) {
        let (gate, up) = row.split_at(i);
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    }
}

/// A bfloat16's bits: the high half of an f32's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// The value as f32.
    #[inline(always)]
    pub fn widen(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }

    /// The bfloat16 nearest to `v`, ties to even, as libtorch's cast rounds (a NaN
    /// stays a NaN).
    #[inline(always)]
    pub fn round(v: f32) -> Self {
        let bits = v.to_bits();
        if v.is_nan() {
            return Self(((bits >> 16) | 0x40) as u16);
        }
        let even = (bits >> 16) & 1;
        Self((bits.wrapping_add(0x7fff + even) >> 16) as u16)
    }
}

/// `x += y`, elementwise.
pub fn add(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(x, y)| *x += y);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind, Tensor};

    #[test]
    fn exp_matches_the_standard_library_over_its_range() {
        for i in 0..=40_000 {
            let x = -87.0 + 175.0 * i as f32 / 40_000.0;
            let (got, want) = (exp(x), x.exp());
            assert!(
                ((got - want) / want).abs() < 4e-7,
                "exp({x}) = {got}, not {want}"
            );
        }
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-200.0) < 1e-37 && exp(200.0) > 1e38);
    }

    #[test]
    fn norm_and_activation_equal_libtorchs() {
        let f = (Kind::Float, Device::Cpu);
        let host = |t: &Tensor| Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap();
        let (x, w) = (Tensor::randn([3, 40], f) * 3, Tensor::randn([40], f));
        let want = x.rms_norm([40i64].as_slice(), Some(&w), 1e-5);
        let got = Tensor::from_slice(&rms_norm(&host(&x), &host(&w), 1e-5)).view([3, 40]);
        assert!((got - want).abs().max().double_value(&[]) < 1e-5);
        let gate_up = Tensor::randn([2, 2 * 24], f) * 8;
        let want = gate_up.narrow(1, 0, 24).silu() * gate_up.narrow(1, 24, 24);
        let mut got = vec![0f32; 2 * 24];
        silu_times(&host(&gate_up), 24, &mut got);
        let got = Tensor::from_slice(&got).view([2, 24]);
        assert!((got - want).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn pairs_rotate_as_complex_products() {
        let mut heads = vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 2.0, -2.0];
        let (c0, s0, c1, s1) = (0.6f32, 0.8f32, 0.0f32, 1.0f32);
        rotate_pairs(&mut heads, &[c0, s0, c1, s1]);
        let expected = [
            1.0 * c0 - 2.0 * s0,
            1.0 * s0 + 2.0 * c0,
            3.0 * c1 - 4.0 * s1,
            3.0 * s1 + 4.0 * c1,
            -c0 - 0.5 * s0,
            -s0 + 0.5 * c0,
            2.0 * c1 + 2.0 * s1,
            2.0 * s1 - 2.0 * c1,
        ];
        assert_eq!(heads, expected);
    }
}
