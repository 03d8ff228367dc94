//! The CPU decoder: f32, bf16 or int8 weights packed into panels ([`panels`]) whose
//! products run on the CPU's widest instruction set ([`isa`]), a team of threads
//! ([`team`]) that write each output by columns ([`columns`]), the KV cache on host vectors, f32 or bf16 ([`host_kv`]), and a step's
//! block in Rust ([`blocks`], [`host_math`]).
//!
//! The prefill runs through libtorch ([`crate::prefill`]); its cache then moves to
//! the host, and every step runs from the token's embedding to the final norm with
//! no libtorch call between. Through libtorch a block of a decoding step made about
//! twenty calls (norms, views, the rotation, copies, the activation, residual sums),
//! each a few microseconds of dispatch for a few thousand values, and each product
//! two layout conversions: together most of a step at the batch sizes of a rollout.

mod activations;
mod blocks;
mod columns;
mod dot;
mod host_kv;
pub(crate) mod host_math;
mod int8_dots;
mod isa;
mod kernel;
mod panels;
mod team;
mod threads;

use std::sync::Arc;

use tch::{Kind, Tensor};

use self::blocks::{HostNorm, PackedLayer, Step};
use self::host_kv::HostKv;
pub use self::isa::{ATEN_VAR, CEILING_VAR, Ceiling, Int8Dots, amx_tiles, bf16_units, int8_dots};
use self::panels::Panels;
use self::team::Team;
use self::threads::TorchThreads;
use super::{Decoder, DecoderKind};
use crate::error::{ModelError, Result};
use crate::inference::{InferenceWeights, Stacked};
use crate::mask::positions;
use crate::prefill::prefill;
use crate::transformer::Transformer;

/// The CPU decoder: packed weights and a team; after the prefill, a host cache.
#[derive(Debug)]
pub struct CpuDecoder<'a> {
    transformer: &'a Transformer,
    /// The prefill's weights, let go once it has run.
    prefill_weights: Option<InferenceWeights<'a>>,
    packed: Arc<PackedModel>,
    state: Option<HostState>,
}

/// Every map of the model packed into panels, with the team that computes their
/// products: kept by the transformer between generations (`kept.rs`).
#[derive(Debug)]
pub struct PackedModel {
    layers: Vec<PackedLayer>,
    final_norm: HostNorm,
    head: Panels,
    team: Arc<Team>,
}

impl PackedModel {
    /// Packs `stacked` (`transformer`'s maps) for a team of `team` threads.
    fn pack(transformer: &Transformer, stacked: &Stacked, head: &Tensor, team: usize) -> Self {
        let team = Arc::new(Team::new(team));
        let storage = transformer.rollout_weights();
        let layers = transformer
            .layers
            .iter()
            .zip(&stacked.layers)
            .map(|(block, maps)| PackedLayer::pack(block, maps, transformer.spec(), storage, &team))
            .collect();
        let head = Panels::pack(head, None, storage, Arc::clone(&team));
        Self {
            layers,
            final_norm: HostNorm::new(transformer.final_norm()),
            head,
            team,
        }
    }

    /// Threads of its team.
    pub(crate) fn team_size(&self) -> usize {
        self.team.size()
    }
}

/// The cache after the prefill.
#[derive(Debug)]
struct HostState {
    cache: HostKv,
    /// `[rows, filled]`, 1 = real token.
    key_mask: Tensor,
    /// libtorch's pool handed to the team while decoding.
    _cores: TorchThreads,
}

impl<'a> CpuDecoder<'a> {
    /// Most sequences the decoder is chosen for ([`DecoderKind::choose`]): its
    /// products were measured ahead of oneDNN's up to here (it takes any number).
    pub const MAX_BATCH: usize = panels::MAX_ROWS;

    /// Most sequences it is chosen for with bf16 products on a CPU with AMX-BF16
    /// tiles, where oneDNN's AMX kernels lead beyond (on an Intel Xeon, mixed
    /// precision, 128 tokens, before its bf16 dot products: this decoder 64.6 /
    /// 243 / 357 tok/s at batch 1 / 8 / 32, libtorch's 35.6 / 229 / 531). Without
    /// tiles it leads up to [`CpuDecoder::MAX_BATCH`]: on an AMD EPYC Zen 4
    /// (AVX512-BF16, no AMX), 64 new tokens, two rounds, 370 / 395 / 472 and 382 /
    /// 445 / 499 tok/s at batch 8 / 16 / 32 against libtorch's 309 / 257 / 337 and
    /// 318 / 310 / 400 (at 8, the widening kernel's).
    pub const MAX_AMX_BATCH: usize = 8;

