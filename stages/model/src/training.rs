//! Log-probs for a training step, with the output head's backward pass written out.
//!
//! Through autograd, the head's backward allocates, while every activation of the
//! transformer is still alive, a fresh `[vocab, hidden]` weight gradient (with tied
//! embeddings, one more held until the embedding's own gradient arrives) and several
//! `[tokens, vocab]` temporaries. Here the forward pass keeps only each position's
//! softmax less one at its target, in the products' kind (`dlogits` is that times
//! each position's −g); the backward pass, a slice of the vocabulary at a time, adds
//! its product with the g-scaled hidden states into the weight's gradient in place and
//! its product with `W` into `dh`, which it sends through the transformer with
//! autograd. The gradients are those of [`LanguageModel::completion_logprobs`] (tested in
//! `tests/invariants.rs`).

use std::sync::{Arc, Mutex, PoisonError};

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::grads::grad_or_zeros;
use crate::logprobs::{CompletionHidden, TokenLogprobs, cat_or_empty, target_logprobs};
use crate::model::LanguageModel;
use crate::training_weights::TrainingWeights;
use crate::weight_grads::add_weight_grad;

/// Log-probs of completion tokens whose gradient reaches the model through
/// [`TrainingLogprobs::backward`].
#[derive(Debug)]
pub struct TrainingLogprobs {
    /// The log-probs; `values` is a leaf that collects the loss's gradient.
    pub logprobs: TokenLogprobs,
    /// The entropy of the policy's distribution at each completion position,
    /// `[total]` f32, without gradient (a collapse signal).
    pub entropy: Tensor,
    /// Final hidden states `[total, hidden]`, attached to the transformer's graph.
    hidden: Tensor,
    /// Softmax over the vocabulary at each position less one at its target,
    /// `[total, vocab]` in the products' kind.
    softmax_less_one: Tensor,
    /// Completion tokens, `[total]` int64.
    targets: Tensor,
    /// The output head's weight `[vocab, hidden]` its products use (the model's own,
    /// or its bf16 cast under mixed precision).
    head: Tensor,
    /// The model's own head weight, whose gradient the backward pass adds to.
    master: Tensor,
    /// Where that gradient goes.
    head_grad: HeadGrad,
}

/// Where a pass's head backward adds the head weight's gradient.
#[derive(Debug, Clone)]
pub(crate) enum HeadGrad {
    /// The master weight's own gradient: passes on one thread.
    Master,
    /// A buffer the step's threads share under a lock, added to the master's gradient
    /// once they are done: with tied embeddings another thread's backward adds to
    /// the master's gradient through autograd, under a lock of autograd's own.
    Shared(Arc<Mutex<Tensor>>),
}

impl HeadGrad {
    /// Adds `dᵀ · h` to the vocabulary rows `start..start + n` (`d` `[tokens, n]`, `h`
    /// `[tokens, hidden]`, both in the products' kind: the rows' dlogits, factored;
    /// bf16 on the CPU as the layers' products, [`crate::weight_grads`]). The shared
    /// buffer's lock is held only to take a handle: each sum is locked by its rows,
    /// and the products run unlocked.
    fn add_rows(&self, master: &Tensor, start: i64, d: &Tensor, h: &Tensor) {
        let grad = match self {
            HeadGrad::Master => master.grad(),
            HeadGrad::Shared(buffer) => buffer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .shallow_clone(),
        };
        add_weight_grad(&grad.narrow(0, start, d.size()[1]), d, h);
    }
}

impl LanguageModel {
    /// Log-probs of each completion token given its prompt, as
    /// [`LanguageModel::completion_logprobs`], for a loss to be built on and then
    /// [`TrainingLogprobs::backward`], with the products of `weights` (this step's
    /// [`LanguageModel::training_weights`]). Memory: the transformer's activations
    /// plus one `[completion tokens, vocab]` f32 softmax.
    pub fn training_logprobs(
        &self,
        weights: &TrainingWeights<'_>,
        pairs: &[(&[u32], &[u32])],
    ) -> Result<TrainingLogprobs> {
        let CompletionHidden {
            hidden,
            targets,
            lengths,
        } = self.completion_hidden(weights, pairs)?;
        let head = weights.head().shallow_clone();
        let master = weights.head_master().shallow_clone();
        let head_grad = weights.head_grad().clone();
        let (values, softmax_less_one, entropy) =
            tch::no_grad(|| head_softmax(&hidden.detach(), &head, &targets));
        Ok(TrainingLogprobs {
            logprobs: TokenLogprobs {
                values: values.set_requires_grad(true),
                lengths,
            },
            entropy,
            hidden,
            softmax_less_one,
            targets,
            head,
            master,
            head_grad,
        })
    }
}

/// Rows of the vocabulary the head's backward pass takes at once: its temporary
/// `[rows, hidden]` stays small beside the kept softmax.
const HEAD_BACKWARD_ROWS: i64 = 8192;

/// Positions whose logits one product computes, in the products' kind: enough rows
/// for the product to run at speed; `[positions, vocab]` in bf16 is 25 MB for
/// SmolLM2's vocabulary.
const HEAD_CHUNK: i64 = 256;

