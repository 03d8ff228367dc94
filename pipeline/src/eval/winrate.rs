//! AlpacaEval's protocol: a candidate and a baseline model answer the same
//! instructions near-greedily; a judge says which answer is better; the candidate's win
//! rate (ties count half) is reported overall and per subset with 95% intervals.

use std::collections::BTreeMap;

use lsp_model::LanguageModel;
use lsp_schemas::WinRateRow;
use serde::{Deserialize, Serialize};

use super::stats::{Estimate, mean_interval};

/// One instruction of `alpaca_eval.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct Instruction {
    pub id: u64,
    /// The subset.
    pub dataset: String,
    pub instruction: String,
}

/// The pairwise comparison prompt of the `llm` judge.
pub const PAIRWISE_PROMPT: &str = include_str!("pairwise_judge.txt");

/// The pairwise prompt for one ordering.
pub fn pairwise_prompt(instruction: &str, a: &str, b: &str) -> String {
    lsp_model::fill_slots(
        PAIRWISE_PROMPT.trim_end(),
        &[
            ("instruction", instruction),
            ("response_a", a),
            ("response_b", b),
        ],
    )
}

/// The outcome of one comparison in the two orders: each order votes for the response
/// its judge found more probable; agreeing votes decide, disagreeing ones tie.
pub fn pairwise_outcome(p_candidate_first: f64, p_candidate_second: f64) -> f64 {
    let vote = |p: f64| {
        if p > 0.5 {
            1.0
        } else if p < 0.5 {
            0.0
        } else {
            0.5
        }
    };
    (vote(p_candidate_first) + vote(p_candidate_second)) / 2.0
}

/// The reward-model outcome: the higher score wins; equal scores tie.
pub fn score_outcome(candidate: f64, baseline: f64) -> f64 {
    if candidate > baseline {
        1.0
    } else if candidate < baseline {
        0.0
    } else {
        0.5
    }
}

/// P(A) against P(B) at the judge's first answer token, for each (instruction, A, B).
pub fn prefer_a(
    judge: &LanguageModel,
    triples: &[(&str, &str, &str)],
    batch: usize,
) -> anyhow::Result<Vec<f64>> {
    let prompts: Vec<String> = triples
        .iter()
        .map(|(i, a, b)| pairwise_prompt(i, a, b))
        .collect();
    let letters = ["A".to_string(), "B".to_string()];
    let probs = lsp_reward::choice_probabilities(judge, &prompts, &letters, batch)?;
    Ok(probs.iter().map(|p| p[0]).collect())
}

/// Win rates, overall and per subset, and average lengths.
#[derive(Debug, Clone, Serialize)]
pub struct WinRateSummary {
    pub judge: String,
    pub win_rate: Estimate,
    pub per_subset: BTreeMap<String, Estimate>,
    pub wins: usize,
    pub ties: usize,
    pub losses: usize,
    /// Instructions both models answered with the same text (a tie by construction;
    /// all of them identical leaves the interval no width).
    pub identical_outputs: usize,
    pub candidate_mean_chars: f64,
    pub baseline_mean_chars: f64,
}

/// The summary of judged rows.
pub fn summarize(judge: &str, rows: &[WinRateRow]) -> WinRateSummary {
    let outcomes: Vec<f64> = rows.iter().map(|r| r.outcome).collect();
    let mut subsets: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in rows {
        subsets.entry(r.subset.clone()).or_default().push(r.outcome);
    }
    let mean_chars = |f: fn(&WinRateRow) -> u64| {
        rows.iter().map(|r| f(r) as f64).sum::<f64>() / rows.len().max(1) as f64
    };
    WinRateSummary {
        judge: judge.to_string(),
        win_rate: mean_interval(&outcomes),
        per_subset: subsets
            .into_iter()
            .map(|(k, v)| (k, mean_interval(&v)))
            .collect(),
        wins: outcomes.iter().filter(|&&o| o == 1.0).count(),
        ties: outcomes.iter().filter(|&&o| o == 0.5).count(),
        losses: outcomes.iter().filter(|&&o| o == 0.0).count(),
        identical_outputs: rows
            .iter()
            .filter(|r| r.candidate_output == r.baseline_output)
            .count(),
        candidate_mean_chars: mean_chars(|r| r.candidate_chars),
        baseline_mean_chars: mean_chars(|r| r.baseline_chars),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_orders_must_agree_for_a_win() {
        assert_eq!(pairwise_outcome(0.9, 0.7), 1.0);
        assert_eq!(pairwise_outcome(0.2, 0.1), 0.0);
        // Position bias: the judge prefers whatever is shown first.
        assert_eq!(pairwise_outcome(0.8, 0.3), 0.5);
        assert_eq!(score_outcome(1.0, 1.0), 0.5);
        assert_eq!(score_outcome(2.0, -1.0), 1.0);
    }

    #[test]
    fn prompt_slots_are_filled_once_and_responses_kept_verbatim() {
        let p = pairwise_prompt("Say {hi}", "A says {response_b}", "B");
        assert!(p.contains("Instruction:\nSay {hi}\n"));
        assert!(p.contains("Response A:\nA says {response_b}\n"));
        assert!(p.contains("Response B:\nB\n"));
        assert!(p.ends_with("A or B."));
    }
}
