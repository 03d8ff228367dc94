//! Invariants of the engine: the KV cache changes nothing, padding changes nothing,
//! repeats share a prefill without changing results, seeds reproduce draws, stop
//! conditions end each sequence on its own, and a saved model loads back the same.

mod common;

use std::path::PathBuf;

use common::{
    assert_digests_of_every_file, fixture, full_logits, greedy_ids, load, max_diff, paired,
    prompts, three_completions,
};
use lsp_model::{
    Dtype, FinishReason, GenerationRequest, LanguageModel, LoadOptions, Precision, SamplingConfig,
    WholeAttention,
};
use tch::{Kind, Tensor};

#[test]
fn kv_cache_matches_full_forward() {
    for name in ["tiny-llama", "tiny-llama3", "tiny-qwen2"] {
        let model = load(name);
        let ids = &prompts(&model)[0];
        let full = full_logits(&model, ids);
        let t = model.transformer();
        let n = ids.len() as i64;
        let ids64: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
        let all = Tensor::from_slice(&ids64).view([1, n]);
        let mask = Tensor::ones([1, n], (Kind::Int64, tch::Device::Cpu));
        let mut cache = t.new_cache(1, n);
        let prefix = 10;
        let stepped = tch::no_grad(|| {
            let mut parts = vec![t.logits(&t.forward(
                &all.narrow(1, 0, prefix),
                &mask.narrow(1, 0, prefix),
                Some(&mut cache),
            ))];
            // Two tokens at once, then one at a time.
            parts.push(t.logits(&t.forward(
                &all.narrow(1, prefix, 2),
                &mask.narrow(1, 0, prefix + 2),
                Some(&mut cache),
            )));
            for i in prefix + 2..n {
                parts.push(t.logits(&t.forward(
                    &all.narrow(1, i, 1),
                    &mask.narrow(1, 0, i + 1),
                    Some(&mut cache),
                )));
            }
            Tensor::cat(&parts, 1).squeeze_dim(0)
        });
        assert_eq!(cache.len(), n);
        let diff = max_diff(&stepped, &full);
        assert!(diff < 1e-4, "{name}: cached logits differ by {diff}");
    }
}

#[test]
fn padded_batch_gives_each_sequence_its_own_result() {
    let model = load("tiny-qwen2");
    let prompts = prompts(&model);
    let completions: Vec<Vec<u32>> = vec![vec![5, 6, 7, 8, 9], vec![10], vec![11, 12, 13]];
    let pairs: Vec<(&[u32], &[u32])> = prompts
        .iter()
        .zip(&completions)
        .map(|(p, c)| (p.as_slice(), c.as_slice()))
        .collect();
    let batched = tch::no_grad(|| model.completion_logprobs(&pairs)).unwrap();
    assert_eq!(batched.lengths, [5, 1, 3]);
    let batched = batched.to_vecs().unwrap();
    for (i, pair) in pairs.iter().enumerate() {
        let alone = tch::no_grad(|| model.completion_logprobs(&[*pair])).unwrap();
        let alone = &alone.to_vecs().unwrap()[0];
        for (a, b) in alone.iter().zip(&batched[i]) {
            assert!((a - b).abs() < 1e-4, "sequence {i}: {a} vs {b}");
        }
    }
    // Greedy generation: the left-padded batch equals each prompt alone.
    let together = greedy_ids(&model, &prompts, 12);
    for (i, p) in prompts.iter().enumerate() {
        let alone = greedy_ids(&model, std::slice::from_ref(p), 12);
        assert_eq!(alone[0], together[i], "prompt {i}");
    }
}

