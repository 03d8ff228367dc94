// What tch's C API lacks, against libtorch's C++ API: autograd nodes for the fused
// kernels of a CPU pass under mixed precision (`src/fused/`; the C API has no way to
// define an autograd function) and the bf16 transpose of their weight gradients
// (`lsp::weight_grad_bf16`), and dropping or zero-filling a parameter's gradient
// (`src/grads.rs`). The arithmetic is Rust's (`src/fused/kernels.rs`), handed in once
// as function pointers; these nodes allocate the outputs, save what the backward pass
// reads, split rows among libtorch's threads and call the kernels on each share.
//
// Every entry point catches what libtorch throws and returns it as a message the
// caller frees with `lsp_fused_free` (`guarded.h`); nothing unwinds into Rust.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "guarded.h"
#include "weight_grads.h"

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using lsp::guarded;

extern "C" {
// One (sequence, key/value head)'s keys and values (bf16 rows, `k_ld` / `v_ld`
// apart) packed into `kp` ([⌈keys/16⌉ · 16 · dim/2] words) and `vp` ([⌈keys/2⌉ ·
// dim] words), as `src/fused/attention.rs` reads them.
struct LspAttentionPack {
  const uint16_t* k;
  int64_t k_ld;
  const uint16_t* v;
  int64_t v_ld;
  int64_t keys;
  int64_t dim;
  uint32_t* kp;
  uint32_t* vp;
};

// One group's `heads` query heads (row (position, head) at q + position · q_ld +
// head · q_head) at positions first..end over its packed keys and values; causal,
// the row at mask + position · mask_ld added (bf16) unless `mask` is null;
// output row (position, head) at out + position · out_ld + head · dim (bf16).
struct LspAttentionRows {
  const uint16_t* q;
  int64_t q_ld;
  int64_t q_head;
  int64_t heads;
  const uint32_t* kp;
  const uint32_t* vp;
  int64_t keys;
  int64_t dim;
  const uint16_t* mask;
  int64_t mask_ld;
  float scale;
  int64_t first;
  int64_t end;
  uint16_t* out;
  int64_t out_ld;
  // Null, or each row's largest masked score and inverse sum at stats + 2 · (position
  // · heads + head), for the backward pass.
  float* stats;
};

// One group's gradients (`src/fused/attention_grads.rs`): q's rows as in
// LspAttentionRows, keys and values rows `k_ld` / `v_ld` apart, the output's gradient
// `dy` (row (position, head) at dy + position · dy_ld + head · dim), the forward's
// `stats`; dq row (position, head) at dq + position · dq_ld + head · dim,
// dk and dv rows dk_ld / dv_ld apart (bf16).
struct LspAttentionGrads {
  const uint16_t* q;
  int64_t q_ld;
  int64_t q_head;
  int64_t heads;
  const uint16_t* k;
  int64_t k_ld;
  const uint16_t* v;
  int64_t v_ld;
  const uint16_t* dy;
  int64_t dy_ld;
  const float* stats;
  int64_t keys;
  int64_t dim;
  const uint16_t* mask;
  int64_t mask_ld;
  float scale;
  uint16_t* dq;
  int64_t dq_ld;
  uint16_t* dk;
  int64_t dk_ld;
  uint16_t* dv;
  int64_t dv_ld;
};

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
  // Rows `begin..end` of x (bf16 [rows, cols]) as columns `begin..end` of y (bf16
  // [cols, rows]).
  void (*transpose)(const uint16_t* x, int64_t rows, int64_t cols, int64_t begin,
                    int64_t end, uint16_t* y);
  // The attention of `src/fused/attention.rs`: packing, then a run of positions.
  void (*attention_pack)(const LspAttentionPack* args);
  void (*attention_rows)(const LspAttentionRows* args);
  void (*attention_grads)(const LspAttentionGrads* args);
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

// `x` (bf16 [rows, cols], contiguous) transposed into a new contiguous [cols, rows],
// blocks of 32 rows a task.
at::Tensor transposed(const at::Tensor& x) {
  const int64_t rows = x.size(0), cols = x.size(1);
  auto y = at::empty({cols, rows}, x.options());
  const uint16_t* xp = bf16_ptr(x);
  uint16_t* yp = bf16_ptr(y);
  constexpr int64_t kBlock = 32;
  at::parallel_for(0, (rows + kBlock - 1) / kBlock, 1, [&](int64_t begin, int64_t end) {
    kernels.transpose(xp, rows, cols, begin * kBlock, std::min(end * kBlock, rows), yp);
  });
  return y;
}

}  // namespace

