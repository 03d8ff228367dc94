//! The decoder: one struct per block, each `new(path, &spec)` + `forward`, with
//! parameter paths equal to the checkpoint's tensor names
//! (`model.layers.0.self_attn.q_proj.weight`, ...).

use std::sync::Arc;

use tch::{Kind, Tensor, nn};

use crate::kv_cache::KvCache;
use crate::layers::{Embedding, Linear, RmsNorm, Stacked, inference_linear};
use crate::rope::{Rope, Rotation, pair_layout};
use crate::spec::{Head, ModelSpec};
use crate::team::Team;

mod host;

/// Grouped-query self-attention with RoPE.
#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    /// q, k and v as one product, for inference.
    qkv: Stacked,
    /// o_proj's weight prepared for inference.
    o: Stacked,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    /// Parameters under `path` (`...self_attn`).
    pub fn new(path: nn::Path<'_>, spec: &ModelSpec) -> Self {
        let (h, d) = (spec.hidden_size, spec.head_dim);
        let bias = spec.attention_bias;
        Self {
            q_proj: Linear::new(&path / "q_proj", h, spec.num_heads * d, bias),
            k_proj: Linear::new(&path / "k_proj", h, spec.num_kv_heads * d, bias),
            v_proj: Linear::new(&path / "v_proj", h, spec.num_kv_heads * d, bias),
            o_proj: Linear::new(&path / "o_proj", spec.num_heads * d, h, false),
            qkv: Stacked::default(),
            o: Stacked::default(),
            num_heads: spec.num_heads,
            num_kv_heads: spec.num_kv_heads,
            head_dim: d,
        }
    }

    /// Stacks q|k|v for inference; in f32 with q and k in the pair layout that
    /// [`Rotation::Pairs`] rotates in one product.
    fn cache_stacked(&self, cached: bool, panels: Option<&Arc<Team>>) {
        if !cached {
            self.qkv.clear();
            self.o.clear();
            return;
        }
        self.o.cache(&[&self.o_proj], panels);
        let d = self.head_dim;
        let pairs = self.q_proj.weight.kind() == Kind::Float;
        let layout = |l: &Linear| {
            let permute = |w: &Tensor| match pairs {
                true => tch::no_grad(|| pair_layout(w, d)),
                false => w.shallow_clone(),
            };
            Linear {
                weight: permute(&l.weight),
                bias: l.bias.as_ref().map(permute),
            }
        };
        let (q, k) = (layout(&self.q_proj), layout(&self.k_proj));
        self.qkv.cache(&[&q, &k, &self.v_proj], panels);
    }

    /// q, k, v as `[batch, heads, seq, head_dim]`, with q and k rotated, through
    /// autograd.
    fn project(&self, x: &Tensor, rotation: &Rotation) -> (Tensor, Tensor, Tensor) {
        let (b, t) = (x.size()[0], x.size()[1]);
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor, n: i64| y.view([b, t, n, d]).transpose(1, 2);
        let q = rotation.apply(&heads(self.q_proj.forward(x), h));
        let k = rotation.apply(&heads(self.k_proj.forward(x), kv));
        let v = heads(self.v_proj.forward(x), kv);
        (q, k, v)
    }

    /// q, k, v from the stacked product `qkv` (`[batch, seq, (heads + 2 kv) ·
    /// head_dim]`), as [`Attention::project`] gives them; with a cache, the rotated
    /// keys and the values are written straight into its next positions and k and v
    /// are all its keys and values so far.
    fn split_stacked(
        &self,
        qkv: &Tensor,
        rotation: &Rotation,
        cache: Option<(&mut KvCache, usize)>,
    ) -> (Tensor, Tensor, Tensor) {
        let (b, t) = (qkv.size()[0], qkv.size()[1]);
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let qkv = qkv.view([b, t, h + 2 * kv, d]).transpose(1, 2);
        let (q, k, v) = (
            qkv.narrow(1, 0, h),
            qkv.narrow(1, h, kv),
            qkv.narrow(1, h + kv, kv),
        );
        let q = rotation.apply(&q);
        match cache {
            Some((cache, layer)) => {
                let (mut k_slot, mut v_slot) = cache.slots(layer, t);
                rotation.apply_into(&k, &mut k_slot);
                v_slot.copy_(&v);
                let (k, v) = cache.filled(layer, t);
                (q, k, v)
            }
            None => (q, rotation.apply(&k), v),
        }
    }

    /// `x`: `[batch, seq, hidden]`. With a cache, the new keys and values are appended
    /// to layer `layer`'s entry and attention runs over all cached positions.
    pub fn forward(
        &self,
        x: &Tensor,
        rotation: &Rotation,
        mask: &AttentionMask,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let (q, k, v) = match self.qkv.infer(x) {
            Some(qkv) => self.split_stacked(&qkv, rotation, cache),
            None => {
                let (q, k, v) = self.project(x, rotation);
                let (k, v) = match cache {
                    Some((cache, layer)) => cache.append(layer, &k, &v),
                    None => (k, v),
                };
                (q, k, v)
            }
        };
        let (attn_mask, is_causal) = match mask {
            AttentionMask::Causal => (None, t > 1),
            AttentionMask::None => (None, false),
            AttentionMask::Additive(m) => (Some(m), false),
            AttentionMask::Grouped(m) => {
                return self.output(&self.decode_attention(&q, &k, &v, Some(m)));
            }
        };
        // A decoding step with padding came with a `Grouped` mask from `hidden`.
        if t == 1 && attn_mask.is_none() && !q.requires_grad() {
            return self.output(&self.decode_attention(&q, &k, &v, None));
        }
        let y =
            Tensor::scaled_dot_product_attention(&q, &k, &v, attn_mask, 0.0, is_causal, None, true);
        self.output(
            &y.transpose(1, 2)
                .reshape([b, t, self.num_heads * self.head_dim]),
        )
    }

    /// o_proj of the attention's output `[..., heads · head_dim]`.
    fn output(&self, y: &Tensor) -> Tensor {
        self.o.infer(y).unwrap_or_else(|| self.o_proj.forward(y))
    }

    /// Attention of one new token per sequence (a decoding step), `[batch, 1, heads ·
    /// head_dim]`, with a mask of [`AttentionMask::group`]'s shape, as two batched
    /// products over (sequence, key/value head), each with the query heads that share
    /// that key/value head as rows. libtorch's fused kernel
    /// runs one matrix-vector product per (sequence, query head) instead, which costs
    /// more per call than it computes at this size (1.4–1.7× slower at batch 32).
    fn decode_attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let (b, h, kv, d) = (
            q.size()[0],
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
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
}

