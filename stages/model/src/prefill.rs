//! The prompts' pass before decoding. Prompts of different lengths, left-padded to the
//! longest, would spend most of a batch's prefill on padding (the alpaca_eval prompts
//! of the rollout benchmark: half the positions at batch 32). Here prompts of similar
//! length run together, each group padded only to its own longest, and each group's
//! keys and values land in the batch's cache right-aligned, where the batch's
//! left-padding puts them: positions count real tokens only, so they are the values a
//! single padded pass would have computed.

use tch::{Device, Kind, Tensor};

use crate::generate::left_pad;
use crate::kv_cache::KvCache;
use crate::transformer::Transformer;

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

/// Runs `prompts` (none empty) into a new cache of `capacity` positions, left-padded to
/// the longest prompt as decoding expects, and returns it with the next-token logits
/// after each prompt (`[prompts, vocab]`, f32).
pub(crate) fn prefill(
    transformer: &Transformer,
    prompts: &[Vec<u32>],
    pad: u32,
    capacity: i64,
    device: Device,
) -> (KvCache, Tensor) {
    let lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0) as i64;
    let mut cache = transformer.new_cache(prompts.len() as i64, capacity);
    let mut logits: Vec<Option<Tensor>> = (0..prompts.len()).map(|_| None).collect();
    for group in length_groups(&lengths) {
        let members: Vec<Vec<u32>> = group.iter().map(|&i| prompts[i].clone()).collect();
        let (ids, key_mask) = left_pad(&members, pad, device);
        let width = ids.size()[1];
        let mut part = transformer.new_cache(members.len() as i64, width);
        let hidden = transformer.hidden(&ids, &key_mask, Some(&mut part));
        let last = transformer
            .logits(&hidden.select(1, width - 1))
            .to_kind(Kind::Float);
        let rows: Vec<i64> = group.iter().map(|&i| i as i64).collect();
        cache.place(&Tensor::from_slice(&rows).to_device(device), &part, longest);
        for (k, &i) in group.iter().enumerate() {
            logits[i] = Some(last.get(k as i64));
        }
    }
    cache.advance(longest);
    let logits: Vec<Tensor> = logits
        .into_iter()
        .map(|l| l.expect("every prompt in a group"))
        .collect();
    (cache, Tensor::stack(&logits, 0))
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
}
