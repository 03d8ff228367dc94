//! What one query adds to the figures of a whole iteration.

use serde::{Deserialize, Serialize};

/// One query's part in what the whole iteration's batch shares (all workers' rows):
/// how many rows and tokens it has, and its challenger reward, which the challenger's
/// baseline V̄ averages over every query. The pipeline gathers every worker's tallies
/// before the advantage stage and hands them to it and to the update in the
/// [`Context`](crate::Context).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryTally {
    /// The query.
    pub query_id: u32,
    /// Its rows (answers).
    pub rows: u32,
    /// −V(q) + w·V_Q(q); none without a challenger (`grpo`).
    pub challenger_reward: Option<f64>,
    /// Its answers' tokens.
    pub answer_tokens: u64,
    /// Its own tokens.
    pub query_tokens: u64,
    /// The tokens of the challenger's prompt that wrote it (0 for a query from data).
    pub prompt_tokens: u64,
    /// The tokens of the solver's prompt its answers share.
    pub answer_prompt_tokens: u64,
}
