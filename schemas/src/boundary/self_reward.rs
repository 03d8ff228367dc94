//! Self-reward → advantage: answers with R and the quality self-reward R_Q.

use std::sync::LazyLock;

use arrow::datatypes::{Field, SchemaRef};
use serde::{Deserialize, Serialize};

use super::reward::{RewardRow, reward_fields};
use crate::columns::*;
use crate::field;
use crate::typed::schema_of;

/// The reward columns followed by R_Q, how it was obtained and the judge's reply.
pub(crate) fn self_reward_fields() -> Vec<Field> {
    let mut fields = reward_fields();
    fields.extend([
        field::f64_or_null(SELF_REWARD),
        field::utf8(SELF_REWARD_STATUS),
        field::f64_or_null(SELF_REWARD_TOP_PROBABILITY),
        field::utf8_or_null(JUDGE_TEXT),
    ]);
    fields
}

/// Schema of [`SelfRewardBatch`].
pub fn self_reward_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_of(self_reward_fields()));
    SCHEMA.clone()
}

/// One answer with R and R_Q.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SelfRewardRow {
    /// The rewarded answer.
    #[serde(flatten)]
    pub rewarded: RewardRow,
    /// R_Q in 0..=7, the fallback when the reply had no usable score, or null when
    /// the mode has no self-reward.
    pub self_reward: Option<f64>,
    /// `ok`, `calculation_mismatch`, `read_out`, `missing`, `out_of_range` or
    /// `disabled`.
    pub self_reward_status: String,
    /// The read-out's top score probability (null when not read out).
    pub self_reward_top_probability: Option<f64>,
    /// The judge's raw reply (null when disabled).
    pub judge_text: Option<String>,
}

crate::typed_batch!(
    /// Self-reward → advantage: answers with R and R_Q.
    SelfRewardBatch,
    SelfRewardRow,
    self_reward_schema
);
