//! The rollout benchmark: batched sampling from different chat prompts (left-padded),
//! a forced length (EOS ignored), temperature 1 over the full vocabulary.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use lsp_model::{GenerationRequest, LanguageModel, SamplingConfig};

use super::figures;

/// The first `n` instructions of a JSONL file with an `instruction` field.
pub fn instructions(path: &Path, n: usize) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let out: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["instruction"].as_str().map(str::to_string))
        .take(n)
        .collect();
    anyhow::ensure!(
        out.len() == n,
        "{} has fewer than {n} instructions",
        path.display()
    );
    Ok(out)
}

/// Times `runs` rollouts of `new_tokens` for each batch size; one line per size.
pub fn run(
    model: &LanguageModel,
    prompts_file: &Path,
    batches: &[usize],
    new_tokens: u64,
    runs: usize,
) -> anyhow::Result<String> {
    let largest = batches.iter().copied().max().unwrap_or(1);
    let texts = instructions(prompts_file, largest)?;
    let prompts: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| model.tokenizer().chat_prompt(t))
        .collect::<Result<_, _>>()?;
    let sampling = SamplingConfig {
        max_new_tokens: new_tokens,
        temperature: 1.0,
        top_p: 1.0,
        top_k: 0,
        stop: Vec::new(),
    };
    let params = model.spec().num_parameters() as f64;
    let mut out = String::new();
    for &batch in batches {
        let mut times = Vec::new();
        for i in 0..=runs {
            let start = Instant::now();
            let generated = model.generate(&GenerationRequest {
                prompts: &prompts[..batch],
                sampling: &sampling,
                repeats: 1,
                seed: i as u64,
                sequence_ids: None,
                ignore_eos: true,
            })?;
            anyhow::ensure!(generated.iter().all(|g| g.ids.len() as u64 == new_tokens));
            if i > 0 {
                times.push(start.elapsed());
            }
        }
        let time = figures::median(&mut times);
        let tokens = batch as u64 * new_tokens;
        out.push_str(&figures::report(
            &format!("rollout batch {batch}"),
            tokens,
            time,
            runs,
            2.0 * params * tokens as f64,
        ));
        out.push('\n');
    }
    Ok(out)
}
