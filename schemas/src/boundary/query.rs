//! Challenger → solver: one row per query.

use std::sync::LazyLock;

use arrow::datatypes::{Field, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::columns::*;
use crate::field;
use crate::typed::schema_of;

/// The query columns, in order; every later boundary starts with them.
pub(crate) fn query_fields() -> Vec<Field> {
    vec![
        field::u64(ITERATION),
        field::u32(QUERY_ID),
        field::utf8(PROMPT_ID),
        field::utf8(PROMPT_VERSION),
        field::token_ids(PROMPT_TOKEN_IDS),
        field::utf8(QUERY_TEXT),
        field::token_ids(QUERY_TOKEN_IDS),
        field::token_logprobs(QUERY_TOKEN_LOGPROBS),
        field::utf8(QUERY_FINISH_REASON),
        field::utf8(QUERY_STATUS),
        field::utf8_or_null(REFERENCE_ANSWER),
    ]
}

/// Schema of [`QueryBatch`].
pub fn query_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| schema_of(query_fields()));
    SCHEMA.clone()
}

/// One query, as written by the challenger (or read from data in `grpo` mode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRow {
    /// Iteration number.
    pub iteration: u64,
    /// Index of the query within the iteration.
    pub query_id: u32,
    /// Challenger prompt id, or the data set's name.
    pub prompt_id: String,
    /// Challenger prompt version (content hash).
    pub prompt_version: String,
    /// Chat-formatted challenger prompt ids (empty for data queries).
    pub prompt_token_ids: Vec<u32>,
    /// Query text after clean-up.
    pub query_text: String,
    /// Sampled query token ids (empty for data queries).
    pub query_token_ids: Vec<u32>,
    /// Policy log-prob of each sampled token.
    pub query_token_logprobs: Vec<f32>,
    /// `eos`, `stop`, `length` or `data`.
    pub query_finish_reason: String,
    /// `ok`, `cleaned`, `empty` or `truncated`.
    pub query_status: String,
    /// Reference answer from data, if any.
    pub reference_answer: Option<String>,
}

crate::typed_batch!(
    /// Challenger → solver: one row per query.
    QueryBatch,
    QueryRow,
    query_schema
);
