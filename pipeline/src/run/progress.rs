//! The progress bar of a run: iterations done, the stage in progress, elapsed time.
//! Off when stderr is not a terminal (logs and CI) or with `--progress none`; the
//! summary lines then go to the log.

use std::io::IsTerminal;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

/// When to draw the bar.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal.
    #[default]
    Auto,
    /// Always a bar.
    Bar,
    /// Never a bar.
    None,
}

/// A run's progress display (cheap to clone: the bar is shared).
#[derive(Debug, Clone)]
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A display for iterations `start..=total`.
    pub fn new(mode: ProgressMode, start: u64, total: u64) -> Self {
        let show = match mode {
            ProgressMode::Auto => std::io::stderr().is_terminal(),
            ProgressMode::Bar => true,
            ProgressMode::None => false,
        };
        let bar = show.then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} iterations [{elapsed_precise}] {msg}",
                )
                .expect("a valid template"),
            );
            bar.set_position(start.saturating_sub(1));
            bar.enable_steady_tick(std::time::Duration::from_millis(250));
            bar
        });
        Self { bar }
    }

    /// Shows the stage now running.
    pub fn stage(&self, iteration: u64, stage: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("iteration {iteration}: {stage}"));
        }
    }

    /// Counts an iteration done and shows its summary line.
    pub fn iteration_done(&self, line: &str) {
        match &self.bar {
            Some(bar) => {
                bar.println(line);
                bar.inc(1);
            }
            None => info!("{line}"),
        }
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
