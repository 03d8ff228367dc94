//! A model folder of SmolLM2-135M's shape with random weights, for benchmarks that
//! must not depend on a download: 30 layers, hidden 576, 9 heads over 3 KV heads,
//! FFN 1536, vocab 49152, tied embeddings. Its tokenizer is a word-level stand-in
//! (`t0` … `t49151`); benchmarks feed it token ids directly.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use lsp_model::{HfConfig, Transformer};
use tch::{Device, nn};

/// `config.json` of SmolLM2-135M-Instruct's shape.
pub fn smollm2_shape() -> HfConfig {
    HfConfig {
        architectures: vec!["LlamaForCausalLM".into()],
        model_type: Some("llama".into()),
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: Some(3),
        head_dim: Some(64),
        hidden_act: Some("silu".into()),
        max_position_embeddings: 8192,
        rms_norm_eps: 1e-5,
        tie_word_embeddings: Some(true),
        rope_theta: Some(100_000.0),
        bos_token_id: Some(lsp_model::TokenIds::One(1)),
        eos_token_id: Some(lsp_model::TokenIds::One(2)),
        pad_token_id: Some(2),
        ..HfConfig::default()
    }
}

/// `config.json` of Llama-3.2-1B's shape: 16 layers, hidden 2048, 32 heads over 8 KV
/// heads, FFN 8192, vocab 128256, tied embeddings (1.24B parameters).
pub fn llama32_1b_shape() -> HfConfig {
    HfConfig {
        vocab_size: 128_256,
        hidden_size: 2048,
        intermediate_size: 8192,
        num_hidden_layers: 16,
        num_attention_heads: 32,
        num_key_value_heads: Some(8),
        head_dim: Some(64),
        max_position_embeddings: 131_072,
        rope_theta: Some(500_000.0),
        ..smollm2_shape()
    }
}

/// The shapes a random model is made in.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Shape {
    /// SmolLM2-135M.
    #[value(name = "smollm2")]
    Smollm2,
    /// Llama-3.2-1B.
    #[value(name = "llama3.2-1b")]
    Llama32_1b,
}

impl Shape {
    /// The shape's `config.json`.
    pub fn config(self) -> HfConfig {
        match self {
            Self::Smollm2 => smollm2_shape(),
            Self::Llama32_1b => llama32_1b_shape(),
        }
    }
}

/// Writes a random model of `config`'s shape into `folder` (weights N(0, 0.02),
/// norms 1), seeded.
pub fn write_random_model(folder: &Path, config: &HfConfig, seed: i64) -> anyhow::Result<()> {
    std::fs::create_dir_all(folder)?;
    let config_path = folder.join("config.json");
    std::fs::write(&config_path, serde_json::to_string_pretty(config)?)?;
    let spec = config.to_spec(&config_path)?;
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Transformer::new(&vs.root(), &spec, vs.kind());
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            if !name.ends_with("norm.weight") {
                let _ = var.normal_(0.0, 0.02);
            }
        }
    });
    let named: Vec<_> = vs.variables().into_iter().collect();
    lsp_model::write_safetensors(&named, &folder.join("model.safetensors"))?;

    let vocab: HashMap<String, u32> = (0..config.vocab_size as u32)
        .map(|i| (format!("t{i}"), i))
        .collect();
    let model = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("t0".into())
        .build()
        .map_err(|e| anyhow::anyhow!("building the stand-in tokenizer: {e}"))?;
    let tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer
        .save(folder.join("tokenizer.json"), false)
        .map_err(|e| anyhow::anyhow!("saving the stand-in tokenizer: {e}"))
        .context("random model")?;
    Ok(())
}
