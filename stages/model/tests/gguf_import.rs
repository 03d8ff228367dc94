//! GGUF import end to end without a download: the fixture models are written as GGUF
//! files the way llama.cpp's converter writes them (llama.cpp tensor names, Q/K rows
//! permuted for llama, the tokenizer as `tokenizer.ggml.*` metadata), imported back,
//! and must reproduce transformers' logits and tokenization from `reference.json`.

mod common;

use std::path::Path;

use common::fixture;
use lsp_model::gguf::import_gguf;
use lsp_model::{LanguageModel, LoadOptions};
use serde_json::Value;
use tch::{Kind, Tensor};

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A minimal GGUF v3 writer (F32 tensors only).
#[derive(Default)]
struct Writer {
    kv: Vec<u8>,
    n_kv: u64,
    tensors: Vec<(String, Vec<u64>, Vec<f32>)>,
}

impl Writer {
    fn string(buf: &mut Vec<u8>, s: &str) {
        buf.extend((s.len() as u64).to_le_bytes());
        buf.extend(s.as_bytes());
    }

    fn key(&mut self, key: &str, kind: u32) {
        Self::string(&mut self.kv, key);
        self.kv.extend(kind.to_le_bytes());
        self.n_kv += 1;
    }

    fn str(&mut self, key: &str, value: &str) {
        self.key(key, 8);
        Self::string(&mut self.kv, value);
    }

    fn u32(&mut self, key: &str, value: u32) {
        self.key(key, 4);
        self.kv.extend(value.to_le_bytes());
    }

    fn f32(&mut self, key: &str, value: f32) {
        self.key(key, 6);
        self.kv.extend(value.to_le_bytes());
    }

    fn strings(&mut self, key: &str, values: &[String]) {
        self.key(key, 9);
        self.kv.extend(8u32.to_le_bytes());
        self.kv.extend((values.len() as u64).to_le_bytes());
        for v in values {
            Self::string(&mut self.kv, v);
        }
    }

    fn i32s(&mut self, key: &str, values: &[i32]) {
        self.key(key, 9);
        self.kv.extend(5u32.to_le_bytes());
        self.kv.extend((values.len() as u64).to_le_bytes());
        for v in values {
            self.kv.extend(v.to_le_bytes());
        }
    }

    fn tensor(&mut self, name: &str, t: &Tensor) {
        let dims: Vec<u64> = t.size().iter().rev().map(|&d| d as u64).collect();
        let values = Vec::<f32>::try_from(&t.flatten(0, -1)).unwrap();
        self.tensors.push((name.to_string(), dims, values));
    }

    fn write(&self, path: &Path) {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        let mut offset = 0u64;
        for (name, dims, values) in &self.tensors {
            Self::string(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(0u32.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset = (offset + 4 * values.len() as u64).div_ceil(32) * 32;
        }
        out.resize(out.len().div_ceil(32) * 32, 0);
        for (_, _, values) in &self.tensors {
            for v in values {
                out.extend(v.to_le_bytes());
            }
            out.resize(out.len().div_ceil(32) * 32, 0);
        }
        std::fs::write(path, out).unwrap();
    }
}

/// llama.cpp's Q/K permutation: `[heads, 2, dim/2, ...] → [heads, dim/2, 2, ...]`.
fn permute(w: &Tensor, heads: i64) -> Tensor {
    let shape = w.size();
    w.reshape([heads, 2, shape[0] / heads / 2, shape[1]])
        .transpose(1, 2)
        .reshape(shape.as_slice())
}

fn gguf_name(hf: &str) -> String {
    let direct = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = direct.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, part) = rest.split_once('.').unwrap();
    let (module, kind) = part.rsplit_once('.').unwrap();
    let module = match module {
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        other => panic!("{other}"),
    };
    format!("blk.{layer}.{module}.{kind}")
}

/// Writes the fixture `name` as a GGUF file of architecture `arch`.
fn write_gguf(name: &str, arch: &str, path: &Path) {
    let dir = fixture(name);
    let config = json(&dir.join("config.json"));
    let tok = json(&dir.join("tokenizer.json"));
    let tok_config = json(&dir.join("tokenizer_config.json"));
    let mut w = Writer::default();
    w.str("general.architecture", arch);
    let n = |k: &str| config[k].as_u64().unwrap() as u32;
    w.u32(&format!("{arch}.embedding_length"), n("hidden_size"));
    w.u32(&format!("{arch}.block_count"), n("num_hidden_layers"));
    w.u32(
        &format!("{arch}.feed_forward_length"),
        n("intermediate_size"),
    );
    w.u32(
        &format!("{arch}.attention.head_count"),
        n("num_attention_heads"),
    );
    w.u32(
        &format!("{arch}.attention.head_count_kv"),
        n("num_key_value_heads"),
    );
    w.u32(
        &format!("{arch}.context_length"),
        n("max_position_embeddings"),
    );
    w.f32(
        &format!("{arch}.attention.layer_norm_rms_epsilon"),
        config["rms_norm_eps"].as_f64().unwrap() as f32,
    );
    let theta = config["rope_theta"]
        .as_f64()
        .or(config["rope_parameters"]["rope_theta"].as_f64());
    w.f32(&format!("{arch}.rope.freq_base"), theta.unwrap() as f32);
    // Tokenizer: tokens in id order, merges as "a b", the added tokens as control.
    let vocab = tok["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (t, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = t.clone();
    }
    let mut types = vec![1i32; tokens.len()];
    for added in tok["added_tokens"].as_array().unwrap() {
        let id = added["id"].as_u64().unwrap() as usize;
        tokens[id] = added["content"].as_str().unwrap().to_string();
        types[id] = 3;
    }
    let merges: Vec<String> = tok["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(p) => format!("{} {}", p[0].as_str().unwrap(), p[1].as_str().unwrap()),
            other => panic!("{other}"),
        })
        .collect();
    w.str("tokenizer.ggml.model", "gpt2");
    w.str("tokenizer.ggml.pre", "default");
    w.strings("tokenizer.ggml.tokens", &tokens);
    w.i32s("tokenizer.ggml.token_type", &types);
    w.strings("tokenizer.ggml.merges", &merges);
    w.u32("tokenizer.ggml.eos_token_id", 2);
    w.u32("tokenizer.ggml.padding_token_id", 2);
    w.str(
        "tokenizer.chat_template",
        tok_config["chat_template"].as_str().unwrap(),
    );
    let heads = config["num_attention_heads"].as_i64().unwrap();
    let kv_heads = config["num_key_value_heads"].as_i64().unwrap();
    let mut tensors = Tensor::read_safetensors(dir.join("model.safetensors")).unwrap();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    for (hf, t) in tensors {
        let t = t.to_kind(Kind::Float);
        let t = match (
            arch,
            hf.contains("q_proj.weight"),
            hf.contains("k_proj.weight"),
        ) {
            ("llama", true, _) => permute(&t, heads),
            ("llama", _, true) => permute(&t, kv_heads),
            _ => t,
        };
        w.tensor(&gguf_name(&hf), &t);
    }
    w.write(path);
}

