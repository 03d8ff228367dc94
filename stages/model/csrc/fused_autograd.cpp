// What tch's C API lacks, against libtorch's C++ API: autograd nodes for the fused
// kernels of a CPU pass under mixed precision (`src/fused/`; the C API has no way to
// define an autograd function), and dropping a parameter's gradient (`src/grads.rs`). The arithmetic
// is Rust's (`src/fused/kernels.rs`), handed in once as function pointers; these
// nodes allocate the outputs, save what the backward pass reads, split rows among
// libtorch's threads and call the kernels on each share.
//
// Every entry point catches what libtorch throws and returns it as a message the
// caller frees with `lsp_fused_free`; nothing unwinds into Rust.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

extern "C" {
// The kernels, each over a block of `rows` contiguous rows.
struct LspFusedKernels {
  // y = bf16(x · rstd · w), rstd = 1/√(mean(x²) + eps); x f32 [rows, dim].
  void (*rms_forward)(const float* x, const float* w, uint16_t* y, float* rstd,
                      int64_t rows, int64_t dim, float eps);
  // dx (f32, written) and dw (f32 [dim], added to) from dy (bf16).
  void (*rms_backward)(const float* x, const float* w, const float* rstd,
                       const uint16_t* dy, float* dx, float* dw, int64_t rows,
                       int64_t dim);
  // h = silu(gate) · up, gu = [gate | up] bf16 [rows, 2·inner], h bf16 [rows, inner].
  void (*swiglu_forward)(const uint16_t* gu, uint16_t* h, int64_t rows,
                         int64_t inner);
  // dgu = [dgate | dup] bf16 [rows, 2·inner] from dh bf16 [rows, inner].
  void (*swiglu_backward)(const uint16_t* gu, const uint16_t* dh, uint16_t* dgu,
                          int64_t rows, int64_t inner);
  // y = x rotated pair by pair, (x₀·c − x₁·s, x₀·s + x₁·c), or by the opposite
  // angle when `inverse`; x bf16 rows of `dim` values `x_ld` apart, turns f32 rows of
  // (c, s) per pair, y bf16 [rows, dim].
  void (*rotate_pairs)(const uint16_t* x, int64_t x_ld, const float* turns,
                       uint16_t* y, int64_t rows, int64_t dim, int32_t inverse);
};
}

namespace {

LspFusedKernels kernels{};

// Rows a thread takes at least: a hand-off costs more than a few rows.
constexpr int64_t kGrain = 16;

uint16_t* bf16_ptr(const at::Tensor& t) {
  return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
}

struct RmsNormBf16 : public torch::autograd::Function<RmsNormBf16> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in,
                            const at::Tensor& w_in, double eps) {
    TORCH_CHECK(x_in.scalar_type() == at::kFloat && w_in.scalar_type() == at::kFloat,
                "rms_norm_bf16 takes f32 activations and weight");
    auto x = x_in.contiguous();
    auto w = w_in.contiguous();
    const int64_t dim = x.size(-1);
    TORCH_CHECK(w.numel() == dim, "rms_norm_bf16: weight of ", w.numel(),
                " for rows of ", dim);
    const int64_t rows = dim == 0 ? 0 : x.numel() / dim;
    auto y = at::empty(x.sizes(), x.options().dtype(at::kBFloat16));
    auto rstd = at::empty({rows}, x.options());
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    uint16_t* yp = bf16_ptr(y);
    float* rp = rstd.data_ptr<float>();
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      kernels.rms_forward(xp + begin * dim, wp, yp + begin * dim, rp + begin,
                          end - begin, dim, static_cast<float>(eps));
    });
    ctx->save_for_backward({x, w, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    const auto& rstd = saved[2];
    auto dy = grads[0].to(at::kBFloat16).contiguous();
    const int64_t dim = x.size(-1);
    const int64_t rows = dim == 0 ? 0 : x.numel() / dim;
    auto dx = at::empty_like(x);
    // One row of dw per thread, summed after.
    auto partial = at::zeros({at::get_num_threads(), dim}, x.options());
    const float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    const float* rp = rstd.data_ptr<float>();
    const uint16_t* dyp = bf16_ptr(dy);
    float* dxp = dx.data_ptr<float>();
    float* pp = partial.data_ptr<float>();
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      float* dw = pp + at::get_thread_num() * dim;
      kernels.rms_backward(xp + begin * dim, wp, rp + begin, dyp + begin * dim,
                           dxp + begin * dim, dw, end - begin, dim);
    });
    return {dx, partial.sum(0), at::Tensor()};
  }
};

