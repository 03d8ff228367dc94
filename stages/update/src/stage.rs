//! The update stage: L = L_Sol + α_Ch·L_Ch over micro-batches, one AdamW step.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, ListArray, UInt32Array};
use lsp_model::{InferenceWeights, LanguageModel, Parallelism, TokenLogprobs, TrainingWeights};
use lsp_schemas::columns::*;
use lsp_schemas::problems::Validate;
use lsp_schemas::{AdvantageBatch, StepRow, TypedBatch, UpdatedBatch};
use lsp_stage::{Context, QueryTally, Setup, Stage, StageConfig};
use tch::{Kind, Tensor};
use tracing::{debug, info, warn};

use crate::adamw::AdamW;
use crate::config::{Loss, RolloutCorrection, UpdateConfig};
use crate::error::{Result, UpdateError};
use crate::loss::{Clip, RoleCounts, Terms, grad_norm, sequence_terms, sequence_weight};
use crate::plan::{Item, ItemKey, Plan, tallies_of};

/// The reference's log-probs of a worker's micro-batches, one per micro-batch
/// ([`Update::reference_logprobs`]).
#[derive(Debug)]
pub struct ReferenceLogprobs(Vec<TokenLogprobs>);

/// `(prompt, completion)` of a micro-batch's items.
fn pairs_of(items: &[Item]) -> Vec<(&[u32], &[u32])> {
    items
        .iter()
        .map(|i| (i.prompt.as_slice(), i.completion.as_slice()))
        .collect()
}

/// What the step measured of a sequence (before the weights changed): the sums of its
/// tokens' log-probs under the policy, the reference and the sampler, its KL term and
/// its mean entropy.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measured {
    policy: f64,
    reference: f64,
    sampler: f64,
    kl: f64,
    entropy: f64,
}

/// The counts of an iteration's whole batch (every worker's rows) that the loss is
/// normalised by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchTotals {
    /// Answers: each weighs 1/answers in L_Sol.
    pub answers: usize,
    /// Queries the challenger is trained on: each weighs α_Ch/queries.
    pub queries: usize,
    /// The answers' tokens (the `dapo` loss's normaliser).
    pub answer_tokens: u64,
    /// The trained queries' tokens.
    pub query_tokens: u64,
}

impl BatchTotals {
    /// The totals of an iteration from every worker's tallies of its queries.
    pub fn among(tallies: &[QueryTally]) -> Self {
        let challenged = || tallies.iter().filter(|t| t.challenger_reward.is_some());
        Self {
            answers: tallies.iter().map(|t| t.rows as usize).sum(),
            queries: challenged().count(),
            answer_tokens: tallies.iter().map(|t| t.answer_tokens).sum(),
            query_tokens: challenged().map(|t| t.query_tokens).sum(),
        }
    }

    /// The totals of `batch` as a whole iteration.
    pub fn of(batch: &AdvantageBatch) -> Result<Self> {
        Ok(Self::among(&tallies_of(batch)?))
    }
}

/// A step's loss parts; each worker's [`Update::backward`] gives its own, and the
/// step takes their sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepSums {
    /// L_Sol's part.
    pub loss_solver: f64,
    /// L_Ch's part (before α_Ch).
    pub loss_challenger: f64,
    /// Tokens that carried gradient.
    pub tokens: u64,
    /// Whether any query trained the challenger.
    pub has_challenger: bool,
    /// Tokens whose ratio was clipped below and above.
    pub clipped: (u64, u64),
    /// Σ |log π_trainer − log π_sampler| over the tokens.
    pub mismatch: f64,
}

impl std::ops::Add for StepSums {
    type Output = Self;

    /// The sum of two workers' parts.
    fn add(self, other: Self) -> Self {
        Self {
            loss_solver: self.loss_solver + other.loss_solver,
            loss_challenger: self.loss_challenger + other.loss_challenger,
            tokens: self.tokens + other.tokens,
            has_challenger: self.has_challenger || other.has_challenger,
            clipped: (
                self.clipped.0 + other.clipped.0,
                self.clipped.1 + other.clipped.1,
            ),
            mismatch: self.mismatch + other.mismatch,
        }
    }
}

