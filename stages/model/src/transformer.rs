//! The model: one struct per block, each `new(path, &spec)`, with parameter paths
//! equal to the checkpoint's tensor names (`model.layers.0.self_attn.q_proj.weight`,
//! ...), and one forward pass.
//!
//! The weights are never changed here (the optimizer and the loader own them through
//! the `VarStore`). What differs between training and inference is only how the
//! linear maps are computed, so the forward pass takes them as a [`Projections`]:
//! the transformer's own weights through autograd ([`Transformer::forward`]), or the
//! stacked copies of [`crate::InferenceWeights`] for passes without gradient. The
//! decoders of [`crate::decoder`] build on the latter.

use tch::{Kind, Tensor, nn};

use crate::centered_attention::centered_attention;
use crate::config::RolloutWeights;
use crate::decoder::{amx_tiles, bf16_units};
use crate::fused::{attention_bf16, attention_bf16_takes, rms_norm_bf16};
use crate::kept::Kept;
use crate::kv_cache::KvCache;
use crate::layers::{Embedding, Linear, RmsNorm, linear_in_weight_kind};
use crate::mask::{AttentionMask, positions};
use crate::rope::{Rope, Rotation};
use crate::spec::{Head, ModelSpec};
use crate::whole_attention::WholeAttention;

/// How a pass computes each layer's linear maps. Outputs keep the input's leading
/// dimensions: `x` `[batch, seq, in]` gives `[batch, seq, out]`.
pub trait Projections {
    /// Whether a pass through these maps may record gradients (in grad mode); passes
    /// that may not run under `no_grad`.
    fn autograd(&self) -> bool {
        false
    }
    /// Whether q and k come out with each head in the pair layout that
    /// `Rotation::Pairs` rotates (`rope::pair_layout`) rather than
    /// transformers' halves layout.
    fn pairs(&self) -> bool;
    /// q, k and v of layer `layer`.
    fn qkv(&self, layer: usize, x: &Tensor) -> (Tensor, Tensor, Tensor);
    /// The attention's output map.
    fn o(&self, layer: usize, x: &Tensor) -> Tensor;
    /// The feed-forward's gate and up maps (in the products' kind under mixed
    /// precision: SwiGLU and the down map then run in it, as under autocast).
    fn gate_up(&self, layer: usize, x: &Tensor) -> (Tensor, Tensor);
    /// The feed-forward's down map.
    fn down(&self, layer: usize, x: &Tensor) -> Tensor;
    /// Whether the layers' norms (with their cast to bf16), SwiGLU and, without a KV
    /// cache, the rotation of q and k run as the fused nodes of `fused/`
    /// (`Transformer::fused_layers` is the rule).
    fn fused_layers(&self) -> bool {
        false
    }
    /// SwiGLU's activation of layer `layer`'s gate and up maps of `x` (normed):
    /// `silu(gate(x)) · up(x)`, the down map's input.
    fn swiglu(&self, layer: usize, x: &Tensor) -> Tensor {
        let (gate, up) = self.gate_up(layer, x);
        swiglu(gate, &up)
    }
    /// The output head: next-token logits of final hidden states, in the products'
    /// kind (bf16 under mixed precision; log-softmax takes them to f32).
    fn head(&self, hidden: &Tensor) -> Tensor;
    /// How attention over whole sequences runs (the transformer's one rule chooses:
    /// `Transformer::whole_attention`).
    fn whole_attention(&self) -> WholeAttention {
        WholeAttention::Fused
    }
}

/// Grouped-query self-attention's weights.
#[derive(Debug)]
pub struct Attention {
    pub(crate) q_proj: Linear,
    pub(crate) k_proj: Linear,
    pub(crate) v_proj: Linear,
    pub(crate) o_proj: Linear,
}

impl Attention {
    /// Parameters under `path` (`...self_attn`), the maps in `maps`.
    pub fn new(path: nn::Path<'_>, spec: &ModelSpec, maps: Kind) -> Self {
        let (h, d) = (spec.hidden_size, spec.head_dim);
        let bias = spec.attention_bias;
        Self {
            q_proj: Linear::new(&path / "q_proj", h, spec.num_heads * d, bias, maps),
            k_proj: Linear::new(&path / "k_proj", h, spec.num_kv_heads * d, bias, maps),
            v_proj: Linear::new(&path / "v_proj", h, spec.num_kv_heads * d, bias, maps),
            o_proj: Linear::new(&path / "o_proj", spec.num_heads * d, h, false, maps),
        }
    }
}