struct SwigluBf16 : public torch::autograd::Function<SwigluBf16> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gu_in) {
    TORCH_CHECK(gu_in.scalar_type() == at::kBFloat16, "swiglu_bf16 takes bf16");
    auto gu = gu_in.contiguous();
    const int64_t both = gu.size(-1);
    TORCH_CHECK(both % 2 == 0, "swiglu_bf16: gate and up of ", both, " columns");
    const int64_t inner = both / 2;
    const int64_t rows = both == 0 ? 0 : gu.numel() / both;
    auto sizes = gu.sizes().vec();
    sizes.back() = inner;
    auto h = at::empty(sizes, gu.options());
    const uint16_t* gp = bf16_ptr(gu);
    uint16_t* hp = bf16_ptr(h);
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      kernels.swiglu_forward(gp + begin * both, hp + begin * inner, end - begin, inner);
    });
    ctx->save_for_backward({gu});
    return h;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& gu = saved[0];
    auto dh = grads[0].to(at::kBFloat16).contiguous();
    const int64_t both = gu.size(-1);
    const int64_t inner = both / 2;
    const int64_t rows = both == 0 ? 0 : gu.numel() / both;
    auto dgu = at::empty_like(gu);
    const uint16_t* gp = bf16_ptr(gu);
    const uint16_t* dhp = bf16_ptr(dh);
    uint16_t* dp = bf16_ptr(dgu);
    at::parallel_for(0, rows, kGrain, [&](int64_t begin, int64_t end) {
      kernels.swiglu_backward(gp + begin * both, dhp + begin * inner, dp + begin * both,
                              end - begin, inner);
    });
    return {dgu};
  }
};

// Rotates `x` ([batch, heads, seq, dim] bf16, its last dimension contiguous) by
// `turns` ([batch, seq, dim] f32: each pair's cos and sin) into a new contiguous
// tensor, or by the opposite angles (the backward pass), one (sequence, head) a task.
at::Tensor rotate_pairs(const at::Tensor& x_in, const at::Tensor& turns, bool inverse) {
  auto x = x_in.stride(-1) == 1 ? x_in : x_in.contiguous();
  const int64_t batch = x.size(0), heads = x.size(1), seq = x.size(2), dim = x.size(3);
  auto y = at::empty({batch, heads, seq, dim}, x.options());
  const uint16_t* xp = bf16_ptr(x);
  const float* tp = turns.data_ptr<float>();
  uint16_t* yp = bf16_ptr(y);
  at::parallel_for(0, batch * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const int64_t b = i / heads, h = i % heads;
      kernels.rotate_pairs(xp + b * x.stride(0) + h * x.stride(1), x.stride(2),
                           tp + b * seq * dim, yp + i * seq * dim, seq, dim, inverse);
    }
  });
  return y;
}

struct RotatePairsBf16 : public torch::autograd::Function<RotatePairsBf16> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& unit) {
    TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.dim() == 4,
                "rotate_pairs_bf16 takes bf16 [batch, heads, seq, head_dim]");
    TORCH_CHECK(unit.scalar_type() == at::kComplexFloat &&
                    unit.numel() * 2 == x.size(0) * x.size(2) * x.size(3),
                "rotate_pairs_bf16: unit complex f32 turns of [batch, 1, seq, head_dim / 2]");
    auto turns = at::view_as_real(unit).contiguous();
    ctx->save_for_backward({turns});
    return rotate_pairs(x, turns, false);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto turns = ctx->get_saved_variables()[0];
    auto dy = grads[0].to(at::kBFloat16);
    return {rotate_pairs(dy, turns, true), at::Tensor()};
  }
};

// A copy of `what` the caller frees with `lsp_fused_free`.
char* message(const char* what) {
  const size_t n = std::strlen(what) + 1;
  char* out = static_cast<char*>(std::malloc(n));
  if (out != nullptr) std::memcpy(out, what, n);
  return out;
}

template <typename F>
char* guarded(F&& f) {
  try {
    f();
    return nullptr;
  } catch (const std::exception& e) {
    return message(e.what());
  } catch (...) {
    return message("unknown C++ exception");
  }
}

}  // namespace

extern "C" {

void lsp_fused_set_kernels(const LspFusedKernels* k) { kernels = *k; }

void lsp_fused_free(char* p) { std::free(p); }

// `*out` = rms_norm_bf16(x, w, eps) as a new tensor; returns an error or null.
char* lsp_rms_norm_bf16(const at::Tensor* x, const at::Tensor* w, double eps,
                        at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(RmsNormBf16::apply(*x, *w, eps)); });
}

// `*out` = swiglu_bf16(gu) as a new tensor; returns an error or null.
char* lsp_swiglu_bf16(const at::Tensor* gu, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(SwigluBf16::apply(*gu)); });
}

// `*out` = rotate_pairs_bf16(x, unit) as a new tensor; returns an error or null.
char* lsp_rotate_pairs_bf16(const at::Tensor* x, const at::Tensor* unit, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(RotatePairsBf16::apply(*x, *unit)); });
}

// Drops `t`'s gradient (undefined, as PyTorch's `zero_grad(set_to_none=True)`).
char* lsp_forget_grad(const at::Tensor* t) {
  return guarded([&] { t->mutable_grad() = at::Tensor(); });
}

}  // extern "C"
