//! DuckDB and Polars read our game-record Parquet files and see what we wrote.
//! Needs the project's Python environment (`scripts/setup-python.sh`, run by
//! `scripts/test.sh`); `LSP_PYTHON` may name another interpreter with both installed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use lsp_schemas::{TypedBatch, write_parquet};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LSP_PYTHON") {
        return p.into();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let venv = repo.join(".venv/bin/python");
    assert!(
        venv.is_file(),
        "{} not found: run scripts/setup-python.sh (scripts/test.sh does) or set LSP_PYTHON",
        venv.display()
    );
    venv
}

#[test]
fn duckdb_and_polars_read_the_game_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iteration-000003.parquet");
    let record = common::record();
    write_parquet(&path, std::slice::from_ref(&record)).unwrap();

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/python/read_game_record.py");
    let out = Command::new(python())
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let rows = record.to_rows().unwrap();
    let reward_sum: f64 = rows.iter().map(|r| r.reward).sum();
    let null_self = rows.iter().filter(|r| r.self_reward.is_none()).count();
    let answer = &rows
        .iter()
        .find(|r| r.query_id == 1 && r.answer_index == 2)
        .unwrap()
        .answer_text;
    let columns: Vec<String> = record
        .batch()
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    for reader in ["duckdb", "polars"] {
        let r = &seen[reader];
        assert_eq!(r["rows"], rows.len(), "{reader}");
        assert_eq!(r["reward_sum"].as_f64().unwrap(), reward_sum, "{reader}");
        assert_eq!(r["null_self_reward"], null_self, "{reader}");
        assert_eq!(r["iterations"], serde_json::json!([3]), "{reader}");
        assert_eq!(r["answer_1_2"], answer.as_str(), "{reader}");
        assert_eq!(r["columns"], serde_json::json!(columns), "{reader}");
    }
}
