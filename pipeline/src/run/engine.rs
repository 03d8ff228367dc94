//! Everything a worker runs the stages with: the policy, the frozen reference, and
//! each stage built from its section of the config.

use std::time::Instant;

use anyhow::Context;
use lsp_advantage::{AdvantageStage, Mode, QueryTally};
use lsp_challenger::Challenger;
use lsp_model::{LanguageModel, LoadOptions};
use lsp_reward::RewardStage;
use lsp_schemas::{
    AdvantageBatch, AnswerBatch, GameRecordBatch, QueryBatch, RewardBatch, SelfRewardBatch,
    StageSeconds, StepRow, TypedBatch,
};
use lsp_self_reward::SelfReward;
use lsp_solver::Solver;
use lsp_update::{BatchTotals, LocalStep, ReferenceLogprobs, StepSums, Update, over_epochs};
use sha2::{Digest, Sha256};
use tch::Tensor;
use tracing::info;

use super::cluster::Shard;
use super::data::DataQueries;
use super::reference::Reference;
use crate::config::EpochConfig;

/// The models and stages of a run.
pub struct Engine {
    pub policy: LanguageModel,
    reference: Reference,
    challenger: Challenger,
    solver: Solver,
    reward: RewardStage,
    self_reward: SelfReward,
    advantage: AdvantageStage,
    pub update: Update,
    data: Option<DataQueries>,
    num_queries: usize,
    pub seed: u64,
    pub mode: Mode,
    /// Write `final/merged/` beside a trained adapter (`model.save_merged`).
    pub save_merged: bool,
    pub run_id: String,
    /// This worker's share of each iteration.
    pub shard: Shard,
    /// The iteration between its epochs' steps (`update.epochs` > 1).
    round: Option<Round>,
}

/// What the later epochs of an iteration's update reuse, and the earlier epochs'
/// step rows.
#[derive(Debug)]
struct Round {
    advantaged: AdvantageBatch,
    reference_lps: ReferenceLogprobs,
    totals: BatchTotals,
    steps: Vec<StepRow>,
}

/// A worker's half of an update, waiting for the gradient sum.
#[derive(Debug, Clone)]
pub struct LocalUpdate {
    /// Its rows with the measured columns.
    pub updated: lsp_schemas::UpdatedBatch,
    /// Its loss parts.
    pub sums: StepSums,
    /// Its stage timings so far.
    pub seconds: StageSeconds,
    /// Its gradient, kept when it is the run's only worker (nothing to sum).
    pub gradients: Option<std::rc::Rc<Vec<Tensor>>>,
}

/// The policy of a run from `folder` (the configured one, or a checkpoint's): with an
/// adapter (`model.lora` or `model.adapter`), the configured base with the adapter of
/// the checkpoint, of `model.adapter`, or a fresh one seeded by the run's seed (every
/// replica the same).
fn load_policy(
    config: &EpochConfig,
    folder: &std::path::Path,
    options: LoadOptions,
) -> anyhow::Result<LanguageModel> {
    let model = &config.model;
    if model.lora.is_none() && model.adapter.is_none() {
        return LanguageModel::load(folder, options)
            .with_context(|| format!("loading the policy from {}", folder.display()));
    }
    let mut policy = LanguageModel::load(&model.policy, options)
        .with_context(|| format!("loading the base model from {}", model.policy.display()))?;
    let resumed = folder != model.policy.as_path();
    let adapter = match resumed {
        true => Some(folder),
        false => model.adapter.as_deref(),
    };
    match (adapter, &model.lora) {
        (Some(dir), lora) => {
            let own = policy
                .load_adapter(dir)
                .with_context(|| format!("loading the adapter in {}", dir.display()))?;
            if let Some(lora) = lora {
                lora.check_agrees(&own).map_err(anyhow::Error::msg)?;
            }
        }
        (None, Some(lora)) => {
            tch::manual_seed(config.run.seed as i64);
            policy.attach_adapter(lora)?;
        }
        (None, None) => unreachable!("an adapter is configured"),
    }
    Ok(policy)
}

/// Stage numbers that make each stage's seed distinct.
const CHALLENGER: u64 = 1;
const SOLVER: u64 = 2;
const SELF_REWARD: u64 = 4;

