// Weight gradients added straight into f32 tensors, without autograd: the master
// weights' gradients of a CPU training pass under mixed precision (`StackGrad`, added
// by the `linear_bf16` node of `fused_autograd.cpp`) and the output head's
// (`add_weight_grad`, from `src/training.rs`).
//
// Through autograd, each micro-batch's (and each thread's) bf16 product left a bf16
// weight gradient of its stack of maps, which the backward passes of the stack's
// concatenation, of q and k's pair layout and of the cast took apart, reordered and
// widened to f32, and autograd added into each master's gradient. Here the product's
// bf16 result goes once into the f32 gradient: widened into it by the first add,
// added to it by the others, q and k's rows moved back to the masters' order on the
// way. Threads of one step share the gradients: each sum holds the gradient's lock,
// the product before it does not.

#include "weight_grads.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <c10/util/BFloat16.h>

#include <array>
#include <cstdint>

#include "guarded.h"

namespace {

// One of 64 locks by a gradient's address (hashed: the output head's slices of rows
// lie a power of two apart).
std::mutex& lock_of(const void* p) {
  static std::array<std::mutex, 64> locks;
  const uint64_t h = reinterpret_cast<uintptr_t>(p) * 0x9E3779B97F4A7C15ull;
  return locks[h >> 58];
}

void check_shapes(const at::Tensor& dy, const at::Tensor& x, int64_t out, int64_t in) {
  TORCH_CHECK(dy.dim() == 2 && x.dim() == 2 && dy.size(0) == x.size(0) && dy.size(1) == out &&
                  x.size(1) == in,
              "add_weight_grad: dy ", dy.sizes(), " and x ", x.sizes(), " for a gradient [",
              out, ", ", in, "]");
  TORCH_CHECK(dy.scalar_type() == x.scalar_type(), "add_weight_grad: dy and x of one kind");
}

// Row m of `to` (f32 [rows, in]) = (or +=, when `add`) row `from[m]` of `dw` (bf16
// [rows, in], contiguous).
void move_rows(const at::Tensor& to, const at::Tensor& dw, const int64_t* from, bool add) {
  const int64_t rows = to.size(0), in = to.size(1);
  const auto* src = dw.data_ptr<at::BFloat16>();
  float* dst = to.data_ptr<float>();
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; m++) {
      const at::BFloat16* row = src + from[m] * in;
      float* out = dst + m * in;
      if (add) {
        for (int64_t j = 0; j < in; j++) out[j] += static_cast<float>(row[j]);
      } else {
        for (int64_t j = 0; j < in; j++) out[j] = static_cast<float>(row[j]);
      }
    }
  });
}

}  // namespace

