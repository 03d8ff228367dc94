//! The weights a training pass computes its products with: the transformer's own
//! (f32, or pure bf16), or, under mixed precision, bf16 casts of the f32 master
//! weights.
//!
//! The casts are made once per optimizer step ([`LanguageModel::training_weights`],
//! before the step's micro-batches). On a GPU they are made through autograd, so that
//! each micro-batch's backward pass sends its bf16 gradient through the cast into the
//! master's f32 gradient, where the micro-batches accumulate (a cast keeps no tensor
//! for its backward, so its graph serves every micro-batch). On the CPU, where the
//! products are the fused [`linear_bf16`] nodes, they are made without autograd and
//! each product's backward adds its weight's gradient straight into the masters' f32
//! gradients ([`crate::weight_grads`]): no bf16 gradient, cast or sum between.
//!
//! The casts are stacked as [`crate::InferenceWeights`] stacks its maps (q, k and v
//! in one matrix, q and k in the rotation's pair layout; gate and up in another), so
//! that a layer runs four products, each on its input cast to bf16 once (libtorch's
//! oneDNN path, AMX or AVX512-BF16 where the CPU has them). On the CPU the norms
//! ahead of the products and SwiGLU are fused nodes (`fused/`), and so are the
//! products themselves, to compute their weights' gradients in a layout oneDNN runs
//! faster ([`linear_bf16`]). Norms, the rotation,
//! attention's softmax sums, the residual stream, log-softmax, losses and reductions
//! stay in f32; SwiGLU runs in bf16 between its products, as under autocast and as in
//! the passes without gradient. Attention runs in bf16: libtorch's fused kernel on a
//! GPU; on the CPU AVX512-BF16's dot products with the softmax in f32 where the CPU
//! has them and no AMX tiles, else centred bf16 products
//! ([`Transformer::whole_attention`]).

use tch::{Kind, Tensor};

use crate::fused::{linear_bf16, swiglu_bf16};
use crate::layers::{Linear, LoraPair};
use crate::model::LanguageModel;
use crate::rope::pair_layout;
use crate::training::HeadGrad;
use crate::transformer::{Projections, Transformer, swiglu};
use crate::weight_grads::StackGrad;
use crate::whole_attention::WholeAttention;

/// Several maps cast into one `[Σ out, in]` matrix: through autograd, or, under the
/// fused nodes, without it, the products adding the maps' gradients into a buffer
/// whose row blocks are the master weights' gradients.
#[derive(Debug)]
struct CastStack {
    weight: Tensor,
    /// `[Σ out]`, when any part has a bias (zeros for those without).
    bias: Option<Tensor>,
    /// Each part's rows and its adapter, cast (B's rows in the part's layout).
    parts: Vec<(i64, Option<LoraPair>)>,
    /// Under the fused nodes, with a part that takes gradients: where the product's
    /// backward adds the weights' gradients.
    grads: Option<StackGrad>,
}

impl CastStack {
    /// `parts` (each map, and whether its rows go to the pair layout of heads of
    /// `head_dim`) cast to `kind` and stacked; when `direct` (the fused nodes'
    /// pass), the weights' gradients added by the product into their masters'
    /// ([`stack_grads`]) rather than through the casts' autograd.
    fn new(parts: &[(&Linear, bool)], kind: Kind, head_dim: i64, direct: bool) -> Self {
        let layout = |t: &Tensor, pairs: bool| match pairs {
            true => pair_layout(t, head_dim),
            false => t.shallow_clone(),
        };
        // Each part cast, then laid out and stacked: the copies move bf16's bytes,
        // half f32's.
        let stack = |ts: Vec<Tensor>| match ts.as_slice() {
            [one] => one.shallow_clone(),
            _ => Tensor::cat(&ts, 0),
        };
        let cast_weights = || {
            stack(
                parts
                    .iter()
                    .map(|(l, p)| layout(&l.weight.to_kind(kind), *p))
                    .collect(),
            )
        };
        let weight = match direct {
            true => tch::no_grad(cast_weights),
            false => cast_weights(),
        };
        let grads = direct.then(|| stack_grads(parts, head_dim)).flatten();
        let bias = parts.iter().any(|(l, _)| l.bias.is_some()).then(|| {
            stack(
                parts
                    .iter()
                    .map(|(l, p)| match &l.bias {
                        Some(b) => layout(&b.to_kind(kind), *p),
                        None => l
                            .weight
                            .new_zeros([l.weight.size()[0]], (kind, l.weight.device())),
                    })
                    .collect(),
            )
        });
        let parts = parts
            .iter()
            .map(|(l, p)| {
                let lora = l.lora.as_ref().map(|pair| {
                    let cast = pair.to_kind(kind);
                    LoraPair {
                        b: layout(&cast.b, *p),
                        ..cast
                    }
                });
                (l.weight.size()[0], lora)
            })
            .collect();
        Self {
            weight,
            bias,
            parts,
            grads,
        }
    }

