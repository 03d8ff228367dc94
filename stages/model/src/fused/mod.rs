//! Fused RMSNorm, SwiGLU, rotary and linear nodes for passes on the CPU under mixed
//! precision, where libtorch's operators spend more than the products they feed.
//!
//! Through autograd, an RMSNorm of f32 activations is seven elementwise passes
//! forward and about a dozen backward (libtorch decomposes `rms_norm` on the CPU),
//! plus a cast of its output to bf16 for the next product and of that product's
//! gradient back; SwiGLU is `silu`, a product, their three backward passes and a
//! concatenation of the gate's and up's gradients. On an 8×256 SmolLM2 step (AMX
//! Xeon, 2 threads) the two took about a fifth of the time. Here each is one node of
//! the autograd graph whose forward and backward are one pass over the rows:
//!
//! - [`rms_norm_bf16`]: f32 `x`, f32 weight → bf16 `(x · r) · w` (what the next
//!   product reads), saving `x` and each row's `r`; backward from a bf16 gradient to
//!   f32 `dx` and `dw`.
//! - [`swiglu_bf16`]: the gate and up products' stacked bf16 output `[gate | up]` →
//!   bf16 `silu(gate) · up`; backward straight into the stacked gradient.
//! - [`rotate_pairs_bf16`]: q or k as the qkv product made them (bf16, a strided view
//!   of its output) → rotated bf16 in the layout attention reads; backward by the
//!   opposite angles. libtorch's way was a cast to f32, a complex product and a cast
//!   back, each way (about 3% of the step).
//! - [`attention_bf16`]: attention over whole sequences, its scores and softmax in
//!   f32 from AVX512-BF16's dot products (`attention.rs`), keeping each row's
//!   softmax statistics for a backward pass of the same products
//!   (`attention_grads.rs`) where autograd asks for one.
//! - [`linear_bf16`]: a layer's product, forward libtorch's own; backward the
//!   weight's gradient added straight into the f32 master's ([`StackGrad`]), or in bf16 through autograd with both operands in
//!   plain rows (one transposed first by the transpose kernel), where oneDNN
//!   ran the transposed view at about two thirds of its rate.
//!
//! Values are computed in f32 and rounded to bf16 once (libtorch rounds `silu`'s
//! output before the product too). libtorch's C API has no custom autograd
//! functions, so the nodes are C++ (`csrc/fused_autograd.cpp`, built by `build.rs`)
//! calling the Rust kernels of `kernels.rs`. [`crate::transformer::Transformer::fused_layers`]
//! is the rule that chooses them.

#![allow(unsafe_code)]

mod attention;
mod attention_grads;
mod kernels;

use std::ffi::{CStr, c_char};
use std::sync::Once;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::weight_grads::StackGrad;

