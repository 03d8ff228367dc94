//! A product's input quantized to int8 for `rollout_weights: w8a8`: each row by
//! blocks of [`BLOCK`] positions, a scale per block (the block's largest magnitude
//! over 127, rounded to nearest as the weights are: [`super::panels::quantize`]),
//! as llama.cpp quantizes activations to q8_0 for its int8 dot products (whose
//! scale it keeps in f16; here f32).
//!
//! Two forms: [`Blocks::dequantized`], the values the quantized input stands for, which
//! the widening kernel takes on CPUs without int8 dot products; and [`Blocks::quads`],
//! the int8 values by fours (one 32-bit word per row and four positions, grouped by
//! rows as [`super::kernel`]'s input is) with each block's scale and its offset, the
//! operands of the int8 dot products ([`super::int8_dots`]).

use multiversion::multiversion;

use super::panels::quantize;

/// Positions per block of the input sharing a scale (q8_0's).
pub const BLOCK: usize = 32;

/// Positions per dot-product word.
pub const QUAD: usize = 4;

/// Quads per full block.
pub const BLOCK_QUADS: usize = BLOCK / QUAD;

/// `rows` rows of `inner` values quantized by blocks.
#[derive(Debug)]
pub struct Blocks {
    /// The int8 values, row-major.
    values: Vec<i8>,
    /// Each row's blocks' scales, row-major.
    scales: Vec<f32>,
    rows: usize,
    inner: usize,
}

impl Blocks {
    /// `input` (`rows × inner`, row-major) quantized block by block.
    pub fn quantize(input: &[f32], rows: usize, inner: usize) -> Self {
        assert_eq!(input.len(), rows * inner, "{rows} rows of {inner}");
        let mut values = vec![0i8; input.len()];
        let mut scales = vec![0f32; rows * inner.div_ceil(BLOCK)];
        quantize_blocks(input, inner, &mut values, &mut scales);
        Self {
            values,
            scales,
            rows,
            inner,
        }
    }

    /// Blocks per row.
    fn blocks(&self) -> usize {
        self.inner.div_ceil(BLOCK)
    }

    /// The values the quantized input stands for (each int8 value times its block's
    /// scale), `rows × inner`, row-major.
    pub fn dequantized(&self) -> Vec<f32> {
        let blocks = self.blocks();
        let mut out = Vec::with_capacity(self.values.len());
        for (r, row) in self.values.chunks(self.inner).enumerate() {
            for (b, block) in row.chunks(BLOCK).enumerate() {
                let scale = self.scales[r * blocks + b];
                out.extend(block.iter().map(|&q| f32::from(q) * scale));
            }
        }
        out
    }

    /// The operands of the int8 dot products, in groups of `group` rows.
    pub fn quads(&self, group: usize) -> Quads {
        let (quads, blocks) = (self.inner.div_ceil(QUAD), self.blocks());
        let mut words = vec![0u32; self.rows * quads];
        let mut scales = vec![0f32; self.rows * blocks];
        let mut offsets = vec![0i32; self.rows * blocks];
        for first in (0..self.rows).step_by(group) {
            let n = group.min(self.rows - first);
            for r in 0..n {
                let row = &self.values[(first + r) * self.inner..][..self.inner];
                let words = &mut words[first * quads..][..n * quads];
                // Whole quads as one load each; a last short one padded with zeros.
                let whole = row.chunks_exact(QUAD);
                let mut last = [0u8; QUAD];
                for (b, &q) in last.iter_mut().zip(whole.remainder()) {
                    *b = q as u8;
                }
                let quad = |q: &[i8]| u32::from_le_bytes([q[0], q[1], q[2], q[3]].map(|q| q as u8));
                let all = whole
                    .map(quad)
                    .chain((quads > row.len() / QUAD).then_some(u32::from_le_bytes(last)));
                for (j, word) in all.enumerate() {
                    words[j * n + r] = word;
                }
                for (b, block) in row.chunks(BLOCK).enumerate() {
                    let at = first * blocks + b * n + r;
                    scales[at] = self.scales[(first + r) * blocks + b];
                    // The panels hold each weight plus 128 (unsigned, as the dot
                    // product takes them): 128 times the block's sum comes off.
                    offsets[at] = -128 * block.iter().map(|&q| i32::from(q)).sum::<i32>();
                }
            }
        }
        Quads {
            words,
            scales,
            offsets,
            rows: self.rows,
            quads,
            blocks,
            group,
        }
    }
}

