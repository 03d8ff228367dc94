//! Reward → self-reward: answers with their external reward R.

use std::sync::LazyLock;

use arrow::datatypes::{Field, SchemaRef};
use serde::{Deserialize, Serialize};

use super::answer::{AnswerRow, answer_fields};
use crate::columns::*;
use crate::field;
use crate::typed::schema_of;

/// The answer columns followed by R and its status.
pub(crate) fn reward_fields() -> Vec<Field> {
    let mut fields = answer_fields();
    fields.extend([field::f64(REWARD), field::utf8(REWARD_STATUS)]);
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
}

crate::typed_batch!(
    /// Reward → self-reward: answers with R.
    RewardBatch,
    RewardRow,
    reward_schema
);
