//! The game across timely workers: one worker, two worker threads in one process and
//! two processes over localhost TCP play the same game (texts, rewards, advantages)
//! and train the same weights (or LoRA adapter), in every mode and with N not a
//! multiple of the workers; under mixed precision, two threads and two processes play
//! the same game bit for bit; a killed process stops the other promptly, and a resume
//! with one worker completes the record as an uninterrupted run would have.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::deadline::Finish;
use common::{config_with, pipeline, records, repo, run_with, untimed, with_model_options};
use lsp_model::SafetensorsFile;
use lsp_schemas::GameRecordRow;

/// The tiny game of `mode` with N = 5 queries of 2 answers; `lsp+ppo` is `lsp` with
/// two clipped epochs per iteration and the `dapo` loss (whole-iteration token
/// counts).
fn game_config(out: &Path, mode: &str, iterations: u64) -> PathBuf {
    if mode == "lsp+lora" {
        // Only the adapter trains and goes through the all-reduce.
        let cfg = game_config(out, "lsp", iterations);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "allow_past_context: true}",
            "allow_past_context: true, lora: {r: 4, alpha: 8}}",
        );
        assert!(text.contains("lora: {r: 4"));
        std::fs::write(&cfg, text).unwrap();
        return cfg;
    }
    if mode == "lsp+ppo" {
        let cfg = game_config(out, "lsp", iterations);
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "update: {learning_rate: 1.0e-3, micro_batch_size: 2}",
            "update: {learning_rate: 1.0e-3, micro_batch_size: 2, epochs: 2, clip_high: 0.28, loss: dapo}",
        );
        assert!(text.contains("epochs: 2"));
        std::fs::write(&cfg, text).unwrap();
        return cfg;
    }
    let rm = repo().join("tests/fixtures/tiny-reward");
    let (reward, extra) = match mode {
        "grpo" => (
            "{kind: verifier}".to_string(),
            format!(
                "data: {{path: {}, prompt_column: question, answer_column: answer}}\n",
                repo().join("datasets/gsm8k_train.jsonl").display()
            ),
        ),
        _ => (
            format!("{{kind: reward_model, model: {}}}", rm.display()),
            String::new(),
        ),
    };
    let cfg = config_with(out, mode, iterations, &reward, &extra);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("num_queries: 3", "num_queries: 5");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// A hostfile of `n` free localhost ports in `dir`.
fn hostfile(dir: &Path, n: usize) -> PathBuf {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let lines: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().to_string())
        .collect();
    let path = dir.join("hosts.txt");
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

/// What the processes log: the usual, and how the update was dealt.
const LOG: &str = "info,pipeline::run::dealt=debug";

