//! What `pipeline eval` leaves in Parquet: every generation and verdict, one row per
//! benchmark item, so a result can be inspected and recomputed offline.

use std::sync::LazyLock;

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::field;
use crate::typed::schema_of;

/// Schema of [`WinRateBatch`].
pub fn win_rate_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        schema_of(vec![
            field::u64("id"),
            field::utf8("subset"),
            field::utf8("instruction"),
            field::utf8("candidate_output"),
            field::utf8("baseline_output"),
            field::utf8("candidate_finish_reason"),
            field::utf8("baseline_finish_reason"),
            field::u64("candidate_chars"),
            field::u64("baseline_chars"),
            field::utf8("judge"),
            field::f64_or_null("candidate_score"),
            field::f64_or_null("baseline_score"),
            field::f64_or_null("p_candidate_shown_first"),
            field::f64_or_null("p_candidate_shown_second"),
            field::f64("outcome"),
        ])
    });
    SCHEMA.clone()
}

/// One AlpacaEval instruction: both models' outputs and the judge's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WinRateRow {
    /// The instruction's `id` in the dataset.
    pub id: u64,
    /// Its subset (`dataset` field: helpful_base, koala, oasst, selfinstruct, vicuna).
    pub subset: String,
    pub instruction: String,
    pub candidate_output: String,
    pub baseline_output: String,
    pub candidate_finish_reason: String,
    pub baseline_finish_reason: String,
    pub candidate_chars: u64,
    pub baseline_chars: u64,
    /// `reward_model` or `llm`.
    pub judge: String,
    /// Reward-model scores (judge `reward_model`).
    pub candidate_score: Option<f64>,
    pub baseline_score: Option<f64>,
    /// The llm judge's probability that the candidate is better, with the candidate
    /// shown as response A, and as response B.
    pub p_candidate_shown_first: Option<f64>,
    pub p_candidate_shown_second: Option<f64>,
    /// 1 win, 0.5 tie, 0 loss for the candidate.
    pub outcome: f64,
}

crate::typed_batch!(
    /// AlpacaEval generations and verdicts: one row per instruction.
    WinRateBatch,
    WinRateRow,
    win_rate_schema
);

/// Schema of [`TaskBatch`].
pub fn task_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        schema_of(vec![
            field::utf8("benchmark"),
            field::utf8("task_id"),
            field::utf8("prompt"),
            field::utf8("output"),
            field::utf8("finish_reason"),
            field::utf8_or_null("extracted"),
            field::utf8_or_null("expected"),
            field::bool("correct"),
            field::utf8("status"),
            field::utf8_or_null("detail"),
            field::f64("seconds"),
        ])
    });
    SCHEMA.clone()
}

/// One GSM8K problem or HumanEval task: the model's output and how it was scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRow {
    /// `gsm8k` or `humaneval`.
    pub benchmark: String,
    pub task_id: String,
    /// The user message the model was given.
    pub prompt: String,
    pub output: String,
    pub finish_reason: String,
    /// GSM8K: the final number found; HumanEval: the program that was run.
    pub extracted: Option<String>,
    /// GSM8K: the reference number.
    pub expected: Option<String>,
    pub correct: bool,
    /// GSM8K: `ok` or `no_number`; HumanEval: `passed`, `failed` or `timeout`.
    pub status: String,
    /// HumanEval: the end of the program's error output; the sandbox layers.
    pub detail: Option<String>,
    /// Seconds spent scoring (HumanEval: running the program).
    pub seconds: f64,
}

crate::typed_batch!(
    /// GSM8K or HumanEval outputs and scores: one row per task.
    TaskBatch,
    TaskRow,
    task_schema
);
