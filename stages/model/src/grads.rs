//! Dropping a parameter's gradient, which tch's API cannot: `Tensor::zero_grad`
//! writes zeros that the next backward pass then adds into. Dropped, the step's first
//! backward pass hands the parameter its gradient as computed (autograd takes the
//! fresh tensor over), with no zeros written before and no sum — on an 8×256 SmolLM2
//! step, 134M zeros and as many additions. And giving one a zero gradient to add
//! into by hand (the output head's written-out backward), which tch can do only by a
//! backward pass through a sum: a pass over the weight, an expanded zero, and a copy
//! of it. The C++ side is in `csrc/fused_autograd.cpp`.

#![allow(unsafe_code)]

use std::ffi::c_char;

use tch::Tensor;
use torch_sys::C_tensor;

use crate::fused::raise;

unsafe extern "C" {
    fn lsp_forget_grad(t: *const C_tensor) -> *mut c_char;
    fn lsp_grad_or_zeros(t: *const C_tensor) -> *mut c_char;
}

/// Drops `t`'s gradient: `t.grad()` is undefined until a backward pass reaches `t`
/// (PyTorch's `zero_grad(set_to_none=True)`).
pub fn forget_grad(t: &Tensor) {
    // SAFETY: a valid tensor for the call; the C++ side returns null or a message.
    unsafe { raise("forget_grad", lsp_forget_grad(t.as_ptr())) }
}

/// `t`'s gradient, a zero one made first where it has none (contiguous, as
/// autograd's own; under `no_grad` too).
pub(crate) fn grad_or_zeros(t: &Tensor) -> Tensor {
    // SAFETY: a valid tensor for the call; the C++ side returns null or a message.
    unsafe { raise("grad_or_zeros", lsp_grad_or_zeros(t.as_ptr())) }
    t.grad()
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    #[test]
    fn a_forgotten_gradient_is_undefined_until_the_next_backward_pass_sets_it() {
        let x = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        (&x * 3.0).sum(Kind::Float).backward();
        super::forget_grad(&x);
        assert!(!x.grad().defined());
        (&x * 2.0).sum(Kind::Float).backward();
        // Not 3 + 2: nothing was left to add into.
        assert_eq!(Vec::<f32>::try_from(&x.grad()).unwrap(), [2.0, 2.0]);
        super::forget_grad(&Tensor::from_slice(&[1.0f32]));
    }

    #[test]
    fn a_missing_gradient_becomes_zeros_that_backward_passes_add_into_and_one_made_stays() {
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).set_requires_grad(true);
        let g = tch::no_grad(|| super::grad_or_zeros(&x));
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), [0.0, 0.0, 0.0]);
        (&x * 2.0).sum(Kind::Float).backward();
        (&x * 3.0).sum(Kind::Float).backward();
        assert_eq!(Vec::<f32>::try_from(&x.grad()).unwrap(), [5.0, 5.0, 5.0]);
        // The gradient made is the one autograd added into, and it is kept.
        assert_eq!(Vec::<f32>::try_from(&g).unwrap(), [5.0, 5.0, 5.0]);
        let kept = super::grad_or_zeros(&x);
        assert_eq!(Vec::<f32>::try_from(&kept).unwrap(), [5.0, 5.0, 5.0]);
    }
}
