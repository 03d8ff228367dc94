//! Every decoder against the plain forward pass: each greedy token must be the
//! argmax of `Transformer::forward` over the prompt and the tokens before it, with
//! that forward's log-prob, for batches of 1, 7, 33 and 40 prompts of different
//! lengths (left padding), in f32 and bf16, and for prompts with a long shared start
//! (the judge's), which the prefill runs once; and the CPU decoder's int8 and bf16
//! rollout weights, within their rounding.

mod common;

use common::fixture;
use lsp_model::{
    DecoderKind, DeviceKind, Dtype, GenerationRequest, LanguageModel, LoadOptions, Precision,
    RolloutWeights, SamplingConfig,
};
use tch::{Kind, Tensor};

const MODELS: [&str; 3] = ["tiny-llama", "tiny-llama3", "tiny-qwen2"];
const NEW_TOKENS: u64 = 8;

/// `n` chat prompts of different lengths (one to nine extra words each).
fn prompts(model: &LanguageModel, n: usize) -> Vec<Vec<u32>> {
    let words = "the sea keeps every colour of the sky and gives back none";
    let words: Vec<&str> = words.split(' ').collect();
    (0..n)
        .map(|i| {
            let text = format!("Question {i}: {}?", words[..1 + i % 9].join(" "));
            model.tokenizer().chat_prompt(&text).unwrap()
        })
        .collect()
}

/// Prompts that share a start of well over 32 tokens, as the judge's do.
fn judged(model: &LanguageModel, n: usize) -> Vec<Vec<u32>> {
    let rules = "Score the response with the additive scoring system described below, \
        one point per criterion met, and justify the score briefly in a few words.";
    (0..n)
        .map(|i| {
            let text = format!("{rules} Instruction: add {i} and {}.", i * 7);
            model.tokenizer().chat_prompt(&text).unwrap()
        })
        .collect()
}

/// How far a decoder may be from the forward pass: log-probs within `logprob`, and
/// a token other than the forward's argmax only where the forward's best log-prob
/// beats the chosen token's by less than `tie`.
struct Tolerance {
    logprob: f64,
    tie: f64,
}

/// f32: the bound, and no near-ties allowed.
const F32: Tolerance = Tolerance {
    logprob: 1e-4,
    tie: 0.0,
};

/// bf16 keeps about three significant digits, and the logits themselves are bf16
/// (a logit of 5 is rounded by up to 0.016): the cached and the full pass round
/// differently, so a log-prob moves by a few hundredths (on these tiny models, whose
/// logits are near-uniform: median 0.005–0.015, largest 0.11 over 2,112 tokens), and
/// a near-tie may flip (up to 3% of tokens).
const BF16: Tolerance = Tolerance {
    logprob: 0.15,
    tie: 0.15,
};

/// bf16 rollout weights against the f32 forward: the sampler rounds every weight and
/// every product's input to bf16, the forward nothing, so they differ by more than
/// two bf16 passes do ([`BF16`]). On these tiny models, measured: mean |Δ log-prob|
/// 0.016–0.018 per token, 2–3.5% of tokens near-ties that flip (704 per model), one
/// by 0.16.
const BF16_ROLLOUTS: Tolerance = Tolerance {
    logprob: 0.3,
    tie: 0.3,
};

/// int8 rollout weights (one scale per output row) round each weight by up to half a
/// step of its row's largest over 127, far coarser than bf16's three digits; the
/// prefill keeps the products' kind, the steps run int8. On these tiny models, whose
/// logits are near-uniform, measured: mean |Δ log-prob| 0.026–0.034 per token, the
/// largest under 0.2, and 2.4–6.7% of tokens near-ties that flip (704 per model).
/// [`int8_rollout_weights_decode_the_int8_rounded_model_exactly`] checks the int8
/// arithmetic itself at f32's tolerance.
const INT8: Tolerance = Tolerance {
    logprob: 0.5,
    tie: 0.5,
};

/// How a greedy generation compared with the forward pass.
#[derive(Debug, Default, Clone, Copy)]
struct Agreement {
    /// Tokens other than the forward's argmax (near-ties).
    ties: usize,
    /// Tokens generated.
    tokens: usize,
    /// Sum over the tokens of |log-prob − the forward's|.
    diff: f64,
}

impl std::ops::AddAssign for Agreement {
    fn add_assign(&mut self, other: Self) {
        self.ties += other.ties;
        self.tokens += other.tokens;
        self.diff += other.diff;
    }
}

