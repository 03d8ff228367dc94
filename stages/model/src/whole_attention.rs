//! How attention over whole sequences runs under each precision and device: the
//! variants, the kind their masks are made in, and the one log line that says which
//! runs. `Transformer::whole_attention` is the rule that chooses.

use std::sync::atomic::{AtomicU8, Ordering};

use tch::Kind;
use tracing::info;

/// How attention over whole sequences runs; `Transformer::whole_attention` is the one
/// rule that chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WholeAttention {
    /// libtorch's fused attention on q, k and v in the activations' kind.
    Fused,
    /// libtorch's fused attention on q, k and v cast to this kind (its softmax in
    /// f32); the output stays in it for [`crate::Projections::o`].
    FusedIn(Kind),
    /// bf16 batched products with scores centred on each row's largest
    /// (`centered_attention.rs`); the output is bf16.
    Centered,
    /// AVX512-BF16's dot products, the scores and the softmax in f32
    /// (`fused/attention.rs`; backward `fused/attention_grads.rs`); the output is
    /// bf16.
    Dots,
}

impl WholeAttention {
    /// Says once per process, for training passes and for passes without gradient,
    /// which attention runs under mixed precision (nothing for [`Self::Fused`]: the
    /// activations' own kind). Training passes ask per layer: one bit a (variant,
    /// pass), read before anything else.
    pub(crate) fn log_once(self, autograd: bool) {
        static SAID: AtomicU8 = AtomicU8::new(0);
        let (variant, how) = match self {
            Self::Fused => return,
            Self::FusedIn(_) => (0, "libtorch's fused attention on bf16 q, k and v"),
            Self::Centered => (1, "bf16 batched products by blocks, scores centred"),
            Self::Dots => (2, "AVX512-BF16's dot products, scores and softmax in f32"),
        };
        let bit = 1u8 << (2 * variant + u8::from(autograd));
        if SAID.load(Ordering::Relaxed) & bit != 0
            || SAID.fetch_or(bit, Ordering::Relaxed) & bit != 0
        {
            return;
        }
        let passes = match autograd {
            true => "training passes",
            false => "passes without gradient",
        };
        info!(attention = ?self, "mixed_bf16: {passes} attend by {how}");
    }

    /// The kind an additive mask is made in for this attention, given the
    /// activations' kind.
    pub(crate) fn mask_kind(self, activations: Kind) -> Kind {
        match self {
            Self::Fused => activations,
            Self::FusedIn(kind) => kind,
            Self::Centered | Self::Dots => Kind::BFloat16,
        }
    }
}
