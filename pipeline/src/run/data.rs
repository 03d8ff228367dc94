//! Queries from a data set, for mode `grpo`: a JSONL or Parquet file with an
//! instruction column (and optionally a reference answer), taken N per iteration in a
//! seeded order.

use std::path::Path;

use anyhow::{Context as _, bail};
use arrow::array::{Array, StringArray};
use lsp_model::LanguageModel;
use lsp_schemas::{QueryBatch, QueryRow, SlotBatch, TypedBatch, read_batches};
use lsp_stage::{Context, Stage};

use crate::config::DataConfig;

/// The data set, in a seeded order.
#[derive(Debug)]
pub struct DataQueries {
    name: String,
    items: Vec<(String, Option<String>)>,
    /// Queries per iteration (N).
    per_iteration: usize,
}

fn read_jsonl(
    path: &Path,
    prompt: &str,
    answer: Option<&str>,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let rows: Vec<serde_json::Value> = crate::jsonl::read_jsonl(path)?;
    rows.into_iter()
        .enumerate()
        .map(|(i, row)| {
            let Some(p) = row[prompt].as_str() else {
                bail!(
                    "{} row {}: no string field `{prompt}`",
                    path.display(),
                    i + 1
                );
            };
            let a = answer.and_then(|a| row[a].as_str()).map(str::to_string);
            Ok((p.to_string(), a))
        })
        .collect()
}

fn read_parquet_file(
    path: &Path,
    prompt: &str,
    answer: Option<&str>,
) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let mut items = Vec::new();
    for batch in read_batches(path)? {
        let column = |name: &str| -> anyhow::Result<StringArray> {
            let c = batch
                .column_by_name(name)
                .with_context(|| format!("{}: no column `{name}`", path.display()))?;
            let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8)?;
            Ok(c.as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8")
                .clone())
        };
        let prompts = column(prompt)?;
        let answers = answer.map(column).transpose()?;
        for i in 0..prompts.len() {
            let a = answers
                .as_ref()
                .filter(|a| a.is_valid(i))
                .map(|a| a.value(i).to_string());
            items.push((prompts.value(i).to_string(), a));
        }
    }
    Ok(items)
}

impl DataQueries {
    /// Reads the data set and orders it by `seed`; each iteration takes the next
    /// `per_iteration`.
    pub fn load(config: &DataConfig, seed: u64, per_iteration: usize) -> anyhow::Result<Self> {
        let answer = config.answer_column.as_deref();
        let mut items = match config.path.extension().and_then(|e| e.to_str()) {
            Some("parquet") => read_parquet_file(&config.path, &config.prompt_column, answer)?,
            _ => read_jsonl(&config.path, &config.prompt_column, answer)?,
        };
        if items.is_empty() {
            bail!("{} has no rows", config.path.display());
        }
        lsp_model::Rng::new(seed).shuffle(&mut items);
        let name = config
            .path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self {
            name,
            items,
            per_iteration,
        })
    }
}

/// The queries of the input's slots: query k of `iteration` (1-based) is item
/// (iteration − 1)·N + k of the seeded order, cycling through the data.
impl Stage<LanguageModel> for DataQueries {
    const NAME: &'static str = "challenger";
    const STREAM: u64 = 1;
    type Input = SlotBatch;
    type Output = QueryBatch;
    type Error = anyhow::Error;

    fn process(
        &mut self,
        cx: &mut Context<'_, LanguageModel>,
        slots: &SlotBatch,
    ) -> anyhow::Result<QueryBatch> {
        let iteration = cx.iteration;
        let start = iteration.saturating_sub(1) as usize * self.per_iteration;
        let rows: Vec<QueryRow> = slots
            .query_ids()?
            .into_iter()
            .map(|k| {
                let (text, answer) = &self.items[(start + k as usize) % self.items.len()];
                QueryRow {
                    iteration,
                    query_id: k,
                    prompt_id: self.name.clone(),
                    prompt_version: "data".to_string(),
                    prompt_token_ids: Vec::new(),
                    query_text: text.clone(),
                    query_token_ids: Vec::new(),
                    query_token_logprobs: Vec::new(),
                    query_finish_reason: "data".to_string(),
                    query_status: "ok".to_string(),
                    reference_answer: answer.clone(),
                }
            })
            .collect();
        Ok(QueryBatch::from_rows(&rows)?)
    }
}
