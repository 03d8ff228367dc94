//! A decoding step on host vectors: when the weights are packed for the panel kernel
//! and the cache lives on the host ([`KvCache::to_host`]), each block runs in Rust
//! from its input rows to its output rows, with no libtorch call in between.
//!
//! Through libtorch, a block of a decoding step made about twenty calls (norms,
//! views, the rotation's complex product, copies between tensors and the kernels'
//! host vectors, the activation, residual sums), each a few microseconds of dispatch
//! for a few thousand values; 600 per step, a sixth of a batch-8 step. Only the
//! embedding lookup before the blocks and the final norm and head after them stay
//! tensors.

use std::sync::Arc;

use tch::{Kind, Tensor};

use super::{Attention, Block, Mlp, Transformer};
use crate::host_kv::BLOCKED;
use crate::host_math::{add, rotate_pairs, silu_times};
use crate::kv_cache::KvCache;
use crate::rope::Rotation;

impl Transformer {
    /// [`Transformer::hidden`] of one new token per sequence over a host cache:
    /// `x` its embeddings `[batch, 1, hidden]`, `key_mask` `[batch, past + 1]`.
    pub(super) fn hidden_on_host(
        &self,
        x: &Tensor,
        key_mask: &Tensor,
        rotation: &Rotation,
        cache: &mut KvCache,
    ) -> Tensor {
        let rows = x.size()[0];
        let hidden = self.spec.hidden_size;
        let turns = rotation
            .host_turns()
            .expect("host decoding rotates in the pair layout");
        let mask = host_mask(key_mask);
        let x = x.to_kind(Kind::Float).contiguous().view([-1]);
        let mut x = Vec::<f32>::try_from(&x).expect("f32 embeddings");
        let step = Step {
            rows: rows as usize,
            turns: &turns,
            mask: &mask,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward_host(x, &step, cache, i);
        }
        cache.advance(1);
        let x = Tensor::from_slice(&x).view([rows, 1, hidden]);
        self.norm.forward(&x)
    }
}

/// A decoding step's additive mask on the host, `[batch, total]`: 0 for a real
/// token, [`BLOCKED`] for padding.
fn host_mask(key_mask: &Tensor) -> Arc<Vec<f32>> {
    let real = key_mask.to_kind(Kind::Int64).contiguous().view([-1]);
    let real = Vec::<i64>::try_from(&real).expect("an integer key mask");
    Arc::new(
        real.into_iter()
            .map(|r| if r == 0 { BLOCKED } else { 0.0 })
            .collect(),
    )
}

/// What every block of a host decoding step shares.
struct Step<'a> {
    /// Sequences in the batch, one row each.
    rows: usize,
    /// Each row's rotation: `head_dim` cos/sin values ([`Rotation::host_turns`]).
    turns: &'a [f32],
    /// [`host_mask`].
    mask: &'a Arc<Vec<f32>>,
}

impl Block {
    /// [`Block::forward`] of the step's host rows.
    fn forward_host(
        &self,
        mut x: Vec<f32>,
        step: &Step<'_>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Vec<f32> {
        let normed = self.input_layernorm.forward_host(&x);
        let attended = self.self_attn.forward_host(&normed, step, cache, layer);
        add(&mut x, &attended);
        let normed = self.post_attention_layernorm.forward_host(&x);
        add(&mut x, &self.mlp.forward_host(&normed, step.rows));
        x
    }
}

impl Attention {
    /// q|k|v, the rotation of q and k, attention over the host cache, and o_proj.
    fn forward_host(
        &self,
        x: &[f32],
        step: &Step<'_>,
        cache: &mut KvCache,
        layer: usize,
    ) -> Vec<f32> {
        let rows = step.rows;
        let (h, kv, d) = (
            self.num_heads as usize,
            self.num_kv_heads as usize,
            self.head_dim as usize,
        );
        let mut qkv = self
            .qkv
            .apply_host(x, rows)
            .expect("host decoding packs q|k|v");
        let (mut q, mut k, mut v) = (
            Vec::with_capacity(rows * h * d),
            Vec::with_capacity(rows * kv * d),
            Vec::with_capacity(rows * kv * d),
        );
        let width = (h + 2 * kv) * d;
        for (row, turn) in qkv.chunks_exact_mut(width).zip(step.turns.chunks_exact(d)) {
            rotate_pairs(&mut row[..(h + kv) * d], turn);
            q.extend_from_slice(&row[..h * d]);
            k.extend_from_slice(&row[h * d..(h + kv) * d]);
            v.extend_from_slice(&row[(h + kv) * d..]);
        }
        let host = cache.host_mut().expect("host decoding has a host cache");
        let attended = host.attend(layer, q, &k, &v, step.mask);
        self.o
            .apply_host(&attended, rows)
            .expect("host decoding packs o_proj")
    }
}

impl Mlp {
    /// gate|up, SwiGLU's activation and down_proj of host rows.
    fn forward_host(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let i = self.gate_proj.weight.size()[0] as usize;
        let gate_up = self
            .gate_up
            .apply_host(x, rows)
            .expect("host decoding packs gate|up");
        self.down
            .apply_host(&silu_times(&gate_up, i), rows)
            .expect("host decoding packs down_proj")
    }
}
