//! Rewards in the user's own code, through real child processes and a real HTTP
//! server on localhost: the request fields, rewards in order, and every failure
//! (reported error, non-number, NaN, a process that dies, one that hangs, a program
//! that does not exist, HTTP errors, a wrong count) as a stopping error or a counted
//! fallback. The weighted sum keeps each part.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use lsp_model::LoadOptions;
use lsp_reward::{OnFailure, RewardConfig, RewardKind, RewardStage};
use lsp_schemas::{AnswerBatch, AnswerRow, QueryRow, RewardRow, TypedBatch};
use serde_json::{Value, json};

fn python() -> String {
    std::env::var("LSP_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Three answers to query 4 of iteration 7 (answer 1 has a reference answer).
fn answers() -> AnswerBatch {
    let rows: Vec<AnswerRow> = ["Blue.", "Green, mostly.", ""]
        .iter()
        .enumerate()
        .map(|(i, a)| AnswerRow {
            query: QueryRow {
                iteration: 7,
                query_id: 4,
                prompt_id: "p".into(),
                prompt_version: "v".into(),
                prompt_token_ids: vec![],
                query_text: "Name a colour.".into(),
                query_token_ids: vec![],
                query_token_logprobs: vec![],
                query_finish_reason: "eos".into(),
                query_status: "ok".into(),
                reference_answer: (i == 1).then(|| "Green".into()),
            },
            answer_index: i as u32,
            answer_prompt_token_ids: vec![1],
            answer_text: a.to_string(),
            answer_token_ids: vec![2],
            answer_token_logprobs: vec![-1.0],
            answer_finish_reason: "eos".into(),
        })
        .collect();
    AnswerBatch::from_rows(&rows).unwrap()
}

/// A folder with `reward.py` holding `body`, run once per line of stdin with the
/// request as `r` and the process's request count as `n`; it prints what `body`
/// returns as the reply line (a string is printed as is).
fn script(name: &str, body: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lsp-reward-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let program = format!(
        "import json, math, sys, time\n\
         def reply(r, n):\n{}\n\
         for n, line in enumerate(sys.stdin):\n\
         \x20   out = reply(json.loads(line), n)\n\
         \x20   print(out if isinstance(out, str) else json.dumps(out), flush=True)\n",
        body.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    std::fs::write(dir.join("reward.py"), program).unwrap();
    dir
}

fn command(dir: &Path, on_failure: OnFailure) -> RewardConfig {
    let mut config = RewardConfig {
        kind: RewardKind::Command,
        command: vec![python(), "reward.py".into()],
        timeout_seconds: 2.0,
        on_failure,
        fallback_reward: -9.0,
        ..RewardConfig::default()
    };
    config.resolve_paths(dir);
    config
}

fn score(config: RewardConfig) -> Vec<RewardRow> {
    let stage = RewardStage::new(config, LoadOptions::default()).unwrap();
    stage.rewards(None, &answers()).unwrap().to_rows().unwrap()
}

fn rewards_and_statuses(rows: &[RewardRow]) -> Vec<(f64, &str)> {
    rows.iter()
        .map(|r| (r.reward, r.reward_status.as_str()))
        .collect()
}

#[test]
fn the_program_sees_every_field_and_its_rewards_come_back_in_order() {
    let dir = script(
        "fields",
        "assert set(r) == {'query', 'answer', 'reference', 'iteration', 'query_id', 'answer_index'}\n\
         ref = 100 if r['reference'] == 'Green' else 0\n\
         return {'reward': len(r['answer']) + r['answer_index'] / 10 + r['iteration'] * 1000 + r['query_id'] * 10000 + ref}",
    );
    let stage = RewardStage::new(command(&dir, OnFailure::Error), LoadOptions::default()).unwrap();
    // The same process serves every batch.
    for _ in 0..2 {
        let rows = stage.rewards(None, &answers()).unwrap().to_rows().unwrap();
        assert_eq!(
            rewards_and_statuses(&rows),
            [(47005.0, "ok"), (47114.1, "ok"), (47000.2, "empty_answer")]
        );
        assert!(rows.iter().all(|r| r.reward_parts.is_none()));
    }
}

#[test]
fn bad_replies_get_the_fallback_with_their_status_or_stop_the_run() {
    let dir = script(
        "bad",
        "if r['answer_index'] == 0: return {'error': 'cannot parse the answer'}\n\
         if r['answer_index'] == 1: return {'reward': 'high'}\n\
         return 'NaN'",
    );
    let rows = score(command(&dir, OnFailure::Fallback));
    assert_eq!(
        rewards_and_statuses(&rows),
        [
            (-9.0, "reward_error"),
            (-9.0, "invalid_reward"),
            (-9.0, "invalid_reward")
        ]
    );
    let stage = RewardStage::new(command(&dir, OnFailure::Error), LoadOptions::default()).unwrap();
    let err = stage.rewards(None, &answers()).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "the `command` reward failed on query 4, answer 0 of iteration 7: it reported an error: cannot parse the answer"
        ),
        "{err}"
    );
    assert!(err.contains("on_failure: fallback"), "{err}");
}

#[test]
fn a_dead_process_is_restarted_once() {
    // Each process answers one request and exits: the first answers row 0, the
    // restarted one row 1, and row 2 finds it dead again.
    let dir = script(
        "dies",
        "if n == 1: sys.exit(3)\nreturn {'reward': r['answer_index']}",
    );
    let rows = score(command(&dir, OnFailure::Fallback));
    assert_eq!(
        rewards_and_statuses(&rows),
        [(0.0, "ok"), (1.0, "ok"), (-9.0, "reward_unavailable")]
    );
    let stage = RewardStage::new(command(&dir, OnFailure::Error), LoadOptions::default()).unwrap();
    let err = stage.rewards(None, &answers()).unwrap_err().to_string();
    assert!(
        err.contains("answer 2 of iteration 7: the reward process exited (exit status: 3)"),
        "{err}"
    );
}

#[test]
fn a_hanging_process_times_out_and_is_replaced() {
    // Each process hangs on its second request: row 1 times out, the restarted
    // process answers row 2.
    let dir = script(
        "hangs",
        "if n == 1: time.sleep(60)\nreturn {'reward': r['answer_index']}",
    );
    let mut config = command(&dir, OnFailure::Fallback);
    config.timeout_seconds = 0.5;
    let started = std::time::Instant::now();
    let rows = score(config);
    assert_eq!(
        rewards_and_statuses(&rows),
        [(0.0, "ok"), (-9.0, "reward_timeout"), (2.0, "empty_answer")]
    );
    // Bounded by the timeout, not by the sleeping process.
    assert!(started.elapsed().as_secs() < 30);
}

#[test]
fn a_program_that_cannot_start_is_a_clear_failure() {
    let dir = script("missing", "return 0");
    let mut config = command(&dir, OnFailure::Fallback);
    config.command = vec!["./no-such-reward-program".into()];
    config.resolve_paths(&dir);
    let rows = score(config.clone());
    assert!(
        rows.iter()
            .all(|r| r.reward_status == "reward_unavailable" && r.reward == -9.0)
    );
    config.on_failure = OnFailure::Error;
    let stage = RewardStage::new(config, LoadOptions::default()).unwrap();
    let err = stage.rewards(None, &answers()).unwrap_err().to_string();
    assert!(
        err.contains("cannot start") && err.contains("no-such-reward-program"),
        "{err}"
    );
}

/// How the test server answers a POST of requests: (status, body).
type Reply = fn(&[Value]) -> (u16, String);

/// A reward server on localhost answering each POST with `reply(requests)`:
/// (status, body). Returns its URL.
fn server(reply: Reply) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/score", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let requests: Vec<Value> = serde_json::from_slice(&body).unwrap();
            let (status, text) = reply(&requests);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    url
}

