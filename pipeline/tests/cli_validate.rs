//! `pipeline validate`: a broken file lists every problem and exits non-zero; a good
//! one exits 0 and prints the resolved plan.

#[path = "../../tests/tests/common/deadline.rs"]
mod deadline;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use deadline::Finish;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn validate(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .arg("validate")
        .arg(config)
        .finish()
}

#[test]
fn broken_config_lists_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("broken.yaml");
    std::fs::write(
        &config,
        "run:\n  iterations: 0\n  seeds: 3\nsolver:\n  answers_per_query: many\n\
         challenger:\n  sampling: {top_p: 1.5}\nmodel:\n  policy: no-such-model\n\
         monitor:\n  distinct_n: 0\n  warn: {code_drift_above: 2}\n",
    )
    .unwrap();
    let out = validate(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    // Typed problems: unknown key and wrong type. They stop nothing: the rest is still
    // checked, which finds the range problems and the missing model.
    assert!(stderr.contains("7 problems"), "{stderr}");
    for expected in [
        "run.seeds: unknown field `seeds`",
        "solver.answers_per_query: invalid type: string \"many\"",
        "run.iterations: must be at least 1",
        "challenger.sampling.top_p: 1.5 is out of range",
        "model.policy: folder ",
        "monitor.distinct_n: must be at least 1",
        "monitor.warn.code_drift_above: 2 is not a share",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(stderr.contains("no-such-model does not exist"), "{stderr}");
}

#[test]
fn syntax_error_and_missing_file_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.yaml");
    std::fs::write(&config, "run: {name: x\n").unwrap();
    let out = validate(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("is not valid YAML") && stderr.contains("line"),
        "{stderr}"
    );

    let out = validate(&dir.path().join("absent.yaml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("cannot read") && stderr.contains("absent.yaml"),
        "{stderr}"
    );
}

#[test]
fn good_config_prints_the_resolved_plan() {
    let out = validate(&repo().join("examples/tiny-epoch.yaml"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.starts_with("# plan: 2 iteration(s) of `lsp`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("#   solver: 2 x 2 = 4 answers (<= 8 tokens each)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("#   self-reward: 4 judge replies"),
        "{stdout}"
    );
    // Defaults are filled in and paths resolved against the file's folder.
    assert!(stdout.contains("kl_coef: 0.05"), "{stdout}");
    assert!(
        stdout.contains("examples/../tests/fixtures/tiny-llama"),
        "{stdout}"
    );
}

#[test]
fn the_shipped_configs_are_valid_but_for_models_this_machine_lacks() {
    // `epoch.yaml` and every example: a renamed field or a value out of range fails
    // here; a model folder that is not on this machine (the default model before
    // `pipeline model fetch`, the paper's 3B models) is the one problem allowed.
    let examples = std::fs::read_dir(repo().join("examples")).unwrap();
    let mut configs: Vec<PathBuf> = examples
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    configs.push(repo().join("epoch.yaml"));
    assert!(configs.len() >= 6, "{configs:?}");
    for config in &configs {
        let out = validate(config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).starts_with("# plan:"));
            continue;
        }
        let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with("  - ")).collect();
        assert!(!problems.is_empty(), "{}: {stderr}", config.display());
        for problem in problems {
            assert!(
                problem.ends_with("does not exist") || problem.contains("pipeline model fetch"),
                "{}: {problem}",
                config.display()
            );
        }
    }
}

#[test]
fn stage_problems_are_reported_under_their_stage() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("staged.yaml");
    let policy = repo().join("tests/fixtures/tiny-llama");
    std::fs::write(
        &config,
        format!(
            "model: {{policy: {}}}\nstages:\n  - {{name: a, mode: lsp_zero}}\n  - {{name: a, mode: grpo, iterations: 0}}\n",
            policy.display()
        ),
    )
    .unwrap();
    let out = validate(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        "stages[1].name: \"a\" names two stages",
        "stages[1].run.iterations: must be at least 1",
        "stages[1].data: mode `grpo` takes its queries from data",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn rollout_weights_of_their_own_kind_need_f32_weights_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let policy = repo().join("tests/fixtures/tiny-llama");
    let write = |model: &str| {
        let config = dir.path().join("int8.yaml");
        let yaml = format!("model: {{policy: {}, {model}}}\n", policy.display());
        std::fs::write(&config, yaml).unwrap();
        validate(&config)
    };
    for kind in ["int8", "w8a8", "bf16"] {
        let out = write(&format!("rollout_weights: {kind}, dtype: bf16"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let expected =
            format!("model.rollout_weights: {kind} rollout weights run on the CPU decoder");
        assert!(stderr.contains(&expected), "{kind}: {stderr}");
    }
    let out = write("rollout_weights: int4");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("products") && stderr.contains("int8"),
        "{stderr}"
    );
    for (good, shown) in [
        ("rollout_weights: int8", "rollout_weights: int8"),
        (
            "rollout_weights: int8, precision: mixed_bf16",
            "rollout_weights: int8",
        ),
        ("rollout_weights: w8a8", "rollout_weights: w8a8"),
        ("rollout_weights: bf16", "rollout_weights: bf16"),
    ] {
        let out = write(good);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{good}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(shown), "{stdout}");
    }
}

