//! Fixture helpers shared by the model crate's integration tests.

#![allow(dead_code)] // Each test binary uses its own part of these helpers.

use std::path::PathBuf;

use lsp_model::{LanguageModel, LoadOptions};
use serde_json::Value;

/// The fixture folder `name` (copied from the shared reference material).
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// A fixture model loaded with default options.
pub fn load(name: &str) -> LanguageModel {
    LanguageModel::load(&fixture(name), LoadOptions::default()).unwrap()
}

/// Full logits `[seq, vocab]` of `ids` through the transformer's own forward pass.
pub fn full_logits(model: &LanguageModel, ids: &[u32]) -> tch::Tensor {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let n = ids.len() as i64;
    let t = model.transformer();
    tch::no_grad(|| {
        let mask = tch::Tensor::ones([1, n], (tch::Kind::Int64, tch::Device::Cpu));
        t.logits(&t.forward(&tch::Tensor::from_slice(&ids).view([1, n]), &mask, None))
            .squeeze_dim(0)
    })
}

/// Largest absolute difference between two tensors.
pub fn max_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// A fixture's `reference.json`.
pub fn reference(name: &str) -> Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A JSON array of token ids.
pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// A JSON array of numbers.
pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `digests` (as `save` returned them, the weights' taken while writing) name every
/// file in `folder`, each with the digest of its bytes read back.
pub fn assert_digests_of_every_file(folder: &std::path::Path, digests: &lsp_model::Digests) {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, digests.keys().cloned().collect::<Vec<_>>());
    for (name, digest) in digests {
        assert!(digest.starts_with(lsp_model::DIGEST_PREFIX), "{digest}");
        assert_eq!(
            lsp_model::digest_file(&folder.join(name)).unwrap(),
            *digest,
            "{name}"
        );
    }
}

/// Three chat prompts of the fixture's template, of uneven lengths.
pub fn prompts(model: &LanguageModel) -> Vec<Vec<u32>> {
    [
        "Write a haiku about the sea.",
        "Hi",
        "What is 17 * 23? Think step by step.",
    ]
    .iter()
    .map(|p| model.tokenizer().chat_prompt(p).unwrap())
    .collect()
}

/// Completions for the three [`prompts`], of uneven lengths.
pub fn three_completions() -> Vec<Vec<u32>> {
    vec![vec![5, 9, 13, 2, 40, 41], vec![7, 8], vec![11, 3]]
}

/// Each prompt with its completion.
pub fn paired<'a>(
    prompts: &'a [Vec<u32>],
    completions: &'a [Vec<u32>],
) -> Vec<(&'a [u32], &'a [u32])> {
    assert_eq!(prompts.len(), completions.len());
    prompts
        .iter()
        .zip(completions)
        .map(|(p, c)| (p.as_slice(), c.as_slice()))
        .collect()
}

/// Greedy continuations of `prompts`, `new_tokens` each (EOS ignored): their ids.
pub fn greedy_ids(model: &LanguageModel, prompts: &[Vec<u32>], new_tokens: u64) -> Vec<Vec<u32>> {
    model
        .generate(&lsp_model::GenerationRequest {
            prompts,
            sampling: &lsp_model::SamplingConfig::greedy(new_tokens),
            repeats: 1,
            seed: 0,
            sequence_ids: None,
            ignore_eos: true,
        })
        .unwrap()
        .into_iter()
        .map(|g| g.ids)
        .collect()
}
