//! Teacher-forced log-probs of completions given prompts, batched with right padding.
//! Only the positions that predict a completion token go through the output head, and
//! each log-prob is the chosen entry of a log-softmax taken a few positions at a time
//! ([`target_logprobs`]): no full-vocabulary log-softmax is kept for any position.

use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::inference::InferenceWeights;
use crate::model::LanguageModel;
use crate::transformer::Projections;
use crate::{operator_profile, softmax_rows};

/// Positions sent through the output head at once when no gradient is kept, which
/// bounds the `[positions, vocab]` logits held in memory.
const HEAD_CHUNK: i64 = 512;

/// Positions whose log-softmax is taken at once: `[rows, vocab]` f32 (1.5 MB for
/// SmolLM2's vocabulary) stays in the core's cache between the operations that read
/// it, where a pass over a whole chunk's f32 logits went to memory each time.
const SOFTMAX_ROWS: i64 = 8;

/// The log-prob of each target under `logits` (`[n, vocab]`, in the products' kind;
/// the log-softmax is taken in f32), `[n]`; with `out` (`[n, vocab]`, f32 or bf16),
/// each row's entropy `−Σ p·log p` too, and `softmax − onehot(target)` (the head's
/// backward, less the loss's factor) written into `out`, computed in f32. Every
/// log-prob pass, with gradient or without, goes through here, so that the training
/// pass and the reference's agree: on the CPU in one pass per row
/// ([`crate::softmax_rows`]), elsewhere by libtorch's operators.
pub(crate) fn target_logprobs(
    logits: &Tensor,
    targets: &Tensor,
    out: Option<&Tensor>,
) -> (Tensor, Option<Tensor>) {
    match softmax_rows::takes(logits, targets, out) {
        true => operator_profile::scope(c"lsp::softmax_rows", || {
            softmax_rows::softmax_rows(logits, targets, out)
        }),
        false => libtorch_target_logprobs(logits, targets, out),
    }
}

/// [`target_logprobs`] by libtorch's operators, a few rows at a time.
pub(crate) fn libtorch_target_logprobs(
    logits: &Tensor,
    targets: &Tensor,
    out: Option<&Tensor>,
) -> (Tensor, Option<Tensor>) {
    let n = logits.size()[0];
    let mut values = Vec::new();
    let mut entropies = Vec::new();
    for at in (0..n).step_by(SOFTMAX_ROWS as usize) {
        let rows = SOFTMAX_ROWS.min(n - at);
        let log_p = logits.narrow(0, at, rows).log_softmax(1, Kind::Float);
        let chosen = targets.narrow(0, at, rows).unsqueeze(1);
        values.push(log_p.gather(1, &chosen, false).squeeze_dim(1));
        if let Some(out) = out {
            let mut p = log_p.exp();
            entropies.push(-(&p * &log_p).sum_dim_intlist(1, false, Kind::Float));
            // One off at each target in f32, before any rounding to bf16: p − 1 of a
            // near-certain target is lost if p is rounded first.
            let minus_one = Tensor::full([rows, 1], -1.0, (Kind::Float, p.device()));
            let _ = p.scatter_add_(1, &chosen, &minus_one);
            out.narrow(0, at, rows).copy_(&p);
        }
    }
    let device = logits.device();
    let entropy = out.map(|_| cat_or_empty(entropies, device));
    (cat_or_empty(values, device), entropy)
}

/// `parts` joined end to end; an empty f32 tensor when there are none.
pub(crate) fn cat_or_empty(parts: Vec<Tensor>, device: tch::Device) -> Tensor {
    match parts.len() {
        0 => Tensor::zeros([0], (Kind::Float, device)),
        _ => Tensor::cat(&parts, 0),
    }
}

/// Log-probs of every completion token, flat in sequence order, with the length of
/// each sequence's completion.
#[derive(Debug)]
pub struct TokenLogprobs {
    /// `[total completion tokens]`, f32; carries gradient when computed with it.
    pub values: Tensor,
    /// Completion length of each sequence.
    pub lengths: Vec<i64>,
}

impl TokenLogprobs {
    /// Index of the sequence each token belongs to, `[total]` int64.
    pub fn sequence_index(&self) -> Tensor {
        let ids: Vec<i64> = self
            .lengths
            .iter()
            .enumerate()
            .flat_map(|(i, &n)| std::iter::repeat_n(i as i64, n as usize))
            .collect();
        Tensor::from_slice(&ids).to_device(self.values.device())
    }