/// One worker's half of a step ([`Update::backward`]).
#[derive(Debug)]
pub struct LocalStep {
    /// What it measured of each sequence it trained.
    pub measured: Vec<(ItemKey, Measured)>,
    /// Its loss parts.
    pub sums: StepSums,
    /// Its gradient, one tensor per parameter in [`AdamW::params`]'s order.
    pub gradients: Vec<Tensor>,
}

/// Trains the policy, one optimizer step per iteration (per epoch with
/// `update.epochs` > 1).
///
/// An iteration: [`Stage::process`] measures this worker's rows and keeps their loss
/// parts and gradient; the caller sums those over workers ([`Update::take_gradient`])
/// and hands the sums to [`Update::step`] — or first, for each epoch but the last, to
/// [`Update::next_epoch`]. [`Update::train`] does all of it for one worker.
#[derive(Debug)]
pub struct Update {
    config: UpdateConfig,
    optimizer: AdamW,
    /// The solver's and the challenger's `max_new_tokens` (the `dr_grpo` loss's `L`).
    limits: (u64, u64),
    /// The iteration between its `process` and its last step.
    round: Option<Round>,
}

/// What an iteration's later epochs reuse, its earlier epochs' step rows, and the
/// loss parts and gradient waiting to be summed.
#[derive(Debug)]
struct Round {
    /// The micro-batches, their reference log-probs and the totals (with
    /// `update.epochs` > 1).
    again: Option<(Vec<Vec<Item>>, ReferenceLogprobs, BatchTotals)>,
    steps: Vec<StepRow>,
    pending: Option<(StepSums, Vec<Tensor>)>,
}

impl StageConfig<LanguageModel> for UpdateConfig {
    type Stage = Update;

    /// Checks the config and builds AdamW over the policy's trainable weights.
    fn build(&self, setup: &Setup<'_, LanguageModel>) -> Result<Update> {
        Update::new(self.clone(), setup.policy)
    }
}

/// The batch as the whole iteration on one worker ([`Update::train_batches`] on its
/// micro-batches, the context's tallies or the batch's own counting), with its
/// measured columns.
impl Stage<LanguageModel> for Update {
    const NAME: &'static str = "update";
    const STREAM: u64 = 6;
    type Input = AdvantageBatch;
    type Output = UpdatedBatch;
    type Error = UpdateError;

    fn process(
        &mut self,
        cx: &mut Context<'_, LanguageModel>,
        advantaged: &AdvantageBatch,
    ) -> Result<UpdatedBatch> {
        let tallies = match cx.tallies {
            Some(tallies) => tallies.to_vec(),
            None => tallies_of(advantaged)?,
        };
        let batches = self.plan(&tallies, 1).local(self.items(advantaged)?)?;
        let measured = self.train_batches(cx, batches, BatchTotals::among(&tallies))?;
        self.record(advantaged, &measured)
    }
}

fn floats(batch: &AdvantageBatch, name: &str, row: usize) -> Result<Vec<f32>> {
    let lists = batch.column::<ListArray>(name)?;
    let values = lists.value(row);
    let values = values
        .as_any()
        .downcast_ref::<arrow::array::Float32Array>()
        .expect("token log-prob lists hold f32 by schema");
    Ok(values.values().to_vec())
}

fn list(batch: &AdvantageBatch, name: &str, row: usize) -> Result<Vec<u32>> {
    let lists = batch.column::<ListArray>(name)?;
    let values = lists.value(row);
    let ids = values
        .as_any()
        .downcast_ref::<UInt32Array>()
        .expect("token id lists hold u32 by schema");
    Ok(ids.values().to_vec())
}

impl Update {
    /// Checks `config` and builds AdamW over the policy's weights.
    pub fn new(config: UpdateConfig, policy: &LanguageModel) -> Result<Self> {
        config.check("update").map_err(UpdateError::Config)?;
        let params = policy.trainable_variables().into_iter().collect();
        let optimizer = AdamW::new(
            params,
            (config.betas[0], config.betas[1]),
            config.eps,
            config.weight_decay,
        );
        // A long enough micro-batch of as many sequences as threads: the most it splits.
        let threads = tch::get_num_threads().max(1) as usize;
        let long = vec![Parallelism::AUTO_TOKENS_PER_THREAD; threads];
        let most = policy.training_shares(config.parallelism, &long);
        info!(
            parallelism = config.parallelism.name(),
            threads = most,
            micro_batch_size = config.micro_batch_size,
            "training passes: each micro-batch's sequences over at most {most} thread(s)"
        );
        Ok(Self {
            config,
            optimizer,
            limits: (0, 0),
            round: None,
        })
    }

