//! The product of a decoding step's few rows (runs of up to [`MAX_ROWS`]) with a weight
//! matrix, in Rust, on every thread of a [`Team`].
//!
//! Per call, libtorch's path to oneDNN converts the input and the output between
//! layouts (about 25 µs each, a quarter of a decoding step at batch 8) and oneDNN
//! repacks the weight in chunks. Here the weight is packed once, for as long as the
//! decoding guard lives, into panels of [`PANEL`] output rows whose `in × PANEL`
//! values lie in the order the kernel reads them. The kernel ([`super::kernel`])
//! takes a few panels and a few input rows at a time, so that each weight vector
//! loaded serves several fused multiply-adds and so does each input value broadcast,
//! with the accumulators in registers; the input is interleaved by groups of rows so
//! that one position's values lie together. The team's threads each take a
//! contiguous share of the panels. Compiled for AVX-512 and AVX2 and picked at run
//! time ([`Isa`]), with a portable build as fallback.
//!
//! Panels hold f32, or bf16 (mixed precision's rollouts, or `rollout_weights: bf16`), which take their input
//! rounded to bf16 as oneDNN's bf16 products do: on the avx512_bf16 build by
//! AVX512-BF16's dot products ([`super::dot`]), elsewhere by widening each loaded bf16
//! panel to f32 in registers (a shift of its 16 bits); either way the sums are f32 and
//! a step reads half the bytes. Or int8 (`model.rollout_weights: int8`): each output
//! row quantized with its own scale when packed, widened the same way, the row's scale
//! applied to its output: a quarter of f32's bytes. Under `w8a8` the input is quantized
//! too, by blocks ([`super::activations`]), and where the CPU has int8 dot products
//! (AVX512-VNNI's or AVX2's) the int8 values are packed plus 128, four positions a
//! lane, for them ([`super::int8_dots`]); elsewhere they stay as `int8` packs them and
//! the widening kernel takes the dequantized input.
//!
//! Measured on this workplace's 2-core Zen 5 over the 30 layers of SmolLM2-135M
//! (425 MB of weights): one thread reads them at 33 GB/s for one row and 20 GB/s
//! for eight; two threads at 43 and 38 GB/s, where oneDNN with its conversions
//! managed about 17 GB/s at eight rows. Up to 32 rows the kernel stays ahead: the
//! rollout benchmark at batch 32 went from 400–450 tok/s (oneDNN) to ~510, for
//! another copy of the weights (0.5 GB) while decoding.

use std::sync::Arc;

use tch::{Device, Kind, Tensor};

use super::activations::Blocks;
use super::columns::{Columns, Shared};
use super::dot;
pub use super::host_math::Bf16;
use super::host_math::lanes_max_abs;
use super::int8_dots::{self, Biased};
use super::isa::Isa;
use super::kernel::{Shape, product};
use super::team::Team;
use crate::config::RolloutWeights;

/// Output rows per panel: one AVX-512 register of f32, two of AVX2.
pub const PANEL: usize = 16;

/// Values of the weight read at a time while packing (4 MB).
const CHUNK: usize = 1 << 20;

/// Most input rows the panels take (decoding's batch); more go through oneDNN (the
/// kernel, compute-bound from about 16 rows, was not measured past 32).
pub const MAX_ROWS: usize = 32;

/// A value a panel holds: f32, bf16's bits or int8, widened to f32 in the kernel.
pub trait PanelValue: Copy + Default + Send + Sync + 'static {
    /// Positions a panel keeps together for each output row (lane): its values lie
    /// by runs of this many positions, lane after lane within a run (1: position
    /// after position). bf16 panels hold pairs, the operands of AVX512-BF16's dot
    /// product.
    const STEP: usize = 1;
    /// The value as f32.
    fn widen(self) -> f32;
}

impl PanelValue for f32 {
    #[inline(always)]
    fn widen(self) -> f32 {
        self
    }
}

impl PanelValue for i8 {
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from(self)
    }
}

impl PanelValue for Bf16 {
    const STEP: usize = 2;
    #[inline(always)]
    fn widen(self) -> f32 {
        Bf16::widen(self)
    }
}

