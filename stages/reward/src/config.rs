//! The external reward's section of `epoch.yaml`.

use std::path::{Path, PathBuf};

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
    /// The user's program (`command`): a long-lived child process speaking JSON
    /// Lines, one request and one reply per (query, answer).
    Command,
    /// A reward server (`url`): the batch POSTed as a JSON list, a list of rewards
    /// back.
    Http,
    /// The weighted sum of the rewards in `sum` (TRL's `reward_weights`), each part
    /// kept in the record's `reward_parts`.
    Sum,
}

/// What a failed reply of the user's code (`command`, `http`) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    /// Stop the run with the failure.
    #[default]
    Error,
    /// Give the row `fallback_reward`; its `reward_status` names the failure.
    Fallback,
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
    /// `command`: the program and its arguments. It runs in the config's folder; a
    /// program path with a `/` and arguments naming existing files there resolve
    /// from it too, like every other path of the config.
    pub command: Vec<String>,
    /// `http`: the reward server's URL (`http://host:port/path`).
    pub url: Option<String>,
    /// `command` / `http`: seconds to wait for a reply (a line; a batch).
    pub timeout_seconds: f64,
    /// `command` / `http`: a failed reply stops the run or gets the fallback.
    pub on_failure: OnFailure,
    /// `command` / `http`: the reward of a failed reply under `on_failure: fallback`.
    pub fallback_reward: f64,
    /// `sum`: the rewards added, each a reward section with its `name` and `weight`.
    pub sum: Vec<RewardConfig>,
    /// In a `sum`: the part's name in `reward_parts` (its kind when null).
    pub name: Option<String>,
    /// In a `sum`: the part's weight.
    pub weight: f64,
    /// The folder `command` runs in: the config's, set by [`RewardConfig::resolve_paths`]
    /// (the current directory until then).
    #[serde(skip)]
    pub dir: Option<PathBuf>,
}

impl Default for RewardConfig {
    fn default() -> Self {
        Self {
            kind: RewardKind::Judge,
            model: None,
            batch_size: 8,
            max_score: 9,
            target_chars: 40,
            command: Vec::new(),
            url: None,
            timeout_seconds: 60.0,
            on_failure: OnFailure::Error,
            fallback_reward: 0.0,
            sum: Vec::new(),
            name: None,
            weight: 1.0,
            dir: None,
        }
    }
}

impl RewardKind {
    /// The kind's name in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Judge => "judge",
            Self::RewardModel => "reward_model",
            Self::Verifier => "verifier",
            Self::Length => "length",
            Self::Command => "command",
            Self::Http => "http",
            Self::Sum => "sum",
        }
    }
}

impl RewardConfig {
    /// What scores the answers, in words (`pipeline validate`'s plan).
    pub fn describe(&self) -> String {
        let model = self.model.as_ref().map(|m| m.display().to_string());
        match (self.kind, model) {
            (RewardKind::RewardModel, m) => format!("reward model {}", m.unwrap_or_default()),
            (RewardKind::Judge, Some(m)) => format!("judge {m}"),
            (RewardKind::Judge, None) => "judge = the frozen reference".to_string(),
            (RewardKind::Verifier, _) => "verifier of reference answers".to_string(),
            (RewardKind::Length, _) => format!("-|answer chars - {}|", self.target_chars),
            (RewardKind::Command, _) => format!("the program {:?}", self.command),
            (RewardKind::Http, _) => format!("the server {}", self.url.as_deref().unwrap_or("")),
            (RewardKind::Sum, _) => self
                .sum
                .iter()
                .map(|p| format!("{} x {} ({})", p.weight, p.part_name(), p.describe()))
                .collect::<Vec<_>>()
                .join(" + "),
        }
    }

    /// Whether this reward or a part of it is `kind`.
    pub fn uses(&self, kind: RewardKind) -> bool {
        self.kind == kind || self.sum.iter().any(|p| p.uses(kind))
    }

