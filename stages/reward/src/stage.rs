//! The external-reward stage: R(q, a) for every answer.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, Float64Array, StringArray, UInt32Array, UInt64Array};
use lsp_model::{LanguageModel, LoadOptions, Message};
use lsp_schemas::columns::{
    ANSWER_INDEX, ANSWER_TEXT, ITERATION, QUERY_ID, QUERY_TEXT, REFERENCE_ANSWER,
};
use lsp_schemas::problems::Validate;
use lsp_schemas::{AnswerBatch, RewardBatch, RewardPart, TypedBatch, reward_parts_array};
use lsp_stage::{Context, Setup, Stage, StageConfig};
use tracing::{debug, warn};

use crate::config::{OnFailure, RewardConfig, RewardKind};
use crate::error::{Result, RewardError};
use crate::external::command::CommandReward;
use crate::external::http::HttpReward;
use crate::external::{Failure, RewardRequest};
use crate::judge::judge_scores;
use crate::verifier::verify;

/// What computes the reward of the configured kind.
#[derive(Debug)]
enum Scorer {
    /// The reward model, or a judge of its own; `None` for a judge that is the
    /// reference model.
    Model(Option<Box<LanguageModel>>),
    /// Rewards computed here from the texts.
    Rule,
    Command(CommandReward),
    Http(HttpReward),
    /// The parts of a sum.
    Sum(Vec<RewardStage>),
}

/// Scores answers with the configured reward.
#[derive(Debug)]
pub struct RewardStage {
    config: RewardConfig,
    scorer: Scorer,
}

/// The answers' rewards and statuses, with the parts of a sum.
struct Scored {
    rewards: Vec<f64>,
    statuses: Vec<String>,
    parts: Option<Vec<Vec<RewardPart>>>,
}

impl StageConfig<LanguageModel> for RewardConfig {
    type Stage = RewardStage;

    /// Checks the config and loads its model as the policy was loaded (its dtype,
    /// precision and device), frozen.
    fn build(&self, setup: &Setup<'_, LanguageModel>) -> Result<RewardStage> {
        RewardStage::new(self.clone(), setup.policy.options())
    }
}

/// R for every answer ([`RewardStage::rewards`]); the context's reference is asked
/// for only when the reward needs it ([`RewardStage::needs_reference`]).
impl Stage<LanguageModel> for RewardStage {
    const NAME: &'static str = "reward";
    const STREAM: u64 = 3;
    type Input = AnswerBatch;
    type Output = RewardBatch;
    type Error = RewardError;

    fn process(
        &mut self,
        cx: &mut Context<'_, LanguageModel>,
        answers: &AnswerBatch,
    ) -> Result<RewardBatch> {
        let reference = match self.needs_reference() {
            true => Some(cx.reference.get()?),
            false => None,
        };
        self.rewards(reference, answers)
    }
}

impl RewardStage {
    /// Checks `config` and loads its model, if it names one; the user's reward
    /// process starts with the first batch.
    pub fn new(config: RewardConfig, options: LoadOptions) -> Result<Self> {
        config.check("reward").map_err(RewardError::Config)?;
        Self::build(config, options)
    }

    fn build(config: RewardConfig, options: LoadOptions) -> Result<Self> {
        let options = LoadOptions {
            trainable: false,
            ..options
        };
        let timeout = Duration::from_secs_f64(config.timeout_seconds);
        let scorer = match config.kind {
            RewardKind::Verifier | RewardKind::Length => Scorer::Rule,
            RewardKind::Judge | RewardKind::RewardModel => Scorer::Model(match &config.model {
                Some(folder) => Some(Box::new(LanguageModel::load(folder, options)?)),
                None => None,
            }),
            RewardKind::Command => Scorer::Command(CommandReward::new(
                config.command.clone(),
                config.dir.clone().unwrap_or_else(|| ".".into()),
                timeout,
            )),
            RewardKind::Http => Scorer::Http(HttpReward::new(
                config.url.clone().expect("validated"),
                timeout,
            )),
            RewardKind::Sum => Scorer::Sum(
                config
                    .sum
                    .iter()
                    .map(|part| Self::build(part.clone(), options))
                    .collect::<Result<_>>()?,
            ),
        };
        if let (RewardKind::RewardModel, Scorer::Model(Some(m))) = (&config.kind, &scorer)
            && m.spec().head != lsp_model::Head::Score
        {
            return Err(lsp_model::ModelError::Invalid(format!(
                "{} is a causal LM: the `reward_model` reward needs a sequence-classification checkpoint",
                m.folder().display()
            ))
            .into());
        }
        Ok(Self { config, scorer })
    }