/// SwiGLU feed-forward's weights: down(silu(gate(x)) · up(x)).
#[derive(Debug)]
pub struct Mlp {
    pub(crate) gate_proj: Linear,
    pub(crate) up_proj: Linear,
    pub(crate) down_proj: Linear,
}

impl Mlp {
    /// Parameters under `path` (`...mlp`), the maps in `maps`.
    pub fn new(path: nn::Path<'_>, spec: &ModelSpec, maps: Kind) -> Self {
        let (h, i) = (spec.hidden_size, spec.intermediate_size);
        Self {
            gate_proj: Linear::new(&path / "gate_proj", h, i, false, maps),
            up_proj: Linear::new(&path / "up_proj", h, i, false, maps),
            down_proj: Linear::new(&path / "down_proj", i, h, false, maps),
        }
    }
}

/// One pre-norm decoder block's weights.
#[derive(Debug)]
pub struct Block {
    pub(crate) input_layernorm: RmsNorm,
    pub(crate) self_attn: Attention,
    pub(crate) post_attention_layernorm: RmsNorm,
    pub(crate) mlp: Mlp,
}

impl Block {
    /// The block's maps grouped as the stacked products compute them (q | k | v, o,
    /// gate | up, down), each with whether its rows go to the rotation's pair layout
    /// (q and k, when `pairs`): the one grouping of the passes without gradient
    /// (`inference.rs`) and of mixed precision's training casts
    /// (`training_weights.rs`).
    pub(crate) fn stacks(&self, pairs: bool) -> [Vec<(&Linear, bool)>; 4] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            vec![(&a.q_proj, pairs), (&a.k_proj, pairs), (&a.v_proj, false)],
            vec![(&a.o_proj, false)],
            vec![(&m.gate_proj, false), (&m.up_proj, false)],
            vec![(&m.down_proj, false)],
        ]
    }

    /// Parameters under `path` (`model.layers.i`), the maps in `maps`.
    pub fn new(path: nn::Path<'_>, spec: &ModelSpec, maps: Kind) -> Self {
        let (h, eps) = (spec.hidden_size, spec.rms_norm_eps);
        Self {
            input_layernorm: RmsNorm::new(&path / "input_layernorm", h, eps),
            self_attn: Attention::new(&path / "self_attn", spec, maps),
            post_attention_layernorm: RmsNorm::new(&path / "post_attention_layernorm", h, eps),
            mlp: Mlp::new(&path / "mlp", spec, maps),
        }
    }
}

/// The whole model: embedding, blocks, final norm and the head.
#[derive(Debug)]
pub struct Transformer {
    embed_tokens: Embedding,
    pub(crate) layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    score: Option<Linear>,
    rope: Rope,
    spec: ModelSpec,
    /// The kind of the linear maps' products when not the weights' own (bf16 under
    /// mixed precision); activations, norms and attention stay in the weights' kind.
    product_kind: Option<Kind>,
    /// How the rollouts' decoder stores the weights.
    rollout_weights: RolloutWeights,
    /// Inference weights kept between generations (`kept.rs`).
    kept: Kept,
}

/// The transformer's own weights, each map on its own through autograd: training,
/// and the plain reference every faster path is tested against.
impl Projections for Transformer {
    fn autograd(&self) -> bool {
        true
    }

    fn pairs(&self) -> bool {
        false
    }

    fn qkv(&self, layer: usize, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let a = &self.layers[layer].self_attn;
        (
            a.q_proj.forward(x),
            a.k_proj.forward(x),
            a.v_proj.forward(x),
        )
    }

    fn o(&self, layer: usize, x: &Tensor) -> Tensor {
        self.layers[layer].self_attn.o_proj.forward(x)
    }

    fn gate_up(&self, layer: usize, x: &Tensor) -> (Tensor, Tensor) {
        let m = &self.layers[layer].mlp;
        (m.gate_proj.forward(x), m.up_proj.forward(x))
    }