fn http(url: String, on_failure: OnFailure) -> RewardConfig {
    RewardConfig {
        kind: RewardKind::Http,
        url: Some(url),
        timeout_seconds: 5.0,
        on_failure,
        fallback_reward: -9.0,
        ..RewardConfig::default()
    }
}

#[test]
fn a_reward_server_scores_the_batch_in_one_post() {
    let url = server(|requests| {
        let rewards: Vec<Value> = requests
            .iter()
            .map(|r| match r["answer_index"].as_u64().unwrap() {
                2 => json!({"error": "empty"}),
                i => json!(r["answer"].as_str().unwrap().len() as f64 + i as f64 / 10.0),
            })
            .collect();
        (200, Value::from(rewards).to_string())
    });
    let rows = score(http(url, OnFailure::Fallback));
    assert_eq!(
        rewards_and_statuses(&rows),
        [(5.0, "ok"), (14.1, "ok"), (-9.0, "reward_error")]
    );
}

#[test]
fn server_failures_fail_the_batch() {
    let cases: [(Reply, &str, &str); 4] = [
        (
            |_| (500, "overloaded".into()),
            "reward_unavailable",
            "HTTP 500",
        ),
        (
            |_| (200, "[1.0, 2.0]".into()),
            "invalid_reward",
            "2 rewards for 3 requests",
        ),
        (
            |_| (200, "{\"rewards\": []}".into()),
            "invalid_reward",
            "not a JSON list",
        ),
        (
            |_| (200, "[1.0, \"x\", 3]".into()),
            "invalid_reward",
            "no finite reward",
        ),
    ];
    for (reply, status, message) in cases {
        let url = server(reply);
        let rows = score(http(url.clone(), OnFailure::Fallback));
        if status == "invalid_reward" && message == "no finite reward" {
            assert_eq!(
                rewards_and_statuses(&rows),
                [(1.0, "ok"), (-9.0, status), (3.0, "empty_answer")]
            );
        } else {
            assert!(
                rows.iter().all(|r| r.reward_status == status),
                "{message}: {rows:?}"
            );
        }
        let stage = RewardStage::new(http(url, OnFailure::Error), LoadOptions::default()).unwrap();
        let err = stage.rewards(None, &answers()).unwrap_err().to_string();
        assert!(err.contains(message), "{err}");
    }
    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/score", closed.local_addr().unwrap());
    drop(closed);
    let rows = score(http(url, OnFailure::Fallback));
    assert!(rows.iter().all(|r| r.reward_status == "reward_unavailable"));
}