namespace lsp {

// dyᵀ · x with both of the product's operands in plain rows: oneDNN computes dyᵀ·x as
// given, the long token dimension reduced over a transposed operand, at about two
// thirds of the forward product's rate (AMX Xeon). Either dyᵀ is made contiguous
// first (dyᵀ·x), or xᵀ is and the [in, out] product transposed after ((xᵀ·dy)ᵀ),
// whichever moves fewer values: tokens·out against (tokens + out)·in.
at::Tensor weight_grad_bf16(const at::Tensor& dy, const at::Tensor& x) {
  const int64_t tokens = x.size(0), in = x.size(1), out = dy.size(1);
  return tokens * out <= (tokens + out) * in
             ? at::mm(transposed(dy.contiguous()), x)
             : transposed(at::mm(transposed(x.contiguous()), dy));
}

}  // namespace lsp

namespace {

// y = x·wᵀ of bf16 x [..., in] and w [out, in], as `at::linear` computes it (the same
// oneDNN product); backward dx = dy·w, and the weight's gradient either through
// autograd (`w` requiring it: bf16, `lsp::weight_grad_bf16`) or, given a stack
// gradient's handle, added into it (`lsp::StackGrad`): the f32 master weights'
// gradients of a CPU pass under mixed precision, with no bf16 gradient, cast or sum
// between (`src/training_weights.rs`).
struct LinearBf16 : public torch::autograd::Function<LinearBf16> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x_in,
                            const at::Tensor& w, const at::Tensor* grad) {
    TORCH_CHECK(x_in.scalar_type() == at::kBFloat16 && w.scalar_type() == at::kBFloat16,
                "linear_bf16 takes bf16 activations and weight");
    TORCH_CHECK(x_in.is_cpu() && w.is_cpu(), "linear_bf16 runs on the CPU");
    TORCH_CHECK(w.dim() == 2 && x_in.size(-1) == w.size(1), "linear_bf16: weight ",
                w.sizes(), " for rows of ", x_in.size(-1));
    auto x = x_in.contiguous().view({-1, w.size(1)});
    auto sizes = x_in.sizes().vec();
    sizes.back() = w.size(0);
    ctx->save_for_backward({x, w});
    ctx->saved_data["sizes"] = x_in.sizes().vec();
    // A pointer, not an input: autograd's inputs are tensors that may take gradients.
    if (grad != nullptr) {
      lsp::stack_grad_of(*grad);  // checked now rather than in the backward pass
      ctx->saved_data["grad"] = *grad;
    }
    return at::mm(x, w.t()).view(sizes);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& w = saved[1];
    auto dy = grads[0].to(at::kBFloat16).contiguous().view({-1, w.size(0)});
    at::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) {
      dx = at::mm(dy, w).view(ctx->saved_data["sizes"].toIntVector());
    }
    if (ctx->needs_input_grad(1)) {
      dw = lsp::weight_grad_bf16(dy, x);
    }
    const auto handle = ctx->saved_data.find("grad");
    if (handle != ctx->saved_data.end()) {
      lsp::stack_grad_of(handle->second.toTensor()).add(dy, x);
    }
    return {dx, dw, at::Tensor()};
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

// Query positions a task of `attention_bf16` takes.
constexpr int64_t kAttentionPositions = 32;