    /// Whether [`RewardStage::rewards`] needs the reference model: a `judge` reward
    /// (or part of a sum) whose config names no judge of its own.
    pub fn needs_reference(&self) -> bool {
        match &self.scorer {
            Scorer::Model(None) => self.config.kind == RewardKind::Judge,
            Scorer::Sum(parts) => parts.iter().any(Self::needs_reference),
            _ => false,
        }
    }

    /// R for every answer; `reference` is the judge when the config names none (an
    /// error if it is then `None`).
    pub fn rewards(
        &self,
        reference: Option<&LanguageModel>,
        answers: &AnswerBatch,
    ) -> Result<RewardBatch> {
        let scored = self.score(reference, answers)?;
        debug!(answers = scored.rewards.len(), "answers rewarded");
        let rewards: ArrayRef = Arc::new(Float64Array::from(scored.rewards));
        let statuses: ArrayRef = Arc::new(StringArray::from_iter_values(scored.statuses));
        let parts = reward_parts_array(answers.num_rows(), scored.parts)?;
        Ok(RewardBatch::extend(
            answers,
            vec![rewards, statuses, parts],
        )?)
    }

    fn score(&self, reference: Option<&LanguageModel>, answers: &AnswerBatch) -> Result<Scored> {
        let queries = answers.column::<StringArray>(QUERY_TEXT)?;
        let texts = answers.column::<StringArray>(ANSWER_TEXT)?;
        let pairs: Vec<(&str, &str)> = queries
            .iter()
            .zip(texts.iter())
            .map(|(q, a)| (q.unwrap_or(""), a.unwrap_or("")))
            .collect();
        let contents = || {
            pairs
                .iter()
                .map(|p| content_status(p.1).to_string())
                .collect()
        };
        let batch = self.config.batch_size as usize;
        let (rewards, statuses): (Vec<f64>, Vec<String>) = match (&self.scorer, self.config.kind) {
            (Scorer::Sum(parts), _) => return self.sum(parts, reference, answers),
            (Scorer::Command(_) | Scorer::Http(_), _) => self.external(answers, &pairs)?,
            (_, RewardKind::Verifier) => {
                let refs = answers.column::<StringArray>(REFERENCE_ANSWER)?;
                pairs
                    .iter()
                    .zip(refs.iter())
                    .map(|((_, a), r)| {
                        let (reward, status) = verify(a, r);
                        (reward, status.to_string())
                    })
                    .unzip()
            }
            (_, RewardKind::Length) => {
                let target = self.config.target_chars as f64;
                let rewards = pairs
                    .iter()
                    .map(|(_, a)| -(a.chars().count() as f64 - target).abs())
                    .collect();
                (rewards, contents())
            }
            (Scorer::Model(model), RewardKind::RewardModel) => {
                let model = model.as_ref().expect("loaded in build");
                (reward_model_scores(model, &pairs, batch)?, contents())
            }
            (Scorer::Model(model), _) => {
                let judge = model.as_deref().or(reference).ok_or_else(|| {
                    lsp_model::ModelError::Invalid(
                        "the judge reward needs the reference model, and none was given".into(),
                    )
                })?;
                let rewards = judge_scores(judge, &pairs, self.config.max_score, batch)?;
                (rewards, contents())
            }
            (Scorer::Rule, kind) => {
                unreachable!("{kind:?} is computed by a model or the user's code")
            }
        };
        Ok(Scored {
            rewards,
            statuses,
            parts: None,
        })
    }

