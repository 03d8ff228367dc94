//! LoRA against PEFT 0.21.2 (`tests/fixtures/tiny-llama-lora`, made by PEFT and
//! transformers, never by this project): logits and log-probs with the adapter on,
//! greedy tokens on every decoder (which decode on the merged weights), the base with
//! adapters off, the gradient of every factor, a saved adapter read back bit for bit
//! with PEFT's config fields, the merged folder, and adapters that do not fit refused.

mod common;

use common::{assert_digests_of_every_file, f64s, fixture, full_logits, max_diff, reference, u32s};
use lsp_model::{
    DecoderKind, GenerationRequest, InferenceWeights, LanguageModel, LoadOptions, LoraConfig,
    Precision, SamplingConfig,
};
use serde_json::Value;
use tch::{Kind, Tensor};

fn adapted(options: LoadOptions) -> LanguageModel {
    let mut model = LanguageModel::load(&fixture("tiny-llama"), options).unwrap();
    let config = model.load_adapter(&fixture("tiny-llama-lora")).unwrap();
    assert_eq!((config.r, config.alpha, config.rslora), (4, 8.0, false));
    model
}

fn table(v: &Value) -> Tensor {
    let rows: Vec<Tensor> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| Tensor::from_slice(&f64s(r)).to_kind(Kind::Float))
        .collect();
    Tensor::stack(&rows, 0)
}

#[test]
fn the_adapter_on_gives_pefts_logits_logprobs_and_greedy_tokens() {
    let model = adapted(LoadOptions::default());
    let merged = InferenceWeights::new(model.transformer());
    let base = model.base_view().unwrap();
    let plain = reference("tiny-llama");
    for (case, plain_case) in reference("tiny-llama-lora")["cases"]
        .as_array()
        .unwrap()
        .iter()
        .zip(plain["cases"].as_array().unwrap())
    {
        let ids = u32s(&plain_case["input_ids"]);
        let want = table(&case["logits_adapted"]);
        let diff = max_diff(&full_logits(&model, &ids), &want);
        assert!(diff < 1e-4, "adapter on: {diff}");
        // Adapters off: the base model's own logits.
        let diff = max_diff(&full_logits(&base, &ids), &table(&plain_case["logits"]));
        assert!(diff < 1e-4, "adapter off: {diff}");
        // Merged weights, the passes without gradient.
        let lp = model
            .completion_logprobs_with(&merged, &[(&ids[..1], &ids[1..])])
            .unwrap();
        let want = Tensor::from_slice(&f64s(&case["token_logprobs_adapted"])).to_kind(Kind::Float);
        let diff = max_diff(&lp.values, &want);
        assert!(diff < 1e-4, "merged log-probs: {diff}");
        // Greedy decoding on the merged weights, every decoder.
        for decoder in DecoderKind::ALL {
            let out = model
                .generate_on(
                    decoder,
                    &GenerationRequest {
                        prompts: std::slice::from_ref(&ids),
                        sampling: &SamplingConfig::greedy(16),
                        repeats: 1,
                        seed: 0,
                        sequence_ids: None,
                        ignore_eos: false,
                    },
                )
                .unwrap();
            assert_eq!(
                out[0].ids,
                u32s(&case["greedy_new_ids_adapted"]),
                "{}",
                decoder.name()
            );
        }
    }
}

