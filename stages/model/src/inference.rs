//! The weights of passes without gradient: each layer's q|k|v and gate|up stacked
//! into one product, in the transformer's product kind (bf16 under mixed precision,
//! the output head too), with q and k in the pair layout when activations are f32,
//! every product through [`inference_linear`]. Built from the transformer's weights
//! when a pass needs them (about half the model's size while alive; the weights
//! themselves are untouched), and kept between passes by generation
//! (`kept.rs`) until the weights change.

use tch::{Kind, Tensor};

use crate::fused::swiglu_bf16;
use crate::layers::{Linear, inference_linear};
use crate::rope::pair_layout;
use crate::transformer::{Projections, Transformer, swiglu};
use crate::whole_attention::WholeAttention;

/// One matrix that computes several linear maps at once.
#[derive(Debug)]
pub(crate) struct StackedMap {
    /// `[Σ out, in]`.
    pub(crate) weight: Tensor,
    /// `[Σ out]`.
    pub(crate) bias: Option<Tensor>,
}

impl StackedMap {
    /// The maps of `parts` (each with its adapter, if any, merged: W + scale · B A;
    /// rows in the pair layout of heads of `head_dim` where flagged) stacked, in
    /// `kind` (no gradient recorded).
    fn new(parts: &[(&Linear, bool)], kind: Kind, head_dim: i64) -> Self {
        tch::no_grad(|| {
            let parts: Vec<Linear> = parts
                .iter()
                .map(|(l, pairs)| {
                    let l = l.merged();
                    let layout = |w: &Tensor| match pairs {
                        true => pair_layout(w, head_dim),
                        false => w.shallow_clone(),
                    };
                    Linear {
                        weight: layout(&l.weight),
                        bias: l.bias.as_ref().map(layout),
                        lora: None,
                    }
                })
                .collect();
            let stack = |ts: &[&Tensor]| match ts {
                [one] => one.detach().to_kind(kind),
                _ => Tensor::cat(ts, 0).to_kind(kind),
            };
            let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
            let biases: Option<Vec<&Tensor>> = parts.iter().map(|l| l.bias.as_ref()).collect();
            Self {
                weight: stack(&weights),
                bias: biases.map(|b| stack(&b)),
            }
        })
    }

    /// `x`'s map, in `x`'s kind.
    fn apply(&self, x: &Tensor) -> Tensor {
        inference_linear(x, &self.weight, self.bias.as_ref())
    }

    /// `x`'s map, in the weight's kind (bf16 under mixed precision: no widening).
    fn product(&self, x: &Tensor) -> Tensor {
        inference_linear(
            &x.to_kind(self.weight.kind()),
            &self.weight,
            self.bias.as_ref(),
        )
    }
}

/// One layer's stacked maps.
#[derive(Debug)]
pub(crate) struct LayerMaps {
    /// q | k | v, q and k in the pair layout when [`InferenceWeights::pairs`].
    pub(crate) qkv: StackedMap,
    pub(crate) o: StackedMap,
    /// gate | up.
    pub(crate) gate_up: StackedMap,
    pub(crate) down: StackedMap,
}

/// Every layer's stacked maps and the head, owned: what [`crate::kept`] keeps.
#[derive(Debug)]
pub(crate) struct Stacked {
    pub(crate) layers: Vec<LayerMaps>,
    /// The output head in the product kind, when that is not the weights' own.
    pub(crate) head: Option<Tensor>,
}

impl StackedMap {
    fn share(&self) -> Self {
        Self {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
        }
    }
}

impl Stacked {
    /// The same tensors, shared (no copy).
    pub(crate) fn share(&self) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| LayerMaps {
                    qkv: l.qkv.share(),
                    o: l.o.share(),
                    gate_up: l.gate_up.share(),
                    down: l.down.share(),
                })
                .collect(),
            head: self.head.as_ref().map(Tensor::shallow_clone),
        }
    }

    /// Stacks `transformer`'s maps (a copy of the layers' weights).
    pub(crate) fn build(transformer: &Transformer) -> Self {
        let spec = transformer.spec();
        let weights_kind = transformer.kind_and_device().0;
        let kind = transformer.product_kind();
        let pairs = pairs(transformer);
        let layers = transformer
            .layers
            .iter()
            .map(|block| {
                let [qkv, o, gate_up, down] = block
                    .stacks(pairs)
                    .map(|parts| StackedMap::new(&parts, kind, spec.head_dim));
                LayerMaps {
                    qkv,
                    o,
                    gate_up,
                    down,
                }
            })
            .collect();
        let head = (kind != weights_kind)
            .then(|| tch::no_grad(|| transformer.output_weight().to_kind(kind)));
        Self { layers, head }
    }
}

