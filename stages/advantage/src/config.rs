//! The advantage section of `epoch.yaml`.

use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};

/// Options of the advantage computation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdvantageConfig {
    /// Divide advantages by their group's standard deviation (off, as in the paper).
    pub normalize_std: bool,
    /// Weight w of R_Q in the solver reward R + w·R_Q and in the challenger reward.
    pub self_reward_weight: f64,
}

impl Default for AdvantageConfig {
    fn default() -> Self {
        Self {
            normalize_std: false,
            self_reward_weight: 1.0,
        }
    }
}

impl Validate for AdvantageConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let w = join_path(path, "self_reward_weight");
        problems.in_range(&w, self.self_reward_weight, 0.0, 1e3);
    }
}
