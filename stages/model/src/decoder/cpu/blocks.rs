//! A decoding step's block on host vectors: from its input rows to its output rows
//! with no libtorch call in between (the norms, the products on the panels, the
//! rotation, attention over the host cache, SwiGLU's activation, residual sums).

use std::sync::Arc;

use tch::Kind;

use super::host_kv::{HostKv, Place};
use super::host_math::{add, rms_norm, rotate_pairs, silu_times};
use super::panels::Panels;
use super::team::Team;
use crate::config::RolloutWeights;
use crate::inference::{LayerMaps, StackedMap};
use crate::layers::RmsNorm;
use crate::spec::ModelSpec;
use crate::transformer::Block;

/// One block's weights for the host: each stacked map packed into panels, the norms'
/// weights as vectors.
#[derive(Debug)]
pub(super) struct PackedLayer {
    input_norm: HostNorm,
    /// q | k | v, q and k in the pair layout.
    qkv: Panels,
    o: Panels,
    post_norm: HostNorm,
    /// gate | up.
    gate_up: Panels,
    down: Panels,
    /// The threads the products run on, which share SwiGLU's activation by rows.
    team: Arc<Team>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    intermediate: usize,
}

/// An RMSNorm's weight and ε on the host.
#[derive(Debug)]
pub(super) struct HostNorm {
    weight: Vec<f32>,
    eps: f32,
}

impl HostNorm {
    pub(super) fn new(norm: &RmsNorm) -> Self {
        let w = tch::no_grad(|| norm.weight().to_kind(Kind::Float).contiguous());
        Self {
            weight: Vec::<f32>::try_from(&w).expect("a flat f32 CPU tensor"),
            eps: norm.eps() as f32,
        }
    }

    /// Each row of `x` (rows of the weight's length) normalized.
    pub(super) fn forward(&self, x: &[f32]) -> Vec<f32> {
        rms_norm(x, &self.weight, self.eps)
    }
}

/// What every block of a pass over some input rows shares: a decoding step's, one
/// row per sequence, or a part of the prompts' pass, one row per token.
pub(super) struct Step<'a> {
    /// Each row's rotation: `head_dim` cos/sin values
    /// ([`crate::rope::Rotation::host_turns`]).
    pub turns: &'a [f32],
    /// Each row's place in the cache.
    pub places: &'a [Place],
}

impl Step<'_> {
    /// Input rows: one per place.
    pub fn rows(&self) -> usize {
        self.places.len()
    }
}

impl PackedLayer {
    /// `block`'s norms and its stacked `maps` packed for `team` as `storage` says.
    pub(super) fn pack(
        block: &Block,
        maps: &LayerMaps,
        spec: &ModelSpec,
        storage: RolloutWeights,
        team: &Arc<Team>,
    ) -> Self {
        let pack =
            |m: &StackedMap| Panels::pack(&m.weight, m.bias.as_ref(), storage, Arc::clone(team));
        Self {
            input_norm: HostNorm::new(&block.input_layernorm),
            qkv: pack(&maps.qkv),
            o: pack(&maps.o),
            post_norm: HostNorm::new(&block.post_attention_layernorm),
            gate_up: pack(&maps.gate_up),
            down: pack(&maps.down),
            team: Arc::clone(team),
            heads: spec.num_heads as usize,
            kv_heads: spec.num_kv_heads as usize,
            head_dim: spec.head_dim as usize,
            intermediate: spec.intermediate_size as usize,
        }
    }

    /// The block of a step's rows `x` (`[rows, hidden]`), layer `layer` of `cache`.
    pub(super) fn forward(
        &self,
        mut x: Vec<f32>,
        step: &Step<'_>,
        cache: &mut HostKv,
        layer: usize,
    ) -> Vec<f32> {
        let normed = self.input_norm.forward(&x);
        add(&mut x, &self.attention(&normed, step, cache, layer));
        let normed = self.post_norm.forward(&x);
        let gate_up = self.gate_up.apply(&normed, step.rows());
        let i = self.intermediate;
        let mut activated = vec![0f32; step.rows() * i];
        self.team.rows(&mut activated, i, &|first, out| {
            silu_times(&gate_up[first * 2 * i..][..2 * out.len()], i, out);
        });
        add(&mut x, &self.down.apply(&activated, step.rows()));
        x
    }

    /// q|k|v, the rotation of q and k, attention over the host cache, and o_proj.
    fn attention(&self, x: &[f32], step: &Step<'_>, cache: &mut HostKv, layer: usize) -> Vec<f32> {
        let rows = step.rows();
        let (h, kv, d) = (self.heads, self.kv_heads, self.head_dim);
        let mut qkv = self.qkv.apply(x, rows);
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
        let attended = cache.attend(layer, q, (&k, &v), step.places);
        self.o.apply(&attended, rows)
    }
}
