//! The quality self-reward's section of `epoch.yaml`.

use lsp_model::SamplingConfig;
use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};

/// How the frozen reference judges each (query, answer) with Box 3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelfRewardConfig {
    /// How the judge's reply is generated (greedy by default).
    pub sampling: SamplingConfig,
    /// R_Q given to a reply with no usable score; such replies are counted.
    pub fallback_score: f64,
}

impl Default for SelfRewardConfig {
    fn default() -> Self {
        Self {
            sampling: SamplingConfig::greedy(128),
            fallback_score: 0.0,
        }
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
    }
}
