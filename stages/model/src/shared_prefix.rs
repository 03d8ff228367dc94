//! Teacher forcing when several completions share one prompt (the G answers to a
//! query, the N queries of one challenger prompt): the prompt runs once, its keys and
//! values are repeated for each completion through the KV cache, and the completions
//! run after it. Gradients reach the prompt's positions through the repeated cache, so
//! the result — values and gradients — is that of running every pair in full, at the
//! cost of one prompt per group instead of one per pair.

use tch::{Kind, Tensor};

use crate::error::Result;
use crate::logprobs::right_pad;
use crate::model::LanguageModel;
use crate::transformer::Projections;

/// Pair indices grouped by identical prompt, in order of first appearance.
pub(crate) fn prompt_groups<'a>(pairs: &[(&'a [u32], &[u32])]) -> Vec<(&'a [u32], Vec<usize>)> {
    let mut groups: Vec<(&[u32], Vec<usize>)> = Vec::new();
    for (i, (prompt, _)) in pairs.iter().enumerate() {
        match groups.iter_mut().find(|(p, _)| p == prompt) {
            Some((_, members)) => members.push(i),
            None => groups.push((prompt, vec![i])),
        }
    }
    groups
}

impl LanguageModel {
    /// Final hidden states at every position that predicts a completion token,
    /// `[total, hidden]` in pair order, each distinct prompt computed once. `None`
    /// when no two pairs share a prompt (the plain batched pass is then as cheap).
    pub(crate) fn shared_prefix_hidden(
        &self,
        maps: &impl Projections,
        pairs: &[(&[u32], &[u32])],
    ) -> Result<Option<Tensor>> {
        let groups = prompt_groups(pairs);
        if groups.len() == pairs.len() {
            return Ok(None);
        }
        let device = self.device();
        let transformer = self.transformer();
        let hidden_size = self.spec().hidden_size;
        let ones = |rows: i64, cols: i64| Tensor::ones([rows, cols], (Kind::Int64, device));
        let mut per_pair: Vec<Option<Tensor>> = (0..pairs.len()).map(|_| None).collect();
        for (prompt, members) in groups {
            let p = prompt.len() as i64;
            let longest = members.iter().map(|&i| pairs[i].1.len()).max().unwrap_or(0) as i64;
            if longest == 0 {
                for &i in &members {
                    per_pair[i] = Some(Tensor::zeros([0, hidden_size], (Kind::Float, device)));
                }
                continue;
            }
            let mut cache = transformer.new_cache(1, p + longest);
            let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
            let ids = Tensor::from_slice(&ids).view([1, p]).to_device(device);
            let prefix = transformer.forward_with(maps, &ids, &ones(1, p), Some(&mut cache));
            // The prompt's last position predicts every completion's first token.
            let last = prefix.select(1, p - 1);
            let g = members.len() as i64;
            cache.select_rows(&Tensor::zeros([g], (Kind::Int64, device)));
            let completions: Vec<Vec<i64>> = members
                .iter()
                .map(|&i| pairs[i].1.iter().map(|&t| i64::from(t)).collect())
                .collect();
            let (cids, cmask) = right_pad(&completions, self.pad_token_id() as i64, device);
            let key_mask = Tensor::cat(&[ones(g, p), cmask], 1);
            let hidden = transformer.forward_with(maps, &cids, &key_mask, Some(&mut cache));
            for (k, &i) in members.iter().enumerate() {
                let n = pairs[i].1.len() as i64;
                per_pair[i] = Some(if n == 0 {
                    last.narrow(0, 0, 0)
                } else {
                    Tensor::cat(
                        &[
                            last.shallow_clone(),
                            hidden.get(k as i64).narrow(0, 0, n - 1),
                        ],
                        0,
                    )
                });
            }
        }
        let rows: Vec<Tensor> = per_pair
            .into_iter()
            .map(|t| t.expect("every pair is in a group"))
            .collect();
        Ok(Some(Tensor::cat(&rows, 0)))
    }
}
