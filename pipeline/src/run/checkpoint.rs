//! Checkpoints: the policy as a Hugging Face folder, the optimizer's state, and the
//! iteration, with `state.json` written last so that a half-written checkpoint is
//! never taken for a complete one. `state.json` holds the SHA-256 of every other
//! file, verified before a resume loads them; `final.json` does the same for the
//! final model, which finishing verifies and rewrites from the last checkpoint when
//! it is missing or damaged.

use std::path::{Path, PathBuf};

use anyhow::Context;
use lsp_model::{LanguageModel, LoadOptions, ModelSnapshot};
use serde::{Deserialize, Serialize};
use tch::Tensor;

use super::checksums::{Digests, digest_folder, verify};
use super::engine::Engine;
use super::layout::{CHECKPOINT_MODEL, CHECKPOINT_OPTIMIZER, RunDir};
use crate::config::EpochConfig;

/// `state.json` of a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The last iteration the checkpoint includes.
    pub iteration: u64,
    /// The run's seed (every draw derives from it and the iteration).
    pub seed: u64,
    /// Optimizer steps taken.
    pub optimizer_steps: i64,
    /// SHA-256 of each file of the checkpoint (empty in checkpoints of earlier
    /// versions, which are then not verified).
    #[serde(default)]
    pub files: Digests,
}

/// `final.json` beside the final model: the iteration it is from and its files'
/// digests.
#[derive(Debug, Serialize, Deserialize)]
struct FinalState {
    iteration: u64,
    files: Digests,
}

/// A checkpoint taken after an iteration, not yet written: the policy's and the
/// optimizer's tensors share the live ones' storage, so the weights must not change
/// until [`Checkpoint::write`] returns (the engine holds its next step until then).
pub struct Checkpoint {
    folder: PathBuf,
    state_path: PathBuf,
    model: ModelSnapshot,
    optimizer: Vec<(String, Tensor)>,
    state: CheckpointState,
}

impl Checkpoint {
    /// The engine's policy and optimizer after `iteration`, as they are now.
    pub fn take(dir: &RunDir, engine: &mut Engine, iteration: u64) -> Self {
        let optimizer = engine.stages.update.optimizer();
        Self {
            folder: dir.checkpoint(iteration),
            state_path: dir.checkpoint_state(iteration),
            model: engine.policy.snapshot(),
            optimizer: optimizer.state(),
            state: CheckpointState {
                iteration,
                seed: engine.seed,
                optimizer_steps: optimizer.steps(),
                files: Digests::default(),
            },
        }
    }

    /// Writes the checkpoint's files, then `state.json` with their digests.
    pub fn write(mut self) -> anyhow::Result<()> {
        let folder = &self.folder;
        if folder.exists() {
            std::fs::remove_dir_all(folder)?;
        }
        // Every file's digest as it was written (the weights are not read back).
        let model = self.model.write(&folder.join(CHECKPOINT_MODEL))?;
        let files = &mut self.state.files;
        files.extend(under(CHECKPOINT_MODEL, model));
        let optimizer = folder.join(CHECKPOINT_OPTIMIZER);
        let optimizer = lsp_model::write_safetensors(&self.optimizer, &optimizer)?;
        files.insert(CHECKPOINT_OPTIMIZER.into(), optimizer);
        write_atomic(&self.state_path, &serde_json::to_vec_pretty(&self.state)?)
    }
}

/// Reads a checkpoint's state.
pub fn load_state(dir: &RunDir, iteration: u64) -> anyhow::Result<CheckpointState> {
    let path = dir.checkpoint_state(iteration);
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is corrupt", path.display()))
}

/// Reads checkpoint `iteration`'s state and verifies its files against it.
pub fn load_verified(dir: &RunDir, iteration: u64) -> anyhow::Result<CheckpointState> {
    let state = load_state(dir, iteration)?;
    if state.files.is_empty() {
        tracing::warn!(
            iteration,
            "checkpoint without checksums (an earlier version's): not verified"
        );
    } else {
        verify(&dir.checkpoint(iteration), &state.files).with_context(|| {
            format!(
                "checkpoint {iteration} is damaged: remove {} to resume from the one before",
                dir.checkpoint(iteration).display()
            )
        })?;
    }
    Ok(state)
}

/// Saves the final model of `iteration` and its digests.
pub fn save_final(dir: &RunDir, engine: &Engine, iteration: u64) -> anyhow::Result<()> {
    let folder = dir.final_model();
    if folder.exists() {
        std::fs::remove_dir_all(&folder)?;
    }
    // Every file's digest as it was written (the weights are not read back).
    let mut files = engine.policy.save(&folder)?;
    if engine.save_merged {
        files.extend(under(
            MERGED,
            engine.policy.save_merged(&folder.join(MERGED))?,
        ));
    }
    seal_final(dir, iteration, files)
}

/// A trained adapter's merged model, under the final model's folder.
const MERGED: &str = "merged";

/// `digests` of the files of a subfolder, named from the folder above it.
fn under(subfolder: &str, digests: Digests) -> impl Iterator<Item = (String, String)> + '_ {
    digests
        .into_iter()
        .map(move |(name, digest)| (format!("{subfolder}/{name}"), digest))
}

/// Writes `final.json`: the final model of `iteration` with its files' digests.
fn seal_final(dir: &RunDir, iteration: u64, files: Digests) -> anyhow::Result<()> {
    let state = FinalState { iteration, files };
    write_atomic(&dir.final_state(), &serde_json::to_vec_pretty(&state)?)
}

/// Verifies the final model of a finished run of `total` iterations; when it is
/// missing or damaged, rewrites it from checkpoint `total` (itself verified) and
/// says so. A trained adapter's `merged/` folder (`model.save_merged`) is made again
/// from the configured base and the checkpoint's adapter.
pub fn ensure_final(
    dir: &RunDir,
    total: u64,
    config: &EpochConfig,
) -> anyhow::Result<Option<String>> {
    let sound = std::fs::read(dir.final_state())
        .map_err(anyhow::Error::from)
        .and_then(|bytes| Ok(serde_json::from_slice::<FinalState>(&bytes)?))
        .and_then(|state| {
            anyhow::ensure!(
                state.iteration == total,
                "it is from iteration {}",
                state.iteration
            );
            verify(&dir.final_model(), &state.files)
        });
    let Err(problem) = sound else {
        return Ok(None);
    };
    load_verified(dir, total).with_context(|| {
        format!("the final model is unusable ({problem:#}) and cannot be rewritten")
    })?;
    let folder = dir.final_model();
    if folder.exists() {
        std::fs::remove_dir_all(&folder)?;
    }
    std::fs::create_dir_all(&folder)?;
    let source = dir.checkpoint_model(total);
    for entry in std::fs::read_dir(&source)? {
        let path = entry?.path();
        std::fs::copy(&path, folder.join(path.file_name().expect("a file")))
            .with_context(|| format!("copying {} into {}", path.display(), folder.display()))?;
    }
    let adapter = config.model.lora.is_some() || config.model.adapter.is_some();
    if adapter && config.model.save_merged {
        let options = LoadOptions {
            device: config.model.device,
            ..LoadOptions::default()
        };
        let mut model = LanguageModel::load(&config.model.policy, options).with_context(|| {
            format!(
                "loading the base model from {}",
                config.model.policy.display()
            )
        })?;
        model.load_adapter(&folder)?;
        model.save_merged(&folder.join(MERGED))?;
    }
    seal_final(dir, total, digest_folder(&folder, &[])?)?;
    Ok(Some(format!(
        "the final model was unusable ({problem:#}): rewritten from checkpoint {total}"
    )))
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
