//! The solver's section of `epoch.yaml`.

use lsp_model::SamplingConfig;
use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};

/// How answers are sampled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SolverConfig {
    /// G: answers per query (the group V(q) averages over). The paper does not give
    /// it; 4 keeps a CPU iteration short.
    pub answers_per_query: u64,
    /// How answer tokens are drawn.
    pub sampling: SamplingConfig,
}

impl Default for SolverConfig {
    fn default() -> Self {
        Self {
            answers_per_query: 4,
            sampling: SamplingConfig::default(),
        }
    }
}

impl Validate for SolverConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let g = join_path(path, "answers_per_query");
        problems.positive(&g, self.answers_per_query);
        problems.check(self.answers_per_query != 1, &g, || {
            "1 makes every solver advantage 0 (A_Sol = R − the mean R of the query's answers, \
             a group of one): use 2 or more"
                .into()
        });
        self.sampling
            .validate(&join_path(path, "sampling"), problems);
    }
}