/// The packed weight, in its stored type.
#[derive(Debug)]
enum Values {
    F32(Arc<Vec<f32>>),
    Bf16(Arc<Vec<Bf16>>),
    /// Symmetric int8 per output row: the row's values are `scales[row] · q`; with
    /// `blocks` (`w8a8` where the CPU has no int8 dot products), the input is
    /// quantized by blocks ([`Blocks`]) and its dequantized values widened.
    Int8 {
        values: Arc<Vec<i8>>,
        scales: Vec<f32>,
        blocks: bool,
    },
    /// `w8a8` on the int8 dot products ([`int8_dots`]): [`Values::Int8`]'s values plus
    /// 128, four positions by four.
    Int8Quads {
        values: Arc<Vec<Biased>>,
        scales: Vec<f32>,
    },
}

/// A weight `[out, in]` (and bias `[out]`) packed into panels of f32 or bf16, with
/// the team that computes its products.
#[derive(Debug)]
pub struct Panels {
    values: Values,
    bias: Option<Vec<f32>>,
    out: usize,
    inner: usize,
    team: Arc<Team>,
}

/// `weight` (`[out, in]`, on any device) as panels of `T`, read through `read`, which
/// copies a narrowed `[n, in]` CPU tensor's values into a slice.
///
/// The weight is read in chunks of rows into one small buffer and scattered into
/// the panels from there: one large allocation (the panels) instead of three
/// (a transposed copy in libtorch, its host copy, the panels), which halved the
/// time to pack, most of it spent faulting in fresh pages.
fn pack_values<T: PanelValue>(weight: &Tensor, mut read: impl FnMut(&Tensor, &mut [T])) -> Vec<T> {
    let (out, inner) = (weight.size()[0] as usize, weight.size()[1] as usize);
    // Positions past `inner` up to a whole run of `T::STEP` hold zeros.
    let padded = inner.next_multiple_of(T::STEP);
    let mut values = vec![T::default(); out.div_ceil(PANEL) * PANEL * padded];
    let chunk_rows = (CHUNK / inner.max(1)).max(1);
    let mut chunk = vec![T::default(); chunk_rows * inner];
    for first in (0..out).step_by(chunk_rows) {
        let n = chunk_rows.min(out - first);
        let rows = &mut chunk[..n * inner];
        read(&weight.narrow(0, first as i64, n as i64), rows);
        for (i, row) in rows.chunks_exact(inner).enumerate() {
            let (panel, lane) = ((first + i) / PANEL, (first + i) % PANEL);
            let panel = &mut values[panel * PANEL * padded..][..PANEL * padded];
            for (runs, run) in panel
                .chunks_exact_mut(PANEL * T::STEP)
                .zip(row.chunks(T::STEP))
            {
                runs[lane * T::STEP..][..run.len()].copy_from_slice(run);
            }
        }
    }
    values
}

impl Panels {
    /// Packs `weight` (`[out, in]`, on any device) and `bias` as `storage` says: in
    /// the weight's own kind (bf16 panels for a bf16 weight, f32 panels for any other
    /// float kind), bf16 whatever its kind, or int8, one scale per output row ([`quantize`]); `w8a8` laid out
    /// for the CPU's int8 dot products where it has them ([`Isa::int8_dots`]).
    pub fn pack(
        weight: &Tensor,
        bias: Option<&Tensor>,
        storage: RolloutWeights,
        team: Arc<Team>,
    ) -> Self {
        Self::pack_for(Isa::detected(), weight, bias, storage, team)
    }

    /// [`Panels::pack`] for the build `isa`, which sets the layout of `w8a8` panels.
    pub fn pack_for(
        isa: Isa,
        weight: &Tensor,
        bias: Option<&Tensor>,
        storage: RolloutWeights,
        team: Arc<Team>,
    ) -> Self {
        let (out, inner) = (weight.size()[0] as usize, weight.size()[1] as usize);
        let values = tch::no_grad(|| {
            let weight = weight.to_device(Device::Cpu);
            match storage {
                RolloutWeights::W8a8 if isa.int8_dots().is_some() => {
                    let (values, scales) = pack_int8(&weight, Biased::of);
                    Values::Int8Quads { values, scales }
                }
                RolloutWeights::Int8 | RolloutWeights::W8a8 => {
                    let (values, scales) = pack_int8(&weight, |q| q);
                    let blocks = storage == RolloutWeights::W8a8;
                    Values::Int8 {
                        values,
                        scales,
                        blocks,
                    }
                }
                RolloutWeights::Bf16 => pack_bf16(&weight),
                RolloutWeights::Products if weight.kind() == Kind::BFloat16 => pack_bf16(&weight),
                RolloutWeights::Products => {
                    let weight = weight.to_kind(Kind::Float);
                    Values::F32(Arc::new(pack_values(&weight, |rows, into: &mut [f32]| {
                        rows.copy_data(into, into.len())
                    })))
                }
            }
        });
        Self {
            values,
            bias: bias.map(|b| {
                let b = tch::no_grad(|| b.to_device(Device::Cpu).to_kind(Kind::Float).view([-1]));
                Vec::<f32>::try_from(&b).expect("a flat f32 CPU tensor")
            }),
            out,
            inner,
            team,
        }
    }

