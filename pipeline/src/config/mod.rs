//! `epoch.yaml`: the typed configuration of a run, one section per stage.

mod load;
mod run;
mod warnings;

pub use load::load_epoch;
pub use run::{DataConfig, RunConfig, StageConfig};

use std::path::Path;

use lsp_advantage::AdvantageConfig;
use lsp_challenger::ChallengerConfig;
use lsp_model::ModelConfig;
use lsp_reward::{RewardConfig, RewardKind};
use lsp_schemas::problems::{Problems, Validate, join_path};
use lsp_self_reward::SelfRewardConfig;
use lsp_solver::SolverConfig;
use lsp_stage::Mode;
use lsp_update::UpdateConfig;
use serde::{Deserialize, Serialize};

use crate::monitor::MonitorConfig;

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
    /// The live collapse monitor: what it measures and when it warns.
    pub monitor: MonitorConfig,
    /// A staged run: each stage continues from the previous one's final weights, with
    /// its own sections where it names them (e.g. LSP, then GRPO on data: the paper's
    /// "LSP + RL"). Empty: one run of the sections above.
    pub stages: Vec<StageConfig>,
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
        if let Some(hostfile) = &mut self.run.hostfile {
            resolve(hostfile);
        }
        resolve(&mut self.model.policy);
        if let Some(reference) = &mut self.model.reference {
            resolve(reference);
        }
        self.reward.resolve_paths(base);
        if let Some(data) = &mut self.data {
            resolve(&mut data.path);
        }
        for stage in &mut self.stages {
            if let Some(data) = &mut stage.data {
                resolve(&mut data.path);
            }
            if let Some(reward) = &mut stage.reward {
                reward.resolve_paths(base);
            }
        }
    }
}

impl Validate for EpochConfig {
    fn validate(&self, _path: &str, problems: &mut Problems) {
        self.model.validate("model", problems);
        // New tokens past the policy's whole context can never be generated (the folder
        // itself was inspected just above; its config.json alone says the context).
        let config_json = self.model.policy.join("config.json");
        let spec = lsp_model::HfConfig::read(&config_json).and_then(|c| c.to_spec(&config_json));
        if let Ok(spec) = spec {
            let context = spec.max_position_embeddings as u64;
            let mut bound = |at: &str, tokens: u64| {
                problems.check(tokens <= context, at, || {
                    format!("{tokens} is more than the policy's whole context of {context} tokens")
                });
            };
            bound(
                "challenger.sampling.max_new_tokens",
                self.challenger.sampling.max_new_tokens,
            );
            bound(
                "solver.sampling.max_new_tokens",
                self.solver.sampling.max_new_tokens,
            );
            if self.run.mode.has_self_reward() {
                bound(
                    "self_reward.justification_tokens",
                    self.self_reward.reply_tokens(),
                );
            }
        }
        self.validate_sections("", problems);
        let mut names = std::collections::HashSet::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let path = format!("stages[{i}]");
            problems.check(
                names.insert(stage.name.as_str()),
                &join_path(&path, "name"),
                || format!("{:?} names two stages", stage.name),
            );
            // A later stage starts from the previous one's final model, which does not
            // exist yet: its model paths are not checked here.
            self.staged(stage).validate_sections(&path, problems);
        }
    }
}

impl EpochConfig {
    /// Checks every section but `model`, with paths under `prefix`.
    fn validate_sections(&self, prefix: &str, problems: &mut Problems) {
        let p = |section: &str| join_path(prefix, section);
        self.run.validate(&p("run"), problems);
        if self.run.mode.has_challenger() {
            self.challenger.validate(&p("challenger"), problems);
        }
        self.solver.validate(&p("solver"), problems);
        self.reward.validate(&p("reward"), problems);
        if self.run.mode.has_self_reward() {
            self.self_reward.validate(&p("self_reward"), problems);
        }
        self.advantage.validate(&p("advantage"), problems);
        self.update.validate(&p("update"), problems);
        self.monitor.validate(&p("monitor"), problems);
        match (&self.data, self.run.mode) {
            (Some(data), _) => data.validate(&p("data"), problems),
            (None, Mode::Grpo) => problems.push(
                p("data"),
                "mode `grpo` takes its queries from data: add a `data:` section with `path`",
            ),
            (None, _) => {}
        }
        if self.reward.uses(RewardKind::Verifier) {
            let has_answers = self
                .data
                .as_ref()
                .is_some_and(|d| d.answer_column.is_some());
            problems.check(self.run.mode == Mode::Grpo && has_answers, &p("reward.kind"), || {
                "the `verifier` reward needs reference answers: mode `grpo` with `data.answer_column`".to_string()
            });
        }
    }

    /// The config of one stage of a staged run: this config with the stage's sections.
    pub fn staged(&self, stage: &StageConfig) -> EpochConfig {
        let mut config = self.clone();
        config.stages = Vec::new();
        config.run.name = stage.name.clone();
        if let Some(mode) = stage.mode {
            config.run.mode = mode;
        }
        if let Some(n) = stage.iterations {
            config.run.iterations = n;
        }
        if let Some(data) = &stage.data {
            config.data = Some(data.clone());
        }
        if let Some(x) = &stage.challenger {
            config.challenger = x.clone();
        }
        if let Some(x) = &stage.solver {
            config.solver = x.clone();
        }
        if let Some(x) = &stage.reward {
            config.reward = x.clone();
        }
        if let Some(x) = &stage.update {
            config.update = x.clone();
        }
        config
    }
}
