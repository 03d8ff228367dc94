//! The challenger's section of `epoch.yaml`.

use lsp_model::SamplingConfig;
use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};

/// How queries are generated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChallengerConfig {
    /// N: queries per iteration.
    pub num_queries: u64,
    /// Box 1's `{task}`; `null` writes `None`, as the paper does for open-ended
    /// instruction following.
    pub task: Option<String>,
    /// Box 1's `{template}`; `null` writes `None`.
    pub template: Option<String>,
    /// How query tokens are drawn.
    pub sampling: SamplingConfig,
}

impl Default for ChallengerConfig {
    fn default() -> Self {
        Self {
            num_queries: 4,
            task: None,
            template: None,
            sampling: SamplingConfig::default(),
        }
    }
}

impl Validate for ChallengerConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        problems.positive(&join_path(path, "num_queries"), self.num_queries);
        self.sampling
            .validate(&join_path(path, "sampling"), problems);
    }
}
