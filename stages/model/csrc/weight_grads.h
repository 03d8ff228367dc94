// Weight gradients added into f32 tensors without autograd (`weight_grads.cpp`), and
// the bf16 product they share with the fused nodes (`fused_autograd.cpp`).

#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <mutex>
#include <vector>

namespace lsp {

// `grad` (f32 [out, in], unit column stride) += dyᵀ · x, dy [tokens, out] and x
// [tokens, in] of one kind (bf16 on the CPU by `weight_grad_bf16`): under a lock of
// `grad`'s own, held for the sum only, so that threads of one step may add into the
// same gradient.
void add_weight_grad(const at::Tensor& grad, const at::Tensor& dy, const at::Tensor& x);

// The gradients of a stack of maps, one product's weight (`src/training_weights.rs`):
// a buffer [Σ rows, in] f32, made by the first add (so that it takes memory once a
// backward pass reaches it, as autograd's gradients did), whose row blocks then
// become the parts' master weights' gradients (what a master had added in first).
class StackGrad {
 public:
  // `masters`: each part's master weight (undefined: it takes no gradient), `rows`
  // its rows; `columns` (int64 [Σ rows], or undefined: in order): which column of a
  // product's output each row of the buffer takes.
  StackGrad(std::vector<at::Tensor> masters, std::vector<int64_t> rows, at::Tensor columns);
  // Adds dyᵀ · x (dy the product's output gradient [tokens, Σ rows], x its input
  // [tokens, in], both bf16 on the CPU).
  void add(const at::Tensor& dy, const at::Tensor& x);

 private:
  void attach();  // under `lock_`, once `buffer_` is made

  std::vector<at::Tensor> masters_;
  std::vector<int64_t> rows_;
  int64_t total_ = 0;
  at::Tensor columns_;
  std::mutex lock_;
  at::Tensor buffer_;
};

// A tensor that keeps `grad` alive and hands it back (`stack_grad_of`): what Rust
// and an autograd node hold.
at::Tensor stack_grad_handle(std::shared_ptr<StackGrad> grad);
StackGrad& stack_grad_of(const at::Tensor& handle);

// dyᵀ · x of bf16 dy [tokens, out] and x [tokens, in] by libtorch's product, both of
// its operands in plain rows (`fused_autograd.cpp`).
at::Tensor weight_grad_bf16(const at::Tensor& dy, const at::Tensor& x);

}  // namespace lsp
