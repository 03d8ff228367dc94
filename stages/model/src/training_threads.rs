//! A training step's passes on several threads of one process, one libtorch thread
//! each: data parallelism over a micro-batch's sequences instead of libtorch's
//! intra-op pool over each operator.
//!
//! On 2 cores a step of 8 × 256 tokens in two processes of one thread and 4
//! sequences each ran 16% faster than one process of two threads over all 8: the
//! pool's threads wait for each other at the end of every operator (OpenMP's barrier
//! took ~12% of the step) and the many small element-wise operators split badly.
//! Here each thread runs its share's passes through autograd with a view of the
//! same weights and this step's casts (shared, no copy), and the gradients meet in
//! the weights' own: autograd's accumulation into a leaf is locked, and the head's
//! backward, written out in `training.rs`, adds into a buffer the threads share
//! under a lock of its own, added to the master's gradient once they are done.

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use tch::{Device, Tensor};

use crate::config::Parallelism;
use crate::grads::grad_or_zeros;
use crate::model::LanguageModel;
use crate::operator_profile::ThreadState;
use crate::training::HeadGrad;
use crate::training_weights::TrainingWeights;

impl LanguageModel {
    /// The threads a training pass over sequences of `tokens` tokens each is split
    /// over, with this thread's libtorch pool as the worker's cores: on the CPU, one
    /// per core (at most one per sequence) where `parallelism` splits the micro-batch
    /// ([`Parallelism::splits`]), else one.
    pub fn training_shares(&self, parallelism: Parallelism, tokens: &[usize]) -> usize {
        let threads = tch::get_num_threads().max(1) as usize;
        let total = tokens.iter().sum();
        let bf16_products = self.transformer().fused_layers();
        match self.device() {
            Device::Cpu if parallelism.splits(total, threads, bf16_products) => {
                threads.min(tokens.len()).max(1)
            }
            _ => 1,
        }
    }

    /// A micro-batch of sequences of `tokens` tokens each cut into the runs
    /// [`LanguageModel::train_in_parallel`] takes as shares: one per thread of
    /// [`LanguageModel::training_shares`], balanced by tokens.
    pub fn training_split(&self, parallelism: Parallelism, tokens: &[usize]) -> Vec<Range<usize>> {
        split_by_weight(tokens, self.training_shares(parallelism, tokens))
    }

