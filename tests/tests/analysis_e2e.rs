//! The analysis recipes (`analysis/*.sql` through DuckDB, `analysis/polars_summary.py`)
//! and `pipeline report` over the records of a real end-to-end run, each figure
//! checked against the same figure computed here in Rust from the Parquet rows; and
//! the live monitor's Parquet rows against the report's plain recomputation.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::deadline::Finish;
use common::{config, pipeline, python_json, records, repo, run};
use lsp_schemas::{GameRecordRow, MonitorBatch, MonitorRow, TypedBatch, read_parquet};
use serde_json::Value;

const ITERATIONS: u64 = 3;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

/// Rows by iteration.
fn by_iteration(rows: &[GameRecordRow]) -> BTreeMap<u64, Vec<&GameRecordRow>> {
    let mut out: BTreeMap<u64, Vec<&GameRecordRow>> = BTreeMap::new();
    for r in rows {
        out.entry(r.iteration).or_default().push(r);
    }
    out
}

fn monitor_rows(run: &Path) -> Vec<MonitorRow> {
    (1..=ITERATIONS)
        .flat_map(|t| {
            read_parquet::<MonitorBatch>(&run.join(format!("monitor/iteration-{t:06}.parquet")))
                .unwrap()
        })
        .flat_map(|b| b.to_rows().unwrap())
        .collect()
}

fn recipe(run: &Path, name: &str) -> Vec<Value> {
    let script = repo().join("analysis/run.py");
    let run = run.to_str().unwrap();
    match python_json(&script, &[run, name, "--json"]) {
        Value::Array(rows) => rows,
        other => panic!("{name}: {other}"),
    }
}

/// One tiny LSP run of three iterations, shared by the checks below.
fn tiny_run(dir: &Path) -> PathBuf {
    run(&config(dir, "lsp", ITERATIONS), false);
    dir.join("e2e")
}

