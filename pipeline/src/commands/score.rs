//! `pipeline score`: a reward model's score of one (instruction, response) pair.

use std::path::PathBuf;

use clap::Args;
use lsp_model::Message;

use super::ModelArgs;

/// Arguments of `pipeline score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// The reward model's folder (a sequence-classification checkpoint).
    #[arg(long)]
    model: PathBuf,
    /// The user's instruction.
    #[arg(long)]
    instruction: String,
    /// The assistant's response.
    #[arg(long)]
    response: String,
    /// Print `{"score": x}` instead of the number.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runtime: ModelArgs,
}

/// Runs the command; returns what to print.
pub fn run(args: &ScoreArgs) -> anyhow::Result<String> {
    args.runtime.apply();
    let model = args.runtime.load(&args.model, true)?;
    let messages = [
        Message::user(args.instruction.as_str()),
        Message {
            role: "assistant".into(),
            content: args.response.clone(),
        },
    ];
    let text = model.tokenizer().render_chat(&messages, false)?;
    let ids = model.tokenizer().encode(&text)?;
    let score = model.score_sequences(&[ids])?[0];
    if args.json {
        Ok(serde_json::json!({ "score": score }).to_string() + "\n")
    } else {
        Ok(format!("{score}\n"))
    }
}
