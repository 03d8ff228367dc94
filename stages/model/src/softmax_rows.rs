//! The output head's softmax on the CPU in one pass over each row of logits: the
//! target's log-prob, and for a training pass the row's entropy and its part of the
//! head's backward, `softmax − onehot(target)`, written in the products' kind.
//!
//! libtorch's operators took five passes over each `[rows, vocab]` block (log-softmax,
//! gather, exp, product, sum), two exponentials per value, an f32 softmax twice the
//! size of the bf16 one the backward's products read, and a cast of it in the
//! backward: about 0.4 s of an 8×256 SmolLM2 step on 2 threads. Here each row is
//! widened once into a scratch row the core's cache holds, with one exponential per
//! value. [`target_logprobs`](crate::logprobs) chooses this path where [`takes`]
//! does and libtorch's otherwise (a GPU); both give the same values (tested).
//!
//! The slices come from the tensors' own storage, which needs `unsafe`: see
//! [`softmax_rows`] for why it holds.

#![allow(unsafe_code)]

use multiversion::multiversion;
use tch::{Device, Kind, Tensor};

use crate::decoder::host_math::{Bf16, exp, lanes_max};
use crate::kept::mark_written;

/// Rows one thread takes at least (a hand-off costs more than a few rows).
const PER_THREAD: usize = 16;

/// Whether [`softmax_rows`] takes these: contiguous CPU logits `[n, vocab]` of f32 or
/// bf16 that record no gradient (autograd's passes keep libtorch's operators), `[n]`
/// int64 targets, and an output of the logits' shape, f32 or bf16, in
/// storage of its own.
pub(crate) fn takes(logits: &Tensor, targets: &Tensor, out: Option<&Tensor>) -> bool {
    let float = |t: &Tensor| matches!(t.kind(), Kind::Float | Kind::BFloat16);
    let cpu = |t: &Tensor| t.device() == Device::Cpu && t.is_contiguous();
    let size = logits.size();
    size.len() == 2
        && !logits.requires_grad()
        && float(logits)
        && cpu(logits)
        && targets.kind() == Kind::Int64
        && cpu(targets)
        && targets.size() == [size[0]]
        && out.is_none_or(|o| {
            float(o) && cpu(o) && o.size() == size && o.data_ptr() != logits.data_ptr()
        })
}

/// A row of values as the kernel reads and writes them.
trait Value: Copy + Send + Sync {
    fn widen(self) -> f32;
    fn round(v: f32) -> Self;
}

impl Value for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
    #[inline(always)]
    fn round(v: f32) -> Self {
        v
    }
}

impl Value for Bf16 {
    #[inline(always)]
    fn widen(self) -> f32 {
        Bf16::widen(self)
    }
    #[inline(always)]
    fn round(v: f32) -> Self {
        Bf16::round(v)
    }
}

/// The log-prob of each target under `logits` (`[n]` f32) and, with `out`, each row's
/// entropy (`[n]` f32) with `softmax − onehot(target)` written into `out`: in f32
/// from the logits' values, rounded once to `out`'s kind. Rows are shared out among
/// libtorch's thread count of threads.
///
/// # Panics
/// If [`takes`] refuses the tensors, or a target is outside the vocabulary.
pub(crate) fn softmax_rows(
    logits: &Tensor,
    targets: &Tensor,
    out: Option<&Tensor>,
) -> (Tensor, Option<Tensor>) {
    assert!(takes(logits, targets, out), "softmax_rows' tensors");
    let (n, vocab) = (logits.size()[0] as usize, logits.size()[1] as usize);
    let mut values = vec![0f32; n];
    let mut entropy = vec![0f32; n];
    let chosen = Vec::<i64>::try_from(targets).expect("int64 targets");
    assert!(
        chosen.iter().all(|&t| (0..vocab as i64).contains(&t)),
        "targets within the vocabulary of {vocab}"
    );
    if n > 0 && vocab > 0 {
        // SAFETY: `takes` checked that `logits` and `out` are contiguous CPU tensors of
        // `n × vocab` values of the kind each slice is read as (bf16 as its u16 bits),
        // in different storage (an output allocated for this pass, never a view of the
        // logits). Nothing else touches them until this returns: the caller runs no
        // other operation on them meanwhile, and the scoped threads below take
        // disjoint rows and are joined before it does.
        let logits = unsafe { RowsRef::of(logits, n * vocab) };
        let out = out.map(|o| unsafe { RowsOut::of(o) });
        let threads = (tch::get_num_threads().max(1) as usize).min(n.div_ceil(PER_THREAD));
        let per = n.div_ceil(threads);
        let stats = values.chunks_mut(per).zip(entropy.chunks_mut(per));
        std::thread::scope(|scope| {
            for (part, (values, entropy)) in stats.enumerate() {
                let rows = part * per..part * per + values.len();
                let (logits, chosen) = (logits.range(&rows, vocab), &chosen[rows.clone()]);
                let out = out.as_ref().map(|o| o.range(&rows, vocab));
                let stats = (values, entropy);
                let work = move || match (logits, out) {
                    (RowsRef::F32(x), None) => rows_of(x, chosen, None::<&mut [f32]>, stats),
                    (RowsRef::Bf16(x), None) => rows_of(x, chosen, None::<&mut [f32]>, stats),
                    (RowsRef::F32(x), Some(RowsMut::F32(o))) => rows_of(x, chosen, Some(o), stats),
                    (RowsRef::F32(x), Some(RowsMut::Bf16(o))) => rows_of(x, chosen, Some(o), stats),
                    (RowsRef::Bf16(x), Some(RowsMut::F32(o))) => rows_of(x, chosen, Some(o), stats),
                    (RowsRef::Bf16(x), Some(RowsMut::Bf16(o))) => {
                        rows_of(x, chosen, Some(o), stats)
                    }
                };
                if part + 1 == threads {
                    work();
                } else {
                    scope.spawn(work);
                }
            }
        });
        if let Some(out) = out {
            mark_written(out.tensor);
        }
    }
    let device = logits.device();
    let entropy = out.map(|_| Tensor::from_slice(&entropy).to_device(device));
    (Tensor::from_slice(&values).to_device(device), entropy)
}

