//! Teacher forcing of `(prompt, completion)` pairs in packed rows, one pass.
//!
//! Pairs that share a prompt (the G answers to a query, the N queries of one
//! challenger prompt) go into one row: the prompt once, then each completion after it,
//! every completion at the positions it would have after the prompt alone and seeing
//! only the prompt and its own earlier tokens. Rows are padded to the longest, so the
//! padding is what separates rows, not what separates completions of different
//! lengths; a micro-batch of several queries' answers is one row per query and one
//! pass, so each weight's gradient is one product whatever the prompts. The values
//! and gradients are those of running every pair in full.
//!
//! A row holds at most [`ROW_TOKENS`] tokens (or its prompt and one completion when
//! that is longer): its attention is over the whole row, masked, so a longer one would
//! cost more than the padding it saves. A group past it continues in another row that
//! repeats the prompt.

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::model::LanguageModel;
use crate::transformer::Projections;

/// The most tokens in a row (unless one prompt and completion are longer).
const ROW_TOKENS: usize = 2048;

/// A row's segment id of its prompt; completions are 1, 2, …; padding is −1.
const PROMPT: i64 = 0;

/// Pair indices grouped by identical prompt, in order of first appearance.
fn prompt_groups<'a>(pairs: &[(&'a [u32], &[u32])]) -> Vec<(&'a [u32], Vec<usize>)> {
    let mut groups: Vec<(&[u32], Vec<usize>)> = Vec::new();
    for (i, (prompt, _)) in pairs.iter().enumerate() {
        match groups.iter_mut().find(|(p, _)| p == prompt) {
            Some((_, members)) => members.push(i),
            None => groups.push((prompt, vec![i])),
        }
    }
    groups
}

/// One row: a prompt, then completions (pair index and length).
struct Row<'a> {
    prompt: &'a [u32],
    completions: Vec<(usize, usize)>,
}

impl Row<'_> {
    fn len(&self) -> usize {
        self.prompt.len() + self.completions.iter().map(|(_, n)| n).sum::<usize>()
    }
}

/// The rows of `pairs`: each prompt with a completion to score, its completions after
/// it, a group that would pass [`ROW_TOKENS`] split over rows.
fn rows<'a>(pairs: &[(&'a [u32], &[u32])]) -> Vec<Row<'a>> {
    let mut rows = Vec::new();
    for (prompt, members) in prompt_groups(pairs) {
        let mut row = Row {
            prompt,
            completions: Vec::new(),
        };
        for i in members {
            let n = pairs[i].1.len();
            if n == 0 {
                continue;
            }
            if !row.completions.is_empty() && row.len() + n > ROW_TOKENS {
                rows.push(Row {
                    prompt,
                    completions: std::mem::take(&mut row.completions),
                });
            }
            row.completions.push((i, n));
        }
        if !row.completions.is_empty() {
            rows.push(row);
        }
    }
    rows
}

impl LanguageModel {
    /// Final hidden states at every position that predicts a completion token,
    /// `[total, hidden]` in pair order, from one pass over packed rows. At least one
    /// pair has a completion token; none has an empty prompt.
    pub(crate) fn packed_hidden(
        &self,
        maps: &impl Projections,
        pairs: &[(&[u32], &[u32])],
    ) -> Result<Tensor> {
        let rows = rows(pairs);
        let width = rows.iter().map(Row::len).max().unwrap_or(0);
        let cells = rows.len() * width;
        let mut ids = vec![self.pad_token_id() as i64; cells];
        let mut positions = vec![0i64; cells];
        let mut segments = vec![-1i64; cells];
        // The flat index of the position that predicts each pair's first token.
        let mut starts = vec![None; pairs.len()];
        for (r, row) in rows.iter().enumerate() {
            let base = r * width;
            let p = row.prompt.len();
            for (j, &t) in row.prompt.iter().enumerate() {
                ids[base + j] = i64::from(t);
                positions[base + j] = j as i64;
                segments[base + j] = PROMPT;
            }
            let mut at = base + p;
            for (k, &(i, n)) in row.completions.iter().enumerate() {
                for (j, &t) in pairs[i].1.iter().enumerate() {
                    ids[at + j] = i64::from(t);
                    positions[at + j] = (p + j) as i64;
                    segments[at + j] = k as i64 + 1;
                }
                starts[i] = Some((base + p - 1, at));
                at += n;
            }
        }
        // Completion token j > 0 is predicted by the completion's position j − 1.
        let mut predictors: Vec<i64> = Vec::new();
        for (i, start) in starts.iter().enumerate() {
            if let Some((prompt_last, at)) = *start {
                predictors.push(prompt_last as i64);
                predictors.extend((at..at + pairs[i].1.len() - 1).map(|x| x as i64));
            }
        }
        let device = self.device();
        let shape = [rows.len() as i64, width as i64];
        let tensor = |v: &[i64]| Tensor::from_slice(v).view(shape).to_device(device);
        // Rows of one pair each, none padded: plain causal attention.
        let plain = rows
            .iter()
            .all(|r| r.completions.len() == 1 && r.len() == width);
        let visible = (!plain).then(|| {
            let segments = tensor(&segments);
            let index = Tensor::arange(width as i64, (Kind::Int64, device));
            let causal = index.view([1, 1, -1]).le_tensor(&index.view([1, -1, 1]));
            let (query, key) = (segments.unsqueeze(2), segments.unsqueeze(1));
            // A token sees its row's prompt and its own segment, up to itself (a
            // padding position sees the prompt, so no row of the mask is empty).
            causal
                .logical_and(&key.ge(PROMPT))
                .logical_and(&key.eq(PROMPT).logical_or(&key.eq_tensor(&query)))
                .unsqueeze(1)
        });
        let hidden_size = self.spec().hidden_size;
        let hidden = self.transformer().forward_packed(
            maps,
            &tensor(&ids),
            &tensor(&positions),
            visible.as_ref(),
        );
        let predictors = Tensor::from_slice(&predictors).to_device(device);
        Ok(hidden.view([-1, hidden_size]).index_select(0, &predictors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_hold_each_prompt_once_and_split_past_the_cap() {
        let (a, b) = (vec![1u32; 5], vec![2u32; 3]);
        let long = vec![7u32; ROW_TOKENS - 6];
        let short = vec![8u32; 4];
        let empty: Vec<u32> = Vec::new();
        let pairs: Vec<(&[u32], &[u32])> = vec![
            (&a, &short),
            (&b, &short),
            (&a, &long),
            (&b, &empty),
            (&a, &short),
            (&a, &empty),
        ];
        let shape: Vec<(usize, Vec<usize>)> = rows(&pairs)
            .iter()
            .map(|r| (r.prompt.len(), r.completions.iter().map(|c| c.0).collect()))
            .collect();
        // a + short + long would pass the cap: a again for the long one and the next.
        assert_eq!(
            shape,
            [(5, vec![0]), (5, vec![2]), (5, vec![4]), (3, vec![1])]
        );
        // A prompt whose every completion is empty gets no row.
        assert!(rows(&[(&a, &empty)]).is_empty());
    }
}
