//! The live collapse monitor: while `pipeline run` plays, an incremental computation
//! over the game records as they arrive (a differential dataflow in the run's worker)
//! finds near-duplicate queries across all iterations so far, distinct-n and novelty
//! of each iteration's queries, the share of answers that are mostly code (overall and
//! for queries that do not ask for code), mean lengths per role and the judge's
//! failure rate. Its figures go to the iteration's summary line, to the game record
//! (per row: closest earlier query, code fraction) and to `monitor/iteration-N.parquet`;
//! crossing a configured threshold logs a warning and is recorded.
//!
//! [`SequentialMonitor`] computes the same figures the plain way; the tests hold the
//! dataflow to it.

mod dataflow;
mod figures;
mod observation;
mod sequential;
pub mod text;

pub use dataflow::LiveMonitor;
pub use observation::observe;
pub use sequential::SequentialMonitor;

use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};

/// The `monitor` section of `epoch.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Run the monitor (its record columns stay null when off).
    pub enabled: bool,
    /// Word n-gram size of the sets near-duplicates compare.
    pub similarity_ngram: usize,
    /// Jaccard similarity from which a query is a near-duplicate of an earlier one.
    pub near_duplicate: f64,
    /// n of distinct-n and novelty (word n-grams).
    pub distinct_n: usize,
    /// When to warn.
    pub warn: WarnThresholds,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            similarity_ngram: 3,
            near_duplicate: 0.6,
            distinct_n: 2,
            warn: WarnThresholds::default(),
        }
    }
}

/// Thresholds past which an iteration is flagged; null turns one off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarnThresholds {
    /// Share of the iteration's queries that are near-duplicates.
    pub near_duplicate_share_above: Option<f64>,
    /// distinct-n of the iteration's queries.
    pub distinct_below: Option<f64>,
    /// Share of mostly-code answers among answers to queries not asking for code.
    pub code_drift_above: Option<f64>,
    /// Share of judge replies without a usable score.
    pub judge_failures_above: Option<f64>,
    /// The answers' mean entropy, in nats: near 0 the policy always writes the same.
    pub entropy_below: Option<f64>,
}

impl Default for WarnThresholds {
    fn default() -> Self {
        Self {
            near_duplicate_share_above: Some(0.5),
            distinct_below: Some(0.5),
            code_drift_above: Some(0.3),
            judge_failures_above: Some(0.5),
            entropy_below: Some(0.05),
        }
    }
}

impl Validate for MonitorConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let p = |f: &str| join_path(path, f);
        problems.positive(&p("similarity_ngram"), self.similarity_ngram as u64);
        problems.positive(&p("distinct_n"), self.distinct_n as u64);
        let share = |name: &str, x: Option<f64>, problems: &mut Problems| {
            if let Some(x) = x {
                problems.check((0.0..=1.0).contains(&x), &p(name), || {
                    format!("{x} is not a share: use a number from 0 to 1, or null")
                });
            }
        };
        share("near_duplicate", Some(self.near_duplicate), problems);
        let w = &self.warn;
        share(
            "warn.near_duplicate_share_above",
            w.near_duplicate_share_above,
            problems,
        );
        share("warn.distinct_below", w.distinct_below, problems);
        share("warn.code_drift_above", w.code_drift_above, problems);
        share(
            "warn.judge_failures_above",
            w.judge_failures_above,
            problems,
        );
        if let Some(x) = w.entropy_below {
            problems.check(x.is_finite() && x >= 0.0, &p("warn.entropy_below"), || {
                format!("{x} is not an entropy: use nats >= 0, or null")
            });
        }
    }
}

#[cfg(test)]
mod tests;
