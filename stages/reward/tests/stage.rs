//! The reward stage on hand-built answer batches: the reward model reproduces
//! transformers' scores, the judge's expected score is computed as specified, the
//! verifier matches numbers, and wrong models are refused.

use std::path::PathBuf;

use lsp_model::{LanguageModel, LoadOptions, Message};
use lsp_reward::{RewardConfig, RewardKind, RewardStage, judge_prompt};
use lsp_schemas::{AnswerBatch, AnswerRow, QueryRow, TypedBatch};
use lsp_stage::{Context, Mode, Setup, Stage, StageConfig};
use serde_json::Value;
use tch::Kind;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

fn answers(pairs: &[(&str, &str, Option<&str>)]) -> AnswerBatch {
    let rows: Vec<AnswerRow> = pairs
        .iter()
        .enumerate()
        .map(|(i, (q, a, reference))| AnswerRow {
            query: QueryRow {
                iteration: 0,
                query_id: i as u32,
                prompt_id: "data".into(),
                prompt_version: "v".into(),
                prompt_token_ids: vec![],
                query_text: q.to_string(),
                query_token_ids: vec![],
                query_token_logprobs: vec![],
                query_finish_reason: "data".into(),
                query_status: "ok".into(),
                reference_answer: reference.map(str::to_string),
            },
            answer_index: 0,
            answer_prompt_token_ids: vec![1],
            answer_text: a.to_string(),
            answer_token_ids: vec![2],
            answer_token_logprobs: vec![-1.0],
            answer_finish_reason: "eos".into(),
        })
        .collect();
    AnswerBatch::from_rows(&rows).unwrap()
}

fn reference_model() -> LanguageModel {
    LanguageModel::load(&fixture("tiny-llama"), LoadOptions::default()).unwrap()
}

#[test]
fn reward_model_reproduces_transformers_scores() {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-reward").join("reference.json")).unwrap(),
    )
    .unwrap();
    let cases = reference["cases"].as_array().unwrap();
    let pairs: Vec<(&str, &str, Option<&str>)> = cases
        .iter()
        .map(|c| {
            (
                c["instruction"].as_str().unwrap(),
                c["response"].as_str().unwrap(),
                None,
            )
        })
        .collect();
    let config = RewardConfig {
        kind: RewardKind::RewardModel,
        model: Some(fixture("tiny-reward")),
        batch_size: 2,
        ..RewardConfig::default()
    };
    let stage = RewardStage::new(config, LoadOptions::default()).unwrap();
    let rows = stage
        .rewards(Some(&reference_model()), &answers(&pairs))
        .unwrap()
        .to_rows()
        .unwrap();
    for (row, case) in rows.iter().zip(cases) {
        assert!((row.reward - case["score"].as_f64().unwrap()).abs() < 1e-4);
        assert_eq!(row.reward_status, "ok");
    }
}

