//! Attention of one (sequence, key/value head) group over the host cache's layout
//! ([`super::host_kv`]): scores over keys laid by dimension, a softmax, a sum over
//! values laid by position, on the CPU's widest build.

use multiversion::multiversion;

use super::host_math::{exp, lanes_max, lanes_sum};
use super::isa::Isa;
use super::panels::PanelValue;

/// Positions a block of the first pass's sums spans at most: its scores run over the
/// filled positions rounded up to a multiple of this, within the cache's capacity,
/// whose positions past the filled ones hold zeros (a padded capacity leaves room).
/// Summing one position at a time for the last few (up to 7 of every 8) took about
/// as long as a block of 64 did (on a Zen 2, w8a8 rollouts: +7% at batch 1, +19% at
/// 8).
pub(super) const SPAN_STEP: usize = 16;

/// Positions the first pass sums for `total` filled ones in a cache of `capacity`:
/// `total` rounded up to [`SPAN_STEP`], at most `capacity`.
pub(super) fn span(total: usize, capacity: usize) -> usize {
    total.next_multiple_of(SPAN_STEP).min(capacity)
}

/// One (sequence, key/value head) group: `queries` (`heads × d`) over `keys`
/// (`d × capacity`, the first `total` columns filled) and `values` (`total × d`),
/// every position the sequence's own (no padding: [`super::host_kv::HostKv`]);
/// `scores` is scratch (`heads × span`: the first pass's sums past `total`, over
/// unfilled positions, are computed and never read), `out` is `heads × d`; on the
/// build `isa` (one the CPU runs).
///
/// Both passes keep a block of their results in registers over the whole sum, where
/// adding into the scores' and outputs' memory once per term made them store-bound
/// (a sixth of a batch-32 step on a Zen 3), and take up to [`HEADS`] of the group's
/// query heads at once, so that each key and value loaded serves all of them (one
/// pass over the cache per group instead of one per head: the cache of a batch of 8
/// sequences of 300 positions is 3.7 MB a layer, beyond L2). The terms of each sum
/// are added in the same order as one head at a time and one term at a time did:
/// the same results, bit for bit.
pub(super) fn attend_group<T: PanelValue>(
    isa: Isa,
    args: &Attention<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    match isa {
        Isa::Avx512 | Isa::Avx512Bf16 => attend_avx512(args, scores, out),
        Isa::Avx2 => attend_avx2(args, scores, out),
        Isa::Portable => attend_body::<T, 64>(args, scores, out),
    }
}

/// One group's inputs ([`attend_group`]).
pub(super) struct Attention<'a, T> {
    pub queries: &'a [f32],
    pub keys: &'a [T],
    pub values: &'a [T],
    /// Positions attended: the sequence's tokens up to the query's own.
    pub total: usize,
    pub scale: f32,
    /// [`span`].
    pub span: usize,
}

/// [`attend_body`] built for AVX-512: blocks of 64 values per head ([`HEADS`] × 64 in
/// 12 of its 32 registers).
#[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
fn attend_avx512<T: PanelValue>(args: &Attention<'_, T>, scores: &mut [f32], out: &mut [f32]) {
    attend_body::<T, 64>(args, scores, out)
}

/// [`attend_body`] built for AVX2: blocks of 32 values per head (12 of its 16
/// registers).
#[multiversion(targets("x86_64+avx2+fma"))]
fn attend_avx2<T: PanelValue>(args: &Attention<'_, T>, scores: &mut [f32], out: &mut [f32]) {
    attend_body::<T, 32>(args, scores, out)
}

/// [`attend_group`]'s passes with blocks of `W` values per head, inlined into each
/// build.
#[inline(always)]
fn attend_body<T: PanelValue, const W: usize>(
    args: &Attention<'_, T>,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let (total, span) = (args.total, args.span);
    let d = args.queries.len() / (scores.len() / span);
    let capacity = args.keys.len() / d;
    // Σ_c q[c] · keys[c][..span]: the keys lie by dimension.
    for (query, rows) in args
        .queries
        .chunks(HEADS * d)
        .zip(scores.chunks_mut(HEADS * span))
    {
        sum_heads::<T, W>(query.len() / d, query, args.keys, capacity, rows);
        for row in rows.chunks_exact_mut(span) {
            let row = &mut row[..total];
            for s in row.iter_mut() {
                *s *= args.scale;
            }
            let max = lanes_max(row);
            for s in row.iter_mut() {
                *s = exp(*s - max);
            }
            let norm = 1.0 / lanes_sum(row);
            for s in row.iter_mut() {
                *s *= norm;
            }
        }
    }
    // Σ_t p[t] · values[t]: the values lie by position (`total` of them: the terms
    // past it are never read).
    for (probabilities, rows) in scores.chunks(HEADS * span).zip(out.chunks_mut(HEADS * d)) {
        sum_heads::<T, W>(rows.len() / d, probabilities, args.values, d, rows);
    }
}

/// Query heads of a group whose sums run together.
const HEADS: usize = 3;

/// [`Terms::sum_into`] for `heads` heads (1 to [`HEADS`]): `coefficients` and `out`
/// hold their coefficients and their sums one head after another.
#[inline(always)]
fn sum_heads<T: PanelValue, const W: usize>(
    heads: usize,
    coefficients: &[f32],
    vectors: &[T],
    stride: usize,
    out: &mut [f32],
) {
    let width = out.len() / heads;
    match heads {
        1 => Terms::<T, 1> {
            coefficients: runs(coefficients),
            vectors,
            stride,
        }
        .sum_into::<W>([out]),
        2 => {
            let (a, b) = out.split_at_mut(width);
            Terms::<T, 2> {
                coefficients: runs(coefficients),
                vectors,
                stride,
            }
            .sum_into::<W>([a, b])
        }
        3 => {
            let (a, rest) = out.split_at_mut(width);
            let (b, c) = rest.split_at_mut(width);
            Terms::<T, 3> {
                coefficients: runs(coefficients),
                vectors,
                stride,
            }
            .sum_into::<W>([a, b, c])
        }
        _ => unreachable!("1 to {HEADS} heads at once"),
    }
}