    /// The same casts, shared (no copy; their graph too).
    fn shallow_copy(&self) -> Self {
        Self {
            grads: self.grads.as_ref().map(StackGrad::shallow_copy),
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            parts: self
                .parts
                .iter()
                .map(|(rows, lora)| (*rows, lora.as_ref().map(LoraPair::shallow_copy)))
                .collect(),
        }
    }

    /// Every part's map of `x` (in the stack's kind), side by side in the last
    /// dimension, in the stack's kind; the product is the fused node [`linear_bf16`]
    /// when `fused` (the pass's [`Projections::fused_layers`]), else libtorch's
    /// `linear`.
    fn forward(&self, x: &Tensor, fused: bool) -> Tensor {
        let x = x.to_kind(self.weight.kind());
        let y = match (fused, &self.bias) {
            (true, None) => linear_bf16(&x, &self.weight, self.grads.as_ref()),
            (true, Some(bias)) => linear_bf16(&x, &self.weight, self.grads.as_ref()) + bias,
            (false, _) => x.linear(&self.weight, self.bias.as_ref()),
        };
        if self.parts.iter().all(|(_, lora)| lora.is_none()) {
            return y;
        }
        let mut start = 0;
        let outs: Vec<Tensor> = self
            .parts
            .iter()
            .map(|(rows, lora)| {
                let part = y.narrow(-1, start, *rows);
                start += rows;
                match lora {
                    Some(lora) => part + lora.apply(&x),
                    None => part,
                }
            })
            .collect();
        Tensor::cat(&outs, -1)
    }
}

/// The gradient a stack's product adds its weights' gradients into ([`StackGrad`]),
/// with the product's output columns in the masters' row order (q and k leave the
/// product in the pair layout); none when no part takes gradients (an adapter's
/// frozen base).
fn stack_grads(parts: &[(&Linear, bool)], head_dim: i64) -> Option<StackGrad> {
    if !parts.iter().any(|(l, _)| l.weight.requires_grad()) {
        return None;
    }
    let device = parts[0].0.weight.device();
    let mut columns = Vec::with_capacity(parts.len());
    let mut start = 0;
    for (l, pairs) in parts {
        let n = l.weight.size()[0];
        let index = Tensor::arange(n, (Kind::Int64, device));
        // The pair layout's row p holds the master's row `order[p]`: the master's row
        // m is the output's column argsort(order)[m].
        columns.push(match pairs {
            true => pair_layout(&index, head_dim).argsort(0, false) + start,
            false => index + start,
        });
        start += n;
    }
    let columns = parts
        .iter()
        .any(|(_, pairs)| *pairs)
        .then(|| Tensor::cat(&columns, 0));
    let masters: Vec<(Option<&Tensor>, i64)> = parts
        .iter()
        .map(|(l, _)| {
            let w = &l.weight;
            (w.requires_grad().then_some(w), w.size()[0])
        })
        .collect();
    Some(StackGrad::new(&masters, columns.as_ref()))
}

/// One layer's maps in the product kind.
#[derive(Debug)]
struct CastLayer {
    qkv: CastStack,
    o: CastStack,
    gate_up: CastStack,
    down: CastStack,
}

/// Every layer's maps and the head, cast to the products' kind.
#[derive(Debug)]
pub(crate) struct Casts {
    layers: Vec<CastLayer>,
    head: Tensor,
}

impl Casts {
    /// The same casts, shared (no copy; their graph too): for a pass on another
    /// thread.
    pub(crate) fn shallow_copy(&self) -> Self {
        Self {
            layers: self
                .layers
                .iter()
                .map(|l| CastLayer {
                    qkv: l.qkv.shallow_copy(),
                    o: l.o.shallow_copy(),
                    gate_up: l.gate_up.shallow_copy(),
                    down: l.down.shallow_copy(),
                })
                .collect(),
            head: self.head.shallow_clone(),
        }
    }
}

/// A training pass's weights ([`LanguageModel::training_weights`]).
#[derive(Debug)]
pub struct TrainingWeights<'a> {
    transformer: &'a Transformer,
    /// Under mixed precision: every layer's maps cast to bf16, and the head.
    casts: Option<Casts>,
    /// Where the head's backward adds the head weight's gradient.
    head_grad: HeadGrad,
}

