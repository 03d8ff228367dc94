//! The backward pass of [`super::attention`]'s attention, on AVX512-BF16's dot
//! products: flash attention's backward arithmetic, one (sequence, key/value head) a
//! call ([`group_grads`]).
//!
//! The forward pass kept each row's largest masked score `m` and the inverse of its
//! softmax's sum; here each row's scores are made again by the same products (the
//! same f32 values), its probabilities `p = e^(s − m) / Σ` in f32, and with `dp = dy·v`
//! (the output's gradient against the values, the same products over the values
//! packed as keys) and `δ = Σ p·dp` (`dy·y` of the output before its rounding to
//! bf16: with the rounded output, rows of a few keys, whose `dp − δ` cancels, had dq
//! 1.7% off f32's): `ds = p · (dp − δ)`. Then, in bf16 products with f32 sums, `dq = scale · ds·k`
//! (the forward's weighted sum, `k` packed by pairs of keys), `dv = pᵀ·dy` and
//! `dk = scale · dsᵀ·q`. The last two sum over the rows: `p` and `ds` of a block of
//! [`BLOCK`] positions' rows are kept as bf16 words of two rows each (`[row
//! pair][key]`), and [`x86::pair_products`] adds the block's part to f32 sums, 4
//! keys by 64 dimensions at a time, each key's word of a pair of rows broadcast
//! against 16 dimensions of the pair's `dy` (or `q`), from the first pair of rows
//! that sees the keys; the sums are rounded once at the end.
//!
//! Rows go by position and then by query head of the group (`i = position · heads +
//! head`), as the forward's; key `j` is seen by the rows from `j · heads` on (the
//! attention is causal, a mask hiding more).

#![allow(unsafe_code)]

use super::attention::{KEYS, ROWS, VECTORS, pack_pairs, pack_tiles, padded, span, takes};
use super::kernels::{view, view_mut};
use crate::decoder::Isa;
use crate::decoder::host_math::Bf16;

/// Keys [`x86::pair_products`] makes at a time (one broadcast each).
const KEYS_AT: usize = 4;

/// Query positions whose rows' `p` and `ds` are kept at a time (even, so that no pair
/// of rows straddles two blocks): the scratch is `BLOCK · heads · keys` words twice,
/// not `keys² · heads` (about 1 GB a group at 8,192 positions in groups of 4).
const BLOCK: usize = 128;