#[test]
fn every_factors_gradient_is_pefts() {
    let options = LoadOptions {
        trainable: true,
        ..LoadOptions::default()
    };
    let model = adapted(options);
    let case = &reference("tiny-llama-lora")["gradient_case"];
    let ids = u32s(&case["input_ids"]);
    let start = case["completion_start"].as_u64().unwrap() as usize;
    assert_eq!(u32s(&case["completion_ids"]), ids[start..]);
    let grads = case["grads"].as_object().unwrap();
    let trained = model.trainable_variables();
    // Only the adapter trains: 2 factors on 7 maps of 2 layers.
    assert_eq!(trained.len(), 28);
    assert!(
        model
            .var_store()
            .variables()
            .values()
            .all(|t| !t.requires_grad())
    );
    let check = |how: &str| {
        for (name, t) in &trained {
            let key = name.replace(".weight", ".default.weight");
            let want = table(&grads[&key]);
            let scale = want.abs().max().double_value(&[]);
            let diff = max_diff(&t.grad(), &want);
            assert!(diff <= 1e-4 * scale, "{how} {name}: {diff} (scale {scale})");
            let _ = t.grad().zero_();
        }
    };
    // Through autograd, and through the training step's pass (its head's backward
    // written out).
    let pair = [(&ids[..start], &ids[start..])];
    let lp = model.completion_logprobs(&pair).unwrap();
    let loss = -lp.values.sum(Kind::Double);
    assert!((loss.double_value(&[]) - case["loss"].as_f64().unwrap()).abs() < 1e-3);
    loss.backward();
    check("autograd");
    let pass = model
        .training_logprobs(&model.training_weights(), &pair)
        .unwrap();
    (-pass.logprobs.values.sum(Kind::Float)).backward();
    pass.backward();
    check("training pass");

    // Under mixed precision the training pass stacks the casts (q and k in the
    // rotation's pair layout, B's rows with them): each factor's gradient stays
    // within bf16's rounding of PEFT's. A factor's rows out of place are off by ~100%.
    let mixed = adapted(LoadOptions {
        trainable: true,
        precision: Precision::MixedBf16,
        emulate_bf16: true,
        ..LoadOptions::default()
    });
    let pass = mixed
        .training_logprobs(&mixed.training_weights(), &pair)
        .unwrap();
    let loss = -pass.logprobs.values.sum(Kind::Float);
    // bf16 products and bf16 attention (scores and probabilities rounded): 0.089 off
    // on this completion's 74.29 (0.12%).
    assert!((loss.double_value(&[]) - case["loss"].as_f64().unwrap()).abs() < 0.15);
    loss.backward();
    pass.backward();
    for (name, t) in &mixed.trainable_variables() {
        let want = table(&grads[&name.replace(".weight", ".default.weight")]);
        let relative = (t.grad() - &want).norm().double_value(&[]) / want.norm().double_value(&[]);
        assert!(
            relative < 0.1,
            "mixed {name}: off by {relative:.4} (relative)"
        );
    }
}

#[test]
fn a_saved_adapter_loads_back_bit_for_bit_and_merges_into_a_plain_folder() {
    let model = adapted(LoadOptions::default());
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("adapter");
    let digests = model.save_adapter(&saved).unwrap();
    assert_digests_of_every_file(&saved, &digests);
    // PEFT's fields, as the fixture has them.
    let read = |p: std::path::PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    };
    let ours = read(saved.join("adapter_config.json"));
    let peft = read(fixture("tiny-llama-lora").join("adapter_config.json"));
    for field in [
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "use_rslora",
        "use_dora",
        "bias",
        "fan_in_fan_out",
        "init_lora_weights",
        "modules_to_save",
        "rank_pattern",
        "alpha_pattern",
    ] {
        assert_eq!(ours[field], peft[field], "{field}");
    }
    let targets = |v: &Value| {
        let mut t: Vec<String> = serde_json::from_value(v["target_modules"].clone()).unwrap();
        t.sort();
        t
    };
    assert_eq!(targets(&ours), targets(&peft));
    let mut again = LanguageModel::load(&fixture("tiny-llama"), LoadOptions::default()).unwrap();
    again.load_adapter(&saved).unwrap();
    for ((n, a), (m, b)) in model
        .adapter()
        .unwrap()
        .variables()
        .iter()
        .zip(again.adapter().unwrap().variables().iter())
    {
        assert_eq!(n, m);
        assert!(a.equal(b), "{n} changed on the way");
    }
    // The merged folder loads as a plain model with the adapted logits.
    let merged = dir.path().join("merged");
    let digests = model.save_merged(&merged).unwrap();
    assert_digests_of_every_file(&merged, &digests);
    let plain = LanguageModel::load(&merged, LoadOptions::default()).unwrap();
    let ids = u32s(&reference("tiny-llama")["cases"][0]["input_ids"]);
    let diff = max_diff(&full_logits(&plain, &ids), &full_logits(&model, &ids));
    assert!(diff < 1e-4, "merged: {diff}");
}

