//! A LoRA run end to end on the tiny fixtures: only the adapter trains, the reference
//! is the base with the adapter off (KL exactly 0 before the first step), checkpoints
//! and `final/` hold PEFT adapters (and `final/merged/` on request), a resume continues
//! the same game, `pipeline generate --adapter` decodes as the merged folder does, and
//! `validate` refuses an adapter that does not fit.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::deadline::Finish;
use common::{config, pipeline, records, repo, run, run_with};

/// The tiny LSP config with `model` settings added.
fn lora_config(out: &Path, iterations: u64, model: &str) -> PathBuf {
    let path = config(out, "lsp", iterations);
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replacen(
        "allow_past_context: true}",
        &format!("allow_past_context: true, {model}}}"),
        1,
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn generate(args: &[&str]) -> String {
    let out = Command::new(pipeline())
        .args([
            "generate",
            "--chat",
            "Write about the sea.",
            "--max-new-tokens",
            "8",
        ])
        .args(["--json"])
        .args(args)
        .finish();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_lora_run_trains_the_adapter_against_the_base_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let settings = "lora: {r: 4, alpha: 8, target_modules: [q_proj, v_proj, down_proj]}, \
                    save_merged: true";
    run(&lora_config(dir.path(), 2, settings), false);
    let rows = records(dir.path());
    assert_eq!(rows.len(), 2 * 3 * 2);
    // A fresh adapter (B = 0) is the base: the first iteration's KL is 0 up to the
    // rounding of two kernels (training's products and inference's); the step moves
    // the adapter, so the second's is not.
    let kl = |it: u64| -> f64 {
        rows.iter()
            .filter(|r| r.iteration == it)
            .map(|r| r.kl_answer.abs())
            .sum()
    };
    assert!(kl(1) < 1e-4, "{}", kl(1));
    assert!(kl(2) > 100.0 * kl(1).max(1e-6), "{} then {}", kl(1), kl(2));
    assert!(rows.iter().all(|r| r.step_applied));
    let root = dir.path().join("e2e");
    let final_dir = root.join("final");
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "merged/model.safetensors",
    ] {
        assert!(final_dir.join(file).is_file(), "final/{file}");
    }
    assert!(
        !final_dir.join("model.safetensors").exists(),
        "no base copy"
    );
    let checkpoint = root.join("checkpoints/iteration-000001/model");
    assert!(checkpoint.join("adapter_model.safetensors").is_file());

    // A finished run whose merged folder was lost makes it again from the base and the
    // last checkpoint's adapter, the same bytes.
    let merged_weights = final_dir.join("merged/model.safetensors");
    let before = std::fs::read(&merged_weights).unwrap();
    std::fs::remove_dir_all(final_dir.join("merged")).unwrap();
    let again = run(&lora_config(dir.path(), 2, settings), true);
    let said = String::from_utf8_lossy(&again.stdout) + String::from_utf8_lossy(&again.stderr);
    assert!(said.contains("rewritten from checkpoint 2"), "{said}");
    assert!(merged_weights.is_file(), "{said}");
    assert_eq!(std::fs::read(&merged_weights).unwrap(), before);

    // The same run in two parts: one iteration, then --resume to two.
    let parts = tempfile::tempdir().unwrap();
    run(&lora_config(parts.path(), 1, settings), false);
    run(&lora_config(parts.path(), 2, settings), true);
    let resumed = records(parts.path());
    let game = |r: &lsp_schemas::GameRecordRow| (r.iteration, r.answer_text.clone(), r.reward);
    assert_eq!(
        resumed.iter().map(game).collect::<Vec<_>>(),
        rows.iter().map(game).collect::<Vec<_>>()
    );

    // The adapter applied at load decodes as the merged folder.
    let base = repo().join("tests/fixtures/tiny-llama");
    let adapted = generate(&[
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        final_dir.to_str().unwrap(),
        "--allow-past-context",
    ]);
    let merged = generate(&[
        "--model",
        final_dir.join("merged").to_str().unwrap(),
        "--allow-past-context",
    ]);
    // The same tokens; their log-probs (in the JSON) differ from the base's: the
    // trained adapter is not a no-op.
    let ids = |json: &str| serde_json::from_str::<serde_json::Value>(json).unwrap();
    let (adapted, merged) = (ids(&adapted), ids(&merged));
    assert_eq!(adapted["new_ids"], merged["new_ids"]);
    let base = ids(&generate(&["--model", base.to_str().unwrap()]));
    assert_ne!(adapted["logprobs"], base["logprobs"]);
}

#[test]
fn validate_refuses_an_adapter_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = repo().join("tests/fixtures/tiny-llama-lora");
    let settings = format!("adapter: {}, lora: {{r: 8}}", fixture.display());
    let path = lora_config(dir.path(), 1, &settings);
    let out = Command::new(pipeline()).arg("validate").arg(&path).finish();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("model.adapter") && stderr.contains("r 8 vs 4"),
        "{stderr}"
    );
    // The fixture's own settings fit, and a run continues from it.
    let settings = format!("adapter: {}", fixture.display());
    let path = lora_config(dir.path(), 1, &settings);
    run_with(&path, &[]);
    assert_eq!(records(dir.path()).len(), 3 * 2);
}
