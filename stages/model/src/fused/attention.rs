//! Attention over whole sequences without gradient, on AVX512-BF16's dot products
//! (`vdpbf16ps`), for passes under mixed precision on a CPU without AMX tiles (the
//! rule: [`crate::transformer::Transformer::whole_attention`]).
//!
//! The scores `q·k` of bf16 `q` and `k` are the dot products' f32 sums, scaled (and
//! masked) in f32; the softmax runs in f32, its weights `e^(s − m)` rounded once to
//! bf16 for the product with `v`, and each output row is that product divided by the
//! weights' f32 sum, rounded once to bf16: libtorch's flash attention's arithmetic.
//! The centred products ([`crate::centered_attention`]) need two score products per
//! block to keep bf16's rounding of the scores off the softmax, and libtorch's
//! operators between them (a maximum, a difference, copies of the blocks); here the
//! scores never leave f32.
//!
//! `csrc/fused_autograd.cpp` (`attention_bf16`) first packs each (sequence, key/value
//! head)'s keys and values ([`pack_keys_values`]), then splits the query positions
//! among libtorch's threads ([`attend_rows`]). Keys go by blocks of [`KEYS`] keys, a
//! 32-bit word per key and pair of dimensions, so that one vector holds one pair of
//! 16 keys and the query's pair is broadcast, four blocks a tile of scores with each
//! pair's four vectors together (one stream to load: a layer of SmolLM2 at 8×256 in
//! 2.47 ms against 2.7 with each block's pairs together, Zen 4); values go by pairs of
//! keys, a word per dimension, so that one vector holds 16 dimensions of two keys and
//! the pair of weights is broadcast. Tiles of six rows (two positions of a group of
//! three heads, to load each key and value once for both) ran slower: 3.4 ms.
//!
//! With `unsafe`, as the decoder's dot products (`decoder/cpu/dot.rs`): LLVM makes no
//! dot products from safe Rust.

#![allow(unsafe_code)]

use super::kernels::{view, view_mut};
use crate::decoder::Isa;

/// Keys per vector of the packed keys: 16 f32 lanes.
pub(super) const KEYS: usize = 16;

/// Query heads of a group the products take together (rows of a tile).
pub(super) const ROWS: usize = 4;

/// Vectors of keys (or of dimensions) a tile takes: 64 keys of scores, 64 dimensions
/// of output.
pub(super) const VECTORS: usize = 4;

/// Whether the kernel takes heads of `dim` values: whole vectors of 16 dimensions,
/// the products' pairs of one query row in 64 words.
pub(crate) fn takes(dim: usize) -> bool {
    dim > 0 && dim.is_multiple_of(KEYS) && dim <= 128
}

/// Keys the packing pads to: whole tiles of scores (a causal row's last tile scores
/// up to 63 keys past its own, at the tiles' full rate, and weighs them 0).
pub(super) fn padded(keys: usize) -> usize {
    keys.div_ceil(KEYS * VECTORS) * KEYS * VECTORS
}

/// One (sequence, key/value head)'s `keys` rows of keys `k` and values `v` (bf16,
/// `dim` values each, rows `k_ld` and `v_ld` apart) packed: `kp` by tiles of keys
/// ([`pack_tiles`]), `vp` by pairs of keys ([`pack_pairs`]).
pub(super) fn pack_keys_values(
    (k, k_ld): (&[u16], usize),
    (v, v_ld): (&[u16], usize),
    keys: usize,
    dim: usize,
    kp: &mut [u32],
    vp: &mut [u32],
) {
    assert!(
        keys == 0 || (k.len() >= (keys - 1) * k_ld + dim && v.len() >= (keys - 1) * v_ld + dim)
    );
    pack_tiles(|j| &k[j * k_ld..][..dim], keys, dim, kp);
    pack_pairs(|j| &v[j * v_ld..][..dim], keys, dim, vp);
}

