//! The panel products' inner loops ([`super::panels`]): tiles of a few input rows by a
//! few panels, the accumulators in registers, cut to fit each build's registers
//! ([`Shape`], the one place the cuts are chosen).
//!
//! A tile of `R` rows by `P` panels keeps `R·P` panels' worth of accumulators; per
//! position it loads `P` weight vectors (widened once) and broadcasts `R` input
//! values, for `R·P·PANEL` fused multiply-adds. AVX-512 has 32 registers and holds a
//! panel in one: it takes groups of 8 rows and tiles of 8 rows by 2 panels (16
//! accumulators, 2 weight registers, a broadcast), so that a batch of 8 widens each
//! weight once a step; a single row takes 4 panels at a time (4 chains, 4 widenings
//! in flight). AVX2 has 16 and needs two per panel, where 4 by 2 spilled accumulators
//! to the stack in the hot loop (perf annotate on a Zen 3: stores and reloads around
//! every other multiply-add); it takes 6 rows by one panel (12 accumulators, 2 weight
//! registers, a broadcast: the classic AVX2 shape of 6 by 16), and, for a group of
//! fewer rows, more panels at a time so that enough independent multiply-adds hide
//! their latency (one row by 4 panels: 8 chains, the weights read straight from
//! memory). A product of several groups passes over a block of panels once per
//! group; blocks stay within [`BLOCK_BYTES`] so that the next group finds them in L2.
//!
//! Measured on a 2-core Zen 3 (AVX2 only), rollouts of SmolLM2-135M at batch 1 / 8 /
//! 32 against 4 by 2 and blocks of 2: f32 about the same / the same / 1.3× (96–115
//! to 139–162 tok/s), int8 rollout weights the same / 1.4–1.6× / 1.5× (102–108 to
//! 149–188 at batch 32). On an Intel Xeon (AVX-512), one thread, int8 panels of
//! SmolLM2's gate/up (576 → 3,072) and down (1,536 → 576) maps, best of 5 rounds of 50
//! products, 4 by 2 against 8 by 2 with single rows by 4: 262 → 195 µs and 134 → 98 at
//! 1 row, 472 → 370 and 206 → 156 at 8, 1,955 → 1,525 and 783 → 666 at 32.

use multiversion::multiversion;

use super::columns::Columns;
use super::isa::{Int8Dots, Isa};
use super::panels::{PANEL, PanelValue};

/// How a build cuts a product: input rows per group, panels per block (the panels
/// one pass over the groups keeps in cache) and panels per tile for a group of a given
/// number of rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Input rows per group; the input is interleaved by groups of this many.
    pub group: usize,
    /// Most panels a pass over every group takes before moving on.
    widest_block: usize,
    /// Panels per tile for a group of 1, 2, … `group` rows.
    tile_panels: &'static [usize],
}

impl Shape {
    /// The shape of `isa`'s build.
    pub fn of(isa: Isa) -> Self {
        match isa {
            Isa::Avx2 => Self {
                group: 6,
                widest_block: 4,
                tile_panels: &[4, 2, 2, 1, 1, 1],
            },
            Isa::Avx512 | Isa::Avx512Bf16 => Self {
                group: 8,
                widest_block: 4,
                tile_panels: &[4, 4, 2, 2, 2, 2, 2, 2],
            },
            Isa::Portable => Self {
                group: 4,
                widest_block: 2,
                tile_panels: &[2, 2, 2, 2],
            },
        }
    }

    /// The shape of the int8 dot products' tiles ([`super::int8_dots`]), which keep
    /// an int32 sum beside each result. AVX512-VNNI's: groups of 8 rows as
    /// AVX-512's, with twice the registers a widening tile of its size takes, so 3
    /// rows by 4 panels at most (24 accumulators, 4 weight registers), 6 by 2, 8 by
    /// one. AVX2's: two sums per row and panel, the results in memory, so 8 sums at
    /// most of AVX2's 16 registers beside the weights, their magnitudes, the input
    /// and the constants: a row by 4 panels, 2 by 2, 4 by one.
    pub fn int8_dots(dots: Int8Dots) -> Self {
        match dots {
            Int8Dots::Vnni => Self {
                group: 8,
                widest_block: 4,
                tile_panels: &[4, 4, 4, 2, 2, 2, 1, 1],
            },
            Int8Dots::Avx2 => Self {
                group: 4,
                widest_block: 4,
                tile_panels: &[4, 2, 1, 1],
            },
        }
    }