// attention_bf16's inputs, checked: q [batch, heads, seq, dim] and k, v [batch,
// kv_heads, seq, dim] (bf16, their last dimension made contiguous), the mask (if any)
// bf16 [batch, 1, seq, seq] with its last dimension contiguous.
struct AttentionInputs {
  at::Tensor q, k, v, mask;
  int64_t batch, heads, seq, dim, kv, group;
  float scale;
};

AttentionInputs attention_inputs(const at::Tensor& q_in, const at::Tensor& k_in,
                                 const at::Tensor& v_in, const at::Tensor& mask_in) {
  TORCH_CHECK(q_in.scalar_type() == at::kBFloat16 && k_in.scalar_type() == at::kBFloat16 &&
                  v_in.scalar_type() == at::kBFloat16 && q_in.dim() == 4 &&
                  k_in.dim() == 4 && v_in.dim() == 4,
              "attention_bf16 takes bf16 q, k and v of [batch, heads, seq, head_dim]");
  AttentionInputs in;
  in.q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  in.k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  in.v = v_in.stride(3) == 1 ? v_in : v_in.contiguous();
  in.batch = in.q.size(0);
  in.heads = in.q.size(1);
  in.seq = in.q.size(2);
  in.dim = in.q.size(3);
  in.kv = in.k.size(1);
  TORCH_CHECK(in.kv > 0 && in.heads % in.kv == 0 && in.k.size(0) == in.batch &&
                  in.v.sizes() == in.k.sizes() && in.k.size(2) == in.seq &&
                  in.k.size(3) == in.dim,
              "attention_bf16: k and v of [batch, kv_heads, seq, head_dim] for q of ",
              in.q.sizes());
  TORCH_CHECK(in.dim > 0 && in.dim % 16 == 0 && in.dim <= 128, "attention_bf16: head_dim ",
              in.dim, " (a multiple of 16 up to 128)");
  if (mask_in.defined()) {
    in.mask = mask_in.to(at::kBFloat16).expand({in.batch, 1, in.seq, in.seq});
    if (in.mask.stride(3) != 1) in.mask = in.mask.contiguous();
  }
  in.group = in.heads / in.kv;
  in.scale = 1.0f / std::sqrt(static_cast<float>(in.dim));
  return in;
}

const uint16_t* mask_ptr(const AttentionInputs& in, int64_t b) {
  return in.mask.defined() ? bf16_ptr(in.mask) + b * in.mask.stride(0) : nullptr;
}

