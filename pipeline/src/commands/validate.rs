//! `pipeline validate epoch.yaml`: check a config and print the resolved plan.

use std::fmt::Write;
use std::path::Path;

use lsp_self_reward::ReadOut;

use crate::config::{EpochConfig, load_epoch};

/// Loads `path`; on success returns the plan to print, else the error listing every
/// problem.
pub fn validate(path: &Path) -> anyhow::Result<String> {
    let config = load_epoch(path)?;
    plan(&config)
}

/// The resolved config as YAML, preceded by what one iteration does.
pub fn plan(config: &EpochConfig) -> anyhow::Result<String> {
    let run = &config.run;
    let mode = run.mode;
    let mut out = String::new();
    writeln!(
        out,
        "# plan: {} iteration(s) of `{}` with {} ({}, {}) -> {}",
        run.iterations,
        mode.as_str(),
        config.model.policy.display(),
        format!("{:?}", config.model.dtype).to_lowercase(),
        format!("{:?}", config.model.device).to_lowercase(),
        run.output_dir.join(&run.name).display(),
    )?;
    if run.total_workers() > 1 {
        writeln!(
            out,
            "#   {} worker(s) x {} process(es), {} libtorch thread(s) each; query i on worker i mod {}",
            run.workers,
            run.processes,
            run.threads,
            run.total_workers()
        )?;
    }
    for warning in config.warnings() {
        writeln!(out, "# warning: {warning}")?;
    }
    let g = config.solver.answers_per_query;
    let n = if mode.has_challenger() {
        let n = config.challenger.num_queries;
        writeln!(
            out,
            "#   challenger: {n} queries (<= {} tokens each)",
            config.challenger.sampling.max_new_tokens
        )?;
        n
    } else {
        let data = config.data.as_ref().map(|d| d.path.display().to_string());
        writeln!(out, "#   queries from data: {}", data.unwrap_or_default())?;
        config.challenger.num_queries
    };
    writeln!(
        out,
        "#   solver: {n} x {g} = {} answers (<= {} tokens each)",
        n * g,
        config.solver.sampling.max_new_tokens
    )?;
    writeln!(
        out,
        "#   reward: {} scores by {}",
        n * g,
        config.reward.describe()
    )?;
    if mode.has_self_reward() {
        let read_out = match config.self_reward.read_out {
            ReadOut::WhenUnusable => "read out of the judge when the reply has none",
            ReadOut::Always => "always read out of the judge",
            ReadOut::Never => "the fallback when the reply has none",
        };
        match config.self_reward.reply_tokens() {
            0 => writeln!(
                out,
                "#   self-reward: {} scores read out of the judge right after Box 3 (no reply)",
                n * g
            )?,
            tokens => writeln!(
                out,
                "#   self-reward: {} judge replies (<= {tokens} tokens each), score {read_out}",
                n * g
            )?,
        }
    }
    writeln!(
        out,
        "#   update: {} AdamW step(s) (loss {}, lr {}, beta {}, alpha_Ch {}), micro-batches of {}",
        config.update.epochs,
        serde_json::to_value(config.update.loss)?
            .as_str()
            .unwrap_or_default(),
        config.update.learning_rate,
        config.update.kl_coef,
        config.update.challenger_coef,
        config.update.micro_batch_size
    )?;
    for stage in &config.stages {
        let staged = config.staged(stage);
        writeln!(
            out,
            "#   stage {}: {} iteration(s) of `{}`, from the previous stage's final model",
            stage.name,
            staged.run.iterations,
            staged.run.mode.as_str()
        )?;
    }
    out.push_str(&serde_norway::to_string(config)?);
    Ok(out)
}