unsafe extern "C" {
    fn lsp_fused_set_kernels(kernels: *const kernels::Kernels);
    fn lsp_fused_free(message: *mut c_char);
    fn lsp_rms_norm_bf16(
        x: *const C_tensor,
        w: *const C_tensor,
        eps: f64,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn lsp_swiglu_bf16(gu: *const C_tensor, out: *mut *mut C_tensor) -> *mut c_char;
    fn lsp_linear_bf16(
        x: *const C_tensor,
        w: *const C_tensor,
        grad: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn lsp_attention_bf16(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        mask: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
    fn lsp_rotate_pairs_bf16(
        x: *const C_tensor,
        unit: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// Hands the kernels to the C++ nodes, once per process.
pub(crate) fn kernels_set() {
    static SET: Once = Once::new();
    // SAFETY: `KERNELS` is a static of the layout the C++ side declares; it copies it.
    SET.call_once(|| unsafe { lsp_fused_set_kernels(&kernels::KERNELS) });
}

/// The message a call into `csrc/` returned, if any, freed on the C++ side.
///
/// # Safety
/// `error` is null or a message from the C++ side, not yet freed.
pub(crate) unsafe fn taken(error: *mut c_char) -> Option<String> {
    if error.is_null() {
        return None;
    }
    // SAFETY: a NUL-terminated copy made by the C++ side, freed once, here.
    let text = unsafe { CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    unsafe { lsp_fused_free(error) };
    Some(text)
}

/// Panics with libtorch's message (as tch's own operators do) when a call into
/// `csrc/fused_autograd.cpp` returned one.
///
/// # Safety
/// `error` is null or a message from the C++ side, not yet freed.
pub(crate) unsafe fn raise(what: &str, error: *mut c_char) {
    // SAFETY: the caller's promise.
    if let Some(text) = unsafe { taken(error) } {
        panic!("{what}: {text}");
    }
}

/// The tensor a node made, or a panic with libtorch's message.
///
/// # Safety
/// `error` is null or a message from the C++ side; when it is null, `out` is a tensor
/// the C++ side allocated for the caller.
unsafe fn made(node: &str, error: *mut c_char, out: *mut C_tensor) -> Tensor {
    // SAFETY: the caller's promise.
    unsafe { raise(node, error) };
    // SAFETY: the caller's promise: a fresh tensor, now owned by the `Tensor`.
    unsafe { Tensor::from_ptr(out) }
}

/// `(x · r) · w` in bf16 over the last dimension of f32 `x` (CPU), `r = 1/√(mean x² +
/// ε)`, with f32 `w`; through autograd (`dx` f32, `dw` f32).
pub(crate) fn rms_norm_bf16(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    kernels_set();
    let mut out = std::ptr::null_mut();
    // SAFETY: valid tensors for the call; the node returns an error or a new tensor.
    unsafe {
        let error = lsp_rms_norm_bf16(x.as_ptr(), w.as_ptr(), eps, &mut out);
        made("rms_norm_bf16", error, out)
    }
}

/// `silu(gate) · up` in bf16 of `gu = [gate | up]` (bf16, CPU, the last dimension
/// split in halves); through autograd.
pub(crate) fn swiglu_bf16(gu: &Tensor) -> Tensor {
    kernels_set();
    let mut out = std::ptr::null_mut();
    // SAFETY: as in `rms_norm_bf16`.
    unsafe {
        let error = lsp_swiglu_bf16(gu.as_ptr(), &mut out);
        made("swiglu_bf16", error, out)
    }
}

/// `x · wᵀ` of bf16 `x` (`[..., in]`, CPU) and bf16 `w` (`[out, in]`) by libtorch's
/// product, as `x.linear(w)`; through autograd `dx`, and the weight's gradient either
/// added into `grad` ([`StackGrad`]) or, when `w` requires one, handed to autograd in
/// bf16, computed as `dyᵀ · x` or `(xᵀ · dy)ᵀ` over a contiguous transpose, whichever
/// moves fewer values.
pub(crate) fn linear_bf16(x: &Tensor, w: &Tensor, grad: Option<&StackGrad>) -> Tensor {
    kernels_set();
    let mut out = std::ptr::null_mut();
    let grad = grad.map_or(std::ptr::null(), |g| g.handle().as_ptr());
    // SAFETY: as in `rms_norm_bf16`; `grad` is null or a stack gradient's handle.
    unsafe {
        let error = lsp_linear_bf16(x.as_ptr(), w.as_ptr(), grad, &mut out);
        made("linear_bf16", error, out)
    }
}

/// `x` (bf16 `[batch, heads, seq, head_dim]` in the pair layout, its last dimension
/// contiguous) rotated by `unit` (`[batch, 1, seq, head_dim / 2]` unit complex f32,
/// [`crate::rope::Rotation::Pairs`]): each pair's complex product in f32, rounded
/// once to bf16, into a contiguous tensor; through autograd.
pub(crate) fn rotate_pairs_bf16(x: &Tensor, unit: &Tensor) -> Tensor {
    kernels_set();
    let mut out = std::ptr::null_mut();
    // SAFETY: as in `rms_norm_bf16`.
    unsafe {
        let error = lsp_rotate_pairs_bf16(x.as_ptr(), unit.as_ptr(), &mut out);
        made("rotate_pairs_bf16", error, out)
    }
}

/// `softmax(q·kᵀ/√d + mask)·v` on AVX512-BF16's dot products with the scores and the
/// softmax in f32 ([`attention`]), through autograd (backward: [`attention_grads`],
/// bf16 gradients) where grad mode is on and q, k or v requires one: `q` `[batch, heads, seq, d]`,
/// `k` and `v` `[batch, kv_heads, seq, d]` (bf16, CPU; query head `i` reads key/value
/// head `i / (heads / kv_heads)`), causal, the additive `mask` (`[batch, 1, seq,
/// seq]`: padding, or a packed row's segments; it hides at least what causality does)
/// added where there is one. Returns `[batch, seq, heads · d]` in bf16. Needs AVX512-BF16
/// ([`crate::decoder::bf16_units`]) and a head size it takes ([`attention_bf16_takes`]).
pub(crate) fn attention_bf16(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    assert!(
        crate::decoder::bf16_units(),
        "attention_bf16 needs AVX512-BF16 (and LSP_CPU_ISA not below it)"
    );
    kernels_set();
    let mut out = std::ptr::null_mut();
    let mask = mask.map_or(std::ptr::null(), |m| m.as_ptr());
    // SAFETY: as in `rms_norm_bf16`; `mask` is null or a valid tensor.
    unsafe {
        let error = lsp_attention_bf16(q.as_ptr(), k.as_ptr(), v.as_ptr(), mask, &mut out);
        made("attention_bf16", error, out)
    }
}

/// Whether [`attention_bf16`] takes heads of `head_dim` values: a multiple of 16, up
/// to 128.
pub(crate) fn attention_bf16_takes(head_dim: i64) -> bool {
    usize::try_from(head_dim).is_ok_and(attention::takes)
}

#[cfg(test)]
mod tests;