/// `rows` rows of `dim` bf16 values (`row(j)`) packed by tiles of 64 rows ([`padded`]
/// rows in all) for [`x86::scores`], each `[dim/2][4][16]` words (the tile's row
/// `16v + l`'s pair of dimensions `p` at `[p][v][l]`: a pair's four vectors
/// together); zeros past the last row.
pub(super) fn pack_tiles<'a>(
    row: impl Fn(usize) -> &'a [u16],
    rows: usize,
    dim: usize,
    kp: &mut [u32],
) {
    let pairs = dim / 2;
    assert!(kp.len() == padded(rows) * pairs);
    kp.fill(0);
    for key in 0..rows {
        let (tile, vector, lane) = (key / (KEYS * VECTORS), key / KEYS % VECTORS, key % KEYS);
        for (p, pair) in row(key)[..dim].chunks_exact(2).enumerate() {
            let at = ((tile * pairs + p) * VECTORS + vector) * KEYS + lane;
            kp[at] = u32::from(pair[0]) | u32::from(pair[1]) << 16;
        }
    }
}

/// `rows` rows of `dim` bf16 values (`row(j)`) packed by pairs of rows as `[⌈rows/2⌉][dim]`
/// words (row `2j` low, row `2j + 1` high, 0 past the last), for the products that
/// sum over the rows ([`x86::weighted_values`]).
pub(super) fn pack_pairs<'a>(
    row: impl Fn(usize) -> &'a [u16],
    rows: usize,
    dim: usize,
    vp: &mut [u32],
) {
    assert!(vp.len() == rows.div_ceil(2) * dim);
    let zeros = vec![0u16; dim];
    for (j, words) in vp.chunks_exact_mut(dim).enumerate() {
        let low = &row(2 * j)[..dim];
        let high = if 2 * j + 1 < rows {
            &row(2 * j + 1)[..dim]
        } else {
            &zeros
        };
        for ((word, &low), &high) in words.iter_mut().zip(low).zip(high) {
            *word = u32::from(low) | u32::from(high) << 16;
        }
    }
}

/// One group's query rows for the positions `first..end`: `heads` query heads (row
/// `(position, head)` at `q[position · q_ld + head · q_head..]`, `dim` bf16 values)
/// over `keys` packed keys and values ([`pack_keys_values`]), scores scaled by
/// `scale`; causal (position `i` sees keys `0..=i`), with the row `mask[position ·
/// mask_ld..][..keys]` (bf16, additive: padding, or a packed row's segments) added
/// where there is a mask.
pub(super) struct Rows<'a> {
    pub(super) q: &'a [u16],
    pub(super) q_ld: usize,
    pub(super) q_head: usize,
    pub(super) heads: usize,
    pub(super) kp: &'a [u32],
    pub(super) vp: &'a [u32],
    pub(super) keys: usize,
    pub(super) dim: usize,
    pub(super) mask: Option<(&'a [u16], usize)>,
    pub(super) scale: f32,
    pub(super) first: usize,
    pub(super) end: usize,
}

