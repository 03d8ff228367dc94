//! bf16 panels' products on the avx512_bf16 build: AVX512-BF16's dot product
//! (`vdpbf16ps`) multiplies 16 lanes' pairs of bf16 values by a broadcast pair of the
//! input's and adds both products into f32 accumulators, so one instruction does the
//! work of two positions, where widening each bf16 value to f32 first took three
//! (a load with zero extension, a shift, a fused multiply-add per position).
//!
//! The panels hold their values by pairs of positions
//! ([`super::panels::PanelValue::STEP`]); the input is rounded to bf16 and packed by
//! pairs too, one 32-bit word per row and pair ([`pairs`]), grouped by rows as
//! [`super::kernel`]'s input is, and the tiles are those of the AVX-512 build
//! ([`Shape`]). The products of each pair are exact in f32 (8-bit mantissas) and the
//! sums run in f32 with the instruction's own rounding to nearest (denormals
//! flushed): the widening kernel's results over the rounded input, up to the order
//! of the sums.
//!
//! With `unsafe`, as [`super::int8_dots`]: LLVM makes no dot products from safe Rust,
//! and the vector loads and stores are pointer intrinsics. Measured on an
//! AMD EPYC Zen 4 (two threads read memory at 34–42 GB/s), SmolLM2-135M, mixed
//! precision, 64 new tokens, two rounds against the widening kernel (and libtorch
//! past 8 rows): 370 / 382 tok/s against 309 / 318 at batch 8, 395 / 445 against
//! 257 / 310 at 16, 472 / 499 against 337 / 400 at 32. On an Intel Xeon whose two
//! threads read 14 GB/s it had not gained at batch 1 and 8: the products there ran at
//! the memory's speed.

#![allow(unsafe_code)]

use super::columns::Columns;
use super::isa::Isa;
use super::kernel::{Shape, TileAt};
use super::panels::{Bf16, PANEL};

/// `x` (`rows × inner`, row-major) rounded to bf16 and packed by pairs of positions,
/// in groups of `group` rows (the last may have fewer), each `pairs × rows in the
/// group` words: word `j` of a row holds position `2j` in its low half and `2j + 1`
/// in its high half (zero past the end of an odd row).
pub fn pairs(x: &[f32], rows: usize, inner: usize, group: usize) -> Vec<u32> {
    let count = inner.div_ceil(2);
    let mut out = vec![0u32; rows * count];
    for (rows, out) in x.chunks(group * inner).zip(out.chunks_mut(group * count)) {
        let n = rows.len() / inner;
        for (r, row) in rows.chunks_exact(inner).enumerate() {
            for (j, pair) in row.chunks(2).enumerate() {
                let low = u32::from(Bf16::round(pair[0]).0);
                let high = pair.get(1).map_or(0, |&v| u32::from(Bf16::round(v).0));
                out[j * n + r] = low | high << 16;
            }
        }
    }
    out
}