/// Generates greedily on `decoder` and checks every token against the forward.
fn check(
    model: &LanguageModel,
    decoder: DecoderKind,
    prompts: &[Vec<u32>],
    tol: &Tolerance,
) -> Agreement {
    let name = format!(
        "{} on {} ({} prompts)",
        model.folder().display(),
        decoder.name(),
        prompts.len()
    );
    let generations = model
        .generate_on(
            decoder,
            &GenerationRequest {
                prompts,
                sampling: &SamplingConfig::greedy(NEW_TOKENS),
                repeats: 1,
                seed: 0,
                sequence_ids: None,
                ignore_eos: false,
            },
        )
        .unwrap();
    assert_eq!(generations.len(), prompts.len(), "{name}");
    let t = model.transformer();
    let device = model.device();
    let mut ties = 0;
    let mut total = 0.0;
    for g in &generations {
        assert!(!g.ids.is_empty(), "{name}");
        let prompt = &prompts[g.prompt_index];
        let ids: Vec<i64> = prompt.iter().chain(&g.ids).map(|&i| i64::from(i)).collect();
        let n = ids.len() as i64;
        let full = tch::no_grad(|| {
            let ids = Tensor::from_slice(&ids).view([1, n]).to_device(device);
            let mask = ids.ones_like();
            t.logits(&t.forward(&ids, &mask, None))
                .squeeze_dim(0)
                .to_kind(Kind::Float)
                .log_softmax(-1, Kind::Float)
        });
        for (i, (&token, &logprob)) in g.ids.iter().zip(&g.logprobs).enumerate() {
            let row = full.get(prompt.len() as i64 - 1 + i as i64);
            let best = row.argmax(0, false).int64_value(&[]);
            let want = row.double_value(&[i64::from(token)]);
            if best != i64::from(token) {
                let margin = row.double_value(&[best]) - want;
                assert!(
                    margin < tol.tie,
                    "{name}: token {i} of prompt {} is {token}, the forward's argmax {best} \
                     by {margin}",
                    g.prompt_index
                );
                ties += 1;
            }
            let diff = (want - f64::from(logprob)).abs();
            total += diff;
            assert!(
                diff < tol.logprob,
                "{name}: log-prob of token {i} of prompt {}: {logprob} vs the forward's {want}",
                g.prompt_index
            );
        }
    }
    Agreement {
        ties,
        tokens: generations.iter().map(|g| g.ids.len()).sum(),
        diff: total,
    }
}

/// [`check`] on the judge's shared prompts and on batches of 1, 7, 33 and 40.
fn check_batches(model: &LanguageModel, decoder: DecoderKind, tol: &Tolerance) -> Agreement {
    let mut seen = check(model, decoder, &judged(model, 7), tol);
    for batch in [1, 7, 33, 40] {
        seen += check(model, decoder, &prompts(model, batch), tol);
    }
    seen
}

fn load(name: &str, dtype: Dtype, device: DeviceKind) -> LanguageModel {
    load_with(name, dtype, Precision::F32, device)
}

fn load_with(name: &str, dtype: Dtype, precision: Precision, device: DeviceKind) -> LanguageModel {
    load_options(
        name,
        LoadOptions {
            dtype,
            precision,
            emulate_bf16: true,
            device,
            ..LoadOptions::default()
        },
    )
}

fn load_options(name: &str, options: LoadOptions) -> LanguageModel {
    LanguageModel::load(&fixture(name), options).unwrap()
}

/// `name` in f32 weights with `precision`, its rollouts on `rollout_weights`.
fn load_rollouts(
    name: &str,
    precision: Precision,
    rollout_weights: RolloutWeights,
) -> LanguageModel {
    load_options(
        name,
        LoadOptions {
            precision,
            emulate_bf16: true,
            rollout_weights,
            ..LoadOptions::default()
        },
    )
}

/// Every decoder that runs `model`, on every batch size and on shared prompts.
fn check_every_decoder(model: &LanguageModel, tol: &Tolerance) {
    let (kind, device) = model.transformer().kind_and_device();
    let decoders: Vec<DecoderKind> = DecoderKind::ALL
        .into_iter()
        .filter(|d| d.supports(kind, device))
        .collect();
    assert!(!decoders.is_empty());
    for decoder in decoders {
        let Agreement { ties, tokens, .. } = check_batches(model, decoder, tol);
        // Ties are rare: a decoder that disagreed often would not be this close.
        assert!(
            ties * 20 <= tokens,
            "{} on {}: {ties} near-ties in {tokens} tokens",
            model.folder().display(),
            decoder.name()
        );
    }
}

