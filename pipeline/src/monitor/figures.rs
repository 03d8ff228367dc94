//! The monitor's result for one iteration — counts and each query's closest earlier
//! query — and how it becomes the monitor table's row, its warnings and the record's
//! per-row columns.

use std::collections::BTreeMap;

use lsp_schemas::{GameRecordRow, MonitorRow, RowMonitor};
use serde::{Deserialize, Serialize};

use super::observation::QueryKey;
use super::text::{MOSTLY_CODE, asks_for_code, code_fraction};
use super::{MonitorConfig, WarnThresholds};

/// The counts one iteration's figures are made of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IterationCounts {
    pub queries: u64,
    pub query_tokens: u64,
    /// Query n-grams, with repeats.
    pub grams: u64,
    /// Distinct query n-grams.
    pub distinct_grams: u64,
    /// Distinct query n-grams no earlier iteration used.
    pub new_grams: u64,
    pub answers: u64,
    pub answer_tokens: u64,
    pub code_answers: u64,
    /// Answers to queries that do not ask for code, and how many of them are code.
    pub plain_answers: u64,
    pub plain_code_answers: u64,
    pub judged: u64,
    pub judge_failures: u64,
    pub judge_read_outs: u64,
    pub judge_chars: u64,
    /// Σ of the answers' mean entropies, in micro-nats.
    pub entropy_micro: u64,
    /// Σ over the answers of the step's rollout mismatch, in micro-nats.
    pub mismatch_micro: u64,
}

/// A query's closest earlier query: the one with the highest Jaccard similarity of
/// their n-gram sets, `shared / union` (ties: the earliest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Similar {
    pub shared: u64,
    pub union: u64,
    pub earlier: QueryKey,
}

impl Similar {
    /// The Jaccard similarity.
    pub fn jaccard(&self) -> f64 {
        self.shared as f64 / self.union as f64
    }

    /// Whether `self` is the better match: higher similarity (compared exactly), then
    /// the earlier query.
    pub fn beats(&self, other: &Similar) -> bool {
        let (a, b) = (
            u128::from(self.shared) * u128::from(other.union),
            u128::from(other.shared) * u128::from(self.union),
        );
        a > b || (a == b && self.earlier < other.earlier)
    }

    /// The best of `candidates`.
    pub fn best(candidates: impl IntoIterator<Item = Similar>) -> Option<Similar> {
        candidates
            .into_iter()
            .reduce(|best, c| if c.beats(&best) { c } else { best })
    }
}

/// Everything the monitor found for one iteration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IterationResult {
    pub counts: IterationCounts,
    /// By query_id; queries sharing no n-gram with an earlier one are absent.
    pub similar: BTreeMap<u32, Similar>,
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

impl IterationResult {
    /// Queries at least `threshold` similar to an earlier one.
    pub fn near_duplicates(&self, threshold: f64) -> u64 {
        self.similar
            .values()
            .filter(|s| s.jaccard() >= threshold)
            .count() as u64
    }

    /// The monitor table's row, with the thresholds it crossed.
    pub fn row(&self, run_id: &str, iteration: u64, config: &MonitorConfig) -> MonitorRow {
        let c = &self.counts;
        let near_duplicates = self.near_duplicates(config.near_duplicate);
        let mut row = MonitorRow {
            run_id: run_id.to_string(),
            iteration,
            queries: c.queries,
            near_duplicates,
            near_duplicate_share: ratio(near_duplicates, c.queries),
            distinct_n: ratio(c.distinct_grams, c.grams),
            novelty: ratio(c.new_grams, c.distinct_grams),
            answers: c.answers,
            code_share: ratio(c.code_answers, c.answers),
            code_drift: (c.plain_answers > 0).then(|| ratio(c.plain_code_answers, c.plain_answers)),
            mean_query_tokens: ratio(c.query_tokens, c.queries),
            mean_answer_tokens: ratio(c.answer_tokens, c.answers),
            mean_judge_chars: (c.judged > 0).then(|| ratio(c.judge_chars, c.judged)),
            judge_failure_rate: (c.judged > 0).then(|| ratio(c.judge_failures, c.judged)),
            judge_read_out_rate: (c.judged > 0).then(|| ratio(c.judge_read_outs, c.judged)),
            mean_answer_entropy: ratio(c.entropy_micro, c.answers) / 1e6,
            rollout_mismatch: ratio(c.mismatch_micro, c.answers) / 1e6,
            warnings: Vec::new(),
        };
        row.warnings = warnings(&row, &config.warn, config.distinct_n);
        row
    }