    /// The panels' value type: `"f32"`, `"bf16"`, `"int8"` or `"w8a8"` (int8 with
    /// its input quantized too).
    #[cfg(test)]
    pub fn stored(&self) -> &'static str {
        match self.values {
            Values::F32(_) => "f32",
            Values::Bf16(_) => "bf16",
            Values::Int8 { blocks: false, .. } => "int8",
            Values::Int8 { blocks: true, .. } | Values::Int8Quads { .. } => "w8a8",
        }
    }

    /// `rows` rows of `input` (`rows × in`, row-major) times the weight, plus the
    /// bias: `rows × out`, row-major. Past [`MAX_ROWS`] rows, in runs of that many.
    /// Runs the CPU's widest build ([`Isa::detected`]).
    pub fn apply(&self, input: &[f32], rows: usize) -> Vec<f32> {
        self.apply_on(Isa::detected(), input, rows)
    }

    /// [`Panels::apply`] on the build `isa` (one the CPU runs).
    pub fn apply_on(&self, isa: Isa, input: &[f32], rows: usize) -> Vec<f32> {
        assert!(isa.supported(), "{} is not supported here", isa.name());
        assert_eq!(
            input.len(),
            rows * self.inner,
            "{rows} rows of {}",
            self.inner
        );
        if rows <= MAX_ROWS {
            return self.apply_few(isa, input, rows);
        }
        let mut out = Vec::with_capacity(rows * self.out);
        for run in input.chunks(MAX_ROWS * self.inner) {
            out.extend(self.apply_few(isa, run, run.len() / self.inner));
        }
        out
    }

    /// [`Panels::apply_on`] of 1 to [`MAX_ROWS`] rows. bf16 panels take their input
    /// rounded to bf16 on every build, as the avx512_bf16 build's dot products do
    /// (and oneDNN's bf16 products): the builds differ only in the order of the sums.
    fn apply_few(&self, isa: Isa, input: &[f32], rows: usize) -> Vec<f32> {
        assert!((1..=MAX_ROWS).contains(&rows) && input.len() == rows * self.inner);
        let inner = self.inner;
        match &self.values {
            Values::F32(values) => self.widening(isa, values, input, rows, None),
            Values::Bf16(values) if isa == Isa::Avx512Bf16 => {
                let pairs = dot::pairs(input, rows, inner, Shape::of(isa).group);
                self.apply_values(values, rows, None, |w, y| {
                    dot::product(&pairs, rows, inner, w, y)
                })
            }
            Values::Bf16(values) => {
                let rounded: Vec<f32> = input.iter().map(|&v| Bf16::round(v).widen()).collect();
                self.widening(isa, values, &rounded, rows, None)
            }
            Values::Int8 {
                values,
                scales,
                blocks: true,
            } => {
                let rounded = Blocks::quantize(input, rows, inner).dequantized();
                self.widening(isa, values, &rounded, rows, Some(scales))
            }
            Values::Int8 { values, scales, .. } => {
                self.widening(isa, values, input, rows, Some(scales))
            }
            Values::Int8Quads { values, scales } => {
                let x = Blocks::quantize(input, rows, inner).quads(int8_dots::shape(isa).group);
                self.apply_values(values, rows, Some(scales), |w, y| {
                    int8_dots::product(isa, &x, rows, w, y)
                })
            }
        }
    }

    /// The products of [`super::kernel`] (each panel value widened to f32) over the
    /// panels `values`, times the output rows' `scales`, plus the bias.
    fn widening<T: PanelValue>(
        &self,
        isa: Isa,
        values: &[T],
        input: &[f32],
        rows: usize,
        scales: Option<&[f32]>,
    ) -> Vec<f32> {
        let inner = self.inner;
        let grouped = interleave(input, rows, inner, Shape::of(isa).group);
        self.apply_values(values, rows, scales, |w, y| {
            product(isa, &grouped, rows, inner, w, y)
        })
    }

    /// `rows` rows' products with the panels `values` by `product` (of a run of
    /// panels into its columns of the output), each output row then times `scales`
    /// (an int8 weight's) plus the bias, on every thread of the team, each taking a
    /// contiguous share of the panels and writing its columns of the output:
    /// `rows × out`, row-major.
    fn apply_values<T: PanelValue>(
        &self,
        values: &[T],
        rows: usize,
        scales: Option<&[f32]>,
        product: impl Fn(&[T], &mut Columns<'_>) + Sync,
    ) -> Vec<f32> {
        let size = self.inner.next_multiple_of(T::STEP) * PANEL;
        let panels = values.len() / size;
        let parts = self.team.size();
        // Each thread's share: the columns of a contiguous run of panels, in pairs.
        let pairs = panels.div_ceil(2);
        let column = |i: usize| (pairs * i / parts * 2).min(panels) * PANEL;
        let width = panels * PANEL;
        let mut out = vec![0f32; rows * width];
        let bounds = (0..parts).map(|i| (column(i), column(i + 1))).collect();
        let shared = Shared::new(&mut out, rows, bounds);
        let (out_width, bias) = (self.out, self.bias.as_deref());
        self.team.each(&|i| {
            let mut y = shared.take(i);
            if y.width() == 0 {
                return;
            }
            let (first, end) = (y.first() / PANEL, (y.first() + y.width()) / PANEL);
            product(&values[first * size..end * size], &mut y);
            // The padding of a last panel past the output's width takes none.
            let (column, n) = (y.first(), y.width().min(out_width - y.first()));
            for r in 0..rows {
                let row = y.segment(r, 0, n);
                if let Some(scales) = scales {
                    row.iter_mut()
                        .zip(&scales[column..])
                        .for_each(|(v, s)| *v *= s);
                }
                if let Some(bias) = bias {
                    row.iter_mut()
                        .zip(&bias[column..])
                        .for_each(|(v, b)| *v += b);
                }
            }
        });
        if width > self.out {
            for r in 1..rows {
                out.copy_within(r * width..r * width + self.out, r * self.out);
            }
            out.truncate(rows * self.out);
        }
        out
    }
}