/// Each row of `input` (rows of `inner`) quantized by blocks into `values`, the
/// blocks' scales into `scales`; built for AVX-512 and AVX2, whose vectors take a
/// block's largest magnitude and its values in a few instructions.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
fn quantize_blocks(input: &[f32], inner: usize, values: &mut [i8], scales: &mut [f32]) {
    let blocks = input
        .chunks(inner)
        .zip(values.chunks_mut(inner))
        .flat_map(|(row, into)| row.chunks(BLOCK).zip(into.chunks_mut(BLOCK)));
    for ((block, into), scale) in blocks.zip(scales) {
        *scale = quantize(block, into);
    }
}

/// A quantized input as the int8 dot products take it: in groups of rows, each
/// group's words quad by quad (`quads × rows in the group`), its scales and offsets
/// block by block (`blocks × rows in the group`).
#[derive(Debug)]
pub struct Quads {
    words: Vec<u32>,
    scales: Vec<f32>,
    offsets: Vec<i32>,
    rows: usize,
    /// Quads per row (the last padded with zeros).
    pub quads: usize,
    /// Blocks per row (the last may hold fewer than [`BLOCK_QUADS`] quads).
    pub blocks: usize,
    group: usize,
}

/// One group of rows of a [`Quads`].
#[derive(Debug, Clone, Copy)]
pub struct Group<'a> {
    /// Quad `j` of row `r` at `j · rows + r`.
    pub words: &'a [u32],
    /// Block `b`'s scale for row `r` at `b · rows + r`.
    pub scales: &'a [f32],
    /// Block `b`'s offset for row `r` at `b · rows + r`: −128 times its values' sum.
    pub offsets: &'a [i32],
    pub rows: usize,
}

impl Quads {
    /// Rows per group (the last may hold fewer).
    pub fn group_rows(&self) -> usize {
        self.group
    }

    /// The group of rows `index`.
    pub fn group(&self, index: usize) -> Group<'_> {
        let first = index * self.group;
        let rows = self.group.min(self.rows - first);
        Group {
            words: &self.words[first * self.quads..][..rows * self.quads],
            scales: &self.scales[first * self.blocks..][..rows * self.blocks],
            offsets: &self.offsets[first * self.blocks..][..rows * self.blocks],
            rows,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_hold_the_input_within_half_a_step_of_each_blocks_scale() {
        // 2 rows of 70: blocks of 32, 32 and 6; a zero block in the second row.
        let mut x: Vec<f32> = (0..140)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        x[70 + 32..70 + 64].fill(0.0);
        let b = Blocks::quantize(&x, 2, 70);
        assert_eq!(b.scales.len(), 6);
        assert_eq!(b.scales[4], 1.0, "a zero block's scale");
        let back = b.dequantized();
        for (i, (&v, &w)) in x.iter().zip(&back).enumerate() {
            let scale = b.scales[i / 70 * 3 + i % 70 / BLOCK];
            assert!((v - w).abs() <= scale / 2.0 + 1e-6, "{i}: {v} vs {w}");
        }
        // Each block's largest magnitude comes back exactly (as ±127 steps).
        let largest = x[..32].iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(back[..32].iter().any(|v| v.abs() == largest));
    }

    #[test]
    fn quads_hold_four_positions_a_word_grouped_by_rows_with_offsets() {
        // 3 rows of 6 (two quads, the second half padding), groups of 2.
        let x: Vec<f32> = (0..18).map(|i| i as f32 - 9.0).collect();
        let b = Blocks::quantize(&x, 3, 6);
        let q = b.quads(2);
        assert_eq!((q.quads, q.blocks), (2, 1));
        let word = |r: usize, j: usize| {
            let v = &b.values[r * 6..][..6];
            let mut bytes = [0u8; 4];
            for (t, byte) in bytes.iter_mut().enumerate() {
                *byte = v.get(j * 4 + t).map_or(0, |&q| q as u8);
            }
            u32::from_le_bytes(bytes)
        };
        let g = q.group(0);
        assert_eq!(g.rows, 2);
        assert_eq!(g.words, [word(0, 0), word(1, 0), word(0, 1), word(1, 1)]);
        let sum = |r: usize| {
            b.values[r * 6..][..6]
                .iter()
                .map(|&v| i32::from(v))
                .sum::<i32>()
        };
        assert_eq!(g.offsets, [-128 * sum(0), -128 * sum(1)]);
        assert_eq!(g.scales, [b.scales[0], b.scales[1]]);
        let g = q.group(1);
        assert_eq!(g.rows, 1);
        assert_eq!(g.words, [word(2, 0), word(2, 1)]);
        assert_eq!(g.offsets, [-128 * sum(2)]);
        // Row 0 is -9..-4: its largest magnitude is 9, 127 steps.
        assert_eq!(b.values[0], -127);
        assert_eq!(b.scales[0], 9.0 / 127.0);
    }
}
