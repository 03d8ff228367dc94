//! The game record: one flat row per (iteration, query, answer), written to Parquet
//! every iteration for offline analysis (DuckDB, Polars). Token lists stay in the stage
//! batches; the record keeps texts, counts, rewards, values, advantages, KL terms, the
//! step's figures and per-stage timings.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, ListArray, StringArray, UInt32Array, UInt64Array,
    new_null_array,
};
use arrow::datatypes::{DataType, FieldRef, SchemaRef};
use serde::{Deserialize, Serialize};
use serde_arrow::schema::{SchemaLike, TracingOptions};

use crate::boundary::reward::RewardPart;
use crate::boundary::update::{StepRow, UpdatedBatch};
use crate::columns::*;
use crate::error::{Result, SchemaError};
use crate::typed::{TypedBatch, schema_of};

/// Schema of [`GameRecordBatch`]: the fields of [`GameRecordRow`], in its order,
/// traced from the struct (strings as `Utf8`, `Option` as nullable). The struct is the
/// one place a column is declared; [`GameRecordBatch::assemble`] copies every column
/// that [`UpdatedBatch`] has and computes the rest by name.
pub fn game_record_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        let options = TracingOptions::default()
            .strings_as_large_utf8(false)
            .sequence_as_large_list(false);
        let fields = Vec::<FieldRef>::from_type::<GameRecordRow>(options)
            .expect("the game record's row is a flat struct");
        schema_of(fields.iter().map(|f| f.as_ref().clone()).collect())
    });
    SCHEMA.clone()
}

/// Wall-clock seconds spent in each stage of one iteration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct StageSeconds {
    /// Query generation.
    pub challenger: f64,
    /// Answer sampling.
    pub solver: f64,
    /// External reward.
    pub reward: f64,
    /// Quality self-reward.
    pub self_reward: f64,
    /// Advantages.
    pub advantage: f64,
    /// Parameter update.
    pub update: f64,
}

impl StageSeconds {
    /// The seconds of the stage called `stage` (its name in the dataflow, as the
    /// field), if there is one.
    pub fn of_stage(&mut self, stage: &str) -> Option<&mut f64> {
        Some(match stage {
            "challenger" => &mut self.challenger,
            "solver" => &mut self.solver,
            "reward" => &mut self.reward,
            "self_reward" => &mut self.self_reward,
            "advantage" => &mut self.advantage,
            "update" => &mut self.update,
            _ => return None,
        })
    }
}

/// One row of the game record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // Each field is the column of the same name in `columns`.
pub struct GameRecordRow {
    pub run_id: String,
    pub mode: String,
    pub iteration: u64,
    pub query_id: u32,
    pub answer_index: u32,
    pub prompt_id: String,
    pub prompt_version: String,
    pub query_text: String,
    pub query_finish_reason: String,
    pub query_status: String,
    pub reference_answer: Option<String>,
    pub answer_text: String,
    pub answer_finish_reason: String,
    pub query_logprob_policy: Option<f64>,
    pub query_logprob_ref: Option<f64>,
    pub answer_logprob_policy: f64,
    pub answer_logprob_ref: f64,
    pub query_logprob_sampler: Option<f64>,
    pub answer_logprob_sampler: f64,
    pub reward: f64,
    pub reward_status: String,
    pub reward_parts: Option<Vec<RewardPart>>,
    pub self_reward: Option<f64>,
    pub self_reward_status: String,
    pub self_reward_top_probability: Option<f64>,
    pub judge_text: Option<String>,
    pub value: f64,
    pub value_q: Option<f64>,
    pub solver_reward: f64,
    pub challenger_reward: Option<f64>,
    pub adv_solver: f64,
    pub adv_challenger: Option<f64>,
    pub kl_query: Option<f64>,
    pub kl_answer: f64,
    pub query_entropy: Option<f64>,
    pub answer_entropy: f64,
    pub query_tokens: u32,
    pub answer_tokens: u32,
    pub loss: f64,
    pub loss_solver: f64,
    pub loss_challenger: Option<f64>,
    pub grad_norm: f64,
    pub step_applied: bool,
    pub skip_reason: Option<String>,
    pub learning_rate: f64,
    pub clip_low_fraction: f64,
    pub clip_high_fraction: f64,
    pub rollout_mismatch: f64,
    pub seconds_challenger: f64,
    pub seconds_solver: f64,
    pub seconds_reward: f64,
    pub seconds_self_reward: f64,
    pub seconds_advantage: f64,
    pub seconds_update: f64,
    pub query_similarity: Option<f64>,
    pub query_similar_iteration: Option<u64>,
    pub query_similar_id: Option<u32>,
    pub query_asks_code: Option<bool>,
    pub answer_code_fraction: Option<f64>,
    pub answer_is_code: Option<bool>,
}

/// The live monitor's figures for one row of the game record.
#[derive(Debug, Clone, PartialEq)]
pub struct RowMonitor {
    /// Highest Jaccard similarity with an earlier query (0 when none shares an n-gram).
    pub query_similarity: f64,
    /// The earlier query it was measured against: (iteration, query_id).
    pub query_similar_to: Option<(u64, u32)>,
    /// Whether the query asks for code.
    pub query_asks_code: bool,
    /// Share of the answer's characters on code lines.
    pub answer_code_fraction: f64,
    /// Whether the answer is mostly code.
    pub answer_is_code: bool,
}

/// The record's columns the live monitor fills, null until it does.
const MONITOR_COLUMNS: [&str; 6] = [
    QUERY_SIMILARITY,
    QUERY_SIMILAR_ITERATION,
    QUERY_SIMILAR_ID,
    QUERY_ASKS_CODE,
    ANSWER_CODE_FRACTION,
    ANSWER_IS_CODE,
];