#[test]
fn recipes_report_and_monitor_agree_with_rust_on_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = tiny_run(dir.path());
    let rows = records(dir.path());
    let its = by_iteration(&rows);
    let queries = |rows: &[&GameRecordRow]| -> Vec<GameRecordRow> {
        rows.iter()
            .filter(|r| r.answer_index == 0)
            .map(|r| (*r).clone())
            .collect()
    };
    let monitor = monitor_rows(&run_dir);
    assert_eq!(monitor.len() as u64, ITERATIONS);

    // Reward curves per role.
    let curves = recipe(&run_dir, "reward_curves");
    assert_eq!(curves.len() as u64, ITERATIONS);
    for (c, (t, rows)) in curves.iter().zip(&its) {
        let q = queries(rows);
        assert_eq!(c["iteration"].as_u64(), Some(*t));
        assert!(close(
            num(&c["mean_reward"]),
            mean(rows.iter().map(|r| r.reward))
        ));
        assert!(close(
            num(&c["mean_self_reward"]),
            mean(rows.iter().filter_map(|r| r.self_reward))
        ));
        assert!(close(
            num(&c["mean_solver_reward"]),
            mean(rows.iter().map(|r| r.solver_reward))
        ));
        assert!(close(
            num(&c["mean_value"]),
            mean(q.iter().map(|r| r.value))
        ));
        assert!(close(
            num(&c["mean_challenger_reward"]),
            mean(q.iter().filter_map(|r| r.challenger_reward))
        ));
        let m = mean(rows.iter().map(|r| r.reward));
        let sd = mean(rows.iter().map(|r| (r.reward - m).powi(2))).sqrt();
        assert!(close(num(&c["sd_reward"]), sd));
    }

    // Hardest and easiest queries: lowest and highest V(q).
    let all_queries: Vec<&GameRecordRow> = rows.iter().filter(|r| r.answer_index == 0).collect();
    let hardest = all_queries
        .iter()
        .min_by(|a, b| a.value.total_cmp(&b.value))
        .unwrap();
    let easiest = all_queries
        .iter()
        .max_by(|a, b| a.value.total_cmp(&b.value))
        .unwrap();
    let h = &recipe(&run_dir, "hardest_queries")[0];
    assert_eq!(
        (h["iteration"].as_u64(), h["query_id"].as_u64()),
        (Some(hardest.iteration), Some(hardest.query_id as u64))
    );
    assert_eq!(h["query_text"].as_str(), Some(hardest.query_text.as_str()));
    let e = &recipe(&run_dir, "easiest_queries")[0];
    assert!(close(num(&e["value"]), easiest.value));

    // Query length and diversity.
    for (d, ((_, rows), m)) in recipe(&run_dir, "query_diversity")
        .iter()
        .zip(its.iter().zip(&monitor))
    {
        let q = queries(rows);
        assert_eq!(d["queries"].as_u64(), Some(q.len() as u64));
        assert!(close(
            num(&d["mean_query_tokens"]),
            mean(q.iter().map(|r| r.query_tokens as f64))
        ));
        assert!(close(num(&d["distinct_n"]), m.distinct_n));
        assert!(close(num(&d["novelty"]), m.novelty));
    }

    // Judge failures, KL, code drift.
    let judge = recipe(&run_dir, "judge_failures");
    let kl = recipe(&run_dir, "kl_trend");
    let drift = recipe(&run_dir, "code_drift");
    for (i, (_, rows)) in its.iter().enumerate() {
        let judged = rows
            .iter()
            .filter(|r| r.self_reward_status != "disabled")
            .count();
        let failed = rows
            .iter()
            .filter(|r| matches!(r.self_reward_status.as_str(), "missing" | "out_of_range"))
            .count();
        let read_outs = rows
            .iter()
            .filter(|r| r.self_reward_status == "read_out")
            .count();
        assert_eq!(judge[i]["failures"].as_u64(), Some(failed as u64));
        assert_eq!(judge[i]["read_outs"].as_u64(), Some(read_outs as u64));
        // The policy's entropy: recorded per answer, positive, at most ln(vocab), and
        // the monitor's mean is theirs.
        let entropies: Vec<f64> = rows.iter().map(|r| r.answer_entropy).collect();
        assert!(
            entropies
                .iter()
                .all(|&h| h > 0.0 && h <= (400f64).ln() + 1e-6)
        );
        assert!((monitor[i].mean_answer_entropy - mean(entropies.into_iter())).abs() < 1e-5);
        assert_eq!(
            monitor[i].judge_read_out_rate,
            Some(read_outs as f64 / judged as f64)
        );
        assert!(close(
            num(&judge[i]["failure_rate"]),
            failed as f64 / judged as f64
        ));
        assert_eq!(
            monitor[i].judge_failure_rate,
            Some(failed as f64 / judged as f64)
        );
        assert!(close(
            num(&kl[i]["mean_kl_answer"]),
            mean(rows.iter().map(|r| r.kl_answer))
        ));
        let plain: Vec<_> = rows
            .iter()
            .filter(|r| !r.query_asks_code.unwrap())
            .collect();
        let code = plain.iter().filter(|r| r.answer_is_code.unwrap()).count();
        assert_eq!(drift[i]["code_answers"].as_u64(), Some(code as u64));
        let expected = (!plain.is_empty()).then(|| code as f64 / plain.len() as f64);
        assert_eq!(drift[i]["code_drift"].as_f64(), expected);
        assert_eq!(monitor[i].code_drift, expected);
    }

    // The best and worst answer of each query.
    let best_worst = recipe(&run_dir, "best_worst_answers");
    assert_eq!(best_worst.len(), all_queries.len());
    for b in &best_worst {
        let answers: Vec<_> = rows
            .iter()
            .filter(|r| {
                Some(r.iteration) == b["iteration"].as_u64()
                    && Some(r.query_id as u64) == b["query_id"].as_u64()
            })
            .collect();
        let best = answers
            .iter()
            .max_by(|x, y| x.reward.total_cmp(&y.reward))
            .unwrap();
        let worst = answers
            .iter()
            .min_by(|x, y| x.reward.total_cmp(&y.reward))
            .unwrap();
        assert_eq!(b["best_answer"].as_str(), Some(best.answer_text.as_str()));
        assert_eq!(
            b["worst_answer_index"].as_u64(),
            Some(worst.answer_index as u64)
        );
        assert!(close(num(&b["best_reward"]), best.reward));
    }

    // The Polars summary.
    let polars = python_json(
        &repo().join("analysis/polars_summary.py"),
        &[run_dir.to_str().unwrap(), "--json"],
    );
    for (p, (_, rows)) in polars.as_array().unwrap().iter().zip(&its) {
        let q = queries(rows);
        assert_eq!(p["answers"].as_u64(), Some(rows.len() as u64));
        assert!(close(
            num(&p["mean_reward"]),
            mean(rows.iter().map(|r| r.reward))
        ));
        assert!(close(
            num(&p["mean_value"]),
            mean(q.iter().map(|r| r.value))
        ));
        assert!(close(
            num(&p["mean_kl_answer"]),
            mean(rows.iter().map(|r| r.kl_answer))
        ));
    }

    // An evaluation of the run's final model, which the report lists.
    let out = Command::new(pipeline())
        .current_dir(repo())
        .args([
            "eval",
            "gsm8k",
            "--threads",
            "1",
            "--limit",
            "2",
            "--max-new-tokens",
            "4",
            "--model",
        ])
        .arg(run_dir.join("final"))
        .arg("--out")
        .arg(run_dir.join("eval/gsm8k"))
        .finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    check_report(&run_dir, &its, &monitor);
}