#[test]
fn every_decoder_gives_the_forwards_greedy_tokens_and_logprobs_in_f32() {
    tch::set_num_threads(2);
    for name in MODELS {
        check_every_decoder(&load(name, Dtype::F32, DeviceKind::Cpu), &F32);
    }
}

#[test]
fn every_decoder_gives_the_forwards_greedy_tokens_and_logprobs_in_bf16() {
    tch::set_num_threads(2);
    for name in MODELS {
        check_every_decoder(&load(name, Dtype::Bf16, DeviceKind::Cpu), &BF16);
    }
}

/// Mixed precision: f32 weights, bf16 products (the CPU decoder's bf16 panels, and
/// libtorch's bf16 products), against the f32 forward of the same weights.
#[test]
fn every_decoder_gives_the_forwards_greedy_tokens_and_logprobs_in_mixed_bf16() {
    tch::set_num_threads(2);
    for name in MODELS {
        let model = load_with(name, Dtype::F32, Precision::MixedBf16, DeviceKind::Cpu);
        assert_eq!(model.transformer().product_kind(), Kind::BFloat16);
        check_every_decoder(&model, &BF16);
    }
}

/// `model`'s linear maps and embedding (the tied output head) replaced by their
/// int8 rounding, row by row, as the CPU decoder's int8 panels hold them.
fn round_to_int8(model: &mut LanguageModel) {
    let _guard = tch::no_grad_guard();
    for (name, mut weight) in model.var_store_mut().variables() {
        if weight.dim() == 2 && !name.contains("norm") {
            let largest = weight.abs().amax([1], true);
            let scales = &largest / largest.full_like(127.0);
            let rounded = (&weight / &scales).round() * &scales;
            weight.copy_(&rounded);
        }
    }
}

/// The int8 path computes exactly the model whose weights are int8's rounding: the
/// CPU decoder with int8 rollout weights against the f32 forward of that model, at
/// f32's tolerance.
#[test]
fn int8_rollout_weights_decode_the_int8_rounded_model_exactly() {
    tch::set_num_threads(2);
    for name in MODELS {
        let mut model = load_rollouts(name, Precision::F32, RolloutWeights::Int8);
        round_to_int8(&mut model);
        check_batches(&model, DecoderKind::Cpu, &F32);
    }
}

/// Rollout weights of their own kind: the CPU decoder at every batch size (past 32
/// sequences too; bf16 ones beside bf16 products up to where the products' rule
/// hands over, [`the_choice_follows_dtype_device_and_batch`]), [`check_batches`]
/// within `tol`, at most one token in `per_tie` a near-tie; prints and returns the
/// mean |Δ log-prob| per token.
#[allow(clippy::print_stderr)] // The measured spread, for the tolerances' comments.
fn rollouts_on_the_cpu_decoder(
    model: &LanguageModel,
    tol: &Tolerance,
    per_tie: usize,
    at: &str,
) -> f64 {
    let transformer = model.transformer();
    let follow_products = transformer.product_kind() == Kind::BFloat16
        && transformer.rollout_weights() == RolloutWeights::Bf16;
    let batches: &[usize] = if follow_products {
        &[1, 8]
    } else {
        &[1, 9, 40]
    };
    for &batch in batches {
        assert_eq!(
            DecoderKind::choose(model.transformer(), batch),
            DecoderKind::Cpu,
            "{at}"
        );
    }
    let Agreement { ties, tokens, diff } = check_batches(model, DecoderKind::Cpu, tol);
    let mean = diff / tokens as f64;
    eprintln!("{at}: {ties} near-ties in {tokens} tokens, mean |Δ| {mean}");
    assert!(
        ties * per_tie <= tokens,
        "{at}: {ties} near-ties in {tokens} tokens"
    );
    mean
}

