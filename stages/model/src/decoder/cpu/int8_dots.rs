//! `w8a8` panels' products on the CPU's integer dot products ([`Int8Dots`]).
//!
//! The panels hold each weight's int8 value plus 128 ([`Biased`]), four positions
//! by four ([`super::panels::PanelValue::STEP`]); the input is quantized by blocks of
//! 32 positions ([`super::activations`]). Per block, each lane's int32 sum takes the
//! block's eight quads' dot products, exactly, and is then converted and
//! multiply-added with the block's scale into the f32 result. The weight's per-row
//! scale and the bias are applied by the caller. [`reference`] does the same
//! arithmetic in plain Rust, in the same order: every build gives the same bits.
//!
//! - **AVX512-VNNI** (`x86_vnni`): `vpdpbusd` multiplies 16 lanes' four unsigned
//!   bytes (the biased weights) by a broadcast word of four signed ones (four
//!   positions of one input row) and adds the four products into each lane's int32,
//!   which starts at the block's offset (−128 times its input values' sum: the bias
//!   comes back out). One instruction does the work of four positions, where the
//!   widening kernel ([`super::kernel`]) loads, widens, converts and multiply-adds one.
//! - **AVX2** (`x86_avx2`), as llama.cpp's q8_0 dot products: `vpmaddubsw` multiplies
//!   unsigned bytes by signed ones and adds pairs into int16, which saturates past
//!   32,767, so the biased weights cannot go in as they are (255 · 127 · 2). Their
//!   bias comes off (a xor), their magnitudes go in as the unsigned operand and their
//!   signs onto the input's bytes (`vpsignb`): a pair is then at most 127 · 127 · 2 =
//!   32,258 (weights and inputs are quantized to ±127), exact; `vpmaddwd` by ones adds
//!   the pairs into int32. Eight lanes a register, a panel in two; the sums start at
//!   zero. The tiles keep the f32 results in the output (in cache) rather than in
//!   registers: AVX2 has 16, and the sums need two per row and panel.
//!
//! The second module of the workspace with `unsafe` (with [`super::dot`]): LLVM makes
//! no dot products from safe Rust, and the vector loads and stores are pointer
//! intrinsics.

#![allow(unsafe_code)]

use super::activations::{BLOCK_QUADS, Group, QUAD, Quads};
use super::columns::Columns;
use super::isa::{Int8Dots, Isa};
use super::kernel::Shape;
use super::panels::{PANEL, PanelValue};

/// An int8 weight plus 128, as the dot product's unsigned operand takes it (the
/// default, 128, is a zero weight: padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Biased(pub u8);

impl Default for Biased {
    fn default() -> Self {
        Self(128)
    }
}

impl Biased {
    /// The int8 weight `q`, biased.
    pub fn of(q: i8) -> Self {
        Self((q as u8) ^ 0x80)
    }
}

impl PanelValue for Biased {
    const STEP: usize = QUAD;
    #[inline(always)]
    fn widen(self) -> f32 {
        f32::from(i16::from(self.0) - 128)
    }
}

/// The tile shape of `isa`'s int8 dot products (of the AVX512-VNNI ones where it
/// has none: [`reference`] takes any group).
pub fn shape(isa: Isa) -> Shape {
    Shape::int8_dots(isa.int8_dots().unwrap_or(Int8Dots::Vnni))
}