#[test]
fn adapters_that_do_not_fit_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let edit = |name: &str, change: &dyn Fn(&mut Value)| {
        let folder = dir.path().join(name);
        std::fs::create_dir_all(&folder).unwrap();
        let source = fixture("tiny-llama-lora");
        std::fs::copy(
            source.join("adapter_model.safetensors"),
            folder.join("adapter_model.safetensors"),
        )
        .unwrap();
        let mut config: Value = serde_json::from_str(
            &std::fs::read_to_string(source.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        change(&mut config);
        std::fs::write(folder.join("adapter_config.json"), config.to_string()).unwrap();
        let mut model =
            LanguageModel::load(&fixture("tiny-llama"), LoadOptions::default()).unwrap();
        model.load_adapter(&folder).unwrap_err().to_string()
    };
    let rank = edit("rank", &|c| c["r"] = 8.into());
    assert!(
        rank.contains("has shape [4, 64], this model's map needs [8, 64]"),
        "{rank}"
    );
    let fewer = edit("fewer", &|c| {
        c["target_modules"] = serde_json::json!(["q_proj"])
    });
    assert!(fewer.contains("fit no targeted map"), "{fewer}");
    let dora = edit("dora", &|c| c["use_dora"] = true.into());
    assert!(dora.contains("use_dora = true is not supported"), "{dora}");
    let unknown = edit("unknown", &|c| {
        c["target_modules"] = serde_json::json!(["wq"])
    });
    assert!(unknown.contains("\"wq\" is not one of q_proj"), "{unknown}");
    // A reward model (a score head) takes no causal-LM adapter.
    let mut reward = LanguageModel::load(&fixture("tiny-reward"), LoadOptions::default()).unwrap();
    let err = reward
        .load_adapter(&fixture("tiny-llama-lora"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("reward model"), "{err}");
}

#[test]
fn a_fresh_adapter_starts_as_the_base_and_mixed_precision_keeps_its_factors_f32() {
    let options = LoadOptions {
        trainable: true,
        precision: Precision::MixedBf16,
        emulate_bf16: true,
        ..LoadOptions::default()
    };
    let mut model = LanguageModel::load(&fixture("tiny-llama"), options).unwrap();
    let config = LoraConfig {
        r: 8,
        alpha: 16.0,
        target_modules: vec!["q_proj".into(), "down_proj".into()],
        ..LoraConfig::default()
    };
    model.attach_adapter(&config, 0).unwrap();
    let trained = model.trainable_variables();
    assert_eq!(trained.len(), 2 * 2 * 2);
    for (name, t) in &trained {
        assert_eq!(t.kind(), Kind::Float, "{name}");
        let zero = t.abs().max().double_value(&[]) == 0.0;
        // PEFT's start: A random within 1/√in, B zero.
        assert_eq!(zero, name.contains("lora_B"), "{name}");
        if name.contains("lora_A") {
            let bound = 1.0 / (t.size()[1] as f64).sqrt();
            let (lo, hi) = (t.min().double_value(&[]), t.max().double_value(&[]));
            assert!(
                -bound <= lo && hi < bound && hi - lo > bound,
                "{name}: {lo} {hi}"
            );
        }
    }
    // The draw follows the seed alone, not libtorch's generator.
    let again = |seed: u64| {
        let mut other = LanguageModel::load(&fixture("tiny-llama"), options).unwrap();
        tch::manual_seed(seed as i64 + 7);
        other.attach_adapter(&config, seed).unwrap();
        other.trainable_variables()
    };
    let same = again(0);
    for ((name, a), (_, b)) in trained.iter().zip(&same) {
        assert!(a.equal(b), "{name}");
    }
    let other = again(1);
    let differ = trained
        .iter()
        .zip(&other)
        .filter(|(_, (name, _))| name.contains("lora_A"))
        .all(|((_, a), (_, b))| !a.equal(b));
    assert!(differ, "another seed, other factors");
    let ids = u32s(&reference("tiny-llama")["cases"][0]["input_ids"]);
    let base = model.base_view().unwrap();
    assert!(full_logits(&model, &ids).equal(&full_logits(&base, &ids)));
    // A training pass through the bf16 casts reaches the f32 factors.
    let pass = model
        .training_logprobs(&model.training_weights(), &[(&ids[..4], &ids[4..])])
        .unwrap();
    (-pass.logprobs.values.sum(Kind::Float)).backward();
    pass.backward();
    for (name, t) in &trained {
        assert_eq!(t.grad().kind(), Kind::Float, "{name}");
        // B's gradient is nonzero (A's is zero while B is: ∂/∂A = scale·Bᵀ·…).
        if name.contains("lora_B") {
            assert!(t.grad().abs().max().double_value(&[]) > 0.0, "{name}");
        }
    }
}

#[test]
fn validate_checks_an_adapters_tensors_against_the_models_config_alone() {
    let folder = fixture("tiny-llama-lora");
    let spec = LanguageModel::inspect(&fixture("tiny-llama")).unwrap();
    let config = lsp_model::lora::check_adapter(&folder, &spec, None).unwrap();
    assert_eq!(config.r, 4);
    // A model of another width, or with fewer layers, does not fit.
    let narrow = lsp_model::ModelSpec {
        hidden_size: 32,
        ..spec.clone()
    };
    let err = lsp_model::lora::check_adapter(&folder, &narrow, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs [32, 4]"), "{err}");
    let shallow = lsp_model::ModelSpec {
        num_layers: 1,
        ..spec.clone()
    };
    let err = lsp_model::lora::check_adapter(&folder, &shallow, None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.1.") && err.contains("fits no targeted map"),
        "{err}"
    );
    // The run's model.lora must agree with the adapter's own settings.
    let other = LoraConfig {
        r: 4,
        alpha: 16.0,
        ..LoraConfig::default()
    };
    let err = lsp_model::lora::check_adapter(&folder, &spec, Some(&other))
        .unwrap_err()
        .to_string();
    assert!(err.contains("alpha 16 vs 8"), "{err}");
}
