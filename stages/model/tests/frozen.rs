//! Frozen models under mixed precision (the reference, a judge, a reward model) hold
//! their linear maps in bf16, the kind their passes compute them in, and compute what
//! the trainable model's passes compute from its f32 masters, bit for bit.

mod common;

use common::{fixture, greedy_ids, max_diff, paired, prompts, three_completions};
use lsp_model::{InferenceWeights, LanguageModel, LoadOptions, Precision};
use tch::{Kind, Tensor};

/// Fixture `name` under mixed precision (bf16 emulated where the CPU lacks it).
fn mixed(name: &str, trainable: bool) -> LanguageModel {
    let options = LoadOptions {
        trainable,
        precision: Precision::MixedBf16,
        emulate_bf16: true,
        ..LoadOptions::default()
    };
    LanguageModel::load(&fixture(name), options).unwrap()
}

/// Each variable's kind, by name.
fn kinds(model: &LanguageModel) -> Vec<(String, Kind)> {
    let mut out: Vec<(String, Kind)> = model
        .var_store()
        .variables()
        .into_iter()
        .map(|(n, v)| (n, v.kind()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Teacher-forced log-probs of the three prompts' completions, without gradient.
fn logprobs(model: &LanguageModel) -> Tensor {
    let (seqs, completions) = (prompts(model), three_completions());
    let weights = InferenceWeights::new(model.transformer());
    model
        .completion_logprobs_with(&weights, &paired(&seqs, &completions))
        .unwrap()
        .values
}

#[test]
fn frozen_models_under_mixed_precision_hold_bf16_maps_and_compute_what_the_policy_does() {
    // Tied and untied heads, biases (qwen2), a score head (the reward model), a frozen
    // copy of the policy.
    for name in ["tiny-llama", "tiny-llama3", "tiny-qwen2", "tiny-reward"] {
        let (policy, frozen) = (mixed(name, true), mixed(name, false));
        let copy = policy.frozen_copy().unwrap();
        for (model, what) in [(&frozen, "loaded frozen"), (&copy, "frozen copy")] {
            for (n, kind) in kinds(model) {
                let map = n.contains("_proj.") || n.starts_with("lm_head.");
                let want = if map { Kind::BFloat16 } else { Kind::Float };
                assert_eq!(kind, want, "{name}, {what}: {n}");
            }
        }
        assert!(kinds(&policy).iter().all(|(_, k)| *k == Kind::Float));

        let seqs = prompts(&policy);
        if name == "tiny-reward" {
            let scores = |m: &LanguageModel| m.score_sequences(&seqs).unwrap();
            assert_eq!(scores(&frozen), scores(&policy), "{name}: scores");
            assert_eq!(scores(&copy), scores(&policy), "{name}: copy's scores");
            continue;
        }
        let want = logprobs(&policy);
        assert_eq!(max_diff(&logprobs(&frozen), &want), 0.0, "{name}");
        assert_eq!(max_diff(&logprobs(&copy), &want), 0.0, "{name}: copy");
        // Decoding (the CPU decoder's bf16 panels at one sequence, libtorch's past
        // its bf16 batch limit) from the same maps: the same tokens.
        for batch in [1, 9] {
            let batch_prompts: Vec<Vec<u32>> = seqs.iter().cycle().take(batch).cloned().collect();
            assert_eq!(
                greedy_ids(&frozen, &batch_prompts, 10),
                greedy_ids(&policy, &batch_prompts, 10),
                "{name}, batch {batch}"
            );
        }
        // The autograd path over the model's own weights takes the bf16 maps as well
        // (its input cast to them), close to the policy's f32 products.
        let t = frozen.transformer();
        let ids = Tensor::from_slice(&seqs[0].iter().map(|&t| i64::from(t)).collect::<Vec<_>>())
            .unsqueeze(0);
        let logits = t.logits(&t.forward(&ids, &ids.ones_like(), None));
        assert_eq!(logits.kind(), Kind::Float, "{name}");
        let exact = policy.transformer();
        let moved = max_diff(
            &logits,
            &exact.logits(&exact.forward(&ids, &ids.ones_like(), None)),
        );
        assert!(
            moved > 0.0 && moved < 0.2,
            "{name}: logits moved by {moved}"
        );
    }
}

#[test]
fn an_adapter_on_a_frozen_model_merges_into_its_f32_maps() {
    // The maps are read back from the folder in f32 first: as on the trainable model.
    let (mut frozen, mut policy) = (mixed("tiny-llama", false), mixed("tiny-llama", true));
    let q_kind = |m: &LanguageModel| {
        kinds(m)
            .into_iter()
            .find(|(n, _)| n.ends_with("layers.0.self_attn.q_proj.weight"))
            .map(|(_, k)| k)
    };
    assert_eq!(q_kind(&frozen), Some(Kind::BFloat16), "before the adapter");
    for model in [&mut frozen, &mut policy] {
        model.load_adapter(&fixture("tiny-llama-lora")).unwrap();
    }
    assert_eq!(q_kind(&frozen), Some(Kind::Float));
    assert_eq!(max_diff(&logprobs(&frozen), &logprobs(&policy)), 0.0);
}
