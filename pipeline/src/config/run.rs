//! The `run` and `data` sections of `epoch.yaml`.

use std::path::PathBuf;

use lsp_schemas::problems::{Problems, Validate, join_path};
use lsp_stage::Mode;
use serde::{Deserialize, Serialize};

/// Run-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// The run's name: its output lands in `output_dir/name/`.
    pub name: String,
    /// Which game is played: `lsp`, `lsp_zero` or `grpo`.
    pub mode: Mode,
    /// Iterations (one optimizer step each).
    pub iterations: u64,
    /// Seed of every random draw of the run.
    pub seed: u64,
    /// Save a checkpoint every this many iterations (0: only the final model).
    pub checkpoint_every: u64,
    /// libtorch intra-op threads per worker.
    pub threads: u64,
    /// timely workers (threads) per process, each with a replica of the models and
    /// its share of the queries. libtorch's threads and timely's workers share the
    /// cores: `threads × workers` should not exceed them.
    pub workers: u64,
    /// Processes of the run (`--processes`); more than one needs `hostfile`.
    pub processes: u64,
    /// This process's index among them, from 0 (`--process`).
    pub process: u64,
    /// One `host:port` per line, a line per process in order (`--hostfile`).
    pub hostfile: Option<PathBuf>,
    /// Compare a hash of every replica's weights every this many iterations (0:
    /// never); replicas that differ stop the run.
    pub replica_check_every: u64,
    /// Stop with an error after this many optimizer steps in a row were skipped (a
    /// non-finite loss or gradient); 0 never stops.
    pub max_skipped_steps: u64,
    /// Output root.
    pub output_dir: PathBuf,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            name: "lsp".to_string(),
            mode: Mode::Lsp,
            iterations: 3,
            seed: 0,
            checkpoint_every: 1,
            threads: 2,
            workers: 1,
            processes: 1,
            process: 0,
            hostfile: None,
            replica_check_every: 1,
            max_skipped_steps: 3,
            output_dir: PathBuf::from("data-out"),
        }
    }
}

impl Validate for RunConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let p = |f: &str| join_path(path, f);
        let name_ok = !self.name.is_empty()
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !self.name.starts_with('.');
        problems.check(name_ok, &p("name"), || {
            format!(
                "{:?} is not a folder name: use letters, digits, '-', '_' and '.'",
                self.name
            )
        });
        problems.positive(&p("iterations"), self.iterations);
        problems.positive(&p("threads"), self.threads);
        problems.positive(&p("workers"), self.workers);
        problems.positive(&p("processes"), self.processes);
        problems.check(self.process < self.processes, &p("process"), || {
            format!(
                "process {} of {}: processes are numbered from 0",
                self.process, self.processes
            )
        });
        problems.check(
            self.processes == 1 || self.hostfile.is_some(),
            &p("hostfile"),
            || {
                format!(
                    "{} processes need a hostfile: one host:port per line, one line per process",
                    self.processes
                )
            },
        );
    }
}

impl RunConfig {
    /// Workers of the whole run, over every process.
    pub fn total_workers(&self) -> u64 {
        self.workers * self.processes
    }

    /// A warning when this process's workers and their libtorch threads ask for more
    /// cores than the machine has.
    pub fn oversubscription(&self) -> Option<String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
        let wanted = self.workers * self.threads;
        (wanted > cores).then(|| {
            format!(
                "run.workers × run.threads = {} × {} = {wanted} threads on {cores} cores: \
                 they will slow each other down (lower run.threads)",
                self.workers, self.threads
            )
        })
    }
}

/// Where `grpo` mode reads its queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A JSONL or Parquet file.
    pub path: PathBuf,
    /// The column holding the instruction.
    #[serde(default = "default_prompt_column")]
    pub prompt_column: String,
    /// The column holding a reference answer (for the `verifier` reward).
    #[serde(default)]
    pub answer_column: Option<String>,
}

fn default_prompt_column() -> String {
    "instruction".to_string()
}

impl Validate for DataConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let p = join_path(path, "path");
        if !self.path.is_file() {
            problems.push(p, format!("{} is not a file", self.path.display()));
        } else {
            let ext = self.path.extension().and_then(|e| e.to_str()).unwrap_or("");
            problems.check(matches!(ext, "jsonl" | "parquet"), &p, || {
                format!(
                    "{}: expected a .jsonl or .parquet file",
                    self.path.display()
                )
            });
        }
    }
}

/// One stage of a staged run. Sections it leaves out are the run's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageConfig {
    /// The stage's folder under the run's folder.
    pub name: String,
    /// The game of this stage.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Iterations of this stage.
    #[serde(default)]
    pub iterations: Option<u64>,
    /// Queries from data (mode `grpo`).
    #[serde(default)]
    pub data: Option<DataConfig>,
    /// Query generation.
    #[serde(default)]
    pub challenger: Option<lsp_challenger::ChallengerConfig>,
    /// Answer sampling.
    #[serde(default)]
    pub solver: Option<lsp_solver::SolverConfig>,
    /// External reward.
    #[serde(default)]
    pub reward: Option<lsp_reward::RewardConfig>,
    /// Loss and optimizer.
    #[serde(default)]
    pub update: Option<lsp_update::UpdateConfig>,
}
