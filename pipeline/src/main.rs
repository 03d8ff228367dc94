//! `pipeline`: the command line of the Language Self-Play system.

mod commands;
mod config;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
    /// Check an epoch.yaml: list every problem, or print the resolved plan.
    Validate {
        /// The config file.
        config: PathBuf,
    },
}

#[allow(clippy::print_stdout, clippy::print_stderr)] // The binary's own output.
fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { config } => {
            commands::validate::validate(&config).map(|plan| print!("{plan}"))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
