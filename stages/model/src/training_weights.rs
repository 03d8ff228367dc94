//! The weights a training pass computes its products with: the transformer's own
//! (f32, or pure bf16), or, under mixed precision, bf16 casts of the f32 master
//! weights.
//!
//! The casts are made once per optimizer step ([`LanguageModel::training_weights`],
//! before the step's micro-batches) through autograd, so that each micro-batch's
//! backward pass sends its bf16 gradient through the cast into the master's f32
//! gradient, where the micro-batches accumulate. A cast keeps no tensor for its
//! backward, so its graph serves every micro-batch. Each product takes f32
//! activations, computes in bf16 (libtorch's oneDNN path, AMX or AVX512-BF16 where the
//! CPU has them) and gives f32 back: norms, attention's softmax, the residual stream,
//! log-softmax, losses and reductions stay in f32.

use tch::Tensor;

use crate::layers::Linear;
use crate::model::LanguageModel;
use crate::transformer::{Projections, Transformer};

/// One layer's maps in the product kind.
#[derive(Debug)]
struct CastLayer {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A training pass's weights ([`LanguageModel::training_weights`]).
#[derive(Debug)]
pub struct TrainingWeights<'a> {
    transformer: &'a Transformer,
    /// Under mixed precision: every layer's maps cast to bf16, and the head.
    casts: Option<(Vec<CastLayer>, Tensor)>,
}

impl LanguageModel {
    /// Lets go of the inference weights generation kept (`kept.rs`; the next
    /// generation makes them again): e.g. once an iteration's rollouts are done,
    /// before other models are loaded beside this one.
    pub fn release_inference_weights(&self) {
        self.transformer().kept().clear();
    }

    /// The weights of this optimizer step's training passes: under mixed precision,
    /// bf16 casts of the master weights (made now; make them again after the weights
    /// change), else the weights themselves. Drops the inference weights kept by
    /// generation (`kept.rs`).
    pub fn training_weights(&self) -> TrainingWeights<'_> {
        let transformer = self.transformer();
        // The step changes the weights: what generation kept goes now rather than
        // sitting beside the backward pass's peak.
        self.release_inference_weights();
        let kind = transformer.product_kind();
        if kind == transformer.kind_and_device().0 {
            return TrainingWeights {
                transformer,
                casts: None,
            };
        }
        let cast = |l: &Linear| Linear {
            weight: l.weight.to_kind(kind),
            bias: l.bias.as_ref().map(|b| b.to_kind(kind)),
            lora: l.lora.as_ref().map(|pair| pair.to_kind(kind)),
        };
        let layers = transformer
            .layers
            .iter()
            .map(|block| {
                let (a, m) = (&block.self_attn, &block.mlp);
                CastLayer {
                    q: cast(&a.q_proj),
                    k: cast(&a.k_proj),
                    v: cast(&a.v_proj),
                    o: cast(&a.o_proj),
                    gate: cast(&m.gate_proj),
                    up: cast(&m.up_proj),
                    down: cast(&m.down_proj),
                }
            })
            .collect();
        let head = transformer.output_weight().to_kind(kind);
        TrainingWeights {
            transformer,
            casts: Some((layers, head)),
        }
    }
}

impl TrainingWeights<'_> {
    /// The output head's weight the products use: the bf16 cast, or the weight.
    pub(crate) fn head(&self) -> &Tensor {
        match &self.casts {
            Some((_, head)) => head,
            None => self.transformer.output_weight(),
        }
    }

    /// The master weight of the output head (whose gradient the head's backward adds
    /// to).
    pub(crate) fn head_master(&self) -> &Tensor {
        self.transformer.output_weight()
    }

    /// The cast layer `layer`; `None` without casts.
    fn cast(&self, layer: usize) -> Option<&CastLayer> {
        self.casts.as_ref().map(|(layers, _)| &layers[layer])
    }
}

/// `x`'s map by the cast `l` (with its adapter): computed in `l`'s kind, returned in
/// `x`'s.
fn product(l: &Linear, x: &Tensor) -> Tensor {
    l.forward(&x.to_kind(l.weight.kind())).to_kind(x.kind())
}

impl Projections for TrainingWeights<'_> {
    fn autograd(&self) -> bool {
        true
    }

    fn pairs(&self) -> bool {
        false
    }

    fn qkv(&self, layer: usize, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        match self.cast(layer) {
            Some(c) => (product(&c.q, x), product(&c.k, x), product(&c.v, x)),
            None => self.transformer.qkv(layer, x),
        }
    }

    fn o(&self, layer: usize, x: &Tensor) -> Tensor {
        match self.cast(layer) {
            Some(c) => product(&c.o, x),
            None => self.transformer.o(layer, x),
        }
    }

    fn gate_up(&self, layer: usize, x: &Tensor) -> (Tensor, Tensor) {
        match self.cast(layer) {
            Some(c) => (product(&c.gate, x), product(&c.up, x)),
            None => self.transformer.gate_up(layer, x),
        }
    }

    fn down(&self, layer: usize, x: &Tensor) -> Tensor {
        match self.cast(layer) {
            Some(c) => product(&c.down, x),
            None => self.transformer.down(layer, x),
        }
    }

    fn attention_kind(&self) -> Option<tch::Kind> {
        self.casts.as_ref().map(|(_, head)| head.kind())
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        hidden
            .to_kind(self.head().kind())
            .linear::<&Tensor>(self.head(), None)
            .to_kind(hidden.kind())
    }
}
