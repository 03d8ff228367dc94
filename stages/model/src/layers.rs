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

/// `y = x Wᵀ + b`, with `weight` `[out, in]` and an optional `bias`, plus a LoRA
/// adapter's `scale · (x Aᵀ) Bᵀ` when one is attached.
#[derive(Debug)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: Tensor,
    /// `[out]`.
    pub bias: Option<Tensor>,
    /// The adapter on this map, if any ([`crate::lora`]).
    pub lora: Option<LoraPair>,
}

/// A LoRA adapter's two factors on one linear map: `ΔW = scale · B A`.
#[derive(Debug)]
pub struct LoraPair {
    /// `[r, in]`.
    pub a: Tensor,
    /// `[out, r]`.
    pub b: Tensor,
    /// `alpha / r`, or `alpha / √r` (rsLoRA).
    pub scale: f64,
    /// Dropout on the adapter's input while training (0: none).
    pub dropout: f64,
}

impl LoraPair {
    /// The same factors in `kind` (through autograd: gradients reach these).
    pub fn to_kind(&self, kind: Kind) -> Self {
        Self {
            a: self.a.to_kind(kind),
            b: self.b.to_kind(kind),
            ..*self
        }
    }

    /// The same factors, shared (no copy).
    pub fn shallow_copy(&self) -> Self {
        Self {
            a: self.a.shallow_clone(),
            b: self.b.shallow_clone(),
            ..*self
        }
    }

    /// `scale · (x Aᵀ) Bᵀ`: two thin products (dropout on `x` when the factors train).
    pub(crate) fn apply(&self, x: &Tensor) -> Tensor {
        let train = self.dropout > 0.0 && self.a.requires_grad();
        let x = match train {
            true => x.dropout(self.dropout, true),
            false => x.shallow_clone(),
        };
        x.linear::<&Tensor>(&self.a, None)
            .linear::<&Tensor>(&self.b, None)
            * self.scale
    }

    /// `scale · B A`, `[out, in]`, without gradient.
    pub fn delta(&self) -> Tensor {
        tch::no_grad(|| self.b.mm(&self.a) * self.scale)
    }
}

/// `x`'s map by `weight` (and `bias`), in `x`'s kind: where the weight is stored in
/// another kind (a frozen model's bf16 maps under mixed precision), the product runs
/// in the weight's kind, on `x` cast to it, as the passes without gradient run it.
pub(crate) fn linear_in_weight_kind(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    if x.kind() == weight.kind() {
        return x.linear(weight, bias);
    }
    x.to_kind(weight.kind())
        .linear(weight, bias)
        .to_kind(x.kind())
}

/// A trainable variable `name` under `path`, of `dims` and `kind`, its memory
/// allocated but not written (its pages are touched first by the load).
fn unset(path: &nn::Path<'_>, name: &str, dims: &[i64], kind: Kind) -> Tensor {
    path.add(name, Tensor::empty(dims, (kind, path.device())), true)
}

impl Linear {
    /// The weight and the bias made again in `kind`, unset until loaded (the old
    /// storage is freed once nothing else holds it).
    pub(crate) fn unset_as(&mut self, kind: Kind) {
        tch::no_grad(|| {
            for t in std::iter::once(&mut self.weight).chain(self.bias.as_mut()) {
                let fresh = Tensor::empty(t.size(), (kind, t.device()));
                t.set_data(&fresh);
            }
        });
    }

    /// Parameters under `path`, of `kind`, unset until loaded: made without
    /// writing them (a model's zeros were half its load time's memory traffic), and a
    /// load that misses one is an error ([`crate::checkpoint::load_weights`]).
    pub fn new(path: nn::Path<'_>, in_dim: i64, out_dim: i64, bias: bool, kind: Kind) -> Self {
        Self {
            weight: unset(&path, "weight", &[out_dim, in_dim], kind),
            bias: bias.then(|| unset(&path, "bias", &[out_dim], kind)),
            lora: None,
        }
    }

    /// Applies the map (and its adapter) to the last dimension of `x`, through
    /// autograd (inference goes through [`crate::InferenceWeights`]).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = linear_in_weight_kind(x, &self.weight, self.bias.as_ref());
        match &self.lora {
            Some(lora) => y + lora.apply(x),
            None => y,
        }
    }

    /// The weight, the bias and the adapter's factors, those it has.
    pub(crate) fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        let lora = self.lora.iter().flat_map(|l| [&l.a, &l.b]);
        std::iter::once(&self.weight).chain(&self.bias).chain(lora)
    }

    /// The same map sharing the weights, with or without the adapter.
    pub fn shallow_copy(&self, adapters: bool) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            lora: self
                .lora
                .as_ref()
                .filter(|_| adapters)
                .map(LoraPair::shallow_copy),
        }
    }

    /// The map with its adapter merged into the weight (`W + scale · B A`, a new
    /// tensor), or the weight itself without one; no gradient, no adapter.
    pub fn merged(&self) -> Self {
        let weight = match &self.lora {
            Some(lora) => tch::no_grad(|| &self.weight + lora.delta().to_kind(self.weight.kind())),
            None => self.weight.shallow_clone(),
        };
        Self {
            weight,
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            lora: None,
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

    /// The same norm sharing its weight.
    pub fn shallow_copy(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            eps: self.eps,
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
            weight: unset(&path, "weight", &[vocab, dim], path.kind()),
        }
    }

    /// The same embedding sharing its weight.
    pub fn shallow_copy(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
        }
    }

    /// Rows of `ids` (`[batch, seq]`, int64).
    pub fn forward(&self, ids: &Tensor) -> Tensor {
        Tensor::embedding(&self.weight, ids, -1, false, false)
    }
}
