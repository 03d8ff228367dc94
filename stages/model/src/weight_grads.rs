//! Weight gradients added straight into f32 tensors, without autograd: how a CPU
//! training pass under mixed precision gives the f32 master weights their gradients
//! (the layers' products, `training_weights.rs`, and the output head, `training.rs`).
//! The C++ side is `csrc/weight_grads.cpp`.
//!
//! Through autograd, each micro-batch's (and each thread's) bf16 product left a bf16
//! weight gradient of its stack of maps, which the backward passes of the stack's
//! concatenation, of q and k's pair layout and of the cast took apart, reordered and
//! widened, and autograd then added into each master's gradient (on an 8×256 SmolLM2
//! step with two threads, ~120 ms of adds and ~65 ms of copies beside the products).
//! Here the product's bf16 result goes once into the f32 gradient of the whole stack
//! ([`StackGrad`]), whose row blocks are the masters' gradients. Threads of one step
//! add into the same gradients, each sum under a lock of the gradient's own (the
//! product before it runs unlocked).
//!
//! MKL's bf16 × bf16 → f32 product (in libtorch, adding into the f32 gradient with no
//! bf16 result) was tried in its place: a step ran no faster (8×256, AMX Xeon, 19
//! alternations in one process: median ratio 1.00) and the gradients came no closer
//! to f32's (the bf16 activations dominate), so libtorch's oneDNN product stays.

#![allow(unsafe_code)]

use std::ffi::c_char;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::fused::{kernels_set, raise};

unsafe extern "C" {
    fn lsp_add_weight_grad(
        grad: *const C_tensor,
        dy: *const C_tensor,
        x: *const C_tensor,
    ) -> *mut c_char;
    fn lsp_stack_grad_new(
        masters: *const *const C_tensor,
        rows: *const i64,
        parts: i64,
        columns: *const C_tensor,
        out: *mut *mut C_tensor,
    ) -> *mut c_char;
}

/// `grad += dyᵀ · x`: `grad` f32 `[out, in]` (unit column stride; a row block of a
/// larger one may be), `dy` `[tokens, out]` and `x` `[tokens, in]` of one kind (bf16
/// on the CPU by the fused nodes' product, both operands in plain rows), without
/// autograd; the sum under a lock of `grad`'s own (threads of one step may add into
/// it at once).
pub(crate) fn add_weight_grad(grad: &Tensor, dy: &Tensor, x: &Tensor) {
    // The bf16 product transposes by the fused nodes' kernel.
    kernels_set();
    // SAFETY: valid tensors for the call; the C++ side returns null or a message.
    unsafe {
        raise(
            "add_weight_grad",
            lsp_add_weight_grad(grad.as_ptr(), dy.as_ptr(), x.as_ptr()),
        )
    }
}

/// The gradients of a stack of maps that one product computes with (q, k and v; gate
/// and up; one map), which the product's backward adds into ([`crate::fused`]'s
/// `linear_bf16`): an f32 buffer `[Σ rows, in]`, made by the first add — so that it
/// takes memory once a backward pass reaches it, as autograd's gradients did — whose
/// row blocks then become the parts' masters' gradients (what a master had is added
/// in first). Shared by the step's threads (the C++ side locks it).
#[derive(Debug)]
pub(crate) struct StackGrad(Tensor);