// softmax(q·kᵀ · scale + mask)·v, causal, the mask (if any) added; [batch, seq, heads ·
// dim] bf16, and (given `stats`, f32 [batch · kv_heads, seq · group, 2]) each row's
// softmax statistics. Keys and values are packed first, a task per (sequence,
// key/value head); then each task takes a run of query positions of one group, the
// runs of a group taken from both ends in turn so that a contiguous share of the tasks
// (what a thread gets) holds as many early, short rows as late ones.
at::Tensor attention_forward(const AttentionInputs& in, at::Tensor* stats) {
  const int64_t batch = in.batch, heads = in.heads, seq = in.seq, dim = in.dim;
  const int64_t kv = in.kv, group = in.group;
  const auto &q = in.q, &k = in.k, &v = in.v;
  // Keys padded to whole tiles of 64 (`padded` in attention.rs), values to pairs.
  const int64_t padded = (seq + 63) / 64 * 64, pairs = (seq + 1) / 2;
  auto kp = at::empty({batch * kv, padded * dim / 2}, q.options().dtype(at::kInt));
  auto vp = at::empty({batch * kv, pairs * dim}, q.options().dtype(at::kInt));
  auto out = at::empty({batch, seq, heads * dim}, q.options());
  float* statp = nullptr;
  if (stats != nullptr) {
    *stats = at::empty({batch * kv, seq * group, 2}, q.options().dtype(at::kFloat));
    statp = stats->data_ptr<float>();
  }
  const uint16_t* qp = bf16_ptr(q);
  const uint16_t* kptr = bf16_ptr(k);
  const uint16_t* vptr = bf16_ptr(v);
  auto* kpp = reinterpret_cast<uint32_t*>(kp.data_ptr<int32_t>());
  auto* vpp = reinterpret_cast<uint32_t*>(vp.data_ptr<int32_t>());
  uint16_t* op = bf16_ptr(out);
  at::parallel_for(0, batch * kv, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const int64_t b = i / kv, g = i % kv;
      const LspAttentionPack args{kptr + b * k.stride(0) + g * k.stride(1), k.stride(2),
                                  vptr + b * v.stride(0) + g * v.stride(1), v.stride(2),
                                  seq, dim, kpp + i * kp.size(1), vpp + i * vp.size(1)};
      kernels.attention_pack(&args);
    }
  });
  const int64_t runs = (seq + kAttentionPositions - 1) / kAttentionPositions;
  at::parallel_for(0, batch * kv * runs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i++) {
      const int64_t groups = i / runs, turn = i % runs;
      const int64_t b = groups / kv, g = groups % kv;
      const int64_t run = turn % 2 == 0 ? turn / 2 : runs - 1 - turn / 2;
      const int64_t first = run * kAttentionPositions;
      const int64_t last = std::min(seq, first + kAttentionPositions);
      const LspAttentionRows args{qp + b * q.stride(0) + g * group * q.stride(1),
                                  q.stride(2),
                                  q.stride(1),
                                  group,
                                  kpp + groups * kp.size(1),
                                  vpp + groups * vp.size(1),
                                  seq,
                                  dim,
                                  mask_ptr(in, b),
                                  in.mask.defined() ? in.mask.stride(2) : 0,
                                  in.scale,
                                  first,
                                  last,
                                  op + b * seq * heads * dim + g * group * dim,
                                  heads * dim,
                                  statp ? statp + groups * seq * group * 2 : nullptr};
      kernels.attention_rows(&args);
    }
  });
  return out;
}

// Attention through autograd: the forward keeps q, k, v, the mask and the rows'
// softmax statistics; the backward makes dq, dk and dv (bf16) a task per
// (sequence, key/value head).
struct AttentionBf16 : public torch::autograd::Function<AttentionBf16> {
  // The mask a pointer (null: causality alone), not an input: it takes no gradient.
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor* mask) {
    auto in = attention_inputs(q, k, v, mask ? *mask : at::Tensor());
    at::Tensor stats;
    auto y = attention_forward(in, &stats);
    ctx->save_for_backward({in.q, in.k, in.v, stats});
    if (in.mask.defined()) ctx->saved_data["mask"] = in.mask;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto mask = ctx->saved_data.find("mask");
    auto in = attention_inputs(saved[0], saved[1], saved[2],
                               mask == ctx->saved_data.end() ? at::Tensor()
                                                             : mask->second.toTensor());
    const auto& stats = saved[3];
    auto dy = grads[0].to(at::kBFloat16).contiguous();
    const int64_t batch = in.batch, heads = in.heads, seq = in.seq, dim = in.dim;
    const int64_t kv = in.kv, group = in.group;
    const auto &q = in.q, &k = in.k, &v = in.v;
    auto dq = at::empty({batch, seq, heads, dim}, q.options());
    auto dk = at::empty({batch, kv, seq, dim}, q.options());
    auto dv = at::empty({batch, kv, seq, dim}, q.options());
    at::parallel_for(0, batch * kv, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; i++) {
        const int64_t b = i / kv, g = i % kv;
        const int64_t row = b * seq * heads * dim + g * group * dim;
        const LspAttentionGrads args{
            bf16_ptr(q) + b * q.stride(0) + g * group * q.stride(1),
            q.stride(2),
            q.stride(1),
            group,
            bf16_ptr(k) + b * k.stride(0) + g * k.stride(1),
            k.stride(2),
            bf16_ptr(v) + b * v.stride(0) + g * v.stride(1),
            v.stride(2),
            bf16_ptr(dy) + row,
            heads * dim,
            stats.data_ptr<float>() + i * seq * group * 2,
            seq,
            dim,
            mask_ptr(in, b),
            in.mask.defined() ? in.mask.stride(2) : 0,
            in.scale,
            bf16_ptr(dq) + row,
            heads * dim,
            bf16_ptr(dk) + i * seq * dim,
            dim,
            bf16_ptr(dv) + i * seq * dim,
            dim};
        kernels.attention_grads(&args);
      }
    });
    return {dq.permute({0, 2, 1, 3}), dk, dv, at::Tensor()};
  }
};

}  // namespace

