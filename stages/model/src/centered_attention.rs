//! Whole-sequence attention as bf16 batched products with centred scores, for
//! passes under mixed precision on a CPU without AVX512-BF16's dot products (or with
//! AMX tiles, for training passes); where the CPU has the dot products and no tiles,
//! `fused/attention.rs` takes over, forward and backward.
//!
//! libtorch's CPU flash attention runs its backward pass slowly: in f32 about 15 ms a
//! layer at 8×256 tokens of SmolLM2's heads (AMX Xeon), in bf16 about 25; a fifth of a
//! training step. Written as `softmax(q·kᵀ + bias)·v` with batched bf16 products
//! (oneDNN's AMX kernels), autograd's backward pass is four products and one softmax
//! backward, about 9 ms. Plainly, though, the product rounds each score to bf16
//! before the softmax, an error relative to the score's size: at scores of standard
//! deviation 9, q's and k's gradients came out 2.2% off f32's (libtorch's bf16 flash
//! attention, which keeps scores in f32: 0.6%). Here a first product without gradient
//! gives each row's largest score `m`, and the scores are made again with `bias − m`
//! added inside the product, in f32 before it rounds: the rounded scores are then
//! centred on each row's largest, and the probabilities carry no more than bf16's
//! rounding of themselves (0.5% in the same test). The softmax is shift-invariant, so
//! the values and gradients are those of attention.
//!
//! Query heads that share a key/value head are stacked as rows of one product per
//! (sequence, key/value head): `[batch · kv_heads, seq · group, head_dim]`, by position
//! and then by head, so that the products run by blocks of [`BLOCK`] positions, each
//! over the keys up to its last: causal attention at 256 positions makes 5/8 of the
//! square's scores. On an AMD EPYC Zen 4 (2 threads, SmolLM2 8×256) that took a
//! training step from 371 to 386 tok/s (medians of four pairs) and, taking over the
//! passes without gradient from libtorch's bf16 flash attention (9 ms a layer there,
//! against ~7 for these blocks), log-probs from 1,079 to 1,139 tok/s (medians of three pairs). On
//! an AMX Xeon the flash forward ran 3.3 ms a layer against the unblocked products'
//! ~8, so passes without gradient keep it there.

use tch::{Device, Kind, Tensor};

use crate::mask::AttentionMask;

/// Query positions a block of the products takes: the scores of a block's queries
/// are made only over the keys up to its last position, so causal attention computes
/// `(n + 1) / 2n` of the full square in `n` blocks (0.625 at 4).
const BLOCK: i64 = 64;

/// Attention of `q` (`[batch, heads, seq, head_dim]`) over `k` and `v` (`[batch,
/// kv_heads, seq, head_dim]`), each query head `i` reading key/value head `i / (heads /
/// kv_heads)`, scores scaled by `1/√head_dim`; causal, and `mask` (`[batch, 1, seq,
/// seq]`, additive, finite) hides at least what causality does (padding besides).
/// Returns `[batch, seq, heads · head_dim]` in bf16, through autograd.
pub(crate) fn centered_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
) -> Tensor {
    blocked(q, k, v, mask, true)
}

/// [`centered_attention`]'s blocks, with the scores centred or (to show what the
/// centring is for) not.
fn blocked(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, centred: bool) -> Tensor {
    let (b, h, t, d) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
    let kv = k.size()[1];
    let group = h / kv;
    let scale = 1.0 / (d as f64).sqrt();
    let (q, keys, v) = stacked(q, k, v);
    let mut outputs = Vec::new();
    let mut start = 0;
    while start < t {
        let len = BLOCK.min(t - start);
        let end = start + len;
        let rows = q.narrow(1, start * group, len * group);
        let keys = keys.narrow(2, 0, end);
        let bias = tch::no_grad(|| {
            let mask = block_mask(mask, q.device(), [b, kv, group], start, end);
            if !centred {
                return mask;
            }
            let first = mask.baddbmm(&rows, &keys, 1.0, scale);
            let largest = first.amax([-1].as_slice(), true);
            // A row that sees nothing (padding) has its largest at the mask's value,
            // and its bias becomes 0 on every key: any finite scores serve it.
            mask - largest
        });
        outputs.push(attend(&rows, &keys, &v.narrow(1, 0, end), &bias, scale));
        start = end;
    }
    Tensor::cat(&outputs, 1)
        .view([b, kv, t, group, d])
        .permute([0, 2, 1, 3, 4])
        .reshape([b, t, h * d])
}

/// q, k and v in bf16, stacked for the products by (sequence, key/value head): q as
/// `[batch · kv_heads, seq · group, head_dim]`, its rows by position and then by query
/// head of the group (so a block of positions is a block of rows), the keys
/// transposed as `[batch · kv_heads, head_dim, seq]`, v as `[batch · kv_heads, seq,
/// head_dim]`.
fn stacked(q: &Tensor, k: &Tensor, v: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (b, h, t, d) = (q.size()[0], q.size()[1], q.size()[2], q.size()[3]);
    let kv = k.size()[1];
    let kind = Kind::BFloat16;
    (
        q.to_kind(kind)
            .view([b, kv, h / kv, t, d])
            .permute([0, 1, 3, 2, 4])
            .reshape([b * kv, t * (h / kv), d]),
        k.to_kind(kind).reshape([b * kv, t, d]).transpose(1, 2),
        v.to_kind(kind).reshape([b * kv, t, d]),
    )
}