/// SwiGLU feed-forward: down(silu(gate(x)) · up(x)).
#[derive(Debug)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    /// gate and up as one product, for inference.
    gate_up: Stacked,
    /// down_proj's weight prepared for inference.
    down: Stacked,
}

impl Mlp {
    /// Parameters under `path` (`...mlp`).
    pub fn new(path: nn::Path<'_>, spec: &ModelSpec) -> Self {
        let (h, i) = (spec.hidden_size, spec.intermediate_size);
        Self {
            gate_proj: Linear::new(&path / "gate_proj", h, i, false),
            up_proj: Linear::new(&path / "up_proj", h, i, false),
            down_proj: Linear::new(&path / "down_proj", i, h, false),
            gate_up: Stacked::default(),
            down: Stacked::default(),
        }
    }

    fn cache_stacked(&self, cached: bool, panels: Option<&Arc<Team>>) {
        if cached {
            self.gate_up
                .cache(&[&self.gate_proj, &self.up_proj], panels);
            self.down.cache(&[&self.down_proj], panels);
        } else {
            self.gate_up.clear();
            self.down.clear();
        }
    }

    /// `x`: `[..., hidden]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self.gate_up.infer(x) {
            Some(both) => {
                // Inference: in place in the product's own memory.
                let i = self.gate_proj.weight.size()[0];
                let mut gate = both.narrow(-1, 0, i);
                let _ = gate.silu_().g_mul_(&both.narrow(-1, i, i));
                self.down
                    .infer(&gate)
                    .unwrap_or_else(|| self.down_proj.forward(&gate))
            }
            None => {
                let (gate, up) = (self.gate_proj.forward(x), self.up_proj.forward(x));
                self.down_proj.forward(&(gate.silu() * up))
            }
        }
    }
}

