//! Advantage → update: answers with values and advantages for both roles.

use std::sync::LazyLock;

use arrow::datatypes::{Field, SchemaRef};
use serde::{Deserialize, Serialize};

use super::self_reward::{SelfRewardRow, self_reward_fields};
use crate::columns::*;
use crate::field;
use crate::typed::schema_of;

/// The self-reward columns followed by V, V_Q, the role rewards and advantages.
pub(crate) fn advantage_fields() -> Vec<Field> {
    let mut fields = self_reward_fields();
    fields.extend([
        field::f64(VALUE),
        field::f64_or_null(VALUE_Q),
        field::f64(SOLVER_REWARD),
        field::f64_or_null(CHALLENGER_REWARD),
        field::f64(ADV_SOLVER),
        field::f64_or_null(ADV_CHALLENGER),
    ]);
    fields
}

/// Schema of [`AdvantageBatch`].
pub fn advantage_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_of(advantage_fields()));
    SCHEMA.clone()
}

/// One answer with its group statistics and advantages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdvantageRow {
    /// The self-rewarded answer.
    #[serde(flatten)]
    pub judged: SelfRewardRow,
    /// V(q) = mean_j R(q, a_j).
    pub value: f64,
    /// V_Q(q) = mean_j R_Q(q, a_j), null without self-reward.
    pub value_q: Option<f64>,
    /// The solver's reward R + w·R_Q.
    pub solver_reward: f64,
    /// The challenger's reward −V(q) + V_Q(q); null in `grpo` mode.
    pub challenger_reward: Option<f64>,
    /// A_Sol.
    pub adv_solver: f64,
    /// A_Ch; null in `grpo` mode.
    pub adv_challenger: Option<f64>,
}

crate::typed_batch!(
    /// Advantage → update: answers with values and advantages.
    AdvantageBatch,
    AdvantageRow,
    advantage_schema
);
