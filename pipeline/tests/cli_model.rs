//! `pipeline generate` and `pipeline score` reproduce transformers' outputs on the
//! fixtures, and refuse what they cannot do with a clear message; `pipeline bench
//! --profile` says where a step's time went.

#[path = "../../tests/tests/common/deadline.rs"]
mod deadline;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deadline::Finish;

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn pipeline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(args)
        .finish()
}

fn reference(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name).join("reference.json")).unwrap())
        .unwrap()
}

#[test]
fn generate_json_matches_transformers_greedy() {
    let model = fixture("tiny-qwen2");
    let case = &reference("tiny-qwen2")["cases"][1];
    let out = pipeline(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--chat",
        case["prompt"].as_str().unwrap(),
        "--greedy",
        "--max-new-tokens",
        "16",
        "--json",
        "--threads",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["prompt_ids"], case["input_ids"]);
    assert_eq!(got["new_ids"], case["greedy_new_ids"]);
    assert_eq!(got["text"], case["greedy_text"]);
    assert_eq!(got["finish_reason"], "length");
    let got_lp = got["logprobs"].as_array().unwrap();
    let want_lp = case["greedy_logprobs"].as_array().unwrap();
    assert_eq!(got_lp.len(), want_lp.len());
    for (g, w) in got_lp.iter().zip(want_lp) {
        assert!((g.as_f64().unwrap() - w.as_f64().unwrap()).abs() < 1e-4);
    }
}

#[test]
fn sampling_is_reproducible_by_seed() {
    let model = fixture("tiny-llama");
    let run = |seed: &str| {
        let out = pipeline(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--chat",
            "Hi",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--top-k",
            "50",
            "--seed",
            seed,
            "--max-new-tokens",
            "12",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["new_ids"].clone()
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
}

#[test]
fn score_json_matches_transformers() {
    let model = fixture("tiny-reward");
    for case in reference("tiny-reward")["cases"].as_array().unwrap() {
        let out = pipeline(&[
            "score",
            "--model",
            model.to_str().unwrap(),
            "--instruction",
            case["instruction"].as_str().unwrap(),
            "--response",
            case["response"].as_str().unwrap(),
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let diff = (got["score"].as_f64().unwrap() - case["score"].as_f64().unwrap()).abs();
        assert!(diff < 1e-4, "score differs by {diff}");
    }
}

#[test]
fn wrong_models_and_settings_are_refused_clearly() {
    let reward = fixture("tiny-reward");
    let out = pipeline(&[
        "generate",
        "--model",
        reward.to_str().unwrap(),
        "--chat",
        "Hi",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is a reward model"), "{stderr}");

    let llama = fixture("tiny-llama");
    let out = pipeline(&[
        "score",
        "--model",
        llama.to_str().unwrap(),
        "--instruction",
        "a",
        "--response",
        "b",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is a causal LM, not a reward model"),
        "{stderr}"
    );

    let out = pipeline(&["generate", "--model", "/no/such", "--chat", "Hi"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        "error: loading /no/such: /no/such is not a folder: a model is a Hugging Face folder with config.json, tokenizer.json and model.safetensors"
    );

    let out = pipeline(&[
        "generate",
        "--model",
        llama.to_str().unwrap(),
        "--chat",
        "Hi",
        "--temperature",
        "1",
        "--top-p",
        "0",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("top_p: 0 is out of range"), "{stderr}");
}

/// `bench train-step --profile` on the tiny fixture in mixed precision (emulated where
/// the CPU has no bf16 units), two sequences of 16 tokens, with `args`: its output.
fn profiled_train_step(args: &[&str]) -> String {
    let tiny = fixture("tiny-llama");
    let mut all = vec![
        "bench",
        "train-step",
        "--model",
        tiny.to_str().unwrap(),
        "--batch",
        "2",
        "--seq-len",
        "16",
        "--runs",
        "1",
        "--precision",
        "mixed_bf16",
        "--emulate-bf16",
        "--profile",
        "1000",
    ];
    all.extend_from_slice(args);
    let out = pipeline(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("operator profile: "), "{text}");
    text
}

/// The calls of operator `name` in a profile's table by name.
fn profiled_calls(text: &str, name: &str) -> Option<u64> {
    let by_name = text.split("by operator and input shapes:").next().unwrap();
    by_name.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() >= 4 && fields[3..].join(" ") == name).then(|| fields[2].parse().unwrap())
    })
}

/// The tiny fixture's layers.
fn tiny_layers() -> u64 {
    let config = fixture("tiny-llama").join("config.json");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    config["num_hidden_layers"].as_u64().unwrap()
}

#[test]
fn bench_profile_shows_where_a_training_steps_time_went() {
    // Mixed precision on the CPU: every layer product is the fused linear node, whose
    // backward pass runs once per product and micro-batch; the vocabulary's softmax
    // (Rust, outside any libtorch operator) shows under its own name.
    let text = profiled_train_step(&[]);
    // Four products a layer (qkv, o, gate and up, down), two micro-batches of one.
    assert_eq!(
        profiled_calls(&text, "LinearBf16 (backward)"),
        Some(4 * tiny_layers() * 2),
        "{text}"
    );
    assert!(
        profiled_calls(&text, "aten::mm").is_some_and(|n| n > 0),
        "{text}"
    );
    assert!(
        profiled_calls(&text, "lsp::softmax_rows").is_some(),
        "{text}"
    );
    // Without the flag, no profile.
    let tiny = fixture("tiny-llama");
    let plain = pipeline(&[
        "bench",
        "logprobs",
        "--model",
        tiny.to_str().unwrap(),
        "--batch",
        "1",
        "--seq-len",
        "8",
        "--runs",
        "1",
    ]);
    assert!(plain.status.success());
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("operator profile"));
}

#[test]
fn bench_profile_sees_the_threads_of_sequences_parallelism() {
    // One micro-batch of two sequences split over two threads of our own, one pass
    // each: their operators are the profile's too.
    let text = profiled_train_step(&[
        "--micro-batch",
        "2",
        "--parallelism",
        "sequences",
        "--threads",
        "2",
    ]);
    assert!(
        text.contains("split over 2 thread(s) (parallelism sequences)"),
        "{text}"
    );
    assert_eq!(
        profiled_calls(&text, "LinearBf16 (backward)"),
        Some(4 * tiny_layers() * 2),
        "{text}"
    );
    assert!(
        profiled_calls(&text, "lsp::softmax_rows").is_some_and(|n| n >= 2),
        "{text}"
    );
}