/// One pre-norm decoder block.
#[derive(Debug)]
pub struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// Parameters under `path` (`model.layers.i`).
    pub fn new(path: nn::Path<'_>, spec: &ModelSpec) -> Self {
        let (h, eps) = (spec.hidden_size, spec.rms_norm_eps);
        Self {
            input_layernorm: RmsNorm::new(&path / "input_layernorm", h, eps),
            self_attn: Attention::new(&path / "self_attn", spec),
            post_attention_layernorm: RmsNorm::new(&path / "post_attention_layernorm", h, eps),
            mlp: Mlp::new(&path / "mlp", spec),
        }
    }

    /// `x`: `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        rotation: &Rotation,
        mask: &AttentionMask,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor {
        let attended =
            self.self_attn
                .forward(&self.input_layernorm.forward(x), rotation, mask, cache);
        let x = residual(x, attended);
        let mlp = self.mlp.forward(&self.post_attention_layernorm.forward(&x));
        residual(&x, mlp)
    }
}

/// `x + y`, written into `y` when no gradient is recorded (`y` is a fresh output).
fn residual(x: &Tensor, mut y: Tensor) -> Tensor {
    if x.requires_grad() || y.requires_grad() {
        return x + y;
    }
    let _ = y.g_add_(x);
    y
}

/// Keeps a transformer's stacked weights cached for inference while alive.
#[derive(Debug)]
pub struct InferenceGuard<'a> {
    transformer: &'a Transformer,
    /// The threads of the decoding kernel, when the weights are packed for it.
    team: Option<Arc<Team>>,
}

impl InferenceGuard<'_> {
    /// For the decoding steps after the prefill, when the weights are packed for a
    /// team: moves `cache` to the host ([`KvCache::to_host`]), and turns libtorch's
    /// intra-op pool down to one thread while the returned guard lives if the team
    /// has several. The team's helpers then have the other cores to themselves:
    /// libgomp's idle workers spin after each parallel region, and with the helpers
    /// beside them batch-1 decoding fell from ~50 to 9 tok/s. The pool size is
    /// process-wide, so guards alive at once (generations on several threads) count
    /// themselves and the last one restores it.
    pub fn decode_on_host(&self, cache: &mut KvCache) -> TorchThreads {
        if let Some(team) = &self.team {
            cache.to_host(Arc::clone(team));
        }
        let several = self.team.as_ref().is_some_and(|team| team.size() > 1);
        let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
        match (*handed, several) {
            (_, false) => return TorchThreads(false),
            (Some((guards, threads)), true) => *handed = Some((guards + 1, threads)),
            (None, true) => {
                let threads = tch::get_num_threads();
                if threads <= 1 {
                    return TorchThreads(false);
                }
                tch::set_num_threads(1);
                *handed = Some((1, threads));
            }
        }
        TorchThreads(true)
    }
}

/// While decoding teams hold the cores: how many guards, and libtorch's threads
/// before the first.
static HANDED: std::sync::Mutex<Option<(usize, i32)>> = std::sync::Mutex::new(None);

/// Gives libtorch its threads back when the last of these is dropped
/// ([`InferenceGuard::decode_on_host`]).
#[derive(Debug)]
pub struct TorchThreads(bool);

impl Drop for TorchThreads {
    fn drop(&mut self) {
        if !self.0 {
            return;
        }
        let mut handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
        match *handed {
            Some((1, threads)) => {
                tch::set_num_threads(threads);
                *handed = None;
            }
            Some((guards, threads)) => *handed = Some((guards - 1, threads)),
            None => {}
        }
    }
}

impl Drop for InferenceGuard<'_> {
    fn drop(&mut self) {
        self.transformer.cache_stacked(false, None);
    }
}

/// Which attention mask a forward pass needs.
#[derive(Debug)]
pub enum AttentionMask {
    /// Causal over the new tokens only; no padding and nothing cached.
    Causal,
    /// Every cached and new position is visible (one new token, no padding).
    None,
    /// `[batch, 1, new, total]` additive mask: 0 where visible, a large negative
    /// elsewhere (finite, so rows of padding give uniform weights rather than NaN).
    Additive(Tensor),
    /// A decoding step's additive mask laid out for its attention, `[batch ·
    /// kv_heads, 1, total]` ([`AttentionMask::group`]), built once for every layer.
    Grouped(Tensor),
}

