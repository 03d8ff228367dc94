//! `manifest.json`: what a run was started with, so its records can be traced back.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::json;

use super::checkpoint::write_atomic;
use super::layout::RunDir;
use crate::config::EpochConfig;

fn file_hash(path: &std::path::Path) -> serde_json::Value {
    crate::commands::sha256_file(path).map_or(serde_json::Value::Null, serde_json::Value::String)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Writes the manifest of a new run, or records a resume in an existing one.
pub fn write_or_note_resume(dir: &RunDir, config: &EpochConfig, start: u64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.root())
        .with_context(|| format!("creating {}", dir.root().display()))?;
    let path = dir.manifest();
    let mut manifest = if path.is_file() {
        serde_json::from_slice(&std::fs::read(&path)?)
            .with_context(|| format!("{} is corrupt", path.display()))?
    } else {
        let policy = &config.model.policy;
        json!({
            "run": config.run.name,
            "config": config,
            "seed": config.run.seed,
            "started_unix": now(),
            "policy": {
                "folder": policy,
                "model_sha256": file_hash(&policy.join("model.safetensors")),
                "tokenizer_sha256": file_hash(&policy.join("tokenizer.json")),
            },
            "versions": {
                "lsp": env!("CARGO_PKG_VERSION"),
                "libtorch": "2.13.0",
                "tch": "0.26.0",
            },
            "resumes": [],
        })
    };
    if start > 1 || path.is_file() {
        manifest["resumes"]
            .as_array_mut()
            .context("manifest.json: `resumes` is not a list")?
            .push(json!({"at_iteration": start, "unix": now()}));
    }
    write_atomic(&path, &serde_json::to_vec_pretty(&manifest)?)
}
