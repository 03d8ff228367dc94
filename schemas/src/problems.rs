//! Collected configuration problems: every config section checks itself into one
//! [`Problems`] list, so a user sees all that is wrong with a file at once.

use std::fmt;
use std::path::Path;

/// One problem, with the dotted path of the field it concerns (`solver.temperature`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path; empty for the file as a whole.
    pub path: String,
    /// What is wrong and, where it helps, what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The problems found so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a problem at `path`.
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Records a problem unless `ok`.
    pub fn check(&mut self, ok: bool, path: &str, message: impl FnOnce() -> String) {
        if !ok {
            self.push(path, message());
        }
    }

    /// Checks `lo <= value <= hi` (NaN fails).
    pub fn in_range(&mut self, path: &str, value: f64, lo: f64, hi: f64) {
        self.check(value >= lo && value <= hi, path, || {
            format!("{value} is out of range: expected {lo} ..= {hi}")
        });
    }

    /// Checks `value >= 1`.
    pub fn positive(&mut self, path: &str, value: u64) {
        self.check(value >= 1, path, || "must be at least 1".to_string());
    }

    /// Checks that `dir` is a folder holding `file` (a model folder's `config.json`).
    pub fn folder_with(&mut self, path: &str, dir: &Path, file: &str, hint: &str) {
        if dir.is_file() {
            self.push(
                path,
                format!("{} is a file, not a folder{hint}", dir.display()),
            );
        } else if !dir.is_dir() {
            self.push(
                path,
                format!("folder {} does not exist{hint}", dir.display()),
            );
        } else if !dir.join(file).is_file() {
            self.push(path, format!("{} has no {file}{hint}", dir.display()));
        }
    }

    /// Whether no problem was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The problems, in the order found.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// `Ok(())` when empty, else the list as an error.
    pub fn into_result(self) -> Result<(), Problems> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// A config section that checks its own values. `path` is the section's dotted path,
/// to prefix field names with.
pub trait Validate {
    /// Records every problem of this section into `problems`.
    fn validate(&self, path: &str, problems: &mut Problems);

    /// Every problem of this section at once, or `Ok` when it has none.
    fn check(&self, path: &str) -> Result<(), Problems> {
        let mut problems = Problems::new();
        self.validate(path, &mut problems);
        problems.into_result()
    }
}

/// `prefix.field`, or `field` at the top.
pub fn join_path(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else {
        format!("{prefix}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_listed_in_order_with_their_paths() {
        let mut p = Problems::new();
        p.in_range("solver.temperature", -1.0, 0.0, 10.0);
        p.in_range("solver.top_p", f64::NAN, 0.0, 1.0);
        p.positive("challenger.num_queries", 0);
        p.positive("solver.answers_per_query", 4);
        assert_eq!(p.len(), 3);
        assert_eq!(
            p.to_string(),
            "  - solver.temperature: -1 is out of range: expected 0 ..= 10\n\
             \x20 - solver.top_p: NaN is out of range: expected 0 ..= 1\n\
             \x20 - challenger.num_queries: must be at least 1"
        );
    }

    #[test]
    fn folder_check_names_the_missing_piece() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Problems::new();
        p.folder_with("model.policy", dir.path(), "config.json", "");
        p.folder_with(
            "model.reference",
            &dir.path().join("nope"),
            "config.json",
            "",
        );
        let messages: Vec<_> = p.iter().map(|x| x.message.clone()).collect();
        assert!(messages[0].ends_with("has no config.json"), "{messages:?}");
        assert!(messages[1].ends_with("does not exist"), "{messages:?}");
        assert_eq!(join_path("", "run"), "run");
        assert_eq!(join_path("run", "seed"), "run.seed");
    }
}