fn check_import(name: &str, arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("model.gguf");
    write_gguf(name, arch, &gguf);
    let out = dir.path().join("hf");
    let summary = import_gguf(&gguf, &out).unwrap();
    assert_eq!(summary.architecture, arch);
    let model = LanguageModel::load(&out, LoadOptions::default()).unwrap();
    let reference = json(&fixture(name).join("reference.json"));
    for case in reference["tokenization"].as_array().unwrap() {
        let ids = model
            .tokenizer()
            .encode(case["text"].as_str().unwrap())
            .unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, want, "{name}: {}", case["text"]);
    }
    for case in reference["cases"].as_array().unwrap() {
        let ids = model
            .tokenizer()
            .chat_prompt(case["prompt"].as_str().unwrap())
            .unwrap();
        let want: Vec<i64> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        assert_eq!(
            ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            want,
            "{name}"
        );
        let n = want.len() as i64;
        let logits = tch::no_grad(|| {
            let t = model.transformer();
            let mask = Tensor::ones([1, n], (Kind::Int64, tch::Device::Cpu));
            t.logits(&t.forward(&Tensor::from_slice(&want).view([1, n]), &mask, None))
        });
        let got = Vec::<f32>::try_from(&logits.flatten(0, -1)).unwrap();
        let expected: Vec<f64> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        let diff = got
            .iter()
            .zip(&expected)
            .map(|(g, e)| (*g as f64 - e).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-4, "{name}: logits differ by {diff}");
    }
}

#[test]
fn llama_gguf_with_permuted_qk_and_tied_head_imports_exactly() {
    check_import("tiny-llama", "llama");
}

#[test]
fn qwen2_gguf_with_biases_and_untied_head_imports_exactly() {
    check_import("tiny-qwen2", "qwen2");
}

#[test]
fn unsupported_or_broken_files_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let gguf = dir.path().join("model.gguf");
    let out = dir.path().join("hf");
    let mut w = Writer::default();
    w.str("general.architecture", "mamba");
    w.write(&gguf);
    let err = import_gguf(&gguf, &out).unwrap_err().to_string();
    assert!(
        err.contains("architecture \"mamba\" is not supported"),
        "{err}"
    );

    std::fs::write(&gguf, b"GGML not really").unwrap();
    let err = import_gguf(&gguf, &out).unwrap_err().to_string();
    assert!(err.contains("not a GGUF file"), "{err}");

    write_gguf("tiny-llama", "llama", &gguf);
    let bytes = std::fs::read(&gguf).unwrap();
    std::fs::write(&gguf, &bytes[..bytes.len() - 1000]).unwrap();
    let err = import_gguf(&gguf, &out).unwrap_err().to_string();
    assert!(err.contains("is cut short"), "{err}");
    std::fs::write(&gguf, &bytes[..100]).unwrap();
    let err = import_gguf(&gguf, &out).unwrap_err().to_string();
    assert!(err.contains("truncated GGUF"), "{err}");
}
