//! Update results: the per-answer log-probs and KL terms used by the step, and one
//! summary row for the step itself.

use std::sync::LazyLock;

use arrow::datatypes::{Field, SchemaRef};
use serde::{Deserialize, Serialize};

use super::advantage::{AdvantageRow, advantage_fields};
use crate::columns::*;
use crate::field;
use crate::typed::schema_of;

/// The advantage columns followed by the log-prob sums and KL terms.
pub(crate) fn updated_fields() -> Vec<Field> {
    let mut fields = advantage_fields();
    fields.extend([
        field::f64_or_null(QUERY_LOGPROB_POLICY),
        field::f64_or_null(QUERY_LOGPROB_REF),
        field::f64(ANSWER_LOGPROB_POLICY),
        field::f64(ANSWER_LOGPROB_REF),
        field::f64_or_null(QUERY_LOGPROB_SAMPLER),
        field::f64(ANSWER_LOGPROB_SAMPLER),
        field::f64_or_null(KL_QUERY),
        field::f64(KL_ANSWER),
        field::f64_or_null(QUERY_ENTROPY),
        field::f64(ANSWER_ENTROPY),
    ]);
    fields
}

/// Schema of [`UpdatedBatch`].
pub fn updated_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_of(updated_fields()));
    SCHEMA.clone()
}

/// One answer as the update saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdatedRow {
    /// The answer with its advantages.
    #[serde(flatten)]
    pub advantaged: AdvantageRow,
    /// Σ log π_θ(query tokens) (null when the challenger is not trained, as in `grpo`).
    pub query_logprob_policy: Option<f64>,
    /// Σ log π_ref(query tokens).
    pub query_logprob_ref: Option<f64>,
    /// Σ log π_θ(answer tokens).
    pub answer_logprob_policy: f64,
    /// Σ log π_ref(answer tokens).
    pub answer_logprob_ref: f64,
    /// Σ of the query tokens' log-probs as sampled.
    pub query_logprob_sampler: Option<f64>,
    /// Σ of the answer tokens' log-probs as sampled.
    pub answer_logprob_sampler: f64,
    /// KL estimate of the query.
    pub kl_query: Option<f64>,
    /// KL estimate of the answer.
    pub kl_answer: f64,
    /// The policy's mean entropy over the query's tokens.
    pub query_entropy: Option<f64>,
    /// The policy's mean entropy over the answer's tokens.
    pub answer_entropy: f64,
}

crate::typed_batch!(
    /// Update → game record: answers with the log-probs and KL terms of the step.
    UpdatedBatch,
    UpdatedRow,
    updated_schema
);

/// Schema of [`StepBatch`]: one row per optimizer step.
pub fn step_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        schema_of(vec![
            field::u64(ITERATION),
            field::f64(LOSS),
            field::f64(LOSS_SOLVER),
            field::f64_or_null(LOSS_CHALLENGER),
            field::f64(GRAD_NORM),
            field::bool(STEP_APPLIED),
            field::utf8_or_null(SKIP_REASON),
            field::f64(LEARNING_RATE),
            field::u64(UPDATE_TOKENS),
            field::f64(CLIP_LOW_FRACTION),
            field::f64(CLIP_HIGH_FRACTION),
            field::f64(ROLLOUT_MISMATCH),
        ])
    });
    SCHEMA.clone()
}

/// One optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRow {
    /// Iteration number.
    pub iteration: u64,
    /// L = L_Sol + α_Ch·L_Ch.
    pub loss: f64,
    /// L_Sol.
    pub loss_solver: f64,
    /// L_Ch (null when the challenger is not trained).
    pub loss_challenger: Option<f64>,
    /// Gradient norm before clipping (NaN when non-finite).
    pub grad_norm: f64,
    /// Whether the weights changed.
    pub step_applied: bool,
    /// Why the step was skipped.
    pub skip_reason: Option<String>,
    /// Learning rate used.
    pub learning_rate: f64,
    /// Tokens that carried gradient (over every epoch).
    pub update_tokens: u64,
    /// Share of those tokens whose ratio was clipped below (A < 0, r < 1 − clip_low).
    pub clip_low_fraction: f64,
    /// Share clipped above (A > 0, r > 1 + clip_high).
    pub clip_high_fraction: f64,
    /// Mean |log π_trainer − log π_sampler| per token (the first epoch's).
    pub rollout_mismatch: f64,
}

crate::typed_batch!(
    /// Update → game record: one row per optimizer step.
    StepBatch,
    StepRow,
    step_schema
);
