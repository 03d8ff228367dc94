//! Faults a demanding user meets: two runs in one folder, a resume while the run is
//! live, a kill that leaves the lock behind.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{config, pipeline, records, run};

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
            .output()
            .unwrap();
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
    let cfg_short = common::config_with(
        dir.path(),
        "lsp",
        3,
        &format!(
            "{{kind: reward_model, model: {}}}",
            common::repo().join("tests/fixtures/tiny-reward").display()
        ),
        "",
    );
    // Same run name and folder, fewer iterations: resuming finishes at once or
    // plays up to 3; either way the lock is taken and released without error.
    run(&cfg_short, true);
}