#[test]
fn emulating_bf16_needs_mixed_precision() {
    let dir = tempfile::tempdir().unwrap();
    let policy = repo().join("tests/fixtures/tiny-llama");
    let config = dir.path().join("emulate.yaml");
    let write = |model: &str| {
        let yaml = format!("model: {{policy: {}, {model}}}\n", policy.display());
        std::fs::write(&config, yaml).unwrap();
        validate(&config)
    };
    let out = write("emulate_bf16: true");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("model.emulate_bf16: emulate_bf16 applies to precision: mixed_bf16"),
        "{stderr}"
    );
    let out = write("emulate_bf16: true, precision: mixed_bf16");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The plan `validate` prints for a config of `sections` (YAML, `{policy}` standing
/// for the tiny-llama fixture's folder), which must pass.
fn plan_of(sections: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let policy = repo().join("tests/fixtures/tiny-llama");
    let config = dir.path().join("epoch.yaml");
    let text = sections.replace("{policy}", &policy.display().to_string());
    std::fs::write(&config, text).unwrap();
    let out = validate(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn workers_are_planned_and_more_threads_than_cores_are_warned_about() {
    let write = |workers: u64, threads: u64| {
        plan_of(&format!(
            "run: {{workers: {workers}, threads: {threads}}}\nmodel: {{policy: {{policy}}}}\n"
        ))
    };
    // 64 × 64 threads exceed any machine's cores; one worker of one thread none.
    let plan = write(64, 64);
    assert!(
        plan.contains("64 worker(s) x 1 process(es), 64 libtorch thread(s) each"),
        "{plan}"
    );
    assert!(
        plan.contains("# warning: run.workers × run.threads = 64 × 64 = 4096 threads on"),
        "{plan}"
    );
    assert!(!write(1, 1).contains("# warning"));
}

#[test]
fn pure_bf16_training_at_the_papers_learning_rate_is_warned_about() {
    let plan = |model: &str| {
        plan_of(&format!(
            "model: {{policy: {{policy}}, {model}}}\nupdate: {{learning_rate: 3.0e-6}}\n"
        ))
    };
    let bf16 = plan("dtype: bf16");
    assert!(
        bf16.contains("# warning: model.dtype: bf16 trains the policy's weights in bf16"),
        "{bf16}"
    );
    assert!(!plan("dtype: f32, precision: mixed_bf16").contains("# warning"));
}

#[test]
fn cuda_that_this_machines_libtorch_does_not_see_is_warned_about() {
    // A warning, not an error: a config may be checked away from the machine it runs on.
    let plan = plan_of("model: {policy: {policy}, device: cuda}\n");
    let warned = plan.contains("# warning: model.device: cuda, but libtorch sees no CUDA device");
    assert_eq!(warned, !tch::Cuda::is_available(), "{plan}");
    assert!(!plan_of("model: {policy: {policy}}\n").contains("# warning"));
}

#[test]
fn validate_opens_the_model_folders_and_bounds_new_tokens_by_the_context() {
    let dir = tempfile::tempdir().unwrap();
    // A copy of tiny-llama whose config.json misstates the vocabulary.
    let fixture = repo().join("tests/fixtures/tiny-llama");
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, policy.join(path.file_name().unwrap())).unwrap();
        }
    }
    let config_json = policy.join("config.json");
    let mut hf: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_json).unwrap()).unwrap();
    hf["vocab_size"] = 100.into();
    std::fs::write(&config_json, hf.to_string()).unwrap();
    let a_file = dir.path().join("model.safetensors");
    std::fs::write(&a_file, b"not a folder").unwrap();
    let config = dir.path().join("models.yaml");
    std::fs::write(
        &config,
        format!(
            "model: {{policy: {}, reference: {}}}\n\
             challenger: {{sampling: {{max_new_tokens: 100000000}}}}\n\
             reward: {{kind: reward_model, model: {}}}\n",
            policy.display(),
            a_file.display(),
            fixture.display()
        ),
    )
    .unwrap();
    let out = validate(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        // The config is blamed, not the tokenizer.
        "model.policy: ",
        "config.json describes model.embed_tokens.weight as [100, 64] but the weights hold [400, 64]",
        "model.reference: ",
        "model.safetensors is a file, not a folder",
        // tiny-llama is a causal LM: it loads, so only a run finds it has no score head.
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    // With a sound policy, new tokens are bounded by its context (512).
    std::fs::write(
        &config,
        format!(
            "model: {{policy: {}}}\nchallenger: {{sampling: {{max_new_tokens: 100000000}}}}\n\
             reward: {{kind: length}}\n",
            fixture.display()
        ),
    )
    .unwrap();
    let out = validate(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "challenger.sampling.max_new_tokens: 100000000 is more than the policy's whole context of 512 tokens"
        ),
        "{stderr}"
    );
    // `generate` refuses instead of allocating for 1e8 tokens.
    let out = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(["generate", "--model"])
        .arg(&fixture)
        .args(["--chat", "Hi", "--max-new-tokens", "100000000"])
        .finish();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("is more than") && stderr.contains("whole context of 512"),
        "{stderr}"
    );
    // A prompt that with its new tokens runs past the context: an error unless allowed.
    let long = "Tell me about the sea and the sky. ".repeat(100);
    let past = |allow: bool| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pipeline"));
        command.args(["generate", "--model"]).arg(&fixture).args([
            "--chat",
            &long,
            "--max-new-tokens",
            "8",
        ]);
        if allow {
            command.arg("--allow-past-context");
        }
        command.finish()
    };
    let refused = past(false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("runs past") && stderr.contains("context of 512 tokens"),
        "{stderr}"
    );
    let allowed = past(true);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}
