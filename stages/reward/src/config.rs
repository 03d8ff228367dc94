//! The external reward's section of `epoch.yaml`.

use std::path::PathBuf;

use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};

/// Which external reward R(q, a) scores the answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RewardKind {
    /// An instruction model as a pointwise judge without generation: the
    /// probability-weighted mean of the score tokens after a rating prompt. The
    /// offline default, since no reward model ships in any reachable package.
    #[default]
    Judge,
    /// A Hugging Face sequence-classification folder (the paper's kind, e.g.
    /// Skywork-Reward-V2-Llama-3.2-3B): the score head at the last token of the
    /// chat-formatted (q, a).
    RewardModel,
    /// Exact match of the answer's final number against the data's reference answer
    /// (GSM8K's `#### N`), for the data-based GRPO baseline.
    Verifier,
    /// −|answer characters − target_chars|: a reward that costs nothing, for smoke
    /// tests and for benchmarks against TRL's GRPO example, which uses it.
    Length,
}

/// The reward section. A flat struct rather than an enum per kind, so that every
/// refused field is reported with its own path; `validate` checks which fields the
/// chosen kind needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RewardConfig {
    /// The kind of reward.
    pub kind: RewardKind,
    /// The scoring model's folder: required for `reward_model`; for `judge`, `null`
    /// uses the frozen reference model; unused by `verifier`.
    pub model: Option<PathBuf>,
    /// (query, answer) pairs scored per forward pass.
    pub batch_size: u64,
    /// `judge`: the rating scale's top score (scores run 1 ..= max_score, one token each).
    pub max_score: u64,
    /// `length`: the answer length, in characters, that scores 0 (the best).
    pub target_chars: u64,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            kind: RewardKind::Judge,
            model: None,
            batch_size: 8,
            max_score: 9,
            target_chars: 40,
        }
    }
}

impl Validate for RewardConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let p = |f: &str| join_path(path, f);
        match (self.kind, &self.model) {
            (RewardKind::Verifier | RewardKind::Length, Some(_)) => problems.push(
                p("model"),
                "the `verifier` and `length` rewards use no model: remove `model`",
            ),
            (RewardKind::RewardModel, None) => problems.push(
                p("model"),
                "the `reward_model` reward needs `model`: a sequence-classification folder",
            ),
            (_, Some(model)) => problems.folder_with(&p("model"), model, "config.json", ""),
            (_, None) => {}
        }
        problems.positive(&p("batch_size"), self.batch_size);
        problems.in_range(&p("max_score"), self.max_score as f64, 2.0, 9.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_checked_for_what_it_needs() {
        let check = |config: RewardConfig| {
            let mut problems = Problems::new();
            config.validate("reward", &mut problems);
            problems.iter().map(|p| p.to_string()).collect::<Vec<_>>()
        };
        assert!(check(RewardConfig::default()).is_empty());
        let needs_model = check(RewardConfig {
            kind: RewardKind::RewardModel,
            ..RewardConfig::default()
        });
        assert_eq!(needs_model.len(), 1);
        assert!(needs_model[0].starts_with("reward.model: the `reward_model` reward needs"));
        let extra = check(RewardConfig {
            kind: RewardKind::Verifier,
            model: Some("x".into()),
            max_score: 10,
            ..RewardConfig::default()
        });
        assert_eq!(extra.len(), 2, "{extra:?}");
        assert!(extra[0].contains("use no model"), "{extra:?}");
        assert!(extra[1].starts_with("reward.max_score: 10 is out of range"));
    }
}