/// `weight` as bf16 panels (rounded to nearest even if it is not bf16 already).
fn pack_bf16(weight: &Tensor) -> Values {
    let bits = weight.to_kind(Kind::BFloat16).view_dtype(Kind::Int16);
    Values::Bf16(Arc::new(pack_values(&bits, |rows, into: &mut [Bf16]| {
        let mut raw = vec![0i16; into.len()];
        rows.copy_data(&mut raw, into.len());
        for (slot, r) in into.iter_mut().zip(raw) {
            *slot = Bf16(r as u16);
        }
    })))
}

/// `weight` (`[out, in]`, on the CPU) quantized row by row ([`quantize`]) into
/// panels of `T` (each int8 value as `to` makes it), and the rows' scales.
fn pack_int8<T: PanelValue>(weight: &Tensor, to: impl Fn(i8) -> T) -> (Arc<Vec<T>>, Vec<f32>) {
    let inner = weight.size()[1] as usize;
    let mut scales = Vec::with_capacity(weight.size()[0] as usize);
    let weight = weight.to_kind(Kind::Float);
    let values = pack_values(&weight, |rows, into: &mut [T]| {
        let mut raw = vec![0f32; into.len()];
        rows.copy_data(&mut raw, into.len());
        let mut q = vec![0i8; inner];
        for (row, into) in raw.chunks_exact(inner).zip(into.chunks_exact_mut(inner)) {
            scales.push(quantize(row, &mut q));
            into.iter_mut().zip(&q).for_each(|(v, &q)| *v = to(q));
        }
    });
    (Arc::new(values), scales)
}

