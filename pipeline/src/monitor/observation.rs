//! What the monitor reads from a game record: per query and per answer, the few
//! features its figures are made of. Both the live dataflow and its sequential
//! reference start from these.

use lsp_schemas::GameRecordRow;
use lsp_self_reward::ScoreSource;
use serde::{Deserialize, Serialize};

use super::MonitorConfig;
use super::text::{MOSTLY_CODE, asks_for_code, code_fraction, ngrams, shingles};

/// A query by (iteration, query_id): the order "earlier" means.
pub type QueryKey = (u64, u32);

/// One query of the record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct QueryObservation {
    pub key: QueryKey,
    /// Word n-gram set (near-duplicates).
    pub shingles: Vec<u64>,
    /// Word n-grams with repeats (distinct-n, novelty).
    pub grams: Vec<u64>,
    pub tokens: u32,
}

/// One answer of the record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AnswerObservation {
    /// (iteration, query_id, answer_index).
    pub key: (u64, u32, u32),
    pub tokens: u32,
    pub is_code: bool,
    pub query_asks_code: bool,
    /// `Some(failed)` when a judge rated it; whether it got the fallback R_Q.
    pub judge_failed: Option<bool>,
    /// Whether its R_Q was read out of the judge's score distribution.
    pub judge_read_out: bool,
    /// Characters of the judge's reply (0 without one).
    pub judge_chars: u64,
    /// The policy's mean entropy over the answer's tokens, in micro-nats (integer
    /// sums add up alike in every worker's order).
    pub entropy_micro: u64,
    /// The step's rollout/training mismatch (mean |Δ log-prob| per token), in
    /// micro-nats: the same in every row of an iteration.
    pub mismatch_micro: u64,
}

/// Whether a self-reward status is a judge failure (the fallback R_Q); `None` when
/// the mode has no self-reward.
fn judge_failed(status: &str) -> Option<bool> {
    ScoreSource::of_status(status).map(|s| s == ScoreSource::Fallback)
}

/// The observations of one iteration's rows.
pub fn observe(
    rows: &[GameRecordRow],
    config: &MonitorConfig,
) -> (Vec<QueryObservation>, Vec<AnswerObservation>) {
    let queries = rows
        .iter()
        .filter(|r| r.answer_index == 0)
        .map(|r| QueryObservation {
            key: (r.iteration, r.query_id),
            shingles: shingles(&r.query_text, config.similarity_ngram),
            grams: ngrams(&r.query_text, config.distinct_n),
            tokens: r.query_tokens,
        })
        .collect();
    let answers = rows
        .iter()
        .map(|r| AnswerObservation {
            key: (r.iteration, r.query_id, r.answer_index),
            tokens: r.answer_tokens,
            is_code: code_fraction(&r.answer_text) >= MOSTLY_CODE,
            query_asks_code: asks_for_code(&r.query_text),
            judge_failed: judge_failed(&r.self_reward_status),
            judge_read_out: ScoreSource::of_status(&r.self_reward_status)
                == Some(ScoreSource::ReadOut),
            judge_chars: r
                .judge_text
                .as_deref()
                .map_or(0, |t| t.chars().count() as u64),
            entropy_micro: (r.answer_entropy.max(0.0) * 1e6).round() as u64,
            mismatch_micro: (r.rollout_mismatch.max(0.0) * 1e6).round() as u64,
        })
        .collect();
    (queries, answers)
}