    /// Most sequences it is chosen for with bf16 products on this CPU (its bf16 units
    /// and tiles): [`CpuDecoder::MAX_AMX_BATCH`] with AMX tiles, else
    /// [`CpuDecoder::MAX_BATCH`].
    pub fn max_bf16_batch() -> usize {
        match isa::amx_tiles() {
            true => Self::MAX_AMX_BATCH,
            false => Self::MAX_BATCH,
        }
    }

    /// Packs `weights` (f32 on the CPU) for a team of as many threads as libtorch's
    /// intra-op pool, or takes the panels the transformer kept from an earlier
    /// generation if its weights have not changed since.
    pub fn new(weights: InferenceWeights<'a>) -> Result<Self> {
        let transformer = weights.transformer();
        let (kind, device) = transformer.kind_and_device();
        if !DecoderKind::Cpu.supports(kind, device) {
            return Err(ModelError::Invalid(format!(
                "the CPU decoder runs f32 weights on the CPU, not {kind:?} on {device:?}: \
                 use the libtorch decoder"
            )));
        }
        let team = tch::get_num_threads().max(1) as usize;
        let packed = transformer.kept().packed(transformer, team, |stacked| {
            PackedModel::pack(transformer, stacked, weights.head_weight(), team)
        });
        Ok(Self {
            transformer,
            prefill_weights: Some(weights),
            packed,
            state: None,
        })
    }

    fn state(&mut self) -> &mut HostState {
        self.state.as_mut().expect("prefill before decoding")
    }
}

impl Decoder for CpuDecoder<'_> {
    /// Runs once per decoder: its hold on the prefill's stacked weights ends after it.
    fn prefill(&mut self, prompts: &[Vec<u32>], repeats: usize, pad: u32, capacity: i64) -> Tensor {
        let weights = self
            .prefill_weights
            .take()
            .expect("one prefill per CPU decoder");
        let done = prefill(&weights, prompts, repeats, pad, capacity);
        let (keys, values) = done.cache.layers();
        let len = done.cache.len() as usize;
        self.state = Some(HostState {
            cache: HostKv::from_tensors(
                keys,
                values,
                len,
                self.transformer.product_kind(),
                Arc::clone(&self.packed.team),
            ),
            key_mask: done.key_mask,
            _cores: TorchThreads::hand_to_team(self.packed.team.size()),
        });
        done.logits
    }

    fn step(&mut self, tokens: &Tensor) -> Tensor {
        let transformer = self.transformer;
        let state = self.state.as_mut().expect("prefill before decoding");
        let rows = tokens.size()[0];
        debug_assert_eq!(state.cache.batch_size(), rows as usize);
        let ones = Tensor::ones([rows, 1], (state.key_mask.kind(), state.key_mask.device()));
        state.key_mask = Tensor::cat(&[&state.key_mask, &ones], 1);
        let past = state.cache.len() as i64;
        let at = positions(&state.key_mask).narrow(1, past, 1);
        let turns = transformer
            .rope()
            .rotation(&at, Kind::Float, true)
            .host_turns()
            .expect("the pair layout's rotation");
        let mask = blocks::host_mask(&state.key_mask);
        let x = transformer
            .embed(&tokens.unsqueeze(1))
            .contiguous()
            .view([-1]);
        let mut x = Vec::<f32>::try_from(&x).expect("f32 embeddings");
        let step = Step {
            rows: rows as usize,
            turns: &turns,
            mask: &mask,
        };
        for (i, layer) in self.packed.layers.iter().enumerate() {
            x = layer.forward(x, &step, &mut state.cache, i);
        }
        state.cache.advance();
        let normed = self.packed.final_norm.forward(&x);
        let logits = self.packed.head.apply(&normed, rows as usize);
        Tensor::from_slice(&logits).view([rows, -1])
    }

    fn retain(&mut self, rows: &[i64]) {
        let state = self.state();
        let kept: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
        state.cache.select_rows(&kept);
        let rows = Tensor::from_slice(rows);
        state.key_mask = state.key_mask.index_select(0, &rows);
    }
}