    /// Sets the answers' and queries' most new tokens, which the `dr_grpo` loss
    /// divides by.
    pub fn with_length_limits(mut self, answers: u64, queries: u64) -> Self {
        self.limits = (answers, queries);
        self
    }

    /// The optimizer (to save or restore its state with a checkpoint).
    pub fn optimizer(&mut self) -> &mut AdamW {
        &mut self.optimizer
    }

    /// The sequences of the loss in `batch`: every answer, and each query once when
    /// the challenger is trained (its advantage column is not null).
    pub fn items(&self, batch: &AdvantageBatch) -> Result<Vec<Item>> {
        let query_ids = batch.column::<UInt32Array>(QUERY_ID)?;
        let answer_indices = batch.column::<UInt32Array>(ANSWER_INDEX)?;
        let adv_solver = batch.column::<Float64Array>(ADV_SOLVER)?;
        let adv_challenger = batch.column::<Float64Array>(ADV_CHALLENGER)?;
        let mut items = Vec::with_capacity(batch.num_rows());
        let mut queries = std::collections::HashSet::new();
        for row in 0..batch.num_rows() {
            let query_id = query_ids.value(row);
            items.push(Item {
                key: ItemKey {
                    query_id,
                    answer_index: Some(answer_indices.value(row)),
                },
                prompt: list(batch, ANSWER_PROMPT_TOKEN_IDS, row)?,
                completion: list(batch, ANSWER_TOKEN_IDS, row)?,
                old: floats(batch, ANSWER_TOKEN_LOGPROBS, row)?,
                advantage: adv_solver.value(row),
            });
            if !adv_challenger.is_null(row) && queries.insert(query_id) {
                items.push(Item {
                    key: ItemKey {
                        query_id,
                        answer_index: None,
                    },
                    prompt: list(batch, PROMPT_TOKEN_IDS, row)?,
                    completion: list(batch, QUERY_TOKEN_IDS, row)?,
                    old: floats(batch, QUERY_TOKEN_LOGPROBS, row)?,
                    advantage: adv_challenger.value(row),
                });
            }
        }
        Ok(items)
    }

    /// The plan of an iteration of `tallies` over `workers` workers, in this update's
    /// micro-batches.
    pub fn plan(&self, tallies: &[QueryTally], workers: usize) -> Plan {
        Plan::balance(tallies, workers, self.config.micro_batch_size as usize)
    }

    /// `batch` as a whole iteration on one worker, in its micro-batches.
    pub fn micro_batches(&self, batch: &AdvantageBatch) -> Result<Vec<Vec<Item>>> {
        self.plan(&tallies_of(batch)?, 1).local(self.items(batch)?)
    }

    /// The reference's log-probs of `batches` (an offloaded reference is released
    /// before the policy's passes keep activations), then the loss over them,
    /// normalised by the whole iteration's `totals`: what it measured of each
    /// sequence; the loss parts and gradient are kept for the step
    /// ([`Update::take_gradient`]).
    pub fn train_batches(
        &mut self,
        cx: &mut Context<'_, LanguageModel>,
        batches: Vec<Vec<Item>>,
        totals: BatchTotals,
    ) -> Result<Vec<(ItemKey, Measured)>> {
        let reference_lps = match batches.is_empty() {
            true => ReferenceLogprobs(Vec::new()),
            false => self.reference_logprobs(cx.reference.get()?, &batches)?,
        };
        cx.reference.release();
        let LocalStep {
            measured,
            sums,
            gradients,
        } = self.backward(cx.policy, &reference_lps, &batches, totals)?;
        self.round = Some(Round {
            again: (self.config.epochs > 1).then_some((batches, reference_lps, totals)),
            steps: Vec::new(),
            pending: Some((sums, gradients)),
        });
        Ok(measured)
    }

