//! The small building blocks: linear maps, RMSNorm and the embedding, each holding
//! its parameters under the checkpoint's tensor names (`weight`, `bias`).

use std::cell::RefCell;

use tch::{Device, Kind, Tensor, nn};

/// A weight copied into oneDNN's blocked layout for inference. MKL's sgemm repacks
/// the whole weight on every call, which for the few rows of a decoding step costs as
/// much as the product; oneDNN keeps the packed copy and also spreads a one-row
/// product over the cores (2–3× faster per decoding step on this machine).
#[derive(Debug, Default)]
pub struct Packed(RefCell<Option<Tensor>>);

impl Packed {
    /// Packs `weight` (CPU only; elsewhere nothing changes).
    pub fn pack(&self, weight: &Tensor) {
        if weight.device() == Device::Cpu {
            *self.0.borrow_mut() = Some(tch::no_grad(|| weight.detach().contiguous().to_mkldnn()));
        }
    }

    /// Drops the packed copy (it would go stale when the weight changes).
    pub fn clear(&self) {
        *self.0.borrow_mut() = None;
    }

    /// `x Wᵀ` with the packed weight, when there is one and `x` needs no gradient.
    pub fn product(&self, x: &Tensor) -> Option<Tensor> {
        let packed = self.0.borrow();
        let w = packed.as_ref()?;
        if x.requires_grad() {
            return None;
        }
        let mut shape = x.size();
        let rows: i64 = shape[..shape.len() - 1].iter().product();
        let flat = x.reshape([rows, shape[shape.len() - 1]]).contiguous();
        let y = flat
            .to_mkldnn()
            .mkldnn_linear::<Tensor>(w, None)
            .to_dense(None, false);
        *shape.last_mut().expect("at least one dimension") = y.size()[1];
        Some(y.reshape(shape.as_slice()))
    }
}

/// `y = x Wᵀ + b`, with `weight` `[out, in]` and an optional `bias`.
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
    packed: Packed,
}

impl Linear {
    /// Parameters under `path` (zeros until loaded).
    pub fn new(path: nn::Path<'_>, in_dim: i64, out_dim: i64, bias: bool) -> Self {
        Self {
            weight: path.zeros("weight", &[out_dim, in_dim]),
            bias: bias.then(|| path.zeros("bias", &[out_dim])),
            packed: Packed::default(),
        }
    }

    /// Applies the map to the last dimension of `x`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.packed.product(x) {
            Some(y) => match &self.bias {
                Some(b) => y + b,
                None => y,
            },
            None => x.linear(&self.weight, self.bias.as_ref()),
        }
    }

    /// Packs the weight for inference ([`Packed`]), or drops the packed copy.
    pub fn set_packed(&self, packed: bool) {
        if packed {
            self.packed.pack(&self.weight);
        } else {
            self.packed.clear();
        }
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