/// Rows of q and k are in the pair layout, rotated by one complex product, when the
/// activations are f32.
fn pairs(transformer: &Transformer) -> bool {
    transformer.kind_and_device().0 == Kind::Float
}

/// The transformer's weights prepared for passes without gradient: the log-probs of
/// the reference, a judge's logits, a reward model's scores, and the prefill and
/// steps of [`crate::decoder`].
#[derive(Debug)]
pub struct InferenceWeights<'a> {
    transformer: &'a Transformer,
    stacked: Stacked,
    /// How attention over whole sequences runs.
    attention: WholeAttention,
}

impl<'a> InferenceWeights<'a> {
    /// `transformer`'s maps stacked: those kept since its weights last changed, if
    /// any (`kept.rs`), else stacked now for this pass alone.
    pub fn new(transformer: &'a Transformer) -> Self {
        Self::with(transformer, false)
    }

    /// [`InferenceWeights::new`], keeping what it stacks for the passes after it
    /// (generation: every call until the weights change).
    pub(crate) fn kept(transformer: &'a Transformer) -> Self {
        Self::with(transformer, true)
    }

    fn with(transformer: &'a Transformer, keep: bool) -> Self {
        Self {
            transformer,
            stacked: transformer.kept().stacked(transformer, keep),
            attention: transformer.whole_attention(false),
        }
    }

    /// The same weights with attention over whole sequences run as `attention` says
    /// (as a training pass runs it, e.g. to compare the two passes' log-probs).
    pub fn with_attention(self, attention: WholeAttention) -> Self {
        Self { attention, ..self }
    }

    /// The output head's weight `[vocab, hidden]` in the product kind.
    pub fn head_weight(&self) -> &Tensor {
        self.stacked
            .head
            .as_ref()
            .unwrap_or_else(|| self.transformer.output_weight())
    }

    /// The transformer these weights come from.
    pub fn transformer(&self) -> &'a Transformer {
        self.transformer
    }

    /// Final hidden states, as [`Transformer::forward`] gives them, without gradient.
    pub fn forward(
        &self,
        ids: &Tensor,
        key_mask: &Tensor,
        cache: Option<&mut crate::KvCache>,
    ) -> Tensor {
        self.transformer.forward_with(self, ids, key_mask, cache)
    }

    /// Next-token logits of hidden states `[..., hidden]` → `[..., vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        tch::no_grad(|| inference_linear(hidden, self.head_weight(), None))
    }
}

impl Projections for InferenceWeights<'_> {
    fn pairs(&self) -> bool {
        pairs(self.transformer)
    }

    fn qkv(&self, layer: usize, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let spec = self.transformer.spec();
        let (q, kv) = (
            spec.num_heads * spec.head_dim,
            spec.num_kv_heads * spec.head_dim,
        );
        // In the products' kind (the attention rotates q and k in the kind it needs).
        let all = self.stacked.layers[layer].qkv.apply(x);
        (
            all.narrow(-1, 0, q),
            all.narrow(-1, q, kv),
            all.narrow(-1, q + kv, kv),
        )
    }

    fn o(&self, layer: usize, x: &Tensor) -> Tensor {
        self.stacked.layers[layer].o.apply(x)
    }

    fn gate_up(&self, layer: usize, x: &Tensor) -> (Tensor, Tensor) {
        let i = self.transformer.spec().intermediate_size;
        let both = self.stacked.layers[layer].gate_up.product(x);
        (both.narrow(-1, 0, i), both.narrow(-1, i, i))
    }

    fn fused_layers(&self) -> bool {
        self.transformer.fused_layers()
    }

    fn swiglu(&self, layer: usize, x: &Tensor) -> Tensor {
        if !self.fused_layers() {
            let (gate, up) = self.gate_up(layer, x);
            return swiglu(gate, &up);
        }
        swiglu_bf16(&self.stacked.layers[layer].gate_up.product(x))
    }

    fn down(&self, layer: usize, x: &Tensor) -> Tensor {
        self.stacked.layers[layer].down.apply(x)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        let weight = self.head_weight();
        tch::no_grad(|| inference_linear(&hidden.to_kind(weight.kind()), weight, None))
    }

    fn whole_attention(&self) -> WholeAttention {
        self.attention
    }
}
