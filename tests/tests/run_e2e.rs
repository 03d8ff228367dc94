//! `pipeline run` end to end on the tiny fixtures (tiny-llama as policy, reference and
//! judge; tiny-reward as the external reward): the record's shape, advantages
//! recomputed from recorded rewards, resume after an interruption and after a kill,
//! and a broken config refused before any model loads.

mod common;

use std::path::Path;
use std::process::Command;

use common::deadline::Finish;
use common::{
    config, config_with, pipeline, records, records_in, repo, run, run_with, run_with_env, untimed,
    with_model_options,
};
use lsp_advantage::{AdvantageConfig, advantages};
use lsp_model::decoder::Int8Dots;
use lsp_schemas::GameRecordRow;
use lsp_stage::Mode;

fn iterations(rows: &[GameRecordRow]) -> Vec<u64> {
    let mut its: Vec<u64> = rows.iter().map(|r| r.iteration).collect();
    its.dedup();
    its
}

#[test]
fn two_lsp_iterations_leave_n_times_g_rows_each_with_consistent_advantages() {
    let dir = tempfile::tempdir().unwrap();
    run(&config(dir.path(), "lsp", 2), false);
    let rows = records(dir.path());
    assert_eq!(rows.len(), 2 * 3 * 2);
    assert_eq!(iterations(&rows), [1, 2]);
    for it in [1, 2] {
        let rows: Vec<_> = rows.iter().filter(|r| r.iteration == it).collect();
        let keys: Vec<(u32, u32)> = rows.iter().map(|r| (r.query_id, r.answer_index)).collect();
        assert_eq!(keys, [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]);
        // Advantages recomputed from the recorded rewards equal the recorded ones.
        let ids: Vec<u32> = rows.iter().map(|r| r.query_id).collect();
        let r: Vec<f64> = rows.iter().map(|r| r.reward).collect();
        let r_q: Vec<Option<f64>> = rows.iter().map(|r| r.self_reward).collect();
        let a = advantages(Mode::Lsp, &AdvantageConfig::default(), &ids, &r, &r_q).unwrap();
        for (row, (sol, ch)) in rows
            .iter()
            .zip(a.adv_solver.iter().zip(a.adv_challenger.unwrap()))
        {
            assert!(
                (row.adv_solver - sol).abs() < 1e-9
                    && (row.adv_challenger.unwrap() - ch).abs() < 1e-9
            );
        }
        assert!(
            rows.iter()
                .all(|r| r.step_applied && r.run_id == "e2e" && r.mode == "lsp")
        );
        assert!(
            rows.iter()
                .all(|r| r.self_reward_status != "disabled" && r.judge_text.is_some())
        );
    }
    let root = dir.path().join("e2e");
    assert!(root.join("manifest.json").is_file() && root.join("final/model.safetensors").is_file());
    assert!(
        root.join("checkpoints/iteration-000002/state.json")
            .is_file()
    );
}

#[test]
fn resume_after_an_interrupted_checkpoint_redoes_the_iteration_identically() {
    // Under mixed precision too: the checkpoint keeps the f32 masters and AdamW's
    // moments, and the bf16 casts and rollout panels are made from them again.
    for precision in [
        "precision: f32",
        "precision: mixed_bf16, emulate_bf16: true",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "lsp_zero", 3);
        with_model_options(&cfg, precision);
        run(&cfg, false);
        let complete = untimed(records(dir.path()));
        assert_eq!(iterations(&complete), [1, 2, 3]);
        // As if killed while saving checkpoint 3: its state.json never landed, and the
        // final model is gone.
        let root = dir.path().join("e2e");
        let trained = std::fs::read(root.join("final/model.safetensors")).unwrap();
        std::fs::remove_file(root.join("checkpoints/iteration-000003/state.json")).unwrap();
        std::fs::remove_dir_all(root.join("final")).unwrap();
        // Without --resume the folder is refused rather than overwritten.
        let refused = Command::new(pipeline()).arg("run").arg(&cfg).finish();
        assert_eq!(refused.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&refused.stderr).contains("continue it with --resume"));
        run(&cfg, true);
        // Seeds and the optimizer state were restored, so iteration 3 is the same
        // again, bit for bit, and so is its step.
        assert_eq!(untimed(records(dir.path())), complete, "{precision}");
        let again = std::fs::read(root.join("final/model.safetensors")).unwrap();
        assert!(again == trained, "{precision}: the final model differs");
    }
}

