//! The prompts' pass on the panels: every prompt token runs through the same blocks
//! as a decoding step ([`super::blocks`]), as rows of the products, with its key and
//! value written at its place in the host cache and its attention causal over its
//! own sequence. There is no padding to compute: the tokens of all prompts are
//! concatenated and cut into parts of [`PART`] rows, in order, so that a token's
//! earlier positions are in the cache before it attends.
//!
//! Its products then run on the panels' kernels, which outrun oneDNN's on a prompt's
//! many rows as on a step's few, and leave no cache to copy to the host afterwards;
//! [`super::PromptPass`] says where it runs, with the figures.

use std::iter::repeat_n;
use std::sync::Arc;

use tch::Tensor;

use super::PackedModel;
use super::host_kv::{CacheShape, HostKv, Place};
use crate::prefill::shared_prefix;
use crate::transformer::Transformer;

/// Tokens that run through every block together: a few runs of the panels' rows
/// ([`super::panels::MAX_ROWS`]), small enough that a part's activations stay in
/// the caches (SmolLM2's gate | up: 256 × 3,072 values, 3 MB).
const PART: usize = 256;

/// One prompt token: its id and its place in the cache, whose slot is its position
/// (the rotation's).
#[derive(Debug, Clone, Copy)]
struct Token {
    id: u32,
    place: Place,
}

/// The prompts' pass: the cache of every row and the next-token logits after each
/// row (`[rows, vocab]`).
#[derive(Debug)]
pub(super) struct Prefilled {
    pub cache: HostKv,
    pub logits: Tensor,
}

/// Runs `prompts` (none empty) on `model`'s panels into a new host cache of
/// `capacity` positions, with `repeats` rows for each prompt (prompt 0's first)
/// sharing its pass.
///
/// A prefix every prompt shares ([`shared_prefix`]) runs once, as sequence 0, and is
/// copied to the others; each row of the cache then reads `[prefix][rest]`, with no
/// padding (the cache's layout, [`HostKv`]).
pub(super) fn prefill(
    model: &PackedModel,
    transformer: &Transformer,
    prompts: &[Vec<u32>],
    repeats: usize,
    capacity: usize,
) -> Prefilled {
    let spec = transformer.spec();
    let shared = shared_prefix(prompts);
    let batch = prompts.len();
    let mut cache = HostKv::empty(
        CacheShape {
            layers: model.layers.len(),
            batch,
            kv_heads: spec.num_kv_heads as usize,
            head_dim: spec.head_dim as usize,
            capacity,
        },
        super::cache_kind(transformer),
        Arc::clone(&model.team),
    );
    if shared > 0 {
        let prefix: Vec<Token> = (0..shared)
            .map(|slot| Token {
                id: prompts[0][slot],
                place: Place { row: 0, slot },
            })
            .collect();
        for part in prefix.chunks(PART) {
            let _ = run(model, transformer, part, &mut cache);
        }
        cache.copy_first(shared);
    }
    let tokens: Vec<Token> = prompts
        .iter()
        .enumerate()
        .flat_map(|(row, prompt)| {
            prompt
                .iter()
                .enumerate()
                .skip(shared)
                .map(move |(slot, &id)| Token {
                    id,
                    place: Place { row, slot },
                })
        })
        .collect();
    let hidden = spec.hidden_size as usize;
    let mut last = vec![0f32; batch * hidden];
    for part in tokens.chunks(PART) {
        let x = run(model, transformer, part, &mut cache);
        for (token, x) in part.iter().zip(x.chunks_exact(hidden)) {
            if token.place.slot == prompts[token.place.row].len() - 1 {
                last[token.place.row * hidden..][..hidden].copy_from_slice(x);
            }
        }
    }
    cache.fill(prompts.iter().map(Vec::len).collect());
    let normed = model.final_norm.forward(&last);
    let logits = Tensor::from_slice(&model.head.apply(&normed, batch)).view([batch as i64, -1]);
    if repeats <= 1 {
        return Prefilled { cache, logits };
    }
    let rows: Vec<usize> = (0..batch).flat_map(|r| repeat_n(r, repeats)).collect();
    cache.select_rows(&rows);
    let index = Tensor::from_slice(&rows.iter().map(|&r| r as i64).collect::<Vec<_>>());
    Prefilled {
        cache,
        logits: logits.index_select(0, &index),
    }
}

