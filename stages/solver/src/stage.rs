//! The solver stage: G answers to each query through the policy's chat template.

use lsp_model::{GenerationRequest, LanguageModel};
use lsp_schemas::problems::{Problems, Validate};
use lsp_schemas::{AnswerBatch, AnswerRow, QueryBatch, TypedBatch};
use tracing::debug;

use crate::config::SolverConfig;
use crate::error::{Result, SolverError};

/// Answers the queries of an iteration.
#[derive(Debug, Clone)]
pub struct Solver {
    config: SolverConfig,
}

impl Solver {
    /// Checks `config`.
    pub fn new(config: SolverConfig) -> Result<Self> {
        let mut problems = Problems::new();
        config.validate("solver", &mut problems);
        problems.into_result().map_err(SolverError::Config)?;
        Ok(Self { config })
    }

    /// G answers per query, all queries in one batch: each query is prefilled once
    /// and its cache shared by its G answers. Rows come query by query, answers in
    /// order. An empty query is answered too (its row says `empty`).
    pub fn process(
        &self,
        policy: &LanguageModel,
        queries: &QueryBatch,
        seed: u64,
    ) -> Result<AnswerBatch> {
        let queries = queries.to_rows()?;
        let prompts: Vec<Vec<u32>> = queries
            .iter()
            .map(|q| policy.tokenizer().chat_prompt(&q.query_text))
            .collect::<Result<_, _>>()?;
        let g = self.config.answers_per_query as usize;
        let generated = policy.generate(&GenerationRequest {
            prompts: &prompts,
            sampling: &self.config.sampling,
            repeats: g,
            seed,
            ignore_eos: false,
        })?;
        let rows: Vec<AnswerRow> = generated
            .into_iter()
            .enumerate()
            .map(|(i, a)| AnswerRow {
                query: queries[a.prompt_index].clone(),
                answer_index: (i % g) as u32,
                answer_prompt_token_ids: prompts[a.prompt_index].clone(),
                answer_text: a.text,
                answer_token_ids: a.ids,
                answer_token_logprobs: a.logprobs,
                answer_finish_reason: a.finish_reason.as_str().to_string(),
            })
            .collect();
        debug!(answers = rows.len(), "answers sampled");
        Ok(AnswerBatch::from_rows(&rows)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lsp_model::{LoadOptions, SamplingConfig};
    use lsp_schemas::QueryRow;
    use std::path::PathBuf;

    fn policy() -> LanguageModel {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-qwen2");
        LanguageModel::load(&dir, LoadOptions::default()).unwrap()
    }

    fn queries() -> QueryBatch {
        let row = |i: u32, text: &str, status: &str| QueryRow {
            iteration: 2,
            query_id: i,
            prompt_id: "lsp-box1".into(),
            prompt_version: "v".into(),
            prompt_token_ids: vec![1, 2],
            query_text: text.into(),
            query_token_ids: vec![3],
            query_token_logprobs: vec![-0.5],
            query_finish_reason: "eos".into(),
            query_status: status.into(),
            reference_answer: None,
        };
        QueryBatch::from_rows(&[row(0, "Name a colour.", "ok"), row(1, "", "empty")]).unwrap()
    }

    #[test]
    fn g_answers_per_query_carry_their_query() {
        let policy = policy();
        let solver = Solver::new(SolverConfig {
            answers_per_query: 3,
            sampling: SamplingConfig {
                max_new_tokens: 5,
                ..SamplingConfig::default()
            },
        })
        .unwrap();
        let rows = solver
            .process(&policy, &queries(), 9)
            .unwrap()
            .to_rows()
            .unwrap();
        assert_eq!(rows.len(), 6);
        let q_rows = queries().to_rows().unwrap();
        for (i, r) in rows.iter().enumerate() {
            assert_eq!(r.query, q_rows[i / 3]);
            assert_eq!(r.answer_index, (i % 3) as u32);
            let expected_prompt = policy
                .tokenizer()
                .chat_prompt(&q_rows[i / 3].query_text)
                .unwrap();
            assert_eq!(r.answer_prompt_token_ids, expected_prompt);
            assert_eq!(r.answer_token_ids.len(), r.answer_token_logprobs.len());
            assert!(["eos", "length"].contains(&r.answer_finish_reason.as_str()));
            if r.answer_finish_reason == "length" {
                assert_eq!(r.answer_token_ids.len(), 5);
            }
        }
        // The three answers to one query are drawn, not copied.
        assert!(
            rows[1].answer_token_ids != rows[0].answer_token_ids
                || rows[2].answer_token_ids != rows[0].answer_token_ids
        );
        let again = solver
            .process(&policy, &queries(), 9)
            .unwrap()
            .to_rows()
            .unwrap();
        assert_eq!(rows, again);
    }
}
