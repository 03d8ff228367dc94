//! `pipeline`: the command line of the Language Self-Play system.

mod bench;
mod commands;
mod config;
mod eval;
mod jsonl;
mod monitor;
mod process_env;
mod report;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc for Rust's allocations and, through its `override` feature, libtorch's:
/// glibc's malloc gives a large tensor's pages back on free and faults them in again
/// on the next allocation, step after step (the README's "Mixed precision and LoRA").
/// How long it keeps freed memory is set by the restart (`process_env.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Language Self-Play: train a language model by reinforcement learning with no
/// training data, as a dataflow pipeline.
#[derive(Debug, Parser)]
#[command(name = "pipeline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the LSP game of an epoch.yaml: the dataflow, Parquet records, checkpoints.
    Run(run::RunArgs),
    /// Check an epoch.yaml: list every problem, or print the resolved plan.
    Validate {
        /// The config file.
        config: PathBuf,
    },
    /// Benchmarks: AlpacaEval win rate, GSM8K, HumanEval (sandboxed).
    #[command(subcommand)]
    Eval(eval::EvalCommand),
    /// Plots, an HTML and a Markdown page of a run's game records.
    Report(report::ReportArgs),
    /// Answer one chat message with a model (greedy unless a temperature is given).
    Generate(commands::generate::GenerateArgs),
    /// Score one (instruction, response) pair with a reward model.
    Score(commands::score::ScoreArgs),
    /// Get models: import a GGUF file, fetch the default model, inspect a GGUF file.
    Model(commands::model::ModelCommand),
    /// Measure the engine: log-probs, training step (figures printed, never asserted).
    Bench(bench::BenchArgs),
}

#[allow(clippy::print_stdout, clippy::print_stderr)] // The binary's own output.
fn main() -> ExitCode {
    // Before anything reads the environment: returns only without a restart.
    let not_restarted = process_env::complete();
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Some(why) = not_restarted {
        tracing::warn!(%why, "running with the environment as given");
    }
    if let Some(added) = process_env::restarted_with() {
        tracing::debug!(%added, "restarted with the settings the environment lacked");
    }
    // A panic is a bug of ours: said as one line with where, not as a backtrace.
    // (Workers' panics are caught by the run and reported as its error.)
    std::panic::set_hook(Box::new(|info| {
        let message = panic_message(info);
        let at = info
            .location()
            .map_or(String::new(), |l| format!(" at {l}"));
        eprintln!("error: internal error{at}: {message} (a bug: please report it)");
    }));
    let result = match cli.command {
        Command::Validate { config } => commands::validate::validate(&config),
        Command::Run(args) => run::run(&args),
        Command::Report(args) => report::report(&args),
        Command::Eval(command) => eval::run(&command),
        Command::Generate(args) => commands::generate::run(&args),
        Command::Score(args) => commands::score::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Model(command) => commands::model::run(&command),
    };
    match result {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {}", describe(&err));
            // 128 + SIGINT, as a shell reports an interrupted program.
            match err.downcast_ref::<run::Stopped>() {
                Some(_) => ExitCode::from(130),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// A panic's message (empty when it carries none).
pub fn panic_message<'a>(info: &'a std::panic::PanicHookInfo<'_>) -> &'a str {
    info.payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or("")
}

/// The error and its causes on one line. Library errors show their cause in their own
/// message too, so a cause already said is not repeated.
fn describe(err: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    message
}