    /// A whole iteration on one worker: [`Stage::process`], then each epoch's step
    /// with its own loss parts and gradient; the step row is [`over_epochs`]. A step
    /// whose loss or gradient is not finite leaves the weights untouched and says why.
    pub fn train(
        &mut self,
        cx: &mut Context<'_, LanguageModel>,
        batch: &AdvantageBatch,
    ) -> Result<(UpdatedBatch, StepRow)> {
        let updated = self.process(cx, batch)?;
        for _ in 1..self.config.epochs {
            let (sums, gradients) = self.take_gradient()?;
            self.next_epoch(cx.policy, cx.iteration, sums, &gradients)?;
        }
        let (sums, gradients) = self.take_gradient()?;
        Ok((updated, self.step(cx.iteration, sums, &gradients)))
    }

    /// The reference's log-probs of `batches`, with its stacked weights cached for
    /// inference.
    pub fn reference_logprobs(
        &self,
        reference: &LanguageModel,
        batches: &[Vec<Item>],
    ) -> Result<ReferenceLogprobs> {
        let weights = InferenceWeights::new(reference.transformer());
        let per_batch = batches
            .iter()
            .map(|items| {
                let start = std::time::Instant::now();
                let lps = reference.completion_logprobs_with(&weights, &pairs_of(items));
                log_micro_batch(items, start, "micro-batch's reference log-probs");
                lps
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(ReferenceLogprobs(per_batch))
    }

    /// This worker's loss parts and gradient from the last [`Stage::process`] or
    /// [`Update::next_epoch`], to be summed over workers.
    pub fn take_gradient(&mut self) -> Result<(StepSums, Vec<Tensor>)> {
        self.round
            .as_mut()
            .and_then(|round| round.pending.take())
            .ok_or_else(|| {
                UpdateError::Setup("no gradient: the update has not processed a batch".into())
            })
    }

    /// An epoch's step before the iteration's last (`update.epochs` > 1) with every
    /// worker's summed loss parts and gradient, then this worker's loss over its rows
    /// again, for [`Update::take_gradient`].
    pub fn next_epoch(
        &mut self,
        policy: &LanguageModel,
        iteration: u64,
        sums: StepSums,
        gradients: &[Tensor],
    ) -> Result<()> {
        let mut round = self
            .round
            .take()
            .filter(|round| round.again.is_some())
            .ok_or_else(|| UpdateError::Setup("an epoch after the iteration's last".into()))?;
        round.steps.push(self.step_once(iteration, sums, gradients));
        let (batches, reference_lps, totals) = round.again.as_ref().expect("kept when epochs > 1");
        let again = self.backward(policy, reference_lps, batches, *totals)?;
        round.pending = Some((again.sums, again.gradients));
        self.round = Some(round);
        Ok(())
    }

    /// Optimizer steps over each iteration's batch (`update.epochs`).
    pub fn epochs(&self) -> u64 {
        self.config.epochs
    }

    /// The loss over `batches` (this worker's micro-batches of an iteration whose
    /// every sequence is counted in `totals`), its gradient accumulated: what it
    /// measured of each sequence, the loss parts and the gradient, for
    /// [`Update::step`] once every worker's are summed.
    pub fn backward(
        &mut self,
        policy: &LanguageModel,
        reference_lps: &ReferenceLogprobs,
        batches: &[Vec<Item>],
        totals: BatchTotals,
    ) -> Result<LocalStep> {
        if let Some(item) = batches
            .iter()
            .flatten()
            .find(|item| item.old.len() != item.completion.len())
        {
            return Err(UpdateError::Mismatch(format!(
                "a sequence of {} tokens has {} sampled log-probs",
                item.completion.len(),
                item.old.len()
            )));
        }
        let reference_lps = &reference_lps.0;
        let lengths = |chunk: &Vec<Item>| -> Vec<i64> {
            chunk.iter().map(|i| i.completion.len() as i64).collect()
        };
        if reference_lps.len() != batches.len()
            || batches
                .iter()
                .zip(reference_lps)
                .any(|(c, r)| r.lengths != lengths(c))
        {
            return Err(UpdateError::Mismatch(
                "they were computed for another batch or micro-batch size".into(),
            ));
        }
        let mut measured = Vec::with_capacity(batches.iter().map(Vec::len).sum());
        // L_Sol, and L_Ch before α_Ch (so it is reported when α_Ch = 0 too).
        let mut sums = StepSums {
            has_challenger: totals.queries > 0,
            ..StepSums::default()
        };
        if self.config.loss == Loss::DrGrpo && self.limits.0 == 0 {
            return Err(UpdateError::Setup(
                "the dr_grpo loss needs the most new tokens (Update::with_length_limits)".into(),
            ));
        }
        let roles = [
            RoleCounts {
                sequences: totals.answers as f64,
                tokens: totals.answer_tokens as f64,
                limit: self.limits.0 as f64,
            },
            RoleCounts {
                sequences: totals.queries as f64,
                tokens: totals.query_tokens as f64,
                limit: self.limits.1 as f64,
            },
        ];
        self.optimizer.zero_grad();
        // This step's products (bf16 casts under mixed precision), made once.
        let weights = policy.training_weights();
        let config = &self.config;
        for (chunk, reference_lp) in batches.iter().zip(reference_lps) {
            let start = std::time::Instant::now();
            // Each role's (sequences, tokens) in the micro-batch (the bnpo loss's).
            let micro = |challenger: bool| {
                chunk
                    .iter()
                    .filter(|i| i.challenger() == challenger)
                    .fold((0.0, 0.0), |(n, t), i| {
                        (n + 1.0, t + i.completion.len() as f64)
                    })
            };
            let micro = [micro(false), micro(true)];
            // The micro-batch's sequences split over the worker's threads, each
            // share with its rows of the reference's log-probs.
            let tokens: Vec<usize> = chunk
                .iter()
                .map(|i| i.prompt.len() + i.completion.len())
                .collect();
            let shares: Vec<(&[Item], TokenLogprobs)> = policy
                .training_split(config.parallelism, &tokens)
                .into_iter()
                .map(|run| (&chunk[run.clone()], reference_lp.sequences(run)))
                .collect();
            let outs = policy.train_in_parallel(&weights, shares, |policy, weights, share| {
                let (items, reference) = share;
                train_share(policy, weights, items, &reference, micro, roles, config)
            })?;
            for (share_measured, share_sums) in outs {
                measured.extend(share_measured);
                sums = sums + share_sums;
            }
            log_micro_batch(chunk, start, "micro-batch trained");
        }
        Ok(LocalStep {
            measured,
            sums,
            gradients: self.optimizer.gradients(),
        })
    }

    /// The iteration's last AdamW step with `gradients` (every worker's summed, in
    /// [`AdamW::params`]'s order) and the loss parts `sums`: its step row, over the
    /// iteration's epochs ([`over_epochs`]).
    pub fn step(&mut self, iteration: u64, sums: StepSums, gradients: &[Tensor]) -> StepRow {
        let last = self.step_once(iteration, sums, gradients);
        match self.round.take() {
            Some(round) if !round.steps.is_empty() => {
                over_epochs(round.steps.into_iter().chain([last]).collect())
            }
            _ => last,
        }
    }

    /// One AdamW step, unless the loss or gradient is not finite: then the weights are
    /// left untouched and the step row says why.
    fn step_once(&mut self, iteration: u64, sums: StepSums, gradients: &[Tensor]) -> StepRow {
        let StepSums {
            loss_solver,
            loss_challenger,
            tokens,
            has_challenger,
            clipped,
            mismatch,
        } = sums;
        let share = |n: u64| n as f64 / tokens.max(1) as f64;
        let loss = loss_solver + self.config.challenger_coef * loss_challenger;
        let norm = grad_norm(gradients);
        let skip_reason = if !loss.is_finite() {
            Some(format!("non-finite loss ({loss})"))
        } else if !norm.is_finite() {
            Some(format!("non-finite gradient norm ({norm})"))
        } else {
            None
        };
        match &skip_reason {
            Some(reason) => warn!(
                iteration,
                reason, "optimizer step skipped; weights unchanged"
            ),
            None => {
                let max = self.config.max_grad_norm;
                if max > 0.0 && norm > max {
                    tch::no_grad(|| {
                        for g in gradients {
                            let _ = g.shallow_clone().g_mul_scalar_(max / norm);
                        }
                    });
                }
                self.optimizer
                    .step_with(self.config.learning_rate, gradients);
            }
        }
        self.optimizer.release_grads();
        debug!(iteration, loss, grad_norm = norm, tokens, "update step");
        StepRow {
            iteration,
            loss,
            loss_solver,
            loss_challenger: has_challenger.then_some(loss_challenger),
            grad_norm: norm,
            step_applied: skip_reason.is_none(),
            skip_reason,
            learning_rate: self.config.learning_rate,
            update_tokens: tokens,
            clip_low_fraction: share(clipped.0),
            clip_high_fraction: share(clipped.1),
            rollout_mismatch: mismatch / tokens.max(1) as f64,
        }
    }

    /// `batch` with what was measured of its sequences (by any worker) appended: an
    /// answer's columns are zero where it had nothing to train, a query's null.
    pub fn record(
        &self,
        batch: &AdvantageBatch,
        measured: &[(ItemKey, Measured)],
    ) -> Result<UpdatedBatch> {
        let measured: HashMap<ItemKey, Measured> = measured.iter().copied().collect();
        let query_ids = batch.column::<UInt32Array>(QUERY_ID)?;
        let answer_indices = batch.column::<UInt32Array>(ANSWER_INDEX)?;
        let of = |row: usize, answer: bool| {
            measured.get(&ItemKey {
                query_id: query_ids.value(row),
                answer_index: answer.then(|| answer_indices.value(row)),
            })
        };
        let rows = 0..batch.num_rows();
        let query = |f: fn(&Measured) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from(
                rows.clone()
                    .map(|row| of(row, false).map(f))
                    .collect::<Vec<_>>(),
            ))
        };
        let answer = |f: fn(&Measured) -> f64| -> ArrayRef {
            Arc::new(Float64Array::from(
                rows.clone()
                    .map(|row| of(row, true).map(f).unwrap_or_default())
                    .collect::<Vec<_>>(),
            ))
        };
        let columns = vec![
            query(|m| m.policy),
            query(|m| m.reference),
            answer(|m| m.policy),
            answer(|m| m.reference),
            query(|m| m.sampler),
            answer(|m| m.sampler),
            query(|m| m.kl),
            answer(|m| m.kl),
            query(|m| m.entropy),
            answer(|m| m.entropy),
        ];
        Ok(UpdatedBatch::extend(batch, columns)?)
    }
}

