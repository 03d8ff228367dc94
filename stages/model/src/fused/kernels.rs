//! The fused nodes' arithmetic, over a block of contiguous rows each
//! (`csrc/fused_autograd.cpp` splits the rows among libtorch's threads and calls
//! these through [`KERNELS`]). Each kernel reads its bf16 values once, computes in
//! f32 and rounds once. Each is built for AVX-512, AVX2 and no extension, and runs the
//! build of the decoder's instruction set ([`Isa::detected`], within `LSP_CPU_ISA`'s
//! ceiling); the tests run every build the CPU has against the plain one.

#![allow(unsafe_code)]

use multiversion::multiversion;

use super::{attention, attention_grads};
use crate::decoder::Isa;
use crate::decoder::host_math::{Bf16, dot, exp};

/// The kernels as the C++ nodes call them (`LspFusedKernels` there, field for field).
#[repr(C)]
pub(super) struct Kernels {
    rms_forward: unsafe extern "C" fn(*const f32, *const f32, *mut u16, *mut f32, i64, i64, f32),
    rms_backward: unsafe extern "C" fn(
        *const f32,
        *const f32,
        *const f32,
        *const u16,
        *mut f32,
        *mut f32,
        i64,
        i64,
    ),
    swiglu_forward: unsafe extern "C" fn(*const u16, *mut u16, i64, i64),
    swiglu_backward: unsafe extern "C" fn(*const u16, *const u16, *mut u16, i64, i64),
    rotate_pairs: unsafe extern "C" fn(*const u16, i64, *const f32, *mut u16, i64, i64, i32),
    transpose: unsafe extern "C" fn(*const u16, i64, i64, i64, i64, *mut u16),
    attention_pack: unsafe extern "C" fn(*const attention::PackArgs),
    attention_rows: unsafe extern "C" fn(*const attention::RowsArgs),
    attention_grads: unsafe extern "C" fn(*const attention_grads::GradsArgs),
}

/// The kernels the nodes call.
pub(super) static KERNELS: Kernels = Kernels {
    rms_forward,
    rms_backward,
    swiglu_forward,
    swiglu_backward,
    rotate_pairs,
    transpose,
    attention_pack: attention::pack,
    attention_rows: attention::rows,
    attention_grads: attention_grads::grads,
};

/// A slice of `len` values at `p`.
///
/// # Safety
/// `p` points at `len` initialised values that nothing writes while the slice lives
/// (or `len` is 0).
pub(super) unsafe fn view<'a, T>(p: *const T, len: usize) -> &'a [T] {
    match len {
        0 => &[],
        // SAFETY: the caller's promise.
        _ => unsafe { std::slice::from_raw_parts(p, len) },
    }
}

/// A mutable slice of `len` values at `p`.
///
/// # Safety
/// `p` points at `len` values that nothing else reads or writes while the slice
/// lives (or `len` is 0).
pub(super) unsafe fn view_mut<'a, T>(p: *mut T, len: usize) -> &'a mut [T] {
    match len {
        0 => &mut [],
        // SAFETY: the caller's promise.
        _ => unsafe { std::slice::from_raw_parts_mut(p, len) },
    }
}

// SAFETY (each kernel below): the C++ node passes pointers into contiguous tensors it
// allocated or made contiguous, of the kinds and sizes named (`rows · dim` values at
// each row-wise pointer, `dim` at `w` and `dw`, `rows` at `rstd`); the outputs are
// fresh tensors, the rows of one call are its own and `dw` is its thread's own row.

unsafe extern "C" fn rms_forward(
    x: *const f32,
    w: *const f32,
    y: *mut u16,
    rstd: *mut f32,
    rows: i64,
    dim: i64,
    eps: f32,
) {
    let (rows, dim) = (rows as usize, dim as usize);
    // SAFETY: see above.
    let (x, w, y, rstd) = unsafe {
        (
            view(x, rows * dim),
            view(w, dim),
            view_mut(y, rows * dim),
            view_mut(rstd, rows),
        )
    };
    rms_norm_rows(Isa::detected(), x, w, y, rstd, eps);
}