#[test]
fn a_sum_adds_weighted_parts_and_keeps_each() {
    let dir = script(
        "sum",
        "return {'reward': 1.0 if r['answer'].endswith('.') else 0.0}",
    );
    let config = RewardConfig {
        kind: RewardKind::Sum,
        sum: vec![
            RewardConfig {
                name: Some("format".into()),
                weight: 0.5,
                ..command(&dir, OnFailure::Error)
            },
            RewardConfig {
                kind: RewardKind::Length,
                target_chars: 5,
                weight: 2.0,
                ..RewardConfig::default()
            },
        ],
        ..RewardConfig::default()
    };
    let rows = score(config);
    // format: 1, 1, 0; length: -|5-5|, -|14-5|, -|0-5|.
    assert_eq!(
        rewards_and_statuses(&rows),
        [
            (0.5, "ok"),
            (0.5 - 18.0, "ok"),
            (-10.0, "format:empty_answer")
        ]
    );
    let parts = rows[1].reward_parts.as_ref().unwrap();
    assert_eq!(
        parts
            .iter()
            .map(|p| (
                p.name.as_str(),
                p.weight,
                p.reward,
                p.reward_status.as_str()
            ))
            .collect::<Vec<_>>(),
        [("format", 0.5, 1.0, "ok"), ("length", 2.0, -9.0, "ok")]
    );
}
