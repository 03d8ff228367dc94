//! Everything a worker runs the stages with: the policy, the frozen reference, and
//! each stage built from its section of the config.

use std::hash::Hasher as _;
use std::time::Instant;

use anyhow::Context as _;
use lsp_model::{LanguageModel, LoadOptions, RolloutWeights};
use lsp_schemas::{GameRecordBatch, SlotBatch, StageSeconds, StepRow, UpdatedBatch};
use lsp_stage::{Context, Mode, QueryTally, Stage};
use lsp_update::{BatchTotals, Item, ItemKey, Measured, StepSums, Update};
use tch::Tensor;
use tracing::{debug, info};

use super::cluster::Shard;
use super::records::Released;
use super::reference::Reference;
use super::stages::Stages;
use crate::config::EpochConfig;

/// The models and stages of a run, on one worker.
pub struct Engine {
    pub policy: LanguageModel,
    reference: Reference,
    pub stages: Stages,
    num_queries: u32,
    pub seed: u64,
    pub mode: Mode,
    /// Write `final/merged/` beside a trained adapter (`model.save_merged`).
    pub save_merged: bool,
    pub run_id: String,
    /// This worker's share of each iteration.
    pub shard: Shard,
    /// A checkpoint being written from the live weights: the next step waits for it.
    checkpoint_in_flight: Option<Released>,
}

/// A worker's half of an update, waiting for the gradient sum.
#[derive(Debug, Clone)]
pub struct LocalUpdate {
    /// Its rows with the measured columns.
    pub updated: UpdatedBatch,
    /// Its loss parts.
    pub sums: StepSums,
    /// Its stage timings so far.
    pub seconds: StageSeconds,
    /// Its gradient, kept when it is the run's only worker (nothing to sum).
    pub gradients: super::game::KeptGradient,
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
            policy.attach_adapter(lora, config.run.seed)?;
        }
        (None, None) => unreachable!("an adapter is configured"),
    }
    Ok(policy)
}

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
            emulate_bf16: config.model.emulate_bf16,
            rollout_weights: config.model.rollout_weights,
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
        // The reference judges in the products' kind: int8 is for the policy's rollouts.
        let reference_options = LoadOptions {
            trainable: false,
            rollout_weights: RolloutWeights::Products,
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
        Ok(Self {
            stages: Stages::build(config, &policy)?,
            policy,
            reference,
            num_queries: config.challenger.num_queries as u32,
            seed: config.run.seed,
            mode: config.run.mode,
            save_merged: config.model.save_merged,
            run_id: run_id.to_string(),
            shard,
            checkpoint_in_flight: None,
        })
    }

    /// This worker's queries of `iteration` to write: what its dataflow starts from.
    pub fn slots(&self, iteration: u64) -> anyhow::Result<(SlotBatch, StageSeconds)> {
        let slots = SlotBatch::of(iteration, &self.shard.queries(self.num_queries))?;
        Ok((slots, StageSeconds::default()))
    }

    /// The stage `pick` chooses, on this worker's batch of `iteration`: its context
    /// (the models, its seed for the iteration, the iteration's `tallies` where the
    /// dataflow has gathered them), its time added to the batch's timings.
    pub fn run<S>(
        &mut self,
        pick: fn(&mut Stages) -> &mut S,
        iteration: u64,
        tallies: Option<&[QueryTally]>,
        (input, mut seconds): (S::Input, StageSeconds),
    ) -> anyhow::Result<(S::Output, StageSeconds)>
    where
        S: Stage<LanguageModel>,
        anyhow::Error: From<S::Error>,
    {
        let start = Instant::now();
        let seed = lsp_model::mix(lsp_model::mix(self.seed, iteration), S::STREAM);
        let mut cx = Context::new(&self.policy, &mut self.reference, iteration, seed);
        cx.tallies = tallies;
        let output = pick(&mut self.stages).process(&mut cx, &input)?;
        *seconds
            .of_stage(S::NAME)
            .with_context(|| format!("no timing column for the stage `{}`", S::NAME))? +=
            start.elapsed().as_secs_f64();
        Ok((output, seconds))
    }

    /// Each query's part in the batch-wide figures (its rows, its challenger reward),
    /// for every worker to see.
    pub fn tally(&self, judged: &lsp_schemas::SelfRewardBatch) -> anyhow::Result<Vec<QueryTally>> {
        Ok(self.stages.advantage.tally(judged)?)
    }

    /// The update's micro-batches `batches` dealt to this worker in `iteration`
    /// ([`lsp_update::Plan`]), normalised by the whole iteration's `tallies`: what it
    /// measured of each sequence; its loss parts and gradient wait in the update stage.
    pub fn train(
        &mut self,
        iteration: u64,
        tallies: &[QueryTally],
        batches: Vec<Vec<Item>>,
    ) -> anyhow::Result<Vec<(ItemKey, Measured)>> {
        let seed = lsp_model::mix(lsp_model::mix(self.seed, iteration), Update::STREAM);
        let mut cx = Context::new(&self.policy, &mut self.reference, iteration, seed);
        let totals = BatchTotals::among(tallies);
        Ok(self.stages.update.train_batches(&mut cx, batches, totals)?)
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
        self.wait_for_checkpoint();
        let update = &mut self.stages.update;
        update.next_epoch(&self.policy, iteration, sums, gradients)?;
        let (sums, gradients) = update.take_gradient()?;
        local.sums = sums;
        local.seconds.update += start.elapsed().as_secs_f64();
        Ok(gradients)
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
        self.wait_for_checkpoint();
        let step = self.stages.update.step(iteration, sums, gradients);
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

    /// Keeps the weights and the optimizer's state as they are until `released`: a
    /// checkpoint is being written from them.
    pub fn hold_weights(&mut self, released: Released) {
        self.checkpoint_in_flight = Some(released);
    }

    /// Waits until the checkpoint being written from the weights, if any, is done.
    fn wait_for_checkpoint(&mut self) {
        if let Some(released) = self.checkpoint_in_flight.take() {
            let start = Instant::now();
            released.wait();
            debug!(
                seconds = start.elapsed().as_secs_f64(),
                "step waited for the checkpoint"
            );
        }
    }

    /// The shape, kind and device of each trained parameter, in the optimizer's
    /// order (what a gradient sum is turned back into).
    pub fn parameter_layouts(&mut self) -> Vec<(Vec<i64>, tch::Kind, tch::Device)> {
        self.stages
            .update
            .optimizer()
            .params()
            .map(|p| (p.size(), p.kind(), p.device()))
            .collect()
    }

    /// An XXH3 hash of every trained parameter's bytes, in order: equal on replicas
    /// that hold the same weights (a check that they agree, not of integrity: fast).
    pub fn weights_hash(&mut self) -> anyhow::Result<u64> {
        let mut hasher = twox_hash::XxHash3_64::with_seed(0);
        for p in self.stages.update.optimizer().params() {
            let bytes = tch::no_grad(|| {
                p.to_kind(tch::Kind::Float)
                    .contiguous()
                    .view([-1])
                    .view_dtype(tch::Kind::Uint8)
            });
            hasher.write(&Vec::<u8>::try_from(&bytes)?);
        }
        Ok(hasher.finish())
    }
}