/// `row` as int8 into `into`, symmetric, rounded to nearest (ties to even, as
/// libtorch's `round`): returns the scale (the largest magnitude over 127; 1 for a
/// row of zeros) by which `into`'s values give the row back.
#[inline(always)]
pub(super) fn quantize(row: &[f32], into: &mut [i8]) -> f32 {
    // Adding 1.5 · 2²³ to any |x| < 2²² rounds it to an integer, ties to even, in the
    // FPU's default mode (as `round_ties_even`, without its call per value, which
    // made packing four times slower), and leaves that integer in the low bits of
    // the sum's mantissa, from which an integer subtraction takes it: the loop stays
    // in vectors (with a float clamp and `as i8`, LLVM clamped and converted value by
    // value, most of the input's quantization while decoding).
    const ROUND: f32 = 12_582_912.0;
    let zero = ROUND.to_bits() as i32;
    let largest = lanes_max_abs(row);
    let scale = if largest > 0.0 { largest / 127.0 } else { 1.0 };
    for (q, &v) in into.iter_mut().zip(row) {
        let n = (v / scale + ROUND).to_bits() as i32 - zero;
        *q = n.clamp(-127, 127) as i8;
    }
    scale
}

/// `x` (`rows × inner`, row-major) as groups of `group` rows (the last may have
/// fewer), each `inner × rows in the group`: one position's values together.
fn interleave(x: &[f32], rows: usize, inner: usize, group: usize) -> Vec<f32> {
    let mut grouped = vec![0f32; rows * inner];
    for (group, out) in x
        .chunks(group * inner)
        .zip(grouped.chunks_mut(group * inner))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_give_libtorchs_product_for_every_build_row_count_and_team_size() {
        // 136 outputs: eight full panels and a padded one, so that some shares end
        // with an odd panel out (or are only that) and a team of one takes two full
        // blocks of AVX2's four panels and a part of one; with a bias. bf16 panels against
        // the f32 product of the bf16-rounded input and weight (every build: the
        // avx512_bf16 one's dot products and the others' widening), int8 panels against that of the
        // weight quantized row by row (the kernel adds no rounding of its own: it
        // widens exactly and accumulates in f32).
        // 24 inputs and 25 (an odd count: bf16's last pair padded).
        for inner in [24i64, 25] {
            let w = Tensor::randn([136, inner], (Kind::Float, Device::Cpu));
            let b = Tensor::randn([136], (Kind::Float, Device::Cpu));
            let w16 = w.to_kind(Kind::BFloat16);
            // The scales as the packing divides (libtorch turns a division by a scalar
            // into a product by its reciprocal, an ulp away, which moves near-halves).
            let int8 = |w: &Tensor| {
                let largest = w.abs().amax([1], true);
                let scales = &largest / largest.full_like(127.0);
                (w / &scales).round() * &scales
            };
            let w8 = int8(&w);
            let cases = [
                (&w, RolloutWeights::Products, w.shallow_clone(), "f32"),
                (
                    &w16,
                    RolloutWeights::Products,
                    w16.to_kind(Kind::Float),
                    "bf16",
                ),
                (&w, RolloutWeights::Int8, w8, "int8"),
                (
                    &w16,
                    RolloutWeights::Int8,
                    {
                        let w = w16.to_kind(Kind::Float);
                        let s = w.abs().amax([1], true) / 127.0;
                        (&w / &s).round() * &s
                    },
                    "int8",
                ),
            ];
            let isas = Isa::available();
            assert!(isas.contains(&Isa::Portable));
            for (stored, storage, exact, kind) in &cases {
                for threads in [1, 2, 3] {
                    let team = Arc::new(Team::new(threads));
                    let panels = Panels::pack(stored, Some(&b), *storage, team);
                    assert_eq!(panels.stored(), *kind);
                    // Past MAX_ROWS, in runs: a full run and a part of one.
                    for rows in (1..=MAX_ROWS as i64).chain([2 * MAX_ROWS as i64 + 5]) {
                        let x = Tensor::randn([rows, inner], (Kind::Float, Device::Cpu));
                        let input = Vec::<f32>::try_from(&x.view([-1])).unwrap();
                        // bf16 panels take their input rounded to bf16.
                        let x = match *kind {
                            "bf16" => x.to_kind(Kind::BFloat16).to_kind(Kind::Float),
                            _ => x,
                        };
                        let expected = x.linear(exact, Some(&b)).view([-1]);
                        for &isa in &isas {
                            let got = panels.apply_on(isa, &input, rows as usize);
                            let diff = (Tensor::from_slice(&got) - &expected)
                                .abs()
                                .max()
                                .double_value(&[]);
                            let at =
                                format!("{} {kind} {threads} threads, {rows} rows", isa.name());
                            assert!(diff < 1e-4, "{at}: {diff}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn w8a8_panels_give_the_product_of_the_block_quantized_input_on_every_build() {
        // 25 inputs (one partial block, a last quad of one value), 70 (blocks of 32,
        // 32 and 6), 576 (SmolLM2's); 136 outputs as above. Packed for each build
        // (the int8 dot products' layout where it has them, else the widening
        // kernel's) and applied on each: against libtorch's product of the
        // dequantized input with the int8-rounded weight, and where the dot
        // products run, the same bits on every build (the others run their reference).
        for inner in [25i64, 70, 576] {
            let w = Tensor::randn([136, inner], (Kind::Float, Device::Cpu));
            let b = Tensor::randn([136], (Kind::Float, Device::Cpu));
            let s = w.abs().amax([1], true) / 127.0;
            let w8 = (&w / &s).round() * &s;
            for pack in Isa::available() {
                for threads in [1, 3] {
                    let team = Arc::new(Team::new(threads));
                    let panels = Panels::pack_for(pack, &w, Some(&b), RolloutWeights::W8a8, team);
                    assert_eq!(panels.stored(), "w8a8");
                    let quads = matches!(panels.values, Values::Int8Quads { .. });
                    assert_eq!(quads, pack.int8_dots().is_some(), "{}", pack.name());
                    for rows in (1..=MAX_ROWS as i64).chain([MAX_ROWS as i64 + 5]) {
                        let x = Tensor::randn([rows, inner], (Kind::Float, Device::Cpu));
                        let input = Vec::<f32>::try_from(&x.view([-1])).unwrap();
                        let (r, n) = (rows as usize, inner as usize);
                        let rounded = Blocks::quantize(&input, r, n).dequantized();
                        let expected = Tensor::from_slice(&rounded)
                            .view([rows, inner])
                            .linear(&w8, Some(&b))
                            .view([-1]);
                        let scale = expected.abs().max().double_value(&[]);
                        let mut first: Option<Vec<f32>> = None;
                        for isa in Isa::available() {
                            let got = panels.apply_on(isa, &input, r);
                            let at = format!(
                                "packed for {}, on {}, {threads} threads, {rows} rows of {inner}",
                                pack.name(),
                                isa.name()
                            );
                            let diff = (Tensor::from_slice(&got) - &expected)
                                .abs()
                                .max()
                                .double_value(&[]);
                            assert!(diff < 1e-5 * scale.max(1.0), "{at}: {diff} of {scale}");
                            if quads {
                                let first = first.get_or_insert_with(|| got.clone());
                                assert!(
                                    got.iter()
                                        .zip(first.iter())
                                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                                    "{at}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn panels_of_long_rows_give_the_same_product_in_smaller_blocks() {
        // 4,100 inputs: an f32 panel is 262 KB, so that AVX2 takes blocks of one
        // panel past one group of rows, int8 blocks of three (a tile of two and one).
        let w = Tensor::randn([136, 4100], (Kind::Float, Device::Cpu));
        let w8 = {
            let s = w.abs().amax([1], true) / 127.0;
            (&w / &s).round() * &s
        };
        let w16 = w.to_kind(Kind::BFloat16);
        let bf16 = |t: &Tensor| t.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        for (stored, storage, exact) in [
            (&w, RolloutWeights::Products, &w),
            (&w, RolloutWeights::Int8, &w8),
            (&w16, RolloutWeights::Products, &bf16(&w)),
            (&w, RolloutWeights::Bf16, &bf16(&w)),
        ] {
            for threads in [1, 2] {
                let panels = Panels::pack(stored, None, storage, Arc::new(Team::new(threads)));
                for rows in [5i64, 13, 32] {
                    let x = Tensor::randn([rows, 4100], (Kind::Float, Device::Cpu));
                    let input = Vec::<f32>::try_from(&x.view([-1])).unwrap();
                    let x = match panels.stored() {
                        "bf16" => bf16(&x),
                        _ => x,
                    };
                    let expected = x.linear(exact, None::<&Tensor>).view([-1]);
                    let scale = expected.abs().max().double_value(&[]);
                    for isa in Isa::available() {
                        let got = Tensor::from_slice(&panels.apply_on(isa, &input, rows as usize));
                        let diff = (got - &expected).abs().max().double_value(&[]);
                        let at =
                            format!("{} {storage:?} {threads} threads, {rows} rows", isa.name());
                        assert!(diff < 1e-5 * scale, "{at}: {diff} of {scale}");
                    }
                }
            }
        }
    }

    #[test]
    fn int8_rounding_is_to_nearest_with_ties_to_even() {
        let row = [
            127.0f32, 0.5, 1.5, 2.5, -0.5, -1.5, 2.4999998, 3.5000002, -126.5,
        ];
        let mut q = [0i8; 9];
        assert_eq!(quantize(&row, &mut q), 1.0);
        let expected: Vec<i8> = row.iter().map(|v| v.round_ties_even() as i8).collect();
        assert_eq!(q.to_vec(), expected);
        assert_eq!(q, [127, 0, 2, 2, 0, -2, 2, 4, -126]);
    }

    #[test]
    fn int8_rows_keep_their_largest_value_exactly_and_the_rest_within_half_a_step() {
        let row = [0.5f32, -2.54, 1.3, 0.0, 0.004];
        let mut q = [0i8; 5];
        let scale = quantize(&row, &mut q);
        assert_eq!(scale, 2.54 / 127.0);
        assert_eq!(q, [25, -127, 65, 0, 0]);
        for (v, q) in row.iter().zip(q) {
            assert!((v - scale * f32::from(q)).abs() <= scale / 2.0 + 1e-7);
        }
        // A row of zeros: scale 1, zeros (no division by zero).
        let mut q = [7i8; 3];
        assert_eq!(quantize(&[0.0; 3], &mut q), 1.0);
        assert_eq!(q, [0; 3]);
        // Through the panels: a row whose values are whole multiples of its scale
        // comes back exactly; a zero row gives its bias.
        let w = Tensor::from_slice(&[1.0f32, -127.0, 0.0, 0.0]).view([2, 2]);
        let b = Tensor::from_slice(&[0.25f32, -1.0]);
        let panels = Panels::pack(&w, Some(&b), RolloutWeights::Int8, Arc::new(Team::new(1)));
        assert_eq!(panels.apply(&[2.0, 1.0], 1), [2.0 - 127.0 + 0.25, -1.0]);
    }

    #[test]
    fn bf16_panels_are_bf16s_rounding_of_the_weight() {
        let w = Tensor::from_slice(&[1.0f32, 1.0 + 1.0 / 256.0, -3.140625, 65504.0]).view([4, 1]);
        let w16 = w.to_kind(Kind::BFloat16);
        // A bf16 weight in the products' kind, and an f32 one as `rollout_weights: bf16`.
        for (weight, storage) in [(&w16, RolloutWeights::Products), (&w, RolloutWeights::Bf16)] {
            let panels = Panels::pack(weight, None, storage, Arc::new(Team::new(1)));
            assert_eq!(panels.stored(), "bf16");
            // 1 + 2⁻⁸ is a tie between bf16's 1 and 1 + 2⁻⁷: rounds to even, 1.
            assert_eq!(panels.apply(&[1.0], 1), [1.0, 1.0, -3.140625, 65536.0]);
        }
    }

    #[test]
    fn rounding_to_bf16_is_libtorchs_cast() {
        let mut values = vec![
            0.0f32,
            -0.0,
            1.0 + 1.0 / 256.0,
            1.0 + 3.0 / 256.0,
            -(1.0 + 1.0 / 256.0 + 1e-7),
            f32::MAX,
            f32::MIN_POSITIVE / 3.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        tch::manual_seed(7);
        let random = Tensor::randn([4096], (Kind::Float, Device::Cpu)) * 1e3;
        values.extend(Vec::<f32>::try_from(&random).unwrap());
        let cast = Tensor::from_slice(&values)
            .to_kind(Kind::BFloat16)
            .view_dtype(Kind::Int16);
        let want: Vec<u16> = Vec::<i16>::try_from(&cast)
            .unwrap()
            .into_iter()
            .map(|b| b as u16)
            .collect();
        let got: Vec<u16> = values.iter().map(|&v| Bf16::round(v).0).collect();
        assert_eq!(got, want);
        // (libtorch's NaN has other bits; both are NaNs.)
        assert!(Bf16::round(f32::NAN).widen().is_nan());
        assert!(Bf16::round(-f32::NAN).widen().is_nan());
    }

    #[test]
    fn interleaving_groups_rows_by_position() {
        // 5 rows of 2: a group of 4 then a group of 1.
        let x: Vec<f32> = (0..10).map(|v| v as f32).collect();
        assert_eq!(
            interleave(&x, 5, 2, 4),
            [0., 2., 4., 6., 1., 3., 5., 7., 8., 9.]
        );
    }
}