impl Engine {
    /// Loads the models (the policy from `policy_folder`: the configured one, or a
    /// checkpoint's) and builds every stage.
    pub fn build(
        config: &EpochConfig,
        policy_folder: &std::path::Path,
        run_id: &str,
        shard: Shard,
    ) -> anyhow::Result<Self> {
        let options = LoadOptions {
            dtype: config.model.dtype,
            precision: config.model.precision,
            device: config.model.device,
            trainable: true,
            allow_past_context: config.model.allow_past_context,
        };
        let policy = load_policy(config, policy_folder, options)?;
        // The reference is the initial policy: the configured folder, never a checkpoint.
        let reference_folder = config
            .model
            .reference
            .as_ref()
            .unwrap_or(&config.model.policy);
        let reference_options = LoadOptions {
            trainable: false,
            ..options
        };
        let offload = config.model.offload_reference;
        let reference = if policy.adapter().is_some() && config.model.reference.is_none() {
            // The base with the adapter off: the same weights, no copy.
            Reference::resident(policy.base_view()?)
        } else if !offload && reference_folder == policy_folder {
            Reference::resident(policy.frozen_copy()?)
        } else {
            Reference::from_folder(reference_folder.clone(), reference_options, offload)?
        };
        let mode = config.run.mode;
        let data = match &config.data {
            Some(d) if mode == Mode::Grpo => Some(DataQueries::load(d, config.run.seed)?),
            _ => None,
        };
        Ok(Self {
            challenger: Challenger::new(config.challenger.clone())?,
            solver: Solver::new(config.solver.clone())?,
            reward: RewardStage::new(
                config.reward.clone(),
                LoadOptions {
                    trainable: false,
                    ..options
                },
            )
            .with_context(|| format!("the reward stage ({})", config.reward.describe()))?,
            self_reward: SelfReward::new(config.self_reward.clone())?,
            advantage: AdvantageStage::new(mode, config.advantage.clone())?,
            update: Update::new(config.update.clone(), &policy)?.with_length_limits(
                config.solver.sampling.max_new_tokens,
                config.challenger.sampling.max_new_tokens,
            ),
            policy,
            reference,
            data,
            num_queries: config.challenger.num_queries as usize,
            seed: config.run.seed,
            mode,
            save_merged: config.model.save_merged,
            run_id: run_id.to_string(),
            shard,
            round: None,
        })
    }

    fn seed(&self, iteration: u64, stage: u64) -> u64 {
        lsp_model::mix(lsp_model::mix(self.seed, iteration), stage)
    }

    /// Stage 1: queries written by the challenger, or taken from data.
    pub fn queries(&self, iteration: u64) -> anyhow::Result<(QueryBatch, StageSeconds)> {
        let start = Instant::now();
        let batch = match &self.data {
            Some(data) => {
                let all = data.queries(iteration, self.num_queries)?.to_rows()?;
                let mine: Vec<_> = all
                    .into_iter()
                    .filter(|q| self.shard.owns(q.query_id))
                    .collect();
                QueryBatch::from_rows(&mine)?
            }
            None => self.challenger.process_shard(
                &self.policy,
                iteration,
                self.seed(iteration, CHALLENGER),
                &self.shard.queries(self.num_queries as u32),
            )?,
        };
        let seconds = StageSeconds {
            challenger: start.elapsed().as_secs_f64(),
            ..StageSeconds::default()
        };
        Ok((batch, seconds))
    }

    /// Stage 2: G answers per query.
    pub fn answers(
        &self,
        iteration: u64,
        (queries, mut s): (QueryBatch, StageSeconds),
    ) -> anyhow::Result<(AnswerBatch, StageSeconds)> {
        let start = Instant::now();
        let batch = self
            .solver
            .process(&self.policy, &queries, self.seed(iteration, SOLVER))?;
        s.solver = start.elapsed().as_secs_f64();
        Ok((batch, s))
    }

    /// Stage 3: the external reward.
    pub fn rewards(
        &mut self,
        (answers, mut s): (AnswerBatch, StageSeconds),
    ) -> anyhow::Result<(RewardBatch, StageSeconds)> {
        let start = Instant::now();
        let reference = match self.reward.needs_reference() {
            true => Some(self.reference.get()?),
            false => None,
        };
        let batch = self.reward.process(reference, &answers)?;
        s.reward = start.elapsed().as_secs_f64();
        Ok((batch, s))
    }

    /// Stage 4: the quality self-reward (mode `lsp` only).
    pub fn self_rewards(
        &mut self,
        iteration: u64,
        (rewarded, mut s): (RewardBatch, StageSeconds),
    ) -> anyhow::Result<(SelfRewardBatch, StageSeconds)> {
        let start = Instant::now();
        let batch = if self.mode.has_self_reward() {
            let seed = self.seed(iteration, SELF_REWARD);
            self.self_reward
                .process(self.reference.get()?, &rewarded, seed)?
        } else {
            SelfReward::disabled(&rewarded)?
        };
        s.self_reward = start.elapsed().as_secs_f64();
        Ok((batch, s))
    }

    /// Each query's part in the batch-wide figures (its rows, its challenger reward),
    /// for every worker to see.
    pub fn tally(&self, judged: &SelfRewardBatch) -> anyhow::Result<Vec<QueryTally>> {
        Ok(self.advantage.tally(judged)?)
    }