/// `softmax(scale · q·keys + bias)·v` over the stacked rows, in bf16.
fn attend(q: &Tensor, keys: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Tensor {
    bias.baddbmm(q, keys, 1.0, scale)
        .softmax(-1, Kind::BFloat16)
        .bmm(v)
}

/// The additive mask of the query positions `start..end` over the keys `0..end`, per
/// row of the stacked products: `[batch · kv_heads, (end − start) · group, end]`
/// (bf16), `mask`'s rows repeated for each query head of a group, or causal.
fn block_mask(
    mask: Option<&Tensor>,
    device: Device,
    [b, kv, group]: [i64; 3],
    start: i64,
    end: i64,
) -> Tensor {
    let len = end - start;
    match mask {
        Some(m) => m
            .to_kind(Kind::BFloat16)
            .narrow(2, start, len)
            .narrow(3, 0, end)
            .view([b, 1, len, 1, end])
            .expand([b, kv, len, group, end], false)
            .reshape([b * kv, len * group, end]),
        None => {
            let keys = Tensor::arange(end, (Kind::Int64, device)).view([1, end]);
            let queries = (Tensor::arange(len, (Kind::Int64, device)) + start).view([len, 1]);
            AttentionMask::from_visible(&keys.le_tensor(&queries), Kind::BFloat16)
                .repeat_interleave_self_int(group, 0, None)
                .expand([b * kv, len * group, end], false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Relative distance of `a` from `b` (Frobenius norms).
    fn off(a: &Tensor, b: &Tensor) -> f64 {
        let b = b.to_kind(Kind::Float);
        (a.to_kind(Kind::Float) - &b).norm().double_value(&[]) / b.norm().double_value(&[])
    }

    #[test]
    fn centred_products_give_f32_attention_to_bf16s_rounding_where_plain_ones_do_not() {
        // Scores of standard deviation 9 (q and k of standard deviation 3): rounded to
        // bf16 before the softmax they move the probabilities by several percent;
        // centred, by bf16's rounding of the probabilities. Six query heads over two
        // key/value heads, 150 positions (blocks of 64, 64 and 22); causal, and with
        // left padding whose rows see nothing.
        tch::manual_seed(3);
        let (b, h, kv, t, d) = (2i64, 6i64, 2i64, 150i64, 32i64);
        let f = (Kind::Float, Device::Cpu);
        let bf16 = |x: Tensor| x.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        let q = bf16(Tensor::randn([b, h, t, d], f) * 3.0);
        let k = bf16(Tensor::randn([b, kv, t, d], f) * 3.0);
        let v = bf16(Tensor::randn([b, kv, t, d], f));
        // Sequence 1 has 5 positions of left padding; a loss reads no padding row.
        let real = Tensor::ones([b, t], (Kind::Bool, Device::Cpu));
        let _ = real.get(1).narrow(0, 0, 5).fill_(0);
        let dy = Tensor::randn([b, h, t, d], f) * real.view([b, 1, t, 1]);
        let causal = Tensor::ones([t, t], (Kind::Bool, Device::Cpu)).tril(0);
        let visible = causal
            .view([1, 1, t, t])
            .logical_and(&real.view([b, 1, 1, t]));
        let padded = AttentionMask::from_visible(&visible, Kind::Float);
        // Rows that see something (sequence 1's first 5 see nothing).
        let seen = real.view([b, 1, t, 1]).expand([b, h, t, d], false);
        for mask in [None, Some(&padded)] {
            let leaves = || [&q, &k, &v].map(|x| x.copy().set_requires_grad(true));
            let gradients = |y: &Tensor, leaves: &[Tensor; 3]| {
                (y.to_kind(Kind::Float) * &dy).sum(Kind::Float).backward();
                leaves.iter().map(Tensor::grad).collect::<Vec<_>>()
            };
            let exact = leaves();
            let want = Tensor::scaled_dot_product_attention(
                &exact[0],
                &exact[1],
                &exact[2],
                mask,
                0.0,
                mask.is_none(),
                None,
                true,
            );
            let want_grads = gradients(&want, &exact);
            let ours = leaves();
            let heads = |y: Tensor| y.view([b, t, h, d]).transpose(1, 2);
            let got = heads(centered_attention(&ours[0], &ours[1], &ours[2], mask));
            assert_eq!(got.kind(), Kind::BFloat16);
            assert!(
                got.isfinite().all().int64_value(&[]) == 1,
                "finite on padding rows"
            );
            let got_grads = gradients(&got, &ours);
            let rows = |x: &Tensor| x.masked_select(&seen);
            let tag = if mask.is_some() { "padded" } else { "causal" };
            assert!(off(&rows(&got), &rows(&want)) < 0.005, "{tag}: output");
            for (name, (g, w)) in ["q", "k", "v"]
                .iter()
                .zip(got_grads.iter().zip(&want_grads))
            {
                let e = off(g, w);
                assert!(e < 0.01, "{tag}: d{name} off by {e}");
            }
            // The same products without the centring: the q gradient is off by more.
            let plain = leaves();
            let y = heads(blocked(&plain[0], &plain[1], &plain[2], mask, false));
            let plain_grads = gradients(&y, &plain);
            let e = off(&plain_grads[0], &want_grads[0]);
            assert!(e > 0.01, "{tag}: uncentred dq only {e} off");
        }
    }
}
