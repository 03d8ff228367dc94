//! Checkpoints: the policy as a Hugging Face folder, the optimizer's state, and the
//! iteration, with `state.json` written last so that a half-written checkpoint is
//! never taken for a complete one.

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::engine::Engine;
use super::layout::RunDir;

/// `state.json` of a checkpoint.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointState {
    /// The last iteration the checkpoint includes.
    pub iteration: u64,
    /// The run's seed (every draw derives from it and the iteration).
    pub seed: u64,
    /// Optimizer steps taken.
    pub optimizer_steps: i64,
}

/// Saves the engine's policy and optimizer after `iteration`.
pub fn save(dir: &RunDir, engine: &mut Engine, iteration: u64) -> anyhow::Result<()> {
    let folder = dir.checkpoint(iteration);
    if folder.exists() {
        std::fs::remove_dir_all(&folder)?;
    }
    engine.policy.save(&folder.join("model"))?;
    engine
        .update
        .optimizer()
        .save(&folder.join("optimizer.safetensors"))?;
    let state = CheckpointState {
        iteration,
        seed: engine.seed,
        optimizer_steps: engine.update.optimizer().steps(),
    };
    write_atomic(
        &dir.checkpoint_state(iteration),
        &serde_json::to_vec_pretty(&state)?,
    )
}

/// Reads a checkpoint's state.
pub fn load_state(dir: &RunDir, iteration: u64) -> anyhow::Result<CheckpointState> {
    let path = dir.checkpoint_state(iteration);
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("{} is corrupt", path.display()))
}

/// Writes `bytes` to a temporary file beside `path` and renames it into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