    fn down(&self, layer: usize, x: &Tensor) -> Tensor {
        self.layers[layer].mlp.down_proj.forward(x)
    }

    fn head(&self, hidden: &Tensor) -> Tensor {
        self.logits(hidden)
    }
}

impl Transformer {
    /// Parameters under `root`: `model.*`, and `lm_head` (untied) or `score`.
    /// The linear maps (and an untied output head) are made in `maps` (the weights'
    /// kind, or a frozen model's narrower one under mixed precision). The
    /// weights are unset until loaded or copied into.
    pub fn new(root: &nn::Path<'_>, spec: &ModelSpec, maps: Kind) -> Self {
        let model = root / "model";
        let h = spec.hidden_size;
        let layers = (0..spec.num_layers)
            .map(|i| Block::new(&model / "layers" / i, spec, maps))
            .collect();
        let (lm_head, score) = match spec.head {
            Head::CausalLm if spec.tie_word_embeddings => (None, None),
            Head::CausalLm => (
                Some(Linear::new(
                    root / "lm_head",
                    h,
                    spec.vocab_size,
                    false,
                    maps,
                )),
                None,
            ),
            Head::Score => (
                None,
                Some(Linear::new(root / "score", h, 1, false, root.kind())),
            ),
        };
        Self {
            embed_tokens: Embedding::new(&model / "embed_tokens", spec.vocab_size, h),
            layers,
            norm: RmsNorm::new(&model / "norm", h, spec.rms_norm_eps),
            lm_head,
            score,
            rope: Rope::new(spec, root.device()),
            spec: spec.clone(),
            product_kind: None,
            rollout_weights: RolloutWeights::default(),
            kept: Kept::default(),
        }
    }

    /// The model's description.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The same transformer sharing every weight (no copy), with or without the LoRA
    /// adapters attached to its maps.
    pub fn shallow_copy(&self, adapters: bool) -> Self {
        let map = |l: &Linear| l.shallow_copy(adapters);
        Self {
            embed_tokens: self.embed_tokens.shallow_copy(),
            layers: self
                .layers
                .iter()
                .map(|b| Block {
                    input_layernorm: b.input_layernorm.shallow_copy(),
                    self_attn: Attention {
                        q_proj: map(&b.self_attn.q_proj),
                        k_proj: map(&b.self_attn.k_proj),
                        v_proj: map(&b.self_attn.v_proj),
                        o_proj: map(&b.self_attn.o_proj),
                    },
                    post_attention_layernorm: b.post_attention_layernorm.shallow_copy(),
                    mlp: Mlp {
                        gate_proj: map(&b.mlp.gate_proj),
                        up_proj: map(&b.mlp.up_proj),
                        down_proj: map(&b.mlp.down_proj),
                    },
                })
                .collect(),
            norm: self.norm.shallow_copy(),
            lm_head: self.lm_head.as_ref().map(map),
            score: self.score.as_ref().map(map),
            rope: self.rope.shallow_copy(),
            spec: self.spec.clone(),
            product_kind: self.product_kind,
            rollout_weights: self.rollout_weights,
            kept: Kept::default(),
        }
    }

    /// Makes every layer's linear maps and an untied output head again in `kind`
    /// (their weights and biases), unset until loaded; embeddings, norms and a score
    /// head keep theirs. Before an adapter merges into a frozen model's bf16 maps
    /// ([`Transformer::new`]) they are made f32 this way and read again.
    pub(crate) fn unset_maps_as(&mut self, kind: Kind) {
        for b in &mut self.layers {
            let (a, m) = (&mut b.self_attn, &mut b.mlp);
            for map in [
                &mut a.q_proj,
                &mut a.k_proj,
                &mut a.v_proj,
                &mut a.o_proj,
                &mut m.gate_proj,
                &mut m.up_proj,
                &mut m.down_proj,
            ] {
                map.unset_as(kind);
            }
        }
        if let Some(head) = self.lm_head.as_mut() {
            head.unset_as(kind);
        }
    }

    /// The kind the linear maps are stored in: the weights' own, or a frozen model's
    /// narrower one.
    pub(crate) fn maps_kind(&self) -> Kind {
        self.layers.first().map_or(self.kind_and_device().0, |b| {
            b.self_attn.q_proj.weight.kind()
        })
    }

