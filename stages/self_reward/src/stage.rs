//! The self-reward stage: the frozen reference judges every (query, answer) with Box 3.
//!
//! The judge writes a reply (at most `justification_tokens`); the `<Score>` it ends
//! with is R_Q. A reply without a usable score — most of a small judge's — has
//! `<Score>` appended and R_Q is read out of the judge's next-token distribution
//! over the score tokens 0–7: its expected value, with its top probability recorded.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray, UInt32Array, new_null_array};
use arrow::datatypes::DataType;
use lsp_model::{GenerationRequest, LanguageModel, Message, SamplingConfig};
use lsp_schemas::columns::{ANSWER_INDEX, ANSWER_TEXT, QUERY_ID, QUERY_TEXT};
use lsp_schemas::problems::Validate;
use lsp_schemas::{RewardBatch, SelfRewardBatch, TypedBatch};
use lsp_stage::{Context, Setup, Stage, StageConfig};
use tracing::{debug, warn};

use crate::config::{ReadOut, SelfRewardConfig};
use crate::error::{Result, SelfRewardError};
use crate::parse::{READ_OUT, parse_judgement};
use crate::prompt::self_reward_prompt;

/// Read-out sequences per forward pass.
const READ_OUT_BATCH: usize = 8;

/// R_Q of one answer and how it was obtained.
#[derive(Debug, Clone, PartialEq)]
struct Judgement {
    score: f64,
    status: &'static str,
    top_probability: Option<f64>,
}

/// The expected score `Σ k·p(k)` over the scores 0..=7 and the top probability.
fn expected_score(probabilities: &[f64]) -> (f64, f64) {
    let expected = probabilities
        .iter()
        .zip(0..)
        .map(|(p, k)| p * f64::from(k))
        .sum();
    (expected, probabilities.iter().copied().fold(0.0, f64::max))
}

/// What follows the judge's reply so that its next token is the score.
fn read_out_suffix(reply: &str) -> String {
    let joint = match reply.is_empty() || reply.ends_with('\n') {
        true => "",
        false => "\n",
    };
    format!("{reply}{joint}<Score>")
}

/// Judges answers with the frozen reference model.
#[derive(Debug, Clone)]
pub struct SelfReward {
    config: SelfRewardConfig,
    /// Whether the mode has R_Q (`lsp`); otherwise every row says `disabled`.
    enabled: bool,
}

impl StageConfig<LanguageModel> for SelfRewardConfig {
    type Stage = SelfReward;

    /// Checks the config; the stage judges in mode `lsp` only.
    fn build(&self, setup: &Setup<'_, LanguageModel>) -> Result<SelfReward> {
        self.check("self_reward").map_err(SelfRewardError::Config)?;
        Ok(SelfReward {
            config: self.clone(),
            enabled: setup.mode.has_self_reward(),
        })
    }
}

/// R_Q for every answer from the context's reference ([`SelfReward::judge`]), or, in a
/// mode without it, null with status `disabled` (the reference is not asked for).
impl Stage<LanguageModel> for SelfReward {
    const NAME: &'static str = "self_reward";
    const STREAM: u64 = 4;
    type Input = RewardBatch;
    type Output = SelfRewardBatch;
    type Error = SelfRewardError;

    fn process(
        &mut self,
        cx: &mut Context<'_, LanguageModel>,
        rewarded: &RewardBatch,
    ) -> Result<SelfRewardBatch> {
        match self.enabled {
            true => self.judge(cx.reference.get()?, rewarded, cx.seed),
            false => disabled(rewarded),
        }
    }
}

