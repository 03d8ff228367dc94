//! `pipeline generate`: one chat message through a model's chat template, sampled.

use std::path::PathBuf;

use clap::Args;
use lsp_model::{GenerationRequest, SamplingConfig};
use serde::Serialize;

use super::ModelArgs;

/// Arguments of `pipeline generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The model folder (Hugging Face layout).
    #[arg(long)]
    model: PathBuf,
    /// The user message; the model's chat template and generation prompt are applied.
    #[arg(long)]
    chat: String,
    /// Greedy decoding (the default when no temperature is given).
    #[arg(long, conflicts_with_all = ["temperature", "top_p", "top_k", "seed"])]
    greedy: bool,
    /// Softmax temperature (sampling).
    #[arg(long)]
    temperature: Option<f64>,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Keep only the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: u64,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most new tokens.
    #[arg(long, default_value_t = 128)]
    max_new_tokens: u64,
    /// Print one JSON object instead of the text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: ModelArgs,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Output<'a> {
    prompt_ids: &'a [u32],
    new_ids: &'a [u32],
    text: &'a str,
    logprobs: &'a [f32],
    finish_reason: &'a str,
}

/// Runs the command; returns what to print.
pub fn run(args: &GenerateArgs) -> anyhow::Result<String> {
    args.runtime.apply();
    let sampling = SamplingConfig {
        max_new_tokens: args.max_new_tokens,
        temperature: if args.greedy {
            0.0
        } else {
            args.temperature.unwrap_or(0.0)
        },
        top_p: args.top_p,
        top_k: args.top_k,
        stop: Vec::new(),
    };
    let mut problems = lsp_schemas::Problems::new();
    lsp_schemas::Validate::validate(&sampling, "", &mut problems);
    anyhow::ensure!(
        problems.is_empty(),
        "invalid sampling settings:\n{problems}"
    );
    let model = args.runtime.load(&args.model, true)?;
    let prompt = model.tokenizer().chat_prompt(&args.chat)?;
    let out = model.generate(&GenerationRequest {
        prompts: std::slice::from_ref(&prompt),
        sampling: &sampling,
        repeats: 1,
        seed: args.seed,
        sequence_ids: None,
        ignore_eos: false,
    })?;
    let g = &out[0];
    if args.json {
        let output = Output {
            prompt_ids: &prompt,
            new_ids: &g.ids,
            text: &g.text,
            logprobs: &g.logprobs,
            finish_reason: g.finish_reason.as_str(),
        };
        Ok(serde_json::to_string(&output)? + "\n")
    } else {
        Ok(format!("{}\n", g.text))
    }
}