    /// Panels per block for panels of `bytes` each and `rows` input rows: with more
    /// than one group (each pass over a block reads it again), as many as fit in
    /// [`BLOCK_BYTES`], at least a full group's tile; with one group, the build's.
    pub(super) fn block(self, bytes: usize, rows: usize) -> usize {
        if rows <= self.group {
            return self.widest_block;
        }
        let least = self.tile_panels[self.group - 1];
        (BLOCK_BYTES / bytes.max(1)).clamp(least, self.widest_block)
    }

    /// Panels per tile for a group of `rows`, at most `left`: a power of two (the
    /// tiles that exist).
    pub(super) fn tile(self, rows: usize, left: usize) -> usize {
        let most = self.tile_panels[rows - 1].min(left);
        1 << most.ilog2()
    }
}

/// Bytes of panels a block of a product of several groups keeps for the next group:
/// half a Zen 3 core's L2, the rest for the input and the output. (AVX2's blocks of 4
/// f32 panels of 1,536 inputs were 393 KB, read again from L3 by each group.)
const BLOCK_BYTES: usize = 256 << 10;

/// One tile of a product: its group of rows, the rows in that group, its first
/// panel and how many panels it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TileAt {
    pub group: usize,
    pub rows: usize,
    pub panel: usize,
    pub panels: usize,
}

impl TileAt {
    /// Where its results go in the `[rows][panels · PANEL]` output of `shape`'s
    /// product: its first row and column.
    pub fn at(self, shape: Shape) -> (usize, usize) {
        (self.group * shape.group, self.panel * PANEL)
    }
}

/// The tiles of a product, in the order they run: blocks of panels, in each every
/// group of rows, in each the block's panels by tiles ([`Shape::tiles`]).
pub(super) struct Tiles {
    shape: Shape,
    rows: usize,
    count: usize,
    block: usize,
    first: usize,
    group: usize,
    panel: usize,
}

impl Iterator for Tiles {
    type Item = TileAt;

    fn next(&mut self) -> Option<TileAt> {
        while self.first < self.count {
            let end = (self.first + self.block).min(self.count);
            if self.group * self.shape.group >= self.rows {
                (self.first, self.group, self.panel) = (end, 0, end);
            } else if self.panel >= end {
                (self.group, self.panel) = (self.group + 1, self.first);
            } else {
                let rows = (self.rows - self.group * self.shape.group).min(self.shape.group);
                let panels = self.shape.tile(rows, end - self.panel);
                let at = TileAt {
                    group: self.group,
                    rows,
                    panel: self.panel,
                    panels,
                };
                self.panel += panels;
                return Some(at);
            }
        }
        None
    }
}

impl Shape {
    /// The tiles of a product of `rows` input rows by `count` panels of `bytes`
    /// each.
    pub(super) fn tiles(self, rows: usize, count: usize, bytes: usize) -> Tiles {
        Tiles {
            shape: self,
            rows,
            count,
            block: self.block(bytes, rows),
            first: 0,
            group: 0,
            panel: 0,
        }
    }
}

/// `y[r][p·PANEL + l] = Σ_k x[r][k] · w[p·PANEL + l][k]` over the given panels (laid
/// out as [`super::panels`] packs them), with `x` interleaved by groups of
/// [`Shape::group`] rows of `isa`'s shape; `y`'s columns are `[rows][panels · PANEL]`. Built for
/// `isa` (the avx512_bf16 build's own products of bf16 panels are [`super::dot`]'s).
pub fn product<T: PanelValue>(
    isa: Isa,
    grouped: &[f32],
    rows: usize,
    inner: usize,
    panels: &[T],
    y: &mut Columns<'_>,
) {
    match isa {
        Isa::Avx512 | Isa::Avx512Bf16 => product_avx512(grouped, rows, inner, panels, y),
        Isa::Avx2 => product_avx2(grouped, rows, inner, panels, y),
        Isa::Portable => product_body::<T, false>(Shape::of(isa), grouped, rows, inner, panels, y),
    }
}

