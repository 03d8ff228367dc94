//! `manifest.json`: what a run was started with, and each resume with the config it
//! ran with, so its records can be traced back. A fresh run writes a fresh manifest;
//! a resume whose config differs from the manifest's in anything but the run's
//! length and its layout over workers is refused unless the change is allowed, and
//! then recorded.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::{Value, json};

use super::checkpoint::write_atomic;
use super::layout::RunDir;
use crate::config::EpochConfig;

/// Keys a resume may change freely: how long the run is and how it is spread over
/// threads, workers, processes and hosts, and how a worker's threads share a
/// micro-batch (the game does not depend on them; sums may run in another order).
/// `update.parallelism` became `auto` by default after runs had recorded
/// `operators`: such a run resumes.
const FREE: [&str; 8] = [
    "run.iterations",
    "run.threads",
    "run.workers",
    "run.processes",
    "run.process",
    "run.hostfile",
    "run.replica_check_every",
    "update.parallelism",
];

fn file_hash(path: &std::path::Path) -> Value {
    crate::commands::sha256_file(path).map_or(Value::Null, Value::String)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The CPU's model name as `lscpu` gives it (`/proc/cpuinfo`), when it can be read.
fn cpu_model() -> Value {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, name)| Value::String(name.trim().to_string()))
        })
        .unwrap_or(Value::Null)
}

/// The machine a run (or a resume) ran on and where its products ran there: bf16
/// under `mixed_bf16` only where bf16 units outrun f32 ones (`bf16_products_pay`), or
/// with `emulate_bf16`, f32 otherwise; and
/// the instruction-set ceiling `LSP_CPU_ISA` set, if any; whether the CPU has AMX
/// tiles (which move the rollouts' choice of decoder under `mixed_bf16`); and whether
/// `rollout_weights: w8a8` runs on int8 dot products (`avx512_vnni` or `avx2`; null
/// where it takes the widening kernel).
fn machine(config: &EpochConfig) -> Value {
    let ceiling = lsp_model::decoder::Ceiling::of_process().map(|c| c.name());
    json!({
        "cpu": cpu_model(),
        "cpu_isa_ceiling": ceiling,
        "bf16_units": lsp_model::decoder::bf16_units(),
        "bf16_products_pay": lsp_model::decoder::bf16_products_pay(),
        "amx_tiles": lsp_model::decoder::amx_tiles(),
        "int8_dots": lsp_model::decoder::int8_dots().map(lsp_model::decoder::Int8Dots::name),
        "products": config.model.products().name(),
    })
}

/// Every leaf of `value` as (dotted path, value).
fn leaves(prefix: &str, value: &Value, out: &mut Vec<(String, Value)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let path = match prefix.is_empty() {
                    true => key.clone(),
                    false => format!("{prefix}.{key}"),
                };
                leaves(&path, v, out);
            }
        }
        leaf => out.push((prefix.to_string(), leaf.clone())),
    }
}

/// The dotted keys whose values differ between two configs, but for [`FREE`] ones.
pub fn changed_keys(before: &Value, now: &Value) -> Vec<String> {
    let (mut a, mut b) = (Vec::new(), Vec::new());
    leaves("", before, &mut a);
    leaves("", now, &mut b);
    let mut keys: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.iter().find(|(l, _)| l == k).map(|(_, w)| w) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(
            b.iter()
                .filter(|(k, _)| !a.iter().any(|(l, _)| l == k))
                .map(|(k, _)| k.clone()),
        )
        .filter(|k| !FREE.contains(&k.as_str()))
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// Writes the manifest of a fresh run (replacing one a failed start may have left).
pub fn write_fresh(dir: &RunDir, config: &EpochConfig) -> anyhow::Result<()> {
    let policy = &config.model.policy;
    let manifest = json!({
        "run": config.run.name,
        "config": config,
        "seed": config.run.seed,
        "started_unix": now(),
        "machine": machine(config),
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
    });
    write_atomic(&dir.manifest(), &serde_json::to_vec_pretty(&manifest)?)
}

fn read(dir: &RunDir) -> anyhow::Result<Value> {
    let path = dir.manifest();
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is corrupt", path.display()))
}

/// The keys a resume with `config` changes against the run's manifest (an error
/// listing them unless `allow`).
pub fn check_resume(
    dir: &RunDir,
    config: &EpochConfig,
    allow: bool,
) -> anyhow::Result<Vec<String>> {
    let manifest = read(dir)?;
    let changed = changed_keys(&manifest["config"], &serde_json::to_value(config)?);
    anyhow::ensure!(
        changed.is_empty() || allow,
        "the config differs from the one {} was started with, in {}: resume with the same \
         config (only run.iterations and the run's layout over workers and threads may \
         change), or pass --allow-config-change to apply it and have it recorded in \
         manifest.json",
        dir.root().display(),
        changed.join(", ")
    );
    Ok(changed)
}

/// Records a resume that played iterations `from..=to` with `config`; its config is
/// kept when it changed `changed` keys.
pub fn note_resume(
    dir: &RunDir,
    config: &EpochConfig,
    (from, to): (u64, u64),
    changed: &[String],
) -> anyhow::Result<()> {
    let mut manifest = read(dir)?;
    let mut entry = json!({"from_iteration": from, "to_iteration": to, "unix": now(),
        "machine": machine(config)});
    if !changed.is_empty() {
        entry["changed"] = json!(changed);
        entry["config"] = serde_json::to_value(config)?;
    }
    manifest["resumes"]
        .as_array_mut()
        .context("manifest.json: `resumes` is not a list")?
        .push(entry);
    write_atomic(&dir.manifest(), &serde_json::to_vec_pretty(&manifest)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_length_and_the_layout_change_freely() {
        let before = json!({"run": {"iterations": 3, "workers": 1, "seed": 0},
            "update": {"learning_rate": 3e-6, "parallelism": "operators"}, "stages": []});
        let now = json!({"run": {"iterations": 9, "workers": 2, "seed": 1},
            "update": {"learning_rate": 1e-5, "epochs": 2, "parallelism": "auto"},
            "stages": []});
        assert_eq!(
            changed_keys(&before, &now),
            ["run.seed", "update.epochs", "update.learning_rate"]
        );
        assert!(changed_keys(&before, &before).is_empty());
    }
}
