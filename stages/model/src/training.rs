//! Log-probs for a training step, with the output head's backward pass written out.
//!
//! Through autograd, the head's backward allocates, while every activation of the
//! transformer is still alive, a fresh `[vocab, hidden]` weight gradient (with tied
//! embeddings, one more held until the embedding's own gradient arrives) and several
//! `[tokens, vocab]` temporaries. Here the forward pass keeps only the softmax of each
//! position; the backward pass turns it into `dlogits` in place, adds `dlogitsᵀ·h` into
//! the weight's gradient in place, and sends `dh = dlogits·W` through the transformer
//! with autograd. The gradients are those of [`LanguageModel::completion_logprobs`]
//! (tested in `tests/invariants.rs`).

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::logprobs::{CompletionHidden, TokenLogprobs};
use crate::model::LanguageModel;
use crate::training_weights::TrainingWeights;

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
    /// Softmax over the vocabulary at each position, `[total, vocab]` f32.
    probs: Tensor,
    /// Completion tokens, `[total]` int64.
    targets: Tensor,
    /// The output head's weight `[vocab, hidden]` its products use (the model's own,
    /// or its bf16 cast under mixed precision).
    head: Tensor,
    /// The model's own head weight, whose gradient the backward pass adds to.
    master: Tensor,
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
        let (values, probs, entropy) =
            tch::no_grad(|| head_softmax(&hidden.detach(), &head, &targets));
        Ok(TrainingLogprobs {
            logprobs: TokenLogprobs {
                values: values.set_requires_grad(true),
                lengths,
            },
            entropy,
            hidden,
            probs,
            targets,
            head,
            master,
        })
    }
}

/// Positions whose logits are computed at once: the `[positions, vocab]` temporary of
/// the log-sum-exp stays at a few megabytes beside the softmax kept for the backward.
const HEAD_CHUNK: i64 = 64;

/// The log-prob of each target (`[total]`), the softmax at each position
/// (`[total, vocab]` f32) and its entropy (`[total]`), a chunk of positions at a time,
/// each chunk's logits written straight into the softmax's memory.
fn head_softmax(hidden: &Tensor, head: &Tensor, targets: &Tensor) -> (Tensor, Tensor, Tensor) {
    let total = hidden.size()[0];
    let vocab = head.size()[0];
    let probs = Tensor::empty([total, vocab], (Kind::Float, hidden.device()));
    let mut values = Vec::new();
    let mut entropies = Vec::new();
    let mut start = 0;
    while start < total {
        let n = HEAD_CHUNK.min(total - start);
        let h = hidden.narrow(0, start, n);
        let mut logits = probs.narrow(0, start, n);
        if head.kind() == Kind::Float && h.kind() == Kind::Float {
            let _ = h.mm_out(&logits, &head.tr());
        } else {
            logits.copy_(&h.to_kind(head.kind()).mm(&head.tr()));
        }
        let lse = logits.logsumexp([1i64].as_slice(), true);
        let chosen = logits.gather(1, &targets.narrow(0, start, n).unsqueeze(1), false);
        values.push((chosen - &lse).squeeze_dim(1));
        // log p in place, kept; p in place (the one exp); then −Σ p·log p.
        let _ = logits.g_sub_(&lse);
        let log_p = logits.copy();
        let _ = logits.exp_();
        entropies.push(-(&logits * &log_p).sum_dim_intlist(1, false, Kind::Float));
        start += n;
    }
    let cat = |parts: Vec<Tensor>| match parts.len() {
        0 => Tensor::zeros([0], (Kind::Float, hidden.device())),
        _ => Tensor::cat(&parts, 0),
    };
    (cat(values), probs, cat(entropies))
}

impl TrainingLogprobs {
    /// Sends the gradient a loss's backward pass left on `logprobs.values` into the
    /// model, added to the weights' gradients. Nothing happens when the loss did not
    /// depend on the log-probs.
    pub fn backward(self) {
        let g = self.logprobs.values.grad();
        if !g.defined() || self.targets.size()[0] == 0 {
            return;
        }
        let train_head = self.master.requires_grad();
        if train_head && !self.master.grad().defined() {
            // A zero gradient to add into (autograd makes a contiguous one).
            (self.master.sum(Kind::Float) * 0.0).backward();
        }
        let dh = tch::no_grad(|| {
            // dlp/dlogits = onehot(target) − softmax, scaled by each token's gradient.
            let mut d = self.probs;
            let _ = d.g_mul_(&(-&g).unsqueeze(1));
            let _ = d.scatter_add_(1, &self.targets.unsqueeze(1), &g.unsqueeze(1));
            let kind = self.head.kind();
            let d = d.to_kind(kind);
            let h = self.hidden.detach().to_kind(kind);
            if train_head {
                let mut grad = self.master.grad();
                if grad.kind() == kind {
                    let _ = grad.addmm_(&d.tr(), &h);
                } else {
                    // bf16 products into the f32 master's gradient.
                    let _ = grad.g_add_(&d.tr().mm(&h));
                }
            }
            d.mm(&self.head).to_kind(self.hidden.kind())
        });
        if self.hidden.requires_grad() {
            (self.hidden * dh).sum(Kind::Float).backward();
        }
    }
}
