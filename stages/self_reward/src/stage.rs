//! The self-reward stage: the frozen reference judges every (query, answer) with Box 3.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray, UInt32Array, new_null_array};
use arrow::datatypes::DataType;
use lsp_model::{GenerationRequest, LanguageModel, Message};
use lsp_schemas::columns::{ANSWER_INDEX, ANSWER_TEXT, QUERY_ID, QUERY_TEXT};
use lsp_schemas::problems::{Problems, Validate};
use lsp_schemas::{RewardBatch, SelfRewardBatch, TypedBatch};
use tracing::{debug, warn};

use crate::config::SelfRewardConfig;
use crate::error::{Result, SelfRewardError};
use crate::parse::parse_judgement;
use crate::prompt::self_reward_prompt;

/// Judges answers with the frozen reference model.
#[derive(Debug, Clone)]
pub struct SelfReward {
    config: SelfRewardConfig,
}

impl SelfReward {
    /// Checks `config`.
    pub fn new(config: SelfRewardConfig) -> Result<Self> {
        let mut problems = Problems::new();
        config.validate("self_reward", &mut problems);
        problems.into_result().map_err(SelfRewardError::Config)?;
        Ok(Self { config })
    }

    /// R_Q for every answer, with the reply and how it was read. A reply with no
    /// usable score gets `fallback_score` and its status says so.
    pub fn process(
        &self,
        reference: &LanguageModel,
        rewarded: &RewardBatch,
        seed: u64,
    ) -> Result<SelfRewardBatch> {
        let queries = rewarded.column::<StringArray>(QUERY_TEXT)?;
        let answers = rewarded.column::<StringArray>(ANSWER_TEXT)?;
        let prompts: Vec<Vec<u32>> = queries
            .iter()
            .zip(answers.iter())
            .map(|(q, a)| {
                let box3 = self_reward_prompt(q.unwrap_or(""), a.unwrap_or(""));
                reference
                    .tokenizer()
                    .chat_prompt_messages(&[Message::user(box3)])
            })
            .collect::<Result<_, _>>()?;
        // Each judgement draws from its own generator, keyed by its (query, answer).
        let query_ids = rewarded.column::<UInt32Array>(QUERY_ID)?;
        let answer_indices = rewarded.column::<UInt32Array>(ANSWER_INDEX)?;
        let sequence_ids: Vec<u64> = query_ids
            .values()
            .iter()
            .zip(answer_indices.values().iter())
            .map(|(&q, &a)| (u64::from(q) << 32) | u64::from(a))
            .collect();
        let replies = reference.generate(&GenerationRequest {
            prompts: &prompts,
            sampling: &self.config.sampling,
            repeats: 1,
            seed,
            sequence_ids: Some(&sequence_ids),
            ignore_eos: false,
        })?;
        let mut scores = Vec::with_capacity(replies.len());
        let mut statuses = Vec::with_capacity(replies.len());
        let mut texts = Vec::with_capacity(replies.len());
        for reply in replies {
            let (score, status) = parse_judgement(&reply.text);
            scores.push(if status.has_score() {
                score.map(|s| s as f64)
            } else {
                Some(self.config.fallback_score)
            });
            statuses.push(status.as_str());
            texts.push(reply.text);
        }
        let fallbacks = statuses
            .iter()
            .filter(|s| **s == "missing" || **s == "out_of_range")
            .count();
        if fallbacks > 0 {
            warn!(
                fallbacks,
                of = statuses.len(),
                "judge replies without a usable score got the fallback"
            );
        }
        debug!(judged = statuses.len(), "answers self-rewarded");
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Float64Array::from(scores)),
            Arc::new(StringArray::from(statuses)),
            Arc::new(StringArray::from(
                texts.into_iter().map(Some).collect::<Vec<_>>(),
            )),
        ];
        Ok(SelfRewardBatch::extend(rewarded, columns)?)
    }

    /// The batch of a mode without self-reward: R_Q null, status `disabled`.
    pub fn disabled(rewarded: &RewardBatch) -> Result<SelfRewardBatch> {
        let n = rewarded.num_rows();
        let columns: Vec<ArrayRef> = vec![
            new_null_array(&DataType::Float64, n),
            Arc::new(StringArray::from(vec!["disabled"; n])),
            new_null_array(&DataType::Utf8, n),
        ];
        Ok(SelfRewardBatch::extend(rewarded, columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsp_model::{LoadOptions, SamplingConfig};
    use lsp_schemas::{AnswerRow, QueryRow, RewardRow};
    use std::path::PathBuf;

    fn rewarded() -> RewardBatch {
        let row = |q: &str, a: &str| RewardRow {
            answer: AnswerRow {
                query: QueryRow {
                    iteration: 1,
                    query_id: 0,
                    prompt_id: "p".into(),
                    prompt_version: "v".into(),
                    prompt_token_ids: vec![],
                    query_text: q.into(),
                    query_token_ids: vec![],
                    query_token_logprobs: vec![],
                    query_finish_reason: "eos".into(),
                    query_status: "ok".into(),
                    reference_answer: None,
                },
                answer_index: 0,
                answer_prompt_token_ids: vec![1],
                answer_text: a.into(),
                answer_token_ids: vec![2],
                answer_token_logprobs: vec![-1.0],
                answer_finish_reason: "eos".into(),
            },
            reward: 0.5,
            reward_status: "ok".into(),
        };
        RewardBatch::from_rows(&[row("Name a colour.", "Blue."), row("Add 2 and 2.", "")]).unwrap()
    }

    #[test]
    fn unusable_replies_get_the_fallback_and_say_so() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
        let reference = LanguageModel::load(&dir, LoadOptions::default()).unwrap();
        let stage = SelfReward::new(SelfRewardConfig {
            sampling: SamplingConfig::greedy(8),
            fallback_score: 2.0,
        })
        .unwrap();
        let rows = stage
            .process(&reference, &rewarded(), 0)
            .unwrap()
            .to_rows()
            .unwrap();
        assert_eq!(rows.len(), 2);
        for row in &rows {
            // The tiny random model writes no <Score>: each reply is kept and read as
            // missing, and R_Q is the fallback.
            let reply = row.judge_text.as_deref().unwrap();
            assert_eq!(parse_judgement(reply).1.as_str(), row.self_reward_status);
            assert_eq!(row.self_reward_status, "missing");
            assert_eq!(row.self_reward, Some(2.0));
            assert_eq!(row.rewarded.reward, 0.5);
        }
        // Greedy replies are the reference's own: judging again gives the same text.
        let again = stage
            .process(&reference, &rewarded(), 5)
            .unwrap()
            .to_rows()
            .unwrap();
        assert_eq!(rows, again);
    }

    #[test]
    fn disabled_batches_have_null_self_reward() {
        let rows = SelfReward::disabled(&rewarded())
            .unwrap()
            .to_rows()
            .unwrap();
        assert!(rows.iter().all(|r| r.self_reward.is_none()
            && r.judge_text.is_none()
            && r.self_reward_status == "disabled"));
        let err = SelfReward::new(SelfRewardConfig {
            fallback_score: 9.0,
            ..SelfRewardConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("self_reward.fallback_score: 9 is out of range"),
            "{err}"
        );
    }
}