impl<'a> TrainingWeights<'a> {
    /// A pass's weights on another thread: `transformer` (a view of the same
    /// weights), `casts` shared with this step's, the head's gradient into `head_grad`.
    pub(crate) fn on_thread(
        transformer: &'a Transformer,
        casts: Option<Casts>,
        head_grad: HeadGrad,
    ) -> Self {
        Self {
            transformer,
            casts,
            head_grad,
        }
    }

    /// This step's casts, shared (no copy).
    pub(crate) fn share_casts(&self) -> Option<Casts> {
        self.casts.as_ref().map(Casts::shallow_copy)
    }
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
    /// generation (`kept.rs`). Under the fused nodes (a CPU pass under mixed
    /// precision) the products add into the masters' gradients themselves
    /// (`weight_grads.rs`).
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
                head_grad: HeadGrad::Master,
            };
        }
        let d = transformer.spec().head_dim;
        let direct = transformer.fused_layers();
        let layers = transformer
            .layers
            .iter()
            .map(|block| {
                let [qkv, o, gate_up, down] = block
                    .stacks(true)
                    .map(|parts| CastStack::new(&parts, kind, d, direct));
                CastLayer {
                    qkv,
                    o,
                    gate_up,
                    down,
                }
            })
            .collect();
        let head = transformer.output_weight().to_kind(kind);
        TrainingWeights {
            transformer,
            casts: Some(Casts { layers, head }),
            head_grad: HeadGrad::Master,
        }
    }
}

impl TrainingWeights<'_> {
    /// The output head's weight the products use: the bf16 cast, or the weight.
    pub(crate) fn head(&self) -> &Tensor {
        match &self.casts {
            Some(casts) => &casts.head,
            None => self.transformer.output_weight(),
        }
    }

    /// The master weight of the output head (whose gradient the head's backward adds
    /// to).
    pub(crate) fn head_master(&self) -> &Tensor {
        self.transformer.output_weight()
    }

    /// Where the head's backward adds the head weight's gradient.
    pub(crate) fn head_grad(&self) -> &HeadGrad {
        &self.head_grad
    }

    /// The cast layer `layer`; `None` without casts.
    fn cast(&self, layer: usize) -> Option<&CastLayer> {
        self.casts.as_ref().map(|casts| &casts.layers[layer])
    }
}

impl Projections for TrainingWeights<'_> {
    fn autograd(&self) -> bool {
        true
    }

    fn pairs(&self) -> bool {
        self.casts.is_some()
    }

    fn qkv(&self, layer: usize, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let Some(c) = self.cast(layer) else {
            return self.transformer.qkv(layer, x);
        };
        let spec = self.transformer.spec();
        let (q, kv) = (
            spec.num_heads * spec.head_dim,
            spec.num_kv_heads * spec.head_dim,
        );
        // Split, not narrowed: the backward pass joins the three gradients into one
        // instead of adding three zero-padded copies. In bf16 (the attention rotates
        // q and k in the kind it needs).
        let [q, k, v]: [Tensor; 3] = c
            .qkv
            .forward(x, self.fused_layers())
            .split_with_sizes([q, kv, kv], -1)
            .try_into()
            .expect("three parts");
        (q, k, v)
    }

    fn o(&self, layer: usize, x: &Tensor) -> Tensor {
        match self.cast(layer) {
            Some(c) => c.o.forward(x, self.fused_layers()),
            None => self.transformer.o(layer, x),
        }
    }

    fn gate_up(&self, layer: usize, x: &Tensor) -> (Tensor, Tensor) {
        let Some(c) = self.cast(layer) else {
            return self.transformer.gate_up(layer, x);
        };
        let i = self.transformer.spec().intermediate_size;
        let [gate, up]: [Tensor; 2] = c
            .gate_up
            .forward(x, self.fused_layers())
            .split(i, -1)
            .try_into()
            .expect("two parts");
        (gate, up)
    }

    fn down(&self, layer: usize, x: &Tensor) -> Tensor {
        match self.cast(layer) {
            Some(c) => c.down.forward(x, self.fused_layers()),
            None => self.transformer.down(layer, x),
        }
    }

    fn fused_layers(&self) -> bool {
        self.casts.is_some() && self.transformer.fused_layers()
    }

    fn swiglu(&self, layer: usize, x: &Tensor) -> Tensor {
        match (self.fused_layers(), self.cast(layer)) {
            (true, Some(c)) => swiglu_bf16(&c.gate_up.forward(x, true)),
            _ => {
                let (gate, up) = self.gate_up(layer, x);
                swiglu(gate, &up)
            }
        }
    }

    fn whole_attention(&self) -> WholeAttention {
        self.transformer.whole_attention(true)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        hidden
            .to_kind(self.head().kind())
            .linear::<&Tensor>(self.head(), None)
    }
}
