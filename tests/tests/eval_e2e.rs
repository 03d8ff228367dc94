//! `pipeline eval` end to end on the tiny fixtures: what it writes, and invariants a
//! wrong implementation breaks (a model against itself ties every comparison under
//! both judges; the sample is stratified and seeded).

mod common;

use std::path::Path;
use std::process::Command;

use common::deadline::Finish;
use common::{pipeline, repo};
use lsp_schemas::{TaskBatch, TypedBatch, WinRateBatch, read_parquet};
use serde_json::Value;

/// Every row of `dir/results.parquet`.
fn results<T: TypedBatch>(dir: &Path) -> Vec<T::Row> {
    read_parquet::<T>(&dir.join("results.parquet"))
        .unwrap()
        .iter()
        .flat_map(|b| b.to_rows().unwrap())
        .collect()
}

fn eval(args: &[&str]) -> Value {
    let out = Command::new(pipeline())
        .current_dir(repo())
        .arg("eval")
        .args(args)
        .args(["--threads", "1"])
        .finish();
    assert!(
        out.status.success(),
        "pipeline eval {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = args
        .iter()
        .position(|a| *a == "--out")
        .map(|i| args[i + 1])
        .unwrap();
    serde_json::from_slice(&std::fs::read(Path::new(dir).join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_model_against_itself_ties_under_both_judges() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = repo().join("tests/fixtures/tiny-llama");
    let rm = repo().join("tests/fixtures/tiny-reward");
    for (judge, judge_model) in [("reward-model", &rm), ("llm", &tiny)] {
        let out = dir.path().join(judge);
        let summary = eval(&[
            "winrate",
            "--candidate",
            tiny.to_str().unwrap(),
            "--baseline",
            tiny.to_str().unwrap(),
            "--judge",
            judge,
            "--judge-model",
            judge_model.to_str().unwrap(),
            "--limit",
            "10",
            "--max-new-tokens",
            "4",
            "--out",
            out.to_str().unwrap(),
        ]);
        let result = &summary["result"];
        assert_eq!(result["win_rate"]["value"], 0.5, "{judge}: {summary}");
        assert_eq!(
            (&result["ties"], &result["identical_outputs"]),
            (&10.into(), &10.into())
        );
        assert_eq!(summary["sampled"], 10);
        // 805 instructions in five subsets: a stratified sample of 10 draws from each.
        let subsets = result["per_subset"].as_object().unwrap();
        assert_eq!(subsets.len(), 5, "{summary}");
        let rows = results::<WinRateBatch>(&out);
        assert_eq!(rows.len(), 10);
        for r in &rows {
            assert_eq!(r.candidate_output, r.baseline_output);
            assert_eq!(r.outcome, 0.5);
            if judge == "llm" {
                // Shown first or second, the same text gets complementary probabilities.
                let (a, b) = (
                    r.p_candidate_shown_first.unwrap(),
                    r.p_candidate_shown_second.unwrap(),
                );
                assert!((a + b - 1.0).abs() < 1e-9 && a != 0.5, "{a} {b}");
            } else {
                assert_eq!(r.candidate_score, r.baseline_score);
            }
        }
    }
    // The same seed draws the same sample.
    let again = eval(&[
        "winrate",
        "--candidate",
        tiny.to_str().unwrap(),
        "--baseline",
        tiny.to_str().unwrap(),
        "--judge",
        "reward-model",
        "--judge-model",
        rm.to_str().unwrap(),
        "--limit",
        "10",
        "--max-new-tokens",
        "4",
        "--out",
        dir.path().join("again").to_str().unwrap(),
    ]);
    let ids = |p: &Path| -> Vec<u64> { results::<WinRateBatch>(p).iter().map(|r| r.id).collect() };
    assert_eq!(
        ids(&dir.path().join("again")),
        ids(&dir.path().join("reward-model"))
    );
    assert_eq!(again["result"]["win_rate"]["value"], 0.5);
}

#[test]
fn gsm8k_and_humaneval_score_every_sampled_task() {
    let dir = tempfile::tempdir().unwrap();
    let tiny = repo().join("tests/fixtures/tiny-llama");
    let gsm = dir.path().join("gsm8k");
    let summary = eval(&[
        "gsm8k",
        "--model",
        tiny.to_str().unwrap(),
        "--limit",
        "3",
        "--max-new-tokens",
        "6",
        "--out",
        gsm.to_str().unwrap(),
    ]);
    let rows = results::<TaskBatch>(&gsm);
    assert_eq!(rows.len(), 3);
    let correct = rows.iter().filter(|r| r.correct).count();
    assert_eq!(summary["result"]["correct"], correct);
    assert!(
        rows.iter()
            .all(|r| r.expected.is_some() && r.prompt.contains("####"))
    );

    let he = dir.path().join("humaneval");
    let summary = eval(&[
        "humaneval",
        "--model",
        tiny.to_str().unwrap(),
        "--limit",
        "2",
        "--max-new-tokens",
        "6",
        "--timeout",
        "5",
        "--out",
        he.to_str().unwrap(),
    ]);
    let rows = results::<TaskBatch>(&he);
    assert_eq!(rows.len(), 2);
    // The tiny model writes noise: no program passes, and each says why.
    assert_eq!(summary["result"]["passed"], 0);
    for r in &rows {
        assert_ne!(r.status, "passed");
        let program = r.extracted.as_deref().unwrap();
        assert!(program.contains("def check(") && program.ends_with(")\n"));
        assert!(
            r.detail
                .as_deref()
                .unwrap()
                .starts_with("sandbox tempdir,timeout,prlimit,audit-hook")
        );
    }
}