    /// The record's monitor columns for `rows` (this iteration's record, in order).
    pub fn row_monitors(&self, rows: &[GameRecordRow]) -> Vec<RowMonitor> {
        rows.iter()
            .map(|r| {
                let similar = self.similar.get(&r.query_id);
                let fraction = code_fraction(&r.answer_text);
                RowMonitor {
                    query_similarity: similar.map_or(0.0, Similar::jaccard),
                    query_similar_to: similar.map(|s| s.earlier),
                    query_asks_code: asks_for_code(&r.query_text),
                    answer_code_fraction: fraction,
                    answer_is_code: fraction >= MOSTLY_CODE,
                }
            })
            .collect()
    }
}

/// The thresholds `row` crossed, each as a sentence a user can act on.
fn warnings(row: &MonitorRow, warn: &WarnThresholds, n: usize) -> Vec<String> {
    let pct = |x: f64| format!("{:.0}%", 100.0 * x);
    let mut out = Vec::new();
    if let Some(limit) = warn.near_duplicate_share_above
        && row.near_duplicate_share > limit
    {
        out.push(format!(
            "near-duplicate queries {} > {}: the challenger is repeating itself",
            pct(row.near_duplicate_share),
            pct(limit)
        ));
    }
    if let Some(limit) = warn.distinct_below
        && row.queries > 1
        && row.distinct_n < limit
    {
        out.push(format!(
            "distinct-{n} of the queries {:.3} < {limit}: query diversity is collapsing",
            row.distinct_n
        ));
    }
    if let (Some(limit), Some(drift)) = (warn.code_drift_above, row.code_drift)
        && drift > limit
    {
        out.push(format!(
            "{} of answers to non-code queries are mostly code (> {}): code drift",
            pct(drift),
            pct(limit)
        ));
    }
    if let Some(limit) = warn.entropy_below
        && row.answers > 0
        && row.mean_answer_entropy < limit
    {
        out.push(format!(
            "answer entropy {:.3} < {limit} nats: the policy is collapsing onto fixed answers",
            row.mean_answer_entropy
        ));
    }
    if let (Some(limit), Some(rate)) = (warn.judge_failures_above, row.judge_failure_rate)
        && rate > limit
    {
        out.push(format!(
            "judge fallbacks {} > {}: R_Q is mostly the fallback score",
            pct(rate),
            pct(limit)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn similar(shared: u64, union: u64, earlier: QueryKey) -> Similar {
        Similar {
            shared,
            union,
            earlier,
        }
    }

    #[test]
    fn best_match_compares_ratios_exactly_then_prefers_the_earlier_query() {
        let a = similar(1, 3, (2, 0));
        let b = similar(2, 6, (1, 5));
        let c = similar(1, 4, (0, 0));
        assert_eq!(Similar::best([a, b, c]), Some(b));
        assert_eq!(Similar::best([c]), Some(c));
        assert_eq!(Similar::best([]), None);
    }

    #[test]
    fn row_turns_counts_into_shares_and_warns_past_thresholds() {
        let result = IterationResult {
            counts: IterationCounts {
                queries: 4,
                query_tokens: 40,
                grams: 20,
                distinct_grams: 8,
                new_grams: 2,
                answers: 8,
                answer_tokens: 100,
                code_answers: 3,
                plain_answers: 4,
                plain_code_answers: 2,
                judged: 8,
                judge_failures: 6,
                judge_read_outs: 1,
                judge_chars: 800,
                entropy_micro: 8 * 20_000,
                mismatch_micro: 8 * 1_500,
            },
            similar: [(1, similar(3, 4, (1, 0))), (2, similar(1, 4, (0, 3)))].into(),
        };
        let config = MonitorConfig::default();
        let row = result.row("r", 2, &config);
        assert_eq!(row.near_duplicates, 1);
        assert_eq!(row.near_duplicate_share, 0.25);
        assert_eq!((row.distinct_n, row.novelty), (0.4, 0.25));
        assert_eq!((row.code_share, row.code_drift), (0.375, Some(0.5)));
        assert_eq!(
            (row.mean_query_tokens, row.mean_answer_tokens),
            (10.0, 12.5)
        );
        assert_eq!(
            (
                row.mean_judge_chars,
                row.judge_failure_rate,
                row.judge_read_out_rate
            ),
            (Some(100.0), Some(0.75), Some(0.125))
        );
        assert_eq!(row.mean_answer_entropy, 0.02);
        assert_eq!(row.rollout_mismatch, 0.0015);
        // distinct 0.4 < 0.5, drift 50% > 30%, entropy 0.02 < 0.05, failures 75% > 50%;
        // duplicates 25% ≤ 50%.
        assert_eq!(row.warnings.len(), 4, "{:?}", row.warnings);
        assert!(row.warnings[0].starts_with("distinct-2 of the queries 0.400 < 0.5"));
        assert!(row.warnings[1].contains("code drift"));
        assert!(row.warnings[2].starts_with("answer entropy 0.020 < 0.05 nats"));
        assert!(row.warnings[3].starts_with("judge fallbacks 75% > 50%"));
    }
}
