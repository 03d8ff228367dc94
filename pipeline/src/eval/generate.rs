//! Chat answers of a model to a list of user messages, in batches.

use lsp_model::{GenerationRequest, LanguageModel, SamplingConfig};

/// One answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub text: String,
    pub finish_reason: String,
}

/// The model's answer to each message (its chat template applied), `batch` at a time;
/// the seed of batch b is `seed + b`, so a run is reproducible.
pub fn answers(
    model: &LanguageModel,
    messages: &[String],
    sampling: &SamplingConfig,
    batch: usize,
    seed: u64,
    progress: impl Fn(usize),
) -> anyhow::Result<Vec<Answer>> {
    let mut out = Vec::with_capacity(messages.len());
    for (b, chunk) in messages.chunks(batch.max(1)).enumerate() {
        let prompts: Vec<Vec<u32>> = chunk
            .iter()
            .map(|m| model.tokenizer().chat_prompt(m))
            .collect::<Result<_, _>>()?;
        let generations = model.generate(&GenerationRequest {
            prompts: &prompts,
            sampling,
            repeats: 1,
            seed: seed + b as u64,
            sequence_ids: None,
            ignore_eos: false,
        })?;
        out.extend(generations.into_iter().map(|g| Answer {
            text: g.text,
            finish_reason: g.finish_reason.as_str().to_string(),
        }));
        progress(out.len());
    }
    Ok(out)
}
