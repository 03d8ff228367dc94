//! AdamW's update of one f32 parameter on the CPU in one pass over its memory:
//! each element's gradient, moments and value read once and written once, on the
//! worker's threads. libtorch's operators (the [`super::adamw`] fallback) take about
//! ten passes over the parameter's size for the same arithmetic, and a step over
//! SmolLM2's 135M parameters is bound by those bytes.
//!
//! The slices come from the tensors' own storage, which needs `unsafe`: see
//! [`fused_step`] for why it holds.

#![allow(unsafe_code)]

use lsp_model::mark_written;
use multiversion::multiversion;
use tch::{Device, Kind, Tensor};

/// A step's constants, the same for every parameter.
#[derive(Debug, Clone, Copy)]
pub struct StepConstants {
    /// `1 − β1`, `1 − β2`: the moments' lerp weights.
    pub lerp_m: f32,
    pub lerp_v: f32,
    /// `1 / √(1 − β2ᵗ)`, ε.
    pub inv_sqrt_bias2: f32,
    pub eps: f32,
    /// `−(1 − β1ᵗ) / lr`: the update is `m / ((√v̂ + ε) · this)`.
    pub scale: f32,
    /// `1 − lr · λ` (1 without weight decay).
    pub decay: f32,
}

/// Fewer elements than this go on one thread (a hand-off costs more than it saves).
const PER_THREAD: usize = 1 << 18;

/// Whether [`fused_step`] takes these tensors: each f32 on the CPU, contiguous, of
/// `param`'s size, in storage of its own.
pub fn takes(param: &Tensor, grad: &Tensor, m: &Tensor, v: &Tensor) -> bool {
    let tensors = [param, grad, m, v];
    let fits = |t: &&Tensor| {
        t.defined()
            && t.kind() == Kind::Float
            && t.device() == Device::Cpu
            && t.is_contiguous()
            && t.numel() == param.numel()
    };
    if !tensors.iter().all(fits) {
        return false;
    }
    let mut starts: Vec<usize> = tensors.iter().map(|t| t.data_ptr() as usize).collect();
    starts.sort_unstable();
    starts.windows(2).all(|w| w[0] != w[1]) || param.numel() == 0
}

/// `m ← m + (1 − β1)(g − m)`, `v ← v + (1 − β2)(g² − v)`, `p ← p·(1 − lr·λ) + m /
/// ((√v/√(1 − β2ᵗ) + ε) · (−(1 − β1ᵗ)/lr))`: AdamW's step, in the order of the
/// libtorch fallback's operators, over `threads` threads.
///
/// # Panics
/// If [`takes`] refuses the tensors.
pub fn fused_step(
    param: &Tensor,
    grad: &Tensor,
    m: &Tensor,
    v: &Tensor,
    constants: &StepConstants,
    threads: usize,
) {
    assert!(
        takes(param, grad, m, v),
        "fused AdamW needs f32 CPU tensors"
    );
    let n = param.numel();
    if n == 0 {
        return;
    }
    // SAFETY: `takes` checked that the four tensors are contiguous f32 CPU tensors of
    // `n` elements whose storage starts differ; parameters, gradients and moments are
    // separate allocations (autograd's gradient, `zeros_like`), so these ranges do
    // not overlap. The caller holds the optimizer mutably under `no_grad`, and
    // nothing else reads or writes them until this returns (the scoped threads
    // below take disjoint chunks and are joined before it does).
    let (p, g, m, v) = unsafe {
        (
            std::slice::from_raw_parts_mut(param.data_ptr().cast::<f32>(), n),
            std::slice::from_raw_parts(grad.data_ptr().cast::<f32>().cast_const(), n),
            std::slice::from_raw_parts_mut(m.data_ptr().cast::<f32>(), n),
            std::slice::from_raw_parts_mut(v.data_ptr().cast::<f32>(), n),
        )
    };
    let parts = threads.clamp(1, n.div_ceil(PER_THREAD));
    if parts == 1 {
        update(p, g, m, v, constants);
    } else {
        let chunk = n.div_ceil(parts);
        std::thread::scope(|scope| {
            let chunks = p
                .chunks_mut(chunk)
                .zip(g.chunks(chunk))
                .zip(m.chunks_mut(chunk).zip(v.chunks_mut(chunk)));
            for ((p, g), (m, v)) in chunks {
                scope.spawn(move || update(p, g, m, v, constants));
            }
        });
    }
    // The writes above went around libtorch: kept inference weights are matched to
    // the parameters by their version counters.
    mark_written(param);
}

/// [`fused_step`]'s arithmetic over one chunk.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
fn update(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &StepConstants) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m += c.lerp_m * (g - *m);
        *v += c.lerp_v * (g * g - *v);
        let denominator = (v.sqrt() * c.inv_sqrt_bias2 + c.eps) * c.scale;
        *p = *p * c.decay + *m / denominator;
    }
}
