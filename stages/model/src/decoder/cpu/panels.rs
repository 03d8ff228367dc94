//! The product of a decoding step's few rows (runs of up to [`MAX_ROWS`]) with a weight
//! matrix, in Rust, on every thread of a [`Team`].
//!
//! Per call, libtorch's path to oneDNN converts the input and the output between
//! layouts (about 25 µs each, a quarter of a decoding step at batch 8) and oneDNN
//! repacks the weight in chunks. Here the weight is packed once, for as long as the
//! decoding guard lives, into panels of [`PANEL`] output rows whose `in × PANEL`
//! values lie in the order the kernel reads them. The kernel takes two panels and up
//! to [`GROUP`] input rows at a time, so that each weight vector loaded serves four
//! fused multiply-adds and each input value broadcast serves two, with the
//! accumulators in registers; the input is interleaved by groups of rows so that
//! one position's values lie together. The team's threads each take a contiguous
//! share of the panels. Compiled for AVX-512 and AVX2 and picked at run time
//! (`multiversion`), with a portable build as fallback.
//!
//! Measured on this workplace's 2-core Zen 5 over the 30 layers of SmolLM2-135M
//! (425 MB of weights): one thread reads them at 33 GB/s for one row and 20 GB/s
//! for eight; two threads at 43 and 38 GB/s, where oneDNN with its conversions
//! managed about 17 GB/s at eight rows. Up to 32 rows the kernel stays ahead: the
//! rollout benchmark at batch 32 went from 400–450 tok/s (oneDNN) to ~510, for
//! another copy of the weights (0.5 GB) while decoding. A kernel of eight rows by
//! two panels (16 accumulators) did not vectorize (the compiler's SLP pass gives up:
//! 20× slower), hence groups of four.

use std::sync::Arc;

use multiversion::multiversion;
use tch::{Device, Kind, Tensor};

use super::team::Team;

/// Output rows per panel: one AVX-512 register of f32, two of AVX2.
const PANEL: usize = 16;

/// Values of the weight read at a time while packing (4 MB).
const CHUNK: usize = 1 << 20;

/// Input rows the kernel takes at a time.
const GROUP: usize = 4;

/// Most input rows the panels take (decoding's batch); more go through oneDNN (the
/// kernel, compute-bound from about 16 rows, was not measured past 32).
pub const MAX_ROWS: usize = 32;

/// A weight `[out, in]` (and bias `[out]`) packed into panels, f32, with the team
/// that computes its products.
#[derive(Debug)]
pub struct Panels {
    values: Arc<Vec<f32>>,
    bias: Option<Vec<f32>>,
    out: usize,
    inner: usize,
    team: Arc<Team>,
}

impl Panels {
    /// Packs `weight` (`[out, in]`, any float kind, on any device) and `bias`.
    ///
    /// The weight is read in chunks of rows into one small buffer and scattered into
    /// the panels from there: one large allocation (the panels) instead of three
    /// (a transposed copy in libtorch, its host copy, the panels), which halved the
    /// time to pack, most of it spent faulting in fresh pages.
    pub fn pack(weight: &Tensor, bias: Option<&Tensor>, team: Arc<Team>) -> Self {
        let (out, inner) = (weight.size()[0] as usize, weight.size()[1] as usize);
        let weight = tch::no_grad(|| weight.to_device(Device::Cpu).to_kind(Kind::Float));
        let mut values = vec![0f32; out.div_ceil(PANEL) * PANEL * inner];
        let chunk_rows = (CHUNK / inner.max(1)).max(1);
        let mut chunk = vec![0f32; chunk_rows * inner];
        for first in (0..out).step_by(chunk_rows) {
            let n = chunk_rows.min(out - first);
            let rows = &mut chunk[..n * inner];
            weight
                .narrow(0, first as i64, n as i64)
                .copy_data(rows, n * inner);
            for (i, row) in rows.chunks_exact(inner).enumerate() {
                let (panel, lane) = ((first + i) / PANEL, (first + i) % PANEL);
                let panel = &mut values[panel * PANEL * inner..][..PANEL * inner];
                for (slot, &v) in panel.chunks_exact_mut(PANEL).zip(row) {
                    slot[lane] = v;
                }
            }
        }
        Self {
            values: Arc::new(values),
            bias: bias.map(|b| {
                let b = tch::no_grad(|| b.to_device(Device::Cpu).to_kind(Kind::Float).view([-1]));
                Vec::<f32>::try_from(&b).expect("a flat f32 CPU tensor")
            }),
            out,
            inner,
            team,
        }
    }