    /// Stage 5: advantages, the challenger's baseline over `all` the iteration's
    /// queries (every worker's tallies); with the counts the loss is normalised by.
    pub fn advantages(
        &self,
        (judged, mut s): (SelfRewardBatch, StageSeconds),
        all: &[QueryTally],
    ) -> anyhow::Result<(AdvantageBatch, StageSeconds, BatchTotals)> {
        let start = Instant::now();
        let batch = self.advantage.process_among(&judged, all)?;
        let challenged = || all.iter().filter(|t| t.challenger_reward.is_some());
        let totals = BatchTotals {
            answers: all.iter().map(|t| t.rows as usize).sum(),
            queries: challenged().count(),
            answer_tokens: all.iter().map(|t| t.answer_tokens).sum(),
            query_tokens: challenged().map(|t| t.query_tokens).sum(),
        };
        s.advantage = start.elapsed().as_secs_f64();
        Ok((batch, s, totals))
    }

    /// Stage 6, this worker's half: the reference's log-probs, then the loss over
    /// this worker's rows and its gradient (one tensor per parameter).
    pub fn backward(
        &mut self,
        (advantaged, mut s, totals): (AdvantageBatch, StageSeconds, BatchTotals),
    ) -> anyhow::Result<(LocalUpdate, Vec<Tensor>)> {
        let start = Instant::now();
        let reference_lps = self
            .update
            .reference_logprobs(self.reference.get()?, &advantaged)?;
        // An offloaded reference leaves before the policy's passes keep activations.
        self.reference.release();
        let LocalStep {
            updated,
            sums,
            gradients,
        } = self
            .update
            .backward(&self.policy, &reference_lps, &advantaged, totals)?;
        if self.update.epochs() > 1 {
            self.round = Some(Round {
                advantaged,
                reference_lps,
                totals,
                steps: Vec::new(),
            });
        }
        s.update = start.elapsed().as_secs_f64();
        let local = LocalUpdate {
            updated,
            sums,
            seconds: s,
            gradients: None,
        };
        Ok((local, gradients))
    }

    /// An epoch's step before the iteration's last (`update.epochs` > 1), then this
    /// worker's loss over its rows again for the next: its loss parts and gradient,
    /// the time added to `local`'s.
    pub fn next_epoch(
        &mut self,
        iteration: u64,
        local: &mut LocalUpdate,
        gradients: &[Tensor],
        sums: StepSums,
    ) -> anyhow::Result<Vec<Tensor>> {
        let start = Instant::now();
        let step = self.update.step(iteration, sums, gradients);
        let round = self
            .round
            .as_mut()
            .context("an epoch after the iteration's last")?;
        round.steps.push(step);
        let again = self.update.backward(
            &self.policy,
            &round.reference_lps,
            &round.advantaged,
            round.totals,
        )?;
        local.sums = again.sums;
        local.seconds.update += start.elapsed().as_secs_f64();
        Ok(again.gradients)
    }

    /// Stage 6, together: the (last epoch's) AdamW step with every worker's summed
    /// gradient and loss parts, and this worker's rows of the iteration's game record.
    pub fn step(
        &mut self,
        iteration: u64,
        local: LocalUpdate,
        gradients: &[Tensor],
        sums: StepSums,
    ) -> anyhow::Result<(GameRecordBatch, StepRow)> {
        let start = Instant::now();
        let last = self.update.step(iteration, sums, gradients);
        let step = match self.round.take() {
            Some(round) => over_epochs(round.steps.into_iter().chain([last]).collect()),
            None => last,
        };
        let mut s = local.seconds;
        s.update += start.elapsed().as_secs_f64();
        let record =
            GameRecordBatch::assemble(&self.run_id, self.mode.as_str(), &local.updated, &step, &s)?;
        info!(
            iteration,
            loss = step.loss,
            applied = step.step_applied,
            "update done"
        );
        Ok((record, step))
    }

    /// The shape, kind and device of each trained parameter, in the optimizer's
    /// order (what a gradient sum is turned back into).
    pub fn parameter_layouts(&mut self) -> Vec<(Vec<i64>, tch::Kind, tch::Device)> {
        self.update
            .optimizer()
            .params()
            .map(|p| (p.size(), p.kind(), p.device()))
            .collect()
    }

    /// A SHA-256 of every trained parameter's bytes, in order: equal on replicas that
    /// hold the same weights.
    pub fn weights_hash(&mut self) -> anyhow::Result<u64> {
        let mut hasher = Sha256::new();
        for p in self.update.optimizer().params() {
            let bytes = tch::no_grad(|| {
                p.to_kind(tch::Kind::Float)
                    .contiguous()
                    .view([-1])
                    .view_dtype(tch::Kind::Uint8)
            });
            hasher.update(Vec::<u8>::try_from(&bytes)?);
        }
        let digest = hasher.finalize();
        Ok(u64::from_le_bytes(digest[..8].try_into().expect("8 bytes")))
    }
}