#[test]
fn a_kill_mid_run_loses_at_most_the_iteration_in_progress() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "lsp_zero", 40);
    let mut child = Command::new(pipeline())
        .arg("run")
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let state = dir
        .path()
        .join("e2e/checkpoints/iteration-000003/state.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !state.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(state.exists(), "the run did not reach iteration 3");
    run(&cfg, true);
    let rows = records(dir.path());
    assert_eq!(iterations(&rows), (1..=40).collect::<Vec<_>>());
    assert_eq!(rows.len(), 40 * 6);
}

#[test]
fn grpo_takes_queries_from_data_and_trains_no_challenger() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo().join("datasets/gsm8k_train.jsonl");
    let extra = format!(
        "data: {{path: {}, prompt_column: question, answer_column: answer}}\n",
        data.display()
    );
    let cfg = config_with(dir.path(), "grpo", 1, "{kind: verifier}", &extra);
    run(&cfg, false);
    let rows = records(dir.path());
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter()
            .all(|r| r.prompt_id == "gsm8k_train" && r.query_tokens == 0)
    );
    assert!(
        rows.iter()
            .all(|r| r.adv_challenger.is_none() && r.reference_answer.is_some())
    );
    assert!(rows.iter().all(|r| r.reward == 0.0 || r.reward == 1.0));
}

#[test]
fn a_broken_config_is_refused_before_any_model_loads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("broken.yaml");
    std::fs::write(
        &cfg,
        "run: {iterations: 0, workers: 0, processes: 2, process: 2}\n\
         solver: {answers_per_query: x}\n",
    )
    .unwrap();
    let out = Command::new(pipeline()).arg("run").arg(&cfg).finish();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("run.iterations: must be at least 1"),
        "{stderr}"
    );
    for problem in [
        "run.workers: must be at least 1",
        "run.process: process 2 of 2: processes are numbered from 0",
        "run.hostfile: 2 processes need a hostfile",
    ] {
        assert!(stderr.contains(problem), "{stderr}");
    }
    assert!(
        stderr.contains("solver.answers_per_query: invalid type"),
        "{stderr}"
    );
    assert!(!stderr.contains("model loaded"), "{stderr}");
}

#[test]
fn a_staged_run_continues_each_stage_from_the_last_ones_weights() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo().join("datasets/gsm8k_train.jsonl");
    let extra = format!(
        "stages:\n  - {{name: play, mode: lsp_zero, iterations: 2}}\n  \
         - {{name: rl, mode: grpo, iterations: 1, reward: {{kind: verifier}}, \
         data: {{path: {}, prompt_column: question, answer_column: answer}}}}\n",
        data.display()
    );
    let rm = repo().join("tests/fixtures/tiny-reward");
    let cfg = config_with(
        dir.path(),
        "lsp",
        1,
        &format!("{{kind: reward_model, model: {}}}", rm.display()),
        &extra,
    );
    run(&cfg, false);
    let root = dir.path().join("e2e");
    let read = |stage: &str| records_in(&root.join(stage).join("records"));
    let play = read("play");
    let rl = read("rl");
    assert_eq!(iterations(&play), [1, 2]);
    assert!(
        play.iter()
            .all(|r| r.mode == "lsp_zero" && r.reward_status == "ok")
    );
    assert_eq!(iterations(&rl), [1]);
    assert!(
        rl.iter()
            .all(|r| r.mode == "grpo" && r.prompt_id == "gsm8k_train")
    );
    // The second stage started from the first one's final weights.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("rl/manifest.json")).unwrap()).unwrap();
    let policy = manifest["policy"]["folder"].as_str().unwrap();
    assert_eq!(Path::new(policy), root.join("play/final"));
    assert!(root.join("rl/final/model.safetensors").is_file());
    // Asked again with --report, the finished run writes each stage's report.
    run_with(&cfg, &["--resume", "--report"]);
    for stage in ["play", "rl"] {
        let html = std::fs::read_to_string(root.join(stage).join("report/report.html")).unwrap();
        assert!(html.contains(&format!("LSP run {stage}")), "{stage}");
    }
}

