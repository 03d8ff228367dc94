//! Inference weights kept between generations until the transformer's weights change:
//! the stacked maps of [`crate::inference`] and the CPU decoder's panels.
//!
//! Stacking the maps and packing the panels took about 0.4 s per generation call
//! for SmolLM2-135M, a quarter of a 128-token rollout at batch 1 and most of an
//! evaluation batch's set-up. Generation ([`crate::decoder::DecoderKind::build`])
//! keeps them; every later pass without gradient (generation, the policy's own
//! log-probs) reuses them while they match the weights. They match while every
//! tensor of the transformer keeps its storage and its version counter, which
//! libtorch bumps on each in-place write (an optimizer step, a checkpoint's load, a
//! synchronised copy), and while the product kind and rollout storage are the same.
//! Each tensor's storage is held by a detached view, so a freed storage's address
//! cannot come back as a look-alike. A training step drops them
//! ([`crate::LanguageModel::training_weights`]) so they never sit beside the
//! backward pass's peak, and a run lets them go as soon as an iteration's rollouts
//! are done ([`crate::LanguageModel::release_inference_weights`]), before the judge
//! and the reference load beside the policy.

use std::sync::{Arc, Mutex};

use tch::{Kind, Tensor};

use crate::config::RolloutWeights;
use crate::decoder::PackedModel;
use crate::inference::Stacked;
use crate::transformer::Transformer;

/// What a transformer keeps; empty until a generation fills it.
#[derive(Default)]
pub(crate) struct Kept {
    entry: Mutex<Option<Entry>>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let held = self.lock().is_some();
        f.debug_struct("Kept").field("held", &held).finish()
    }
}

struct Entry {
    source: Source,
    stacked: Stacked,
    /// The CPU decoder's panels, once a CPU decoder was built.
    packed: Option<Arc<PackedModel>>,
}

/// The weights an entry was made from.
struct Source {
    /// Each tensor's storage, held by a detached view (a new tensor on the same
    /// memory, which a later `set_data` on the original does not move), and its
    /// version counter then.
    tensors: Vec<(Tensor, i64)>,
    product_kind: Kind,
    rollout_weights: RolloutWeights,
}

impl Source {
    fn of(transformer: &Transformer) -> Self {
        Self {
            tensors: transformer
                .tensors()
                .into_iter()
                .map(|t| (t.detach(), t.internal_version()))
                .collect(),
            product_kind: transformer.product_kind(),
            rollout_weights: transformer.rollout_weights(),
        }
    }

    fn matches(&self, transformer: &Transformer) -> bool {
        let now = transformer.tensors();
        self.product_kind == transformer.product_kind()
            && self.rollout_weights == transformer.rollout_weights()
            && self.tensors.len() == now.len()
            && self.tensors.iter().zip(now).all(|((pinned, version), t)| {
                pinned.data_ptr() == t.data_ptr() && *version == t.internal_version()
            })
    }
}

impl Kept {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Entry>> {
        self.entry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The kept entry if it matches `transformer`'s weights as they are now, or a
    /// new one made and kept now (a stale one is dropped first).
    fn filled<'g>(slot: &'g mut Option<Entry>, transformer: &Transformer) -> &'g mut Entry {
        Self::drop_stale(slot, transformer);
        slot.get_or_insert_with(|| Entry {
            stacked: Stacked::build(transformer),
            source: Source::of(transformer),
            packed: None,
        })
    }

    fn drop_stale(slot: &mut Option<Entry>, transformer: &Transformer) {
        if slot
            .as_ref()
            .is_some_and(|e| !e.source.matches(transformer))
        {
            *slot = None;
        }
    }

    /// `transformer`'s stacked maps: the kept ones if they match its weights, else
    /// stacked now (and kept if `keep`).
    pub(crate) fn stacked(&self, transformer: &Transformer, keep: bool) -> Stacked {
        let mut slot = self.lock();
        if keep {
            return Self::filled(&mut slot, transformer).stacked.share();
        }
        Self::drop_stale(&mut slot, transformer);
        match slot.as_ref() {
            Some(entry) => entry.stacked.share(),
            None => Stacked::build(transformer),
        }
    }

    /// The CPU decoder's panels for `transformer` with a team of `team` threads: the
    /// kept ones if they match, else packed by `pack` from the stacked maps and kept.
    pub(crate) fn packed(
        &self,
        transformer: &Transformer,
        team: usize,
        pack: impl FnOnce(&Stacked) -> PackedModel,
    ) -> Arc<PackedModel> {
        let mut slot = self.lock();
        let entry = Self::filled(&mut slot, transformer);
        if let Some(packed) = entry.packed.as_ref().filter(|p| p.team_size() == team) {
            return Arc::clone(packed);
        }
        entry.packed = None;
        let packed = Arc::new(pack(&entry.stacked));
        entry.packed = Some(Arc::clone(&packed));
        packed
    }

    /// Drops what is kept.
    pub(crate) fn clear(&self) {
        *self.lock() = None;
    }

    /// Whether anything is kept.
    pub(crate) fn is_held(&self) -> bool {
        self.lock().is_some()
    }
}

/// Moves `tensor`'s version counter, as libtorch's in-place operators do, after writes
/// that went around libtorch (raw slices of its storage): the kept weights are matched
/// to the transformer's by that counter. An in-place fill of an empty view of it bumps
/// the counter, which views share, and writes nothing.
pub fn mark_written(tensor: &Tensor) {
    let _ = tensor.view([-1]).narrow(0, 0, 0).zero_();
}