extern "C" {

void lsp_fused_set_kernels(const LspFusedKernels* k) { kernels = *k; }

void lsp_fused_free(char* p) { std::free(p); }

// `*out` = rms_norm_bf16(x, w, eps) as a new tensor; returns an error or null.
char* lsp_rms_norm_bf16(const at::Tensor* x, const at::Tensor* w, double eps,
                        at::Tensor** out) {
  return guarded([&] {
    RECORD_FUNCTION("lsp::rms_norm_bf16", std::vector<c10::IValue>({*x}));
    *out = new at::Tensor(RmsNormBf16::apply(*x, *w, eps));
  });
}

// `*out` = swiglu_bf16(gu) as a new tensor; returns an error or null.
char* lsp_swiglu_bf16(const at::Tensor* gu, at::Tensor** out) {
  return guarded([&] {
    RECORD_FUNCTION("lsp::swiglu_bf16", std::vector<c10::IValue>({*gu}));
    *out = new at::Tensor(SwigluBf16::apply(*gu));
  });
}

// `*out` = attention_bf16(q, k, v, mask) as a new tensor (causal; `mask` null: no more),
// through autograd where grad mode is on and q, k or v requires a gradient; returns an
// error or null.
char* lsp_attention_bf16(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                         const at::Tensor* mask, at::Tensor** out) {
  return guarded([&] {
    RECORD_FUNCTION("lsp::attention_bf16", std::vector<c10::IValue>({*q}));
    const bool grads = at::GradMode::is_enabled() &&
                       (q->requires_grad() || k->requires_grad() || v->requires_grad());
    if (grads) {
      *out = new at::Tensor(AttentionBf16::apply(*q, *k, *v, mask));
    } else {
      auto in = attention_inputs(*q, *k, *v, mask ? *mask : at::Tensor());
      *out = new at::Tensor(attention_forward(in, nullptr));
    }
  });
}

// `*out` = rotate_pairs_bf16(x, unit) as a new tensor; returns an error or null.
char* lsp_rotate_pairs_bf16(const at::Tensor* x, const at::Tensor* unit, at::Tensor** out) {
  return guarded([&] {
    RECORD_FUNCTION("lsp::rotate_pairs_bf16", std::vector<c10::IValue>({*x}));
    *out = new at::Tensor(RotatePairsBf16::apply(*x, *unit));
  });
}

// `*out` = linear_bf16(x, w) as a new tensor, the weight's gradient added into the
// stack gradient whose handle `grad` is (null: through autograd); returns an error or
// null.
char* lsp_linear_bf16(const at::Tensor* x, const at::Tensor* w, const at::Tensor* grad,
                      at::Tensor** out) {
  return guarded([&] {
    RECORD_FUNCTION("lsp::linear_bf16", std::vector<c10::IValue>({*x, *w}));
    *out = new at::Tensor(LinearBf16::apply(*x, *w, grad));
  });
}

// Gives `t` a zero gradient (contiguous, of t's kind) where it has none.
char* lsp_grad_or_zeros(const at::Tensor* t) {
  return guarded([&] {
    if (!t->grad().defined()) {
      t->mutable_grad() = at::zeros_like(*t, at::MemoryFormat::Contiguous);
    }
  });
}

// Drops `t`'s gradient (undefined, as PyTorch's `zero_grad(set_to_none=True)`).
char* lsp_forget_grad(const at::Tensor* t) {
  return guarded([&] { t->mutable_grad() = at::Tensor(); });
}

}  // extern "C"
