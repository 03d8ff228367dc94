//! The prompts' pass before decoding. Prompts of different lengths, left-padded to the
//! longest, would spend most of a batch's prefill on padding (the alpaca_eval prompts
//! of the rollout benchmark: half the positions at batch 32). Here prompts of similar
//! length run together, each group padded only to its own longest, and each group's
//! keys and values land in the batch's cache right-aligned, where the batch's
//! left-padding puts them: positions count real tokens only, so they are the values a
//! single padded pass would have computed.

use tch::{Kind, Tensor};

use crate::generate::left_pad;
use crate::inference::InferenceWeights;
use crate::kv_cache::KvCache;

/// Most padding a group may carry, as a fraction of its positions.
const MAX_PADDING: f64 = 0.125;

/// Groups of prompt indices, each of prompts of similar length (longest first); every
/// group but a one-prompt group keeps its padding within [`MAX_PADDING`].
pub(crate) fn length_groups(lengths: &[usize]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut tokens = 0usize;
    for i in order {
        let fits = groups.last().is_some_and(|g| {
            let width = lengths[g[0]];
            let positions = width * (g.len() + 1);
            (positions - tokens - lengths[i]) as f64 <= MAX_PADDING * positions as f64
        });
        if fits {
            groups.last_mut().expect("checked").push(i);
            tokens += lengths[i];
        } else {
            groups.push(vec![i]);
            tokens = lengths[i];
        }
    }
    groups
}

/// Fewest prompt tokens that sharing a prefix must spare for [`prefill`] to run it
/// once ([`shared_prefix`]): the prefix's own pass reads every weight once more, so
/// it pays when the other prompts' copies of it were worth a pass of their own. The
/// chat header alone (SmolLM2's, 24 tokens) spares 744 of the rollout benchmark's
/// 1,455 prompt tokens at batch 32.
const MIN_SPARED: usize = 64;

/// How many tokens every prompt starts with alike (short of each prompt's last
/// token, whose logits every prompt needs of its own), when there are several
/// prompts and running that prefix once spares at least [`MIN_SPARED`] tokens; else
/// 0. Chat prompts share their template's header; the judge's prompts share the
/// header and the 7-point instructions (about half of each prompt).
pub(crate) fn shared_prefix(prompts: &[Vec<u32>]) -> usize {
    let Some((first, rest)) = prompts.split_first() else {
        return 0;
    };
    let shortest = prompts.iter().map(Vec::len).min().unwrap_or(0);
    let common = rest.iter().fold(shortest.saturating_sub(1), |n, p| {
        first
            .iter()
            .zip(p)
            .take(n)
            .take_while(|(a, b)| a == b)
            .count()
    });
    match common * rest.len() < MIN_SPARED {
        true => 0,
        false => common,
    }
}

/// The prompts' pass: a cache of every row's keys and values, the next-token logits
/// after each row (`[rows, vocab]`, f32) and the cache's key mask (`[rows, filled]`,
/// 1 = real token) that decoding extends.
#[derive(Debug)]
pub(crate) struct Prefilled {
    pub cache: KvCache,
    pub logits: Tensor,
    pub key_mask: Tensor,
}