/// `y[r][p·PANEL + l] = Σ_b scale[r][b] · Σ_{k in b} q[r][k] · w[p·PANEL + l][k]`
/// over the given panels, `x` as [`Quads`] in groups of [`shape`]`(isa)`'s rows; `y`
/// is `[rows][panels · PANEL]`. On `isa`'s int8 dot products ([`Isa::int8_dots`]),
/// else by [`reference`].
pub fn product(isa: Isa, x: &Quads, rows: usize, panels: &[Biased], y: &mut Columns<'_>) {
    let shape = shape(isa);
    let size = x.quads * QUAD * PANEL;
    assert!(panels.len().is_multiple_of(size));
    assert_eq!((y.rows(), y.width()), (rows, panels.len() / size * PANEL));
    assert_eq!(
        x.group_rows(),
        shape.group,
        "quads grouped for another build"
    );
    let Some(dots) = isa.int8_dots() else {
        return reference(x, rows, panels, y);
    };
    for t in shape.tiles(rows, panels.len() / size, size) {
        let g = x.group(t.group);
        assert_eq!(g.rows, t.rows);
        let w = &panels[t.panel * size..][..t.panels * size];
        let (row, column) = t.at(shape);
        let out = y.tile(row, column, t.rows, t.panels * PANEL);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has the instructions of `dots` (`isa.int8_dots()` says so);
        // the group holds the tile's rows' quads, scales and offsets, `w` its panels
        // (the asserts above and the tiles' bounds, checked again in `tile`), and
        // `out` the tile's outputs (`Columns::tile` checked them).
        unsafe {
            match dots {
                Int8Dots::Vnni => x86_vnni::tile(t.rows, t.panels, g, x.blocks, w, out),
                Int8Dots::Avx2 => x86_avx2::tile(t.rows, t.panels, g, x.blocks, w, out),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("{t:?} on {dots:?}: no int8 dot products off x86-64");
    }
}

/// [`product`]'s arithmetic in plain Rust, lane by lane, in the same order (each
/// block's int32 sum from its offset, then `scale · sum + result`, fused): the same
/// bits as the dot products.
pub fn reference(x: &Quads, rows: usize, panels: &[Biased], y: &mut Columns<'_>) {
    let group = x.group_rows();
    let size = x.quads * QUAD * PANEL;
    for r in 0..rows {
        let g = x.group(r / group);
        let at = r % group;
        for (p, panel) in panels.chunks_exact(size).enumerate() {
            let y = y.segment(r, p * PANEL, PANEL);
            for (lane, y) in y.iter_mut().enumerate() {
                let mut acc = 0f32;
                for b in 0..x.blocks {
                    let mut sum = g.offsets[b * g.rows + at];
                    let last = ((b + 1) * BLOCK_QUADS).min(x.quads);
                    for j in b * BLOCK_QUADS..last {
                        let word = g.words[j * g.rows + at].to_le_bytes();
                        let w = &panel[(j * PANEL + lane) * QUAD..][..QUAD];
                        for (&v, w) in word.iter().zip(w) {
                            sum += i32::from(v as i8) * i32::from(w.0);
                        }
                    }
                    acc = (sum as f32).mul_add(g.scales[b * g.rows + at], acc);
                }
                *y = acc;
            }
        }
    }
}

/// The bounds every tile checks before it reads: `g` holds `rows` rows of `quads`
/// quads and `blocks` blocks, `w` `panels` panels of them.
fn tile_bounds(rows: usize, panels: usize, g: Group<'_>, blocks: usize, w: &[Biased]) -> usize {
    let quads = g.words.len() / rows;
    assert!(
        g.rows == rows
            && g.words.len() == rows * quads
            && g.scales.len() == rows * blocks
            && g.offsets.len() == rows * blocks
            && blocks == quads.div_ceil(BLOCK_QUADS)
            && w.len() == panels * quads * QUAD * PANEL
    );
    quads
}

#[cfg(target_arch = "x86_64")]
mod x86_vnni {
    use std::arch::x86_64::*;

    use super::{BLOCK_QUADS, Biased, Group, PANEL, QUAD, tile_bounds};

    /// The tile of `rows` by `panels`: `g` its rows' quads, scales and offsets
    /// (`blocks` per row), `w` its panels, its results into `y` (row `r` at
    /// `r · stride`).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and VNNI; `w` holds `panels` whole panels of `g`'s
    /// quads; `y` points at `rows` rows of `panels · PANEL` values, `stride` apart.
    #[target_feature(enable = "avx512f,avx512vnni")]
    pub(super) unsafe fn tile(
        rows: usize,
        panels: usize,
        g: Group<'_>,
        blocks: usize,
        w: &[Biased],
        (y, stride): (*mut f32, usize),
    ) {
        let quads = tile_bounds(rows, panels, g, blocks, w);
        let x = (g.words.as_ptr(), g.scales.as_ptr(), g.offsets.as_ptr());
        let w = w.as_ptr().cast::<u8>();
        // SAFETY: as the function's contract, checked by `tile_bounds`.
        unsafe {
            match (rows, panels) {
                (1, 1) => tile_of::<1, 1>(x, w, y, quads, stride),
                (1, 2) => tile_of::<1, 2>(x, w, y, quads, stride),
                (1, 4) => tile_of::<1, 4>(x, w, y, quads, stride),
                (2, 1) => tile_of::<2, 1>(x, w, y, quads, stride),
                (2, 2) => tile_of::<2, 2>(x, w, y, quads, stride),
                (2, 4) => tile_of::<2, 4>(x, w, y, quads, stride),
                (3, 1) => tile_of::<3, 1>(x, w, y, quads, stride),
                (3, 2) => tile_of::<3, 2>(x, w, y, quads, stride),
                (3, 4) => tile_of::<3, 4>(x, w, y, quads, stride),
                (4, 1) => tile_of::<4, 1>(x, w, y, quads, stride),
                (4, 2) => tile_of::<4, 2>(x, w, y, quads, stride),
                (5, 1) => tile_of::<5, 1>(x, w, y, quads, stride),
                (5, 2) => tile_of::<5, 2>(x, w, y, quads, stride),
                (6, 1) => tile_of::<6, 1>(x, w, y, quads, stride),
                (6, 2) => tile_of::<6, 2>(x, w, y, quads, stride),
                (7, 1) => tile_of::<7, 1>(x, w, y, quads, stride),
                (8, 1) => tile_of::<8, 1>(x, w, y, quads, stride),
                (rows, panels) => unreachable!("no tile of {rows} rows by {panels} panels"),
            }
        }
    }

    /// `R` rows by `P` panels: `R · P` int32 sums and as many f32 results in
    /// registers; per quad, `P` panel vectors loaded and each row's word broadcast.
    #[target_feature(enable = "avx512f,avx512vnni")]
    #[inline]
    unsafe fn tile_of<const R: usize, const P: usize>(
        (words, scales, offsets): (*const u32, *const f32, *const i32),
        w: *const u8,
        y: *mut f32,
        quads: usize,
        stride: usize,
    ) {
        let size = quads * QUAD * PANEL;
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for b in 0..quads.div_ceil(BLOCK_QUADS) {
            let mut sums = [[_mm512_setzero_si512(); P]; R];
            for (r, sums) in sums.iter_mut().enumerate() {
                // SAFETY: row `r`'s offset of block `b` lies within `offsets`.
                let offset = _mm512_set1_epi32(unsafe { *offsets.add(b * R + r) });
                sums.fill(offset);
            }
            for j in b * BLOCK_QUADS..((b + 1) * BLOCK_QUADS).min(quads) {
                let mut wj = [_mm512_setzero_si512(); P];
                for (p, wj) in wj.iter_mut().enumerate() {
                    // SAFETY: panel `p`'s quad `j` lies within `w`.
                    *wj = unsafe { _mm512_loadu_si512(w.add(p * size + j * QUAD * PANEL).cast()) };
                }
                for (r, sums) in sums.iter_mut().enumerate() {
                    // SAFETY: row `r`'s quad `j` lies within `words`.
                    let xj = _mm512_set1_epi32(unsafe { *words.add(j * R + r) } as i32);
                    for (sum, &wj) in sums.iter_mut().zip(&wj) {
                        *sum = _mm512_dpbusd_epi32(*sum, wj, xj);
                    }
                }
            }
            for ((r, acc), sums) in acc.iter_mut().enumerate().zip(&sums) {
                // SAFETY: row `r`'s scale of block `b` lies within `scales`.
                let scale = _mm512_set1_ps(unsafe { *scales.add(b * R + r) });
                for (acc, &sum) in acc.iter_mut().zip(sums) {
                    *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), scale, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (p, &acc) in acc.iter().enumerate() {
                // SAFETY: row `r`'s outputs of panel `p` lie within `y`.
                unsafe { _mm512_storeu_ps(y.add(r * stride + p * PANEL), acc) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86_avx2 {
    use std::arch::x86_64::*;

    use super::{BLOCK_QUADS, Biased, Group, PANEL, QUAD, tile_bounds};

    /// Lanes of a panel per AVX2 register.
    const HALF: usize = PANEL / 2;

    /// The tile of `rows` by `panels`: `g` its rows' quads and scales (`blocks` per
    /// row), `w` its panels, its results into `y` (row `r` at `r · stride`).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `w` holds `panels` whole panels of `g`'s quads; `y`
    /// points at `rows` rows of `panels · PANEL` values, `stride` apart.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        rows: usize,
        panels: usize,
        g: Group<'_>,
        blocks: usize,
        w: &[Biased],
        (y, stride): (*mut f32, usize),
    ) {
        let quads = tile_bounds(rows, panels, g, blocks, w);
        let x = (g.words.as_ptr(), g.scales.as_ptr());
        let w = w.as_ptr().cast::<u8>();
        // SAFETY: as the function's contract, checked by `tile_bounds`.
        unsafe {
            match (rows, panels) {
                (1, 1) => tile_of::<1, 1>(x, w, y, quads, stride),
                (1, 2) => tile_of::<1, 2>(x, w, y, quads, stride),
                (1, 4) => tile_of::<1, 4>(x, w, y, quads, stride),
                (2, 1) => tile_of::<2, 1>(x, w, y, quads, stride),
                (2, 2) => tile_of::<2, 2>(x, w, y, quads, stride),
                (3, 1) => tile_of::<3, 1>(x, w, y, quads, stride),
                (4, 1) => tile_of::<4, 1>(x, w, y, quads, stride),
                (rows, panels) => unreachable!("no tile of {rows} rows by {panels} panels"),
            }
        }
    }

    /// `R` rows by `P` panels: `2 · R · P` int32 sums in registers, the f32 results
    /// in `y`; per quad and half panel, the weights' bias taken off and their
    /// magnitudes taken once, then each row's word broadcast and signed by them.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile_of<const R: usize, const P: usize>(
        (words, scales): (*const u32, *const f32),
        w: *const u8,
        y: *mut f32,
        quads: usize,
        stride: usize,
    ) {
        let size = quads * QUAD * PANEL;
        let (bias, ones) = (_mm256_set1_epi8(i8::MIN), _mm256_set1_epi16(1));
        // SAFETY (every access below): row `r`'s outputs of panel `p` lie within
        // `y`, its quads and scales within `words` and `scales`, panel `p`'s quad
        // `j` within `w`, as the caller's contract says.
        let out =
            |r: usize, p: usize, h: usize| unsafe { y.add(r * stride + p * PANEL + h * HALF) };
        for r in 0..R {
            for p in 0..P {
                for h in 0..2 {
                    unsafe { _mm256_storeu_ps(out(r, p, h), _mm256_setzero_ps()) };
                }
            }
        }
        for b in 0..quads.div_ceil(BLOCK_QUADS) {
            let mut sums = [[[_mm256_setzero_si256(); 2]; P]; R];
            for j in b * BLOCK_QUADS..((b + 1) * BLOCK_QUADS).min(quads) {
                for p in 0..P {
                    for h in 0..2 {
                        let at = p * size + j * QUAD * PANEL + h * HALF * QUAD;
                        let biased = unsafe { _mm256_loadu_si256(w.add(at).cast()) };
                        let signed = _mm256_xor_si256(biased, bias);
                        let magnitude = _mm256_abs_epi8(signed);
                        for (r, sums) in sums.iter_mut().enumerate() {
                            let xj = _mm256_set1_epi32(unsafe { *words.add(j * R + r) } as i32);
                            let pairs =
                                _mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(xj, signed));
                            let dots = _mm256_madd_epi16(pairs, ones);
                            sums[p][h] = _mm256_add_epi32(sums[p][h], dots);
                        }
                    }
                }
            }
            for (r, sums) in sums.iter().enumerate() {
                let scale = _mm256_set1_ps(unsafe { *scales.add(b * R + r) });
                for (p, sums) in sums.iter().enumerate() {
                    for (h, &sum) in sums.iter().enumerate() {
                        let at = out(r, p, h);
                        let acc = unsafe { _mm256_loadu_ps(at) };
                        let acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc);
                        unsafe { _mm256_storeu_ps(at, acc) };
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::activations::Blocks;
    use super::*;

    /// `count` panels of `inner` biased weights (`[count·PANEL][inner]` int8 values,
    /// row-major, as given) laid out as the packing lays them.
    fn panels(q: &[i8], count: usize, inner: usize) -> Vec<Biased> {
        let quads = inner.div_ceil(QUAD);
        let mut out = vec![Biased::default(); count * quads * QUAD * PANEL];
        for (o, row) in q.chunks(inner).enumerate() {
            let (p, lane) = (o / PANEL, o % PANEL);
            for (k, &v) in row.iter().enumerate() {
                out[(p * quads + k / QUAD) * QUAD * PANEL + lane * QUAD + k % QUAD] = Biased::of(v);
            }
        }
        out
    }

    /// Deterministic int8 and f32 values (an LCG): no seed shared with other tests.
    fn values(n: usize, seed: u64) -> (Vec<i8>, Vec<f32>) {
        let mut s = seed;
        let mut next = move || {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (s >> 33) as u32
        };
        let q = (0..n)
            .map(|_| (next() % 255) as i32 - 127)
            .map(|v| v as i8)
            .collect();
        let x = (0..n)
            .map(|_| (next() % 20_001) as f32 / 1000.0 - 10.0)
            .collect();
        (q, x)
    }

    #[test]
    fn the_reference_is_the_product_of_the_quantized_input_and_weights() {
        // 40 inputs: a full block and one of two quads; 25: a last quad of one value.
        for inner in [40usize, 25, 64] {
            let count = 3;
            let (q, _) = values(count * PANEL * inner, 1);
            let w = panels(&q, count, inner);
            for rows in [1usize, 5, 8, 11] {
                let (_, x) = values(rows * inner, 2 + rows as u64);
                let blocks = Blocks::quantize(&x, rows, inner);
                let xq = blocks.dequantized();
                let mut y = vec![0f32; rows * count * PANEL];
                let x = blocks.quads(shape(Isa::Portable).group);
                reference(&x, rows, &w, &mut Columns::whole(&mut y, rows));
                for r in 0..rows {
                    for o in 0..count * PANEL {
                        let want: f64 = (0..inner)
                            .map(|k| f64::from(xq[r * inner + k]) * f64::from(q[o * inner + k]))
                            .sum();
                        let got = f64::from(y[r * count * PANEL + o]);
                        assert!(
                            (got - want).abs() < 1e-3 * want.abs().max(1.0),
                            "{inner} {rows} {r} {o}: {got} {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[allow(clippy::print_stderr)] // Says why the test checked nothing on this CPU.
    fn the_dot_products_give_the_references_bits_for_every_tile() {
        let builds: Vec<Isa> = Isa::available()
            .into_iter()
            .filter(|isa| isa.int8_dots().is_some())
            .collect();
        if builds.is_empty() {
            eprintln!("no AVX2 here: the int8 dot products are not run");
            return;
        }
        // 5 panels: blocks of 4 and a single panel; rows past one group. Then the
        // extremes: weights and inputs all ±127 (each input block's values of one
        // magnitude), where AVX2's int16 pairs reach 2 · 127², next to saturating.
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for (inner, extremes) in [(40usize, false), (25, false), (576, false), (64, true)] {
            let count = 5;
            let (mut q, _) = values(count * PANEL * inner, 3);
            if extremes {
                q.iter_mut()
                    .for_each(|q| *q = if *q < 0 { -127 } else { 127 });
            }
            let w = panels(&q, count, inner);
            for rows in (1..=9).chain([13, 32]) {
                let (_, mut x) = values(rows * inner, 4 + rows as u64);
                if extremes {
                    x.iter_mut().for_each(|x| *x = 3f32.copysign(*x));
                }
                let blocks = Blocks::quantize(&x, rows, inner);
                for &isa in &builds {
                    let x = blocks.quads(shape(isa).group);
                    // NaN where the kernel writes nothing.
                    let (mut got, mut want) = (
                        vec![f32::NAN; rows * count * PANEL],
                        vec![0f32; rows * count * PANEL],
                    );
                    product(isa, &x, rows, &w, &mut Columns::whole(&mut got, rows));
                    reference(&x, rows, &w, &mut Columns::whole(&mut want, rows));
                    let at = format!("{}: {inner} inputs, {rows} rows", isa.name());
                    // The reference sums in int32: a saturated pair would differ.
                    assert_eq!(bits(&got), bits(&want), "{at}");
                }
            }
        }
    }
}
