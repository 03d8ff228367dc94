//! The small building blocks: linear maps, RMSNorm and the embedding, each holding
//! its parameters under the checkpoint's tensor names (`weight`, `bias`).

use tch::{Device, Kind, Tensor, nn};

/// `x Wᵀ + b` over the last dimension of `x`, with `weight` `[out, in]`, for passes
/// that record no gradient. A weight of another kind than `x` (bf16 products of f32
/// activations under mixed precision) computes in its own kind; the result comes back
/// in `x`'s.
///
/// On the CPU in f32 this runs as oneDNN's inner product (`mkldnn_linear`) straight
/// on the dense weight. libtorch's `linear` goes to MKL, which on AMD takes its
/// generic AVX2 code and repacks the whole weight on every call: on this workplace's
/// Zen 5, oneDNN is 2–3× faster for the few rows of a decoding step and about 2× for
/// long prompts. Training keeps `linear`: through autograd, the layout conversions
/// around oneDNN would each save a copy of the activations for the backward pass.
pub fn inference_linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let mut shape = x.size();
    let inner = *shape.last().expect("at least one dimension");
    let rows: i64 = shape[..shape.len() - 1].iter().product();
    let onednn = x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && weight.kind() == Kind::Float
        && rows > 0;
    if x.kind() != weight.kind() {
        return x
            .to_kind(weight.kind())
            .linear(weight, bias)
            .to_kind(x.kind());
    }
    if !onednn {
        return x.linear(weight, bias);
    }
    let y = x
        .reshape([rows, inner])
        .contiguous()
        .to_mkldnn()
        .mkldnn_linear(weight, bias)
        .to_dense(None, false);
    *shape.last_mut().expect("at least one dimension") = weight.size()[0];
    y.reshape(shape.as_slice())
}

/// `y = x Wᵀ + b`, with `weight` `[out, in]` and an optional `bias`.
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Parameters under `path` (zeros until loaded).
    pub fn new(path: nn::Path<'_>, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        Self {
            weight: path.zeros("weight", &[out_dim, in_dim]),
            bias: bias.then(|| path.zeros("bias", &[out_dim])),
        }
    }

    /// Applies the map to the last dimension of `x`, through autograd (inference goes
    /// through [`crate::InferenceWeights`]).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// RMSNorm as transformers' `LlamaRMSNorm`: normalised in f32, scaled by `weight`.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Parameters under `path`.
    pub fn new(path: nn::Path<'_>, dim: i64, eps: f64) -> Self {
        Self {
            weight: path.ones("weight", &[dim]),
            eps,
        }
    }

    /// The weight, `[dim]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The ε added to the mean square.
    pub fn eps(&self) -> f64 {
        self.eps
    }

    /// Normalises the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        if kind == Kind::Float {
            // libtorch's fused kernel: the same f32 arithmetic in one pass.
            let dim = self.weight.size()[0];
            return x.rms_norm([dim].as_slice(), Some(&self.weight), self.eps);
        }
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.square().mean_dim(-1, true, Kind::Float);
        let normed = x32 * (variance + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}

/// Token embedding, `weight` `[vocab, hidden]`.
#[derive(Debug)]
pub struct Embedding {
    /// `[vocab, hidden]`; also the output head when embeddings are tied.
    pub weight: Tensor,
}

impl Embedding {
    /// Parameters under `path`.
    pub fn new(path: nn::Path<'_>, vocab: i64, dim: i64) -> Self {
        Self {
            weight: path.zeros("weight", &[vocab, dim]),
        }
    }

    /// Rows of `ids` (`[batch, seq]`, int64).
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}