    /// The log-probs of the sequences `range` (their values share this memory).
    pub fn sequences(&self, range: std::ops::Range<usize>) -> TokenLogprobs {
        let start: i64 = self.lengths[..range.start].iter().sum();
        let lengths = self.lengths[range].to_vec();
        TokenLogprobs {
            values: self.values.narrow(0, start, lengths.iter().sum()),
            lengths,
        }
    }

    /// Per-sequence sum of `per_token` (`[total]`), `[sequences]`.
    pub fn sum_per_sequence(&self, per_token: &Tensor) -> Tensor {
        let out = Tensor::zeros(
            [self.lengths.len() as i64],
            (per_token.kind(), per_token.device()),
        );
        out.index_add(0, &self.sequence_index(), per_token)
    }

    /// Per-sequence mean of `per_token` (`[total]`) over each sequence's tokens (0
    /// for an empty one), `[sequences]`.
    pub fn mean_per_sequence(&self, per_token: &Tensor) -> Tensor {
        let lengths: Vec<f32> = self.lengths.iter().map(|&n| n.max(1) as f32).collect();
        self.sum_per_sequence(per_token)
            / Tensor::from_slice(&lengths).to_device(per_token.device())
    }

    /// Per-sequence sums of the log-probs, `[sequences]`.
    pub fn sums(&self) -> Tensor {
        self.sum_per_sequence(&self.values)
    }

    /// The log-probs as one list per sequence.
    pub fn to_vecs(&self) -> Result<Vec<Vec<f32>>> {
        let flat = Vec::<f32>::try_from(&self.values.detach().to_kind(Kind::Float))?;
        let mut out = Vec::with_capacity(self.lengths.len());
        let mut start = 0usize;
        for &n in &self.lengths {
            out.push(flat[start..start + n as usize].to_vec());
            start += n as usize;
        }
        Ok(out)
    }
}

/// Right-pads `seqs` into `[batch, longest]`
/// ids and a key mask (1 = real token).
pub(crate) fn right_pad(seqs: &[Vec<i64>], pad: i64, device: tch::Device) -> (Tensor, Tensor) {
    let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len() * longest);
    let mut mask = Vec::with_capacity(seqs.len() * longest);
    for s in seqs {
        ids.extend_from_slice(s);
        ids.extend(std::iter::repeat_n(pad, longest - s.len()));
        mask.extend(std::iter::repeat_n(1i64, s.len()));
        mask.extend(std::iter::repeat_n(0i64, longest - s.len()));
    }
    let shape = [seqs.len() as i64, longest as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}

/// What the output head needs for a batch of `(prompt, completion)` pairs.
pub(crate) struct CompletionHidden {
    /// Final hidden states at the positions that predict completion tokens,
    /// `[total, hidden]`, in pair order.
    pub hidden: Tensor,
    /// The completion tokens, `[total]` int64.
    pub targets: Tensor,
    /// Completion length of each pair.
    pub lengths: Vec<i64>,
}

impl LanguageModel {
    /// Log-prob of each completion token given its prompt, for `(prompt, completion)`
    /// pairs, through autograd on the model's own weights. Gradients flow when the
    /// model is trainable and grad mode is on. (A training step uses
    /// [`LanguageModel::training_logprobs`], which needs less memory; a pass without
    /// gradient, [`LanguageModel::completion_logprobs_with`] and [`InferenceWeights`].)
    pub fn completion_logprobs(&self, pairs: &[(&[u32], &[u32])]) -> Result<TokenLogprobs> {
        self.completion_logprobs_with(self.transformer(), pairs)
    }

    /// [`LanguageModel::completion_logprobs`] with the products of `maps`: e.g. the
    /// reference's [`InferenceWeights`], built once for several batches.
    pub fn completion_logprobs_with(
        &self,
        maps: &impl Projections,
        pairs: &[(&[u32], &[u32])],
    ) -> Result<TokenLogprobs> {
        let CompletionHidden {
            hidden,
            targets,
            lengths,
        } = self.completion_hidden(maps, pairs)?;
        let total = targets.size()[0];
        let chunk = if hidden.requires_grad() {
            total
        } else {
            HEAD_CHUNK
        };
        let mut parts = vec![Tensor::zeros([0], (Kind::Float, self.device()))];
        let mut start = 0;
        while start < total {
            let n = chunk.min(total - start);
            let h = hidden.narrow(0, start, n);
            let t = targets.narrow(0, start, n);
            parts.push(target_logprobs(&maps.head(&h), &t, None).0);
            start += n;
        }
        Ok(TokenLogprobs {
            values: Tensor::cat(&parts, 0),
            lengths,
        })
    }