unsafe extern "C" fn rms_backward(
    x: *const f32,
    w: *const f32,
    rstd: *const f32,
    dy: *const u16,
    dx: *mut f32,
    dw: *mut f32,
    rows: i64,
    dim: i64,
) {
    let (rows, dim) = (rows as usize, dim as usize);
    // SAFETY: see above.
    let (x, w, rstd, dy, dx, dw) = unsafe {
        (
            view(x, rows * dim),
            view(w, dim),
            view(rstd, rows),
            view(dy, rows * dim),
            view_mut(dx, rows * dim),
            view_mut(dw, dim),
        )
    };
    rms_norm_backward_rows(Isa::detected(), x, w, rstd, dy, dx, dw);
}

unsafe extern "C" fn swiglu_forward(gu: *const u16, h: *mut u16, rows: i64, inner: i64) {
    let (rows, inner) = (rows as usize, inner as usize);
    // SAFETY: see above.
    let (gu, h) = unsafe { (view(gu, rows * 2 * inner), view_mut(h, rows * inner)) };
    swiglu_rows(Isa::detected(), gu, h, inner);
}

unsafe extern "C" fn swiglu_backward(
    gu: *const u16,
    dh: *const u16,
    dgu: *mut u16,
    rows: i64,
    inner: i64,
) {
    let (rows, inner) = (rows as usize, inner as usize);
    // SAFETY: see above.
    let (gu, dh, dgu) = unsafe {
        (
            view(gu, rows * 2 * inner),
            view(dh, rows * inner),
            view_mut(dgu, rows * 2 * inner),
        )
    };
    swiglu_backward_rows(Isa::detected(), gu, dh, dgu, inner);
}

unsafe extern "C" fn rotate_pairs(
    x: *const u16,
    x_ld: i64,
    turns: *const f32,
    y: *mut u16,
    rows: i64,
    dim: i64,
    inverse: i32,
) {
    let (rows, dim, x_ld) = (rows as usize, dim as usize, x_ld as usize);
    let isa = Isa::detected();
    for r in 0..rows {
        // SAFETY: the node's rows: `dim` values of x at `x_ld` apart, of the turns and
        // of y (its own) contiguous.
        let (x, turns, y) = unsafe {
            (
                view(x.add(r * x_ld), dim),
                view(turns.add(r * dim), dim),
                view_mut(y.add(r * dim), dim),
            )
        };
        rotate_row(isa, x, turns, y, inverse != 0);
    }
}

unsafe extern "C" fn transpose(
    x: *const u16,
    rows: i64,
    cols: i64,
    begin: i64,
    end: i64,
    y: *mut u16,
) {
    let (rows, cols, begin, end) = (rows as usize, cols as usize, begin as usize, end as usize);
    // Strips of STRIP source rows: each destination row's part of a strip (one cache
    // line) is written by consecutive stores.
    for r0 in (begin..end).step_by(STRIP) {
        let r1 = (r0 + STRIP).min(end);
        let mut c0 = 0;
        if r1 - r0 == STRIP {
            while c0 + 8 <= cols {
                for r in (r0..r1).step_by(8) {
                    // SAFETY: rows r..r + 8 of x, columns c0..c0 + 8, exist; rows
                    // c0..c0 + 8 of y, columns r..r + 8, are this call's.
                    unsafe {
                        transpose_8x8(x.add(r * cols + c0), cols, y.add(c0 * rows + r), rows)
                    };
                }
                c0 += 8;
            }
        }
        for c in c0..cols {
            for r in r0..r1 {
                // SAFETY: as above, one value.
                unsafe { *y.add(c * rows + r) = *x.add(r * cols + c) };
            }
        }
    }
}

/// Source rows [`transpose`] takes at once: 32 bf16, a cache line of each destination
/// row.
const STRIP: usize = 32;