/// A row-major block of logits, in their kind.
#[derive(Clone, Copy)]
enum RowsRef<'a> {
    F32(&'a [f32]),
    Bf16(&'a [Bf16]),
}

/// Some rows of the output, in its kind.
enum RowsMut<'a> {
    F32(&'a mut [f32]),
    Bf16(&'a mut [Bf16]),
}

impl<'a> RowsRef<'a> {
    /// # Safety
    /// `t` holds `len` contiguous values of its kind (f32 or bf16) that nothing
    /// writes while the slice lives.
    unsafe fn of(t: &'a Tensor, len: usize) -> Self {
        let ptr = t.data_ptr();
        // SAFETY: the caller's promise.
        unsafe {
            match t.kind() {
                Kind::Float => Self::F32(std::slice::from_raw_parts(ptr.cast(), len)),
                _ => Self::Bf16(std::slice::from_raw_parts(ptr.cast(), len)),
            }
        }
    }

    /// Rows `rows` (of `vocab` values).
    fn range(self, rows: &std::ops::Range<usize>, vocab: usize) -> Self {
        let span = rows.start * vocab..rows.end * vocab;
        match self {
            Self::F32(x) => Self::F32(&x[span]),
            Self::Bf16(x) => Self::Bf16(&x[span]),
        }
    }
}

/// The output, handed out by rows to the threads that write them.
struct RowsOut<'a> {
    tensor: &'a Tensor,
    ptr: usize,
}

impl<'a> RowsOut<'a> {
    /// # Safety
    /// `t` is contiguous, of f32 or bf16, and nothing else reads or writes it while
    /// rows handed out by [`RowsOut::range`] live.
    unsafe fn of(t: &'a Tensor) -> Self {
        Self {
            tensor: t,
            ptr: t.data_ptr() as usize,
        }
    }

    /// Rows `rows` (of `vocab` values), for the one thread that writes them.
    fn range(&self, rows: &std::ops::Range<usize>, vocab: usize) -> RowsMut<'a> {
        let (start, len) = (rows.start * vocab, rows.len() * vocab);
        assert!(rows.end as i64 * vocab as i64 <= self.tensor.numel() as i64);
        // SAFETY: `of`'s promise, the bound checked above, and callers take disjoint
        // row ranges.
        unsafe {
            match self.tensor.kind() {
                Kind::Float => RowsMut::F32(std::slice::from_raw_parts_mut(
                    (self.ptr as *mut f32).add(start),
                    len,
                )),
                _ => RowsMut::Bf16(std::slice::from_raw_parts_mut(
                    (self.ptr as *mut Bf16).add(start),
                    len,
                )),
            }
        }
    }
}

/// [`softmax_rows`] over rows of `logits` (each `chosen.len()`-th of it a row).
fn rows_of<X: Value, O: Value>(
    logits: &[X],
    chosen: &[i64],
    mut out: Option<&mut [O]>,
    (values, entropy): (&mut [f32], &mut [f32]),
) {
    let vocab = logits.len() / chosen.len();
    let mut scratch = vec![0f32; vocab];
    for (r, row) in logits.chunks_exact(vocab).enumerate() {
        let target = chosen[r] as usize;
        let (sum, spread, max) = row_exps(row, &mut scratch);
        let log_sum = sum.ln();
        values[r] = row[target].widen() - max - log_sum;
        entropy[r] = log_sum - spread / sum;
        if let Some(out) = out.as_deref_mut() {
            let out = &mut out[r * vocab..(r + 1) * vocab];
            let inv = 1.0 / sum;
            scale_into(&scratch, inv, out);
            out[target] = O::round(scratch[target] * inv - 1.0);
        }
    }
}