/// [`Rows`]' attention, each output row `(position, head)` written at `out +
/// position · out_ld + head · dim`, and (unless `stats` is null) its softmax's largest
/// masked score `m` and the inverse of its sum `Σ e^(s − m)` at `stats + 2·(position ·
/// heads + head)`, for the backward pass ([`super::attention_grads`]). Needs
/// AVX512-BF16.
///
/// # Safety
/// `out` points at the rows' outputs, and `stats` (unless null) at their two values
/// each, which nothing else reads or writes while this runs (other calls write other
/// rows or other heads of a row).
pub(super) unsafe fn attend_rows(rows: &Rows<'_>, out: *mut u16, out_ld: usize, stats: *mut f32) {
    assert!(
        Isa::Avx512Bf16.supported(),
        "bf16 attention needs AVX512-BF16"
    );
    let (dim, keys) = (rows.dim, rows.keys);
    assert!(takes(dim), "head_dim {dim}: a multiple of 16 up to 128");
    assert!(rows.kp.len() == padded(keys) * dim / 2);
    assert!(rows.vp.len() == keys.div_ceil(2) * dim);
    assert!(rows.end <= keys, "causal rows past the keys");
    assert!(rows.heads > 0 && rows.first <= rows.end);
    let last = rows.end.saturating_sub(1);
    assert!(rows.q.len() >= last * rows.q_ld + (rows.heads - 1) * rows.q_head + dim);
    if let Some((mask, ld)) = rows.mask {
        assert!(mask.len() >= last * ld + keys);
    }
    let width = padded(keys);
    let mut scores = vec![0f32; ROWS * width];
    let mut weights = vec![0u16; ROWS * width];
    for position in rows.first..rows.end {
        let seen = position + 1;
        let mask = rows.mask.map(|(m, ld)| &m[position * ld..][..keys]);
        for head in (0..rows.heads).step_by(ROWS) {
            let n = ROWS.min(rows.heads - head);
            let mut q: [&[u16]; ROWS] = [&[]; ROWS];
            for (r, q) in q.iter_mut().take(n).enumerate() {
                *q = &rows.q[position * rows.q_ld + (head + r) * rows.q_head..][..dim];
            }
            // SAFETY: these `n` heads of the row are this call's (the contract).
            let out = unsafe {
                std::slice::from_raw_parts_mut(out.add(position * out_ld + head * dim), n * dim)
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX512-BF16 (asserted above); the
            // packed keys hold `width` keys' pairs and the values `seen` keys'
            // (asserted above); `scores` and `weights` hold `n` rows of `width`,
            // `out` `n` rows of `dim`, `mask` `keys ≥ seen` values; `stats` (unless
            // null) the rows' two values each (the contract).
            unsafe {
                let q = &q[..n];
                x86::scores(q, rows.kp, seen, dim, rows.scale, &mut scores, width);
                let mut sums = [0f32; ROWS];
                for (r, sum) in sums.iter_mut().enumerate().take(n) {
                    let row = &mut scores[r * width..][..width];
                    let largest;
                    (largest, *sum) =
                        x86::weigh(row, seen, mask, &mut weights[r * width..][..width]);
                    if !stats.is_null() {
                        let at = 2 * (position * rows.heads + head + r);
                        // The row's two values are this call's (the contract).
                        stats.add(at).write(largest);
                        stats.add(at + 1).write(1.0 / *sum);
                    }
                }
                x86::weighted_values(n, &weights, width, rows.vp, seen, dim, &sums[..n], out);
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!(
                "no AVX512-BF16 off x86-64 ({seen}, {mask:?}, {})",
                out.len()
            );
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use std::arch::x86_64::*;

    use super::{KEYS, ROWS, VECTORS};
    use crate::decoder::host_math;

    /// `scores[r][key] = scale · q[r]·k[key]` for the keys of the vectors of 16 over
    /// `0..seen` (those past `seen` in its last vector are scored too and weighed 0 by
    /// [`weigh`]).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `kp` holds the tiles' `dim / 2` pairs of keys
    /// (`width` keys); `scores` holds `q.len()` rows of `width`; each `q` row holds
    /// `dim` values.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(in crate::fused) unsafe fn scores(
        q: &[&[u16]],
        kp: &[u32],
        seen: usize,
        dim: usize,
        scale: f32,
        scores: &mut [f32],
        width: usize,
    ) {
        let pairs = dim / 2;
        let tiles = seen.div_ceil(KEYS * VECTORS);
        let blocks = tiles * VECTORS;
        assert!(pairs <= 64, "head_dim {dim}: at most 128");
        assert!(kp.len() >= blocks * pairs * KEYS && scores.len() >= q.len() * width);
        assert!(q.len() <= ROWS && blocks * KEYS <= width && q.iter().all(|r| r.len() >= dim));
        // Each row's pairs as words, row by row (a word of each row at a time would
        // be a scatter).
        let mut words = [[0u32; 64]; ROWS];
        for (words, row) in words.iter_mut().zip(q) {
            for (word, pair) in words.iter_mut().zip(row[..dim].chunks_exact(2)) {
                *word = u32::from(pair[0]) | u32::from(pair[1]) << 16;
            }
        }
        let (kp, out) = (kp.as_ptr(), scores.as_mut_ptr());
        for tile in 0..tiles {
            // The last tile's vectors up to `seen`'s (a causal row's edge).
            let vectors = (seen - tile * KEYS * VECTORS).div_ceil(KEYS).min(VECTORS);
            // SAFETY: the tile's blocks lie within `kp` and their
            // scores within each row of `scores` (asserted above).
            unsafe {
                match (q.len(), vectors) {
                    (1, 1) => tile_of::<1, 1>(&words, kp, tile, pairs, scale, out, width),
                    (1, 2) => tile_of::<1, 2>(&words, kp, tile, pairs, scale, out, width),
                    (1, 3) => tile_of::<1, 3>(&words, kp, tile, pairs, scale, out, width),
                    (1, _) => tile_of::<1, 4>(&words, kp, tile, pairs, scale, out, width),
                    (2, 1) => tile_of::<2, 1>(&words, kp, tile, pairs, scale, out, width),
                    (2, 2) => tile_of::<2, 2>(&words, kp, tile, pairs, scale, out, width),
                    (2, 3) => tile_of::<2, 3>(&words, kp, tile, pairs, scale, out, width),
                    (2, _) => tile_of::<2, 4>(&words, kp, tile, pairs, scale, out, width),
                    (3, 1) => tile_of::<3, 1>(&words, kp, tile, pairs, scale, out, width),
                    (3, 2) => tile_of::<3, 2>(&words, kp, tile, pairs, scale, out, width),
                    (3, 3) => tile_of::<3, 3>(&words, kp, tile, pairs, scale, out, width),
                    (3, _) => tile_of::<3, 4>(&words, kp, tile, pairs, scale, out, width),
                    (_, 1) => tile_of::<4, 1>(&words, kp, tile, pairs, scale, out, width),
                    (_, 2) => tile_of::<4, 2>(&words, kp, tile, pairs, scale, out, width),
                    (_, 3) => tile_of::<4, 3>(&words, kp, tile, pairs, scale, out, width),
                    (_, _) => tile_of::<4, 4>(&words, kp, tile, pairs, scale, out, width),
                }
            }
        }
    }

    /// `R` rows' scores over the keys of the first `V` blocks of tile `tile` (blocks
    /// `4·tile..4·tile + V`).
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn tile_of<const R: usize, const V: usize>(
        words: &[[u32; 64]; ROWS],
        kp: *const u32,
        tile: usize,
        pairs: usize,
        scale: f32,
        out: *mut f32,
        width: usize,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        #[allow(clippy::needless_range_loop)] // `p` indexes every row's words and `kp`.
        for p in 0..pairs {
            let mut k = [_mm512_setzero_si512(); V];
            for (v, k) in k.iter_mut().enumerate() {
                // SAFETY: the tile's pair `p` of block `v` lies within `kp`.
                *k = unsafe {
                    _mm512_loadu_si512(kp.add(((tile * pairs + p) * VECTORS + v) * KEYS).cast())
                };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(words[r][p] as i32);
                for (acc, &k) in acc.iter_mut().zip(&k) {
                    *acc = _mm512_dpbf16_ps(*acc, bf16s(k), bf16s(x));
                }
            }
        }
        let (scale, block) = (_mm512_set1_ps(scale), tile * VECTORS);
        for (r, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                // SAFETY: row `r`'s scores of block `block + v` lie within `out`.
                unsafe {
                    _mm512_storeu_ps(
                        out.add(r * width + (block + v) * KEYS),
                        _mm512_mul_ps(acc, scale),
                    )
                };
            }
        }
    }

    /// A row's softmax weights over its first `seen` scores (`mask`'s values added
    /// first, bf16): `weights[j] = bf16(e^(s_j − max))`, 0 from `seen` to the end of
    /// its vector of 16; returns the largest masked score and the f32 sum of the
    /// unrounded weights.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `row` and `weights` hold `⌈seen/16⌉·16`
    /// values, `mask` (if any) `seen`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(in crate::fused) unsafe fn weigh(
        row: &mut [f32],
        seen: usize,
        mask: Option<&[u16]>,
        weights: &mut [u16],
    ) -> (f32, f32) {
        let vectors = seen.div_ceil(KEYS);
        assert!(row.len() >= vectors * KEYS && weights.len() >= vectors * KEYS);
        assert!(mask.is_none_or(|m| m.len() >= seen));
        let lanes = |i: usize| lanes(i, seen);
        let (s, w) = (row.as_mut_ptr(), weights.as_mut_ptr());
        let mut largest = _mm512_set1_ps(f32::NEG_INFINITY);
        for i in 0..vectors {
            let live = lanes(i);
            // SAFETY: vector `i` lies within `row` (asserted above).
            let mut v = unsafe { _mm512_loadu_ps(s.add(i * KEYS)) };
            if let Some(mask) = mask {
                v = _mm512_add_ps(v, mask_part(mask, i, seen));
            }
            v = _mm512_mask_blend_ps(live, _mm512_set1_ps(f32::NEG_INFINITY), v);
            // SAFETY: as the load.
            unsafe { _mm512_storeu_ps(s.add(i * KEYS), v) };
            largest = _mm512_max_ps(largest, v);
        }
        let largest = _mm512_reduce_max_ps(largest);
        let m = _mm512_set1_ps(largest);
        let mut sum = _mm512_setzero_ps();
        for i in 0..vectors {
            // SAFETY: as above.
            let v = unsafe { _mm512_loadu_ps(s.add(i * KEYS)) };
            let e = _mm512_maskz_mov_ps(lanes(i), exp(_mm512_sub_ps(v, m)));
            sum = _mm512_add_ps(sum, e);
            // SAFETY: vector `i` lies within `weights`.
            unsafe { _mm256_storeu_si256(w.add(i * KEYS).cast(), rounded(e)) };
        }
        (largest, _mm512_reduce_add_ps(sum))
    }

    /// Vector `i` of a row's bf16 `mask` as f32, its lanes from `seen` on 0 (no masked
    /// 16-bit load: that is AVX512-BW's).
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::fused) fn mask_part(mask: &[u16], i: usize, seen: usize) -> __m512 {
        let mut part = [0u16; KEYS];
        let live_part = &mask[i * KEYS..seen.min((i + 1) * KEYS)];
        part[..live_part.len()].copy_from_slice(live_part);
        // SAFETY: 16 values of a local array.
        let m = unsafe { _mm256_loadu_si256(part.as_ptr().cast()) };
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(m)))
    }

    /// The lanes of vector `i` of a row below `seen`.
    #[inline]
    pub(in crate::fused) fn lanes(i: usize, seen: usize) -> __mmask16 {
        let n = (seen - i * KEYS).min(KEYS);
        ((1u32 << n) - 1) as __mmask16
    }

    /// `eˣ` lane by lane: [`crate::decoder::host_math::exp`] over the 16 lanes, which
    /// LLVM vectorizes within this build.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::fused) fn exp(x: __m512) -> __m512 {
        let mut lanes = [0f32; KEYS];
        // SAFETY: 16 values to and from a local array of 16.
        unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), x) };
        for v in &mut lanes {
            *v = host_math::exp(*v);
        }
        // SAFETY: as above.
        unsafe { _mm512_loadu_ps(lanes.as_ptr()) }
    }

    /// `out[r] = bf16(Σ_j weights[r][j] · v[j] / sums[r])` over the keys `0..seen`,
    /// by pairs of keys (a last odd key's pair has weight 0 beside it).
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; `weights` holds `n` rows of `width` (even, at
    /// least `seen` rounded up to even), `vp` `⌈seen/2⌉` pairs of `dim` words, `out` `n` rows of `dim`, `dim` a
    /// multiple of 16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)] // The rows' weights, values and outputs.
    pub(in crate::fused) unsafe fn weighted_values(
        n: usize,
        weights: &[u16],
        width: usize,
        vp: &[u32],
        seen: usize,
        dim: usize,
        sums: &[f32],
        out: &mut [u16],
    ) {
        let key_pairs = seen.div_ceil(2);
        assert!(n <= ROWS && sums.len() == n && out.len() >= n * dim && dim.is_multiple_of(KEYS));
        assert!(
            weights.len() >= n * width && 2 * key_pairs <= width && vp.len() >= key_pairs * dim
        );
        let (w, vp, out) = (
            weights.as_ptr().cast::<u32>(),
            vp.as_ptr(),
            out.as_mut_ptr(),
        );
        let wld = width / 2;
        let mut c = 0;
        // SAFETY (each call): as the function's contract, checked above.
        unsafe {
            while c + VECTORS * KEYS <= dim {
                match n {
                    1 => values::<1, VECTORS>(w, wld, vp, key_pairs, dim, c, sums, out),
                    2 => values::<2, VECTORS>(w, wld, vp, key_pairs, dim, c, sums, out),
                    3 => values::<3, VECTORS>(w, wld, vp, key_pairs, dim, c, sums, out),
                    _ => values::<4, VECTORS>(w, wld, vp, key_pairs, dim, c, sums, out),
                }
                c += VECTORS * KEYS;
            }
            while c < dim {
                match n {
                    1 => values::<1, 1>(w, wld, vp, key_pairs, dim, c, sums, out),
                    2 => values::<2, 1>(w, wld, vp, key_pairs, dim, c, sums, out),
                    3 => values::<3, 1>(w, wld, vp, key_pairs, dim, c, sums, out),
                    _ => values::<4, 1>(w, wld, vp, key_pairs, dim, c, sums, out),
                }
                c += KEYS;
            }
        }
    }

    /// `R` rows' outputs at dimensions `c..c + 16·V`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    #[allow(clippy::too_many_arguments)] // One tile's pointers and bounds.
    unsafe fn values<const R: usize, const V: usize>(
        w: *const u32,
        wld: usize,
        vp: *const u32,
        key_pairs: usize,
        dim: usize,
        c: usize,
        sums: &[f32],
        out: *mut u16,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for j in 0..key_pairs {
            let mut v = [_mm512_setzero_si512(); V];
            for (i, v) in v.iter_mut().enumerate() {
                // SAFETY: pair `j`'s dimensions `c + 16i..` lie within `vp`.
                *v = unsafe { _mm512_loadu_si512(vp.add(j * dim + c + i * KEYS).cast()) };
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                // SAFETY: row `r`'s weights of keys `2j, 2j + 1` lie within `w`.
                let x = _mm512_set1_epi32(unsafe { w.add(r * wld + j).read_unaligned() } as i32);
                for (acc, &v) in acc.iter_mut().zip(&v) {
                    *acc = _mm512_dpbf16_ps(*acc, bf16s(v), bf16s(x));
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let inverse = _mm512_set1_ps(1.0 / sums[r]);
            for (i, &acc) in acc.iter().enumerate() {
                let y = rounded(_mm512_mul_ps(acc, inverse));
                // SAFETY: row `r`'s dimensions `c + 16i..` lie within `out`.
                unsafe { _mm256_storeu_si256(out.add(r * dim + c + i * KEYS).cast(), y) };
            }
        }
    }

    /// 16 f32 values rounded to bf16 (to nearest, ties to even; denormals flushed),
    /// as 32 bytes to store.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    pub(in crate::fused) fn rounded(v: __m512) -> __m256i {
        // SAFETY: both are 32 bytes of plain bits.
        unsafe { std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v)) }
    }

    /// A vector's 32 bf16 values, as the dot product takes them.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(in crate::fused) fn bf16s(v: __m512i) -> __m512bh {
        // SAFETY: both are 64 bytes of plain bits.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
}

