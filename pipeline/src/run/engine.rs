//! Everything a worker runs the stages with: the policy, the frozen reference, and
//! each stage built from its section of the config.

use std::time::Instant;

use anyhow::Context;
use lsp_advantage::{AdvantageStage, Mode};
use lsp_challenger::Challenger;
use lsp_model::{LanguageModel, LoadOptions};
use lsp_reward::RewardStage;
use lsp_schemas::{
    AdvantageBatch, AnswerBatch, GameRecordBatch, QueryBatch, RewardBatch, SelfRewardBatch,
    StageSeconds, StepRow,
};
use lsp_self_reward::SelfReward;
use lsp_solver::Solver;
use lsp_update::Update;
use tracing::info;

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
    pub run_id: String,
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
    ) -> anyhow::Result<Self> {
        let options = LoadOptions {
            dtype: config.model.dtype,
            device: config.model.device,
            trainable: true,
        };
        let policy = LanguageModel::load(policy_folder, options)
            .with_context(|| format!("loading the policy from {}", policy_folder.display()))?;
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
        let reference = if !offload && reference_folder == policy_folder {
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
            )?,
            self_reward: SelfReward::new(config.self_reward.clone())?,
            advantage: AdvantageStage::new(mode, config.advantage.clone())?,
            update: Update::new(config.update.clone(), &policy)?,
            policy,
            reference,
            data,
            num_queries: config.challenger.num_queries as usize,
            seed: config.run.seed,
            mode,
            run_id: run_id.to_string(),
        })
    }

    fn seed(&self, iteration: u64, stage: u64) -> u64 {
        lsp_model::mix(lsp_model::mix(self.seed, iteration), stage)
    }

    /// Stage 1: queries written by the challenger, or taken from data.
    pub fn queries(&self, iteration: u64) -> anyhow::Result<(QueryBatch, StageSeconds)> {
        let start = Instant::now();
        let batch = match &self.data {
            Some(data) => data.queries(iteration, self.num_queries)?,
            None => self.challenger.process(
                &self.policy,
                iteration,
                self.seed(iteration, CHALLENGER),
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

    /// Stage 5: advantages.
    pub fn advantages(
        &self,
        (judged, mut s): (SelfRewardBatch, StageSeconds),
    ) -> anyhow::Result<(AdvantageBatch, StageSeconds)> {
        let start = Instant::now();
        let batch = self.advantage.process(&judged)?;
        s.advantage = start.elapsed().as_secs_f64();
        Ok((batch, s))
    }

    /// Stage 6: the update, and the iteration's game record.
    pub fn update(
        &mut self,
        iteration: u64,
        (advantaged, mut s): (AdvantageBatch, StageSeconds),
    ) -> anyhow::Result<(GameRecordBatch, StepRow)> {
        let start = Instant::now();
        let reference_lps = self
            .update
            .reference_logprobs(self.reference.get()?, &advantaged)?;
        // An offloaded reference leaves before the policy's passes keep activations.
        self.reference.release();
        let (updated, step) =
            self.update
                .process_with(&self.policy, reference_lps, &advantaged, iteration)?;
        s.update = start.elapsed().as_secs_f64();
        let record =
            GameRecordBatch::assemble(&self.run_id, self.mode.as_str(), &updated, &step, &s)?;
        info!(
            iteration,
            loss = step.loss,
            applied = step.step_applied,
            "update done"
        );
        Ok((record, step))
    }
}
