//! `pipeline bench`: the engine's speed and memory figures, printed (never asserted).

mod figures;
pub mod random_model;
mod rollout;
mod training;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, ValueEnum};
use lsp_model::{InferenceWeights, LanguageModel, LoadOptions, Parallelism, operator_profile};

use crate::commands::ModelArgs;

/// Arguments of `pipeline bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    what: BenchKind,
    /// Model folder; default: random weights of SmolLM2-135M's shape.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Sequences in the batch.
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Sequences per forward/backward pass in the training step; gradients accumulate
    /// over the micro-batches, so only one micro-batch's activations are alive.
    #[arg(long, default_value_t = 1)]
    micro_batch: usize,
    /// Train-step: how a micro-batch uses the threads (`update.parallelism`): each
    /// operator over libtorch's pool, or its sequences split over them, one
    /// libtorch thread each; `auto` splits long micro-batches under bf16 products.
    #[arg(long, value_enum, default_value = "auto")]
    parallelism: ParallelismArg,
    /// Rollout: new tokens per sequence (EOS ignored).
    #[arg(long, default_value_t = 128)]
    new_tokens: u64,
    /// Rollout: batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    batches: Vec<usize>,
    /// Rollout: JSONL file whose `instruction` fields are the chat prompts.
    #[arg(long, default_value = "datasets/alpaca_eval.jsonl")]
    prompts: PathBuf,
    /// Timed runs (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Without --model: the random model's shape.
    #[arg(long, value_enum, default_value = "smollm2")]
    shape: random_model::Shape,
    /// Train-step: a fresh LoRA adapter instead of every weight, `r=16` (alpha 2r) or
    /// `r=16,alpha=32`.
    #[arg(long, value_parser = parse_lora)]
    lora: Option<lsp_model::LoraConfig>,
    /// Train-step and log-probs: after the timed runs, one more under libtorch's
    /// operator profiler, printing the N operators that took the most self time (per
    /// name, then per name and input shapes).
    #[arg(long, value_name = "N")]
    profile: Option<usize>,
    #[command(flatten)]
    runtime: ModelArgs,
}

/// `update.parallelism` on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ParallelismArg {
    Auto,
    Operators,
    Sequences,
}

