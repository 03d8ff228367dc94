//! Bad checkpoints get errors that name the problem.

mod common;

use std::path::Path;

use common::fixture;
use lsp_model::{DeviceKind, LanguageModel, LoadOptions, Unloaded};
use tch::Tensor;

/// A copy of the tiny-llama fixture that `edit` may change.
fn broken_copy(edit: impl FnOnce(&Path)) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    edit(dir.path());
    let err = LanguageModel::load(dir.path(), LoadOptions::default()).unwrap_err();
    (dir, err.to_string())
}

fn edit_config(dir: &Path, from: &str, to: &str) {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{from} not in config.json");
    std::fs::write(&path, text.replace(from, to)).unwrap();
}

#[test]
fn unknown_architecture_is_named() {
    let (_d, err) = broken_copy(|d| edit_config(d, "LlamaForCausalLM", "MambaForCausalLM"));
    assert!(
        err.contains("unsupported architecture \"MambaForCausalLM\""),
        "{err}"
    );
}

#[test]
fn shape_mismatch_names_the_tensor_and_both_shapes() {
    let (_d, err) = broken_copy(|d| {
        edit_config(
            d,
            "\"intermediate_size\": 176",
            "\"intermediate_size\": 170",
        )
    });
    // The weights' headers are read first: the config is named as the odd one out.
    assert!(err.contains("config.json describes model.layers.0.mlp.gate_proj.weight as [170, 64] but the weights hold [176, 64]"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let (_d, err) = broken_copy(|d| {
        let path = d.join("model.safetensors");
        let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&path)
            .unwrap()
            .into_iter()
            .filter(|(n, _)| n != "model.norm.weight")
            .collect();
        Tensor::write_safetensors(&tensors, &path).unwrap();
    });
    assert!(
        err.contains("tensor `model.norm.weight` is missing"),
        "{err}"
    );
}

#[test]
fn tokenizer_larger_than_the_embedding_is_refused() {
    // A config that misstates the vocabulary is blamed on the config, not the tokenizer.
    let (_d, err) = broken_copy(|d| edit_config(d, "\"vocab_size\": 400", "\"vocab_size\": 300"));
    assert!(
        err.contains("config.json describes model.embed_tokens.weight as [300, 64] but the weights hold [400, 64]"),
        "{err}"
    );
    // A tokenizer with more tokens than the embedding has rows is another model's.
    let (_d, err) = broken_copy(|d| {
        let path = d.join("tokenizer.json");
        let mut t: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for id in 400..405 {
            t["added_tokens"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "id": id, "content": format!("<extra_{id}>"), "single_word": false,
                    "lstrip": false, "rstrip": false, "normalized": false, "special": true
                }));
        }
        std::fs::write(&path, t.to_string()).unwrap();
    });
    assert!(
        err.contains("the tokenizer has 405 tokens but the model's embedding only 400 rows"),
        "{err}"
    );
}

