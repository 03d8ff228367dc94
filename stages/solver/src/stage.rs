//! The solver stage: G answers to each query through the policy's chat template.

use lsp_model::{GenerationRequest, LanguageModel};
use lsp_schemas::problems::Validate;
use lsp_schemas::{AnswerBatch, AnswerRow, QueryBatch, TypedBatch};
use lsp_stage::{Context, Setup, Stage, StageConfig};
use tracing::debug;

use crate::config::SolverConfig;
use crate::error::{Result, SolverError};

/// Answers the queries of an iteration.
#[derive(Debug, Clone)]
pub struct Solver {
    config: SolverConfig,
}

impl StageConfig<LanguageModel> for SolverConfig {
    type Stage = Solver;

    /// Checks the config.
    fn build(&self, _: &Setup<'_, LanguageModel>) -> Result<Solver> {
        self.check("solver").map_err(SolverError::Config)?;
        Ok(Solver {
            config: self.clone(),
        })
    }
}

/// G answers per query, all queries in one batch: each query is prefilled once and
/// its cache shared by its G answers. Rows come query by query, answers in order. An
/// empty query is answered too (its row says `empty`).
impl Stage<LanguageModel> for Solver {
    const NAME: &'static str = "solver";
    const STREAM: u64 = 2;
    type Input = QueryBatch;
    type Output = AnswerBatch;
    type Error = SolverError;

    fn process(
        &mut self,
        cx: &mut Context<'_, LanguageModel>,
        queries: &QueryBatch,
    ) -> Result<AnswerBatch> {
        let policy = cx.policy;
        let queries = queries.to_rows()?;
        let prompts: Vec<Vec<u32>> = queries
            .iter()
            .map(|q| policy.tokenizer().chat_prompt(&q.query_text))
            .collect::<Result<_, _>>()?;
        let g = self.config.answers_per_query as usize;
        // Answer j to query q draws from its own generator, whichever batch (worker)
        // samples it.
        let sequence_ids: Vec<u64> = queries
            .iter()
            .flat_map(|q| (0..g as u64).map(move |j| u64::from(q.query_id) * g as u64 + j))
            .collect();
        let generated = policy.generate(&GenerationRequest {
            prompts: &prompts,
            sampling: &self.config.sampling,
            repeats: g,
            seed: cx.seed,
            sequence_ids: Some(&sequence_ids),
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
    use lsp_stage::Mode;
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

    fn build(config: SolverConfig) -> Result<Solver> {
        config.build(&Setup {
            mode: Mode::Lsp,
            policy: &policy(),
        })
    }

    /// `solver`'s answers to `queries` with `seed`.
    fn answer(
        solver: &mut Solver,
        policy: &LanguageModel,
        queries: &QueryBatch,
        seed: u64,
    ) -> Vec<AnswerRow> {
        let mut none: Option<LanguageModel> = None;
        let mut cx = Context::new(policy, &mut none, 2, seed);
        solver.process(&mut cx, queries).unwrap().to_rows().unwrap()
    }

    #[test]
    fn g_answers_per_query_carry_their_query() {
        let policy = policy();
        let mut solver = build(SolverConfig {
            answers_per_query: 3,
            sampling: SamplingConfig {
                max_new_tokens: 5,
                ..SamplingConfig::default()
            },
        })
        .unwrap();
        let rows = answer(&mut solver, &policy, &queries(), 9);
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
        let again = answer(&mut solver, &policy, &queries(), 9);
        assert_eq!(rows, again);
    }

    fn solver(g: u64, sampling: SamplingConfig) -> Solver {
        build(SolverConfig {
            answers_per_query: g,
            sampling,
        })
        .unwrap()
    }

    #[test]
    fn each_answer_follows_its_query_and_index_not_its_batch() {
        // As a worker answers only its share: query 1 answered alone gets the answers
        // it got beside query 0, and another seed other answers.
        let policy = policy();
        let free = SamplingConfig {
            max_new_tokens: 8,
            ..SamplingConfig::default()
        };
        let mut solver = solver(2, free);
        let both = answer(&mut solver, &policy, &queries(), 4);
        let second = QueryBatch::from_rows(&queries().to_rows().unwrap()[1..]).unwrap();
        let alone = answer(&mut solver, &policy, &second, 4);
        assert_eq!(alone.len(), 2);
        for (a, b) in alone.iter().zip(&both[2..]) {
            assert_eq!(
                (a.answer_index, &a.answer_token_ids),
                (b.answer_index, &b.answer_token_ids)
            );
            // Log-probs up to the rounding of a differently shaped batch.
            for (x, y) in a.answer_token_logprobs.iter().zip(&b.answer_token_logprobs) {
                assert!((x - y).abs() < 1e-5, "{x} vs {y}");
            }
        }
        let other = answer(&mut solver, &policy, &second, 5);
        assert_ne!(
            other
                .iter()
                .map(|r| &r.answer_token_ids)
                .collect::<Vec<_>>(),
            alone
                .iter()
                .map(|r| &r.answer_token_ids)
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn finish_reasons_say_why_each_answer_ended() {
        let policy = policy();
        // Greedy, 6 tokens: the answer to each query is one sequence repeated G times.
        let mut greedy = solver(2, SamplingConfig::greedy(6));
        let rows = answer(&mut greedy, &policy, &queries(), 0);
        assert_eq!(rows[0].answer_token_ids, rows[1].answer_token_ids);
        for r in &rows {
            match r.answer_finish_reason.as_str() {
                "length" => assert_eq!(r.answer_token_ids.len(), 6),
                "eos" => assert!(
                    policy
                        .eos_token_ids()
                        .contains(r.answer_token_ids.last().unwrap())
                ),
                other => panic!("unexpected finish reason {other}"),
            }
        }
        // A stop string taken from the greedy answer's text ends it there.
        let text = &rows[0].answer_text;
        let stop: String = text.chars().skip(1).take(2).collect();
        assert_eq!(rows[0].answer_finish_reason, "length", "{text:?}");
        assert_eq!(stop.chars().count(), 2, "{text:?}");
        let mut stopped = solver(
            2,
            SamplingConfig {
                stop: vec![stop.clone()],
                ..SamplingConfig::greedy(6)
            },
        );
        let rows = answer(&mut stopped, &policy, &queries(), 0);
        assert_eq!(rows[0].answer_finish_reason, "stop", "{text:?} / {stop:?}");
        assert!(!rows[0].answer_text.contains(&stop));
    }

    #[test]
    fn a_bad_config_is_refused_with_every_problem() {
        let err = build(SolverConfig {
            answers_per_query: 0,
            sampling: SamplingConfig {
                temperature: -1.0,
                ..SamplingConfig::default()
            },
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("answers_per_query: must be at least 1"),
            "{err}"
        );
        assert!(err.contains("sampling.temperature"), "{err}");
        // One answer per query is a group of one: its advantage is always 0.
        let one = build(SolverConfig {
            answers_per_query: 1,
            ..SolverConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            one.contains("answers_per_query: 1 makes every solver advantage 0"),
            "{one}"
        );
    }
}
