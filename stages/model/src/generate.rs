//! Batched generation with the KV cache. Prompts are left-padded and prefilled once;
//! each prompt's cache is then copied for its `repeats` answers; every step decodes
//! one token for each unfinished sequence, and finished sequences leave the batch so
//! they stop costing work. One small host transfer per step (the chosen ids and their
//! log-probs) decides which sequences are done.

use serde::Serialize;
use tch::Tensor;
use tracing::warn;

use crate::config::SamplingConfig;
use crate::decoder::DecoderKind;
use crate::error::{ModelError, Result};
use crate::model::LanguageModel;
use crate::sampling::{Rng, mix, next_tokens};

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// It produced an EOS id.
    Eos,
    /// Its text reached a stop string.
    Stop,
    /// It reached `max_new_tokens`.
    Length,
}

impl FinishReason {
    /// `eos`, `stop` or `length`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eos => "eos",
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerationRequest<'a> {
    /// Prompt ids, one list per prompt.
    pub prompts: &'a [Vec<u32>],
    /// How tokens are chosen, and the length and stop strings.
    pub sampling: &'a SamplingConfig,
    /// Sequences per prompt, sharing the prompt's prefill.
    pub repeats: usize,
    /// Seed of the draws. Each sequence draws from its own generator, seeded by
    /// [`crate::mix`]`(seed, id)` with its id from `sequence_ids`, so its tokens depend
    /// on the seed, its prompt and its id, not on the other sequences of the batch (up
    /// to the float rounding of batched products).
    pub seed: u64,
    /// Each sequence's id, prompt-major (a prompt's repeats together): e.g. a query's
    /// number in its iteration, whichever worker samples it. `None`: 0, 1, 2, ….
    pub sequence_ids: Option<&'a [u64]>,
    /// Keep going past EOS ids (for benchmarks that force a length).
    pub ignore_eos: bool,
}

/// One generated sequence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Generation {
    /// Index of its prompt.
    pub prompt_index: usize,
    /// New token ids, including the EOS id that ended it, if any.
    pub ids: Vec<u32>,
    /// Log-prob of each new token under the model (temperature 1, unfiltered).
    pub logprobs: Vec<f32>,
    /// Text of the new tokens without the EOS id that ended them (other special
    /// tokens are kept, as transformers' `decode` does), cut before a stop string.
    pub text: String,
    /// Why it stopped.
    pub finish_reason: FinishReason,
}

/// One sequence being decoded.
struct Running {
    ids: Vec<u32>,
    logprobs: Vec<f32>,
    finished: Option<FinishReason>,
}

impl LanguageModel {
    /// Generates `request.repeats` continuations of every prompt, in prompt order
    /// (prompt 0's repeats first), on the decoder [`DecoderKind::choose`] picks.
    /// Runs without gradients.
    pub fn generate(&self, request: &GenerationRequest<'_>) -> Result<Vec<Generation>> {
        let batch = request.prompts.len() * request.repeats;
        self.generate_on(DecoderKind::choose(self.transformer(), batch), request)
    }

