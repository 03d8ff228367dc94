//! Every decoder against the plain forward pass: each greedy token must be the
//! argmax of `Transformer::forward` over the prompt and the tokens before it, with
//! that forward's log-prob, for batches of 1, 7, 33 and 40 prompts of different
//! lengths (left padding), in f32 and bf16, and for prompts with a long shared start
//! (the judge's), which the prefill runs once.

mod common;

use common::fixture;
use lsp_model::{
    DecoderKind, DeviceKind, Dtype, GenerationRequest, LanguageModel, LoadOptions, Precision,
    SamplingConfig,
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

/// Generates greedily on `decoder` and checks every token against the forward: the
/// near-ties and the tokens generated.
fn check(
    model: &LanguageModel,
    decoder: DecoderKind,
    prompts: &[Vec<u32>],
    tol: &Tolerance,
) -> (usize, usize) {
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
            assert!(
                diff < tol.logprob,
                "{name}: log-prob of token {i} of prompt {}: {logprob} vs the forward's {want}",
                g.prompt_index
            );
        }
    }
    (ties, generations.iter().map(|g| g.ids.len()).sum())
}

fn load(name: &str, dtype: Dtype, device: DeviceKind) -> LanguageModel {
    load_with(name, dtype, Precision::F32, device)
}

fn load_with(name: &str, dtype: Dtype, precision: Precision, device: DeviceKind) -> LanguageModel {
    let options = LoadOptions {
        dtype,
        precision,
        device,
        trainable: false,
        allow_past_context: false,
    };
    LanguageModel::load(&fixture(name), options).unwrap()
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
        let (mut ties, mut tokens) = check(model, decoder, &judged(model, 7), tol);
        for batch in [1, 7, 33, 40] {
            let (t, n) = check(model, decoder, &prompts(model, batch), tol);
            (ties, tokens) = (ties + t, tokens + n);
        }
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
    // Past 8 with bf16 products, oneDNN's bf16 kernels where the CPU has bf16 units.
    let past = match lsp_model::decoder::bf16_units() {
        true => DecoderKind::Libtorch,
        false => DecoderKind::Cpu,
    };
    assert_eq!(choose(&mixed, 9), past);
    assert_eq!(choose(&mixed, 33), DecoderKind::Libtorch);
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
