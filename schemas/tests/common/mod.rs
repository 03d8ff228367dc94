//! Sample batches shared by the integration tests: two queries of three answers,
//! with the nulls, fallbacks and non-ASCII text a real iteration has.

#![allow(dead_code)] // Each test binary uses its own part of these helpers.

use lsp_schemas::*;

pub fn query(query_id: u32) -> QueryRow {
    QueryRow {
        iteration: 3,
        query_id,
        prompt_id: "lsp-box1".into(),
        prompt_version: "sha256:abc".into(),
        prompt_token_ids: vec![1, 2, 3],
        query_text: format!("Explain idea number {query_id} in one line."),
        query_token_ids: vec![10, 11, 12, 13],
        query_token_logprobs: vec![-0.25, -1.5, -0.125, -2.0],
        query_finish_reason: "eos".into(),
        query_status: if query_id == 0 { "ok" } else { "cleaned" }.into(),
        reference_answer: (query_id == 1).then(|| "42".to_string()),
    }
}

pub fn updated(query_id: u32, answer_index: u32) -> UpdatedRow {
    let answer = AnswerRow {
        query: query(query_id),
        answer_index,
        answer_prompt_token_ids: vec![5, 6],
        answer_text: format!("Answer {answer_index} ✓"),
        answer_token_ids: vec![20; answer_index as usize + 1],
        answer_token_logprobs: vec![-0.5; answer_index as usize + 1],
        answer_finish_reason: "length".into(),
    };
    let rewarded = RewardRow {
        answer,
        reward: 0.5 * answer_index as f64,
        reward_status: "ok".into(),
        reward_parts: (answer_index == 0).then(|| {
            vec![
                RewardPart {
                    name: "format".into(),
                    weight: 0.5,
                    reward: 1.0,
                    reward_status: "ok".into(),
                },
                RewardPart {
                    name: "gsm8k".into(),
                    weight: 1.0,
                    reward: 0.0,
                    reward_status: "reward_timeout".into(),
                },
            ]
        }),
    };
    let judged = SelfRewardRow {
        rewarded,
        self_reward: (answer_index != 1).then_some(5.0),
        self_reward_status: if answer_index == 1 { "missing" } else { "ok" }.into(),
        self_reward_top_probability: None,
        judge_text: Some("<Score>5</Score>".into()),
    };
    let advantaged = AdvantageRow {
        judged,
        value: 0.25,
        value_q: Some(5.0),
        solver_reward: 5.5,
        challenger_reward: Some(4.75),
        adv_solver: -0.25,
        adv_challenger: None,
    };
    UpdatedRow {
        advantaged,
        query_logprob_policy: Some(-3.875),
        query_logprob_ref: Some(-3.5),
        answer_logprob_policy: -1.0,
        answer_logprob_ref: -1.25,
        query_logprob_sampler: None,
        answer_logprob_sampler: -1.5,
        kl_query: Some(-0.375),
        kl_answer: 0.25,
        query_entropy: Some(2.5),
        answer_entropy: 1.75,
    }
}

/// Two queries × three answers of iteration 3.
pub fn updated_rows() -> Vec<UpdatedRow> {
    (0..2)
        .flat_map(|q| (0..3).map(move |a| updated(q, a)))
        .collect()
}

pub fn step() -> StepRow {
    StepRow {
        iteration: 3,
        loss: 1.5,
        loss_solver: 1.0,
        loss_challenger: Some(0.5),
        grad_norm: 2.0,
        step_applied: false,
        skip_reason: Some("non-finite gradient".into()),
        learning_rate: 3e-6,
        update_tokens: 40,
        clip_low_fraction: 0.0,
        clip_high_fraction: 0.125,
        rollout_mismatch: 0.01,
    }
}

/// A game record of [`updated_rows`] with a skipped step.
pub fn record() -> GameRecordBatch {
    let updated = UpdatedBatch::from_rows(&updated_rows()).unwrap();
    GameRecordBatch::assemble("run-a", "lsp", &updated, &step(), &StageSeconds::default()).unwrap()
}