/// One iteration's step row from its epochs' rows (in order): the losses and gradient
/// norms averaged, the step applied if every epoch's was (the first reason otherwise),
/// the tokens summed and the clip fractions over all of them.
pub fn over_epochs(steps: Vec<StepRow>) -> StepRow {
    let n = steps.len() as f64;
    let mut rows = steps.into_iter();
    let first = rows.next().expect("at least one epoch");
    let rest: Vec<StepRow> = rows.collect();
    if rest.is_empty() {
        return first;
    }
    let all = || std::iter::once(&first).chain(&rest);
    let mean = |f: fn(&StepRow) -> f64| all().map(f).sum::<f64>() / n;
    let tokens: u64 = all().map(|s| s.update_tokens).sum();
    let clipped = |f: fn(&StepRow) -> f64| {
        all().map(|s| f(s) * s.update_tokens as f64).sum::<f64>() / tokens.max(1) as f64
    };
    StepRow {
        iteration: first.iteration,
        loss: mean(|s| s.loss),
        loss_solver: mean(|s| s.loss_solver),
        loss_challenger: first
            .loss_challenger
            .map(|_| mean(|s| s.loss_challenger.unwrap_or(0.0))),
        grad_norm: mean(|s| s.grad_norm),
        step_applied: all().all(|s| s.step_applied),
        skip_reason: all().find_map(|s| s.skip_reason.clone()),
        learning_rate: first.learning_rate,
        update_tokens: tokens,
        clip_low_fraction: clipped(|s| s.clip_low_fraction),
        clip_high_fraction: clipped(|s| s.clip_high_fraction),
        // Measured before the first step: later epochs' drift is the policy's own.
        rollout_mismatch: first.rollout_mismatch,
    }
}