#[test]
fn judge_reward_is_the_expected_score_over_digit_tokens() {
    let judge = reference_model();
    let stage = RewardStage::new(RewardConfig::default(), LoadOptions::default()).unwrap();
    let pairs = [("What is 2 + 2?", "4", None), ("Name a fruit.", "", None)];
    // With no judge of its own it needs the reference, and says so without one.
    assert!(stage.needs_reference());
    let err = stage.rewards(None, &answers(&pairs)).unwrap_err();
    assert!(err.to_string().contains("needs the reference"), "{err}");
    let rows = stage
        .rewards(Some(&judge), &answers(&pairs))
        .unwrap()
        .to_rows()
        .unwrap();
    for (row, (q, a, _)) in rows.iter().zip(&pairs) {
        // By hand: softmax over the logits of the tokens "1".."9" at the next position.
        let text = judge
            .tokenizer()
            .render_chat(&[Message::user(judge_prompt(q, a, 9))], true)
            .unwrap();
        let ids = judge.tokenizer().encode(&text).unwrap();
        let logits = judge
            .last_logits(&[ids])
            .unwrap()
            .squeeze_dim(0)
            .to_kind(Kind::Double);
        let logits = Vec::<f64>::try_from(&logits).unwrap();
        let digit: Vec<f64> = (1..=9)
            .map(|k| logits[judge.tokenizer().encode(&k.to_string()).unwrap()[0] as usize])
            .collect();
        let m = digit.iter().cloned().fold(f64::MIN, f64::max);
        let z: f64 = digit.iter().map(|l| (l - m).exp()).sum();
        let expected: f64 = digit
            .iter()
            .enumerate()
            .map(|(k, l)| (k + 1) as f64 * (l - m).exp() / z)
            .sum();
        assert!(
            (row.reward - expected).abs() < 1e-5,
            "{} vs {expected}",
            row.reward
        );
        assert!((1.0..=9.0).contains(&row.reward));
    }
    assert_eq!(rows[0].reward_status, "ok");
    assert_eq!(rows[1].reward_status, "empty_answer");
    // Through the stage interface: built from the config, the judge is the context's
    // reference; a context without one is an error that says so.
    let policy = reference_model();
    let setup = Setup {
        mode: Mode::Lsp,
        policy: &policy,
    };
    let mut stage = RewardConfig::default().build(&setup).unwrap();
    let mut judge = judge;
    let mut cx = Context::new(&policy, &mut judge, 0, 0);
    let via_stage = stage.process(&mut cx, &answers(&pairs)).unwrap();
    assert_eq!(via_stage.to_rows().unwrap(), rows);
    let mut none: Option<LanguageModel> = None;
    let mut cx = Context::new(&policy, &mut none, 0, 0);
    let err = stage.process(&mut cx, &answers(&pairs)).unwrap_err();
    assert!(err.to_string().contains("no reference model"), "{err}");
}

#[test]
fn verifier_matches_final_numbers() {
    let config = RewardConfig {
        kind: RewardKind::Verifier,
        ..RewardConfig::default()
    };
    let stage = RewardStage::new(config, LoadOptions::default()).unwrap();
    let pairs = [
        ("q", "The total is 1,200.", Some("steps #### 1200")),
        ("q", "The total is 12.", Some("#### 1200")),
        ("q", "No idea.", Some("#### 5")),
        ("q", "5", None),
    ];
    let rows = stage
        .rewards(Some(&reference_model()), &answers(&pairs))
        .unwrap()
        .to_rows()
        .unwrap();
    let got: Vec<(f64, &str)> = rows
        .iter()
        .map(|r| (r.reward, r.reward_status.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (1.0, "ok"),
            (0.0, "ok"),
            (0.0, "no_number"),
            (0.0, "no_reference")
        ]
    );
}

#[test]
fn length_reward_is_minus_the_distance_to_the_target() {
    let config = RewardConfig {
        kind: RewardKind::Length,
        target_chars: 5,
        ..RewardConfig::default()
    };
    let stage = RewardStage::new(config, LoadOptions::default()).unwrap();
    let pairs = [
        ("q", "abcde", None),
        ("q", "ab", None),
        ("q", "ééééééé", None),
    ];
    let rows = stage
        .rewards(Some(&reference_model()), &answers(&pairs))
        .unwrap()
        .to_rows()
        .unwrap();
    let got: Vec<f64> = rows.iter().map(|r| r.reward).collect();
    // Characters, not bytes: seven é are 7.
    assert_eq!(got, [0.0, -3.0, -2.0]);
}

#[test]
fn wrong_or_missing_models_are_refused() {
    let causal = RewardConfig {
        kind: RewardKind::RewardModel,
        model: Some(fixture("tiny-llama")),
        ..RewardConfig::default()
    };
    let err = RewardStage::new(causal, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs a sequence-classification checkpoint"),
        "{err}"
    );
    let missing = RewardConfig {
        kind: RewardKind::RewardModel,
        model: Some(PathBuf::from("/no/such/rm")),
        ..RewardConfig::default()
    };
    let err = RewardStage::new(missing, LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("reward.model: folder /no/such/rm does not exist"),
        "{err}"
    );
}