/// `coefficients` cut into `H` equal runs, one per head.
#[inline(always)]
fn runs<const H: usize>(coefficients: &[f32]) -> [&[f32]; H] {
    let mut out = [&coefficients[..0]; H];
    for (run, part) in out
        .iter_mut()
        .zip(coefficients.chunks_exact(coefficients.len() / H))
    {
        *run = part;
    }
    out
}

/// `Σ_i coefficients[h][i] · vectors[i·stride..]` for `H` heads, each summed in the
/// order of `i`. (No closures here: a closure is not built for the target of the
/// function around it.)
struct Terms<'a, T, const H: usize> {
    coefficients: [&'a [f32]; H],
    vectors: &'a [T],
    stride: usize,
}

impl<T: PanelValue, const H: usize> Terms<'_, T, H> {
    /// Each head's sum, its first `out.len()` values, into its `out`: `W` values at a
    /// time, then 8, then 1.
    #[inline(always)]
    fn sum_into<const W: usize>(&self, mut outs: [&mut [f32]; H]) {
        let len = outs[0].len();
        let mut start = 0;
        while len - start >= W {
            self.block_into::<W>(start, &mut outs);
            start += W;
        }
        while len - start >= 8 {
            self.block_into::<8>(start, &mut outs);
            start += 8;
        }
        while start < len {
            self.block_into::<1>(start, &mut outs);
            start += 1;
        }
    }

    /// The sums' `B` values from `start`, in registers, written to `outs`. Each
    /// term's `B` values are widened once into an array, and the heads' coefficients
    /// are cut to the terms first, so that the loop body has no bounds check and no
    /// loop over the heads: with them, LLVM kept the accumulators in memory and
    /// summed one lane at a time (`vfmadd213ss` on the stack, measured on a Zen 2).
    #[inline(always)]
    fn block_into<const B: usize>(&self, start: usize, outs: &mut [&mut [f32]; H]) {
        let mut acc = [[0f32; B]; H];
        let terms = self.coefficients[0].len();
        let coefficients: [&[f32]; H] = std::array::from_fn(|h| &self.coefficients[h][..terms]);
        for (i, vector) in self
            .vectors
            .chunks_exact(self.stride)
            .take(terms)
            .enumerate()
        {
            let v: &[T; B] = vector[start..][..B].try_into().expect("B values");
            let w: [f32; B] = std::array::from_fn(|l| v[l].widen());
            for h in 0..H {
                let c = coefficients[h][i];
                let acc = &mut acc[h];
                for l in 0..B {
                    acc[l] = c.mul_add(w[l], acc[l]);
                }
            }
        }
        for (out, acc) in outs.iter_mut().zip(&acc) {
            out[start..][..B].copy_from_slice(acc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::panels::Bf16;
    use super::*;
    use tch::{Device, Kind, Tensor};

    fn attend_over<T: PanelValue>(
        isa: Isa,
        d: usize,
        queries: &[f32],
        (keys, values): (&[T], &[T]),
        total: usize,
    ) -> Vec<f32> {
        let span = span(total, keys.len() / d);
        let group = Attention {
            queries,
            keys,
            values: &values[..total * d],
            total,
            scale: 0.2,
            span,
        };
        let heads = queries.len() / d;
        let (mut scores, mut out) = (vec![0f32; heads * span], vec![0f32; heads * d]);
        attend_group(isa, &group, &mut scores, &mut out);
        out
    }

    #[test]
    fn every_build_attends_alike_bit_for_bit_whatever_the_heads_per_group() {
        // 1 to 7 query heads per key/value head: every run of HEADS and its rests;
        // 70 positions: blocks of 64 (AVX-512's, or two of AVX2's 32), 8 and 1.
        let (d, capacity, total) = (24usize, 75usize, 70usize);
        let random = |n: usize, seed: i64| {
            tch::manual_seed(seed);
            Vec::<f32>::try_from(&Tensor::randn([n as i64], (Kind::Float, Device::Cpu))).unwrap()
        };
        let keys = random(d * capacity, 1);
        let values = random(capacity * d, 2);
        let narrow = |x: &[f32]| x.iter().map(|&v| Bf16::round(v)).collect::<Vec<_>>();
        let (keys16, values16) = (narrow(&keys), narrow(&values));
        for heads in 1..=7 {
            let queries = random(heads * d, 3);
            let attend = |isa: Isa| attend_over(isa, d, &queries, (&keys, &values), total);
            let attend16 = |isa| attend_over(isa, d, &queries, (&keys16, &values16), total);
            let (portable, portable16) = (attend(Isa::Portable), attend16(Isa::Portable));
            assert!(portable.iter().chain(&portable16).all(|v| v.is_finite()));
            assert_ne!(portable, portable16, "bf16 keys and values round");
            for isa in Isa::available() {
                assert_eq!(attend(isa), portable, "{} with {heads} heads", isa.name());
                assert_eq!(
                    attend16(isa),
                    portable16,
                    "{} bf16, {heads} heads",
                    isa.name()
                );
            }
        }
    }
}
