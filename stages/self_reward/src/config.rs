//! The quality self-reward's section of `epoch.yaml`.

use lsp_model::SamplingConfig;
use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};

/// When R_Q is read from the judge's next-token distribution over the score tokens
/// (`<Score>` appended to its reply) instead of the number the reply wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadOut {
    /// For replies without a usable score (small judges rarely write one).
    #[default]
    WhenUnusable,
    /// For every reply: R_Q is always the distribution's expected score.
    Always,
    /// Never: a reply without a usable score gets `fallback_score`.
    Never,
}

/// How the frozen reference judges each (query, answer) with Box 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfRewardConfig {
    /// How the judge's reply is generated (greedy by default).
    pub sampling: SamplingConfig,
    /// Most tokens of the judge's reply before its score is read out, replacing
    /// `sampling.max_new_tokens`; 0 writes no reply and reads the score right after
    /// the prompt (one pass for all answers). Null: `sampling.max_new_tokens`.
    pub justification_tokens: Option<u64>,
    /// When the score is read out of the judge's distribution.
    pub read_out: ReadOut,
    /// R_Q given to a reply with no usable score when it is not read out; counted.
    pub fallback_score: f64,
}

impl Default for SelfRewardConfig {
    fn default() -> Self {
        Self {
            sampling: SamplingConfig::greedy(128),
            justification_tokens: None,
            read_out: ReadOut::WhenUnusable,
            fallback_score: 0.0,
        }
    }
}

impl SelfRewardConfig {
    /// Most tokens of the judge's reply (0: none is written).
    pub fn reply_tokens(&self) -> u64 {
        self.justification_tokens
            .unwrap_or(self.sampling.max_new_tokens)
    }
}

impl Validate for SelfRewardConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        self.sampling
            .validate(&join_path(path, "sampling"), problems);
        problems.in_range(
            &join_path(path, "fallback_score"),
            self.fallback_score,
            0.0,
            7.0,
        );
        if self.justification_tokens == Some(0) && self.read_out == ReadOut::Never {
            problems.push(
                join_path(path, "justification_tokens"),
                "0 writes no reply, so the score must be read out: read_out cannot be never",
            );
        }
    }
}