crate::typed_batch!(
    /// The game record of one iteration: one row per (query, answer).
    GameRecordBatch,
    GameRecordRow,
    game_record_schema
);

impl GameRecordBatch {
    /// Assembles the record of one iteration from the update's per-answer batch, its
    /// step row and the stage timings. Every row of `updated` must belong to the
    /// step's iteration.
    pub fn assemble(
        run_id: &str,
        mode: &str,
        updated: &UpdatedBatch,
        step: &StepRow,
        seconds: &StageSeconds,
    ) -> Result<Self> {
        let n = updated.num_rows();
        let iterations = updated.column::<UInt64Array>(ITERATION)?;
        if let Some(other) = iterations.values().iter().find(|&&i| i != step.iteration) {
            return Err(SchemaError::Mismatch {
                batch: Self::NAME,
                problem: format!(
                    "row of iteration {other} assembled with the step of iteration {}",
                    step.iteration
                ),
            });
        }
        let text = |s: &str| Arc::new(StringArray::from(vec![s; n])) as ArrayRef;
        let float = |x: f64| Arc::new(Float64Array::from(vec![x; n])) as ArrayRef;
        let float_or_null = |x: Option<f64>| Arc::new(Float64Array::from(vec![x; n])) as ArrayRef;
        let lengths = |name: &str| -> Result<ArrayRef> {
            let lists = updated.column::<ListArray>(name)?;
            let counts: UInt32Array = (0..n).map(|i| Some(lists.value_length(i) as u32)).collect();
            Ok(Arc::new(counts))
        };
        let batch = updated.batch();
        let schema = game_record_schema();
        let mut columns = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let name = field.name().as_str();
            if let Some(column) = batch.column_by_name(name) {
                columns.push(column.clone());
                continue;
            }
            columns.push(match name {
                RUN_ID => text(run_id),
                MODE => text(mode),
                QUERY_TOKENS => lengths(QUERY_TOKEN_IDS)?,
                ANSWER_TOKENS => lengths(ANSWER_TOKEN_IDS)?,
                LOSS => float(step.loss),
                LOSS_SOLVER => float(step.loss_solver),
                LOSS_CHALLENGER => float_or_null(step.loss_challenger),
                GRAD_NORM => float(step.grad_norm),
                STEP_APPLIED => Arc::new(BooleanArray::from(vec![step.step_applied; n])),
                SKIP_REASON => match &step.skip_reason {
                    Some(reason) => text(reason),
                    None => new_null_array(&DataType::Utf8, n),
                },
                LEARNING_RATE => float(step.learning_rate),
                CLIP_LOW_FRACTION => float(step.clip_low_fraction),
                CLIP_HIGH_FRACTION => float(step.clip_high_fraction),
                ROLLOUT_MISMATCH => float(step.rollout_mismatch),
                SECONDS_CHALLENGER => float(seconds.challenger),
                SECONDS_SOLVER => float(seconds.solver),
                SECONDS_REWARD => float(seconds.reward),
                SECONDS_SELF_REWARD => float(seconds.self_reward),
                SECONDS_ADVANTAGE => float(seconds.advantage),
                SECONDS_UPDATE => float(seconds.update),
                // The live monitor's, null until it fills them.
                name if MONITOR_COLUMNS.contains(&name) => new_null_array(field.data_type(), n),
                other => unreachable!("the game record's column {other} has no source"),
            });
        }
        Self::from_columns(columns)
    }

    /// This record with the live monitor's figures, one per row in row order.
    pub fn with_monitor(&self, rows: &[RowMonitor]) -> Result<Self> {
        if rows.len() != self.num_rows() {
            return Err(SchemaError::Mismatch {
                batch: Self::NAME,
                problem: format!(
                    "{} monitor rows for a record of {} rows",
                    rows.len(),
                    self.num_rows()
                ),
            });
        }
        let filled: [ArrayRef; 6] = [
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.query_similarity),
            )),
            Arc::new(UInt64Array::from_iter(
                rows.iter().map(|r| r.query_similar_to.map(|(i, _)| i)),
            )),
            Arc::new(UInt32Array::from_iter(
                rows.iter().map(|r| r.query_similar_to.map(|(_, q)| q)),
            )),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.query_asks_code)),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.answer_code_fraction),
            )),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.answer_is_code)),
            )),
        ];
        let schema = game_record_schema();
        let mut columns = self.batch().columns().to_vec();
        for (name, array) in MONITOR_COLUMNS.into_iter().zip(filled) {
            let index = schema.index_of(name).expect("monitor column");
            columns[index] = array;
        }
        Self::from_columns(columns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rows_columns_keep_the_updates_types_in_plain_arrow_types() {
        let record = game_record_schema();
        let updated = crate::boundary::update::updated_schema();
        assert_eq!(record.fields().len(), 60);
        assert_eq!(record.field(0).name(), RUN_ID);
        let mut copied = 0;
        for field in record.fields() {
            if let Ok(u) = updated.field_with_name(field.name()) {
                assert_eq!(u, field.as_ref(), "{}", field.name());
                copied += 1;
            }
            // What DuckDB and Polars users read: plain strings, no large types.
            assert!(
                !matches!(
                    field.data_type(),
                    DataType::LargeUtf8 | DataType::LargeList(_)
                ),
                "{field}"
            );
        }
        assert_eq!(copied, 34);
        let nullable = |name: &str| record.field_with_name(name).unwrap().is_nullable();
        assert!(nullable(LOSS_CHALLENGER) && nullable(QUERY_SIMILARITY) && !nullable(LOSS));
    }
}