#[test]
fn corrupt_and_missing_files_are_named() {
    let (_d, err) =
        broken_copy(|d| std::fs::write(d.join("model.safetensors"), b"garbage").unwrap());
    assert!(
        err.contains("model.safetensors: not a readable safetensors file"),
        "{err}"
    );
    let (_d, err) = broken_copy(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    assert!(
        err.contains("no model.safetensors or model.safetensors.index.json"),
        "{err}"
    );
    let (_d, err) = broken_copy(|d| std::fs::remove_file(d.join("tokenizer.json")).unwrap());
    assert!(err.contains("tokenizer.json: missing"), "{err}");
    let (_d, err) =
        broken_copy(|d| std::fs::write(d.join("config.json"), b"{\"hidden_size\": 1").unwrap());
    assert!(err.contains("config.json: EOF while parsing"), "{err}");
    let err = LanguageModel::load(Path::new("/no/such/model"), LoadOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/no/such/model is not a folder"),
        "{err}"
    );
}

/// An offloaded model ([`Unloaded`]) reads its folder once and its weights on every
/// load: each load is the model [`LanguageModel::load`] gives, and weights damaged
/// between two loads (a value overwritten with NaN, then a truncated file) are an
/// error at the next one, not a model.
#[test]
fn an_unloaded_model_loads_again_and_sees_damage_done_since() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let unloaded = Unloaded::open(dir.path(), LoadOptions::default()).unwrap();
    let whole = LanguageModel::load(dir.path(), LoadOptions::default()).unwrap();
    let ids = whole.tokenizer().chat_prompt("Hi").unwrap();
    let pair = [(&ids[..2], &ids[2..])];
    let logprobs = |model: &LanguageModel| {
        tch::no_grad(|| model.completion_logprobs(&pair))
            .unwrap()
            .to_vecs()
            .unwrap()
    };
    let expected = logprobs(&whole);
    for _ in 0..2 {
        let model = unloaded.load().unwrap();
        assert_eq!(model.eos_token_ids(), whole.eos_token_ids());
        assert_eq!(logprobs(&model), expected);
    }
    let weights = dir.path().join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&weights).unwrap();
    let (name, first) = &mut tensors[0];
    let name = name.clone();
    let _ = first.view([-1]).get(0).fill_(f64::NAN);
    Tensor::write_safetensors(&tensors, &weights).unwrap();
    let err = unloaded.load().unwrap_err().to_string();
    assert!(err.contains(&name) && err.contains("NaN"), "{err}");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = unloaded.load().unwrap_err().to_string();
    assert!(err.contains("truncated or corrupt"), "{err}");
}

#[test]
fn sharded_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "model.safetensors" {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let tensors =
        Tensor::read_safetensors(fixture("tiny-llama").join("model.safetensors")).unwrap();
    let (first, second): (Vec<_>, Vec<_>) = tensors
        .into_iter()
        .partition(|(n, _)| n.contains("layers.0"));
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", &first),
        ("model-00002-of-00002.safetensors", &second),
    ] {
        Tensor::write_safetensors(part, dir.path().join(file)).unwrap();
        for (name, _) in part.iter() {
            map.insert(name.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let sharded = LanguageModel::load(dir.path(), LoadOptions::default()).unwrap();
    let whole = LanguageModel::load(&fixture("tiny-llama"), LoadOptions::default()).unwrap();
    let ids = whole.tokenizer().chat_prompt("Hi").unwrap();
    let pair = [(&ids[..2], &ids[2..])];
    let a = tch::no_grad(|| whole.completion_logprobs(&pair))
        .unwrap()
        .to_vecs()
        .unwrap();
    let b = tch::no_grad(|| sharded.completion_logprobs(&pair))
        .unwrap()
        .to_vecs()
        .unwrap();
    assert_eq!(a, b);
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    if tch::Cuda::is_available() {
        return; // This machine has a GPU: the request is valid here.
    }
    let options = LoadOptions {
        device: DeviceKind::Cuda,
        ..LoadOptions::default()
    };
    let err = LanguageModel::load(&fixture("tiny-llama"), options).unwrap_err();
    assert!(
        err.to_string().contains("libtorch sees no CUDA device"),
        "{err}"
    );
}

#[test]
fn a_causal_lm_has_no_score() {
    let model = LanguageModel::load(&fixture("tiny-llama"), LoadOptions::default()).unwrap();
    let err = model.score_sequences(&[vec![1, 2, 3]]).unwrap_err();
    assert!(
        err.to_string()
            .contains("is a causal LM, not a reward model"),
        "{err}"
    );
}

#[test]
fn a_reward_model_does_not_generate() {
    let model = LanguageModel::load(&fixture("tiny-reward"), LoadOptions::default()).unwrap();
    let sampling = lsp_model::SamplingConfig::greedy(4);
    let request = lsp_model::GenerationRequest {
        prompts: &[vec![1, 2]],
        sampling: &sampling,
        repeats: 1,
        seed: 0,
        sequence_ids: None,
        ignore_eos: false,
    };
    let err = model.generate(&request).unwrap_err().to_string();
    assert!(
        err.contains("is a reward model (sequence classification)"),
        "{err}"
    );
    let err = model
        .completion_logprobs(&[(&[1], &[2])])
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a reward model"), "{err}");
}