#[test]
fn repeats_share_a_prefill_and_seeds_reproduce_draws() {
    let model = load("tiny-llama");
    let prompts = prompts(&model);
    let greedy = SamplingConfig::greedy(8);
    let run = |sampling: &SamplingConfig, repeats: usize, seed: u64| {
        model
            .generate(&GenerationRequest {
                prompts: &prompts,
                sampling,
                repeats,
                seed,
                sequence_ids: None,
                ignore_eos: true,
            })
            .unwrap()
    };
    let once = run(&greedy, 1, 0);
    let thrice = run(&greedy, 3, 0);
    assert_eq!(thrice.len(), 9);
    for (i, g) in thrice.iter().enumerate() {
        assert_eq!(g.prompt_index, i / 3);
        assert_eq!(g.ids, once[i / 3].ids);
    }
    let free = SamplingConfig {
        max_new_tokens: 8,
        ..SamplingConfig::default()
    };
    let a = run(&free, 4, 11);
    let b = run(&free, 4, 11);
    let c = run(&free, 4, 12);
    let ids = |gs: &[lsp_model::Generation]| gs.iter().map(|g| g.ids.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&a), ids(&b));
    assert_ne!(ids(&a), ids(&c));
    // Four answers to the same prompt at temperature 1 are not all the same.
    assert!(a[..4].iter().any(|g| g.ids != a[0].ids));
    // Sampling log-probs are the model's own: teacher forcing gives them back.
    let forced = tch::no_grad(|| model.completion_logprobs(&[(&prompts[1], &a[5].ids)]))
        .unwrap()
        .to_vecs()
        .unwrap();
    for (x, y) in forced[0].iter().zip(&a[5].logprobs) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
}

#[test]
fn a_sequences_draws_depend_on_its_id_not_on_its_batch() {
    // As a worker of a sharded run samples only its own queries: sequences 4, 3 and 9
    // (prompt-major: 0–4 answer prompt 0, 5–9 prompt 1) sampled on their own give what
    // they gave among ten, and another id gives other tokens.
    let model = load("tiny-llama");
    let prompts = prompts(&model);
    let free = SamplingConfig {
        max_new_tokens: 12,
        ..SamplingConfig::default()
    };
    let run = |prompts: &[Vec<u32>], repeats: usize, ids: &[u64]| {
        model
            .generate(&GenerationRequest {
                prompts,
                sampling: &free,
                repeats,
                seed: 5,
                sequence_ids: Some(ids),
                ignore_eos: true,
            })
            .unwrap()
    };
    let ten: Vec<u64> = (0..10).collect();
    let all = run(&prompts[..2], 5, &ten);
    let alone = run(&prompts[..1], 2, &[4, 3]);
    assert_eq!(alone[0].ids, all[4].ids);
    assert_eq!(alone[1].ids, all[3].ids);
    let second = run(&prompts[1..2], 1, &[9]);
    assert_eq!(second[0].ids, all[9].ids);
    let other = run(&prompts[1..2], 1, &[10]);
    assert_ne!(other[0].ids, all[9].ids);
    // Ids must cover every sequence.
    let err = model
        .generate(&GenerationRequest {
            prompts: &prompts[..1],
            sampling: &free,
            repeats: 2,
            seed: 5,
            sequence_ids: Some(&[1]),
            ignore_eos: true,
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("1 sequence ids for 2 sequences"),
        "{err}"
    );
}

#[test]
fn each_sequence_stops_on_its_own() {
    let model = load("tiny-llama");
    let prompts = prompts(&model);
    let greedy = SamplingConfig::greedy(16);
    let base = model
        .generate(&GenerationRequest {
            prompts: &prompts,
            sampling: &greedy,
            repeats: 1,
            seed: 0,
            sequence_ids: None,
            ignore_eos: true,
        })
        .unwrap();
    assert!(
        base.iter()
            .all(|g| g.finish_reason == FinishReason::Length && g.ids.len() == 16)
    );
    // A stop string taken from the middle of the first continuation ends it there;
    // the others run on to max_new_tokens unless they contain it too.
    let text = &base[0].text;
    let stop: String = text.chars().skip(4).take(3).collect();
    let with_stop = SamplingConfig {
        stop: vec![stop.clone()],
        ..greedy.clone()
    };
    let out = model
        .generate(&GenerationRequest {
            prompts: &prompts,
            sampling: &with_stop,
            repeats: 1,
            seed: 0,
            sequence_ids: None,
            ignore_eos: true,
        })
        .unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::Stop);
    assert!(out[0].ids.len() < 16);
    assert_eq!(out[0].ids[..], base[0].ids[..out[0].ids.len()]);
    assert!(text.starts_with(&out[0].text) && !out[0].text.contains(&stop));
    for (o, b) in out.iter().zip(&base).skip(1) {
        if !b.text.contains(&stop) {
            assert_eq!(o.ids, b.ids);
            assert_eq!(o.finish_reason, FinishReason::Length);
        }
    }
}