/// Widens `row` into `scratch` as `e^(x − max)` and returns `Σ e^(x − max)`,
/// `Σ e^(x − max)·(x − max)` and `max`.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
fn row_exps<X: Value>(row: &[X], scratch: &mut [f32]) -> (f32, f32, f32) {
    const LANES: usize = 16;
    for (s, x) in scratch.iter_mut().zip(row) {
        *s = x.widen();
    }
    let max = lanes_max(scratch);
    let (mut sums, mut spreads) = ([0f32; LANES], [0f32; LANES]);
    let mut chunks = scratch.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            let shifted = chunk[l] - max;
            let e = exp(shifted);
            chunk[l] = e;
            sums[l] += e;
            spreads[l] = e.mul_add(shifted, spreads[l]);
        }
    }
    let (mut sum, mut spread) = (sums.iter().sum::<f32>(), spreads.iter().sum::<f32>());
    for s in chunks.into_remainder() {
        let shifted = *s - max;
        *s = exp(shifted);
        sum += *s;
        spread += *s * shifted;
    }
    (sum, spread, max)
}

/// `out = scratch · inv`, rounded to `out`'s kind.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
fn scale_into<O: Value>(scratch: &[f32], inv: f32, out: &mut [O]) {
    for (o, &e) in out.iter_mut().zip(scratch) {
        *o = O::round(e * inv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logprobs::libtorch_target_logprobs;

    #[test]
    fn one_pass_rows_give_libtorchs_log_probs_entropy_and_head_gradient() {
        // Rows of a vocabulary that is not a multiple of the lanes (1003), logits of f32
        // and bf16 spread wide enough for near-certain rows, outputs of either kind;
        // more rows than one thread takes, and one row.
        tch::manual_seed(7);
        for (n, vocab) in [(37i64, 1003i64), (1, 64)] {
            for logits_kind in [Kind::Float, Kind::BFloat16] {
                let logits = (Tensor::randn([n, vocab], (Kind::Float, Device::Cpu)) * 6.0)
                    .to_kind(logits_kind);
                let targets = Tensor::randint(vocab, [n], (Kind::Int64, Device::Cpu));
                // The first row's target at p = 0.999: its entry p − 1 = −0.001 is lost
                // when p is rounded to bf16 before the one is taken off.
                let t0 = targets.int64_value(&[0]);
                let _ = logits.get(0).fill_(0.0);
                let _ = logits
                    .get(0)
                    .get(t0)
                    .fill_((999.0 * (vocab - 1) as f64).ln());
                let (want, _) = libtorch_target_logprobs(&logits, &targets, None);
                let (got, none) = softmax_rows(&logits, &targets, None);
                assert!(none.is_none());
                assert!((&got - &want).abs().max().double_value(&[]) < 1e-4);
                for out_kind in [Kind::Float, Kind::BFloat16] {
                    let fresh = || Tensor::empty([n, vocab], (out_kind, Device::Cpu));
                    let (want_out, got_out) = (fresh(), fresh());
                    let (want, want_h) =
                        libtorch_target_logprobs(&logits, &targets, Some(&want_out));
                    let version = got_out.internal_version();
                    let (got, got_h) = softmax_rows(&logits, &targets, Some(&got_out));
                    assert!(
                        got_out.internal_version() > version,
                        "version counter moved"
                    );
                    let diff = |a: &Tensor, b: &Tensor| {
                        (a.to_kind(Kind::Float) - b.to_kind(Kind::Float))
                            .abs()
                            .max()
                            .double_value(&[])
                    };
                    let tag = format!("{n}x{vocab} {logits_kind:?} into {out_kind:?}");
                    assert!(diff(&got, &want) < 1e-4, "{tag}: log-probs");
                    assert!(
                        diff(&got_h.unwrap(), &want_h.unwrap()) < 1e-3,
                        "{tag}: entropy"
                    );
                    // Each entry to within one step of the output's kind (two
                    // roundings of nearly the same value may land a step apart), past
                    // f32's rounding of p (1e-7) where one is taken off p ≈ 1.
                    let ulp = if out_kind == Kind::Float {
                        2e-5
                    } else {
                        2f64.powi(-7)
                    };
                    let want32 = want_out.to_kind(Kind::Float);
                    let err = (((got_out.to_kind(Kind::Float) - &want32).abs() - 1e-7)
                        .clamp_min(0.0)
                        / (want32.abs() + 1e-30))
                        .max()
                        .double_value(&[]);
                    assert!(err <= ulp * 1.01, "{tag}: softmax − onehot off by {err}");
                    let near_certain = got_out.get(0).double_value(&[t0]);
                    assert!(
                        (-2e-3..-5e-4).contains(&near_certain),
                        "{tag}: p − 1 = {near_certain}"
                    );
                }
            }
        }
    }
}
