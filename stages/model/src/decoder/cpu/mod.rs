//! The CPU decoder: f32, bf16 or int8 weights packed into panels ([`panels`]) whose
//! products run on the CPU's widest instruction set ([`isa`]), a team of threads
//! ([`team`]) that write each output by columns ([`columns`]), the KV cache on host
//! vectors, f32 or bf16 ([`host_kv`]), and a step's block in Rust ([`blocks`],
//! [`host_math`]).
//!
//! The prompts' pass runs on the same blocks, a token a row ([`prompts`]), or
//! through libtorch ([`crate::prefill`]) with its cache then copied to the host
//! ([`PromptPass::choose`] says which); every step runs from the token's embedding to
//! the final norm with no libtorch call between. Through libtorch a block of a decoding step made about
//! twenty calls (norms, views, the rotation, copies, the activation, residual sums),
//! each a few microseconds of dispatch for a few thousand values, and each product
//! two layout conversions: together most of a step at the batch sizes of a rollout.

mod activations;
mod attention;
mod blocks;
mod columns;
mod dot;
mod host_kv;
pub(crate) mod host_math;
mod int8_dots;
mod isa;
mod kernel;
mod panels;
mod prompts;
mod team;
mod threads;

use std::sync::Arc;

use tch::{Kind, Tensor};

use self::blocks::{HostNorm, PackedLayer, Step};
use self::host_kv::{HostKv, Place};
pub(crate) use self::isa::Isa;
pub use self::isa::{
    ATEN_VAR, CEILING_VAR, Ceiling, Int8Dots, amx_tiles, bf16_products_pay, bf16_units, int8_dots,
};
use self::panels::Panels;
use self::team::Team;
use self::threads::TorchThreads;
use super::{Decoder, DecoderKind};
use crate::config::RolloutWeights;
use crate::error::{ModelError, Result};
use crate::inference::{InferenceWeights, Stacked};
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

    /// Tokens `ids` (`[rows, 1]`, int64) at rotary `positions` (`[rows, 1]`) through
    /// every block, each row's key and value written at its place in `cache`, its
    /// attention over its sequence's positions up to its own: the rows' hidden
    /// states, before the final norm.
    fn blocks(
        &self,
        transformer: &Transformer,
        ids: &Tensor,
        positions: &Tensor,
        places: &[Place],
        cache: &mut HostKv,
    ) -> Vec<f32> {
        let turns = transformer
            .rope()
            .rotation(positions, Kind::Float, true)
            .host_turns()
            .expect("the pair layout's rotation");
        let x = tch::no_grad(|| transformer.embed(ids).contiguous().view([-1]));
        let mut x = Vec::<f32>::try_from(&x).expect("f32 embeddings");
        let step = Step {
            turns: &turns,
            places,
        };
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(x, &step, cache, i);
        }
        x
    }
}

/// Where the CPU decoder's prompts' pass runs: the one place that chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PromptPass {
    /// Through libtorch on the stacked weights ([`crate::prefill::prefill`]), its
    /// cache then copied to the host: oneDNN's f32 (or bf16) products.
    Libtorch,
    /// On the decoder's own panels ([`prompts`]).
    Panels,
}

impl PromptPass {
    /// The name used in logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Libtorch => "libtorch",
            Self::Panels => "panels",
        }
    }

    /// The panels where they hold f32 weights: the same results to f32's rounding,
    /// sooner (on a Zen 2, AVX2, SmolLM2's alpaca_eval prompts at batch 1 / 8 / 32:
    /// 0.10 / 0.66 / 2.69 s against libtorch's 0.14 / 0.78 / 3.16 — its oneDNN
    /// products, the groups' padding, the cache's copy to the host). libtorch for
    /// bf16 products, where oneDNN has AMX tiles. And libtorch for int8 rollout
    /// weights (`int8`, `w8a8`), whose prompts keep f32 products: on their int8
    /// panels the prompts ran about as fast as on f32's (0.08 / 0.68 / 2.74 s for
    /// `int8`, 0.08 / 0.68 / 2.67 for `w8a8`, against 0.16 / 0.81–0.83 / 3.27–3.34
    /// through libtorch), but the sampler moved further from f32's (SmolLM2, greedy,
    /// |Δ log-prob| per token: `int8` 0.041 against 0.029, `w8a8` 0.061 against 0.035),
    /// for 1–4% of a whole rollout at batch 8 and 32.
    pub(crate) fn choose(storage: RolloutWeights, products: Kind) -> Self {
        match storage {
            RolloutWeights::Products if products == Kind::Float => Self::Panels,
            RolloutWeights::Bf16 => Self::Panels,
            RolloutWeights::Products | RolloutWeights::Int8 | RolloutWeights::W8a8 => {
                Self::Libtorch
            }
        }
    }
}

