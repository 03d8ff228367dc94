//! The small building blocks: linear maps, RMSNorm and the embedding, each holding
//! its parameters under the checkpoint's tensor names (`weight`, `bias`).

use tch::{Kind, Tensor, nn};

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

    /// Applies the map to the last dimension of `x`.
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

    /// Normalises the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
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