/// Runs `prompts` (none empty) into a new cache of `capacity` positions, with
/// `repeats` rows for each prompt (prompt 0's first), sharing its pass.
///
/// A prefix every prompt shares ([`shared_prefix`]) runs once and its keys and values
/// are copied in front of each group's pass; the rest runs by groups of similar
/// length. Each row of the cache then reads `[padding][prefix][group's padding]
/// [rest]`: positions count real tokens only, so every value is what the prompt alone
/// would have given.
pub(crate) fn prefill(
    weights: &InferenceWeights<'_>,
    prompts: &[Vec<u32>],
    repeats: usize,
    pad: u32,
    capacity: i64,
) -> Prefilled {
    let transformer = weights.transformer();
    let device = transformer.kind_and_device().1;
    let shared = shared_prefix(prompts);
    let prefix = (shared > 0).then(|| {
        let (ids, key_mask) = left_pad(&[prompts[0][..shared].to_vec()], pad, device);
        let mut cache = transformer.new_cache(1, shared as i64);
        let _ = weights.forward(&ids, &key_mask, Some(&mut cache));
        cache
    });
    let lengths: Vec<usize> = prompts.iter().map(|p| p.len() - shared).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0) as i64;
    let filled = shared as i64 + longest;
    let mut cache = transformer.new_cache(prompts.len() as i64, capacity);
    let mut logits: Vec<Option<Tensor>> = (0..prompts.len()).map(|_| None).collect();
    let mut masks: Vec<Option<Tensor>> = (0..prompts.len()).map(|_| None).collect();
    for group in length_groups(&lengths) {
        let members: Vec<Vec<u32>> = group
            .iter()
            .map(|&i| prompts[i][shared..].to_vec())
            .collect();
        let (ids, rest_mask) = left_pad(&members, pad, device);
        let (n, width) = (ids.size()[0], ids.size()[1]);
        let mut part = transformer.new_cache(n, shared as i64 + width);
        if let Some(prefix) = &prefix {
            let all = Tensor::arange(n, (Kind::Int64, device));
            part.place(&all, &prefix.rows(&all.zeros_like()), shared as i64);
            part.advance(shared as i64);
        }
        let ones = Tensor::ones([n, shared as i64], (rest_mask.kind(), device));
        let key_mask = Tensor::cat(&[ones, rest_mask], 1);
        let hidden = weights.forward(&ids, &key_mask, Some(&mut part));
        let last = weights
            .logits(&hidden.select(1, width - 1))
            .to_kind(Kind::Float);
        let rows: Vec<i64> = group.iter().map(|&i| i as i64).collect();
        cache.place(&Tensor::from_slice(&rows).to_device(device), &part, filled);
        let padding = Tensor::zeros([n, longest - width], (key_mask.kind(), device));
        let key_mask = Tensor::cat(&[padding, key_mask], 1);
        for (k, &i) in group.iter().enumerate() {
            logits[i] = Some(last.get(k as i64));
            masks[i] = Some(key_mask.get(k as i64));
        }
    }
    cache.advance(filled);
    let stack = |rows: Vec<Option<Tensor>>| {
        let rows: Vec<Tensor> = rows
            .into_iter()
            .map(|r| r.expect("every prompt in a group"))
            .collect();
        Tensor::stack(&rows, 0)
    };
    let (mut logits, mut key_mask) = (stack(logits), stack(masks));
    if repeats > 1 {
        let rows = Tensor::arange(prompts.len() as i64, (Kind::Int64, device))
            .repeat_interleave_self_int(repeats as i64, 0, None);
        cache.select_rows(&rows);
        key_mask = key_mask.index_select(0, &rows);
        logits = logits.index_select(0, &rows);
    }
    Prefilled {
        cache,
        logits,
        key_mask,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_cover_every_prompt_once_and_bound_their_padding() {
        let lengths = [80, 34, 145, 39, 31, 39, 105, 18, 53, 225, 83, 67, 40, 41];
        let groups = length_groups(&lengths);
        let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
        seen.sort();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        for g in &groups {
            let width = g.iter().map(|&i| lengths[i]).max().unwrap();
            assert_eq!(lengths[g[0]], width, "longest first");
            let padding: usize = g.iter().map(|&i| width - lengths[i]).sum();
            assert!(
                padding as f64 <= MAX_PADDING * (width * g.len()) as f64,
                "{g:?}"
            );
        }
        // Similar lengths share a group: 39, 39, 40, 41 (padding 5 of 164).
        assert!(groups.iter().any(|g| g.len() >= 4));
        assert_eq!(length_groups(&[7, 7, 7]), [vec![0, 1, 2]]);
        assert!(length_groups(&[]).is_empty());
    }

    #[test]
    fn a_shared_prefix_stops_short_of_the_shortest_prompts_last_token() {
        let head: Vec<u32> = (0..40).collect();
        let with = |tail: &[u32]| [head.as_slice(), tail].concat();
        // 40 shared, then the prompts part.
        assert_eq!(
            shared_prefix(&[with(&[1, 2]), with(&[3]), with(&[1, 5, 6])]),
            40
        );
        // One prompt is all prefix: its last token stays its own.
        assert_eq!(shared_prefix(&[with(&[]), with(&[7, 8]), with(&[9])]), 39);
        // Worth a pass only when the other prompts' copies come to MIN_SPARED tokens:
        // 20 tokens shared by 2 prompts spare 20, by 5 prompts 80.
        assert_eq!(
            shared_prefix(&[head[..20].to_vec(), head[..30].to_vec()]),
            0
        );
        let short = |tail: u32| [&head[..20], &[tail]].concat();
        assert_eq!(shared_prefix(&(0..5).map(short).collect::<Vec<_>>()), 20);
        assert_eq!(shared_prefix(&(0..4).map(short).collect::<Vec<_>>()), 0);
        assert_eq!(shared_prefix(&[with(&[1])]), 0);
        assert_eq!(shared_prefix(&[]), 0);
    }
}