impl StackGrad {
    /// The gradient of `parts` (each master weight, `[rows, in]` f32 on the CPU;
    /// `None` where it takes no gradient, then with its rows); `columns` (int64, one a
    /// row of the stack): which column of the product's output each row takes (q and
    /// k leave the product in the rotation's pair layout), `None` for in order.
    pub fn new(parts: &[(Option<&Tensor>, i64)], columns: Option<&Tensor>) -> Self {
        let masters: Vec<*const C_tensor> = parts
            .iter()
            .map(|(m, _)| m.map_or(std::ptr::null(), |m| m.as_ptr()))
            .collect();
        let rows: Vec<i64> = parts.iter().map(|(_, r)| *r).collect();
        let mut out = std::ptr::null_mut();
        // SAFETY: `parts` pointers to valid tensors or null and as many row counts;
        // `columns` null or a valid tensor; the C++ side returns an error or a new
        // tensor, then owned here.
        unsafe {
            let error = lsp_stack_grad_new(
                masters.as_ptr(),
                rows.as_ptr(),
                parts.len() as i64,
                columns.map_or(std::ptr::null(), Tensor::as_ptr),
                &mut out,
            );
            raise("stack_grad", error);
            Self(Tensor::from_ptr(out))
        }
    }

    /// The same gradient, shared.
    pub fn shallow_copy(&self) -> Self {
        Self(self.0.shallow_clone())
    }

    /// The tensor the C++ side knows it by.
    pub(crate) fn handle(&self) -> &Tensor {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn the_exact_gradient_is_added_into_rows_of_a_larger_one() {
        // Small integers: every sum is exact in f32 (and the product's in bf16), so
        // exactly dyᵀ · x must be added, in bf16 and in f32. `dy` is a column slice of
        // a wider matrix (the head's slices of the vocabulary); the gradient a row
        // block of a larger one holding 1s, which must stay.
        tch::manual_seed(3);
        let f = (Kind::Float, Device::Cpu);
        let ints = |shape: &[i64], span: i64| Tensor::randint_low(-span, span + 1, shape, f);
        let bf16 = |t: &Tensor| t.to_kind(Kind::BFloat16);
        let (wide, x) = (ints(&[37, 90], 2), ints(&[37, 45], 2));
        let dy = wide.narrow(1, 7, 70);
        let want = dy.tr().mm(&x) + 1.0;
        let grad = Tensor::ones([100, 45], f);
        for kind in ["bf16", "f32"] {
            let mut rows = grad.narrow(0, 20, 70);
            let _ = rows.fill_(1.0);
            match kind {
                "bf16" => add_weight_grad(&rows, &bf16(&wide).narrow(1, 7, 70), &bf16(&x)),
                _ => add_weight_grad(&rows, &dy, &x),
            }
            assert!(rows.equal(&want), "{kind}");
            let rest = Tensor::cat(&[grad.narrow(0, 0, 20), grad.narrow(0, 90, 10)], 0);
            assert!(rest.equal(&Tensor::ones([30, 45], f)), "{kind}");
        }
    }

    #[test]
    fn threads_adding_into_one_gradient_at_once_lose_nothing() {
        // Four threads, each adding the same exact product 25 times into one gradient.
        tch::manual_seed(4);
        let f = (Kind::Float, Device::Cpu);
        let ints = |shape: &[i64]| Tensor::randint_low(-2, 3, shape, f);
        let (dy, x) = (ints(&[64, 96]), ints(&[64, 80]));
        let want = dy.tr().mm(&x) * 100.0;
        let grad = Tensor::zeros([96, 80], f);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let (grad, dy, x) = (
                    grad.shallow_clone(),
                    dy.to_kind(Kind::BFloat16),
                    x.to_kind(Kind::BFloat16),
                );
                scope.spawn(move || {
                    tch::set_num_threads(1);
                    for _ in 0..25 {
                        add_weight_grad(&grad, &dy, &x);
                    }
                });
            }
        });
        assert!(grad.equal(&want));
    }

    #[test]
    fn a_gradient_of_the_wrong_shape_is_refused_with_a_message() {
        let f = (Kind::Float, Device::Cpu);
        let refused = std::panic::catch_unwind(|| {
            add_weight_grad(
                &Tensor::zeros([4, 5], f),
                &Tensor::zeros([3, 4], f),
                &Tensor::zeros([3, 6], f),
            )
        });
        let message = refused.unwrap_err();
        let text = message.downcast_ref::<String>().unwrap();
        assert!(text.contains("add_weight_grad: dy"), "{text}");
    }
}
