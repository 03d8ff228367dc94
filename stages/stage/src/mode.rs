//! Which game a run plays: what the stages are built for.

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