impl From<ParallelismArg> for Parallelism {
    fn from(arg: ParallelismArg) -> Self {
        match arg {
            ParallelismArg::Auto => Parallelism::Auto,
            ParallelismArg::Sequences => Parallelism::Sequences,
            ParallelismArg::Operators => Parallelism::Operators,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BenchKind {
    /// Teacher-forced log-probs of every token after the first, no gradient.
    Logprobs,
    /// One training step on the same batch: forward, loss, backward, AdamW.
    TrainStep,
    /// Sampling from different chat prompts at batch sizes 1, 8 and 32, a forced
    /// number of new tokens, temperature 1 over the full vocabulary (needs a real
    /// model: default data-out/models/smollm2-135m-instruct).
    Rollout,
}

/// Runs the benchmark; returns the figures to print.
pub fn run(args: &BenchArgs) -> anyhow::Result<String> {
    args.runtime.apply();
    if matches!(args.what, BenchKind::Rollout) {
        let folder = args
            .model
            .clone()
            .unwrap_or_else(|| PathBuf::from(lsp_model::DEFAULT_MODEL_DIR));
        let model =
            LanguageModel::load(&folder, args.runtime.load_options()).with_context(|| {
                format!(
                    "loading {} (pipeline model fetch smollm2-135m-instruct)",
                    folder.display()
                )
            })?;
        let header = format!(
            "model: {} ({}), {} new tokens, temperature 1, full vocabulary, {} threads\n",
            folder.display(),
            format!("{:?}", args.runtime.load_options().dtype).to_lowercase(),
            args.new_tokens,
            tch::get_num_threads()
        );
        return Ok(header
            + &rollout::run(
                &model,
                &args.prompts,
                &args.batches,
                args.new_tokens,
                args.runs,
            )?);
    }
    let scratch = tempfile::tempdir()?;
    let folder = match &args.model {
        Some(folder) => folder.clone(),
        None => {
            let folder = scratch.path().join("random");
            random_model::write_random_model(&folder, &args.shape.config(), 0)?;
            folder
        }
    };
    let train = matches!(args.what, BenchKind::TrainStep);
    let options = LoadOptions {
        trainable: train,
        ..args.runtime.load_options()
    };
    let mut model = LanguageModel::load(&folder, options)?;
    if let Some(lora) = args.lora.as_ref().filter(|_| train) {
        model.attach_adapter(lora, 0)?;
    }
    let params = model.spec().num_parameters() as f64;
    let batch = random_batch(&model, args.batch, args.seq_len);
    let tokens = (args.batch * (args.seq_len - 1)) as u64;
    let mut header = format!(
        "model: {} ({:.1}M parameters), batch {} x {} tokens, {} threads, products {}{}\n",
        args.model
            .as_ref()
            .map_or(format!("random {:?} shape", args.shape), |m| m
                .display()
                .to_string()),
        params / 1e6,
        args.batch,
        args.seq_len,
        tch::get_num_threads(),
        options.products().name(),
        if train {
            format!(
                ", micro-batches of {} split over {} thread(s) (parallelism {}){}, {}",
                args.micro_batch,
                model.training_shares(
                    args.parallelism.into(),
                    &vec![args.seq_len; args.micro_batch]
                ),
                Parallelism::from(args.parallelism).name(),
                args.lora.as_ref().map_or(String::new(), |l| format!(
                    ", LoRA r {} alpha {}",
                    l.r, l.alpha
                )),
                args.runtime.load_options().precision.name()
            )
        } else {
            String::new()
        },
    );
    let mut times = Vec::new();
    let mut profiled = String::new();
    let line = if train {
        let mut step = training::TrainStep::new(&model)?;
        let mut phases = Vec::new();
        let mut one_run = || step.run(&model, &batch, args.micro_batch, args.parallelism.into());
        for i in 0..=args.runs {
            let start = Instant::now();
            let split = one_run()?;
            if i > 0 {
                times.push(start.elapsed());
                phases.push(split);
            }
        }
        if let Some(top) = args.profile {
            let (split, seen) = operator_profile::profile(&mut one_run)?;
            split?;
            profiled = seen.table(top);
        }
        let time = figures::median(&mut times);
        let median_of = |phase: fn(&training::Phases) -> std::time::Duration| {
            figures::median(&mut phases.iter().map(phase).collect::<Vec<_>>()).as_secs_f64()
        };
        let split = format!(
            " (forward {:.2} s, backward {:.2}, optimizer {:.2}: medians)",
            median_of(|p| p.forward),
            median_of(|p| p.backward),
            median_of(|p| p.optimizer),
        );
        figures::report(
            "training step",
            tokens,
            time,
            args.runs,
            6.0 * params * tokens as f64,
        ) + &split
    } else {
        // As the update stage computes the reference's log-probs.
        let weights = InferenceWeights::new(model.transformer());
        let one_run = || {
            let pairs: Vec<(&[u32], &[u32])> = batch.iter().map(|s| (&s[..1], &s[1..])).collect();
            let lp = model.completion_logprobs_with(&weights, &pairs)?;
            anyhow::ensure!(lp.lengths.iter().sum::<i64>() as u64 == tokens);
            anyhow::Ok(())
        };
        for i in 0..=args.runs {
            let start = Instant::now();
            one_run()?;
            if i > 0 {
                times.push(start.elapsed());
            }
        }
        if let Some(top) = args.profile {
            let (done, seen) = operator_profile::profile(one_run)?;
            done?;
            profiled = seen.table(top);
        }
        let time = figures::median(&mut times);
        figures::report(
            "log-probs",
            tokens,
            time,
            args.runs,
            2.0 * params * tokens as f64,
        )
    };
    header.push_str(&line);
    header.push('\n');
    header.push_str(&profiled);
    Ok(header)
}

/// `--lora r=16` or `r=16,alpha=32` (alpha defaults to 2r, every target map).
fn parse_lora(text: &str) -> Result<lsp_model::LoraConfig, String> {
    let mut config = lsp_model::LoraConfig::default();
    let mut alpha = None;
    for part in text.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: write key=value, e.g. r=16"))?;
        match key.trim() {
            "r" => config.r = value.trim().parse().map_err(|e| format!("r: {e}"))?,
            "alpha" => alpha = Some(value.trim().parse().map_err(|e| format!("alpha: {e}"))?),
            other => return Err(format!("unknown LoRA setting {other:?} (r, alpha)")),
        }
    }
    config.alpha = alpha.unwrap_or(2.0 * config.r as f64);
    Ok(config)
}

/// `batch` sequences of `len` random token ids (seeded).
fn random_batch(model: &LanguageModel, batch: usize, len: usize) -> Vec<Vec<u32>> {
    tch::manual_seed(1);
    let vocab = model
        .tokenizer()
        .vocab_size()
        .min(model.spec().vocab_size as usize) as i64;
    let ids = tch::Tensor::randint(
        vocab,
        [batch as i64, len as i64],
        (tch::Kind::Int64, tch::Device::Cpu),
    );
    let flat = Vec::<i64>::try_from(&ids.flatten(0, -1)).expect("int64 ids");
    flat.chunks(len)
        .map(|c| c.iter().map(|&i| i as u32).collect())
        .collect()
}