    /// [`LanguageModel::generate`] on the decoder `decoder`: an error if it does not
    /// run this model's weights ([`DecoderKind::supports`]).
    pub fn generate_on(
        &self,
        decoder: DecoderKind,
        request: &GenerationRequest<'_>,
    ) -> Result<Vec<Generation>> {
        self.require_causal_lm()?;
        let _guard = tch::no_grad_guard();
        let sampling = request.sampling;
        let n_prompts = request.prompts.len();
        if n_prompts == 0 || request.repeats == 0 {
            return Ok(Vec::new());
        }
        if let Some(i) = request.prompts.iter().position(Vec::is_empty) {
            return Err(ModelError::Invalid(format!("prompt {i} has no tokens")));
        }
        let max_new = sampling.max_new_tokens as i64;
        let longest = request.prompts.iter().map(Vec::len).max().unwrap_or(0) as i64;
        let context = self.spec().max_position_embeddings;
        if max_new > context {
            return Err(ModelError::Invalid(format!(
                "max_new_tokens {max_new} is more than {}'s whole context of {context} tokens",
                self.folder().display()
            )));
        }
        if longest + max_new > context && !self.options.allow_past_context {
            return Err(ModelError::Invalid(format!(
                "a prompt of {longest} tokens plus {max_new} new ones runs past {}'s context \
                 of {context} tokens: shorten them, or allow it (model.allow_past_context: \
                 true, --allow-past-context)",
                self.folder().display()
            )));
        }
        if longest + max_new > context {
            // Allowed: RoPE has no table to run off, so this computes; quality past the
            // trained context is the model's own business. Said once per process.
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                warn!(
                    longest,
                    max_new, context, "prompt plus new tokens exceed the model's context length"
                );
            }
        }
        let total = n_prompts * request.repeats;
        let mut rngs: Vec<Rng> = match request.sequence_ids {
            Some(ids) if ids.len() != total => {
                return Err(ModelError::Invalid(format!(
                    "{} sequence ids for {total} sequences",
                    ids.len()
                )));
            }
            Some(ids) => ids
                .iter()
                .map(|&id| Rng::new(mix(request.seed, id)))
                .collect(),
            None => (0..total as u64)
                .map(|id| Rng::new(mix(request.seed, id)))
                .collect(),
        };
        let mut decoder = decoder.build(self.transformer())?;
        let mut logits = decoder.prefill(
            request.prompts,
            request.repeats,
            self.pad_token_id(),
            longest + max_new,
        );
        let mut seqs: Vec<Running> = (0..total)
            .map(|_| Running {
                ids: Vec::with_capacity(max_new as usize),
                logprobs: Vec::with_capacity(max_new as usize),
                finished: None,
            })
            .collect();
        // active[i]: which sequence row i of the batch is.
        let mut active: Vec<usize> = (0..total).collect();
        for step in 0..max_new {
            let (next, logprob) = next_tokens(&logits, sampling, &mut rngs);
            let next_host = Vec::<i64>::try_from(&next)?;
            let logprob_host = Vec::<f32>::try_from(&logprob)?;
            let last_step = step + 1 == max_new;
            for (row, &seq) in active.iter().enumerate() {
                let s = &mut seqs[seq];
                let token = next_host[row] as u32;
                s.ids.push(token);
                s.logprobs.push(logprob_host[row]);
                if !request.ignore_eos && self.eos_token_ids().contains(&token) {
                    s.finished = Some(FinishReason::Eos);
                } else if !sampling.stop.is_empty() && self.hits_stop(&s.ids, sampling)? {
                    s.finished = Some(FinishReason::Stop);
                } else if last_step {
                    s.finished = Some(FinishReason::Length);
                }
            }
            let keep: Vec<i64> = (0..active.len() as i64)
                .filter(|&row| seqs[active[row as usize]].finished.is_none())
                .collect();
            if keep.is_empty() {
                break;
            }
            let mut next = next;
            if keep.len() < active.len() {
                decoder.retain(&keep);
                rngs = keep.iter().map(|&row| rngs[row as usize].clone()).collect();
                next = next.index_select(0, &Tensor::from_slice(&keep).to_device(next.device()));
                active = keep.iter().map(|&row| active[row as usize]).collect();
            }
            logits = decoder.step(&next);
        }

        seqs.into_iter()
            .enumerate()
            .map(|(i, s)| {
                let finish_reason = s.finished.unwrap_or(FinishReason::Length);
                let text = self.output_text(&s.ids, finish_reason, sampling)?;
                Ok(Generation {
                    prompt_index: i / request.repeats,
                    ids: s.ids,
                    logprobs: s.logprobs,
                    text,
                    finish_reason,
                })
            })
            .collect()
    }

    /// Whether the text of `ids` contains a stop string.
    fn hits_stop(&self, ids: &[u32], sampling: &SamplingConfig) -> Result<bool> {
        let text = self.tokenizer().decode(ids, true)?;
        Ok(sampling.stop.iter().any(|s| text.contains(s.as_str())))
    }

    /// The text of a finished sequence: without its final EOS id, cut before the
    /// first stop string.
    fn output_text(
        &self,
        ids: &[u32],
        reason: FinishReason,
        sampling: &SamplingConfig,
    ) -> Result<String> {
        let ids = match reason {
            FinishReason::Eos => &ids[..ids.len() - 1],
            _ => ids,
        };
        let mut text = self.tokenizer().decode(ids, false)?;
        if reason == FinishReason::Stop
            && let Some(cut) = sampling
                .stop
                .iter()
                .filter_map(|s| text.find(s.as_str()))
                .min()
        {
            text.truncate(cut);
        }
        Ok(text)
    }
}

/// Left-pads `prompts` with `pad` into `[batch, longest]` ids and a key mask
/// (1 = real token).
pub fn left_pad(prompts: &[Vec<u32>], pad: u32, device: tch::Device) -> (Tensor, Tensor) {
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len() * longest);
    let mut mask = Vec::with_capacity(prompts.len() * longest);
    for p in prompts {
        let padding = longest - p.len();
        ids.extend(std::iter::repeat_n(pad as i64, padding));
        ids.extend(p.iter().map(|&t| t as i64));
        mask.extend(std::iter::repeat_n(0i64, padding));
        mask.extend(std::iter::repeat_n(1i64, p.len()));
    }
    let shape = [prompts.len() as i64, longest as i64];
    (
        Tensor::from_slice(&ids).view(shape).to_device(device),
        Tensor::from_slice(&mask).view(shape).to_device(device),
    )
}