/// An 8×8 block of u16 at `x` (rows `x_ld` apart) transposed into `y` (rows `y_ld`
/// apart): three rounds of SSE2's interleaves (in every x86-64 CPU).
///
/// # Safety
/// The block's 8 rows of 8 values at `x` are readable, at `y` writable.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn transpose_8x8(x: *const u16, x_ld: usize, y: *mut u16, y_ld: usize) {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_storeu_si128, _mm_unpackhi_epi16, _mm_unpackhi_epi32,
        _mm_unpackhi_epi64, _mm_unpacklo_epi16, _mm_unpacklo_epi32, _mm_unpacklo_epi64,
    };
    // SAFETY: the caller's promise; unaligned loads and stores.
    unsafe {
        let a: [__m128i; 8] = std::array::from_fn(|i| _mm_loadu_si128(x.add(i * x_ld).cast()));
        let t: [__m128i; 8] = std::array::from_fn(|i| match i % 2 {
            0 => _mm_unpacklo_epi16(a[i], a[i + 1]),
            _ => _mm_unpackhi_epi16(a[i - 1], a[i]),
        });
        // u[0..4] from rows 0-3, u[4..8] from rows 4-7; each holds two columns.
        let u: [__m128i; 8] = std::array::from_fn(|i| {
            let (base, k) = (4 * (i / 4), i % 4);
            let (p, q) = (t[base + k / 2], t[base + 2 + k / 2]);
            match k % 2 {
                0 => _mm_unpacklo_epi32(p, q),
                _ => _mm_unpackhi_epi32(p, q),
            }
        });
        for c in 0..8 {
            let (p, q) = (u[c / 2], u[4 + c / 2]);
            let column = match c % 2 {
                0 => _mm_unpacklo_epi64(p, q),
                _ => _mm_unpackhi_epi64(p, q),
            };
            _mm_storeu_si128(y.add(c * y_ld).cast(), column);
        }
    }
}

/// An 8×8 block transposed value by value (no x86-64).
///
/// # Safety
/// As the x86-64 version's.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
unsafe fn transpose_8x8(x: *const u16, x_ld: usize, y: *mut u16, y_ld: usize) {
    for r in 0..8 {
        for c in 0..8 {
            // SAFETY: the caller's promise.
            unsafe { *y.add(c * y_ld + r) = *x.add(r * x_ld + c) };
        }
    }
}

#[inline(always)]
fn widen(v: u16) -> f32 {
    Bf16(v).widen()
}

#[inline(always)]
fn round(v: f32) -> u16 {
    Bf16::round(v).0
}

/// Each row of `x` (rows of `w.len()`) as transformers' `LlamaRMSNorm` in f32, `(x ·
/// r) · w` with `r = 1/√(mean x² + ε)`, rounded to bf16 into `y`; `r` into `rstd`.
#[inline(always)]
fn rms_norm_rows_body(x: &[f32], w: &[f32], y: &mut [u16], rstd: &mut [f32], eps: f32) {
    let dim = w.len();
    for ((x, y), r) in x.chunks_exact(dim).zip(y.chunks_exact_mut(dim)).zip(rstd) {
        let inv = 1.0 / (dot(x, x) / dim as f32 + eps).sqrt();
        *r = inv;
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = round(x * inv * w);
        }
    }
}

/// The RMSNorm's backward pass over rows: with `g = dy · w`,
/// `dx = r·g − x·r³·(g·x)/dim` written into `dx`, and `dy · x · r` summed over the
/// rows added into `dw`.
#[inline(always)]
fn rms_norm_backward_rows_body(
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
    dy: &[u16],
    dx: &mut [f32],
    dw: &mut [f32],
) {
    let dim = w.len();
    let mut g = vec![0f32; dim];
    let rows = x.chunks_exact(dim).zip(dy.chunks_exact(dim));
    for (((x, dy), dx), &r) in rows.zip(dx.chunks_exact_mut(dim)).zip(rstd) {
        for (((g, &dy), &w), (dw, &x)) in g.iter_mut().zip(dy).zip(w).zip(dw.iter_mut().zip(x)) {
            let dy = widen(dy);
            *g = dy * w;
            *dw += dy * (x * r);
        }
        let c = r * r * r * dot(&g, x) / dim as f32;
        for ((dx, &g), &x) in dx.iter_mut().zip(&g).zip(x) {
            *dx = r * g - x * c;
        }
    }
}

/// SwiGLU's activation over rows of `gu = [gate | up]` (`2·inner` values each):
/// `silu(gate) · up`, `silu(g) = g·σ(g)`, in f32, rounded once into `h`.
#[inline(always)]
fn swiglu_rows_body(gu: &[u16], h: &mut [u16], inner: usize) {
    for (gu, h) in gu.chunks_exact(2 * inner).zip(h.chunks_exact_mut(inner)) {
        let (gate, up) = gu.split_at(inner);
        for ((h, &g), &u) in h.iter_mut().zip(gate).zip(up) {
            let g = widen(g);
            let s = 1.0 / (1.0 + exp(-g));
            *h = round(g * s * widen(u));
        }
    }
}

