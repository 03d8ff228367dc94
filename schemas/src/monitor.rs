//! The live monitor's table: one row per iteration with the figures that show a
//! self-play game collapsing (queries repeating, diversity falling, answers drifting
//! into code, the judge failing), written next to the game records.

use std::sync::LazyLock;

use arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};

use crate::columns::*;
use crate::field;
use crate::typed::schema_of;

/// Schema of [`MonitorBatch`].
pub fn monitor_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
        schema_of(vec![
            field::utf8(RUN_ID),
            field::u64(ITERATION),
            field::u64(QUERIES),
            field::u64(NEAR_DUPLICATES),
            field::f64(NEAR_DUPLICATE_SHARE),
            field::f64(DISTINCT_N),
            field::f64(NOVELTY),
            field::u64(ANSWERS),
            field::f64(CODE_SHARE),
            field::f64_or_null(CODE_DRIFT),
            field::f64(MEAN_QUERY_TOKENS),
            field::f64(MEAN_ANSWER_TOKENS),
            field::f64_or_null(MEAN_JUDGE_CHARS),
            field::f64_or_null(JUDGE_FAILURE_RATE),
            field::f64_or_null(JUDGE_READ_OUT_RATE),
            field::f64(MEAN_ANSWER_ENTROPY),
            field::f64(ROLLOUT_MISMATCH),
            field::utf8_list(WARNINGS),
        ])
    });
    SCHEMA.clone()
}

/// The monitor's figures for one iteration (see the column docs in [`crate::columns`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // Each field is the column of the same name in `columns`.
pub struct MonitorRow {
    pub run_id: String,
    pub iteration: u64,
    pub queries: u64,
    pub near_duplicates: u64,
    pub near_duplicate_share: f64,
    pub distinct_n: f64,
    pub novelty: f64,
    pub answers: u64,
    pub code_share: f64,
    pub code_drift: Option<f64>,
    pub mean_query_tokens: f64,
    pub mean_answer_tokens: f64,
    pub mean_judge_chars: Option<f64>,
    pub judge_failure_rate: Option<f64>,
    pub judge_read_out_rate: Option<f64>,
    pub mean_answer_entropy: f64,
    pub rollout_mismatch: f64,
    pub warnings: Vec<String>,
}

crate::typed_batch!(
    /// The live monitor's figures: one row per iteration.
    MonitorBatch,
    MonitorRow,
    monitor_schema
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TypedBatch;

    #[test]
    fn monitor_rows_round_trip_through_arrow() {
        let row = MonitorRow {
            run_id: "r".into(),
            iteration: 3,
            queries: 4,
            near_duplicates: 1,
            near_duplicate_share: 0.25,
            distinct_n: 0.8,
            novelty: 0.5,
            answers: 16,
            code_share: 0.125,
            code_drift: None,
            mean_query_tokens: 20.5,
            mean_answer_tokens: 40.0,
            mean_judge_chars: Some(300.0),
            judge_failure_rate: Some(0.5),
            judge_read_out_rate: Some(0.25),
            mean_answer_entropy: 1.5,
            rollout_mismatch: 0.01,
            warnings: vec!["judge failures 50% > 40%".into()],
        };
        let batch = MonitorBatch::from_rows(std::slice::from_ref(&row)).unwrap();
        assert_eq!(batch.to_rows().unwrap(), vec![row]);
    }
}