    /// Runs `pass` once per share, each on a thread of its own with one libtorch
    /// thread, all with this step's `weights` (shared): what a pass's backward sends
    /// reaches the weights' gradients as on one thread. A single share runs here, on
    /// this thread's pool. Returns the passes' results in the shares' order, or the
    /// first share's error.
    pub fn train_in_parallel<S, R, E>(
        &self,
        weights: &TrainingWeights<'_>,
        shares: Vec<S>,
        pass: impl Fn(&LanguageModel, &TrainingWeights<'_>, S) -> Result<R, E> + Sync,
    ) -> Result<Vec<R>, E>
    where
        S: Send,
        R: Send,
        E: Send,
    {
        if shares.len() <= 1 {
            return shares.into_iter().map(|s| pass(self, weights, s)).collect();
        }
        let master = weights.head_master();
        let buffer = master.requires_grad().then(|| {
            let zeros = tch::no_grad(|| master.zeros_like());
            Arc::new(Mutex::new(zeros))
        });
        let head_grad = match &buffer {
            Some(buffer) => HeadGrad::Shared(Arc::clone(buffer)),
            None => HeadGrad::Master,
        };
        // Views and casts are made here: a tensor handle may move to another thread
        // but not be shared with it.
        let jobs: Vec<_> = shares
            .into_iter()
            .map(|share| (self.view(true), weights.share_casts(), share))
            .collect();
        let before = tch::get_num_threads();
        let state = ThreadState::capture();
        let state = &state;
        let pass = &pass;
        let results: Vec<Result<R, E>> = std::thread::scope(|scope| {
            let handles: Vec<_> = jobs
                .into_iter()
                .map(|(model, casts, share)| {
                    let head_grad = head_grad.clone();
                    scope.spawn(move || {
                        // OpenMP's thread count is per thread: this one's only.
                        tch::set_num_threads(1);
                        let weights =
                            TrainingWeights::on_thread(model.transformer(), casts, head_grad);
                        state.within(|| pass(&model, &weights, share))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        // MKL's count is the process's: this thread's pool back as it was.
        tch::set_num_threads(before);
        drop(head_grad);
        if let Some(buffer) = buffer {
            let sum = Arc::into_inner(buffer)
                .expect("the threads are done")
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner);
            add_into(&grad_or_zeros(master), &sum);
        }
        results.into_iter().collect()
    }
}

/// `grad += sum`, without gradient.
fn add_into(grad: &Tensor, sum: &Tensor) {
    tch::no_grad(|| {
        let _ = grad.shallow_clone().g_add_(sum);
    });
}

/// `weights` (each sequence's tokens, in order) cut into `shares` contiguous runs of
/// near-equal sums: each cut where the cumulative sum is nearest its share of the
/// total, each run with at least one item while there are enough (with fewer items
/// than shares, the last runs are empty).
fn split_by_weight(weights: &[usize], shares: usize) -> Vec<Range<usize>> {
    let shares = shares.max(1);
    let total: usize = weights.iter().sum();
    let mut runs = Vec::with_capacity(shares);
    let (mut start, mut sum) = (0, 0);
    for k in 1..shares {
        let target = total * k / shares;
        let mut end = start;
        // One item, then the next while its middle lies before the target and an
        // item is left for each later run.
        while end < weights.len() {
            let w = weights[end];
            let room = weights.len() - end > shares - k;
            if end > start && (!room || 2 * sum + w > 2 * target) {
                break;
            }
            sum += w;
            end += 1;
        }
        runs.push(start..end);
        start = end;
    }
    runs.push(start..weights.len());
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Precision;
    use crate::error::ModelError;
    use crate::lora::LoraConfig;
    use crate::model::LoadOptions;
    use tch::Kind;

    /// The fixture `name`, trainable, its products bf16 under `MixedBf16` on any CPU.
    fn trainable(name: &str, precision: Precision) -> LanguageModel {
        let fixtures =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        let options = LoadOptions {
            trainable: true,
            precision,
            emulate_bf16: true,
            ..LoadOptions::default()
        };
        LanguageModel::load(&fixtures.join(name), options).unwrap()
    }

    /// Every trainable weight's gradient after one step's passes over five sequences
    /// of different lengths split into `shares` threads.
    fn gradients(
        name: &str,
        precision: Precision,
        lora: bool,
        shares: usize,
    ) -> Vec<(String, Tensor)> {
        let mut model = trainable(name, precision);
        if lora {
            model.attach_adapter(&LoraConfig::default(), 7).unwrap();
            // A fresh adapter's B is zero: give it values so that A has a gradient.
            // Drawn from no random generator: libtorch's global one is shared with the
            // tests running beside this one, which made the two models' factors differ.
            for (_, t) in model.trainable_variables() {
                let n = t.numel() as i64;
                let values = (Tensor::arange(n, (Kind::Float, t.device())) * 0.37).sin() * 0.02;
                tch::no_grad(|| {
                    t.shallow_clone().copy_(&values.view(t.size().as_slice()));
                });
            }
        }
        let seqs: Vec<Vec<u32>> = (0..5u32)
            .map(|i| (0..6 + 3 * i).map(|t| (t * 37 + i * 11) % 400).collect())
            .collect();
        let pairs: Vec<(&[u32], &[u32])> = seqs.iter().map(|s| (&s[..2], &s[2..])).collect();
        let lengths: Vec<usize> = seqs.iter().map(Vec::len).collect();
        let weights = model.training_weights();
        let runs: Vec<_> = split_by_weight(&lengths, shares)
            .into_iter()
            .map(|run| &pairs[run])
            .collect();
        model
            .train_in_parallel(&weights, runs, |model, weights, share| {
                let pass = model.training_logprobs(weights, share)?;
                // A loss whose gradient differs per token (by its id, whatever the split).
                let ids: Vec<f32> = share
                    .iter()
                    .flat_map(|(_, c)| c.iter().map(|&t| t as f32))
                    .collect();
                let coefficients = Tensor::from_slice(&ids).cos();
                (&pass.logprobs.values * coefficients)
                    .sum(Kind::Float)
                    .backward();
                pass.backward();
                Ok::<_, ModelError>(())
            })
            .unwrap();
        drop(weights);
        model
            .trainable_variables()
            .into_iter()
            .map(|(n, t)| (n, t.grad().copy()))
            .collect()
    }

    #[test]
    fn auto_splits_only_long_micro_batches_under_bf16_products() {
        let mixed = trainable("tiny-llama", Precision::MixedBf16);
        let f32 = trainable("tiny-llama", Precision::F32);
        tch::set_num_threads(2);
        let shares = |model: &LanguageModel, parallelism, len: usize, n: usize| {
            model.training_shares(parallelism, &vec![len; n])
        };
        use Parallelism::{Auto, Operators, Sequences};
        // 1024 tokens a thread or more: 8 × 256 over two threads; not 4 × 256, 2 × 512
        // (1024 in all) or 4 × 80.
        assert_eq!(shares(&mixed, Auto, 256, 8), 2);
        assert_eq!(shares(&mixed, Auto, 256, 4), 1);
        assert_eq!(shares(&mixed, Auto, 512, 2), 1);
        assert_eq!(shares(&mixed, Auto, 80, 4), 1);
        assert_eq!(shares(&f32, Auto, 256, 8), 1);
        // The named choices whatever the size; never more threads than sequences.
        assert_eq!(shares(&mixed, Operators, 256, 8), 1);
        assert_eq!(shares(&f32, Sequences, 80, 4), 2);
        assert_eq!(shares(&mixed, Sequences, 4096, 1), 1);
    }

    #[test]
    fn threads_give_the_gradients_of_one() {
        // tiny-llama ties the head to the embedding (the head's buffer and autograd's
        // accumulation meet in one gradient); tiny-llama3 does not.
        for name in ["tiny-llama", "tiny-llama3"] {
            for (precision, lora) in [
                (Precision::F32, false),
                (Precision::MixedBf16, false),
                (Precision::F32, true),
            ] {
                let one = gradients(name, precision, lora, 1);
                for shares in [2, 3] {
                    let many = gradients(name, precision, lora, shares);
                    assert_eq!(one.len(), many.len());
                    // f32: the sums' order only; bf16: each share's gradient is
                    // rounded to bf16 on its own before the f32 master's.
                    let tolerance = match precision {
                        Precision::F32 => 1e-5,
                        _ => 2e-2,
                    };
                    for ((param, a), (_, b)) in one.iter().zip(&many) {
                        assert!(a.defined() && b.defined(), "{name} {param}: no gradient");
                        let scale = a.abs().max().double_value(&[]);
                        assert!(scale > 0.0, "{name} {param}: zero gradient");
                        let diff = (a - b).abs().max().double_value(&[]);
                        assert!(
                            diff <= tolerance * scale,
                            "{name} {precision:?} lora {lora} {shares} threads {param}: {diff} (scale {scale})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn splits_are_contiguous_balanced_and_cover_every_item() {
        assert_eq!(split_by_weight(&[5, 5, 5, 5], 2), [0..2, 2..4]);
        // 100 | 10 10 10 70 against a half of 100: the long one alone.
        assert_eq!(split_by_weight(&[100, 10, 10, 10, 70], 2), [0..1, 1..5]);
        assert_eq!(
            split_by_weight(&[1, 1, 1, 1, 1, 1, 1], 3),
            [0..2, 2..4, 4..7]
        );
        // One item per run at most: later runs empty, none lost.
        assert_eq!(split_by_weight(&[3], 2), [0..1, 1..1]);
        assert_eq!(split_by_weight(&[], 2), [0..0, 0..0]);
        // Never all in the first run while others could take some.
        assert_eq!(split_by_weight(&[0, 0, 9], 3), [0..1, 1..2, 2..3]);
        assert_eq!(split_by_weight(&[4, 4], 1), vec![0..2]);
    }
}