impl AttentionMask {
    /// The mask for `new` tokens after `past` cached positions, given which of the
    /// `past + new` positions are real tokens (`key_mask`, `[batch, total]`, 1 = real).
    pub fn build(key_mask: &Tensor, past: i64, new: i64, kind: Kind) -> Self {
        let padded = key_mask.min().int64_value(&[]) == 0;
        if !padded {
            return match (past, new) {
                (0, _) => Self::Causal,
                (_, 1) => Self::None,
                _ => Self::Additive(Self::additive(key_mask, past, new, kind)),
            };
        }
        Self::Additive(Self::additive(key_mask, past, new, kind))
    }

    /// An additive mask of one new position (`[batch, 1, 1, total]`) repeated for each
    /// key/value head: `[batch · kv_heads, 1, total]`.
    fn group(mask: &Tensor, kv_heads: i64) -> Tensor {
        let (b, total) = (mask.size()[0], mask.size()[3]);
        mask.expand([b, kv_heads, 1, total], false)
            .reshape([b * kv_heads, 1, total])
    }

    fn additive(key_mask: &Tensor, past: i64, new: i64, kind: Kind) -> Tensor {
        let device = key_mask.device();
        let total = past + new;
        let keys = Tensor::arange(total, (Kind::Int64, device)).view([1, 1, 1, total]);
        let queries = (Tensor::arange(new, (Kind::Int64, device)) + past).view([1, 1, new, 1]);
        let causal = keys.le_tensor(&queries);
        let real = key_mask.ne(0).view([-1, 1, 1, total]);
        let visible = causal.logical_and(&real);
        let blocked = match kind {
            Kind::Half => -6e4,
            _ => f32::MIN as f64 / 2.0,
        };
        Tensor::zeros([1], (kind, device))
            .where_self(&visible, &Tensor::full([1], blocked, (kind, device)))
    }
}

/// Positions of each token, counting only real tokens (so left padding does not
/// shift them): `cumsum(mask) − 1`, with padding at 0. `[batch, total]`.
pub fn positions(key_mask: &Tensor) -> Tensor {
    let pos = key_mask.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1;
    pos.clamp_min(0)
}

/// The whole model: embedding, blocks, final norm and the head.
#[derive(Debug)]
pub struct Transformer {
    embed_tokens: Embedding,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    score: Option<Linear>,
    /// The output head packed for decoding a few sequences.
    head: Stacked,
    rope: Rope,
    spec: ModelSpec,
}

impl Transformer {
    /// Parameters under `root`: `model.*`, and `lm_head` (untied) or `score`.
    pub fn new(root: &nn::Path<'_>, spec: &ModelSpec) -> Self {
        let model = root / "model";
        let h = spec.hidden_size;
        let layers = (0..spec.num_layers)
            .map(|i| Block::new(&model / "layers" / i, spec))
            .collect();
        let (lm_head, score) = match spec.head {
            Head::CausalLm if spec.tie_word_embeddings => (None, None),
            Head::CausalLm => (
                Some(Linear::new(root / "lm_head", h, spec.vocab_size, false)),
                None,
            ),
            Head::Score => (None, Some(Linear::new(root / "score", h, 1, false))),
        };
        Self {
            embed_tokens: Embedding::new(&model / "embed_tokens", spec.vocab_size, h),
            layers,
            norm: RmsNorm::new(&model / "norm", h, spec.rms_norm_eps),
            lm_head,
            score,
            head: Stacked::default(),
            rope: Rope::new(spec, root.device()),
            spec: spec.clone(),
        }
    }