#[test]
fn eos_ends_a_sequence_and_is_left_out_of_its_text() {
    let model = load("tiny-llama");
    let prompt = model.tokenizer().chat_prompt("Hi").unwrap();
    // Greedy's first token, declared the only EOS for this run via a copy whose
    // generation_config names it.
    let first = model
        .generate(&GenerationRequest {
            prompts: std::slice::from_ref(&prompt),
            sampling: &SamplingConfig::greedy(3),
            repeats: 1,
            seed: 0,
            sequence_ids: None,
            ignore_eos: true,
        })
        .unwrap()[0]
        .ids
        .clone();
    let dir = tempfile::tempdir().unwrap();
    model.save(dir.path()).unwrap();
    let generation = format!("{{\"eos_token_id\": [{}]}}", first[1]);
    std::fs::write(dir.path().join("generation_config.json"), generation).unwrap();
    let copy = LanguageModel::load(dir.path(), LoadOptions::default()).unwrap();
    assert!(copy.eos_token_ids().contains(&first[1]));
    let out = copy
        .generate(&GenerationRequest {
            prompts: std::slice::from_ref(&prompt),
            sampling: &SamplingConfig::greedy(10),
            repeats: 1,
            seed: 0,
            sequence_ids: None,
            ignore_eos: false,
        })
        .unwrap();
    assert_eq!(out[0].finish_reason, FinishReason::Eos);
    assert_eq!(out[0].ids, first[..2]);
    assert_eq!(
        out[0].text,
        copy.tokenizer().decode(&first[..1], false).unwrap()
    );
}

