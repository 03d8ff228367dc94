//! The advantage section of `epoch.yaml`, and the training mode it serves.

use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};

/// Which game is played.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Language Self-Play: challenger and solver, with the quality self-reward R_Q.
    #[default]
    Lsp,
    /// The zero-sum game without R_Q.
    LspZero,
    /// The data-based baseline: queries from a data set, solver only.
    Grpo,
}

impl Mode {
    /// The name written in configs and in the game record.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lsp => "lsp",
            Self::LspZero => "lsp_zero",
            Self::Grpo => "grpo",
        }
    }

    /// Whether the mode uses the quality self-reward R_Q.
    pub fn has_self_reward(self) -> bool {
        self == Self::Lsp
    }

    /// Whether the challenger writes (and is trained on) the queries.
    pub fn has_challenger(self) -> bool {
        self != Self::Grpo
    }
}

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
