//! Where a run's files live under `output_dir/name/`, and finding a run's last
//! complete checkpoint.

use std::path::{Path, PathBuf};

use anyhow::Context;
use arrow::compute::concat_batches;
use lsp_schemas::{GameRecordBatch, TypedBatch, game_record_schema, read_batches};

/// A run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    root: PathBuf,
}

/// Written last into a checkpoint folder: the checkpoint is complete only with it.
pub const COMPLETE: &str = "state.json";

/// A checkpoint's policy folder (Hugging Face, or PEFT for an adapter).
pub const CHECKPOINT_MODEL: &str = "model";

/// A checkpoint's AdamW state.
pub const CHECKPOINT_OPTIMIZER: &str = "optimizer.safetensors";

impl RunDir {
    /// The folder of run `name` under `output_dir`.
    pub fn new(output_dir: &Path, name: &str) -> Self {
        Self {
            root: output_dir.join(name),
        }
    }

    /// The run folder `root` itself (e.g. the argument of `pipeline report`).
    pub fn at(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// The run folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `manifest.json`: what the run was started with.
    pub fn manifest(&self) -> PathBuf {
        self.root.join("manifest.json")
    }

    /// The folder of the Parquet game records.
    pub fn records(&self) -> PathBuf {
        self.root.join("records")
    }

    /// The game record of `iteration`.
    pub fn record(&self, iteration: u64) -> PathBuf {
        self.records()
            .join(format!("iteration-{iteration:06}.parquet"))
    }

    /// The folder of the live monitor's rows.
    pub fn monitor(&self) -> PathBuf {
        self.root.join("monitor")
    }

    /// The live monitor's row of `iteration`.
    pub fn monitor_row(&self, iteration: u64) -> PathBuf {
        self.monitor()
            .join(format!("iteration-{iteration:06}.parquet"))
    }

    /// Iterations of the monitor files present, sorted.
    pub fn monitored_iterations(&self) -> anyhow::Result<Vec<u64>> {
        numbered(&self.monitor(), "iteration-", ".parquet")
    }

    /// The checkpoint folder of `iteration`.
    pub fn checkpoint(&self, iteration: u64) -> PathBuf {
        self.root
            .join("checkpoints")
            .join(format!("iteration-{iteration:06}"))
    }

    /// The policy folder of checkpoint `iteration`.
    pub fn checkpoint_model(&self, iteration: u64) -> PathBuf {
        self.checkpoint(iteration).join(CHECKPOINT_MODEL)
    }

    /// The AdamW state of checkpoint `iteration`.
    pub fn checkpoint_optimizer(&self, iteration: u64) -> PathBuf {
        self.checkpoint(iteration).join(CHECKPOINT_OPTIMIZER)
    }

    /// The file whose presence marks a checkpoint complete.
    pub fn checkpoint_state(&self, iteration: u64) -> PathBuf {
        self.checkpoint(iteration).join(COMPLETE)
    }

    /// The final model.
    pub fn final_model(&self) -> PathBuf {
        self.root.join("final")
    }

    /// The final model's iteration and checksums.
    pub fn final_state(&self) -> PathBuf {
        self.root.join("final.json")
    }

    /// Iterations of the record files present, sorted.
    pub fn recorded_iterations(&self) -> anyhow::Result<Vec<u64>> {
        numbered(&self.records(), "iteration-", ".parquet")
    }

    /// The game record of `iteration`, as one batch.
    pub fn read_record(&self, iteration: u64) -> anyhow::Result<GameRecordBatch> {
        let path = self.record(iteration);
        let batches = read_batches(&path).with_context(|| format!("reading {}", path.display()))?;
        let batch = concat_batches(&game_record_schema(), &batches)
            .with_context(|| format!("reading {}", path.display()))?;
        GameRecordBatch::try_new(batch).with_context(|| format!("reading {}", path.display()))
    }

    /// The newest checkpoint whose state file was written.
    pub fn last_checkpoint(&self) -> anyhow::Result<Option<u64>> {
        Ok(self.checkpoints()?.last().copied())
    }

    /// The iterations of the complete checkpoints (state file written), sorted.
    pub fn checkpoints(&self) -> anyhow::Result<Vec<u64>> {
        let all = numbered(&self.root.join("checkpoints"), "iteration-", "")?;
        Ok(all
            .into_iter()
            .filter(|&i| self.checkpoint_state(i).is_file())
            .collect())
    }

    /// The first iteration up to `done` whose record — or monitor row, when the
    /// monitor ran — is missing or unreadable, and why.
    pub fn first_unsound(&self, done: u64, monitored: bool) -> Option<(u64, String)> {
        (1..=done).find_map(|t| {
            let mut files = vec![("record", self.record(t))];
            if monitored {
                files.push(("monitor row", self.monitor_row(t)));
            }
            files.into_iter().find_map(|(what, path)| {
                let problem = match path.is_file() {
                    false => Some(format!("its {what} {} is missing", path.display())),
                    true => read_batches(&path)
                        .err()
                        .map(|e| format!("its {what} {} is unreadable ({e})", path.display())),
                };
                problem.map(|p| (t, p))
            })
        })
    }

    /// Removes the leftovers of writes a kill interrupted (`.NAME.tmp-PID`) in the
    /// records and monitor folders; how many.
    pub fn remove_partial_writes(&self) -> anyhow::Result<usize> {
        let mut removed = 0;
        for folder in [self.records(), self.monitor()] {
            if !folder.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(&folder)? {
                let path = entry?.path();
                let name = path.file_name().unwrap_or_default().to_string_lossy();
                if name.starts_with('.') && name.contains(".tmp-") {
                    std::fs::remove_file(&path)
                        .with_context(|| format!("removing {}", path.display()))?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// Whether the run has produced anything yet.
    pub fn has_output(&self) -> bool {
        self.records().is_dir() || self.root.join("checkpoints").is_dir()
    }

    /// Takes the run folder's exclusive lock (`.lock`, an OS file lock: released when
    /// the returned file closes, at exit or on a kill), creating the folder; a clear
    /// error when another process holds it.
    pub fn lock(&self) -> anyhow::Result<std::fs::File> {
        std::fs::create_dir_all(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        let path = self.root.join(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(file),
            Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
                "{} is in use by another `pipeline run` (it holds {}): wait for it to \
                 stop, or set another run.name or run.output_dir",
                self.root.display(),
                path.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

/// Numbers `N` of the entries `prefix N suffix` in `dir` (none when it is missing).
fn numbered(dir: &Path, prefix: &str, suffix: &str) -> anyhow::Result<Vec<u64>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(n) = name
            .strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(suffix))
            .and_then(|n| n.parse().ok())
        {
            out.push(n);
        }
    }
    out.sort();
    Ok(out)
}