    /// Every tensor the transformer computes with: weights, biases, norms and LoRA
    /// factors, in a fixed order.
    pub(crate) fn tensors(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.embed_tokens.weight, self.norm.weight()];
        for b in &self.layers {
            out.extend([
                b.input_layernorm.weight(),
                b.post_attention_layernorm.weight(),
            ]);
            let (a, m) = (&b.self_attn, &b.mlp);
            for map in [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj] {
                out.extend(map.tensors());
            }
            for map in [&m.gate_proj, &m.up_proj, &m.down_proj] {
                out.extend(map.tensors());
            }
        }
        for head in self.lm_head.iter().chain(&self.score) {
            out.extend(head.tensors());
        }
        out
    }

    /// The inference weights kept between generations.
    pub(crate) fn kept(&self) -> &Kept {
        &self.kept
    }

    /// Whether a generation's inference weights are kept for the next passes
    /// (`kept.rs`): from a generation until a training step.
    pub fn keeps_inference_weights(&self) -> bool {
        self.kept.is_held()
    }

    /// The linear maps LoRA may target, by PEFT's module path (`model.layers.0.
    /// self_attn.q_proj`, ...) and short name (`q_proj`), mutably.
    pub(crate) fn adaptable_maps(&mut self) -> Vec<(String, &'static str, &mut Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.layers.iter_mut().enumerate() {
            let a = &mut b.self_attn;
            let m = &mut b.mlp;
            let attn = format!("model.layers.{i}.self_attn");
            let mlp = format!("model.layers.{i}.mlp");
            for (name, map) in [
                ("q_proj", &mut a.q_proj),
                ("k_proj", &mut a.k_proj),
                ("v_proj", &mut a.v_proj),
                ("o_proj", &mut a.o_proj),
            ] {
                out.push((format!("{attn}.{name}"), name, map));
            }
            for (name, map) in [
                ("gate_proj", &mut m.gate_proj),
                ("up_proj", &mut m.up_proj),
                ("down_proj", &mut m.down_proj),
            ] {
                out.push((format!("{mlp}.{name}"), name, map));
            }
        }
        out
    }

    /// Final hidden states `[batch, new, hidden]` of `ids` (`[batch, new]`), which
    /// follow the cache's positions, through autograd on the model's own weights.
    /// `key_mask` (`[batch, past + new]`, 1 = real token, 0 = padding) covers the
    /// cached and the new positions.
    pub fn forward(&self, ids: &Tensor, key_mask: &Tensor, cache: Option<&mut KvCache>) -> Tensor {
        self.forward_with(self, ids, key_mask, cache)
    }

    /// [`Transformer::forward`] with the linear maps computed by `maps`.
    pub fn forward_with(
        &self,
        maps: &impl Projections,
        ids: &Tensor,
        key_mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        match maps.autograd() {
            true => self.pass(maps, ids, key_mask, cache),
            false => tch::no_grad(|| self.pass(maps, ids, key_mask, cache)),
        }
    }

    /// Final hidden states `[rows, width, hidden]` of packed rows (`ids`, `[rows,
    /// width]`), no cache: each token at its own RoPE `positions` (`[rows, width]`),
    /// attending to the keys `visible` (`[rows, 1, width, width]` bool) says, or to
    /// every earlier one when `None` (rows of one sequence each, no padding).
    pub(crate) fn forward_packed(
        &self,
        maps: &impl Projections,
        ids: &Tensor,
        positions: &Tensor,
        visible: Option<&Tensor>,
    ) -> Tensor {
        let pass = || {
            let x = self.embed(ids);
            let mask = match visible {
                // Made once in the attention's kind (bf16 under mixed precision).
                Some(visible) => AttentionMask::Additive(AttentionMask::from_visible(
                    visible,
                    maps.whole_attention().mask_kind(x.kind()),
                )),
                None => AttentionMask::Causal,
            };
            self.layers_pass(maps, x, positions, &mask, None)
        };
        match maps.autograd() {
            true => pass(),
            false => tch::no_grad(pass),
        }
    }

    fn pass(
        &self,
        maps: &impl Projections,
        ids: &Tensor,
        key_mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let new = ids.size()[1];
        let past = cache.as_ref().map_or(0, |c| c.len());
        let x = self.embed(ids);
        let positions = positions(key_mask).narrow(1, past, new);
        let mut mask = AttentionMask::build(key_mask, past, new, x.kind());
        if let (AttentionMask::Additive(m), 1, false) = (&mask, new, x.requires_grad()) {
            mask = AttentionMask::Grouped(AttentionMask::group(m, self.spec.num_kv_heads));
        }
        self.layers_pass(maps, x, &positions, &mask, cache)
    }

    /// The layers and the final norm over embedded `x` (`[batch, new, hidden]`).
    fn layers_pass(
        &self,
        maps: &impl Projections,
        mut x: Tensor,
        positions: &Tensor,
        mask: &AttentionMask,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let new = x.size()[1];
        let rotation = self.rope.rotation(positions, x.kind(), maps.pairs());
        // The norm ahead of each layer's products: fused with its cast to bf16, or f32.
        let norm = |norm: &RmsNorm, x: &Tensor| match maps.fused_layers() {
            true => rms_norm_bf16(x, norm.weight(), norm.eps()),
            false => norm.forward(x),
        };
        for (i, layer) in self.layers.iter().enumerate() {
            let normed = norm(&layer.input_layernorm, &x);
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            let attended = self.attention(maps, i, &normed, &rotation, mask, layer_cache);
            x = residual(x, attended);
            let normed = norm(&layer.post_attention_layernorm, &x);
            x = residual(x, maps.down(i, &maps.swiglu(i, &normed)));
        }
        if let Some(cache) = cache {
            cache.advance(new);
        }
        self.norm.forward(&x)
    }

    /// Layer `layer`'s attention of `x` (`[batch, seq, hidden]`, normed). With a
    /// cache, the rotated keys and the values are written into its next positions and
    /// attention runs over all cached positions.
    fn attention(
        &self,
        maps: &impl Projections,
        layer: usize,
        x: &Tensor,
        rotation: &Rotation,
        mask: &AttentionMask,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let (h, kv, d) = (
            self.spec.num_heads,
            self.spec.num_kv_heads,
            self.spec.head_dim,
        );
        let heads = |y: Tensor, n: i64| y.view([b, t, n, d]).transpose(1, 2);
        let (q, k, v) = maps.qkv(layer, x);
        // q and k rotate as the products made them (bf16, by the fused node) where
        // the layers are fused and no cache keeps the keys; else in the weights' kind.
        let in_products = maps.fused_layers() && cache.is_none();
        let weights = self.kind_and_device().0;
        let rotated = |y: Tensor| if in_products { y } else { y.to_kind(weights) };
        let (q, k, v) = (heads(rotated(q), h), heads(rotated(k), kv), heads(v, kv));
        let q = rotation.apply(&q);
        let (k, v) = match cache {
            Some((cache, layer)) => {
                let (mut k_slot, mut v_slot) = cache.slots(layer, t);
                rotation.apply_into(&k, &mut k_slot);
                v_slot.copy_(&v);
                cache.filled(layer, t)
            }
            None => (rotation.apply(&k), v),
        };
        let (attn_mask, is_causal) = match mask {
            AttentionMask::Causal => (None, t > 1),
            AttentionMask::None => (None, false),
            AttentionMask::Additive(m) => (Some(m), false),
            AttentionMask::Grouped(m) => {
                return maps.o(layer, &self.decode_attention(&q, &k, &v, Some(m)));
            }
        };
        // A decoding step with padding came with a `Grouped` mask from the forward.
        if t == 1 && attn_mask.is_none() && !q.requires_grad() {
            return maps.o(layer, &self.decode_attention(&q, &k, &v, None));
        }
        let sdpa = |q: &Tensor, k: &Tensor, v: &Tensor, m: Option<&Tensor>| {
            Tensor::scaled_dot_product_attention(q, k, v, m, 0.0, is_causal, None, true)
        };
        let cast_sdpa = |kind: Kind| {
            sdpa(
                &q.to_kind(kind),
                &k.to_kind(kind),
                &v.to_kind(kind),
                attn_mask.map(|m| m.to_kind(kind)).as_ref(),
            )
        };
        // The centred products take a sequence's own keys, causal or masked.
        let own_keys = k.size()[2] == t && (is_causal || attn_mask.is_some());
        let y = match maps.whole_attention() {
            WholeAttention::Centered if own_keys => {
                return maps.o(layer, &centered_attention(&q, &k, &v, attn_mask));
            }
            WholeAttention::Dots if own_keys => {
                let bf16 = |t: &Tensor| t.to_kind(Kind::BFloat16);
                let y = attention_bf16(&bf16(&q), &bf16(&k), &bf16(&v), attn_mask);
                return maps.o(layer, &y);
            }
            WholeAttention::Centered | WholeAttention::Dots => cast_sdpa(Kind::BFloat16),
            WholeAttention::FusedIn(kind) if [&q, &k, &v].iter().any(|t| t.kind() != kind) => {
                cast_sdpa(kind)
            }
            WholeAttention::Fused | WholeAttention::FusedIn(_) => sdpa(&q, &k, &v, attn_mask),
        };
        maps.o(layer, &y.transpose(1, 2).reshape([b, t, h * d]))
    }

    /// Attention of one new token per sequence (a decoding step), `[batch, 1, heads ·
    /// head_dim]`, with a mask of [`AttentionMask::group`]'s shape, as two batched
    /// products over (sequence, key/value head), each with the query heads that share
    /// that key/value head as rows. libtorch's fused kernel runs one matrix-vector
    /// product per (sequence, query head) instead, which costs more per call than it
    /// computes at this size (1.4–1.7× slower at batch 32).
    fn decode_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let (b, h, kv, d) = (
            q.size()[0],
            self.spec.num_heads,
            self.spec.num_kv_heads,
            self.spec.head_dim,
        );
        let total = k.size()[2];
        // Query head i reads key/value head i / (h / kv): group the rows by that.
        let q = q.reshape([b * kv, h / kv, d]);
        let k = k.reshape([b * kv, total, d]);
        let v = v.reshape([b * kv, total, d]);
        let scale = 1.0 / (d as f64).sqrt();
        let scores = match mask {
            // [b · kv, 1, total]: one row for the query heads of a group.
            Some(m) => m.baddbmm(&q, &k.transpose(1, 2), 1.0, scale),
            None => q.bmm(&k.transpose(1, 2)) * scale,
        };
        scores
            .softmax(-1, scores.kind())
            .bmm(&v)
            .reshape([b, 1, h * d])
    }

    /// Token embeddings of `ids` (`[batch, seq]`, int64).
    pub fn embed(&self, ids: &Tensor) -> Tensor {
        self.embed_tokens.forward(ids)
    }

    /// The final norm, before the head.
    pub fn final_norm(&self) -> &RmsNorm {
        &self.norm
    }

    /// The rotary embedding's frequencies.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }

    /// The output head's weight `[vocab, hidden]` (the embedding when tied).
    pub fn output_weight(&self) -> &Tensor {
        match &self.lm_head {
            Some(head) => &head.weight,
            None => &self.embed_tokens.weight,
        }
    }

    /// Next-token logits of hidden states `[..., hidden]` → `[..., vocab]`, through
    /// autograd.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        linear_in_weight_kind(hidden, self.output_weight(), None)
    }

    /// Reward-model score of hidden states `[..., hidden]` → `[...]`.
    pub fn score(&self, hidden: &Tensor) -> Option<Tensor> {
        self.score
            .as_ref()
            .map(|s| s.forward(hidden).squeeze_dim(-1))
    }

    /// Computes the linear maps' products in `kind` (`None`: the weights' own kind).
    pub(crate) fn set_product_kind(&mut self, kind: Option<Kind>) {
        self.product_kind = kind.filter(|&k| k != self.kind_and_device().0);
    }

    /// The kind of the linear maps' products: bf16 under mixed precision, else the
    /// weights' kind.
    pub fn product_kind(&self) -> Kind {
        self.product_kind.unwrap_or(self.kind_and_device().0)
    }

    /// How attention over whole sequences runs in a pass with gradient (`autograd`) or
    /// without: in the activations' kind when the products' kind is theirs; under
    /// mixed precision on the CPU, AVX512-BF16's dot products with the softmax in f32
    /// (`fused/attention.rs`, backward `fused/attention_grads.rs`) where the CPU has
    /// them and no AMX tiles (heads of a multiple of 16 values up to 128), else the
    /// centred bf16 products by blocks (`centered_attention.rs`), except without
    /// gradient on AMX tiles, where libtorch's fused attention on bf16 q, k and v
    /// takes it (and off the CPU). libtorch's CPU flash attention runs its backward
    /// pass slowly (SmolLM2's heads at 8×256 tokens, AMX Xeon: about 25 ms a layer in
    /// bf16, 15 in f32; the centred products' backward about 9); its forward pass is
    /// fast on AMX tiles (bf16 3.3 ms against the unblocked centred products' ~8) and
    /// slow without them (an AMD EPYC Zen 4: 9 ms against the blocks' ~7 and the dot
    /// products' ~2.5; the dot products' backward ~7, the centred blocks' forward and
    /// backward together ~12). Where the two passes run different attention, their
    /// log-probs differ by bf16's rounding of the scores and probabilities, as the
    /// rollouts' do by the decoder's (`tests/invariants.rs` checks both ways).
    pub(crate) fn whole_attention(&self, autograd: bool) -> WholeAttention {
        let (weights, device) = self.kind_and_device();
        let products = self.product_kind();
        let chosen = match (products != weights, device) {
            (false, _) => WholeAttention::Fused,
            (true, tch::Device::Cpu)
                if !amx_tiles() && bf16_units() && attention_bf16_takes(self.spec.head_dim) =>
            {
                WholeAttention::Dots
            }
            (true, tch::Device::Cpu) if autograd || !amx_tiles() => WholeAttention::Centered,
            (true, _) => WholeAttention::FusedIn(products),
        };
        chosen.log_once(autograd);
        chosen
    }

    /// Whether a pass runs its layers' norms (with their cast to bf16), SwiGLU and,
    /// without a KV cache, the rotation of q and k as the fused nodes of `fused/`: on
    /// the CPU under mixed precision (bf16 products of f32 activations), with gradient
    /// or without. Their libtorch operators and casts were about a quarter of an 8×256
    /// SmolLM2 training step on an AMX Xeon; and a
    /// training pass computes what a pass without gradient does only if both run the
    /// same nodes (`tests/invariants.rs`).
    pub(crate) fn fused_layers(&self) -> bool {
        let (weights, device) = self.kind_and_device();
        self.product_kind() == Kind::BFloat16
            && weights == Kind::Float
            && device == tch::Device::Cpu
    }

    /// Stores the rollouts' weights as `weights` says (int8: in the CPU decoder).
    pub(crate) fn set_rollout_weights(&mut self, weights: RolloutWeights) {
        self.rollout_weights = weights;
    }

    /// How the rollouts' decoder stores the weights.
    pub fn rollout_weights(&self) -> RolloutWeights {
        self.rollout_weights
    }

    /// The weights' kind and device.
    pub fn kind_and_device(&self) -> (Kind, tch::Device) {
        let w = &self.embed_tokens.weight;
        (w.kind(), w.device())
    }

    /// An empty KV cache for `batch` sequences of up to `capacity` positions.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        let (kind, device) = self.kind_and_device();
        KvCache::new(
            self.spec.num_layers,
            batch,
            self.spec.num_kv_heads,
            capacity,
            self.spec.head_dim,
            kind,
            device,
        )
    }
}

/// SwiGLU's activation, silu(gate) · up: in place in `gate`'s memory when no
/// gradient is recorded (a fresh product's output).
pub(crate) fn swiglu(mut gate: Tensor, up: &Tensor) -> Tensor {
    if gate.requires_grad() || up.requires_grad() {
        return gate.silu() * up;
    }
    let _ = gate.silu_().g_mul_(up);
    gate
}

/// `x + y` in `x`'s kind (a bf16 product's output joins the f32 residual stream),
/// written into `y` or `x` when no gradient is recorded (`y` is a fresh output, `x`
/// the pass's own stream).
fn residual(mut x: Tensor, mut y: Tensor) -> Tensor {
    if x.requires_grad() || y.requires_grad() {
        return x + y;
    }
    if y.kind() == x.kind() {
        let _ = y.g_add_(&x);
        return y;
    }
    let _ = x.g_add_(&y);
    x
}
