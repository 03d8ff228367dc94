//! `pipeline eval`: the paper's benchmarks for a model folder (a run's `final/`, a
//! checkpoint, or the base model): AlpacaEval win rate against a baseline with a
//! reward-model or pairwise-LLM judge, GSM8K accuracy and HumanEval pass@1 in a
//! sandbox. Every generation and verdict goes to `results.parquet`, the figures with
//! 95% intervals to `summary.json` (which `pipeline report` shows).

mod generate;
mod gsm8k;
mod humaneval;
mod sample;
pub mod sandbox;
#[cfg(test)]
mod sandbox_hostile;
mod stats;
mod winrate;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use lsp_model::SamplingConfig;
use lsp_schemas::{TaskBatch, TaskRow, TypedBatch, WinRateBatch, WinRateRow, write_parquet};
use serde_json::json;
use tracing::info;

use crate::commands::ModelArgs;

/// `pipeline eval <benchmark>`.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// AlpacaEval win rate of a candidate model against a baseline.
    Winrate(WinRateArgs),
    /// GSM8K accuracy.
    Gsm8k(TaskArgs),
    /// HumanEval pass@1, each completion run in a sandbox.
    Humaneval(HumanEvalArgs),
}

/// Settings every benchmark shares.
#[derive(Debug, Args)]
pub struct Common {
    /// Evaluate a seeded sample of this many items (stratified by subset).
    #[arg(long)]
    limit: Option<usize>,
    /// Seed of the sample and of the sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sampling temperature (the paper's 0.01: near-greedy; 0 is greedy).
    #[arg(long, default_value_t = 0.01)]
    temperature: f64,
    /// Most new tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: u64,
    /// Prompts generated together.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// The benchmark file (default: the repository's `datasets/` copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output folder (default: data-out/eval/{benchmark}-{model folder name}).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    runtime: ModelArgs,
}

/// `pipeline eval winrate`.
#[derive(Debug, Args)]
pub struct WinRateArgs {
    /// The model under test (e.g. data-out/{run}/final).
    #[arg(long)]
    candidate: PathBuf,
    /// The model it is compared with (e.g. the base model).
    #[arg(long)]
    baseline: PathBuf,
    /// `reward_model` (higher score wins) or `llm` (pairwise prompt, both orders).
    #[arg(long, value_enum)]
    judge: JudgeKind,
    /// The judge's folder: a sequence-classification reward model, or a chat model.
    #[arg(long)]
    judge_model: PathBuf,
    /// Only these subsets (helpful_base, koala, oasst, selfinstruct, vicuna); repeatable.
    #[arg(long)]
    subset: Vec<String>,
    #[command(flatten)]
    common: Common,
}

/// Judges of the win rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JudgeKind {
    RewardModel,
    Llm,
}

/// `pipeline eval gsm8k`.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// The model folder.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    common: Common,
}

/// `pipeline eval humaneval`.
#[derive(Debug, Args)]
pub struct HumanEvalArgs {
    #[command(flatten)]
    task: TaskArgs,
    /// The Python that runs completions (default /usr/bin/python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Wall-clock seconds per program.
    #[arg(long, default_value_t = 10)]
    timeout: u64,
}

/// Runs the command; returns what to print.
pub fn run(command: &EvalCommand) -> anyhow::Result<String> {
    match command {
        EvalCommand::Winrate(args) => run_winrate(args),
        EvalCommand::Gsm8k(args) => run_gsm8k(args),
        EvalCommand::Humaneval(args) => run_humaneval(args),
    }
}

impl Common {
    fn sampling(&self) -> anyhow::Result<SamplingConfig> {
        let sampling = SamplingConfig {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            ..SamplingConfig::default()
        };
        let mut problems = lsp_schemas::Problems::new();
        lsp_schemas::Validate::validate(&sampling, "", &mut problems);
        anyhow::ensure!(
            problems.is_empty(),
            "invalid sampling settings:\n{problems}"
        );
        Ok(sampling)
    }

    fn data(&self, file: &str) -> PathBuf {
        self.data
            .clone()
            .unwrap_or_else(|| Path::new("datasets").join(file))
    }

    fn out(&self, benchmark: &str, model: &Path) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            let name = model
                .file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned());
            Path::new("data-out/eval").join(format!("{benchmark}-{name}"))
        })
    }

    /// The answers of the model in `folder` to `messages` (loaded, used, dropped).
    fn answers(
        &self,
        folder: &Path,
        adapted: bool,
        messages: &[String],
        sampling: &SamplingConfig,
    ) -> anyhow::Result<Vec<generate::Answer>> {
        let model = self.runtime.load(folder, adapted)?;
        info!(model = %folder.display(), n = messages.len(), "generating");
        generate::answers(
            &model,
            messages,
            sampling,
            self.batch,
            self.seed,
            progress("answers", messages.len()),
        )
    }

    fn settings(&self) -> serde_json::Value {
        json!({
            "limit": self.limit, "seed": self.seed, "temperature": self.temperature,
            "max_new_tokens": self.max_new_tokens,
        })
    }
}