/// int8 rollout weights, weight-only (`int8`) and with the products' inputs quantized
/// too (`w8a8`): the CPU decoder at every batch size (past 32 sequences too), in f32
/// and under mixed precision, against the f32 forward of the same model.
#[test]
fn int8_rollout_weights_give_the_forwards_greedy_tokens_within_int8s_rounding() {
    tch::set_num_threads(2);
    for name in MODELS {
        for precision in [Precision::F32, Precision::MixedBf16] {
            let mut means = Vec::new();
            for weights in [RolloutWeights::Int8, RolloutWeights::W8a8] {
                let model = load_rollouts(name, precision, weights);
                assert_eq!(model.transformer().rollout_weights(), weights);
                let at = format!("{name} {precision:?} {weights:?}");
                let mean = rollouts_on_the_cpu_decoder(&model, &INT8, 10, &at);
                // int8 is in effect: the log-probs move by int8's rounding, not f32's.
                assert!(mean > 1e-3, "{at}: mean |Δ log-prob| {mean}");
                means.push(mean);
            }
            // w8a8's quantized inputs are in effect: its log-probs are not int8's.
            assert_ne!(means[0], means[1], "{name} {precision:?}");
        }
    }
}

/// bf16 rollout weights: the CPU decoder at every batch size (past 32 sequences too)
/// on bf16 panels whatever the products' kind, within bf16's rounding of the forward
/// — f32's (exact training beside bf16 sampling) or mixed precision's — and in f32
/// with bf16 in effect (the log-probs move by more than f32's rounding).
#[test]
fn bf16_rollout_weights_decode_in_bf16_whatever_the_products() {
    tch::set_num_threads(2);
    for name in MODELS {
        for precision in [Precision::F32, Precision::MixedBf16] {
            let model = load_rollouts(name, precision, RolloutWeights::Bf16);
            let tol = match precision {
                Precision::F32 => &BF16_ROLLOUTS,
                Precision::MixedBf16 => &BF16,
            };
            let at = format!("{name} {precision:?}");
            let mean = rollouts_on_the_cpu_decoder(&model, tol, 20, &at);
            if precision == Precision::F32 {
                assert!(mean > 1e-4, "{at}: mean |Δ log-prob| {mean}");
            }
        }
    }
}

/// Greedy tokens and log-probs of `prompts` on `decoder`.
fn greedy(
    model: &LanguageModel,
    decoder: DecoderKind,
    prompts: &[Vec<u32>],
) -> Vec<(Vec<u32>, Vec<f32>)> {
    let request = GenerationRequest {
        prompts,
        sampling: &SamplingConfig::greedy(NEW_TOKENS),
        repeats: 2,
        seed: 0,
        sequence_ids: None,
        ignore_eos: true,
    };
    let generations = model.generate_on(decoder, &request).unwrap();
    generations
        .into_iter()
        .map(|g| (g.ids, g.logprobs))
        .collect()
}

/// Every MLP weight scaled by 1.25 in place, as an optimizer step writes (the
/// tensors stay; their version counters move).
fn scale_mlps(model: &mut LanguageModel) {
    let _guard = tch::no_grad_guard();
    for (name, mut weight) in model.var_store_mut().variables() {
        if name.contains(".mlp.") {
            let _ = weight.g_mul_scalar_(1.25);
        }
    }
}

/// Generation keeps its stacked maps and packed panels between calls; a change made
/// to the weights in place must show in the very next generation, which decodes as
/// a model loaded with the changed weights does (same tokens, same log-probs), on
/// every decoder, in f32, mixed precision and with int8 and bf16 rollout weights. They go
/// when released, and when a training step's weights are made.
#[test]
fn kept_inference_weights_follow_a_change_in_place() {
    tch::set_num_threads(2);
    let settings = [
        (Precision::F32, RolloutWeights::Products),
        (Precision::MixedBf16, RolloutWeights::Products),
        (Precision::F32, RolloutWeights::Int8),
        (Precision::F32, RolloutWeights::W8a8),
        (Precision::F32, RolloutWeights::Bf16),
    ];
    for (precision, rollout_weights) in settings {
        let options = LoadOptions {
            precision,
            emulate_bf16: true,
            rollout_weights,
            ..LoadOptions::default()
        };
        for decoder in DecoderKind::ALL {
            let what = format!("{precision:?} {rollout_weights:?} on {}", decoder.name());
            let mut model = load_options("tiny-llama", options);
            let prompts = prompts(&model, 3);
            assert!(!model.transformer().keeps_inference_weights(), "{what}");
            let before = greedy(&model, decoder, &prompts);
            assert!(model.transformer().keeps_inference_weights(), "{what}");
            assert_eq!(
                greedy(&model, decoder, &prompts),
                before,
                "{what}: kept again"
            );

            scale_mlps(&mut model);
            let after = greedy(&model, decoder, &prompts);
            let mut fresh = load_options("tiny-llama", options);
            scale_mlps(&mut fresh);
            assert_eq!(
                after,
                greedy(&fresh, decoder, &prompts),
                "{what}: after the change"
            );
            assert_ne!(after, before, "{what}: the change shows");

            model.release_inference_weights();
            assert!(!model.transformer().keeps_inference_weights(), "{what}");
            assert_eq!(
                greedy(&model, decoder, &prompts),
                after,
                "{what}: made again"
            );
            drop(model.training_weights());
            assert!(!model.transformer().keeps_inference_weights(), "{what}");
        }
    }
}