/// One share of a micro-batch (`items`, `reference` their reference log-probs) on
/// `weights`: its loss's gradient sent into the policy's, what it measured of each
/// sequence and its loss parts. `micro` is each role's (sequences, tokens) in the
/// whole micro-batch, `roles` in the whole iteration.
fn train_share(
    policy: &LanguageModel,
    weights: &TrainingWeights<'_>,
    items: &[Item],
    reference: &TokenLogprobs,
    micro: [(f64, f64); 2],
    roles: [RoleCounts; 2],
    config: &UpdateConfig,
) -> Result<(Vec<(ItemKey, Measured)>, StepSums)> {
    let mut sums = StepSums::default();
    let mut measured = Vec::with_capacity(items.len());
    let pass = policy.training_logprobs(weights, &pairs_of(items))?;
    let lp = &pass.logprobs;
    let advantages: Vec<f64> = items.iter().map(|i| i.advantage).collect();
    let sampled: Vec<f32> = items.iter().flat_map(|i| i.old.iter().copied()).collect();
    let sampled = Tensor::from_slice(&sampled).to_device(lp.values.device());
    // log π_trainer − log π_sampler per token: the mismatch, and TIS's weight.
    let log_ratio = lp.values.detach() - &sampled;
    sums.mismatch += log_ratio.abs().sum(Kind::Double).double_value(&[]);
    let tis = (config.rollout_correction == RolloutCorrection::Tis)
        .then(|| log_ratio.exp().clamp_max(config.tis_cap));
    // Several epochs: PPO's ratio against the sampler's log-probs.
    let clip = (config.epochs > 1).then(|| Clip {
        old: sampled.shallow_clone(),
        low: config.clip_low,
        high: config.clip_high,
    });
    let Terms {
        sums: terms,
        kl,
        clipped,
    } = sequence_terms(
        lp,
        &reference.values,
        &advantages,
        config.kl_coef,
        config.kl_estimator,
        clip.as_ref(),
        tis.as_ref(),
    );
    sums.clipped = clipped;
    // Each sequence's weight in its role's loss (before α_Ch).
    let role_weights: Vec<f64> = items
        .iter()
        .map(|item| {
            let role = usize::from(item.challenger());
            sequence_weight(
                config.loss,
                roles[role],
                item.completion.len() as f64,
                micro[role],
            )
        })
        .collect();
    let loss_weights: Vec<f64> = items
        .iter()
        .zip(&role_weights)
        .map(|(i, w)| match i.challenger() {
            true => w * config.challenger_coef,
            false => *w,
        })
        .collect();
    let loss_weights = Tensor::from_slice(&loss_weights).to_device(terms.device());
    let per_seq = -(terms.to_kind(Kind::Double) * loss_weights);
    per_seq.sum(Kind::Double).backward();
    let lp_sums = Vec::<f32>::try_from(&lp.sums().detach())?;
    let entropy = Vec::<f32>::try_from(&lp.mean_per_sequence(&pass.entropy))?;
    pass.backward();
    let per_seq = Vec::<f64>::try_from(&per_seq.detach())?;
    let terms = Vec::<f32>::try_from(&terms.detach())?;
    let ref_sums = Vec::<f32>::try_from(&reference.sums())?;
    let kl = Vec::<f32>::try_from(&kl)?;
    for (k, item) in items.iter().enumerate() {
        measured.push((
            item.key,
            Measured {
                policy: lp_sums[k] as f64,
                reference: ref_sums[k] as f64,
                sampler: item.old.iter().map(|&x| f64::from(x)).sum(),
                kl: kl[k] as f64,
                entropy: entropy[k] as f64,
            },
        ));
        if item.challenger() {
            sums.loss_challenger -= terms[k] as f64 * role_weights[k];
        } else {
            sums.loss_solver += per_seq[k];
        }
        sums.tokens += item.completion.len() as u64;
    }
    Ok((measured, sums))
}

/// The debug line of a micro-batch's pass that began at `start`: its sequences,
/// prompt and completion tokens and seconds (counted only when debug is on).
fn log_micro_batch(items: &[Item], start: std::time::Instant, what: &str) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let (prompt_tokens, completion_tokens) = Plan::tokens(items);
        debug!(
            sequences = items.len(),
            prompt_tokens,
            completion_tokens,
            seconds = start.elapsed().as_secs_f64(),
            "{what}"
        );
    }
}