/// SwiGLU's backward pass over rows: `dup = dh · silu(g)` and
/// `dgate = dh · up · σ(g)·(1 + g·(1 − σ(g)))`, into `dgu = [dgate | dup]`.
#[inline(always)]
fn swiglu_backward_rows_body(gu: &[u16], dh: &[u16], dgu: &mut [u16], inner: usize) {
    let rows = gu.chunks_exact(2 * inner).zip(dh.chunks_exact(inner));
    for ((gu, dh), dgu) in rows.zip(dgu.chunks_exact_mut(2 * inner)) {
        let (gate, up) = gu.split_at(inner);
        let (dgate, dup) = dgu.split_at_mut(inner);
        let values = gate.iter().zip(up).zip(dh);
        for (((&g, &u), &dh), (dg, du)) in values.zip(dgate.iter_mut().zip(dup)) {
            let (g, u, dh) = (widen(g), widen(u), widen(dh));
            let s = 1.0 / (1.0 + exp(-g));
            *du = round(dh * g * s);
            *dg = round(dh * u * s * (1.0 + g * (1.0 - s)));
        }
    }
}

/// One row of pairs rotated: `(x₀·c − x₁·s, x₀·s + x₁·c)` with each pair's `(c, s)`
/// from `turns` (or `s` negated when `inverse`), in f32, rounded once into `y`.
#[inline(always)]
fn rotate_row_body(x: &[u16], turns: &[f32], y: &mut [u16], inverse: bool) {
    let sign = if inverse { -1.0 } else { 1.0 };
    let pairs = x.chunks_exact(2).zip(turns.chunks_exact(2));
    for ((x, t), y) in pairs.zip(y.chunks_exact_mut(2)) {
        let (x0, x1, c, s) = (widen(x[0]), widen(x[1]), t[0], sign * t[1]);
        y[0] = round(x0 * c - x1 * s);
        y[1] = round(x0 * s + x1 * c);
    }
}

/// Each kernel built for AVX-512 and for AVX2 (with FMA) from its `_body`, and the
/// plain build, called by the [`Isa`] given: [`Isa::detected`] (the decoder's choice,
/// within the process's ceiling) in the nodes, every build the CPU has in the tests.
/// The builds compute the same values bit for bit (the same operations in the same
/// order; `mul_add` is fused in each).
macro_rules! builds {
    ($($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => $body:ident;)*) => {$(
        $(#[$doc])*
        pub(super) fn $name(isa: Isa, $($arg: $ty),*) {
            #[multiversion(targets("x86_64+avx512f+avx512vl+fma"))]
            fn avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
            #[multiversion(targets("x86_64+avx2+fma"))]
            fn avx2($($arg: $ty),*) {
                $body($($arg),*)
            }
            match isa {
                Isa::Avx512Bf16 | Isa::Avx512 => avx512($($arg),*),
                Isa::Avx2 => avx2($($arg),*),
                Isa::Portable => $body($($arg),*),
            }
        }
    )*};
}

builds! {
    /// [`rms_norm_rows_body`] by `isa`.
    fn rms_norm_rows(x: &[f32], w: &[f32], y: &mut [u16], rstd: &mut [f32], eps: f32)
        => rms_norm_rows_body;
    /// [`rms_norm_backward_rows_body`] by `isa`.
    fn rms_norm_backward_rows(
        x: &[f32], w: &[f32], rstd: &[f32], dy: &[u16], dx: &mut [f32], dw: &mut [f32]
    ) => rms_norm_backward_rows_body;
    /// [`swiglu_rows_body`] by `isa`.
    fn swiglu_rows(gu: &[u16], h: &mut [u16], inner: usize) => swiglu_rows_body;
    /// [`swiglu_backward_rows_body`] by `isa`.
    fn swiglu_backward_rows(gu: &[u16], dh: &[u16], dgu: &mut [u16], inner: usize)
        => swiglu_backward_rows_body;
    /// [`rotate_row_body`] by `isa`.
    fn rotate_row(x: &[u16], turns: &[f32], y: &mut [u16], inverse: bool) => rotate_row_body;
}