impl SelfReward {
    /// R_Q for every answer, with the reply and how it was obtained (see the module),
    /// judged by `reference` with the replies drawn from `seed`.
    pub fn judge(
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
        let replies = self.replies(reference, rewarded, &prompts, seed)?;
        let mut judgements: Vec<Option<Judgement>> = replies
            .iter()
            .map(|reply| {
                let (score, status) = parse_judgement(reply);
                let keep = status.has_score() && self.config.read_out != ReadOut::Always;
                let fallback = !status.has_score() && self.config.read_out == ReadOut::Never;
                (keep || fallback).then(|| Judgement {
                    score: match keep {
                        true => score.unwrap_or_default() as f64,
                        false => self.config.fallback_score,
                    },
                    status: status.as_str(),
                    top_probability: None,
                })
            })
            .collect();
        let unread: Vec<usize> = (0..judgements.len())
            .filter(|&i| judgements[i].is_none())
            .collect();
        if !unread.is_empty() {
            let scores: Vec<String> = (0..=7).map(|k: u32| k.to_string()).collect();
            let score_ids = reference.choice_token_ids(&scores)?;
            let seqs: Vec<Vec<u32>> = unread
                .iter()
                .map(|&i| {
                    let suffix = reference
                        .tokenizer()
                        .encode(&read_out_suffix(&replies[i]))?;
                    Ok([prompts[i].as_slice(), &suffix].concat())
                })
                .collect::<Result<_>>()?;
            let probabilities =
                reference.choice_probabilities(&seqs, &score_ids, READ_OUT_BATCH)?;
            for (&i, p) in unread.iter().zip(&probabilities) {
                let (score, top) = expected_score(p);
                judgements[i] = Some(Judgement {
                    score,
                    status: READ_OUT,
                    top_probability: Some(top),
                });
            }
        }
        let judgements: Vec<Judgement> = judgements.into_iter().flatten().collect();
        let count = |status: &[&str]| {
            judgements
                .iter()
                .filter(|j| status.contains(&j.status))
                .count()
        };
        let fallbacks = count(&["missing", "out_of_range"]);
        if fallbacks > 0 {
            warn!(
                fallbacks,
                of = judgements.len(),
                "judge replies without a usable score got the fallback"
            );
        }
        debug!(
            judged = judgements.len(),
            read_out = count(&[READ_OUT]),
            "answers self-rewarded"
        );
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Float64Array::from_iter_values(
                judgements.iter().map(|j| j.score),
            )),
            Arc::new(StringArray::from_iter_values(
                judgements.iter().map(|j| j.status),
            )),
            Arc::new(Float64Array::from_iter(
                judgements.iter().map(|j| j.top_probability),
            )),
            Arc::new(StringArray::from_iter_values(replies)),
        ];
        Ok(SelfRewardBatch::extend(rewarded, columns)?)
    }

    /// The judge's replies, each drawn from its own generator keyed by its (query,
    /// answer); empty when `justification_tokens` is 0.
    fn replies(
        &self,
        reference: &LanguageModel,
        rewarded: &RewardBatch,
        prompts: &[Vec<u32>],
        seed: u64,
    ) -> Result<Vec<String>> {
        let max_new_tokens = self.config.reply_tokens();
        if max_new_tokens == 0 {
            return Ok(vec![String::new(); prompts.len()]);
        }
        let query_ids = rewarded.column::<UInt32Array>(QUERY_ID)?;
        let answer_indices = rewarded.column::<UInt32Array>(ANSWER_INDEX)?;
        let sequence_ids: Vec<u64> = query_ids
            .values()
            .iter()
            .zip(answer_indices.values().iter())
            .map(|(&q, &a)| (u64::from(q) << 32) | u64::from(a))
            .collect();
        let sampling = SamplingConfig {
            max_new_tokens,
            ..self.config.sampling.clone()
        };
        let replies = reference.generate(&GenerationRequest {
            prompts,
            sampling: &sampling,
            repeats: 1,
            seed,
            sequence_ids: Some(&sequence_ids),
            ignore_eos: false,
        })?;
        Ok(replies.into_iter().map(|r| r.text).collect())
    }
}