    /// The model's description.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Final hidden states `[batch, new, hidden]` of `ids` (`[batch, new]`), which
    /// follow the cache's positions. `key_mask` (`[batch, past + new]`, 1 = real token,
    /// 0 = padding) covers the cached and the new positions.
    pub fn hidden(
        &self,
        ids: &Tensor,
        key_mask: &Tensor,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let new = ids.size()[1];
        let past = cache.as_ref().map_or(0, |c| c.len());
        let x = self.embed_tokens.forward(ids);
        let kind = x.kind();
        let positions = positions(key_mask).narrow(1, past, new);
        // Inference in f32 rotates in the pair layout its stacked weights are in.
        let inference = self.inference() && !x.requires_grad();
        let rotation = self
            .rope
            .rotation(&positions, kind, inference && kind == Kind::Float);
        if let Some(cache) = cache.as_deref_mut().filter(|c| c.is_host()) {
            return self.hidden_on_host(&x, key_mask, &rotation, cache);
        }
        let mut mask = AttentionMask::build(key_mask, past, new, kind);
        if let (AttentionMask::Additive(m), 1, false) = (&mask, new, x.requires_grad()) {
            mask = AttentionMask::Grouped(AttentionMask::group(m, self.spec.num_kv_heads));
        }
        let mut x = x;
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| (c, i));
            x = layer.forward(&x, &rotation, &mask, layer_cache);
        }
        if let Some(cache) = cache {
            cache.advance(new);
        }
        self.norm.forward(&x)
    }

    /// The output head's weight `[vocab, hidden]` (the embedding when tied).
    pub fn output_weight(&self) -> &Tensor {
        match &self.lm_head {
            Some(head) => &head.weight,
            None => &self.embed_tokens.weight,
        }
    }

    /// Next-token logits of hidden states `[..., hidden]` → `[..., vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        if self.inference() && !hidden.requires_grad() {
            return self
                .head
                .infer(hidden)
                .unwrap_or_else(|| inference_linear(hidden, self.output_weight(), None));
        }
        hidden.linear::<&Tensor>(self.output_weight(), None)
    }

    /// Whether the inference guard ([`Transformer::inference_weights`]) is alive.
    fn inference(&self) -> bool {
        self.layers
            .first()
            .is_none_or(|l| l.mlp.gate_up.is_cached())
    }

    /// Prepares the weights for inference until the guard is dropped: q|k|v and
    /// gate|up stacked into one product each ([`Stacked`], about half the model's
    /// size in memory while alive), and every product of a pass that records no
    /// gradient through [`inference_linear`]. The weights themselves, and training,
    /// are untouched.
    pub fn inference_weights(&self) -> InferenceGuard<'_> {
        self.cache_stacked(true, None);
        InferenceGuard {
            transformer: self,
            team: None,
        }
    }

    /// [`Transformer::inference_weights`] for decoding `batch` sequences: for up to
    /// [`crate::panels::MAX_ROWS`] in f32 on the CPU, the layers' weights and the
    /// output head are also packed for the Rust kernel of [`crate::panels`] (another
    /// copy of them while the guard lives), which runs on a [`Team`] of as many
    /// threads as libtorch's intra-op pool.
    pub fn decoding_weights(&self, batch: usize) -> InferenceGuard<'_> {
        let weight = &self.embed_tokens.weight;
        let host = weight.kind() == Kind::Float && weight.device() == tch::Device::Cpu;
        let team = (host && batch <= crate::panels::MAX_ROWS)
            .then(|| Arc::new(Team::new(tch::get_num_threads().max(1) as usize)));
        self.cache_stacked(true, team.as_ref());
        InferenceGuard {
            transformer: self,
            team,
        }
    }

    fn cache_stacked(&self, cached: bool, panels: Option<&Arc<Team>>) {
        match panels {
            // The head only needs packing: its dense weight serves as it is.
            Some(team) => {
                let head = Linear {
                    weight: self.output_weight().shallow_clone(),
                    bias: None,
                };
                self.head.cache(&[&head], Some(team));
            }
            None => self.head.clear(),
        }
        for layer in &self.layers {
            layer.self_attn.cache_stacked(cached, panels);
            layer.mlp.cache_stacked(cached, panels);
            layer.input_layernorm.cache_host(panels.is_some());
            layer.post_attention_layernorm.cache_host(panels.is_some());
        }
    }

    /// Reward-model score of hidden states `[..., hidden]` → `[...]`.
    pub fn score(&self, hidden: &Tensor) -> Option<Tensor> {
        self.score
            .as_ref()
            .map(|s| s.forward(hidden).squeeze_dim(-1))
    }

    /// An empty KV cache for `batch` sequences of up to `capacity` positions.
    pub fn new_cache(&self, batch: i64, capacity: i64) -> KvCache {
        let kind = self.embed_tokens.weight.kind();
        KvCache::new(
            self.spec.num_layers,
            batch,
            self.spec.num_kv_heads,
            capacity,
            self.spec.head_dim,
            kind,
            self.embed_tokens.weight.device(),
        )
    }
}