/// `tokens` through every block: their hidden states before the final norm.
fn run(
    model: &PackedModel,
    transformer: &Transformer,
    tokens: &[Token],
    cache: &mut HostKv,
) -> Vec<f32> {
    let n = tokens.len() as i64;
    let ids: Vec<i64> = tokens.iter().map(|t| i64::from(t.id)).collect();
    let positions: Vec<i64> = tokens.iter().map(|t| t.place.slot as i64).collect();
    let places: Vec<Place> = tokens.iter().map(|t| t.place).collect();
    model.blocks(
        transformer,
        &Tensor::from_slice(&ids).view([n, 1]),
        &Tensor::from_slice(&positions).view([n, 1]),
        &places,
        cache,
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tch::{Kind, Tensor};

    use super::super::{CpuDecoder, PromptPass};
    use crate::decoder::Decoder;
    use crate::inference::InferenceWeights;
    use crate::{LanguageModel, LoadOptions, Precision, RolloutWeights};

    /// Prompts of 1 to 70 tokens (past a [`super::PART`] of rows in all), or
    /// sharing their first 40 (the judge's case: the prefix runs once).
    fn prompts(shared: bool) -> Vec<Vec<u32>> {
        let head: Vec<u32> = (0..40).map(|i| 7 + i * 3).collect();
        (0..9u32)
            .map(|p| {
                let tail = (0..1 + (p * 37) % 70).map(|i| (p * 31 + i * 17) % 390 + 3);
                match shared {
                    true => head
                        .iter()
                        .copied()
                        .chain(tail.take(1 + p as usize))
                        .collect(),
                    false => tail.collect(),
                }
            })
            .collect()
    }

    /// Largest |a − b| over the largest |b|.
    fn relative(a: &Tensor, b: &Tensor) -> f64 {
        let diff = (a - b).abs().max().double_value(&[]);
        diff / b.abs().max().double_value(&[])
    }

    /// The pass on the panels computes what libtorch's does: with f32 panels, the
    /// same logits after the prompts and at every step after them (so the same cache,
    /// as the steps attend over it) to f32's rounding, with and without a shared
    /// prefix, with repeated rows, and after rows are dropped; with `w8a8` or `bf16`
    /// panels (and their bf16 cache), close to them.
    #[test]
    fn the_panels_run_the_prompts_of_f32_and_bf16_rollout_panels_only() {
        use PromptPass::{Libtorch, Panels};
        use RolloutWeights::{Bf16, Int8, Products, W8a8};
        for (weights, products, pass) in [
            (Products, Kind::Float, Panels),
            (Bf16, Kind::Float, Panels),
            (Bf16, Kind::BFloat16, Panels),
            (Products, Kind::BFloat16, Libtorch),
            (Int8, Kind::Float, Libtorch),
            (W8a8, Kind::Float, Libtorch),
            (W8a8, Kind::BFloat16, Libtorch),
        ] {
            assert_eq!(
                PromptPass::choose(weights, products),
                pass,
                "{weights:?} {products:?}"
            );
        }
    }

    #[test]
    fn the_panels_prompts_pass_gives_libtorchs_logits_and_cache() {
        tch::set_num_threads(2);
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for name in ["tiny-llama", "tiny-qwen2"] {
            for (weights, precision, tolerance) in [
                (RolloutWeights::Products, Precision::F32, 2e-5),
                (RolloutWeights::W8a8, Precision::F32, 0.1),
                (RolloutWeights::W8a8, Precision::MixedBf16, 0.1),
                (RolloutWeights::Bf16, Precision::F32, 0.1),
            ] {
                let options = LoadOptions {
                    rollout_weights: weights,
                    precision,
                    emulate_bf16: true,
                    ..LoadOptions::default()
                };
                let model = LanguageModel::load(&fixtures.join(name), options).unwrap();
                let t = model.transformer();
                for (shared, repeats) in [(false, 1), (true, 1), (false, 3)] {
                    let prompts = prompts(shared);
                    let at = format!("{name} {weights:?} {precision:?} shared {shared} x{repeats}");
                    let capacity = prompts.iter().map(Vec::len).max().unwrap() as i64 + 8;
                    // The same tokens for both (each pass's own argmax may differ
                    // at near-ties), rows 1 and 4 and beyond dropped after 3 steps.
                    let run = |pass| {
                        let mut decoder = CpuDecoder::new(InferenceWeights::kept(t)).unwrap();
                        let mut logits =
                            vec![decoder.prefill_on(pass, &prompts, repeats, 0, capacity)];
                        // w8a8 keeps a bf16 cache, f32 panels an f32 one, either way.
                        let kept = decoder.state().cache.kind();
                        match (weights, precision) {
                            (RolloutWeights::W8a8 | RolloutWeights::Bf16, _) => {
                                assert_eq!(kept, Kind::BFloat16)
                            }
                            (_, Precision::F32) => assert_eq!(kept, Kind::Float),
                            _ => {}
                        }
                        let mut rows = (prompts.len() * repeats) as i64;
                        for step in 0..6 {
                            if step == 3 {
                                decoder.retain(&[0, 2, 3]);
                                rows = 3;
                            }
                            let tokens = Tensor::arange(rows, (Kind::Int64, tch::Device::Cpu));
                            logits.push(decoder.step(&(tokens * 11 + 5 + step)));
                        }
                        logits
                    };
                    let (libtorch, panels) = (run(PromptPass::Libtorch), run(PromptPass::Panels));
                    for (i, (a, b)) in panels.iter().zip(&libtorch).enumerate() {
                        assert_eq!(a.size(), b.size(), "{at}, step {i}");
                        assert_eq!(a.kind(), Kind::Float);
                        let diff = relative(a, b);
                        assert!(diff < tolerance, "{at}, step {i}: {diff}");
                    }
                }
            }
        }
    }
}
