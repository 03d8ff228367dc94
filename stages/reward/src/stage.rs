//! The external-reward stage: R(q, a) for every answer.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, StringArray};
use lsp_model::{LanguageModel, LoadOptions, Message};
use lsp_schemas::columns::{ANSWER_TEXT, QUERY_TEXT, REFERENCE_ANSWER};
use lsp_schemas::problems::{Problems, Validate};
use lsp_schemas::{AnswerBatch, RewardBatch, TypedBatch};
use tracing::debug;

use crate::config::{RewardConfig, RewardKind};
use crate::error::{Result, RewardError};
use crate::judge::judge_scores;
use crate::verifier::verify;

/// Scores answers with the configured reward.
#[derive(Debug)]
pub struct RewardStage {
    config: RewardConfig,
    /// The reward model, or a judge of its own; `None` for a judge that is the
    /// reference model, and for the verifier.
    model: Option<LanguageModel>,
}

impl RewardStage {
    /// Checks `config` and loads its model, if it names one.
    pub fn new(config: RewardConfig, options: LoadOptions) -> Result<Self> {
        let mut problems = Problems::new();
        config.validate("reward", &mut problems);
        problems.into_result().map_err(RewardError::Config)?;
        let options = LoadOptions {
            trainable: false,
            ..options
        };
        let model = match (&config.kind, &config.model) {
            (RewardKind::Verifier | RewardKind::Length, _) | (_, None) => None,
            (_, Some(folder)) => Some(LanguageModel::load(folder, options)?),
        };
        if let (RewardKind::RewardModel, Some(m)) = (&config.kind, &model)
            && m.spec().head != lsp_model::Head::Score
        {
            return Err(lsp_model::ModelError::Invalid(format!(
                "{} is a causal LM: the `reward_model` reward needs a sequence-classification checkpoint",
                m.folder().display()
            ))
            .into());
        }
        Ok(Self { config, model })
    }

    /// Whether [`RewardStage::process`] needs the reference model: a `judge` reward
    /// whose config names no judge of its own.
    pub fn needs_reference(&self) -> bool {
        self.config.kind == RewardKind::Judge && self.model.is_none()
    }

    /// R for every answer; `reference` is the judge when the config names none (an
    /// error if it is then `None`).
    pub fn process(
        &self,
        reference: Option<&LanguageModel>,
        answers: &AnswerBatch,
    ) -> Result<RewardBatch> {
        let queries = answers.column::<StringArray>(QUERY_TEXT)?;
        let texts = answers.column::<StringArray>(ANSWER_TEXT)?;
        let pairs: Vec<(&str, &str)> = queries
            .iter()
            .zip(texts.iter())
            .map(|(q, a)| (q.unwrap_or(""), a.unwrap_or("")))
            .collect();
        let batch = self.config.batch_size as usize;
        let (rewards, statuses): (Vec<f64>, Vec<&str>) = match self.config.kind {
            RewardKind::Verifier => {
                let refs = answers.column::<StringArray>(REFERENCE_ANSWER)?;
                pairs
                    .iter()
                    .zip(refs.iter())
                    .map(|((_, a), r)| verify(a, r))
                    .unzip()
            }
            RewardKind::Length => {
                let target = self.config.target_chars as f64;
                pairs
                    .iter()
                    .map(|(_, a)| {
                        (
                            -(a.chars().count() as f64 - target).abs(),
                            content_status(a),
                        )
                    })
                    .unzip()
            }
            RewardKind::RewardModel => {
                let model = self.model.as_ref().expect("loaded in new");
                let rewards = reward_model_scores(model, &pairs, batch)?;
                (rewards, pairs.iter().map(|p| content_status(p.1)).collect())
            }
            RewardKind::Judge => {
                let judge = self.model.as_ref().or(reference).ok_or_else(|| {
                    lsp_model::ModelError::Invalid(
                        "the judge reward needs the reference model, and none was given".into(),
                    )
                })?;
                let rewards = judge_scores(judge, &pairs, self.config.max_score, batch)?;
                (rewards, pairs.iter().map(|p| content_status(p.1)).collect())
            }
        };
        debug!(answers = rewards.len(), "answers rewarded");
        let rewards: ArrayRef = Arc::new(Float64Array::from(rewards));
        let statuses: ArrayRef = Arc::new(StringArray::from(statuses));
        Ok(RewardBatch::extend(answers, vec![rewards, statuses])?)
    }
}

/// `empty_answer` for an answer with no text (it is still scored), else `ok`.
fn content_status(answer: &str) -> &'static str {
    if answer.trim().is_empty() {
        "empty_answer"
    } else {
        "ok"
    }
}

/// The reward model's score of each chat-formatted (query, answer).
pub fn reward_model_scores(
    model: &LanguageModel,
    pairs: &[(&str, &str)],
    batch: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(pairs.len());
    for chunk in pairs.chunks(batch.max(1)) {
        let seqs: Vec<Vec<u32>> = chunk
            .iter()
            .map(|(q, a)| {
                let messages = [
                    Message::user(*q),
                    Message {
                        role: "assistant".into(),
                        content: (*a).into(),
                    },
                ];
                let text = model.tokenizer().render_chat(&messages, false)?;
                model.tokenizer().encode(&text)
            })
            .collect::<Result<_, _>>()?;
        out.extend(model.score_sequences(&seqs)?.iter().map(|&s| s as f64));
    }
    Ok(out)
}