/// `y[r][p·PANEL + l] = Σ_k x[r][k] · w[p·PANEL + l][k]` over the given bf16 panels,
/// `x` as [`pairs`] packs it with the AVX-512 build's group; `y` is `[rows][panels ·
/// PANEL]`. Needs a CPU with AVX512-BF16 ([`Isa::Avx512Bf16`]).
pub fn product(grouped: &[u32], rows: usize, inner: usize, panels: &[Bf16], y: &mut Columns<'_>) {
    assert!(
        Isa::Avx512Bf16.supported(),
        "bf16 dot products need AVX512-BF16"
    );
    let shape = Shape::of(Isa::Avx512Bf16);
    let count = inner.div_ceil(2);
    let size = count * 2 * PANEL;
    assert!(grouped.len() == rows * count && panels.len().is_multiple_of(size));
    assert_eq!((y.rows(), y.width()), (rows, panels.len() / size * PANEL));
    for t in shape.tiles(rows, panels.len() / size, size * size_of::<Bf16>()) {
        let x = &grouped[t.group * shape.group * count..][..t.rows * count];
        let w = &panels[t.panel * size..][..t.panels * size];
        let (row, column) = t.at(shape);
        let out = y.tile(row, column, t.rows, t.panels * PANEL);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX512-BF16 (asserted above); `x` holds the tile's
        // rows' pairs, `w` its panels (the asserts above and the tiles' bounds), and
        // `out` the tile's outputs (`Columns::tile` checked them).
        unsafe {
            x86::tile(t, x, w, out)
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("{t:?}: no AVX512-BF16 off x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Bf16, PANEL, TileAt};

    /// The tile `t`: `x` its rows' pairs (pair by pair, row by row), `w` its panels,
    /// its results into `y` (row `r` at `r · stride`).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `x` holds `t.rows` rows of pairs, `w`
    /// `t.panels` whole panels of as many pairs; `y` points at `t.rows` rows of
    /// `t.panels · PANEL` values, `stride` apart.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(t: TileAt, x: &[u32], w: &[Bf16], (y, stride): (*mut f32, usize)) {
        let pairs = w.len() / (t.panels * 2 * PANEL);
        assert!(x.len() == t.rows * pairs);
        let (x, w) = (x.as_ptr(), w.as_ptr());
        // SAFETY: as the function's contract, checked by the assert above.
        unsafe {
            match (t.rows, t.panels) {
                (1, 1) => tile_of::<1, 1>(x, w, y, pairs, stride),
                (1, 2) => tile_of::<1, 2>(x, w, y, pairs, stride),
                (1, 4) => tile_of::<1, 4>(x, w, y, pairs, stride),
                (2, 1) => tile_of::<2, 1>(x, w, y, pairs, stride),
                (2, 2) => tile_of::<2, 2>(x, w, y, pairs, stride),
                (2, 4) => tile_of::<2, 4>(x, w, y, pairs, stride),
                (3, 1) => tile_of::<3, 1>(x, w, y, pairs, stride),
                (3, 2) => tile_of::<3, 2>(x, w, y, pairs, stride),
                (4, 1) => tile_of::<4, 1>(x, w, y, pairs, stride),
                (4, 2) => tile_of::<4, 2>(x, w, y, pairs, stride),
                (5, 1) => tile_of::<5, 1>(x, w, y, pairs, stride),
                (5, 2) => tile_of::<5, 2>(x, w, y, pairs, stride),
                (6, 1) => tile_of::<6, 1>(x, w, y, pairs, stride),
                (6, 2) => tile_of::<6, 2>(x, w, y, pairs, stride),
                (7, 1) => tile_of::<7, 1>(x, w, y, pairs, stride),
                (7, 2) => tile_of::<7, 2>(x, w, y, pairs, stride),
                (8, 1) => tile_of::<8, 1>(x, w, y, pairs, stride),
                (8, 2) => tile_of::<8, 2>(x, w, y, pairs, stride),
                (rows, panels) => unreachable!("no tile of {rows} rows by {panels} panels"),
            }
        }
    }

    /// `R` rows by `P` panels, `R · P` accumulators in registers: per pair, `P`
    /// panel vectors loaded and each row's pair broadcast once.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn tile_of<const R: usize, const P: usize>(
        x: *const u32,
        w: *const Bf16,
        y: *mut f32,
        pairs: usize,
        stride: usize,
    ) {
        let size = pairs * 2 * PANEL;
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        for j in 0..pairs {
            let mut wj = [_mm512_setzero_si512(); P];
            for (p, wj) in wj.iter_mut().enumerate() {
                // SAFETY: panel `p`'s pair `j` lies within `w` (the caller's contract).
                *wj = unsafe { _mm512_loadu_si512(w.add(p * size + j * 2 * PANEL).cast()) };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `r`'s pair `j` lies within `x`.
                let xj = _mm512_set1_epi32(unsafe { *x.add(j * R + r) } as i32);
                for (acc, &wj) in acc.iter_mut().zip(&wj) {
                    *acc = _mm512_dpbf16_ps(*acc, bf16s(wj), bf16s(xj));
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

    /// A vector's 32 bf16 values, as the dot product takes them.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn bf16s(v: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain bits.
        unsafe { std::mem::transmute(v) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_round_to_bf16_and_hold_two_positions_a_word_grouped_by_rows() {
        // 3 rows of 3 (odd: the last pair's high half is zero), groups of 2.
        let x = [
            1.0f32,
            2.0,
            3.0,
            -1.0,
            0.5,
            1.0 + 1.0 / 256.0,
            4.0,
            5.0,
            6.0,
        ];
        let b = |v: f32| u32::from(Bf16::round(v).0);
        let w = |lo: f32, hi: f32| b(lo) | b(hi) << 16;
        assert_eq!(
            pairs(&x, 3, 3, 2),
            [
                // group of rows 0 and 1: pair 0 of each, then pair 1 of each
                w(1.0, 2.0),
                w(-1.0, 0.5),
                b(3.0),
                b(1.0), // 1 + 2⁻⁸ rounds to 1 (a tie, to even)
                // group of row 2
                w(4.0, 5.0),
                b(6.0),
            ]
        );
    }
}