    /// The weighted sum of the parts; the status is `ok` when every part's is, else
    /// the first other part status as `name:status`.
    fn sum(
        &self,
        parts: &[RewardStage],
        reference: Option<&LanguageModel>,
        answers: &AnswerBatch,
    ) -> Result<Scored> {
        let n = answers.num_rows();
        let mut scored = Scored {
            rewards: vec![0.0; n],
            statuses: vec![String::new(); n],
            parts: Some(vec![Vec::with_capacity(parts.len()); n]),
        };
        for part in parts {
            let one = part.score(reference, answers)?;
            let (name, weight) = (part.config.part_name(), part.config.weight);
            for (i, (reward, status)) in one.rewards.into_iter().zip(one.statuses).enumerate() {
                scored.rewards[i] += weight * reward;
                if scored.statuses[i].is_empty() && status != "ok" {
                    scored.statuses[i] = format!("{name}:{status}");
                }
                scored.parts.as_mut().expect("a sum")[i].push(RewardPart {
                    name: name.to_string(),
                    weight,
                    reward,
                    reward_status: status,
                });
            }
        }
        for status in &mut scored.statuses {
            if status.is_empty() {
                *status = "ok".into();
            }
        }
        Ok(scored)
    }

    /// The user's code's rewards: failures stop the run or get the fallback.
    fn external(
        &self,
        answers: &AnswerBatch,
        pairs: &[(&str, &str)],
    ) -> Result<(Vec<f64>, Vec<String>)> {
        let refs = answers.column::<StringArray>(REFERENCE_ANSWER)?;
        let iterations = answers.column::<UInt64Array>(ITERATION)?;
        let query_ids = answers.column::<UInt32Array>(QUERY_ID)?;
        let answer_indices = answers.column::<UInt32Array>(ANSWER_INDEX)?;
        let requests: Vec<RewardRequest<'_>> = (0..pairs.len())
            .map(|i| RewardRequest {
                query: pairs[i].0,
                answer: pairs[i].1,
                reference: (!refs.is_null(i)).then(|| refs.value(i)),
                iteration: iterations.value(i),
                query_id: query_ids.value(i),
                answer_index: answer_indices.value(i),
            })
            .collect();
        let replies = match &self.scorer {
            Scorer::Command(command) => command.score(&requests),
            Scorer::Http(http) => http.score(&requests),
            _ => unreachable!("called for the user's code only"),
        };
        let mut failures = 0;
        let mut out = (
            Vec::with_capacity(pairs.len()),
            Vec::with_capacity(pairs.len()),
        );
        for (request, reply) in requests.iter().zip(replies) {
            let (reward, status) = match reply {
                Ok(reward) => (reward, content_status(request.answer).to_string()),
                Err(failure) => {
                    if self.config.on_failure == OnFailure::Error {
                        return Err(external_error(self.config.part_name(), request, &failure));
                    }
                    failures += 1;
                    (self.config.fallback_reward, failure.status().to_string())
                }
            };
            out.0.push(reward);
            out.1.push(status);
        }
        if failures > 0 {
            warn!(
                reward = self.config.part_name(),
                failures,
                of = requests.len(),
                fallback = self.config.fallback_reward,
                "rows the reward code could not score got the fallback"
            );
        }
        Ok(out)
    }
}

fn external_error(name: &str, request: &RewardRequest<'_>, failure: &Failure) -> RewardError {
    RewardError::External {
        name: name.to_string(),
        iteration: request.iteration,
        query_id: request.query_id,
        answer_index: request.answer_index,
        message: failure.describe(),
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
