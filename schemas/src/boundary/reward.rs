//! Reward → self-reward: answers with their external reward R.

use std::sync::{Arc, LazyLock};

use arrow::array::ArrayRef;
use arrow::datatypes::{Field, SchemaRef};
use serde::{Deserialize, Serialize};

use super::answer::{AnswerRow, answer_fields};
use crate::columns::*;
use crate::error::{Result, SchemaError};
use crate::field;
use crate::typed::schema_of;

/// The answer columns followed by R, its status and its parts.
pub(crate) fn reward_fields() -> Vec<Field> {
    let mut fields = answer_fields();
    fields.extend([
        field::f64(REWARD),
        field::utf8(REWARD_STATUS),
        field::reward_parts(REWARD_PARTS),
    ]);
    fields
}

/// Schema of [`RewardBatch`].
pub fn reward_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_of(reward_fields()));
    SCHEMA.clone()
}

/// One answer with its external reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardRow {
    /// The answer (and its query).
    #[serde(flatten)]
    pub answer: AnswerRow,
    /// R(q, a).
    pub reward: f64,
    /// `ok`, or the recorded fallback that produced `reward`.
    pub reward_status: String,
    /// The parts of a `sum` reward (null for a single reward).
    pub reward_parts: Option<Vec<RewardPart>>,
}

/// One part of a `sum` reward: R = Σ weight · reward over the parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardPart {
    /// The part's name (`reward.sum[i].name`, or its kind).
    pub name: String,
    /// Its weight in the sum.
    pub weight: f64,
    /// Its reward.
    pub reward: f64,
    /// Its status, as `reward_status` for a single reward.
    pub reward_status: String,
}

/// The `reward_parts` column of `n` rows: each row's parts, or all null for a single
/// reward.
pub fn reward_parts_array(n: usize, parts: Option<Vec<Vec<RewardPart>>>) -> Result<ArrayRef> {
    #[derive(Serialize)]
    struct Row {
        reward_parts: Option<Vec<RewardPart>>,
    }
    let rows: Vec<Row> = match parts {
        Some(parts) => parts
            .into_iter()
            .map(|p| Row {
                reward_parts: Some(p),
            })
            .collect(),
        None => (0..n).map(|_| Row { reward_parts: None }).collect(),
    };
    let field = Arc::new(field::reward_parts(REWARD_PARTS));
    let batch =
        serde_arrow::to_record_batch(&[field], &rows).map_err(|source| SchemaError::Rows {
            batch: "reward_parts",
            source,
        })?;
    Ok(batch.column(0).clone())
}

crate::typed_batch!(
    /// Reward → self-reward: answers with R.
    RewardBatch,
    RewardRow,
    reward_schema
);