namespace lsp {

void add_weight_grad(const at::Tensor& grad, const at::Tensor& dy, const at::Tensor& x) {
  TORCH_CHECK(grad.scalar_type() == at::kFloat && grad.dim() == 2 && grad.stride(1) == 1,
              "add_weight_grad: an f32 matrix with unit column stride to add into");
  check_shapes(dy, x, grad.size(0), grad.size(1));
  std::mutex& lock = lock_of(grad.data_ptr());
  if (dy.scalar_type() == grad.scalar_type()) {
    std::lock_guard<std::mutex> held(lock);
    grad.addmm_(dy.t(), x);
    return;
  }
  const auto dw = dy.scalar_type() == at::kBFloat16 && dy.is_cpu() ? weight_grad_bf16(dy, x)
                                                                   : at::mm(dy.t(), x);
  std::lock_guard<std::mutex> held(lock);
  grad.add_(dw);
}

StackGrad::StackGrad(std::vector<at::Tensor> masters, std::vector<int64_t> rows,
                     at::Tensor columns)
    : masters_(std::move(masters)), rows_(std::move(rows)), columns_(std::move(columns)) {
  TORCH_CHECK(masters_.size() == rows_.size() && !masters_.empty(),
              "stack_grad: one row count a master");
  for (size_t i = 0; i < masters_.size(); i++) {
    const auto& m = masters_[i];
    TORCH_CHECK(!m.defined() || (m.dim() == 2 && m.size(0) == rows_[i] &&
                                 m.scalar_type() == at::kFloat && m.is_cpu()),
                "stack_grad: an f32 master of ", rows_[i], " rows on the CPU");
    total_ += rows_[i];
  }
  TORCH_CHECK(!columns_.defined() || (columns_.scalar_type() == at::kLong &&
                                      columns_.numel() == total_ && columns_.is_contiguous()),
              "stack_grad: columns, one int64 a row");
}

void StackGrad::add(const at::Tensor& dy, const at::Tensor& x) {
  check_shapes(dy, x, total_, x.size(1));
  TORCH_CHECK(dy.scalar_type() == at::kBFloat16 && dy.is_cpu(),
              "stack_grad: bf16 products on the CPU");
  if (dy.size(0) == 0) return;
  const auto dw = weight_grad_bf16(dy, x).contiguous();
  std::lock_guard<std::mutex> held(lock_);
  const bool fresh = !buffer_.defined();
  if (columns_.defined()) {
    if (fresh) buffer_ = at::empty(dw.sizes(), dw.options().dtype(at::kFloat));
    move_rows(buffer_, dw, columns_.data_ptr<int64_t>(), !fresh);
  } else if (fresh) {
    buffer_ = dw.to(at::kFloat);
  } else {
    buffer_.add_(dw);
  }
  if (fresh) attach();
}

void StackGrad::attach() {
  int64_t start = 0;
  for (size_t i = 0; i < masters_.size(); i++) {
    const auto& master = masters_[i];
    if (master.defined()) {
      TORCH_CHECK(master.size(1) == buffer_.size(1), "stack_grad: masters of ",
                  master.size(1), " columns for products of ", buffer_.size(1));
      auto block = buffer_.narrow(0, start, rows_[i]);
      if (master.grad().defined()) block.add_(master.grad());
      master.mutable_grad() = block;
    }
    start += rows_[i];
  }
}

at::Tensor stack_grad_handle(std::shared_ptr<StackGrad> grad) {
  // A byte whose storage holds the shared pointer and whose data pointer is the
  // gradient: the byte is never read.
  auto* held = new std::shared_ptr<StackGrad>(std::move(grad));
  return at::from_blob(
      held->get(), {1}, [held](void*) { delete held; },
      at::TensorOptions().dtype(at::kByte));
}

StackGrad& stack_grad_of(const at::Tensor& handle) {
  TORCH_CHECK(handle.scalar_type() == at::kByte && handle.numel() == 1,
              "not a stack gradient's handle");
  return *static_cast<StackGrad*>(handle.data_ptr());
}

}  // namespace lsp

extern "C" {

// `grad` += dyᵀ · x (`lsp::add_weight_grad`); returns an error or null.
char* lsp_add_weight_grad(const at::Tensor* grad, const at::Tensor* dy, const at::Tensor* x) {
  return lsp::guarded([&] {
    RECORD_FUNCTION("lsp::add_weight_grad", std::vector<c10::IValue>({*dy, *x}));
    lsp::add_weight_grad(*grad, *dy, *x);
  });
}

// `*out` = the handle of a new `lsp::StackGrad` of `parts` masters (`masters[i]` null:
// that part takes no gradient) of `rows[i]` rows each, `columns` (null: in order);
// returns an error or null.
char* lsp_stack_grad_new(const at::Tensor* const* masters, const int64_t* rows,
                         int64_t parts, const at::Tensor* columns, at::Tensor** out) {
  return lsp::guarded([&] {
    std::vector<at::Tensor> ms;
    for (int64_t i = 0; i < parts; i++) ms.push_back(masters[i] ? *masters[i] : at::Tensor());
    auto grad = std::make_shared<lsp::StackGrad>(
        std::move(ms), std::vector<int64_t>(rows, rows + parts), columns ? *columns : at::Tensor());
    *out = new at::Tensor(lsp::stack_grad_handle(std::move(grad)));
  });
}

}  // extern "C"