/// [`pack_keys_values`]' arguments as the C++ side passes them (`LspAttentionPack`
/// there, field for field).
#[repr(C)]
pub(super) struct PackArgs {
    k: *const u16,
    k_ld: i64,
    v: *const u16,
    v_ld: i64,
    keys: i64,
    dim: i64,
    kp: *mut u32,
    vp: *mut u32,
}

/// [`attend_rows`]' arguments as the C++ side passes them (`LspAttentionRows` there,
/// field for field); `mask` is null where causality alone hides keys, `stats` null
/// where no backward pass follows.
#[repr(C)]
pub(super) struct RowsArgs {
    q: *const u16,
    q_ld: i64,
    q_head: i64,
    heads: i64,
    kp: *const u32,
    vp: *const u32,
    keys: i64,
    dim: i64,
    mask: *const u16,
    mask_ld: i64,
    scale: f32,
    first: i64,
    end: i64,
    out: *mut u16,
    out_ld: i64,
    stats: *mut f32,
}

/// Values from `first` rows `ld` apart, `dim` in the last: the span a strided run of
/// rows covers.
pub(super) fn span(rows: usize, ld: usize, dim: usize) -> usize {
    rows.checked_sub(1).map_or(0, |last| last * ld + dim)
}

// SAFETY (both entry points): the C++ node passes pointers into tensors it checked
// (bf16 rows of the sizes and strides given, their last dimension contiguous) and
// packed buffers it allocated of the sizes `pack_keys_values` fills; each call's
// packed buffers, or output rows, are its own.

