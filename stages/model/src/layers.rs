//! The small building blocks: linear maps, RMSNorm and the embedding, each holding
//! its parameters under the checkpoint's tensor names (`weight`, `bias`).

use std::cell::RefCell;
use std::sync::Arc;

use tch::{Device, Kind, Tensor, nn};

use crate::panels::Panels;
use crate::team::Team;

/// `x Wᵀ + b` over the last dimension of `x`, with `weight` `[out, in]`, for passes
/// that record no gradient.
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

/// One or several linear maps' weights stacked into one `[Σ out, in]` matrix for
/// inference, so that one product computes what they would (q, k and v; gate and
/// up), and for decoding a few sequences also packed for [`Panels`].
#[derive(Debug, Default)]
pub struct Stacked(RefCell<Option<StackedWeights>>);

#[derive(Debug)]
struct StackedWeights {
    weight: Tensor,
    bias: Option<Tensor>,
    /// For decoding a few sequences.
    panels: Option<Panels>,
}

impl Stacked {
    /// Stacks the weights (and biases) of `parts`, with no gradient; given a `team`
    /// (and in f32) also packs them for [`Panels::product`] on its threads.
    pub fn cache(&self, parts: &[&Linear], team: Option<&Arc<Team>>) {
        let stack = |ts: &[&Tensor]| match ts {
            [one] => one.detach(),
            _ => Tensor::cat(ts, 0),
        };
        let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|l| l.bias.as_ref()).collect();
        let (weight, bias) = tch::no_grad(|| (stack(&weights), biases.map(|b| stack(&b))));
        let panels = team
            .filter(|_| weight.kind() == Kind::Float)
            .map(|team| Panels::pack(&weight, bias.as_ref(), Arc::clone(team)));
        *self.0.borrow_mut() = Some(StackedWeights {
            weight,
            bias,
            panels,
        });
    }

    /// Drops the stacked copy (it would go stale when the weights change).
    pub fn clear(&self) {
        *self.0.borrow_mut() = None;
    }

    /// `rows` rows of `x` (row-major) times the stacked weights, through the panels:
    /// `None` unless they are packed and take that many rows.
    pub fn apply_host(&self, x: &[f32], rows: usize) -> Option<Vec<f32>> {
        let stacked = self.0.borrow();
        let panels = stacked.as_ref()?.panels.as_ref()?;
        (rows <= crate::panels::MAX_ROWS).then(|| panels.apply(x, rows))
    }

    /// Whether a stacked copy is held.
    pub fn is_cached(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// `x [W₁; W₂; …]ᵀ + [b₁; b₂; …]` when a stacked copy is held and `x` needs no
    /// gradient: through the panels for a few rows, else [`inference_linear`].
    pub fn infer(&self, x: &Tensor) -> Option<Tensor> {
        let stacked = self.0.borrow();
        let s = stacked.as_ref()?;
        if x.requires_grad() {
            return None;
        }
        if let Some(y) = s.panels.as_ref().and_then(|p| p.product(x)) {
            return Some(y);
        }
        Some(inference_linear(x, &s.weight, s.bias.as_ref()))
    }
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

    /// Applies the map to the last dimension of `x`, through autograd (inference
    /// goes through [`Stacked`]).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
}

/// RMSNorm as transformers' `LlamaRMSNorm`: normalised in f32, scaled by `weight`.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
    /// The weight on the host, while decoding there ([`RmsNorm::cache_host`]).
    host: RefCell<Option<Vec<f32>>>,
}

impl RmsNorm {
    /// Parameters under `path`.
    pub fn new(path: nn::Path<'_>, dim: i64, eps: f64) -> Self {
        Self {
            weight: path.ones("weight", &[dim]),
            eps,
            host: RefCell::default(),
        }
    }

    /// Keeps an f32 host copy of the weight for [`RmsNorm::forward_host`] (or drops
    /// it).
    pub fn cache_host(&self, cached: bool) {
        *self.host.borrow_mut() = cached.then(|| {
            let w = tch::no_grad(|| self.weight.to_device(Device::Cpu).to_kind(Kind::Float));
            Vec::<f32>::try_from(&w).expect("a flat f32 CPU tensor")
        });
    }

    /// [`RmsNorm::forward`] of host rows, with the copy [`RmsNorm::cache_host`] made.
    pub fn forward_host(&self, x: &[f32]) -> Vec<f32> {
        let weight = self.host.borrow();
        let weight = weight
            .as_ref()
            .expect("the norm's weight cached for the host");
        crate::host_math::rms_norm(x, weight, self.eps as f32)
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
