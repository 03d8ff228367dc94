//! The challenger stage: Box 1 through the policy's chat template, N queries sampled.

use lsp_model::{FinishReason, GenerationRequest, LanguageModel};
use lsp_schemas::problems::Validate;
use lsp_schemas::{QueryBatch, QueryRow, SlotBatch, TypedBatch};
use lsp_stage::{Context, Setup, Stage, StageConfig};
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::clean::clean_query;
use crate::config::ChallengerConfig;
use crate::error::{ChallengerError, Result};
use crate::prompt::challenger_prompt;

/// Identifier of Box 1 in the game record.
pub const PROMPT_ID: &str = "lsp-box1";

/// Generates the queries of an iteration.
#[derive(Debug, Clone)]
pub struct Challenger {
    config: ChallengerConfig,
    prompt: String,
    version: String,
}

impl StageConfig<LanguageModel> for ChallengerConfig {
    type Stage = Challenger;

    /// Checks the config and fills Box 1 with its task and template.
    fn build(&self, _: &Setup<'_, LanguageModel>) -> Result<Challenger> {
        self.check("challenger").map_err(ChallengerError::Config)?;
        let prompt = challenger_prompt(self.task.as_deref(), self.template.as_deref());
        let digest = Sha256::digest(prompt.as_bytes());
        let version: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Ok(Challenger {
            config: self.clone(),
            prompt,
            version,
        })
    }
}

/// Samples the queries of the input's slots from the policy. The token ids and
/// log-probs are the sampled ones (what the update trains on); the text is cleaned
/// ([`clean_query`]) and its status recorded. Each query's draws follow the seed and
/// its number alone, so the queries a worker writes for its share are those one
/// worker writes for all.
impl Stage<LanguageModel> for Challenger {
    const NAME: &'static str = "challenger";
    const STREAM: u64 = 1;
    type Input = SlotBatch;
    type Output = QueryBatch;
    type Error = ChallengerError;

    fn process(
        &mut self,
        cx: &mut Context<'_, LanguageModel>,
        slots: &SlotBatch,
    ) -> Result<QueryBatch> {
        let query_ids = slots.query_ids()?;
        let (policy, iteration) = (cx.policy, cx.iteration);
        let prompt_ids = policy.tokenizer().chat_prompt(&self.prompt)?;
        let sequence_ids: Vec<u64> = query_ids.iter().map(|&q| u64::from(q)).collect();
        let generated = policy.generate(&GenerationRequest {
            prompts: std::slice::from_ref(&prompt_ids),
            sampling: &self.config.sampling,
            repeats: query_ids.len(),
            seed: cx.seed,
            sequence_ids: Some(&sequence_ids),
            ignore_eos: false,
        })?;
        let rows: Vec<QueryRow> = generated
            .into_iter()
            .zip(&query_ids)
            .map(|(g, &query_id)| {
                let (text, status) = clean_query(&g.text, g.finish_reason == FinishReason::Length);
                QueryRow {
                    iteration,
                    query_id,
                    prompt_id: PROMPT_ID.to_string(),
                    prompt_version: self.version.clone(),
                    prompt_token_ids: prompt_ids.clone(),
                    query_text: text,
                    query_token_ids: g.ids,
                    query_token_logprobs: g.logprobs,
                    query_finish_reason: g.finish_reason.as_str().to_string(),
                    query_status: status.as_str().to_string(),
                    reference_answer: None,
                }
            })
            .collect();
        debug!(iteration, queries = rows.len(), "queries generated");
        Ok(QueryBatch::from_rows(&rows)?)
    }
}

impl Challenger {
    /// The filled prompt (before the chat template).
    pub fn prompt(&self) -> &str {
        &self.prompt
    }

    /// The prompt's version: the first 12 hex digits of its SHA-256.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The number of queries an iteration has (N).
    pub fn num_queries(&self) -> u32 {
        self.config.num_queries as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsp_model::{LoadOptions, SamplingConfig};
    use lsp_schemas::columns;
    use std::path::PathBuf;

    fn policy() -> LanguageModel {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
        LanguageModel::load(
            &dir,
            LoadOptions {
                // Box 1 and Box 3 run past the tiny fixture's 512-token context.
                allow_past_context: true,
                ..LoadOptions::default()
            },
        )
        .unwrap()
    }

    fn config(n: u64) -> ChallengerConfig {
        ChallengerConfig {
            num_queries: n,
            sampling: SamplingConfig {
                max_new_tokens: 6,
                ..SamplingConfig::default()
            },
            ..ChallengerConfig::default()
        }
    }

    fn build(config: ChallengerConfig) -> Result<Challenger> {
        let policy = policy();
        let setup = Setup {
            mode: lsp_stage::Mode::Lsp,
            policy: &policy,
        };
        config.build(&setup)
    }

    /// The queries of `slots` in iteration 7 with seed 42.
    fn write(challenger: &mut Challenger, policy: &LanguageModel, slots: &[u32]) -> QueryBatch {
        let mut none: Option<LanguageModel> = None;
        let mut cx = Context::new(policy, &mut none, 7, 42);
        challenger
            .process(&mut cx, &SlotBatch::of(7, slots).unwrap())
            .unwrap()
    }

    #[test]
    fn n_queries_with_their_tokens_logprobs_and_status() {
        let policy = policy();
        let mut challenger = build(config(3)).unwrap();
        let batch = write(&mut challenger, &policy, &[0, 1, 2]);
        let rows = batch.to_rows().unwrap();
        assert_eq!(rows.len(), 3);
        let prompt_ids = policy.tokenizer().chat_prompt(challenger.prompt()).unwrap();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!((r.iteration, r.query_id), (7, i as u32));
            assert_eq!(r.prompt_token_ids, prompt_ids);
            assert_eq!(r.query_token_ids.len(), r.query_token_logprobs.len());
            assert!(!r.query_token_ids.is_empty() && r.query_token_ids.len() <= 6);
            assert!(r.query_token_logprobs.iter().all(|&lp| lp <= 0.0));
            let expected = if r.query_finish_reason == "length" {
                "truncated"
            } else {
                r.query_status.as_str()
            };
            assert_eq!(r.query_status, expected);
            assert_eq!(r.prompt_version, challenger.version());
        }
        // The same seed gives the same queries; the batch has the boundary's schema.
        let again = write(&mut challenger, &policy, &[0, 1, 2])
            .to_rows()
            .unwrap();
        assert_eq!(rows, again);
        assert!(batch.batch().column_by_name(columns::QUERY_TEXT).is_some());
        // A worker's share is the same queries, whatever else is written beside them.
        let share = write(&mut challenger, &policy, &[2, 0]).to_rows().unwrap();
        assert_eq!(share, [rows[2].clone(), rows[0].clone()]);
        // No slots, no queries.
        assert_eq!(write(&mut challenger, &policy, &[]).num_rows(), 0);
    }

    #[test]
    fn version_follows_the_filled_prompt_and_bad_config_is_refused() {
        let a = build(config(1)).unwrap();
        let b = build(ChallengerConfig {
            task: Some("Pure & Applied Mathematics".into()),
            ..config(1)
        })
        .unwrap();
        assert_eq!(a.version().len(), 12);
        assert_ne!(a.version(), b.version());
        let err = build(config(0)).unwrap_err().to_string();
        assert!(
            err.contains("challenger.num_queries: must be at least 1"),
            "{err}"
        );
    }
}