/// The batch of a mode without self-reward: R_Q null, status `disabled`.
fn disabled(rewarded: &RewardBatch) -> Result<SelfRewardBatch> {
    let n = rewarded.num_rows();
    let columns: Vec<ArrayRef> = vec![
        new_null_array(&DataType::Float64, n),
        Arc::new(StringArray::from(vec!["disabled"; n])),
        new_null_array(&DataType::Float64, n),
        new_null_array(&DataType::Utf8, n),
    ];
    Ok(SelfRewardBatch::extend(rewarded, columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParseStatus;
    use lsp_model::LoadOptions;
    use lsp_schemas::{AnswerRow, QueryRow, RewardRow};
    use lsp_stage::Mode;
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
            reward_parts: None,
        };
        RewardBatch::from_rows(&[row("Name a colour.", "Blue."), row("Add 2 and 2.", "")]).unwrap()
    }

    fn tiny() -> LanguageModel {
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

    fn build(config: SelfRewardConfig, mode: Mode) -> Result<SelfReward> {
        config.build(&Setup {
            mode,
            policy: &tiny(),
        })
    }

    fn stage(justification_tokens: Option<u64>, read_out: ReadOut) -> SelfReward {
        let config = SelfRewardConfig {
            sampling: SamplingConfig::greedy(8),
            justification_tokens,
            read_out,
            fallback_score: 2.0,
        };
        build(config, Mode::Lsp).unwrap()
    }

    /// R_Q and the top probability read from the model's last logits after
    /// `prompt` + `text` by hand: softmax over the digit tokens 0..=7.
    fn read_by_hand(
        reference: &LanguageModel,
        query: &str,
        answer: &str,
        text: &str,
    ) -> (f64, f64) {
        let tokenizer = reference.tokenizer();
        let mut seq = tokenizer
            .chat_prompt(&self_reward_prompt(query, answer))
            .unwrap();
        seq.extend(tokenizer.encode(text).unwrap());
        let logits =
            Vec::<f32>::try_from(&reference.last_logits(&[seq]).unwrap().view([-1])).unwrap();
        let digits: Vec<f64> = (0..=7)
            .map(|k: u32| {
                let id = tokenizer.encode(&k.to_string()).unwrap();
                assert_eq!(id.len(), 1);
                f64::from(logits[id[0] as usize])
            })
            .collect();
        let top = digits.iter().copied().fold(f64::MIN, f64::max);
        let weights: Vec<f64> = digits.iter().map(|l| (l - top).exp()).collect();
        let total: f64 = weights.iter().sum();
        let expected = weights
            .iter()
            .zip(0..)
            .map(|(w, k)| w * f64::from(k))
            .sum::<f64>()
            / total;
        (
            expected,
            weights.iter().copied().fold(0.0, f64::max) / total,
        )
    }

    #[test]
    fn unusable_replies_are_read_out_of_the_judges_distribution() {
        // Through the stage interface: the judge is the context's reference.
        let (policy, mut reference) = (tiny(), tiny());
        let mut cx = Context::new(&policy, &mut reference, 1, 0);
        let rows = stage(None, ReadOut::WhenUnusable)
            .process(&mut cx, &rewarded())
            .unwrap()
            .to_rows()
            .unwrap();
        assert_eq!(rows.len(), 2);
        for row in &rows {
            // The tiny random model writes no <Score>: R_Q is read after its reply.
            let reply = row.judge_text.as_deref().unwrap();
            assert_eq!(parse_judgement(reply).1, ParseStatus::Missing);
            assert!(!reply.is_empty());
            assert_eq!(row.self_reward_status, READ_OUT);
            let answer = &row.rewarded.answer;
            let (expected, top) = read_by_hand(
                &reference,
                &answer.query.query_text,
                &answer.answer_text,
                &read_out_suffix(reply),
            );
            let score = row.self_reward.unwrap();
            assert!((score - expected).abs() < 1e-4, "{score} vs {expected}");
            assert!((row.self_reward_top_probability.unwrap() - top).abs() < 1e-5);
            assert!((0.0..=7.0).contains(&score) && top >= 1.0 / 8.0);
            assert_eq!(row.rewarded.reward, 0.5);
        }
        // Greedy replies are the reference's own: judging again gives the same rows.
        let again = stage(None, ReadOut::WhenUnusable)
            .judge(&reference, &rewarded(), 5)
            .unwrap()
            .to_rows()
            .unwrap();
        assert_eq!(rows, again);
    }

    #[test]
    fn no_justification_reads_the_score_right_after_the_prompt() {
        let reference = tiny();
        let rows = stage(Some(0), ReadOut::WhenUnusable)
            .judge(&reference, &rewarded(), 0)
            .unwrap()
            .to_rows()
            .unwrap();
        for row in &rows {
            assert_eq!(row.judge_text.as_deref(), Some(""));
            assert_eq!(row.self_reward_status, READ_OUT);
            let answer = &row.rewarded.answer;
            let (expected, _) = read_by_hand(
                &reference,
                &answer.query.query_text,
                &answer.answer_text,
                "<Score>",
            );
            assert!((row.self_reward.unwrap() - expected).abs() < 1e-4);
        }
        // Two different pairs, two different read-outs.
        assert_ne!(rows[0].self_reward, rows[1].self_reward);
    }

    #[test]
    fn without_read_out_unusable_replies_get_the_fallback_and_say_so() {
        let rows = stage(None, ReadOut::Never)
            .judge(&tiny(), &rewarded(), 0)
            .unwrap()
            .to_rows()
            .unwrap();
        for row in &rows {
            assert_eq!(row.self_reward_status, "missing");
            assert_eq!(row.self_reward, Some(2.0));
            assert_eq!(row.self_reward_top_probability, None);
        }
    }

    #[test]
    fn the_expected_score_and_the_suffix_by_hand() {
        let mut p = [0.0; 8];
        (p[7], p[3]) = (0.75, 0.25);
        assert_eq!(expected_score(&p), (0.75 * 7.0 + 0.25 * 3.0, 0.75));
        assert_eq!(expected_score(&[0.125; 8]), (3.5, 0.125));
        assert_eq!(read_out_suffix(""), "<Score>");
        assert_eq!(read_out_suffix("Clear.\n"), "Clear.\n<Score>");
        assert_eq!(read_out_suffix("Clear. <Score>"), "Clear. <Score>\n<Score>");
    }

    #[test]
    fn disabled_batches_have_null_self_reward() {
        // Mode lsp_zero: no judge asked for (the context has none), every row disabled.
        let mut stage = build(SelfRewardConfig::default(), Mode::LspZero).unwrap();
        let (policy, mut none) = (tiny(), None);
        let mut cx = Context::new(&policy, &mut none, 1, 0);
        let rows = stage
            .process(&mut cx, &rewarded())
            .unwrap()
            .to_rows()
            .unwrap();
        assert!(rows.iter().all(|r| r.self_reward.is_none()
            && r.judge_text.is_none()
            && r.self_reward_status == "disabled"));
        let bad = SelfRewardConfig {
            fallback_score: 9.0,
            justification_tokens: Some(0),
            read_out: ReadOut::Never,
            ..SelfRewardConfig::default()
        };
        let err = build(bad, Mode::Lsp).unwrap_err().to_string();
        assert!(
            err.contains("self_reward.fallback_score: 9 is out of range"),
            "{err}"
        );
        assert!(
            err.contains("self_reward.justification_tokens: 0 writes no reply"),
            "{err}"
        );
    }
}
