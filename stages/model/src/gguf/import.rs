//! GGUF → Hugging Face folder: `config.json` from the metadata, `model.safetensors`
//! (f32) under Hugging Face tensor names with llama.cpp's Q/K row permutation undone,
//! the tokenizer files, and `generation_config.json`.

use std::path::Path;

use serde_json::json;
use tch::Tensor;
use tracing::info;

use super::reader::{GgufFile, MetaValue, TensorInfo};
use super::tokenizer_json::tokenizer_files;
use crate::error::{ModelError, Result};

/// What an import wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportSummary {
    /// `llama` or `qwen2`.
    pub architecture: String,
    /// Tensors written.
    pub tensors: usize,
    /// Parameters written.
    pub parameters: u64,
}

/// The Hugging Face name of a llama.cpp tensor name.
fn hf_name(name: &str) -> Option<String> {
    let direct = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = direct {
        return Some(n.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let module = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.{kind}"))
}

/// Undoes llama.cpp's interleaving of the rotary halves in Q and K rows:
/// `[heads, dim/2, 2, ...] → [heads, 2, dim/2, ...]`.
fn unpermute(weight: &Tensor, heads: i64) -> Tensor {
    let shape = weight.size();
    let rows = shape[0];
    let mut split = vec![heads, rows / heads / 2, 2];
    split.extend_from_slice(&shape[1..]);
    weight
        .reshape(split.as_slice())
        .transpose(1, 2)
        .reshape(shape.as_slice())
}

fn meta_i64(file: &GgufFile, key: &str) -> Result<i64> {
    file.get(key)
        .and_then(MetaValue::as_i64)
        .ok_or_else(|| ModelError::Checkpoint {
            path: file.path().to_path_buf(),
            message: format!("metadata `{key}` is missing"),
        })
}

/// Imports `gguf` into the folder `out`.
pub fn import_gguf(gguf: &Path, out: &Path) -> Result<ImportSummary> {
    let file = GgufFile::open(gguf)?;
    let bad = |message: String| ModelError::Checkpoint {
        path: gguf.to_path_buf(),
        message,
    };
    let arch = file
        .get("general.architecture")
        .and_then(MetaValue::as_str)
        .unwrap_or("(none)")
        .to_string();
    let hf_arch = match arch.as_str() {
        "llama" => "LlamaForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        other => {
            return Err(bad(format!(
                "architecture {other:?} is not supported: GGUF import reads llama and qwen2"
            )));
        }
    };
    if file.tensors.iter().any(|t| t.name == "rope_freqs.weight") {
        return Err(bad(
            "per-frequency RoPE factors (rope_freqs.weight, Llama 3.1+) are not supported by the \
             importer: load the original Hugging Face folder instead"
                .to_string(),
        ));
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = meta_i64(&file, &key("embedding_length"))?;
    let heads = meta_i64(&file, &key("attention.head_count"))?;
    let kv_heads = file
        .get(&key("attention.head_count_kv"))
        .and_then(MetaValue::as_i64)
        .unwrap_or(heads);
    let tokens = file
        .get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .map(<[MetaValue]>::len);
    let embd = file
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .ok_or_else(|| bad("no token_embd.weight tensor".to_string()))?;
    let vocab = embd.dims.get(1).copied().unwrap_or(0) as i64;
    if let Some(n) = tokens
        && n as i64 > vocab
    {
        return Err(bad(format!("{n} tokens but an embedding of {vocab} rows")));
    }
    let tied = !file.tensors.iter().any(|t| t.name == "output.weight");
    let token_id = |k: &str| {
        file.get(&format!("tokenizer.ggml.{k}"))
            .and_then(MetaValue::as_i64)
    };
    let config = json!({
        "architectures": [hf_arch],
        "model_type": arch,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": meta_i64(&file, &key("feed_forward_length"))?,
        "num_hidden_layers": meta_i64(&file, &key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": hidden / heads,
        "hidden_act": "silu",
        "max_position_embeddings": file.get(&key("context_length")).and_then(MetaValue::as_i64).unwrap_or(2048),
        "rms_norm_eps": file.get(&key("attention.layer_norm_rms_epsilon")).and_then(MetaValue::as_f64).unwrap_or(1e-6),
        "rope_theta": file.get(&key("rope.freq_base")).and_then(MetaValue::as_f64).unwrap_or(10_000.0),
        "tie_word_embeddings": tied,
        "bos_token_id": token_id("bos_token_id"),
        "eos_token_id": token_id("eos_token_id"),
        "pad_token_id": token_id("padding_token_id"),
        "torch_dtype": "float32",
    });
    std::fs::create_dir_all(out).map_err(ModelError::io(out))?;
    write_json(&out.join("config.json"), &config)?;
    write_json(
        &out.join("generation_config.json"),
        &json!({"bos_token_id": token_id("bos_token_id"), "eos_token_id": token_id("eos_token_id")}),
    )?;
    let (tokenizer, tokenizer_config) = tokenizer_files(&file)?;
    write_json(&out.join("tokenizer.json"), &tokenizer)?;
    write_json(&out.join("tokenizer_config.json"), &tokenizer_config)?;

    let mut named: Vec<(String, Tensor)> = Vec::with_capacity(file.tensors.len());
    let mut parameters = 0;
    for info in &file.tensors {
        let Some(name) = hf_name(&info.name) else {
            return Err(bad(format!(
                "tensor {} has no Hugging Face counterpart",
                info.name
            )));
        };
        let mut tensor = dequantized(&file, info)?;
        if arch == "llama" && info.name.ends_with(".weight") {
            if info.name.contains(".attn_q.") {
                tensor = unpermute(&tensor, heads);
            } else if info.name.contains(".attn_k.") {
                tensor = unpermute(&tensor, kv_heads);
            }
        }
        parameters += info.elements();
        named.push((name, tensor));
    }
    let weights = out.join("model.safetensors");
    let tmp = out.join(".model.safetensors.tmp");
    crate::write_safetensors(&named, &tmp)?;
    std::fs::rename(&tmp, &weights).map_err(ModelError::io(&weights))?;
    info!(gguf = %gguf.display(), out = %out.display(), tensors = named.len(), parameters, "GGUF imported");
    Ok(ImportSummary {
        architecture: arch,
        tensors: named.len(),
        parameters,
    })
}

fn dequantized(file: &GgufFile, info: &TensorInfo) -> Result<Tensor> {
    let values = info.ggml_type.dequantize(&file.tensor_bytes(info)?);
    Ok(Tensor::from_slice(&values).reshape(info.torch_shape().as_slice()))
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text).map_err(ModelError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.3.attn_q.weight").unwrap(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").unwrap(),
            "model.layers.0.self_attn.k_proj.bias"
        );
        assert_eq!(
            hf_name("blk.29.ffn_norm.weight").unwrap(),
            "model.layers.29.post_attention_layernorm.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight").unwrap(),
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_name("output.weight").unwrap(), "lm_head.weight");
        assert_eq!(hf_name("blk.0.attn_qkv.weight"), None);
    }

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // llama.cpp: w.reshape(h, 2, d/2, ...).swapaxes(1, 2).reshape(w.shape).
        let (heads, dim, cols) = (3i64, 8i64, 5i64);
        let w = Tensor::arange(heads * dim * cols, (tch::Kind::Float, tch::Device::Cpu))
            .view([heads * dim, cols]);
        let permuted = w
            .reshape([heads, 2, dim / 2, cols])
            .transpose(1, 2)
            .reshape([heads * dim, cols]);
        assert!(unpermute(&permuted, heads).equal(&w));
        assert!(!permuted.equal(&w));
    }
}
