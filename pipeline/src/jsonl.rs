//! JSON Lines files: the benchmark sets of `pipeline eval` and the `data:` files of
//! `pipeline run`.

use std::path::Path;

use anyhow::Context;
use serde::de::DeserializeOwned;

/// Every non-blank line of a JSONL file as `T`, with the line number in errors.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a valid record", path.display(), i + 1))
        })
        .collect()
}