#[test]
fn sigint_and_sigterm_stop_after_the_iteration_in_progress_with_status_130() {
    for signal in ["-INT", "-TERM"] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "lsp_zero", 40);
        let child = Command::new(pipeline())
            .arg("run")
            .arg(&cfg)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let state = dir
            .path()
            .join("e2e/checkpoints/iteration-000002/state.json");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while !state.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = child.finish();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{signal}: {stderr}");
        assert!(
            stderr.contains("interrupted: stopping after this iteration"),
            "{stderr}"
        );
        // Every finished iteration is recorded and, the last one too, checkpointed,
        // in order, with no gap; no final model.
        let rows = records(dir.path());
        let done = iterations(&rows);
        assert!(done.len() >= 2 && done.len() < 40, "{done:?}");
        assert_eq!(done, (1..=done.len() as u64).collect::<Vec<_>>());
        let last = *done.last().unwrap();
        assert!(
            stderr.contains(&format!("stopped at iteration {last} of 40"))
                && stderr.contains("--resume"),
            "{stderr}"
        );
        assert!(
            dir.path()
                .join(format!("e2e/checkpoints/iteration-{last:06}/state.json"))
                .exists()
        );
        assert!(!dir.path().join("e2e/final").exists());
        // The resume keeps them and finishes.
        run(&cfg, true);
        assert_eq!(
            iterations(&records(dir.path())),
            (1..=40).collect::<Vec<_>>()
        );
    }
}

#[test]
fn an_offloaded_reference_plays_the_same_game_as_a_resident_one() {
    // The judge reward, the self-reward and the KL all use the reference; offloaded,
    // it is reloaded from its folder each iteration and dropped before the backward.
    // Under mixed precision both hold their maps in bf16 (the resident one a frozen
    // copy of the policy, narrowed as the reloaded one is).
    for precision in ["f32", "mixed_bf16"] {
        let (resident, offloaded) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let options = format!(
            "precision: {precision}, emulate_bf16: {}",
            precision != "f32"
        );
        let cfg = config_with(resident.path(), "lsp", 2, "{kind: judge}", "");
        with_model_options(&cfg, &options);
        run(&cfg, false);
        let cfg = config_with(offloaded.path(), "lsp", 2, "{kind: judge}", "");
        with_model_options(&cfg, &format!("{options}, offload_reference: true"));
        run(&cfg, false);
        let (a, b) = (records(resident.path()), records(offloaded.path()));
        assert_eq!(a.len(), 2 * 3 * 2);
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(&b) {
            assert_eq!(
                (&a.query_text, &a.answer_text, &a.judge_text),
                (&b.query_text, &b.answer_text, &b.judge_text),
                "{precision}"
            );
            let same = |x: f64, y: f64| (x - y).abs() <= 1e-6 * (1.0 + x.abs());
            assert!(same(a.reward, b.reward) && a.self_reward == b.self_reward);
            assert!(
                same(a.answer_logprob_ref, b.answer_logprob_ref) && same(a.kl_answer, b.kl_answer)
            );
            assert!(
                same(a.loss, b.loss) && same(a.grad_norm, b.grad_norm),
                "{precision}"
            );
        }
        let manifest = std::fs::read_to_string(offloaded.path().join("e2e/manifest.json")).unwrap();
        assert!(
            manifest.contains("\"offload_reference\": true"),
            "{manifest}"
        );
    }
}

#[test]
fn the_binary_restarts_once_with_the_settings_its_environment_lacks() {
    let validate = |set: &[(&str, &str)]| {
        let mut command = Command::new(pipeline());
        command
            .arg("validate")
            .arg(repo().join("examples/tiny-epoch.yaml"))
            .env("RUST_LOG", "pipeline=debug")
            .env_remove("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
            .env_remove("LRU_CACHE_CAPACITY")
            .env_remove("MIMALLOC_PURGE_DELAY")
            .env_remove("MIMALLOC_ALLOW_THP")
            .env_remove("LSP_KEEP_ENVIRONMENT")
            .env_remove("LSP_ENVIRONMENT_ADDED")
            .env_remove("LSP_CPU_ISA")
            .env_remove("ATEN_CPU_CAPABILITY")
            .env_remove("ONEDNN_MAX_CPU_ISA")
            .env_remove("MKL_ENABLE_INSTRUCTIONS");
        for (name, value) in set {
            command.env(name, value);
        }
        let out = command.finish();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stderr).unwrap()
    };
    let restarted = "restarted with the settings the environment lacked";
    let log = validate(&[]);
    assert!(log.contains(restarted), "{log}");
    assert!(
        log.contains(
            "ONEDNN_PRIMITIVE_CACHE_CAPACITY=32 LRU_CACHE_CAPACITY=32 MIMALLOC_PURGE_DELAY=60000 \
             MIMALLOC_ALLOW_THP=0"
        ),
        "{log}"
    );
    // A value the user set is kept (only the others are added); and the user can ask
    // for no restart at all.
    let log = validate(&[("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7")]);
    assert!(
        log.contains(restarted) && !log.contains("ONEDNN_PRIMITIVE_CACHE_CAPACITY="),
        "{log}"
    );
    let all = [
        ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "7"),
        ("LRU_CACHE_CAPACITY", "7"),
        ("MIMALLOC_PURGE_DELAY", "7"),
        ("MIMALLOC_ALLOW_THP", "1"),
    ];
    assert!(!validate(&all).contains(restarted));
    assert!(!validate(&[("LSP_KEEP_ENVIRONMENT", "1")]).contains(restarted));
    // An instruction-set ceiling brings libtorch's own caps with it.
    let log = validate(&[("LSP_CPU_ISA", "avx2")]);
    assert!(
        log.contains(
            "MIMALLOC_ALLOW_THP=0 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \
             MKL_ENABLE_INSTRUCTIONS=AVX2"
        ),
        "{log}"
    );
    // So does libtorch's own ATen cap below AVX-512, which is kept as it was set.
    let log = validate(&[("ATEN_CPU_CAPABILITY", "default")]);
    assert!(
        log.contains(
            "MIMALLOC_ALLOW_THP=0 ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2"
        ),
        "{log}"
    );
}