/// [`product_body`] built for AVX-512 (the portable build where the CPU lacks it;
/// [`Isa::supported`] is checked before).
#[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
fn product_avx512<T: PanelValue>(
    g: &[f32],
    rows: usize,
    inner: usize,
    p: &[T],
    y: &mut Columns<'_>,
) {
    product_body::<T, true>(Shape::of(Isa::Avx512), g, rows, inner, p, y)
}

/// [`product_body`] built for AVX2.
#[multiversion(targets("x86_64+avx2+fma"))]
fn product_avx2<T: PanelValue>(g: &[f32], rows: usize, inner: usize, p: &[T], y: &mut Columns<'_>) {
    product_body::<T, true>(Shape::of(Isa::Avx2), g, rows, inner, p, y)
}

/// [`product`]'s loop over the tiles ([`Shape::tiles`]), inlined into each build.
#[inline(always)]
fn product_body<T: PanelValue, const FUSED: bool>(
    shape: Shape,
    grouped: &[f32],
    rows: usize,
    inner: usize,
    panels: &[T],
    y: &mut Columns<'_>,
) {
    assert_eq!(y.rows(), rows);
    let size = inner.next_multiple_of(T::STEP) * PANEL;
    for t in shape.tiles(rows, panels.len() / size, size * size_of::<T>()) {
        let x = &grouped[t.group * shape.group * inner..][..t.rows * inner];
        let w = &panels[t.panel * size..][..t.panels * size];
        tile::<T, FUSED>(t.rows, t.panels, x, w, y, t.at(shape));
    }
}

/// The tile of `rows` by `panels`, for every pair a [`Shape`] takes.
#[inline(always)]
fn tile<T: PanelValue, const FUSED: bool>(
    rows: usize,
    panels: usize,
    x: &[f32],
    w: &[T],
    y: &mut Columns<'_>,
    at: (usize, usize),
) {
    match (rows, panels) {
        (1, 1) => tile_of::<T, FUSED, 1, 0, 1>(x, w, y, at),
        (1, 2) => tile_of::<T, FUSED, 1, 0, 2>(x, w, y, at),
        (1, 4) => tile_of::<T, FUSED, 1, 0, 4>(x, w, y, at),
        (2, 1) => tile_of::<T, FUSED, 2, 0, 1>(x, w, y, at),
        (2, 2) => tile_of::<T, FUSED, 2, 0, 2>(x, w, y, at),
        (3, 1) => tile_of::<T, FUSED, 3, 0, 1>(x, w, y, at),
        (3, 2) => tile_of::<T, FUSED, 3, 0, 2>(x, w, y, at),
        (4, 1) => tile_of::<T, FUSED, 4, 0, 1>(x, w, y, at),
        (4, 2) => tile_of::<T, FUSED, 4, 0, 2>(x, w, y, at),
        (5, 1) => tile_of::<T, FUSED, 5, 0, 1>(x, w, y, at),
        (6, 1) => tile_of::<T, FUSED, 6, 0, 1>(x, w, y, at),
        (2, 4) => tile_of::<T, FUSED, 2, 0, 4>(x, w, y, at),
        (5, 2) => tile_of::<T, FUSED, 4, 1, 2>(x, w, y, at),
        (6, 2) => tile_of::<T, FUSED, 4, 2, 2>(x, w, y, at),
        (7, 1) => tile_of::<T, FUSED, 7, 0, 1>(x, w, y, at),
        (7, 2) => tile_of::<T, FUSED, 4, 3, 2>(x, w, y, at),
        (8, 1) => tile_of::<T, FUSED, 8, 0, 1>(x, w, y, at),
        (8, 2) => tile_of::<T, FUSED, 4, 4, 2>(x, w, y, at),
        _ => unreachable!("no tile of {rows} rows by {panels} panels"),
    }
}

/// `a + v·w`: fused where the build has FMA.
#[inline(always)]
fn fma<const FUSED: bool>(v: f32, w: f32, a: f32) -> f32 {
    if FUSED { v.mul_add(w, a) } else { a + v * w }
}

