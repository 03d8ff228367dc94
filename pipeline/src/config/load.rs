//! Reading `epoch.yaml` so that every problem is reported at once.
//!
//! serde stops at the first error, so the file is read as a YAML value and then
//! deserialized repeatedly: each time a field is refused (unknown key, wrong type,
//! unknown variant) the problem is recorded with its path and that field is taken out,
//! falling back to its default, until the rest deserializes. The typed config is then
//! checked section by section (`Validate`), which adds range and path problems.

use std::path::{Path, PathBuf};

use lsp_schemas::problems::{Problems, Validate};
use serde_norway::Value;
use serde_path_to_error::Segment;

use super::EpochConfig;

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML.
    #[error("{path} is not valid YAML: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// The file is YAML but its contents are wrong.
    #[error("{path}: {} problem{}:\n{problems}", problems.len(), if problems.len() == 1 { "" } else { "s" })]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Problems,
    },
}

/// Most problems reported from one file before giving up.
const MAX_PROBLEMS: usize = 100;

/// Reads, checks and resolves `path`. Relative paths in the file are taken from the
/// file's folder.
pub fn load_epoch(path: &Path) -> Result<EpochConfig, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let invalid = |problems| LoadError::Invalid {
        path: path.to_path_buf(),
        problems,
    };
    let (config, mut problems) = parse_epoch(&text).map_err(|message| LoadError::Syntax {
        path: path.to_path_buf(),
        message,
    })?;
    let Some(mut config) = config else {
        return Err(invalid(problems));
    };
    config.resolve_paths(base);
    config.validate("", &mut problems);
    problems.into_result().map_err(invalid)?;
    Ok(config)
}

/// Deserializes `text`, collecting every field-level problem. Returns the config when
/// the rest deserializes once the refused fields are taken out (they take their
/// defaults), and `Err` only for a YAML syntax error.
pub(crate) fn parse_epoch(text: &str) -> Result<(Option<EpochConfig>, Problems), String> {
    let mut value: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    if value.is_null() {
        // An empty file is an all-defaults config.
        value = Value::Mapping(Default::default());
    }
    let mut problems = Problems::new();
    loop {
        match serde_path_to_error::deserialize::<_, EpochConfig>(value.clone()) {
            Ok(config) => return Ok((Some(config), problems)),
            Err(err) => {
                let segments: Vec<Segment> = err.path().iter().cloned().collect();
                let path = err.path().to_string();
                let path = if path == "." { String::new() } else { path };
                problems.push(path, err.into_inner().to_string());
                if problems.len() >= MAX_PROBLEMS || !remove_at(&mut value, &segments) {
                    return Ok((None, problems));
                }
            }
        }
    }
}

/// Removes the node at `segments` from `value`; false when there is nothing to remove
/// (the error was about the node as a whole, e.g. a missing field, or an element of a
/// list, which is not taken out on its own).
fn remove_at(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((Segment::Map { key }, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = value;
    for segment in parents {
        let next = match (segment, node) {
            (Segment::Map { key }, Value::Mapping(map)) => map.get_mut(key.as_str()),
            (Segment::Seq { index }, Value::Sequence(seq)) => seq.get_mut(*index),
            _ => None,
        };
        let Some(next) = next else { return false };
        node = next;
    }
    match node {
        Value::Mapping(map) => map.remove(key.as_str()).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> Vec<String> {
        let (_, problems) = parse_epoch(text).unwrap();
        problems.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn every_field_problem_is_reported_with_its_path() {
        let text = "
run:
  iterations: three
  colour: blue
solver:
  answers_per_query: 4
  sampling:
    temperature: hot
update:
  kl_estimator: k9
";
        let found = problems_of(text);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(
            found[0].starts_with("run.iterations: invalid type: string \"three\""),
            "{found:#?}"
        );
        assert!(
            found[1].starts_with("run.colour: unknown field `colour`"),
            "{found:#?}"
        );
        assert!(
            found[2].starts_with("solver.sampling.temperature: invalid type"),
            "{found:#?}"
        );
        assert!(
            found[3].starts_with("update.kl_estimator: unknown variant `k9`"),
            "{found:#?}"
        );
    }

    #[test]
    fn refused_fields_fall_back_to_defaults_and_the_rest_is_kept() {
        let (config, problems) = parse_epoch("run: {iterations: x, seed: 7}\n").unwrap();
        assert_eq!(problems.len(), 1);
        let config = config.unwrap();
        assert_eq!((config.run.iterations, config.run.seed), (3, 7));
    }

    #[test]
    fn reward_fields_are_reported_one_by_one() {
        let found =
            problems_of("reward: {kind: reward_model, model: rm, batch_size: -1, extra: 1}\n");
        assert_eq!(found.len(), 2, "{found:#?}");
        assert!(found.iter().any(|p| p.contains("batch_size")), "{found:#?}");
        assert!(
            found.iter().any(|p| p.contains("unknown field `extra`")),
            "{found:#?}"
        );

        let (config, problems) = parse_epoch("reward: {kind: verifier}\n").unwrap();
        assert!(problems.is_empty());
        assert_eq!(
            config.unwrap().reward.kind,
            lsp_reward::RewardKind::Verifier
        );
    }

    #[test]
    fn empty_file_is_all_defaults_and_bad_yaml_is_a_syntax_error() {
        let (config, problems) = parse_epoch("").unwrap();
        assert!(problems.is_empty());
        assert_eq!(config.unwrap(), EpochConfig::default());
        let err = parse_epoch("run: [unclosed\n").unwrap_err();
        assert!(err.contains("line"), "{err}");
    }
}