#[test]
fn under_an_avx2_ceiling_mixed_precision_plays_the_f32_game_exactly() {
    // `LSP_CPU_ISA=avx2` runs the process as on a CPU without bf16 units: `mixed_bf16`
    // then computes in f32, the master weights' kind, so it plays the game `f32`
    // plays, bit for bit, and its manifest says why. libtorch's own
    // `ATEN_CPU_CAPABILITY=avx2` does the same: its bf16 attention backward needs
    // AVX-512, and a mixed run under it once stopped there on a CPU with bf16 units.
    let play = |precision: &str, var: &str| {
        let dir = tempfile::tempdir().unwrap();
        let data = repo().join("datasets/self_instruct_seed_tasks.jsonl");
        let extra = format!(
            "data: {{path: {}, prompt_column: instruction}}\n",
            data.display()
        );
        let reward = "{kind: length, target_chars: 12}";
        let cfg = config_with(dir.path(), "grpo", 2, reward, &extra);
        with_model_options(&cfg, &format!("precision: {precision}"));
        run_with_env(&cfg, &[], &[(var, "avx2")]);
        let manifest = std::fs::read_to_string(dir.path().join("e2e/manifest.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        (records(dir.path()), manifest["machine"].clone())
    };
    let (f32_rows, f32_machine) = play("f32", "LSP_CPU_ISA");
    assert_eq!(f32_machine["products"], "weights");
    for var in ["LSP_CPU_ISA", "ATEN_CPU_CAPABILITY"] {
        let (mixed_rows, mixed_machine) = play("mixed_bf16", var);
        assert_eq!(
            mixed_machine["cpu_isa_ceiling"], "avx2",
            "{var}: {mixed_machine}"
        );
        assert_eq!(mixed_machine["bf16_units"], false);
        assert_eq!(mixed_machine["amx_tiles"], false);
        assert_eq!(mixed_machine["int8_dots"], "avx2");
        assert_eq!(mixed_machine["products"], "f32_fallback");
        assert_eq!(iterations(&mixed_rows), vec![1, 2]);
        assert_same_game(&f32_rows, &mixed_rows);
    }
}

/// Two runs' records hold the same texts, rewards, log-probs, losses, gradient norms
/// and KL, row by row.
fn assert_same_game(f32_rows: &[GameRecordRow], mixed_rows: &[GameRecordRow]) {
    assert_eq!(f32_rows.len(), mixed_rows.len());
    for (a, b) in f32_rows.iter().zip(mixed_rows) {
        assert_eq!(
            (
                &a.query_text,
                &a.answer_text,
                a.reward,
                a.answer_logprob_policy
            ),
            (
                &b.query_text,
                &b.answer_text,
                b.reward,
                b.answer_logprob_policy
            )
        );
        assert_eq!(
            (a.loss, a.grad_norm, a.kl_answer),
            (b.loss, b.grad_norm, b.kl_answer)
        );
    }
}

/// Two LSP iterations (judge reward) in `dir` with the model's `options` added: their
/// rows, each iteration's step applied with a finite loss and a gradient.
fn two_trained_iterations(dir: &std::path::Path, options: &str) -> Vec<GameRecordRow> {
    let cfg = config_with(dir, "lsp", 2, "{kind: judge}", "");
    with_model_options(&cfg, options);
    run(&cfg, false);
    let rows = records(dir);
    assert_eq!(iterations(&rows), vec![1, 2]);
    assert!(
        rows.iter()
            .all(|r| r.step_applied && r.loss.is_finite() && r.grad_norm > 0.0)
    );
    rows
}

#[test]
fn a_mixed_precision_run_trains_through_shared_prompts_and_records_the_mismatch() {
    // Mixed bf16 with an offloaded reference: the solver's answers share their query
    // and the challenger's queries their prompt, so every training pass runs a shared
    // prompt through the cache with the bf16 casts. Each answer's sampler and trainer
    // log-probs are recorded apart, and their gap is bf16's rounding, not 0 and small.
    let dir = tempfile::tempdir().unwrap();
    let rows = two_trained_iterations(
        dir.path(),
        "precision: mixed_bf16, emulate_bf16: true, offload_reference: true",
    );
    let gaps: Vec<f64> = rows
        .iter()
        .map(|r| {
            (r.answer_logprob_policy - r.answer_logprob_sampler).abs()
                / f64::from(r.answer_tokens.max(1))
        })
        .collect();
    assert!(gaps.iter().all(|g| *g < 0.2), "per-token gaps {gaps:?}");
    assert!(
        rows.iter()
            .all(|r| r.rollout_mismatch > 0.0 && r.rollout_mismatch < 0.2)
    );
    let manifest = std::fs::read_to_string(dir.path().join("e2e/manifest.json")).unwrap();
    assert!(
        manifest.contains("\"precision\": \"mixed_bf16\""),
        "{manifest}"
    );
    // The manifest says where the products ran: natively where bf16 units outrun f32
    // ones, as asked (emulated, or on units no faster than f32's) elsewhere.
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    let pays = lsp_model::decoder::bf16_products_pay();
    assert_eq!(
        manifest["machine"]["bf16_units"],
        lsp_model::decoder::bf16_units()
    );
    assert_eq!(manifest["machine"]["bf16_products_pay"], pays);
    assert_eq!(
        manifest["machine"]["amx_tiles"],
        lsp_model::decoder::amx_tiles()
    );
    assert_eq!(
        manifest["machine"]["int8_dots"],
        serde_json::json!(lsp_model::decoder::int8_dots().map(Int8Dots::name))
    );
    assert_eq!(
        manifest["machine"]["products"],
        if pays { "bf16" } else { "bf16_emulated" }
    );
    assert!(manifest["machine"]["cpu"].is_string(), "{manifest}");
}

/// Two trained iterations with `rollout_weights: {kind}` and f32 training: each
/// answer's sampler log-probs come from the rollout weights' own products, so they
/// differ from the trainer's by their rounding — recorded, above f32's noise and
/// below a collapse; the manifest names the rollout weights. Returns the manifest.
fn trains_on_rollouts_of(kind: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let rows = two_trained_iterations(dir.path(), &format!("rollout_weights: {kind}"));
    assert!(
        rows.iter()
            .all(|r| r.rollout_mismatch > 1e-3 && r.rollout_mismatch < 0.3),
        "{kind}: {:?}",
        rows.iter().map(|r| r.rollout_mismatch).collect::<Vec<_>>()
    );
    let manifest = std::fs::read_to_string(dir.path().join("e2e/manifest.json")).unwrap();
    let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
    assert!(
        manifest
            .to_string()
            .contains(&format!("\"rollout_weights\":\"{kind}\"")),
        "{manifest}"
    );
    manifest
}

#[test]
fn a_w8a8_run_trains_on_rollouts_of_int8_products_and_records_their_mismatch() {
    // Rollouts on int8 weights with int8 inputs (the CPU's int8 dot products,
    // AVX512-VNNI's or AVX2's).
    let manifest = trains_on_rollouts_of("w8a8");
    assert_eq!(
        manifest["machine"]["int8_dots"],
        serde_json::json!(lsp_model::decoder::int8_dots().map(Int8Dots::name))
    );
}

#[test]
fn a_bf16_rollout_run_trains_in_f32_on_bf16_samples_and_records_their_mismatch() {
    // bf16 panels for the rollouts while every pass keeps the f32 weights' products.
    let manifest = trains_on_rollouts_of("bf16");
    assert_eq!(manifest["machine"]["products"], "weights");
}