/// One (sequence, key/value head)'s forward pass and output gradient: `heads` query
/// heads over `keys` keys, row `(position, head)` of `q` at `q[position · q_ld +
/// head · q_head..]`, of the output's gradient `dy` at `[position · dy_ld + head ·
/// dim..]`, keys and values rows `k_ld` and `v_ld` apart,
/// the forward's `stats` (`[row][2]`: largest masked score, inverse sum); causal, with
/// `mask`'s rows added where there is one (as the forward's).
pub(super) struct Group<'a> {
    pub(super) q: &'a [u16],
    pub(super) q_ld: usize,
    pub(super) q_head: usize,
    pub(super) heads: usize,
    pub(super) k: (&'a [u16], usize),
    pub(super) v: (&'a [u16], usize),
    pub(super) dy: (&'a [u16], usize),
    pub(super) stats: &'a [f32],
    pub(super) keys: usize,
    pub(super) dim: usize,
    pub(super) mask: Option<(&'a [u16], usize)>,
    pub(super) scale: f32,
}

/// Where [`group_grads`] writes: `dq` row `(position, head)` at `dq + position ·
/// dq_ld + head · dim` (a position's heads contiguous), `dk` and `dv` rows `dk_ld` and
/// `dv_ld` apart (bf16).
pub(super) struct GroupGrads<'a> {
    pub(super) dq: *mut u16,
    pub(super) dq_ld: usize,
    pub(super) dk: (&'a mut [u16], usize),
    pub(super) dv: (&'a mut [u16], usize),
}

/// [`Group`]'s gradients of q, k and v (bf16: their f32 sums rounded once). Needs
/// AVX512-BF16.
///
/// # Safety
/// `out.dq` points at the group's rows of dq (`keys` positions × `heads` heads),
/// which nothing else reads or writes while this runs.
pub(super) unsafe fn group_grads(g: &Group<'_>, out: GroupGrads<'_>) {
    assert!(
        Isa::Avx512Bf16.supported(),
        "bf16 attention needs AVX512-BF16"
    );
    let (t, dim, heads) = (g.keys, g.dim, g.heads);
    assert!(takes(dim), "head_dim {dim}: a multiple of 16 up to 128");
    assert!(heads > 0 && g.stats.len() >= 2 * t * heads);
    if t == 0 {
        return;
    }
    let rows = t * heads;
    let pairs = rows.div_ceil(2);
    let width = padded(t);
    let q_row = |i: usize| &g.q[(i / heads) * g.q_ld + (i % heads) * g.q_head..][..dim];
    let (dy, dy_ld) = g.dy;
    let dy_row = |i: usize| &dy[(i / heads) * dy_ld + (i % heads) * dim..][..dim];
    let (k, k_ld) = g.k;
    let (v, v_ld) = g.v;
    let k_row = |j: usize| &k[j * k_ld..][..dim];
    let v_row = |j: usize| &v[j * v_ld..][..dim];
    if let Some((mask, ld)) = g.mask {
        assert!(mask.len() >= (t - 1) * ld + t);
    }
    let mut kt = vec![0u32; width * dim / 2];
    let mut vt = vec![0u32; width * dim / 2];
    let mut kpairs = vec![0u32; t.div_ceil(2) * dim];
    let mut qpairs = vec![0u32; pairs * dim];
    let mut dypairs = vec![0u32; pairs * dim];
    pack_tiles(k_row, t, dim, &mut kt);
    pack_tiles(v_row, t, dim, &mut vt);
    pack_pairs(k_row, t, dim, &mut kpairs);
    pack_pairs(q_row, rows, dim, &mut qpairs);
    pack_pairs(dy_row, rows, dim, &mut dypairs);
    // p and ds of a block's rows by pairs of rows; every word is written by the
    // pair's first row. dk and dv are summed over the blocks in f32.
    let block_pairs = (BLOCK * heads).div_ceil(2);
    let mut pw = vec![0u32; block_pairs * width];
    let mut dsw = vec![0u32; block_pairs * width];
    let mut dk_sums = vec![0f32; t * dim];
    let mut dv_sums = vec![0f32; t * dim];
    let mut scores = vec![0f32; ROWS * width];
    let mut dps = vec![0f32; ROWS * width];
    let mut ds = vec![0u16; ROWS * width];
    let inverse_scale = [1.0 / g.scale; ROWS];
    for start in (0..t).step_by(BLOCK) {
        let end = t.min(start + BLOCK);
        // The block's first pair of rows (`BLOCK` is even: no pair straddles two).
        let base = start * heads / 2;
        for position in start..end {
            let seen = position + 1;
            let mask = g.mask.map(|(m, ld)| &m[position * ld..][..t]);
            for head in (0..heads).step_by(ROWS) {
                let n = ROWS.min(heads - head);
                let first = position * heads + head;
                let (mut q, mut dy): ([&[u16]; ROWS], [&[u16]; ROWS]) = ([&[]; ROWS], [&[]; ROWS]);
                for r in 0..n {
                    (q[r], dy[r]) = (q_row(first + r), dy_row(first + r));
                }
                // SAFETY: these `n` heads of the position's dq row are this call's.
                let dq = unsafe {
                    std::slice::from_raw_parts_mut(
                        out.dq.add(position * out.dq_ld + head * dim),
                        n * dim,
                    )
                };
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the CPU has AVX512-BF16 (asserted above); the packed tiles
                // hold `width ≥ seen` keys, the pairs `⌈seen/2⌉`; the scratch rows
                // `width` values each, `pw` and `dsw` the block's pairs of rows of
                // `width` words.
                unsafe {
                    x86::scores(&q[..n], &kt, seen, dim, g.scale, &mut scores, width);
                    x86::scores(&dy[..n], &vt, seen, dim, 1.0, &mut dps, width);
                    for r in 0..n {
                        let (i, at) = (first + r, r * width);
                        let pair = (i / 2 - base) * width;
                        x86::grad_row(
                            (&mut scores[at..][..width], &dps[at..][..width]),
                            seen,
                            mask,
                            (g.stats[2 * i], g.stats[2 * i + 1]),
                            &mut ds[at..][..width],
                            (&mut pw[pair..][..width], &mut dsw[pair..][..width]),
                            i % 2 == 1,
                        );
                    }
                    let sums = &inverse_scale[..n];
                    x86::weighted_values(n, &ds, width, &kpairs, seen, dim, sums, dq);
                }
                #[cfg(not(target_arch = "x86_64"))]
                unreachable!("no AVX512-BF16 off x86-64 ({seen}, {mask:?}, {})", dq.len());
            }
        }
        // The keys up to the block's last position, each from the block's first pair
        // of rows that sees it.
        let pairs = ((end - start) * heads).div_ceil(2);
        for j0 in (0..end).step_by(KEYS_AT) {
            let n = KEYS_AT.min(t - j0);
            let first = (j0 * heads / 2).max(base) - base;
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX512-BF16; `pw`, `dsw` hold the block's `pairs`
            // rows of `width ≥ j0 + 4` words, `qpairs` and `dypairs` from `base` on
            // `pairs` rows of `dim`; the sums `t` rows of `dim`.
            unsafe {
                let (pairs, values) = (first..pairs, base * dim..);
                let dv = x86::PairSums {
                    w: &pw,
                    width,
                    pairs: pairs.clone(),
                    values: &dypairs[values.clone()],
                    dim,
                };
                let dk = x86::PairSums {
                    w: &dsw,
                    width,
                    pairs,
                    values: &qpairs[values],
                    dim,
                };
                x86::pair_products(&dv, (j0, n), &mut dv_sums);
                x86::pair_products(&dk, (j0, n), &mut dk_sums);
            }
            #[cfg(not(target_arch = "x86_64"))]
            unreachable!("no AVX512-BF16 off x86-64 ({first}, {n}, {pairs})");
        }
    }
    let ((dk, dk_ld), (dv, dv_ld)) = (out.dk, out.dv);
    for (j, (dk_sums, dv_sums)) in dk_sums
        .chunks_exact(dim)
        .zip(dv_sums.chunks_exact(dim))
        .enumerate()
    {
        for (d, &sum) in dk[j * dk_ld..][..dim].iter_mut().zip(dk_sums) {
            *d = Bf16::round(g.scale * sum).0;
        }
        for (d, &sum) in dv[j * dv_ld..][..dim].iter_mut().zip(dv_sums) {
            *d = Bf16::round(sum).0;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::attention::x86::{bf16s, exp, lanes, mask_part, rounded};
    use super::{KEYS, KEYS_AT, VECTORS};

    pub(super) use super::super::attention::x86::{scores, weighted_values};

    /// One row's probabilities and their scores' gradients from its `scores` and
    /// `dps` (`dy·v`) and the forward's largest masked score `m` and inverse sum: `p =
    /// e^(s + mask − m) · inverse` over the keys `0..seen` (0 past them), `δ = Σ p·dp`
    /// (`dy·y` of the output before its rounding) and `ds = p · (dp − δ)`. `ds` gets
    /// the row's bf16 `ds`; `pw` and `dsw` its `p` and `ds` as the low (`high` false:
    /// the whole word, 0 above) or high halves of its pair of rows' words. `scores`
    /// is left holding `p`.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16; every slice holds the same whole vectors, at
    /// least `seen` values; `mask` (if any) `seen`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn grad_row(
        (scores, dps): (&mut [f32], &[f32]),
        seen: usize,
        mask: Option<&[u16]>,
        (m, inverse): (f32, f32),
        ds: &mut [u16],
        (pw, dsw): (&mut [u32], &mut [u32]),
        high: bool,
    ) {
        let width = scores.len();
        assert!(width.is_multiple_of(KEYS) && seen <= width);
        assert!(dps.len() == width && ds.len() == width && pw.len() == width);
        assert!(dsw.len() == width && mask.is_none_or(|m| m.len() >= seen));
        let (s, dp) = (scores.as_mut_ptr(), dps.as_ptr());
        let (m, inverse) = (_mm512_set1_ps(m), _mm512_set1_ps(inverse));
        let live = seen.div_ceil(KEYS);
        let mut delta = _mm512_setzero_ps();
        for i in 0..live {
            // SAFETY: vector `i` lies within the rows (asserted above).
            let x = unsafe { _mm512_loadu_ps(s.add(i * KEYS)) };
            let x = match mask {
                Some(mask) => _mm512_add_ps(x, mask_part(mask, i, seen)),
                None => x,
            };
            let p = _mm512_mul_ps(exp(_mm512_sub_ps(x, m)), inverse);
            let p = _mm512_maskz_mov_ps(lanes(i, seen), p);
            // SAFETY: as above.
            delta = _mm512_fmadd_ps(p, unsafe { _mm512_loadu_ps(dp.add(i * KEYS)) }, delta);
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(s.add(i * KEYS), p) };
        }
        let delta = _mm512_set1_ps(_mm512_reduce_add_ps(delta));
        // A second row past its keys adds nothing to its words.
        let vectors = if high { live } else { width / KEYS };
        for i in 0..vectors {
            let (p, d) = if i < live {
                // SAFETY: as above.
                let (p, dp) = unsafe {
                    (
                        _mm512_loadu_ps(s.add(i * KEYS)),
                        _mm512_loadu_ps(dp.add(i * KEYS)),
                    )
                };
                (p, _mm512_mul_ps(p, _mm512_sub_ps(dp, delta)))
            } else {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            };
            let (p, d) = (rounded(p), rounded(d));
            // SAFETY: vector `i` lies within `ds`, `pw` and `dsw` (asserted above).
            unsafe {
                _mm256_storeu_si256(ds.as_mut_ptr().add(i * KEYS).cast(), d);
                half(pw.as_mut_ptr().add(i * KEYS), p, high);
                half(dsw.as_mut_ptr().add(i * KEYS), d, high);
            }
        }
    }

    /// 16 bf16 values as the low halves of the words at `w` (the high halves 0), or
    /// added as their high halves.
    ///
    /// # Safety
    /// `w` points at 16 words.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn half(w: *mut u32, values: __m256i, high: bool) {
        let wide = _mm512_cvtepu16_epi32(values);
        // SAFETY: the caller's promise.
        unsafe {
            if high {
                let low = _mm512_loadu_si512(w.cast());
                _mm512_storeu_si512(
                    w.cast(),
                    _mm512_or_si512(low, _mm512_slli_epi32::<16>(wide)),
                );
            } else {
                _mm512_storeu_si512(w.cast(), wide);
            }
        }
    }

    /// A product summed over pairs of rows: `w`'s words hold a pair of rows' values of
    /// a key (`pairs.end` rows of `width` words), `values`' a pair of rows' values of
    /// a dimension (`[pair][dim]`, `dim` a multiple of 16).
    pub(super) struct PairSums<'a> {
        pub(super) w: &'a [u32],
        pub(super) width: usize,
        pub(super) pairs: std::ops::Range<usize>,
        pub(super) values: &'a [u32],
        pub(super) dim: usize,
    }

    /// `sums[j][c] += Σ_{pair ∈ pairs} w[pair][j] · values[pair][c]` for the keys
    /// `j0..j0 + n` (`n` ≤ 4) and every dimension `c`, each key's word broadcast
    /// against 16 dimensions (each dot product sums over two rows); 4 keys by 64
    /// dimensions at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512 F and BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn pair_products(
        s: &PairSums<'_>,
        (j0, n): (usize, usize),
        sums: &mut [f32],
    ) {
        assert!(n <= KEYS_AT && j0 + KEYS_AT <= s.width && s.dim.is_multiple_of(KEYS));
        assert!(s.w.len() >= s.pairs.end * s.width && s.values.len() >= s.pairs.end * s.dim);
        assert!(sums.len() >= (j0 + n) * s.dim);
        let mut c = 0;
        while c < s.dim {
            // SAFETY (each): as the function's contract, checked above.
            unsafe {
                match (s.dim - c) / KEYS {
                    1 => keys_dims::<1>(s, (j0, n), c, sums),
                    2 => keys_dims::<2>(s, (j0, n), c, sums),
                    3 => keys_dims::<3>(s, (j0, n), c, sums),
                    _ => keys_dims::<4>(s, (j0, n), c, sums),
                }
            }
            c += VECTORS * KEYS;
        }
    }

    /// [`pair_products`]' 4 keys at the `V` vectors of dimensions from `c`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn keys_dims<const V: usize>(
        s: &PairSums<'_>,
        (j0, n): (usize, usize),
        c: usize,
        sums: &mut [f32],
    ) {
        let (wp, vp, width, dim) = (s.w.as_ptr(), s.values.as_ptr(), s.width, s.dim);
        let mut acc = [[_mm512_setzero_ps(); V]; KEYS_AT];
        for pair in s.pairs.clone() {
            let mut x = [_mm512_setzero_si512(); V];
            for (v, x) in x.iter_mut().enumerate() {
                // SAFETY: the pair's dimensions `c + 16v..` lie within `values`.
                *x = unsafe { _mm512_loadu_si512(vp.add(pair * dim + c + v * KEYS).cast()) };
            }
            for (j, acc) in acc.iter_mut().enumerate() {
                // SAFETY: the pair's word of key `j0 + j` lies within `w`.
                let k = _mm512_set1_epi32(unsafe { *wp.add(pair * width + j0 + j) } as i32);
                for (acc, &x) in acc.iter_mut().zip(&x) {
                    *acc = _mm512_dpbf16_ps(*acc, bf16s(x), bf16s(k));
                }
            }
        }
        let out = sums.as_mut_ptr();
        for (j, acc) in acc.iter().enumerate().take(n) {
            for (v, &acc) in acc.iter().enumerate() {
                // SAFETY: key `j0 + j`'s dimensions `c + 16v..` lie within `sums`.
                unsafe {
                    let at = out.add((j0 + j) * dim + c + v * KEYS);
                    _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), acc));
                }
            }
        }
    }
}