/// The kind the host cache keeps its keys and values in: bf16 under bf16 products
/// (as the prefill's and the training pass's attention take them) and for `w8a8`
/// rollout weights (llama.cpp's arithmetic: int8 products, a 16-bit cache), f32
/// otherwise. A step reads every cached position of every sequence from memory: at
/// batch 32 attention was 12–15% of a `w8a8` step on a Zen 2, three quarters of it on
/// the loads of keys and values. There a bf16 cache gave 289.7 / 283.8 tok/s against
/// 273.5 / 275.8 at batch 32 (two rounds in turn; batch 1 and 8 within the noise) and
/// 10% less peak memory, and moved the sampler a little further from f32's (SmolLM2,
/// greedy: |Δ log-prob| per token 0.039 against 0.035, at most 0.25 against 0.18).
/// `int8` keeps f32: its steps compute exactly the int8-rounded model
/// (`tests/decoders.rs`), and its figures moved less than the VM's noise.
fn cache_kind(transformer: &Transformer) -> Kind {
    match transformer.rollout_weights() {
        RolloutWeights::W8a8 | RolloutWeights::Bf16 => Kind::BFloat16,
        RolloutWeights::Products | RolloutWeights::Int8 => transformer.product_kind(),
    }
}

/// The cache after the prefill.
#[derive(Debug)]
struct HostState {
    cache: HostKv,
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

    /// [`Decoder::prefill`] through `pass`.
    fn prefill_on(
        &mut self,
        pass: PromptPass,
        prompts: &[Vec<u32>],
        repeats: usize,
        pad: u32,
        capacity: i64,
    ) -> Tensor {
        let weights = self
            .prefill_weights
            .take()
            .expect("one prefill per CPU decoder");
        let team = self.packed.team.size();
        // libtorch's pool goes to the team once libtorch's part is done.
        let (cache, logits, cores) = match pass {
            PromptPass::Libtorch => {
                let done = prefill(&weights, prompts, repeats, pad, capacity);
                let (keys, values) = done.cache.layers();
                let cache = HostKv::from_tensors(
                    keys,
                    values,
                    &done.key_mask,
                    cache_kind(self.transformer),
                    Arc::clone(&self.packed.team),
                );
                let cores = TorchThreads::hand_to_team(team);
                (cache, done.logits, cores)
            }
            PromptPass::Panels => {
                drop(weights);
                let cores = TorchThreads::hand_to_team(team);
                let done = prompts::prefill(
                    &self.packed,
                    self.transformer,
                    prompts,
                    repeats,
                    capacity as usize,
                );
                (done.cache, done.logits, cores)
            }
        };
        self.state = Some(HostState {
            cache,
            _cores: cores,
        });
        logits
    }

    fn state(&mut self) -> &mut HostState {
        self.state.as_mut().expect("prefill before decoding")
    }
}

impl Decoder for CpuDecoder<'_> {
    /// Runs once per decoder: its hold on the prefill's stacked weights ends after it.
    fn prefill(&mut self, prompts: &[Vec<u32>], repeats: usize, pad: u32, capacity: i64) -> Tensor {
        let t = self.transformer;
        let pass = PromptPass::choose(t.rollout_weights(), t.product_kind());
        self.prefill_on(pass, prompts, repeats, pad, capacity)
    }

    fn step(&mut self, tokens: &Tensor) -> Tensor {
        let state = self.state.as_mut().expect("prefill before decoding");
        let rows = tokens.size()[0];
        debug_assert_eq!(state.cache.batch_size(), rows as usize);
        let places = state.cache.next_places();
        let at: Vec<i64> = places.iter().map(|p| p.slot as i64).collect();
        let x = self.packed.blocks(
            self.transformer,
            &tokens.unsqueeze(1),
            &Tensor::from_slice(&at).view([rows, 1]),
            &places,
            &mut state.cache,
        );
        state.cache.advance();
        let normed = self.packed.final_norm.forward(&x);
        let logits = self.packed.head.apply(&normed, rows as usize);
        Tensor::from_slice(&logits).view([rows, -1])
    }

    fn retain(&mut self, rows: &[i64]) {
        let state = self.state();
        let kept: Vec<usize> = rows.iter().map(|&r| r as usize).collect();
        state.cache.select_rows(&kept);
    }
}