#[test]
#[allow(clippy::print_stderr)] // The reason a GPU test did not run.
fn every_decoder_gives_the_forwards_greedy_tokens_and_logprobs_on_cuda() {
    if !tch::Cuda::is_available() {
        eprintln!("skipped: libtorch sees no CUDA device (a CPU build, or no GPU)");
        return;
    }
    for name in MODELS {
        check_every_decoder(&load(name, Dtype::F32, DeviceKind::Cuda), &F32);
        check_every_decoder(&load(name, Dtype::Bf16, DeviceKind::Cuda), &BF16);
    }
}

#[test]
fn the_choice_follows_dtype_device_and_batch() {
    let f32 = load("tiny-llama", Dtype::F32, DeviceKind::Cpu);
    let bf16 = load("tiny-llama", Dtype::Bf16, DeviceKind::Cpu);
    let mixed = load_with(
        "tiny-llama",
        Dtype::F32,
        Precision::MixedBf16,
        DeviceKind::Cpu,
    );
    let choose = |m: &LanguageModel, batch| DecoderKind::choose(m.transformer(), batch);
    assert_eq!(choose(&mixed, 8), DecoderKind::Cpu);
    // Past 8 with bf16 products, oneDNN's AMX kernels where the CPU has AMX tiles;
    // elsewhere the CPU decoder up to its most rows (bf16 dot products, or f32's
    // fallback).
    let (tiles, most) = (
        lsp_model::decoder::amx_tiles(),
        lsp_model::decoder::CpuDecoder::MAX_BATCH,
    );
    assert_eq!(most, 32);
    assert!(!tiles || lsp_model::decoder::bf16_units());
    assert_eq!(
        lsp_model::decoder::CpuDecoder::max_bf16_batch(),
        if tiles { 8 } else { most }
    );
    let past = if tiles {
        DecoderKind::Libtorch
    } else {
        DecoderKind::Cpu
    };
    assert_eq!(choose(&mixed, 9), past);
    assert_eq!(choose(&mixed, most), past);
    assert_eq!(choose(&mixed, most + 1), DecoderKind::Libtorch);
    // bf16 rollout weights beside bf16 products follow the products' rule; beside
    // f32 products, and int8 ones always, keep the CPU decoder's panels.
    let rollouts = |precision, weights| load_rollouts("tiny-llama", precision, weights);
    let bf16_mixed = rollouts(Precision::MixedBf16, RolloutWeights::Bf16);
    assert_eq!(choose(&bf16_mixed, 8), DecoderKind::Cpu);
    assert_eq!(choose(&bf16_mixed, 9), past);
    assert_eq!(choose(&bf16_mixed, most + 1), DecoderKind::Libtorch);
    for (precision, weights) in [
        (Precision::F32, RolloutWeights::Bf16),
        (Precision::MixedBf16, RolloutWeights::W8a8),
    ] {
        let model = rollouts(precision, weights);
        assert_eq!(choose(&model, most + 1), DecoderKind::Cpu, "{weights:?}");
    }
    assert_eq!(choose(&f32, 1), DecoderKind::Cpu);
    assert_eq!(choose(&f32, 32), DecoderKind::Cpu);
    assert_eq!(choose(&f32, 33), DecoderKind::Libtorch);
    assert_eq!(choose(&bf16, 1), DecoderKind::Libtorch);
    // The CPU decoder refuses what it does not run, with the way out.
    let err = bf16
        .generate_on(
            DecoderKind::Cpu,
            &GenerationRequest {
                prompts: &prompts(&bf16, 1),
                sampling: &SamplingConfig::greedy(2),
                repeats: 1,
                seed: 0,
                sequence_ids: None,
                ignore_eos: false,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("libtorch decoder"), "{err}");
}
