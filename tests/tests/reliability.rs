//! Faults a demanding user meets: two runs in one folder, a resume while the run is
//! live, a kill that leaves the lock behind.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::deadline::Finish;
use common::{config, pipeline, records, run, run_fails};

#[test]
fn a_live_run_locks_its_folder_and_a_kill_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "lsp", 400);
    let mut first = Command::new(pipeline())
        .arg("run")
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait for its first record: the run is live and holds the lock.
    let started = Instant::now();
    while !dir
        .path()
        .join("e2e/records/iteration-000001.parquet")
        .is_file()
    {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no first record"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run stopped early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for flags in [&[][..], &["--resume"][..]] {
        let second = Command::new(pipeline())
            .arg("run")
            .arg(&cfg)
            .args(flags)
            .finish();
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert!(!second.status.success(), "{flags:?} was accepted");
        assert!(
            stderr.contains("is in use by another `pipeline run`"),
            "{stderr}"
        );
    }
    // A kill -9 leaves the lock file, but not the lock: --resume takes over.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(dir.path().join("e2e/.lock").is_file());
    let checkpointed = records(dir.path()).len();
    assert!(checkpointed > 0);
    let cfg_short = config(dir.path(), "lsp", 3);
    // Same run name and folder, fewer iterations: resuming finishes at once or
    // plays up to 3; either way the lock is taken and released without error.
    run(&cfg_short, true);
}

/// Overwrites `n` bytes in the middle of `path` with a pattern.
fn damage(path: &std::path::Path, n: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let start = bytes.len() / 2;
    for (i, b) in bytes[start..start + n].iter_mut().enumerate() {
        *b = (i * 151 % 251) as u8;
    }
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_damaged_or_missing_final_model_is_rewritten_from_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "lsp", 2);
    run(&cfg, false);
    let root = dir.path().join("e2e");
    let weights = root.join("final/model.safetensors");
    let checkpoint = root.join("checkpoints/iteration-000002/model/model.safetensors");
    assert_eq!(
        std::fs::read(&weights).unwrap(),
        std::fs::read(&checkpoint).unwrap()
    );
    // Truncated (a full disk while writing it), then gone altogether.
    let full = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &full[..full.len() / 3]).unwrap();
    let out = run(&cfg, true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("model.safetensors is corrupt")
            && stdout.contains("rewritten from checkpoint 2"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(&weights).unwrap(), full);
    std::fs::remove_dir_all(root.join("final")).unwrap();
    let out = run(&cfg, true);
    assert!(String::from_utf8_lossy(&out.stdout).contains("rewritten from checkpoint 2"));
    assert_eq!(std::fs::read(&weights).unwrap(), full);
    // A sound final model is left alone.
    let out = run(&cfg, true);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("already finished") && !stdout.contains("rewritten"),
        "{stdout}"
    );
}

#[test]
fn damaged_checkpoints_and_non_finite_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "lsp", 3);
    run(&cfg, false);
    // The last checkpoint's weights get 2,000 stray bytes: resuming refuses it.
    let root = dir.path().join("e2e");
    std::fs::remove_dir_all(root.join("final")).unwrap();
    damage(
        &root.join("checkpoints/iteration-000003/model/model.safetensors"),
        2000,
    );
    let longer = config(dir.path(), "lsp", 4);
    let stderr = run_fails(&longer, &["--resume"]);
    assert!(
        stderr.contains("checkpoint 3 is damaged")
            && stderr.contains("model/model.safetensors is corrupt"),
        "{stderr}"
    );
    // A policy folder with a NaN weight (no checksum of ours to catch it) is refused
    // at load, before any iteration.
    let policy = dir.path().join("nan-policy");
    std::fs::create_dir_all(&policy).unwrap();
    let fixture = common::repo().join("tests/fixtures/tiny-llama");
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policy.join(path.file_name().unwrap())).unwrap();
        }
    }
    let weights = policy.join("model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let end = bytes.len();
    bytes[end - 4..].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&weights, bytes).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    let cfg = config(fresh.path(), "lsp", 1);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &fixture.display().to_string(),
        &policy.display().to_string(),
    );
    std::fs::write(&cfg, text).unwrap();
    let stderr = run_fails(&cfg, &[]);
    assert!(stderr.contains("holds NaN or infinite values"), "{stderr}");
    assert!(!fresh.path().join("e2e/records").exists());
}

#[test]
fn a_run_whose_steps_are_all_skipped_stops_with_an_error() {
    // A reward program whose rewards overflow the loss: every step is skipped.
    let dir = tempfile::tempdir().unwrap();
    let program = dir.path().join("huge.py");
    std::fs::write(
        &program,
        "import json, sys\n\
         for line in sys.stdin:\n\
         \x20   r = json.loads(line)\n\
         \x20   print(json.dumps({'reward': 1e308 if r['answer_index'] == 0 else -1e308}), flush=True)\n",
    )
    .unwrap();
    let reward = format!(
        "{{kind: command, command: [{}, {}]}}",
        common::python().display(),
        program.display()
    );
    let cfg = common::config_with(dir.path(), "lsp_zero", 10, &reward, "");
    let stderr = run_fails(&cfg, &[]);
    assert!(
        stderr.contains("the optimizer steps of iterations 1..=3 were all skipped")
            && stderr.contains("non-finite"),
        "{stderr}"
    );
    // What was played is recorded, each row saying why its step was skipped.
    let rows = records(dir.path());
    assert_eq!(rows.len(), 3 * 3 * 2);
    assert!(
        rows.iter()
            .all(|r| !r.step_applied && r.skip_reason.is_some())
    );
}

