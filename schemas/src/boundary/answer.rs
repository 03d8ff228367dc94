//! Solver → reward: one row per (query, answer).

use std::sync::LazyLock;

use arrow::datatypes::{Field, SchemaRef};
use serde::{Deserialize, Serialize};

use super::query::{QueryRow, query_fields};
use crate::columns::*;
use crate::field;
use crate::typed::schema_of;

/// The query columns followed by the answer columns.
pub(crate) fn answer_fields() -> Vec<Field> {
    let mut fields = query_fields();
    fields.extend([
        field::u32(ANSWER_INDEX),
        field::token_ids(ANSWER_PROMPT_TOKEN_IDS),
        field::utf8(ANSWER_TEXT),
        field::token_ids(ANSWER_TOKEN_IDS),
        field::token_logprobs(ANSWER_TOKEN_LOGPROBS),
        field::utf8(ANSWER_FINISH_REASON),
    ]);
    fields
}

/// Schema of [`AnswerBatch`].
pub fn answer_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_of(answer_fields()));
    SCHEMA.clone()
}

/// One sampled answer, carrying its query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerRow {
    /// The query answered.
    #[serde(flatten)]
    pub query: QueryRow,
    /// Index of the answer within the query's group of G.
    pub answer_index: u32,
    /// Chat-formatted solver prompt ids.
    pub answer_prompt_token_ids: Vec<u32>,
    /// Answer text.
    pub answer_text: String,
    /// Sampled answer token ids.
    pub answer_token_ids: Vec<u32>,
    /// Policy log-prob of each sampled token.
    pub answer_token_logprobs: Vec<f32>,
    /// `eos`, `stop` or `length`.
    pub answer_finish_reason: String,
}

crate::typed_batch!(
    /// Solver → reward: one row per (query, answer).
    AnswerBatch,
    AnswerRow,
    answer_schema
);