/// A panel's values at position `k`, widened to f32 (the panel holds its lanes'
/// values [`PanelValue::STEP`] positions at a time).
#[inline(always)]
fn widened<T: PanelValue>(panel: &[T], k: usize) -> [f32; PANEL] {
    let chunk: &[T] = &panel[k / T::STEP * PANEL * T::STEP..][..PANEL * T::STEP];
    let at = k % T::STEP;
    let mut out = [0f32; PANEL];
    for (l, o) in out.iter_mut().enumerate() {
        *o = chunk[l * T::STEP + at].widen();
    }
    out
}

/// `R` grouped rows (`x`, position by position) times the `P` consecutive panels `w`,
/// the rows' accumulators in two arrays of `R` and `S` rows (LLVM keeps an array of up
/// to 128 floats in registers, not one of 256: a tile of 8 by 2 as one array spilled
/// every accumulator and ran 10× slower). [`tile`] splits only the tiles of more than
/// 128 accumulators.
#[inline(always)]
fn tile_of<T: PanelValue, const FUSED: bool, const R: usize, const S: usize, const P: usize>(
    x: &[f32],
    w: &[T],
    y: &mut Columns<'_>,
    (row, column): (usize, usize),
) {
    let size = w.len() / P;
    let mut first = [[[0f32; PANEL]; P]; R];
    let mut second = [[[0f32; PANEL]; P]; S];
    let mut wk = [[0f32; PANEL]; P];
    for (k, v) in x.chunks_exact(R + S).enumerate() {
        // (A loop, not `array::from_fn`: a closure is not built for the target ISA.)
        for (p, wk) in wk.iter_mut().enumerate() {
            *wk = widened(&w[p * size..][..size], k);
        }
        accumulate::<FUSED, R, P>(&mut first, &v[..R], &wk);
        accumulate::<FUSED, S, P>(&mut second, &v[R..], &wk);
    }
    for (r, acc) in first.iter().chain(second.iter()).enumerate() {
        for (p, acc) in acc.iter().enumerate() {
            y.segment(row + r, column + p * PANEL, PANEL)
                .copy_from_slice(acc);
        }
    }
}

/// `acc[r][p] += v[r] · w[p]` for every row and panel of one position.
#[inline(always)]
fn accumulate<const FUSED: bool, const R: usize, const P: usize>(
    acc: &mut [[[f32; PANEL]; P]; R],
    v: &[f32],
    w: &[[f32; PANEL]; P],
) {
    for r in 0..R {
        for p in 0..P {
            for l in 0..PANEL {
                acc[r][p][l] = fma::<FUSED>(v[r], w[p][l], acc[r][p][l]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_shrink_to_fit_only_where_several_groups_read_them() {
        let (avx2, avx512) = (Shape::of(Isa::Avx2), Shape::of(Isa::Avx512));
        // An f32 panel of 576 inputs (36 KB) and of 1,536 (98 KB), an int8 one of
        // 1,536 (25 KB), one of 16,384 f32 (1 MB).
        for (bytes, several, one) in [
            (36_864, 4, 4),
            (98_304, 2, 4),
            (24_576, 4, 4),
            (1 << 20, 1, 4),
        ] {
            assert_eq!(avx2.block(bytes, 32), several, "{bytes} bytes, 32 rows");
            assert_eq!(avx2.block(bytes, 6), one, "{bytes} bytes, 6 rows");
            // AVX-512's: 4 panels, or 2 (its tiles of 8 rows) where 4 do not fit.
            assert_eq!(avx512.block(bytes, 32), several.max(2), "{bytes} bytes");
            assert_eq!(avx512.block(bytes, 8), 4);
        }
    }

    #[test]
    fn every_shape_takes_tiles_that_exist_and_cover_each_block() {
        for isa in [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Portable] {
            let shape = Shape::of(isa);
            assert_eq!(shape.tile_panels.len(), shape.group);
            for rows in 1..=shape.group {
                for left in 1..=shape.widest_block {
                    let n = shape.tile(rows, left);
                    assert!(n <= left && n.is_power_of_two(), "{rows} rows, {left} left");
                    let (x, w) = (vec![1f32; rows * 3], vec![1f32; n * 3 * PANEL]);
                    let mut y = vec![0f32; rows * n * PANEL];
                    tile::<f32, false>(rows, n, &x, &w, &mut Columns::whole(&mut y, rows), (0, 0));
                    assert!(y.iter().all(|&v| v == 3.0), "{rows} by {n}");
                }
            }
        }
    }
}