    /// The part's name in `reward_parts`.
    pub fn part_name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.kind.as_str())
    }

    /// Makes the model folder and the command's paths absolute against `base` (the
    /// config's folder), in this section and its parts; see `command`.
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(model) = &mut self.model
            && model.is_relative()
        {
            *model = base.join(&*model);
        }
        for (i, word) in self.command.iter_mut().enumerate() {
            let path = Path::new(word.as_str());
            let local = match i {
                0 => word.contains('/'),
                _ => !word.starts_with('-') && base.join(path).exists(),
            };
            if local && path.is_relative() {
                *word = base.join(path).display().to_string();
            }
        }
        if !self.command.is_empty() {
            self.dir = Some(base.to_path_buf());
        }
        for part in &mut self.sum {
            part.resolve_paths(base);
        }
    }
}

impl Validate for RewardConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let p = |f: &str| join_path(path, f);
        match (self.kind, &self.model) {
            (RewardKind::Judge | RewardKind::RewardModel, Some(model)) => {
                let before = problems.len();
                problems.folder_with(&p("model"), model, "config.json", "");
                if problems.len() == before
                    && let Err(e) = lsp_model::LanguageModel::inspect(model)
                {
                    problems.push(p("model"), e.to_string());
                }
            }
            (kind, Some(_)) if kind != RewardKind::Judge => problems.push(
                p("model"),
                format!(
                    "the `{}` reward uses no model: remove `model`",
                    kind.as_str()
                ),
            ),
            (RewardKind::RewardModel, None) => problems.push(
                p("model"),
                "the `reward_model` reward needs `model`: a sequence-classification folder",
            ),
            _ => {}
        }
        problems.positive(&p("batch_size"), self.batch_size);
        problems.in_range(&p("max_score"), self.max_score as f64, 2.0, 9.0);
        let kind = self.kind;
        problems.check(
            (kind == RewardKind::Command) != self.command.is_empty(),
            &p("command"),
            || match kind {
                RewardKind::Command => {
                    "the `command` reward needs `command`: [program, args...]".into()
                }
                _ => format!(
                    "`command` is for the `command` reward, not `{}`",
                    kind.as_str()
                ),
            },
        );
        problems.check(
            (kind == RewardKind::Http) == self.url.is_some(),
            &p("url"),
            || match kind {
                RewardKind::Http => "the `http` reward needs `url`: http://host:port/path".into(),
                _ => format!("`url` is for the `http` reward, not `{}`", kind.as_str()),
            },
        );
        if let Some(url) = &self.url {
            problems.check(url.starts_with("http://"), &p("url"), || {
                format!("{url:?} is not an http:// URL (https is not built in)")
            });
        }
        problems.check(
            self.timeout_seconds.is_finite() && self.timeout_seconds > 0.0,
            &p("timeout_seconds"),
            || {
                format!(
                    "{} is not a positive number of seconds",
                    self.timeout_seconds
                )
            },
        );
        problems.check(
            self.fallback_reward.is_finite(),
            &p("fallback_reward"),
            || format!("{} is not a finite reward", self.fallback_reward),
        );
        problems.check(self.weight.is_finite(), &p("weight"), || {
            format!("{} is not a finite weight", self.weight)
        });
        problems.check(
            (kind == RewardKind::Sum) != self.sum.is_empty(),
            &p("sum"),
            || match kind {
                RewardKind::Sum => {
                    "the `sum` reward needs `sum`: a list of rewards with weights".into()
                }
                _ => format!(
                    "`sum` is for the `sum` reward (`kind: sum`), not `{}`",
                    kind.as_str()
                ),
            },
        );
        let mut names = Vec::new();
        for (i, part) in self.sum.iter().enumerate() {
            let at = format!("{}[{i}]", p("sum"));
            problems.check(
                part.kind != RewardKind::Sum,
                &join_path(&at, "kind"),
                || "a part of a sum cannot be a sum".into(),
            );
            problems.check(
                !names.contains(&part.part_name()),
                &join_path(&at, "name"),
                || {
                    format!(
                        "{:?} names another part too: give each part its own `name`",
                        part.part_name()
                    )
                },
            );
            names.push(part.part_name());
            part.validate(&at, problems);
        }
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
        assert!(
            extra[0].contains("`verifier` reward uses no model"),
            "{extra:?}"
        );
        assert!(extra[1].starts_with("reward.max_score: 10 is out of range"));
        // The user's code: what each kind needs, and nothing it does not use.
        let command = |words: &[&str]| RewardConfig {
            kind: RewardKind::Command,
            command: words.iter().map(|w| w.to_string()).collect(),
            ..RewardConfig::default()
        };
        assert!(check(command(&["python3", "r.py"])).is_empty());
        assert_eq!(
            check(command(&[])),
            ["reward.command: the `command` reward needs `command`: [program, args...]"]
        );
        let http = check(RewardConfig {
            kind: RewardKind::Http,
            url: Some("https://rm.example/score".into()),
            timeout_seconds: 0.0,
            command: vec!["x".into()],
            ..RewardConfig::default()
        });
        assert_eq!(http.len(), 3, "{http:?}");
        assert!(
            http[0]
                .starts_with("reward.command: `command` is for the `command` reward, not `http`")
        );
        assert!(http[1].contains("is not an http:// URL"));
        assert!(http[2].starts_with("reward.timeout_seconds: 0 is not a positive"));
        // A sum: parts checked under their own path, names unique, no nesting.
        let sum = check(RewardConfig {
            kind: RewardKind::Sum,
            sum: vec![
                command(&["a"]),
                RewardConfig {
                    weight: f64::NAN,
                    ..command(&["b"])
                },
                RewardConfig {
                    kind: RewardKind::Sum,
                    name: Some("inner".into()),
                    ..RewardConfig::default()
                },
            ],
            ..RewardConfig::default()
        });
        assert_eq!(sum.len(), 4, "{sum:?}");
        assert!(sum[0].starts_with("reward.sum[1].name: \"command\" names another part too"));
        assert!(sum[1].starts_with("reward.sum[1].weight: NaN is not a finite weight"));
        assert!(sum[2].starts_with("reward.sum[2].kind: a part of a sum cannot be a sum"));
        assert!(sum[3].starts_with("reward.sum[2].sum: the `sum` reward needs `sum`"));
        assert_eq!(
            check(RewardConfig {
                kind: RewardKind::Sum,
                ..RewardConfig::default()
            }),
            ["reward.sum: the `sum` reward needs `sum`: a list of rewards with weights"]
        );
    }

    #[test]
    fn command_paths_resolve_from_the_configs_folder() {
        let base = std::env::temp_dir().join(format!("lsp-reward-paths-{}", std::process::id()));
        std::fs::create_dir_all(base.join("rewards")).unwrap();
        std::fs::write(base.join("rewards/format.py"), "").unwrap();
        let mut config = RewardConfig {
            kind: RewardKind::Sum,
            sum: vec![RewardConfig {
                kind: RewardKind::Command,
                command: [
                    "python3",
                    "rewards/format.py",
                    "--weight",
                    "missing.txt",
                    "./bin/x",
                ]
                .map(String::from)
                .to_vec(),
                ..RewardConfig::default()
            }],
            ..RewardConfig::default()
        };
        config.resolve_paths(&base);
        let part = &config.sum[0];
        let at = |p: &str| base.join(p).display().to_string();
        // The program is looked up on PATH; an existing file argument is the config's.
        assert_eq!(
            part.command,
            [
                "python3",
                &at("rewards/format.py"),
                "--weight",
                "missing.txt",
                "./bin/x"
            ]
        );
        assert_eq!(part.dir.as_deref(), Some(base.as_path()));
        let mut program = RewardConfig {
            command: vec!["./bin/x".into()],
            ..RewardConfig::default()
        };
        program.resolve_paths(&base);
        assert_eq!(program.command, [at("./bin/x")]);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