#[test]
fn a_lost_record_or_damaged_monitor_row_is_played_again_on_resume() {
    let (dir, whole) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    run(&config(whole.path(), "lsp", 5), false);
    let expected = records(whole.path());
    let cfg = config(dir.path(), "lsp", 5);
    run(&cfg, false);
    let root = dir.path().join("e2e");
    // The record of iteration 3 deleted, the monitor row of 4 truncated, and the
    // temporary files of an interrupted write: a resume of the finished run would
    // leave a gap, so it plays 3..=5 again from checkpoint 2.
    std::fs::remove_file(root.join("records/iteration-000003.parquet")).unwrap();
    let row = root.join("monitor/iteration-000004.parquet");
    let bytes = std::fs::read(&row).unwrap();
    std::fs::write(&row, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        root.join("monitor/.iteration-000005.parquet.tmp-12345"),
        b"partial",
    )
    .unwrap();
    std::fs::remove_dir_all(root.join("final")).unwrap();
    let out = run(&cfg, true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "iteration-000003.parquet is missing: playing again from the checkpoint before it"
        ),
        "{stderr}"
    );
    // The same game as an uninterrupted run, every file readable, nothing left over.
    let again = records(dir.path());
    assert_eq!(again.len(), expected.len());
    for (a, b) in again.iter().zip(&expected) {
        assert_eq!(
            (a.iteration, &a.query_text, &a.answer_text, a.reward),
            (b.iteration, &b.query_text, &b.answer_text, b.reward)
        );
    }
    for t in 1..=5 {
        lsp_schemas::read_batches(&root.join(format!("monitor/iteration-{t:06}.parquet"))).unwrap();
    }
    let leftovers: Vec<_> = std::fs::read_dir(root.join("monitor"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(root.join("final/model.safetensors").is_file());
}

fn manifest(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("e2e/manifest.json")).unwrap()).unwrap()
}

#[test]
fn a_resume_keeps_the_runs_config_or_records_the_change_it_was_allowed() {
    let dir = tempfile::tempdir().unwrap();
    // A start that fails in its first iteration (its reward program does not exist)
    // leaves a manifest; the next fresh start writes its own.
    let missing = "{kind: command, command: [./no-such-reward-program]}";
    let failing = common::config_with(dir.path(), "lsp", 2, missing, "");
    let stderr = run_fails(&failing, &[]);
    assert!(stderr.contains("cannot start"), "{stderr}");
    assert!(dir.path().join("e2e/manifest.json").is_file());
    let cfg = config(dir.path(), "lsp", 2);
    run(&cfg, false);
    let m = manifest(dir.path());
    assert_eq!(m["config"]["reward"]["kind"], "reward_model");
    assert_eq!(m["resumes"].as_array().unwrap().len(), 0);
    // Longer, on two workers, the micro-batches' sequences split over the threads:
    // free changes (a run started before `auto` was the default recorded
    // `operators`); the resume is recorded.
    let longer = config(dir.path(), "lsp", 3);
    let text = std::fs::read_to_string(&longer).unwrap();
    std::fs::write(
        &longer,
        text.replace(
            "micro_batch_size: 2}",
            "micro_batch_size: 2, parallelism: sequences}",
        ),
    )
    .unwrap();
    assert!(
        std::fs::read_to_string(&longer)
            .unwrap()
            .contains("parallelism: sequences")
    );
    common::run_with(&longer, &["--resume", "--workers", "2"]);
    let resumes = manifest(dir.path())["resumes"].clone();
    assert_eq!(resumes.as_array().unwrap().len(), 1);
    assert_eq!(
        (
            resumes[0]["from_iteration"].as_u64(),
            resumes[0]["to_iteration"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert!(resumes[0].get("changed").is_none());
    // Another learning rate: refused, and the refusal adds no entry.
    let text = std::fs::read_to_string(&longer).unwrap();
    let changed = dir.path().join("changed.yaml");
    std::fs::write(
        &changed,
        text.replace("iterations: 3", "iterations: 4")
            .replace("learning_rate: 1.0e-3", "learning_rate: 2.0e-3"),
    )
    .unwrap();
    let stderr = run_fails(&changed, &["--resume"]);
    assert!(
        stderr.contains("the config differs from the one")
            && stderr.contains("in update.learning_rate:"),
        "{stderr}"
    );
    assert_eq!(manifest(dir.path())["resumes"].as_array().unwrap().len(), 1);
    // Allowed: applied, and recorded with the config it ran with.
    common::run_with(&changed, &["--resume", "--allow-config-change"]);
    let last = manifest(dir.path())["resumes"][1].clone();
    assert_eq!(last["changed"], serde_json::json!(["update.learning_rate"]));
    assert_eq!(last["config"]["update"]["learning_rate"], 2.0e-3);
    assert_eq!(records(dir.path()).len(), 4 * 3 * 2);
}

/// The tests' processes run within a deadline: one that hangs is killed and its test
/// fails, and one within it gives its output as `Command::output` would.
#[test]
fn a_hung_process_is_killed_and_fails_its_test() {
    let child = Command::new("sleep")
        .arg("30")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let hung = std::panic::catch_unwind(|| {
        common::deadline::wait_within(child, "sleep 30", std::time::Duration::from_millis(300))
    });
    let message = *hung.unwrap_err().downcast::<String>().unwrap();
    assert!(
        message.contains("sleep 30 ran past") && message.contains("was killed"),
        "{message}"
    );
    assert!(started.elapsed().as_secs() < 10);
    let out = Command::new("sh")
        .args(["-c", "echo out; echo err >&2; exit 3"])
        .finish();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
}
