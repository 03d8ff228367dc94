//! The example reward programs (`examples/rewards/`) through the pipeline on the tiny
//! fixtures: GRPO on GSM8K with the format reward and the GSM8K verifier as a
//! weighted sum, each part kept in the record and read back with DuckDB; and the
//! programs' rules on hand-made answers.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::deadline::Finish;
use common::{config_with, python, records, repo, run};

/// Replies of `program` to `requests`, one JSON value per line.
fn replies(program: &str, requests: &[serde_json::Value]) -> Vec<serde_json::Value> {
    let mut child = Command::new(python())
        .arg(repo().join("examples/rewards").join(program))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for request in requests {
        writeln!(stdin, "{request}").unwrap();
    }
    drop(stdin);
    let out = child.finish();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn request(answer: &str, reference: Option<&str>) -> serde_json::Value {
    serde_json::json!({"query": "q", "answer": answer, "reference": reference,
        "iteration": 1, "query_id": 0, "answer_index": 0})
}

#[test]
fn the_example_programs_follow_their_rules() {
    let format = replies(
        "format.py",
        &[
            request("A tidy answer.", None),
            request("cut off mid", None),
            request("same\nsame\nend", None),
            request("   ", None),
        ],
    );
    let rewards: Vec<f64> = format
        .iter()
        .map(|r| r["reward"].as_f64().unwrap())
        .collect();
    assert_eq!(rewards, [1.0, 0.75, 0.5, 0.0]);
    let cases = [
        ("So she sold 72 clips.", "48+24=72\n#### 72"),
        ("It costs $1,000.00", "#### 1000"),
        ("About 71", "#### 72"),
        ("No idea", "#### 72"),
    ];
    let requests: Vec<_> = cases.iter().map(|(a, r)| request(a, Some(r))).collect();
    let gsm8k = replies("gsm8k.py", &requests);
    for ((answer, reference), reply) in cases.iter().zip(&gsm8k) {
        // The program's rule is the built-in verifier's.
        let (expected, _) = lsp_reward::verify(answer, Some(reference));
        assert_eq!(reply["reward"].as_f64(), Some(expected), "{answer}");
    }
    assert_eq!(gsm8k.iter().filter(|r| r["reward"] == 1.0).count(), 2);
    let no_reference = replies("gsm8k.py", &[request("72", None)]);
    assert!(
        no_reference[0]["error"]
            .as_str()
            .unwrap()
            .contains("no reference")
    );
}

#[test]
fn a_weighted_sum_of_the_example_programs_plays_grpo_on_gsm8k() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo().join("datasets/gsm8k_train.jsonl");
    let examples = repo().join("examples/rewards");
    let part = |name: &str, weight: f64| {
        format!(
            "{{name: {name}, weight: {weight}, kind: command, command: [{}, {}]}}",
            python().display(),
            examples.join(format!("{name}.py")).display()
        )
    };
    let reward = format!(
        "{{kind: sum, sum: [{}, {}]}}",
        part("format", 0.5),
        part("gsm8k", 1.0)
    );
    let extra = format!(
        "data: {{path: {}, prompt_column: question, answer_column: answer}}\n",
        data.display()
    );
    let cfg = config_with(dir.path(), "grpo", 2, &reward, &extra);
    run(&cfg, false);
    let rows = records(dir.path());
    assert_eq!(rows.len(), 2 * 3 * 2);
    for row in &rows {
        let parts = row.reward_parts.as_ref().expect("a sum keeps its parts");
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["format", "gsm8k"]);
        let (verified, _) = lsp_reward::verify(&row.answer_text, row.reference_answer.as_deref());
        assert_eq!(parts[1].reward, verified);
        assert!([0.0, 0.25, 0.5, 0.75, 1.0].contains(&parts[0].reward));
        assert_eq!(row.reward, 0.5 * parts[0].reward + verified);
    }
    // Each part reads as its own column in DuckDB.
    let sql = format!(
        "import duckdb, json\n\
         rows = duckdb.sql(\"SELECT p.name, count(*), sum(p.reward) FROM read_parquet('{}/e2e/records/*.parquet'), \
         unnest(reward_parts) AS t(p) GROUP BY p.name ORDER BY p.name\").fetchall()\n\
         print(json.dumps(rows))",
        dir.path().display()
    );
    let out = Command::new(python()).arg("-c").arg(&sql).finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts: Vec<(String, u64, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    let total = |i: usize| {
        rows.iter()
            .map(|r| r.reward_parts.as_ref().unwrap()[i].reward)
            .sum::<f64>()
    };
    assert_eq!(parts[0].0, "format");
    assert_eq!(parts[1].0, "gsm8k");
    assert_eq!((parts[0].1, parts[1].1), (12, 12));
    assert!((parts[0].2 - total(0)).abs() < 1e-9 && (parts[1].2 - total(1)).abs() < 1e-9);
}