/// `pipeline report`: its figures equal the records', its monitor figures recomputed
/// the plain way equal the live dataflow's, and its plots draw the real values.
fn check_report(run_dir: &Path, its: &BTreeMap<u64, Vec<&GameRecordRow>>, monitor: &[MonitorRow]) {
    let report = |out: &Path| -> Value {
        let done = Command::new(pipeline())
            .arg("report")
            .arg(run_dir)
            .arg("--out")
            .arg(out)
            .finish();
        assert!(
            done.status.success(),
            "{}",
            String::from_utf8_lossy(&done.stderr)
        );
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap()
    };
    let live_out = run_dir.join("report");
    let live = report(&live_out);
    assert_eq!(live["monitor_source"], "live");
    let figures = live["iterations"].as_array().unwrap();
    for (f, (_, rows)) in figures.iter().zip(its) {
        assert!(close(
            num(&f["reward"]["mean"]),
            mean(rows.iter().map(|r| r.reward))
        ));
        assert!(close(
            num(&f["kl_answer"]),
            mean(rows.iter().map(|r| r.kl_answer))
        ));
        assert!(close(
            num(&f["answer_tokens"]),
            mean(rows.iter().map(|r| r.answer_tokens as f64))
        ));
    }
    // Without the live rows the report recomputes them: the same figures.
    std::fs::rename(run_dir.join("monitor"), run_dir.join("monitor.moved")).unwrap();
    let recomputed = report(&run_dir.join("report-recomputed"));
    assert_eq!(recomputed["monitor_source"], "recomputed");
    for (i, m) in monitor.iter().enumerate() {
        let expected = serde_json::to_value(m).unwrap();
        assert_eq!(
            recomputed["iterations"][i]["monitor"],
            expected,
            "iteration {}",
            i + 1
        );
        assert_eq!(live["iterations"][i]["monitor"], expected);
    }

    // Every page and plot is there; the HTML inlines the plots and the tables.
    for name in ["report.html", "report.md", "report.json"] {
        assert!(live_out.join(name).is_file(), "{name}");
    }
    let html = std::fs::read_to_string(live_out.join("report.html")).unwrap();
    for stem in [
        "rewards",
        "values",
        "kl",
        "entropy",
        "lengths",
        "diversity",
        "speed",
        "throughput",
    ] {
        for ext in ["svg", "png"] {
            let plot = live_out.join(format!("plots/{stem}.{ext}"));
            assert!(
                std::fs::metadata(&plot).unwrap().len() > 1000,
                "{}",
                plot.display()
            );
        }
        assert!(
            html.contains(&format!("<figure id=\"{stem}\"><svg")),
            "{stem} not inlined"
        );
    }
    assert!(html.matches("<tr><td>").count() as u64 >= ITERATIONS);
    assert!(
        html.contains("<table id=\"evals\">") && html.contains("gsm8k accuracy"),
        "no eval table"
    );
    assert!(html.contains("2 of 1319"), "the eval's sample size");

    // The KL plot's first line passes through the records' KL per iteration: one point
    // per iteration, left to right, higher values higher up.
    let svg = std::fs::read_to_string(live_out.join("plots/kl.svg")).unwrap();
    let line = svg
        .split("<polyline")
        .find(|p| p.contains("stroke=\"#1F77B4\" stroke-width=\"2\""))
        .expect("the answers' KL line");
    let points: Vec<(f64, f64)> = line
        .split("points=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            (x.parse().unwrap(), y.parse().unwrap())
        })
        .collect();
    assert_eq!(points.len() as u64, ITERATIONS);
    let kl: Vec<f64> = its
        .values()
        .map(|rows| mean(rows.iter().map(|r| r.kl_answer)))
        .collect();
    for i in 0..points.len() {
        for j in 0..points.len() {
            if i < j {
                assert!(points[i].0 < points[j].0);
            }
            // SVG y grows downwards.
            if kl[i] > kl[j] {
                assert!(points[i].1 <= points[j].1, "KL {kl:?} drawn at {points:?}");
            }
        }
    }
}
