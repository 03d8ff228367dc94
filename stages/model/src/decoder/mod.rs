//! Decoders: the prefill of a batch of prompts and the one-token steps after it,
//! each with the KV cache it owns. Two are built, both tested against
//! [`crate::Transformer::forward`] (`tests/decoders.rs`):
//!
//! - [`LibtorchDecoder`]: every step through libtorch on [`InferenceWeights`]; any
//!   dtype, any device, any batch.
//! - [`CpuDecoder`]: f32 on the CPU; the steps, and with f32 panels the prompts'
//!   pass too (else libtorch's prefill), run in Rust on host vectors (weights
//!   packed into panels, the cache on the host, attention and the products on a
//!   team of threads). Fastest for the few sequences of a rollout, where libtorch's
//!   per-call overhead dominates a step.
//!
//! [`DecoderKind::choose`] is the one place that picks between them.

mod cpu;
mod libtorch;

use std::sync::Mutex;

use tch::{Device, Kind, Tensor};
use tracing::info;

pub use cpu::{
    ATEN_VAR, CEILING_VAR, Ceiling, CpuDecoder, Int8Dots, amx_tiles, bf16_products_pay, bf16_units,
    int8_dots,
};
pub(crate) use cpu::{Isa, PackedModel, PromptPass, host_math};
pub use libtorch::LibtorchDecoder;

use crate::config::RolloutWeights;
use crate::error::Result;
use crate::inference::InferenceWeights;
use crate::transformer::Transformer;

/// Prefill and one-token steps over a KV cache the decoder owns.
pub trait Decoder {
    /// Runs `prompts` (none empty), each into `repeats` rows sharing its pass (prompt
    /// 0's rows first), into a cache of `capacity` positions. Returns the next-token
    /// logits of every row, `[rows, vocab]`, f32.
    fn prefill(&mut self, prompts: &[Vec<u32>], repeats: usize, pad: u32, capacity: i64) -> Tensor;

    /// Appends one token to each row (`tokens` `[rows]`, int64) and returns the
    /// next-token logits, `[rows, vocab]`, f32.
    fn step(&mut self, tokens: &Tensor) -> Tensor;

    /// Keeps only the rows at `rows` (increasing indices into the current rows), e.g.
    /// to drop finished sequences.
    fn retain(&mut self, rows: &[i64]);
}

/// The decoders, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderKind {
    /// [`LibtorchDecoder`].
    Libtorch,
    /// [`CpuDecoder`].
    Cpu,
}

impl DecoderKind {
    /// Every decoder.
    pub const ALL: [Self; 2] = [Self::Libtorch, Self::Cpu];

    /// The name used in logs and tests.
    pub fn name(self) -> &'static str {
        match self {
            Self::Libtorch => "libtorch",
            Self::Cpu => "cpu",
        }
    }

    /// Whether this decoder runs weights of `kind` on `device`.
    pub fn supports(self, kind: Kind, device: Device) -> bool {
        match self {
            Self::Libtorch => true,
            Self::Cpu => kind == Kind::Float && device == Device::Cpu,
        }
    }

    /// The decoder for `batch` sequences of `transformer`: the CPU decoder for f32
    /// weights on the CPU up to [`CpuDecoder::MAX_BATCH`] sequences, where its kernels
    /// were measured ahead — with bf16 products (mixed precision) on a CPU with AMX
    /// tiles, up to [`CpuDecoder::MAX_AMX_BATCH`] ([`CpuDecoder::max_bf16_batch`]) —
    /// and at any batch for rollout weights of their own kind (`bf16`, `int8`, `w8a8`:
    /// only its panels hold them) but bf16 ones beside bf16 products, which follow
    /// the products' rule (the same bf16 weights in libtorch's products; on an Intel
    /// Xeon with AMX, batch 32, 369 against the panels' 246 tok/s); libtorch otherwise.
    /// Logs each choice once per process.
    pub fn choose(transformer: &Transformer, batch: usize) -> Self {
        let (kind, device) = transformer.kind_and_device();
        let bf16_products = transformer.product_kind() == Kind::BFloat16;
        let rollouts = transformer.rollout_weights();
        let bf16_rollouts =
            bf16_products && matches!(rollouts, RolloutWeights::Products | RolloutWeights::Bf16);
        let (choice, reason) = if !Self::Cpu.supports(kind, device) {
            (Self::Libtorch, "weights not f32 on the CPU")
        } else if bf16_rollouts && batch > CpuDecoder::max_bf16_batch() {
            (
                Self::Libtorch,
                "bf16 products for more sequences than the CPU decoder leads at: \
                 oneDNN's bf16 kernels (AMX tiles)",
            )
        } else if rollouts.own_kind() {
            (
                Self::Cpu,
                "rollout weights of their own kind: the CPU decoder's panels",
            )
        } else if batch > CpuDecoder::MAX_BATCH {
            (
                Self::Libtorch,
                "more sequences than the CPU decoder's kernels take",
            )
        } else {
            (Self::Cpu, "f32 on the CPU, few sequences")
        };
        static SAID: Mutex<Vec<(DecoderKind, &str)>> = Mutex::new(Vec::new());
        let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
        if !said.contains(&(choice, reason)) {
            said.push((choice, reason));
            let prompts = match choice {
                Self::Cpu => {
                    PromptPass::choose(transformer.rollout_weights(), transformer.product_kind())
                }
                Self::Libtorch => PromptPass::Libtorch,
            };
            info!(
                decoder = choice.name(),
                prompts = prompts.name(),
                rollout_weights = transformer.rollout_weights().name(),
                batch,
                ?kind,
                ?device,
                reason,
                "Decoder chosen"
            );
        }
        choice
    }

    /// This decoder over `transformer`'s weights, prepared for it here or kept from
    /// an earlier generation while the weights are unchanged (`kept.rs`).
    pub fn build<'a>(self, transformer: &'a Transformer) -> Result<Box<dyn Decoder + 'a>> {
        let weights = InferenceWeights::kept(transformer);
        Ok(match self {
            Self::Libtorch => Box::new(LibtorchDecoder::new(weights)),
            Self::Cpu => Box::new(CpuDecoder::new(weights)?),
        })
    }
}