fn progress(what: &'static str, total: usize) -> impl Fn(usize) {
    let start = Instant::now();
    move |done| {
        info!(
            done,
            total,
            seconds = start.elapsed().as_secs_f64(),
            "{what}"
        )
    }
}

/// Writes `results.parquet` and `summary.json` into `out`.
fn write_results<T: TypedBatch>(
    out: &Path,
    batch: T,
    summary: serde_json::Value,
) -> anyhow::Result<String> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_parquet(&out.join("results.parquet"), std::slice::from_ref(&batch))?;
    let text = serde_json::to_string_pretty(&summary)?;
    std::fs::write(out.join("summary.json"), &text)?;
    Ok(format!("{text}\nresults in {}\n", out.display()))
}

fn run_winrate(args: &WinRateArgs) -> anyhow::Result<String> {
    let c = &args.common;
    c.runtime.apply();
    let sampling = c.sampling()?;
    let path = c.data("alpaca_eval.jsonl");
    let mut items: Vec<winrate::Instruction> = sample::read_jsonl(&path)?;
    if !args.subset.is_empty() {
        items.retain(|i| args.subset.contains(&i.dataset));
        anyhow::ensure!(
            !items.is_empty(),
            "no instruction of {path:?} is in the subsets {:?}",
            args.subset
        );
    }
    let picked: Vec<_> = sample::stratified(&items, |i| i.dataset.as_str(), c.limit, c.seed)
        .into_iter()
        .map(|i| items[i].clone())
        .collect();
    let messages: Vec<String> = picked.iter().map(|i| i.instruction.clone()).collect();
    let candidate = &c.answers(&args.candidate, true, &messages, &sampling)?;
    let baseline = &c.answers(&args.baseline, false, &messages, &sampling)?;
    let judge = c.runtime.load(&args.judge_model, false)?;
    let n = picked.len();
    let (mut scores, mut probs) = (vec![(None, None); n], vec![(None, None); n]);
    let outcomes: Vec<f64> = match args.judge {
        JudgeKind::RewardModel => {
            let rm = |answers: &[generate::Answer]| -> anyhow::Result<Vec<f64>> {
                let p: Vec<(&str, &str)> = picked
                    .iter()
                    .zip(answers)
                    .map(|(i, a)| (i.instruction.as_str(), a.text.as_str()))
                    .collect();
                Ok(lsp_reward::reward_model_scores(&judge, &p, c.batch)?)
            };
            let (sc, sb) = (rm(candidate)?, rm(baseline)?);
            for (k, s) in scores.iter_mut().enumerate() {
                *s = (Some(sc[k]), Some(sb[k]));
            }
            sc.iter()
                .zip(&sb)
                .map(|(x, y)| winrate::score_outcome(*x, *y))
                .collect()
        }
        JudgeKind::Llm => {
            let first = winrate::prefer_a(&judge, &triples(&picked, candidate, baseline), c.batch)?;
            let second: Vec<f64> =
                winrate::prefer_a(&judge, &triples(&picked, baseline, candidate), c.batch)?
                    .iter()
                    .map(|p| 1.0 - p)
                    .collect();
            for (k, p) in probs.iter_mut().enumerate() {
                *p = (Some(first[k]), Some(second[k]));
            }
            first
                .iter()
                .zip(&second)
                .map(|(a, b)| winrate::pairwise_outcome(*a, *b))
                .collect()
        }
    };
    let judge_name = match args.judge {
        JudgeKind::RewardModel => "reward_model",
        JudgeKind::Llm => "llm",
    };
    let rows: Vec<WinRateRow> = (0..n)
        .map(|k| WinRateRow {
            id: picked[k].id,
            subset: picked[k].dataset.clone(),
            instruction: picked[k].instruction.clone(),
            candidate_output: candidate[k].text.clone(),
            baseline_output: baseline[k].text.clone(),
            candidate_finish_reason: candidate[k].finish_reason.clone(),
            baseline_finish_reason: baseline[k].finish_reason.clone(),
            candidate_chars: candidate[k].text.chars().count() as u64,
            baseline_chars: baseline[k].text.chars().count() as u64,
            judge: judge_name.to_string(),
            candidate_score: scores[k].0,
            baseline_score: scores[k].1,
            p_candidate_shown_first: probs[k].0,
            p_candidate_shown_second: probs[k].1,
            outcome: outcomes[k],
        })
        .collect();
    let summary = winrate::summarize(judge_name, &rows);
    let out = c.out("winrate", &args.candidate);
    write_results(
        &out,
        WinRateBatch::from_rows(&rows)?,
        json!({
            "benchmark": "alpaca_eval_winrate", "candidate": args.candidate, "baseline": args.baseline,
            "judge_model": args.judge_model, "sampled": n, "of": items.len(), "subsets": args.subset,
            "settings": c.settings(), "result": summary,
        }),
    )
}

