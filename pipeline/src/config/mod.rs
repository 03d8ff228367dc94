//! `epoch.yaml`: the typed configuration of a run, one section per stage.

mod load;
mod run;

pub use load::load_epoch;
pub use run::{DataConfig, RunConfig};

use std::path::Path;

use lsp_advantage::{AdvantageConfig, Mode};
use lsp_challenger::ChallengerConfig;
use lsp_model::ModelConfig;
use lsp_reward::{RewardConfig, RewardKind};
use lsp_schemas::problems::{Problems, Validate};
use lsp_self_reward::SelfRewardConfig;
use lsp_solver::SolverConfig;
use lsp_update::UpdateConfig;
use serde::{Deserialize, Serialize};

/// The whole of `epoch.yaml`. Every section may be left out and takes its defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpochConfig {
    /// Run-wide settings: name, mode, iterations, seed, threads, output.
    pub run: RunConfig,
    /// Policy and reference checkpoints.
    pub model: ModelConfig,
    /// Query generation.
    pub challenger: ChallengerConfig,
    /// Answer sampling.
    pub solver: SolverConfig,
    /// External reward.
    pub reward: RewardConfig,
    /// Quality self-reward (used in mode `lsp`).
    pub self_reward: SelfRewardConfig,
    /// Advantage options.
    pub advantage: AdvantageConfig,
    /// Loss and optimizer.
    pub update: UpdateConfig,
    /// Queries from data (mode `grpo`).
    pub data: Option<DataConfig>,
}

impl EpochConfig {
    /// Makes every relative path absolute against `base` (the YAML file's folder), so
    /// a run behaves the same from any working directory.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut std::path::PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.run.output_dir);
        resolve(&mut self.model.policy);
        if let Some(reference) = &mut self.model.reference {
            resolve(reference);
        }
        if let Some(model) = &mut self.reward.model {
            resolve(model);
        }
        if let Some(data) = &mut self.data {
            resolve(&mut data.path);
        }
    }
}

impl Validate for EpochConfig {
    fn validate(&self, _path: &str, problems: &mut Problems) {
        self.run.validate("run", problems);
        self.model.validate("model", problems);
        if self.run.mode.has_challenger() {
            self.challenger.validate("challenger", problems);
        }
        self.solver.validate("solver", problems);
        self.reward.validate("reward", problems);
        if self.run.mode.has_self_reward() {
            self.self_reward.validate("self_reward", problems);
        }
        self.advantage.validate("advantage", problems);
        self.update.validate("update", problems);
        match (&self.data, self.run.mode) {
            (Some(data), _) => data.validate("data", problems),
            (None, Mode::Grpo) => {
                problems.push(
                    "data",
                    "mode `grpo` takes its queries from data: add a `data:` section with `path`",
                );
            }
            (None, _) => {}
        }
        if self.reward.kind == RewardKind::Verifier {
            let has_answers = self
                .data
                .as_ref()
                .is_some_and(|d| d.answer_column.is_some());
            problems.check(self.run.mode == Mode::Grpo && has_answers, "reward.kind", || {
                "the `verifier` reward needs reference answers: mode `grpo` with `data.answer_column`".to_string()
            });
        }
    }
}