    /// `rows` rows of `input` (`rows × in`, row-major) times the weight, plus the
    /// bias: `rows × out`, row-major. Past [`MAX_ROWS`] rows, in runs of that many.
    pub fn apply(&self, input: &[f32], rows: usize) -> Vec<f32> {
        assert_eq!(
            input.len(),
            rows * self.inner,
            "{rows} rows of {}",
            self.inner
        );
        if rows <= MAX_ROWS {
            return self.apply_few(input, rows);
        }
        let mut out = Vec::with_capacity(rows * self.out);
        for run in input.chunks(MAX_ROWS * self.inner) {
            out.extend(self.apply_few(run, run.len() / self.inner));
        }
        out
    }

    /// [`Panels::apply`] of 1 to [`MAX_ROWS`] rows.
    fn apply_few(&self, input: &[f32], rows: usize) -> Vec<f32> {
        assert!((1..=MAX_ROWS).contains(&rows) && input.len() == rows * self.inner);
        let inner = self.inner;
        let panels = self.values.len() / (inner * PANEL);
        let parts = self.team.size();
        // Each thread's share: a contiguous run of panels, in pairs.
        let bounds = move |i: usize| {
            let pairs = panels.div_ceil(2);
            (
                (pairs * i / parts * 2).min(panels),
                (pairs * (i + 1) / parts * 2).min(panels),
            )
        };
        let grouped = Arc::new(interleave(input, rows, inner));
        let values = Arc::clone(&self.values);
        let shares = self.team.run(Arc::new(move |i: usize| {
            let (first, end) = bounds(i);
            let mut y = vec![0f32; rows * (end - first) * PANEL];
            let weights = &values[first * inner * PANEL..end * inner * PANEL];
            if !y.is_empty() {
                product(&grouped, rows, inner, weights, &mut y);
            }
            y
        }));
        // Each share is `[row][its columns]`: laid side by side, padding cut.
        let mut out = vec![0f32; rows * self.out];
        for (i, share) in shares.iter().enumerate() {
            let (first, end) = bounds(i);
            let column = first * PANEL;
            let width = ((end - first) * PANEL).min(self.out.saturating_sub(column));
            if width == 0 {
                continue;
            }
            for (r, values) in share.chunks_exact((end - first) * PANEL).enumerate() {
                out[r * self.out + column..][..width].copy_from_slice(&values[..width]);
            }
        }
        if let Some(bias) = &self.bias {
            for row in out.chunks_exact_mut(self.out) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
        out
    }
}

/// `x` (`rows × inner`, row-major) as groups of [`GROUP`] rows (the last may have
/// fewer), each `inner × rows in the group`: one position's values together.
fn interleave(x: &[f32], rows: usize, inner: usize) -> Vec<f32> {
    let mut grouped = vec![0f32; rows * inner];
    for (group, out) in x
        .chunks(GROUP * inner)
        .zip(grouped.chunks_mut(GROUP * inner))
    {
        let n = group.len() / inner;
        for (r, row) in group.chunks_exact(inner).enumerate() {
            for (k, &v) in row.iter().enumerate() {
                out[k * n + r] = v;
            }
        }
    }
    grouped
}

/// `y[r][p·PANEL + l] = Σ_k x[r][k] · w[p·PANEL + l][k]` over the given panels, with
/// `x` grouped by [`interleave`]; `y` is `[rows][panels · PANEL]`.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
fn product(grouped: &[f32], rows: usize, inner: usize, panels: &[f32], y: &mut [f32]) {
    let stride = y.len() / rows;
    let mut pairs = panels.chunks_exact(2 * inner * PANEL);
    for (p, pair) in (&mut pairs).enumerate() {
        let (w0, w1) = pair.split_at(inner * PANEL);
        let at = Out {
            stride,
            column: 2 * p * PANEL,
        };
        for (g, x) in grouped.chunks(GROUP * inner).enumerate() {
            let at = Out {
                column: at.column + g * GROUP * stride,
                ..at
            };
            match x.len() / inner {
                1 => two_panels::<1>(x, w0, w1, y, at),
                2 => two_panels::<2>(x, w0, w1, y, at),
                3 => two_panels::<3>(x, w0, w1, y, at),
                _ => two_panels::<GROUP>(x, w0, w1, y, at),
            }
        }
    }
    let last = pairs.remainder();
    if !last.is_empty() {
        let column = stride - PANEL;
        for (g, x) in grouped.chunks(GROUP * inner).enumerate() {
            let at = Out {
                stride,
                column: column + g * GROUP * stride,
            };
            match x.len() / inner {
                1 => one_panel::<1>(x, last, y, at),
                2 => one_panel::<2>(x, last, y, at),
                3 => one_panel::<3>(x, last, y, at),
                _ => one_panel::<GROUP>(x, last, y, at),
            }
        }
    }
}

/// Where a group's results go in a row-major output: its first value's index
/// (`column`, of the group's first row) and the rows' `stride`.
#[derive(Clone, Copy)]
struct Out {
    stride: usize,
    column: usize,
}

/// `R` grouped rows times two panels: `2R` accumulator registers; per position two
/// weight loads, `R` broadcasts and `2R` fused multiply-adds. Inlined into each
/// target's build of [`product`].
#[inline(always)]
fn two_panels<const R: usize>(x: &[f32], w0: &[f32], w1: &[f32], y: &mut [f32], at: Out) {
    let mut a0 = [[0f32; PANEL]; R];
    let mut a1 = [[0f32; PANEL]; R];
    let positions = w0.chunks_exact(PANEL).zip(w1.chunks_exact(PANEL));
    for ((w0, w1), v) in positions.zip(x.chunks_exact(R)) {
        for r in 0..R {
            for l in 0..PANEL {
                a0[r][l] = v[r].mul_add(w0[l], a0[r][l]);
                a1[r][l] = v[r].mul_add(w1[l], a1[r][l]);
            }
        }
    }
    for r in 0..R {
        let row = &mut y[at.column + r * at.stride..][..2 * PANEL];
        row[..PANEL].copy_from_slice(&a0[r]);
        row[PANEL..].copy_from_slice(&a1[r]);
    }
}

/// [`two_panels`] for an odd panel out.
#[inline(always)]
fn one_panel<const R: usize>(x: &[f32], w: &[f32], y: &mut [f32], at: Out) {
    let mut a = [[0f32; PANEL]; R];
    for (w, v) in w.chunks_exact(PANEL).zip(x.chunks_exact(R)) {
        for r in 0..R {
            for l in 0..PANEL {
                a[r][l] = v[r].mul_add(w[l], a[r][l]);
            }
        }
    }
    for r in 0..R {
        y[at.column + r * at.stride..][..PANEL].copy_from_slice(&a[r]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_give_libtorchs_product_for_every_row_count_and_team_size() {
        // 72 outputs: four full panels and a padded one, so that some shares end
        // with an odd panel out (or are only that); with a bias.
        let w = Tensor::randn([72, 24], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([72], (Kind::Float, Device::Cpu));
        for threads in [1, 2, 3] {
            let panels = Panels::pack(&w, Some(&b), Arc::new(Team::new(threads)));
            // Past MAX_ROWS, in runs: a full run and a part of one.
            for rows in (1..=MAX_ROWS as i64).chain([2 * MAX_ROWS as i64 + 5]) {
                let x = Tensor::randn([rows, 24], (Kind::Float, Device::Cpu));
                let input = Vec::<f32>::try_from(&x.view([-1])).unwrap();
                let got = Tensor::from_slice(&panels.apply(&input, rows as usize));
                let expected = x.linear(&w, Some(&b)).view([-1]);
                let diff = (got - expected).abs().max().double_value(&[]);
                assert!(diff < 1e-4, "{threads} threads, {rows} rows: {diff}");
            }
        }
    }

    #[test]
    fn interleaving_groups_rows_by_position() {
        // 5 rows of 2: a group of 4 then a group of 1.
        let x: Vec<f32> = (0..10).map(|v| v as f32).collect();
        assert_eq!(
            interleave(&x, 5, 2),
            [0., 2., 4., 6., 1., 3., 5., 7., 8., 9.]
        );
    }
}
