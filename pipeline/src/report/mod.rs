//! `pipeline report data-out/<run>`: a run's figures as plots (SVG and PNG), one
//! self-contained HTML page, a Markdown page and `report.json` (the same figures, for
//! scripts), all in `<run>/report/`, with the results of `pipeline eval` runs written
//! under `<run>/eval/`.

mod charts;
mod page;
mod plots;
mod stats;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::monitor::MonitorConfig;
use stats::RunStats;

/// Arguments of `pipeline report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The run folder (`output_dir/name`, or a stage's folder of a staged run).
    run: PathBuf,
    /// Where to write (default: `<run>/report`).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Writes the report; returns what was written.
pub fn report(args: &ReportArgs) -> anyhow::Result<String> {
    write_report(&args.run, args.out.clone())
}

/// Writes the report of the run in `run_dir` into `out` (default `<run>/report`).
pub fn write_report(run_dir: &std::path::Path, out: Option<PathBuf>) -> anyhow::Result<String> {
    let run = RunStats::load(run_dir, &monitor_config(run_dir))?;
    let out = out.unwrap_or_else(|| run_dir.join("report"));
    let plots = out.join("plots");
    std::fs::create_dir_all(&plots).with_context(|| format!("creating {}", plots.display()))?;
    let charts = charts::charts(&run);
    let mut svgs = Vec::new();
    for chart in &charts {
        chart.write(&plots)?;
        let svg = std::fs::read_to_string(plots.join(format!("{}.svg", chart.stem)))?;
        // Inlined: drop the XML declaration, keep the <svg> element.
        svgs.push(svg.trim_start_matches(|c| c != '<').to_string());
    }
    let write = |name: &str, text: String| -> anyhow::Result<()> {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    let evals = eval_summaries(run_dir)?;
    write("report.html", page::html(&run, &charts, &svgs, &evals))?;
    write("report.md", page::markdown(&run, &charts, &evals))?;
    write("report.json", serde_json::to_string_pretty(&run)?)?;
    Ok(format!(
        "report of {} ({} iterations): {}/report.html, report.md, report.json, plots/*.svg|png\n",
        run.run_id,
        run.iterations.len(),
        out.display()
    ))
}

/// The run's monitor settings from its manifest (for recomputing its figures), or the
/// defaults.
fn monitor_config(run: &std::path::Path) -> MonitorConfig {
    std::fs::read(run.join("manifest.json"))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|manifest| serde_json::from_value(manifest["config"]["monitor"].clone()).ok())
        .unwrap_or_default()
}

/// The `summary.json` of each `pipeline eval` written under `<run>/eval/`.
fn eval_summaries(run: &std::path::Path) -> anyhow::Result<Vec<serde_json::Value>> {
    let dir = run.join("eval");
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path().join("summary.json")))
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| {
            let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_slice(&text)
                .with_context(|| format!("{} is not an eval summary", p.display()))
        })
        .collect()
}