/// Packs one (sequence, key/value head)'s keys and values.
pub(super) unsafe extern "C" fn pack(args: *const PackArgs) {
    // SAFETY: see above.
    let a = unsafe { &*args };
    let (keys, dim) = (a.keys as usize, a.dim as usize);
    let (k_ld, v_ld) = (a.k_ld as usize, a.v_ld as usize);
    // SAFETY: see above.
    let (k, v, kp, vp) = unsafe {
        (
            view(a.k, span(keys, k_ld, dim)),
            view(a.v, span(keys, v_ld, dim)),
            view_mut(a.kp, padded(keys) * dim / 2),
            view_mut(a.vp, keys.div_ceil(2) * dim),
        )
    };
    pack_keys_values((k, k_ld), (v, v_ld), keys, dim, kp, vp);
}

/// One group's attention for a run of query positions.
pub(super) unsafe extern "C" fn rows(args: *const RowsArgs) {
    // SAFETY: see above.
    let a = unsafe { &*args };
    let (keys, dim, end) = (a.keys as usize, a.dim as usize, a.end as usize);
    let (q_ld, q_head, heads) = (a.q_ld as usize, a.q_head as usize, a.heads as usize);
    let mask_ld = a.mask_ld as usize;
    // SAFETY: see above.
    let rows = unsafe {
        Rows {
            q: view(a.q, span(end, q_ld, (heads - 1) * q_head + dim)),
            q_ld,
            q_head,
            heads,
            kp: view(a.kp, padded(keys) * dim / 2),
            vp: view(a.vp, keys.div_ceil(2) * dim),
            keys,
            dim,
            mask: (!a.mask.is_null()).then(|| (view(a.mask, span(end, mask_ld, keys)), mask_ld)),
            scale: a.scale,
            first: a.first as usize,
            end,
        }
    };
    // SAFETY: see above.
    unsafe { attend_rows(&rows, a.out, a.out_ld as usize, a.stats) };
}