/// Process `process` of a 2-process run of `cfg`.
fn start_process(cfg: &Path, hosts: &Path, process: usize, flags: &[&str]) -> Child {
    Command::new(pipeline())
        .env("RUST_LOG", LOG)
        .arg("run")
        .arg(cfg)
        .args(["--processes", "2", "--process", &process.to_string()])
        .arg("--hostfile")
        .arg(hosts)
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn succeeded(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cfg` as two processes on localhost, both of which must succeed: their logs.
fn run_two_processes(cfg: &Path, dir: &Path) -> [String; 2] {
    let hosts = hostfile(dir, 2);
    let second = start_process(cfg, &hosts, 1, &[]);
    let first = start_process(cfg, &hosts, 0, &[]);
    [(first, "process 0"), (second, "process 1")].map(|(child, what)| {
        let out = child.finish();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        succeeded(out, what);
        log
    })
}

/// The update's micro-batches and sequences a process trained in each iteration, from
/// its log's `update dealt` lines.
fn dealt(log: &str) -> Vec<(usize, usize)> {
    // Without the terminal's colour codes.
    let mut plain = String::new();
    let mut escape = false;
    for c in log.chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, 'm') => escape = false,
            (false, c) => plain.push(c),
            (true, _) => {}
        }
    }
    let field = |line: &str, name: &str| -> usize {
        let rest = &line[line.find(&format!("{name}=")).unwrap() + name.len() + 1..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().unwrap()
    };
    plain
        .lines()
        .filter(|l| l.contains("update dealt"))
        .map(|l| (field(l, "micro_batches"), field(l, "sequences")))
        .collect()
}

/// Whether two floats agree up to the rounding of batched products.
fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * (1.0 + a.abs())
}

fn close_option(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => close(a, b),
        (a, b) => a == b,
    }
}

/// The same game: texts exactly, every reward, value and advantage closely.
fn assert_same_game(a: &[GameRecordRow], b: &[GameRecordRow], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: rows");
    for (x, y) in a.iter().zip(b) {
        let key = (x.iteration, x.query_id, x.answer_index);
        assert_eq!(key, (y.iteration, y.query_id, y.answer_index), "{what}");
        assert_eq!(
            (&x.query_text, &x.answer_text, &x.judge_text),
            (&y.query_text, &y.answer_text, &y.judge_text),
            "{what}: texts of {key:?}"
        );
        // The game's own quantities: closely.
        let game = [
            (x.reward, y.reward),
            (x.value, y.value),
            (x.solver_reward, y.solver_reward),
            (x.adv_solver, y.adv_solver),
        ];
        for (i, (p, q)) in game.into_iter().enumerate() {
            assert!(close(p, q), "{what}: value {i} of {key:?}: {p} vs {q}");
        }
        // The trainer's: sums over an answer's tokens under weights that one update
        // already moved by float rounding (the gradient summed in another order), so
        // each token's error adds up: 1e-5 of the value per token at most, measured
        // up to 1.1e-5 in all on an AMD EPYC (a 1e-5 bound held on an Intel Xeon).
        let trainer = [
            (x.answer_logprob_policy, y.answer_logprob_policy),
            (x.kl_answer, y.kl_answer),
            (x.loss, y.loss),
            (x.grad_norm, y.grad_norm),
            (x.answer_entropy, y.answer_entropy),
            (x.clip_low_fraction, y.clip_low_fraction),
            (x.clip_high_fraction, y.clip_high_fraction),
        ];
        for (i, (p, q)) in trainer.into_iter().enumerate() {
            assert!(
                (p - q).abs() <= 1e-4 * (1.0 + p.abs()),
                "{what}: trainer's value {i} of {key:?}: {p} vs {q}"
            );
        }
        for (p, q) in [
            (x.self_reward, y.self_reward),
            (x.value_q, y.value_q),
            (x.challenger_reward, y.challenger_reward),
            (x.adv_challenger, y.adv_challenger),
        ] {
            assert!(close_option(p, q), "{what}: {key:?}: {p:?} vs {q:?}");
        }
        assert_eq!(x.step_applied, y.step_applied, "{what}");
    }
}

/// Largest difference between two saved models' weights (or LoRA adapters').
fn weights_differ_by(a: &Path, b: &Path) -> f64 {
    let file = match a.join("adapter_model.safetensors").is_file() {
        true => "adapter_model.safetensors",
        false => "model.safetensors",
    };
    let (mut a, mut b) = (
        SafetensorsFile::open(&a.join(file)).unwrap(),
        SafetensorsFile::open(&b.join(file)).unwrap(),
    );
    let names: Vec<String> = a.names().map(str::to_string).collect();
    assert!(!names.is_empty());
    names
        .iter()
        .map(|name| {
            let (x, y) = (a.read(name).unwrap(), b.read(name).unwrap());
            (x - y).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn one_worker_two_threads_and_two_processes_play_the_same_game() {
    for mode in ["lsp", "lsp_zero", "grpo", "lsp+ppo", "lsp+lora"] {
        let (one, threads, processes) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        run_with(&game_config(one.path(), mode, 3), &[]);
        run_with(&game_config(threads.path(), mode, 3), &["--workers", "2"]);
        run_two_processes(&game_config(processes.path(), mode, 3), processes.path());
        let base = records(one.path());
        assert_eq!(base.len(), 3 * 5 * 2, "{mode}");
        if mode == "lsp+ppo" {
            // Two epochs: the sampler's log-probs are the old policy, so the
            // second epoch's ratios move and some clip.
            assert!(base.iter().all(|r| r.step_applied));
            assert!(
                base.iter()
                    .any(|r| r.clip_low_fraction + r.clip_high_fraction > 0.0),
                "no ratio clipped in 3 iterations of 2 epochs at lr 1e-3"
            );
        }
        assert_same_game(
            &base,
            &records(threads.path()),
            &format!("{mode}, 2 threads"),
        );
        assert_same_game(
            &base,
            &records(processes.path()),
            &format!("{mode}, 2 processes"),
        );
        let final_of = |d: &tempfile::TempDir| d.path().join("e2e/final");
        for (other, what) in [(&threads, "2 threads"), (&processes, "2 processes")] {
            let diff = weights_differ_by(&final_of(&one), &final_of(other));
            // Rounding of the gradient sum's order, per AdamW step: 3 steps, or 6
            // with two epochs. Measured, largest over the modes (2 threads and 2
            // processes alike, bit for bit): 0.34e-5 a step on an Intel Xeon; 1.42e-5
            // on an AMD EPYC (Zen 5) for `lsp` (4.26e-5 after 3 steps; lsp_zero 0.19e-5,
            // grpo 0.08e-5): AdamW's early steps are near lr · sign(gradient), so a
            // parameter whose gradient is near zero moves by the order's rounding
            // magnified.
            let steps = if mode == "lsp+ppo" { 6.0 } else { 3.0 };
            assert!(
                diff <= steps * 2e-5,
                "{mode}, {what}: weights differ by {diff}"
            );
        }
    }
}

#[test]
fn a_killed_process_stops_the_other_and_a_resume_with_one_worker_completes_the_record() {
    let (dir, whole) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Twelve iterations: enough for the kill to land mid-run. The two processes' sums
    // round unlike one worker's (weights ~1e-7 apart at the resume), and over many
    // more iterations such a difference can flip a sampled token of the tiny model
    // (it did at iteration 16 of 30): the record is the same game, not the same bits.
    let cfg = game_config(dir.path(), "lsp_zero", 12);
    let hosts = hostfile(dir.path(), 2);
    let mut second = start_process(&cfg, &hosts, 1, &[]);
    let first = start_process(&cfg, &hosts, 0, &[]);
    let state = dir
        .path()
        .join("e2e/checkpoints/iteration-000002/state.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !state.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(state.exists(), "the run did not reach iteration 2");
    second.kill().unwrap(); // SIGKILL
    second.wait().unwrap();
    let killed = Instant::now();
    let out = first.finish();
    let waited = killed.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "process 0 went on without process 1");
    assert!(
        waited < Duration::from_secs(20),
        "process 0 took {waited:?} to stop"
    );
    assert!(
        stderr.contains("lost the connection to another process"),
        "{stderr}"
    );
    // Resumed by one worker alone: the record of an uninterrupted run.
    run_with(&cfg, &["--resume"]);
    run_with(&game_config(whole.path(), "lsp_zero", 12), &[]);
    assert_same_game(&records(whole.path()), &records(dir.path()), "resumed");
}

#[test]
fn an_unreachable_peer_or_a_short_hostfile_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = game_config(dir.path(), "lsp", 1);
    let hosts = dir.path().join("hosts.txt");
    std::fs::write(&hosts, "127.0.0.1:1\nno-such-host.invalid:2\n").unwrap();
    let out = start_process(&cfg, &hosts, 0, &[]).finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("no-such-host.invalid:2"), "{stderr}");
    std::fs::write(&hosts, "127.0.0.1:1\n").unwrap();
    let out = start_process(&cfg, &hosts, 0, &[]).finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 host:port lines for 2 processes"),
        "{stderr}"
    );
}

#[test]
fn the_update_is_dealt_in_the_micro_batches_one_worker_makes() {
    // N = 4, G = 4, micro-batches of 4: one worker trains 4 micro-batches of answers and
    // one of the 4 queries over Box 1. Two processes make the same 5 between them —
    // each training its own queries would make 6, Box 1 passed on each — and each
    // trains some of them.
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = |dir: &Path| {
        let cfg = game_config(dir, "lsp", 1);
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("num_queries: 5", "num_queries: 4")
            .replace("answers_per_query: 2", "answers_per_query: 4")
            .replace("micro_batch_size: 2", "micro_batch_size: 4");
        assert!(text.contains("micro_batch_size: 4") && text.contains("answers_per_query: 4"));
        std::fs::write(&cfg, text).unwrap();
        cfg
    };
    let out = Command::new(pipeline())
        .env("RUST_LOG", LOG)
        .arg("run")
        .arg(config(one.path()))
        .finish();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    succeeded(out, "one worker");
    let whole = dealt(&log);
    // What the record says was trained: the queries with a measured log-prob (one
    // micro-batch per 4), each query's answers with tokens (one micro-batch each).
    let rows = records(one.path());
    let queries: std::collections::BTreeSet<u32> = rows
        .iter()
        .filter(|r| r.query_logprob_policy.is_some())
        .map(|r| r.query_id)
        .collect();
    let answered: std::collections::BTreeSet<u32> = rows
        .iter()
        .filter(|r| r.answer_tokens > 0)
        .map(|r| r.query_id)
        .collect();
    let answers = rows.iter().filter(|r| r.answer_tokens > 0).count();
    assert!(!queries.is_empty() && answers > 8, "{} rows", rows.len());
    assert_eq!(
        whole,
        [(
            answered.len() + queries.len().div_ceil(4),
            answers + queries.len()
        )],
        "{log}"
    );
    let logs = run_two_processes(&config(two.path()), two.path());
    let parts: Vec<(usize, usize)> = logs.iter().flat_map(|log| dealt(log)).collect();
    assert_eq!(parts.len(), 2, "{logs:?}");
    assert!(parts.iter().all(|&(m, s)| m > 0 && s > 0), "{parts:?}");
    let sum = parts.iter().fold((0, 0), |a, p| (a.0 + p.0, a.1 + p.1));
    assert_eq!(sum, whole[0], "{parts:?}");
}

#[test]
fn under_mixed_precision_two_threads_and_two_processes_play_the_same_game_bit_for_bit() {
    // bf16 rounds a pass of differently composed batches differently (a prompt's
    // padding, or the prefix it shares with its batch, changes the order attention
    // sums its keys in), so one worker and two play different games under mixed
    // precision, the first iteration's answers included. The same worker count always plays the same one: two worker threads
    // and two processes make the same batches, and what crosses between them (tallies,
    // the gradient's f32 sums, the bf16 casts made from the same masters) is the
    // same, so their records and final weights (or adapters) are equal bit for bit.
    for mode in ["lsp", "grpo", "lsp+lora"] {
        let (one, threads, processes) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let mixed = |dir: &Path| {
            let cfg = game_config(dir, mode, 3);
            with_model_options(&cfg, "precision: mixed_bf16, emulate_bf16: true");
            cfg
        };
        run_with(&mixed(one.path()), &[]);
        run_with(&mixed(threads.path()), &["--workers", "2"]);
        run_two_processes(&mixed(processes.path()), processes.path());
        let manifest = std::fs::read_to_string(processes.path().join("e2e/manifest.json"));
        assert!(manifest.unwrap().contains("\"precision\": \"mixed_bf16\""));
        let (two, base) = (untimed(records(threads.path())), records(one.path()));
        assert_eq!(two.len(), 3 * 5 * 2, "{mode}");
        assert_eq!(two, untimed(records(processes.path())), "{mode}");
        let keys = |rows: &[GameRecordRow]| {
            let key = |r: &GameRecordRow| (r.iteration, r.query_id, r.answer_index);
            rows.iter().map(key).collect::<Vec<_>>()
        };
        assert_eq!(keys(&base), keys(&two), "{mode}: one worker's rows");
        let final_of = |d: &tempfile::TempDir| d.path().join("e2e/final");
        let diff = weights_differ_by(&final_of(&threads), &final_of(&processes));
        assert_eq!(diff, 0.0, "{mode}: final weights");
    }
}
