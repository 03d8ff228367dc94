//! What the end-to-end tests share: the repository, the built `pipeline` binary, a
//! tiny config on the fixtures, running it, reading its records back, and the
//! project's Python (DuckDB, Polars).

#![allow(dead_code)] // Each test file uses its own part.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod deadline;

use deadline::Finish;
use lsp_schemas::{GameRecordBatch, GameRecordRow, TypedBatch, read_parquet};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The `pipeline` binary, built beside this test by `cargo test --workspace` (a
/// `cargo test -p lsp-tests` alone does not rebuild it).
pub fn pipeline() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("pipeline");
    assert!(
        bin.is_file(),
        "{} not built: run the workspace's tests",
        bin.display()
    );
    bin
}

/// A config like examples/tiny-epoch.yaml writing into `out`, with `extra` appended.
pub fn config_with(out: &Path, mode: &str, iterations: u64, reward: &str, extra: &str) -> PathBuf {
    let fixtures = repo().join("tests/fixtures");
    let text = format!(
        "run: {{name: e2e, mode: {mode}, iterations: {iterations}, seed: 3, threads: 1, output_dir: {out}}}\n\
         model: {{policy: {policy}, allow_past_context: true}}\n\
         challenger: {{num_queries: 3, sampling: {{max_new_tokens: 6}}}}\n\
         solver: {{answers_per_query: 2, sampling: {{max_new_tokens: 6}}}}\n\
         reward: {reward}\n\
         self_reward: {{sampling: {{max_new_tokens: 6, temperature: 0.0}}, fallback_score: 1}}\n\
         update: {{learning_rate: 1.0e-3, micro_batch_size: 2}}\n{extra}",
        out = out.display(),
        policy = fixtures.join("tiny-llama").display(),
    );
    let path = out.join(format!("{mode}-{iterations}.yaml"));
    std::fs::create_dir_all(out).unwrap();
    std::fs::write(&path, text).unwrap();
    path
}

/// Adds `options` (YAML fields, e.g. `offload_reference: true`) to the `model:` section
/// of a config written by [`config_with`].
pub fn with_model_options(config: &Path, options: &str) {
    let text = std::fs::read_to_string(config)
        .unwrap()
        .replace("model: {policy: ", &format!("model: {{{options}, policy: "));
    std::fs::write(config, text).unwrap();
}

/// The tiny config with the tiny-reward fixture as the external reward.
pub fn config(out: &Path, mode: &str, iterations: u64) -> PathBuf {
    let rm = repo().join("tests/fixtures/tiny-reward");
    config_with(
        out,
        mode,
        iterations,
        &format!("{{kind: reward_model, model: {}}}", rm.display()),
        "",
    )
}

pub fn run(config: &Path, resume: bool) -> Output {
    run_with(config, if resume { &["--resume"] } else { &[] })
}

/// `pipeline run CONFIG FLAGS...`, however it ends.
fn run_output(config: &Path, flags: &[&str]) -> Output {
    run_output_env(config, flags, &[])
}

/// `pipeline run CONFIG FLAGS...` with `env` set, however it ends.
fn run_output_env(config: &Path, flags: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(pipeline())
        .arg("run")
        .arg(config)
        .args(flags)
        .envs(env.iter().copied())
        .finish()
}

/// `pipeline run CONFIG FLAGS...`, which must succeed.
pub fn run_with(config: &Path, flags: &[&str]) -> Output {
    run_with_env(config, flags, &[])
}

/// `pipeline run CONFIG FLAGS...` with `env` set, which must succeed.
pub fn run_with_env(config: &Path, flags: &[&str], env: &[(&str, &str)]) -> Output {
    let out = run_output_env(config, flags, env);
    assert!(
        out.status.success(),
        "pipeline run failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `pipeline run CONFIG FLAGS...`, which must fail: its stderr.
pub fn run_fails(config: &Path, flags: &[&str]) -> String {
    let out = run_output(config, flags);
    assert!(!out.status.success(), "run {flags:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every game-record row of the run in `out` (run name `e2e`).
pub fn records(out: &Path) -> Vec<GameRecordRow> {
    records_in(&out.join("e2e/records"))
}

/// Every game-record row in a records folder, in iteration order: its
/// `iteration-*.parquet` files, as a reader's glob takes them (not the hidden
/// `.iteration-*.parquet.tmp-PID` a process killed mid-write leaves, which a resume
/// clears).
pub fn records_in(dir: &Path) -> Vec<GameRecordRow> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with("iteration-") && name.ends_with(".parquet")
        })
        .collect();
    files.sort();
    files
        .iter()
        .flat_map(|f| read_parquet::<GameRecordBatch>(f).unwrap())
        .flat_map(|b| b.to_rows().unwrap())
        .collect()
}

/// `rows` without the stages' timings, which no two runs share: what is left is the
/// game, to compare exactly.
pub fn untimed(mut rows: Vec<GameRecordRow>) -> Vec<GameRecordRow> {
    for r in &mut rows {
        for s in [
            &mut r.seconds_challenger,
            &mut r.seconds_solver,
            &mut r.seconds_reward,
            &mut r.seconds_self_reward,
            &mut r.seconds_advantage,
            &mut r.seconds_update,
        ] {
            *s = 0.0;
        }
    }
    rows
}

/// The project's Python with DuckDB and Polars (`scripts/setup-python.sh`, run by
/// `scripts/test.sh`); `LSP_PYTHON` may name another.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LSP_PYTHON") {
        return p.into();
    }
    let venv = repo().join(".venv/bin/python");
    assert!(
        venv.is_file(),
        "{} not found: run scripts/setup-python.sh (scripts/test.sh does) or set LSP_PYTHON",
        venv.display()
    );
    venv
}

/// Runs `script args..` with the project's Python; its standard output as JSON.
pub fn python_json(script: &Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(python()).arg(script).args(args).finish();
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
