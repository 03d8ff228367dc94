//! A finished (or running) run read back from its folder, and the per-iteration
//! figures the report shows: rewards per role with their spread, KL, lengths, judge
//! failures, speed, and the monitor's figures (its Parquet rows, or recomputed the
//! plain way for runs that were not monitored).

use std::path::Path;

use anyhow::Context;
use lsp_schemas::{
    GameRecordBatch, GameRecordRow, MonitorBatch, MonitorRow, TypedBatch, read_parquet,
};
use serde::Serialize;

use crate::monitor::{MonitorConfig, SequentialMonitor, observe};
use crate::run::Summary;
use crate::run::layout::RunDir;

/// Mean, standard deviation (population), minimum and maximum of some values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let values: Vec<f64> = values.into_iter().collect();
        if values.is_empty() {
            return None;
        }
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        Some(Self {
            mean,
            std: var.sqrt(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n: values.len(),
        })
    }
}

/// One iteration's figures.
#[derive(Debug, Clone, Serialize)]
pub struct IterationStats {
    pub iteration: u64,
    /// R per answer.
    pub reward: Spread,
    /// R_Q per judged answer.
    pub self_reward: Option<Spread>,
    /// Solver reward (R + R_Q) per answer.
    pub solver_reward: Spread,
    /// V(q) per query.
    pub value: Spread,
    /// V_Q(q) per query.
    pub value_q: Option<Spread>,
    /// Challenger reward per query.
    pub challenger_reward: Option<Spread>,
    pub kl_answer: f64,
    pub kl_query: Option<f64>,
    pub loss: f64,
    pub grad_norm: f64,
    pub query_tokens: f64,
    pub answer_tokens: f64,
    pub judge_failure_rate: Option<f64>,
    pub judge_read_out_rate: Option<f64>,
    pub tokens_per_second: f64,
    /// challenger, solver, reward, self_reward, advantage, update.
    pub seconds: [f64; 6],
    pub monitor: MonitorRow,
}

/// A run's records and figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    pub run_id: String,
    pub mode: String,
    /// `live` when the monitor's rows come from the run, `recomputed` otherwise.
    pub monitor_source: String,
    pub iterations: Vec<IterationStats>,
    #[serde(skip)]
    pub records: Vec<Vec<GameRecordRow>>,
}

fn per_query(rows: &[GameRecordRow], f: impl Fn(&GameRecordRow) -> Option<f64>) -> Option<Spread> {
    Spread::of(rows.iter().filter(|r| r.answer_index == 0).filter_map(f))
}

impl IterationStats {
    fn of(
        rows: &[GameRecordRow],
        record: &GameRecordBatch,
        monitor: MonitorRow,
    ) -> anyhow::Result<Self> {
        let summary = Summary::of(record)?;
        let r0 = &rows[0];
        let empty = || anyhow::anyhow!("iteration {} has no answers", r0.iteration);
        Ok(Self {
            iteration: r0.iteration,
            reward: Spread::of(rows.iter().map(|r| r.reward)).ok_or_else(empty)?,
            self_reward: Spread::of(rows.iter().filter_map(|r| r.self_reward)),
            solver_reward: Spread::of(rows.iter().map(|r| r.solver_reward)).ok_or_else(empty)?,
            value: per_query(rows, |r| Some(r.value)).ok_or_else(empty)?,
            value_q: per_query(rows, |r| r.value_q),
            challenger_reward: per_query(rows, |r| r.challenger_reward),
            kl_answer: summary.kl,
            kl_query: per_query(rows, |r| r.kl_query).map(|s| s.mean),
            loss: r0.loss,
            grad_norm: r0.grad_norm,
            query_tokens: summary.query_tokens,
            answer_tokens: summary.answer_tokens,
            judge_failure_rate: summary.judge_shares().map(|(_, f)| f),
            judge_read_out_rate: summary.judge_shares().map(|(r, _)| r),
            tokens_per_second: summary.tokens_per_second,
            seconds: summary.seconds,
            monitor,
        })
    }
}

impl RunStats {
    /// Reads the run in `dir`: its records, and its monitor rows where it has them
    /// (recomputed with `monitor` settings where it has none).
    pub fn load(dir: &Path, monitor: &MonitorConfig) -> anyhow::Result<Self> {
        let run = RunDir::at(dir);
        let iterations = run.recorded_iterations()?;
        anyhow::ensure!(
            !iterations.is_empty(),
            "{} holds no game records: is {} a run folder?",
            run.records().display(),
            dir.display()
        );
        let batches: Vec<GameRecordBatch> = iterations
            .iter()
            .map(|&t| run.read_record(t))
            .collect::<anyhow::Result<_>>()?;
        let records: Vec<Vec<GameRecordRow>> = batches
            .iter()
            .map(|b| b.to_rows())
            .collect::<Result<_, _>>()?;
        for (rows, t) in records.iter().zip(&iterations) {
            anyhow::ensure!(
                !rows.is_empty(),
                "{} is an empty game record",
                run.record(*t).display()
            );
        }
        let run_id = records[0][0].run_id.clone();
        let mode = records[0][0].mode.clone();
        let live = live_monitor_rows(&run, &iterations)?;
        let monitor_source = if live.is_some() { "live" } else { "recomputed" };
        let monitor_rows = match live {
            Some(rows) => rows,
            None => recompute_monitor(&run_id, &records, monitor),
        };
        let iterations = records
            .iter()
            .zip(&batches)
            .zip(monitor_rows)
            .map(|((rows, batch), m)| IterationStats::of(rows, batch, m))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            run_id,
            mode,
            monitor_source: monitor_source.to_string(),
            iterations,
            records,
        })
    }
}

/// The run's own monitor rows, when every recorded iteration has one.
fn live_monitor_rows(run: &RunDir, iterations: &[u64]) -> anyhow::Result<Option<Vec<MonitorRow>>> {
    let mut rows = Vec::new();
    for &t in iterations {
        let path = run.monitor_row(t);
        if !path.is_file() {
            return Ok(None);
        }
        for batch in read_parquet::<MonitorBatch>(&path)
            .with_context(|| format!("reading {}", path.display()))?
        {
            rows.extend(batch.to_rows()?);
        }
    }
    Ok(Some(rows))
}

/// The monitor's figures computed from the records (the sequential reference).
pub fn recompute_monitor(
    run_id: &str,
    records: &[Vec<GameRecordRow>],
    config: &MonitorConfig,
) -> Vec<MonitorRow> {
    let mut reference = SequentialMonitor::default();
    records
        .iter()
        .map(|rows| {
            let t = rows[0].iteration;
            let (queries, answers) = observe(rows, config);
            reference
                .observe(t, &queries, &answers)
                .row(run_id, t, config)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_values() {
        let s = Spread::of([1.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.std, s.min, s.max, s.n), (2.0, 1.0, 1.0, 3.0, 2));
        assert!(Spread::of([]).is_none());
    }
}