/// The log-prob of each target (`[total]`), the softmax at each position less one at
/// its target (`[total, vocab]`, in the head's kind) and its entropy (`[total]`): the
/// logits of a chunk of positions in one product, then [`target_logprobs`] writing
/// into its rows.
fn head_softmax(hidden: &Tensor, head: &Tensor, targets: &Tensor) -> (Tensor, Tensor, Tensor) {
    let total = hidden.size()[0];
    let vocab = head.size()[0];
    let softmax_less_one = Tensor::empty([total, vocab], (head.kind(), hidden.device()));
    let h = hidden.to_kind(head.kind());
    let mut values = Vec::new();
    let mut entropies = Vec::new();
    for start in (0..total).step_by(HEAD_CHUNK as usize) {
        let n = HEAD_CHUNK.min(total - start);
        let logits = h.narrow(0, start, n).mm(&head.tr());
        let chosen = targets.narrow(0, start, n);
        let rows = softmax_less_one.narrow(0, start, n);
        let (v, entropy) = target_logprobs(&logits, &chosen, Some(&rows));
        values.push(v);
        entropies.extend(entropy);
    }
    let device = hidden.device();
    (
        cat_or_empty(values, device),
        softmax_less_one,
        cat_or_empty(entropies, device),
    )
}

impl TrainingLogprobs {
    /// Sends the gradient a loss's backward pass left on `logprobs.values` into the
    /// model, added to the weights' gradients. Nothing happens when the loss did not
    /// depend on the log-probs.
    pub fn backward(self) {
        self.backward_by(HEAD_BACKWARD_ROWS);
    }

    /// [`TrainingLogprobs::backward`] with the head's backward taking `rows` rows of
    /// the vocabulary at a time.
    fn backward_by(self, rows: i64) {
        let g = self.logprobs.values.grad();
        if !g.defined() || self.targets.size()[0] == 0 {
            return;
        }
        let train_head = self.master.requires_grad();
        if train_head && matches!(self.head_grad, HeadGrad::Master) {
            let _ = grad_or_zeros(&self.master);
        }
        let dh = tch::no_grad(|| {
            // dlp/dlogits = g·(onehot(target) − softmax) = −g·(softmax − onehot), the
            // forward's kept matrix; −g goes into the hidden states' rows (for the
            // weight's gradient) and into dh's rows after the products, not over the
            // `[tokens, vocab]` matrix.
            let d = self.softmax_less_one;
            let kind = self.head.kind();
            let minus_g = (-&g).unsqueeze(1);
            let h = (self.hidden.detach() * &minus_g).to_kind(kind);
            // A slice of the vocabulary at a time: its rows of the weight's gradient,
            // its part of dh, so that no `[vocab, hidden]` temporary sits beside the
            // activations at the backward pass's peak.
            let (total, vocab) = (d.size()[0], d.size()[1]);
            let mut dh = Tensor::zeros([total, h.size()[1]], (Kind::Float, h.device()));
            let mut start = 0;
            while start < vocab {
                let n = rows.min(vocab - start);
                let part = d.narrow(1, start, n);
                if train_head {
                    self.head_grad.add_rows(&self.master, start, &part, &h);
                }
                let _ = dh.g_add_(&part.mm(&self.head.narrow(0, start, n)));
                start += n;
            }
            let _ = dh.g_mul_(&minus_g);
            dh.to_kind(self.hidden.kind())
        });
        if self.hidden.requires_grad() {
            (self.hidden * dh).sum(Kind::Float).backward();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Precision;
    use crate::model::LoadOptions;

    #[test]
    fn the_heads_backward_gives_the_same_gradients_whatever_its_slices() {
        // The fixtures' vocabulary (400) fits in one slice of HEAD_BACKWARD_ROWS,
        // where tests/invariants.rs checks the gradients against autograd's; here
        // slices of 64 rows (the last one shorter) against one slice, f32 and mixed,
        // tied and untied heads.
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for name in ["tiny-llama", "tiny-llama3"] {
            for precision in [Precision::F32, Precision::MixedBf16] {
                let grads = |rows: i64| -> Vec<(String, Tensor)> {
                    let options = LoadOptions {
                        trainable: true,
                        precision,
                        emulate_bf16: true,
                        ..LoadOptions::default()
                    };
                    let model = LanguageModel::load(&fixtures.join(name), options).unwrap();
                    let (prompt, completion) = ([5u32, 9, 13, 2], [40u32, 41, 7, 399, 0]);
                    let pass = model
                        .training_logprobs(
                            &model.training_weights(),
                            &[(&prompt[..], &completion[..])],
                        )
                        .unwrap();
                    let weights = Tensor::from_slice(&[1.0f32, -0.5, 2.0, 0.25, -1.0]);
                    (&pass.logprobs.values * weights)
                        .sum(Kind::Float)
                        .backward();
                    pass.backward_by(rows);
                    let mut out: Vec<(String, Tensor)> = model
                        .var_store()
                        .variables()
                        .into_iter()
                        .map(|(n, p)| (n, p.grad().copy()))
                        .collect();
                    out.sort_by(|a, b| a.0.cmp(&b.0));
                    out
                };
                let (sliced, whole) = (grads(64), grads(400));
                // bf16: each slice's part of dh is rounded on its own, and the
                // layers' gradients pass through bf16 (a few of its steps of 2⁻⁸).
                let tolerance = match precision {
                    Precision::F32 => 1e-5,
                    _ => 3e-2,
                };
                for ((param, a), (_, b)) in sliced.iter().zip(&whole) {
                    let scale = b.abs().max().double_value(&[]).max(1e-6);
                    let diff = (a - b).abs().max().double_value(&[]);
                    assert!(
                        diff <= tolerance * scale,
                        "{name} {precision:?} {param}: {diff} (scale {scale})"
                    );
                }
            }
        }
    }
}