#[test]
fn saved_model_loads_back_with_the_same_logits() {
    for name in ["tiny-llama", "tiny-llama3", "tiny-qwen2"] {
        let model = load(name);
        let dir = tempfile::tempdir().unwrap();
        let digests = model.save(dir.path()).unwrap();
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(dir.path().join(file).is_file(), "{name}: {file} not saved");
        }
        assert_digests_of_every_file(dir.path(), &digests);
        // The same tensor names and shapes as the source checkpoint (a tied head is not
        // written, as transformers does not write it).
        let shapes = |path: PathBuf| {
            let mut v: Vec<_> = Tensor::read_safetensors(path)
                .unwrap()
                .into_iter()
                .map(|(n, t)| (n, t.size()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            shapes(dir.path().join("model.safetensors")),
            shapes(fixture(name).join("model.safetensors")),
            "{name}"
        );
        let back = LanguageModel::load(dir.path(), LoadOptions::default()).unwrap();
        let ids = &prompts(&model)[1];
        let diff = max_diff(&full_logits(&model, ids), &full_logits(&back, ids));
        assert_eq!(diff, 0.0, "{name}");
    }
}

#[test]
fn reference_copy_is_frozen_and_equal_and_policy_takes_gradients() {
    let options = LoadOptions {
        trainable: true,
        ..LoadOptions::default()
    };
    let policy = LanguageModel::load(&fixture("tiny-llama"), options).unwrap();
    let reference = policy.frozen_copy().unwrap();
    let ids = &prompts(&policy)[1];
    assert_eq!(
        max_diff(&full_logits(&policy, ids), &full_logits(&reference, ids)),
        0.0
    );
    let pair = [(&ids[..3], &ids[3..])];
    let lp = policy.completion_logprobs(&pair).unwrap();
    assert!(lp.values.requires_grad());
    lp.sums().sum(Kind::Float).backward();
    let grads = policy.var_store().trainable_variables();
    assert!(grads.iter().all(|v| v.grad().defined()));
    assert!(
        !reference
            .completion_logprobs(&pair)
            .unwrap()
            .values
            .requires_grad()
    );
    let frozen = reference.var_store().variables();
    assert!(frozen.values().all(|v| !v.requires_grad()));
}

#[test]
fn bf16_runs_close_to_f32_and_saves_as_f32() {
    let f32_model = load("tiny-llama");
    let options = LoadOptions {
        dtype: Dtype::Bf16,
        ..LoadOptions::default()
    };
    let bf16 = LanguageModel::load(&fixture("tiny-llama"), options).unwrap();
    let ids = &prompts(&f32_model)[0];
    let a = full_logits(&f32_model, ids);
    let b = full_logits(&bf16, ids).to_kind(Kind::Float);
    // bf16 keeps ~3 significant digits: logits of magnitude ~5 drift by a few
    // hundredths on average, and the greedy choice rarely changes.
    let diff = max_diff(&a, &b);
    let mean = (&a - &b).abs().mean(Kind::Float).double_value(&[]);
    assert!(
        diff > 0.0 && diff < 0.5 && mean < 0.05,
        "bf16 logits differ by {diff} (mean {mean})"
    );
    let agree = a
        .argmax(-1, false)
        .eq_tensor(&b.argmax(-1, false))
        .to_kind(Kind::Float)
        .mean(Kind::Float);
    assert!(agree.double_value(&[]) > 0.9);
    let dir = tempfile::tempdir().unwrap();
    bf16.save(dir.path()).unwrap();
    let tensors = Tensor::read_safetensors(dir.path().join("model.safetensors")).unwrap();
    assert!(tensors.iter().all(|(_, t)| t.kind() == Kind::Float));
}

#[test]
fn packed_rows_give_the_logprobs_and_gradients_of_each_pair_in_full() {
    let options = LoadOptions {
        trainable: true,
        ..LoadOptions::default()
    };
    let policy = LanguageModel::load(&fixture("tiny-llama"), options).unwrap();
    let prompts = prompts(&policy);
    let (a, b, c) = (&prompts[1], &prompts[0], &prompts[2]);
    assert!(a.len() < b.len() && b.len() < c.len());
    let completions: Vec<Vec<u32>> = vec![
        vec![5, 9, 13, 2],
        vec![7],
        vec![11, 3, 3],
        vec![4, 8],
        vec![],
        vec![6, 6, 1, 12, 2],
    ];
    // Three answers to prompt a (different lengths) and an empty one, two to the
    // longer prompt b, an empty one to c: the prompts run together, padded.
    let pairs: Vec<(&[u32], &[u32])> = vec![
        (a, &completions[0]),
        (b, &completions[3]),
        (a, &completions[1]),
        (c, &completions[4]),
        (a, &completions[2]),
        (b, &completions[5]),
        (a, &completions[4]),
    ];
    let params = policy.var_store().trainable_variables();
    let gradients = |run: &dyn Fn() -> Tensor| -> (Vec<f32>, Vec<Tensor>) {
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        let values = run();
        values.sum(Kind::Float).backward();
        let flat = Vec::<f32>::try_from(&values.detach()).unwrap();
        (flat, params.iter().map(|p| p.grad().copy()).collect())
    };
    // One call: the prompts a and b run once each, in packed rows.
    let (shared, shared_grads) = gradients(&|| policy.completion_logprobs(&pairs).unwrap().values);
    // Each pair alone, as the plain causal forward over prompt and completion, its
    // log-softmax at the completion's tokens.
    let t = policy.transformer();
    let (alone, alone_grads) = gradients(&|| {
        let parts: Vec<Tensor> = pairs
            .iter()
            .filter(|(_, c)| !c.is_empty())
            .map(|(p, c)| {
                let ids: Vec<i64> = p.iter().chain(c.iter()).map(|&x| i64::from(x)).collect();
                let n = ids.len() as i64;
                let ids = Tensor::from_slice(&ids).view([1, n]);
                let logits = t.logits(&t.forward(&ids, &ids.ones_like(), None));
                let targets = ids.narrow(1, p.len() as i64, c.len() as i64);
                logits
                    .narrow(1, p.len() as i64 - 1, c.len() as i64)
                    .log_softmax(-1, Kind::Float)
                    .gather(2, &targets.unsqueeze(-1), false)
                    .view([-1])
            })
            .collect();
        Tensor::cat(&parts, 0)
    });
    assert_eq!(shared.len(), 4 + 2 + 1 + 3 + 5);
    for (x, y) in shared.iter().zip(&alone) {
        assert!((x - y).abs() < 1e-4, "{x} vs {y}");
    }
    for (g, h) in shared_grads.iter().zip(&alone_grads) {
        let scale = h.abs().max().double_value(&[]).max(1e-6);
        let diff = (g - h).abs().max().double_value(&[]);
        assert!(
            diff <= 1e-3 * scale,
            "gradient differs by {diff} (scale {scale})"
        );
    }
}

#[test]
fn training_logprobs_give_autograds_values_and_gradients() {
    // Tied (tiny-llama) and untied (tiny-llama3) output heads; shared and distinct
    // prompts; a loss that weighs each token differently.
    for name in ["tiny-llama", "tiny-llama3"] {
        let options = LoadOptions {
            trainable: true,
            ..LoadOptions::default()
        };
        let policy = LanguageModel::load(&fixture(name), options).unwrap();
        let prompts = prompts(&policy);
        // The last completion is long enough that the head runs in several chunks.
        let long: Vec<u32> = (0..150).map(|i| (i * 7 + 3) % 300).collect();
        let completions: Vec<Vec<u32>> =
            vec![vec![5, 9, 13, 2], vec![7], vec![11, 3, 3], vec![], long];
        let pairs: Vec<(&[u32], &[u32])> = vec![
            (&prompts[1], &completions[0]),
            (&prompts[0], &completions[2]),
            (&prompts[1], &completions[1]),
            (&prompts[2], &completions[3]),
            (&prompts[2], &completions[4]),
        ];
        let weights: Vec<f32> = (0..158)
            .map(|i| ((i * 37) % 11) as f32 / 4.0 - 1.0)
            .collect();
        let weights = Tensor::from_slice(&weights);
        let mut params: Vec<(String, Tensor)> =
            policy.var_store().variables().into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let grads = || -> Vec<Tensor> {
            let out = params.iter().map(|(_, p)| p.grad().copy()).collect();
            for (_, p) in &params {
                let _ = p.grad().zero_();
            }
            out
        };
        // The written-out backward first, while no gradient exists yet.
        let pass = policy
            .training_logprobs(&policy.training_weights(), &pairs)
            .unwrap();
        (&pass.logprobs.values * &weights)
            .sum(Kind::Float)
            .backward();
        let values = pass.logprobs.values.detach();
        let lengths = pass.logprobs.lengths.clone();
        // The entropy at each completion position, against the full forward's
        // softmax by hand: −Σ p·log p.
        let entropy = Vec::<f32>::try_from(&pass.entropy).unwrap();
        let mut at = 0;
        for (prompt, completion) in &pairs {
            let seq = [*prompt, *completion].concat();
            let log_p = full_logits(&policy, &seq).log_softmax(-1, Kind::Double);
            for k in 0..completion.len() {
                let row = log_p.get((prompt.len() + k - 1) as i64);
                let by_hand = -(row.exp() * &row).sum(Kind::Double).double_value(&[]);
                assert!(
                    (entropy[at] as f64 - by_hand).abs() < 1e-4,
                    "{name}: {} vs {by_hand}",
                    entropy[at]
                );
                at += 1;
            }
        }
        assert_eq!(at, entropy.len());
        pass.backward();
        let got = grads();
        let reference = policy.completion_logprobs(&pairs).unwrap();
        (&reference.values * &weights).sum(Kind::Float).backward();
        let expected = grads();
        assert_eq!(lengths, reference.lengths);
        assert!(max_diff(&values, &reference.values.detach()) < 1e-5);
        for ((g, h), (param, _)) in got.iter().zip(&expected).zip(&params) {
            let scale = h.abs().max().double_value(&[]).max(1e-6);
            let diff = max_diff(g, h);
            assert!(
                diff <= 1e-4 * scale,
                "{name} {param}: gradient differs by {diff} (scale {scale})"
            );
        }
    }
}

/// Fixture `name` loaded twice, in f32 and in mixed bf16.
fn f32_and_mixed(name: &str, trainable: bool) -> (LanguageModel, LanguageModel) {
    let load = |precision| {
        let options = LoadOptions {
            trainable,
            precision,
            emulate_bf16: true,
            ..LoadOptions::default()
        };
        LanguageModel::load(&fixture(name), options).unwrap()
    };
    (load(Precision::F32), load(Precision::MixedBf16))
}

#[test]
fn mixed_precision_training_follows_f32_with_gradients_in_the_f32_masters() {
    // The same weights trained in f32 and in mixed bf16: one set of casts for two
    // micro-batches (the gradient accumulates through them into the masters), tied
    // and untied heads; the second micro-batch's two pairs share a prompt (computed
    // once, its keys and values repeated through the cache). bf16 products move the
    // log-probs by about 1e-2 and each gradient by a few percent; the masters and
    // their gradients stay f32.
    for name in ["tiny-llama", "tiny-llama3"] {
        let (exact, mixed) = f32_and_mixed(name, true);
        let mut prompts = prompts(&exact);
        prompts.push(prompts[2].clone());
        let mut completions = three_completions();
        completions.push(vec![4, 6, 8]);
        let pairs = paired(&prompts, &completions);
        let run = |policy: &LanguageModel| -> (Vec<f32>, Vec<(String, Tensor)>) {
            let weights = policy.training_weights();
            let mut values = Vec::new();
            for micro in [&pairs[..2], &pairs[2..]] {
                let pass = policy.training_logprobs(&weights, micro).unwrap();
                (-pass.logprobs.values.sum(Kind::Float)).backward();
                values.extend(Vec::<f32>::try_from(&pass.logprobs.values.detach()).unwrap());
                pass.backward();
            }
            let mut grads: Vec<(String, Tensor)> = policy
                .var_store()
                .variables()
                .into_iter()
                .map(|(n, p)| {
                    assert_eq!(p.kind(), Kind::Float, "{name} {n}: master weight");
                    assert_eq!(p.grad().kind(), Kind::Float, "{name} {n}: master gradient");
                    (n, p.grad().copy())
                })
                .collect();
            grads.sort_by(|a, b| a.0.cmp(&b.0));
            (values, grads)
        };
        let (lp_exact, grads_exact) = run(&exact);
        let (lp_mixed, grads_mixed) = run(&mixed);
        let moved = lp_exact
            .iter()
            .zip(&lp_mixed)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        // Measured: 0.100 and 0.056 on these fixtures (near-uniform logits), as the
        // passes without gradient below.
        assert!(
            moved > 1e-6 && moved < 0.2,
            "{name}: log-probs moved by {moved} (0: the products did not run in bf16)"
        );
        // The training pass computes what the mixed pass without gradient does (the
        // reference's log-probs): the same stacked bf16 products, SwiGLU in bf16, once
        // attention runs the same way. A training pass on the CPU runs AVX512-BF16's
        // dot products with the softmax in f32 where the CPU has them and no AMX tiles
        // (heads of 16 here), else the centred bf16 products; a pass without gradient
        // runs libtorch's fused bf16 attention where the CPU has AMX tiles, else what
        // a training pass runs.
        let without_gradient = |inference: &lsp_model::InferenceWeights<'_>| -> f32 {
            [&pairs[..2], &pairs[2..]]
                .into_iter()
                .flat_map(|micro| {
                    let lp = mixed.completion_logprobs_with(inference, micro).unwrap();
                    Vec::<f32>::try_from(&lp.values).unwrap()
                })
                .zip(&lp_mixed)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let inference = || lsp_model::InferenceWeights::new(mixed.transformer());
        let (bf16_units, amx) = (
            lsp_model::decoder::bf16_units(),
            lsp_model::decoder::amx_tiles(),
        );
        let trained = match bf16_units && !amx {
            true => WholeAttention::Dots,
            false => WholeAttention::Centered,
        };
        let apart = without_gradient(&inference().with_attention(trained));
        assert!(
            apart < 1e-4,
            "{name}: the training pass is {apart} away from the pass without gradient"
        );
        let centred = without_gradient(&inference().with_attention(WholeAttention::Centered));
        let fused = WholeAttention::FusedIn(Kind::BFloat16);
        let in_bf16 = without_gradient(&inference().with_attention(fused));
        // Measured: 0.043 and 0.034 on these fixtures (apart: 0, the same operators).
        assert!(
            in_bf16 > 1e-6 && in_bf16 < 0.1,
            "{name}: libtorch's bf16 attention moves the log-probs by {in_bf16}"
        );
        // The dot products with the softmax in f32, where the CPU has AVX512-BF16,
        // against the centred products (whichever of them trained, the other moves the
        // log-probs by bf16's rounding of the scores and probabilities).
        let dots =
            bf16_units.then(|| without_gradient(&inference().with_attention(WholeAttention::Dots)));
        if let Some(dots) = dots {
            let other = dots.max(centred);
            assert!(
                other > 1e-6 && other < 0.1,
                "{name}: the other bf16 attention moves the log-probs by {other}"
            );
        }
        let default = without_gradient(&inference());
        let chosen = match (amx, dots) {
            (true, _) => in_bf16,
            (false, Some(dots)) => dots,
            (false, None) => centred,
        };
        assert_eq!(
            default, chosen,
            "{name}: the attention chosen without gradient"
        );
        for ((param, g), (_, h)) in grads_mixed.iter().zip(&grads_exact) {
            let norm = h.norm().double_value(&[]);
            if norm < 1e-6 {
                continue;
            }
            let relative = (g - h).norm().double_value(&[]) / norm;
            // Measured: 1.5–5.3% on these fixtures (hidden 64, near-uniform logits); a
            // gradient lost or sent to the wrong place is off by 100%.
            assert!(
                relative < 0.1,
                "{name} {param}: gradient off by {relative:.4} (relative)"
            );
        }
    }
}

#[test]
fn mixed_precision_passes_without_gradient_keep_an_f32_residual_stream() {
    // Without gradient, mixed precision runs SwiGLU and attention's output in bf16
    // between their products; each product's output joins an f32 residual stream.
    // Were the stream rounded to bf16, the hidden states would come back bf16.
    for name in ["tiny-llama", "tiny-llama3"] {
        let (exact, mixed) = f32_and_mixed(name, false);
        let prompts = prompts(&exact);
        let completions = three_completions();
        let pairs = paired(&prompts, &completions);
        let weights = lsp_model::InferenceWeights::new(mixed.transformer());
        let ids = Tensor::from_slice(&prompts[0].iter().map(|&t| i64::from(t)).collect::<Vec<_>>())
            .unsqueeze(0);
        let hidden = weights.forward(&ids, &ids.ones_like(), None);
        assert_eq!(hidden.kind(), Kind::Float, "{name}: hidden states");
        let mixed_lp = mixed.completion_logprobs_with(&weights, &pairs).unwrap();
        let exact_lp = exact.completion_logprobs(&pairs).unwrap();
        assert_eq!(mixed_lp.values.kind(), Kind::Float);
        let moved = (&mixed_lp.values - &exact_lp.values)
            .abs()
            .max()
            .double_value(&[]);
        // Measured: 0.100 and 0.056 on these fixtures (near-uniform logits), 0.090 and
        // 0.049 with SwiGLU in f32; SmolLM2's figures are in smollm2_parity.rs.
        assert!(
            moved > 1e-6 && moved < 0.2,
            "{name}: log-probs moved by {moved} (0: the products did not run in bf16)"
        );
    }
}

#[test]
fn mixed_precision_where_bf16_does_not_pay_computes_in_f32_unless_emulation_is_asked() {
    // On a CPU without bf16 units, where libtorch would emulate bf16 several times
    // slower than f32, or whose bf16 units are no faster than its f32 FMAs (an Intel
    // core without AMX), mixed_bf16's products run in f32: bit for bit what precision
    // f32 gives. Where bf16 pays, or with emulate_bf16, they run in bf16 and move the
    // log-probs. Whichever this machine is, the other side is `Products::resolve`'s
    // unit test.
    let load = |precision, emulate_bf16| {
        let options = LoadOptions {
            precision,
            emulate_bf16,
            ..LoadOptions::default()
        };
        LanguageModel::load(&fixture("tiny-llama"), options).unwrap()
    };
    let exact = load(Precision::F32, false);
    let prompts = prompts(&exact);
    let completions = three_completions();
    let pairs = paired(&prompts, &completions);
    let moved = |model: &LanguageModel| {
        // The passes without gradient of a run: the products in the products' kind.
        let weights = lsp_model::InferenceWeights::new(model.transformer());
        let lp = tch::no_grad(|| model.completion_logprobs_with(&weights, &pairs)).unwrap();
        let exact_weights = lsp_model::InferenceWeights::new(exact.transformer());
        let want = tch::no_grad(|| exact.completion_logprobs_with(&exact_weights, &pairs)).unwrap();
        (&lp.values - &want.values).abs().max().double_value(&[])
    };
    let units = lsp_model::decoder::bf16_products_pay();
    let plain = load(Precision::MixedBf16, false);
    let emulated = load(Precision::MixedBf16, true);
    assert_eq!(
        plain.options().products(),
        if units {
            lsp_model::Products::Bf16
        } else {
            lsp_model::Products::F32Fallback
        }
    );
    assert_eq!(plain.transformer().product_kind() == Kind::BFloat16, units);
    assert_eq!(emulated.transformer().product_kind(), Kind::BFloat16);
    match units {
        true => assert!(moved(&plain) > 1e-6, "bf16 products moved nothing"),
        false => assert_eq!(moved(&plain), 0.0, "the fallback is not f32"),
    }
    assert!(moved(&emulated) > 1e-6, "emulated bf16 moved nothing");
}