    /// The hidden states and targets of [`CompletionHidden`], in one pass over packed
    /// rows (a prompt several pairs share runs once).
    pub(crate) fn completion_hidden(
        &self,
        maps: &impl Projections,
        pairs: &[(&[u32], &[u32])],
    ) -> Result<CompletionHidden> {
        self.require_causal_lm()?;
        if let Some(i) = pairs.iter().position(|(p, _)| p.is_empty()) {
            return Err(ModelError::Invalid(format!("pair {i} has an empty prompt")));
        }
        let device = self.device();
        let lengths: Vec<i64> = pairs.iter().map(|(_, c)| c.len() as i64).collect();
        let targets: Vec<i64> = pairs
            .iter()
            .flat_map(|(_, c)| c.iter().map(|&t| i64::from(t)))
            .collect();
        let targets = Tensor::from_slice(&targets).to_device(device);
        let hidden_size = self.spec().hidden_size;
        if lengths.iter().all(|&n| n == 0) {
            let kind = self.transformer().kind_and_device().0;
            return Ok(CompletionHidden {
                hidden: Tensor::zeros([0, hidden_size], (kind, device)),
                targets,
                lengths,
            });
        }
        let hidden = self.packed_hidden(maps, pairs)?;
        Ok(CompletionHidden {
            hidden,
            targets,
            lengths,
        })
    }

    /// Final hidden state at each sequence's last token, `[batch, hidden]`, batched
    /// with right padding, without gradient.
    fn last_hidden(&self, weights: &InferenceWeights<'_>, seqs: &[Vec<u32>]) -> Result<Tensor> {
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            return Err(ModelError::Invalid(format!("sequence {i} is empty")));
        }
        let context = self.spec().max_position_embeddings as usize;
        if let Some(longest) = seqs.iter().map(Vec::len).max().filter(|&n| n > context) {
            // Scored all the same (RoPE runs on); said once per process.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    model = %self.folder().display(),
                    longest,
                    context,
                    "a scored sequence is longer than the model's context: its score is unreliable"
                );
            }
        }
        let device = self.device();
        let seqs: Vec<Vec<i64>> = seqs
            .iter()
            .map(|s| s.iter().map(|&t| t as i64).collect())
            .collect();
        let (ids, key_mask) = right_pad(&seqs, self.pad_token_id() as i64, device);
        let hidden = weights.forward(&ids, &key_mask, None);
        let last: Vec<i64> = seqs.iter().map(|s| s.len() as i64 - 1).collect();
        let last = Tensor::from_slice(&last).to_device(device);
        let rows = Tensor::arange(seqs.len() as i64, (Kind::Int64, device));
        Ok(hidden.index(&[Some(rows), Some(last)]))
    }

    /// Next-token logits after each sequence, `[batch, vocab]` f32 (a judge's one
    /// forward pass). No gradient.
    pub fn last_logits(&self, seqs: &[Vec<u32>]) -> Result<Tensor> {
        self.require_causal_lm()?;
        let _guard = tch::no_grad_guard();
        if seqs.is_empty() {
            return Ok(Tensor::zeros(
                [0, self.spec().vocab_size],
                (Kind::Float, self.device()),
            ));
        }
        let weights = InferenceWeights::new(self.transformer());
        let hidden = self.last_hidden(&weights, seqs)?;
        Ok(weights.logits(&hidden).to_kind(Kind::Float))
    }

    /// Reward-model scores of token sequences: the `score` head at each sequence's
    /// last token. An error for a causal LM.
    pub fn score_sequences(&self, seqs: &[Vec<u32>]) -> Result<Vec<f32>> {
        let _guard = tch::no_grad_guard();
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let weights = InferenceWeights::new(self.transformer());
        let picked = self.last_hidden(&weights, seqs)?;
        let scores = self.transformer().score(&picked).ok_or_else(|| {
            ModelError::Invalid(format!(
                "{} is a causal LM, not a reward model (no `score` head)",
                self.folder().display()
            ))
        })?;
        Ok(Vec::<f32>::try_from(&scores.to_kind(Kind::Float))?)
    }
}