/// (instruction, response A, response B) for each instruction.
fn triples<'a>(
    picked: &'a [winrate::Instruction],
    first: &'a [generate::Answer],
    second: &'a [generate::Answer],
) -> Vec<(&'a str, &'a str, &'a str)> {
    picked
        .iter()
        .zip(first.iter().zip(second))
        .map(|(i, (a, b))| (i.instruction.as_str(), a.text.as_str(), b.text.as_str()))
        .collect()
}

fn run_gsm8k(args: &TaskArgs) -> anyhow::Result<String> {
    let c = &args.common;
    c.runtime.apply();
    let sampling = c.sampling()?;
    let problems: Vec<gsm8k::Problem> = sample::read_jsonl(&c.data("gsm8k_test.jsonl"))?;
    let picked = sample::stratified(&problems, |_| "", c.limit, c.seed);
    let messages: Vec<String> = picked
        .iter()
        .map(|&i| gsm8k::message(&problems[i].question))
        .collect();
    let answers = c.answers(&args.model, true, &messages, &sampling)?;
    let rows: Vec<TaskRow> = picked
        .iter()
        .zip(messages.iter().zip(&answers))
        .map(|(&i, (m, a))| {
            let (got, expected, correct) = gsm8k::score(&a.text, &problems[i].answer);
            TaskRow {
                benchmark: "gsm8k".into(),
                task_id: format!("gsm8k-test-{i}"),
                prompt: m.clone(),
                output: a.text.clone(),
                finish_reason: a.finish_reason.clone(),
                status: if got.is_some() { "ok" } else { "no_number" }.into(),
                extracted: got,
                expected,
                correct,
                detail: None,
                seconds: 0.0,
            }
        })
        .collect();
    let correct = rows.iter().filter(|r| r.correct).count();
    let out = c.out("gsm8k", &args.model);
    write_results(
        &out,
        TaskBatch::from_rows(&rows)?,
        json!({
            "benchmark": "gsm8k", "model": args.model, "sampled": rows.len(), "of": problems.len(),
            "instruction": gsm8k::INSTRUCTION, "settings": c.settings(),
            "result": { "accuracy": stats::wilson(correct, rows.len()), "correct": correct,
                        "no_number": rows.iter().filter(|r| r.extracted.is_none()).count() },
        }),
    )
}

fn run_humaneval(args: &HumanEvalArgs) -> anyhow::Result<String> {
    let c = &args.task.common;
    c.runtime.apply();
    let sampling = c.sampling()?;
    let python = args.python.clone().unwrap_or_else(sandbox::default_python);
    let limits = sandbox::Limits {
        wall: Duration::from_secs(args.timeout),
        cpu_seconds: args.timeout,
        ..sandbox::Limits::default()
    };
    let sandbox = sandbox::Sandbox::new(&python, limits)?;
    info!(layers = sandbox.layers(), "sandbox");
    let tasks: Vec<humaneval::Task> = sample::read_jsonl(&c.data("humaneval.jsonl"))?;
    let picked = sample::stratified(&tasks, |_| "", c.limit, c.seed);
    let messages: Vec<String> = picked
        .iter()
        .map(|&i| humaneval::message(&tasks[i]))
        .collect();
    let answers = c.answers(&args.task.model, true, &messages, &sampling)?;
    let mut rows = Vec::with_capacity(picked.len());
    for (&i, (m, a)) in picked.iter().zip(messages.iter().zip(&answers)) {
        let task = &tasks[i];
        let program = humaneval::program(task, &a.text);
        let outcome = sandbox.run(&program)?;
        rows.push(TaskRow {
            benchmark: "humaneval".into(),
            task_id: task.task_id.clone(),
            prompt: m.clone(),
            output: a.text.clone(),
            finish_reason: a.finish_reason.clone(),
            extracted: Some(program),
            expected: None,
            correct: outcome.status == sandbox::Status::Passed,
            status: outcome.status.as_str().into(),
            detail: Some(format!("sandbox {}; {}", sandbox.layers(), outcome.stderr)),
            seconds: outcome.seconds,
        });
    }
    let passed = rows.iter().filter(|r| r.correct).count();
    let out = c.out("humaneval", &args.task.model);
    write_results(
        &out,
        TaskBatch::from_rows(&rows)?,
        json!({
            "benchmark": "humaneval", "model": args.task.model, "sampled": rows.len(), "of": tasks.len(),
            "sandbox": sandbox.layers(), "settings": c.settings(),
            "result": { "pass_at_1": stats::wilson(passed, rows.len()), "passed": passed,
                        "timeouts": rows.iter().filter(|r| r.status == "timeout").count() },
        }),
    )
}