/// [`group_grads`]' arguments as the C++ side passes them (`LspAttentionGrads` there,
/// field for field); `mask` is null where causality alone hides keys.
#[repr(C)]
pub(super) struct GradsArgs {
    q: *const u16,
    q_ld: i64,
    q_head: i64,
    heads: i64,
    k: *const u16,
    k_ld: i64,
    v: *const u16,
    v_ld: i64,
    dy: *const u16,
    dy_ld: i64,
    stats: *const f32,
    keys: i64,
    dim: i64,
    mask: *const u16,
    mask_ld: i64,
    scale: f32,
    dq: *mut u16,
    dq_ld: i64,
    dk: *mut u16,
    dk_ld: i64,
    dv: *mut u16,
    dv_ld: i64,
}

/// One (sequence, key/value head)'s gradients.
///
/// # Safety
/// The C++ node passes pointers into tensors it checked (bf16 rows of the sizes and
/// strides given, their last dimension contiguous; `stats` the forward's, two f32 a
/// row) and gradients it allocated; each call's rows of dq, dk and dv are its own.
pub(super) unsafe extern "C" fn grads(args: *const GradsArgs) {
    // SAFETY: see above.
    let a = unsafe { &*args };
    let (t, dim, heads) = (a.keys as usize, a.dim as usize, a.heads as usize);
    let row = heads * dim;
    let ld = |x: i64| x as usize;
    // SAFETY: see above.
    let (group, out) = unsafe {
        (
            Group {
                q: view(a.q, span(t, ld(a.q_ld), (heads - 1) * ld(a.q_head) + dim)),
                q_ld: ld(a.q_ld),
                q_head: ld(a.q_head),
                heads,
                k: (view(a.k, span(t, ld(a.k_ld), dim)), ld(a.k_ld)),
                v: (view(a.v, span(t, ld(a.v_ld), dim)), ld(a.v_ld)),
                dy: (view(a.dy, span(t, ld(a.dy_ld), row)), ld(a.dy_ld)),
                stats: view(a.stats, 2 * t * heads),
                keys: t,
                dim,
                mask: (!a.mask.is_null())
                    .then(|| (view(a.mask, span(t, ld(a.mask_ld), t)), ld(a.mask_ld))),
                scale: a.scale,
            },
            GroupGrads {
                dq: a.dq,
                dq_ld: ld(a.dq_ld),
                dk: (view_mut(a.dk, span(t, ld(a.dk_ld), dim)), ld(a.dk_ld)),
                dv: (view_mut(a.dv, span(t, ld(a.dv_ld), dim)), ld(a.dv_ld)),
            },
        )
    };
    // SAFETY: see above.
    unsafe { group_grads(&group, out) };
}
