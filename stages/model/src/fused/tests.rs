//! The fused nodes against libtorch's operators through autograd in f32.

use tch::{Device, Kind, Tensor};

use super::{linear_bf16, rms_norm_bf16, rotate_pairs_bf16, swiglu_bf16};
use crate::weight_grads::StackGrad;

/// The largest `|a − b|` relative to `b`'s largest magnitude.
fn off(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Float);
    let scale = b.abs().max().double_value(&[]).max(1e-12);
    (a - b).abs().max().double_value(&[]) / scale
}

/// Whether `a` (bf16) is `b` (f32) rounded once: within half a bf16 step of each
/// value, give or take f32's summation order.
fn rounded_once(a: &Tensor, b: &Tensor) -> bool {
    let gap = (a.to_kind(Kind::Float) - b).abs();
    let half_step = b.abs() * 2f64.powi(-8) + 1e-30;
    bool::try_from((gap.le_tensor(&(half_step * 1.001))).all()).unwrap()
}

#[test]
fn rms_norm_bf16_is_libtorchs_f32_rms_norm_rounded_once_with_its_gradients() {
    tch::manual_seed(11);
    let f = (Kind::Float, Device::Cpu);
    // Rows across threads (more than the C++ side's grain), a width no multiple of
    // the kernels' lanes, values far from 1.
    let x = (Tensor::randn([3, 37, 100], f) * 4.0 + 0.5).set_requires_grad(true);
    let w = (Tensor::randn([100], f) * 0.3 + 1.0).set_requires_grad(true);
    let eps = 1e-5;
    let want = x.rms_norm([100].as_slice(), Some(&w), eps);
    let got = rms_norm_bf16(&x, &w, eps);
    assert_eq!(got.kind(), Kind::BFloat16);
    assert!(rounded_once(&got, &want.detach()), "forward");
    let dy = Tensor::randn([3, 37, 100], f).to_kind(Kind::BFloat16);
    let grads = |y: &Tensor, dy: &Tensor| {
        let g = Tensor::run_backward(
            &[(y.to_kind(Kind::Float) * dy).sum(Kind::Float)],
            &[&x, &w],
            false,
            false,
        );
        (g[0].shallow_clone(), g[1].shallow_clone())
    };
    let (dx, dw) = grads(&got, &dy.to_kind(Kind::Float));
    let (dx_ref, dw_ref) = grads(&want, &dy.to_kind(Kind::Float));
    assert_eq!((dx.kind(), dw.kind()), (Kind::Float, Kind::Float));
    assert!(off(&dx, &dx_ref) < 1e-5, "dx {}", off(&dx, &dx_ref));
    assert!(off(&dw, &dw_ref) < 1e-5, "dw {}", off(&dw, &dw_ref));
}

#[test]
fn swiglu_bf16_is_silu_times_up_in_f32_rounded_once_with_its_gradients() {
    tch::manual_seed(12);
    let f = (Kind::Float, Device::Cpu);
    // Gates out to ±12 (σ saturating both ways).
    let gu = (Tensor::randn([2, 33, 140], f) * 4.0).to_kind(Kind::BFloat16);
    let exact = gu.to_kind(Kind::Float).set_requires_grad(true);
    let [gate, up]: [Tensor; 2] = exact.split(70, -1).try_into().unwrap();
    let want = gate.silu() * up;
    let leaf = gu.set_requires_grad(true);
    let got = swiglu_bf16(&leaf);
    assert_eq!((got.kind(), got.size()), (Kind::BFloat16, vec![2, 33, 70]));
    assert!(rounded_once(&got, &want.detach()), "forward");
    let dh = (Tensor::randn([2, 33, 70], f) * 3.0).to_kind(Kind::BFloat16);
    (got.to_kind(Kind::Float) * dh.to_kind(Kind::Float))
        .sum(Kind::Float)
        .backward();
    (&want * dh.to_kind(Kind::Float))
        .sum(Kind::Float)
        .backward();
    let (dgu, dgu_ref) = (leaf.grad(), exact.grad());
    assert_eq!(dgu.kind(), Kind::BFloat16);
    assert!(
        rounded_once(&dgu, &dgu_ref),
        "backward: {}",
        off(&dgu, &dgu_ref)
    );
}

#[test]
fn rotate_pairs_bf16_is_the_f32_complex_product_rounded_once_with_its_gradient() {
    tch::manual_seed(13);
    let f = (Kind::Float, Device::Cpu);
    let (b, t, heads, d) = (2, 37, 3, 64);
    // Queries as the attention takes them: a head-strided view of a wider product
    // output ([batch, seq, (heads + 2) · d], the first heads · d columns).
    let product = (Tensor::randn([b, t, (heads + 2) * d], f) * 3.0).to_kind(Kind::BFloat16);
    let leaf = product.set_requires_grad(true);
    let x = leaf
        .narrow(-1, 0, heads * d)
        .view([b, t, heads, d])
        .transpose(1, 2);
    let positions = Tensor::arange(t, (Kind::Int64, Device::Cpu)).repeat([b, 1]) * 7;
    let angles =
        positions.to_kind(Kind::Float).unsqueeze(-1) * Tensor::linspace(1.0, 1e-4, d / 2, f);
    let unit = Tensor::polar(&angles.ones_like(), &angles).unsqueeze(1);
    let exact = x.detach().to_kind(Kind::Float).set_requires_grad(true);
    let complex = |x: &Tensor| {
        x.contiguous()
            .view([b, heads, t, d / 2, 2])
            .view_as_complex()
    };
    let want = (complex(&exact) * &unit).view_as_real().flatten(-2, -1);
    let got = rotate_pairs_bf16(&x, &unit);
    assert_eq!(
        (got.kind(), got.size()),
        (Kind::BFloat16, vec![b, heads, t, d])
    );
    assert!(got.is_contiguous());
    assert!(
        rounded_once(&got, &want.detach()),
        "forward: {}",
        off(&got, &want)
    );
    let dy = (Tensor::randn([b, heads, t, d], f) * 2.0).to_kind(Kind::BFloat16);
    (got.to_kind(Kind::Float) * dy.to_kind(Kind::Float))
        .sum(Kind::Float)
        .backward();
    (&want * dy.to_kind(Kind::Float))
        .sum(Kind::Float)
        .backward();
    let dx = leaf
        .grad()
        .narrow(-1, 0, heads * d)
        .view([b, t, heads, d])
        .transpose(1, 2);
    assert_eq!(dx.kind(), Kind::BFloat16);
    assert!(
        rounded_once(&dx, &exact.grad()),
        "backward: {}",
        off(&dx, &exact.grad())
    );
    // The rest of the product's gradient is untouched.
    let rest = leaf.grad().narrow(-1, heads * d, 2 * d);
    assert_eq!(rest.abs().max().double_value(&[]), 0.0);
}

#[test]
fn linear_bf16_is_libtorchs_product_and_its_gradients_are_exact_where_the_sums_are() {
    tch::manual_seed(14);
    let f = (Kind::Float, Device::Cpu);
    let bf16 = |t: Tensor| t.to_kind(Kind::BFloat16);
    // The forward pass is `linear`'s own product, bit for bit (what the passes without
    // gradient compute), at random values.
    let x = bf16(Tensor::randn([2, 70, 96], f));
    let w = bf16(Tensor::randn([40, 96], f));
    let want = x.linear::<&Tensor>(&w, None);
    assert!(linear_bf16(&x, &w, None).equal(&want));
    // Small integers: every sum (at most 240 in size) is exact in f32 and in bf16,
    // so the gradients must equal f32's exactly, whatever order the products sum in,
    // and a value moved by the transposes shows. Rows (3 · 37) no multiple of the
    // transposes' strips (32) or blocks (8), columns no multiple of 8; 29 outputs
    // (dy transposed) and 120 (x and the product transposed).
    let ints = |shape: &[i64], span: i64| Tensor::randint_low(-span, span + 1, shape, f);
    for (out, span) in [(29, 2), (120, 1)] {
        let (x, w, dy) = (
            ints(&[3, 37, 45], 1),
            ints(&[out, 45], span),
            ints(&[3, 37, out], 2),
        );
        let leaves = |t: &Tensor| bf16(t.copy()).set_requires_grad(true);
        let (xb, wb) = (leaves(&x), leaves(&w));
        let y = linear_bf16(&xb, &wb, None);
        assert_eq!((y.kind(), y.size()), (Kind::BFloat16, vec![3, 37, out]));
        assert!(y.to_kind(Kind::Float).equal(&x.matmul(&w.tr())), "forward");
        (y.to_kind(Kind::Float) * &dy).sum(Kind::Float).backward();
        let dx_want = dy.matmul(&w);
        let dw_want = dy.view([-1, out]).tr().mm(&x.view([-1, 45]));
        assert_eq!(
            (xb.grad().kind(), wb.grad().kind()),
            (Kind::BFloat16, Kind::BFloat16)
        );
        assert!(xb.grad().to_kind(Kind::Float).equal(&dx_want), "{out}: dx");
        assert!(wb.grad().to_kind(Kind::Float).equal(&dw_want), "{out}: dw");
        // The weight's gradient alone (activations without gradient).
        let wb = leaves(&w);
        (linear_bf16(&bf16(x.copy()), &wb, None).to_kind(Kind::Float) * &dy)
            .sum(Kind::Float)
            .backward();
        assert!(
            wb.grad().to_kind(Kind::Float).equal(&dw_want),
            "{out}: dw alone"
        );
        // The weight's gradient added into its f32 master's instead, its rows from
        // dy's columns in another order (q and k in the pair layout), over two parts:
        // the first's master had a gradient (1s), which stays under the sum; the
        // second takes none. The first pass makes the gradient, the second adds into
        // it; the bf16 weight takes none through autograd.
        let order = Tensor::randperm(out, (Kind::Int64, Device::Cpu));
        let first = out / 2;
        let master = Tensor::zeros([first, 45], f).set_requires_grad(true);
        (&master * 1.0).sum(Kind::Float).backward();
        let grad = StackGrad::new(&[(Some(&master), first), (None, out - first)], Some(&order));
        for _ in 0..2 {
            let xb = leaves(&x);
            (linear_bf16(&xb, &bf16(w.copy()), Some(&grad)).to_kind(Kind::Float) * &dy)
                .sum(Kind::Float)
                .backward();
            assert!(xb.grad().to_kind(Kind::Float).equal(&dx_want), "{out}: dx");
        }
        let want = dw_want.index_select(0, &order).narrow(0, 0, first) * 2.0 + 1.0;
        assert!(master.grad().equal(&want), "{out}: dw added");
    }
}

#[test]
fn the_nodes_take_empty_inputs_and_refuse_wrong_kinds_with_libtorchs_message() {
    let f = (Kind::Float, Device::Cpu);
    let w = Tensor::ones([8], f);
    assert_eq!(
        rms_norm_bf16(&Tensor::zeros([0, 8], f), &w, 1e-5).size(),
        vec![0, 8]
    );
    let none = Tensor::zeros([0, 8], (Kind::BFloat16, Device::Cpu));
    assert_eq!(swiglu_bf16(&none).size(), vec![0, 4]);
    let w4 = Tensor::zeros([4, 8], (Kind::BFloat16, Device::Cpu));
    assert_eq!(linear_bf16(&none, &w4, None).size(), vec![0, 4]);
    let refused = std::panic::catch_unwind(|| linear_bf16(&Tensor::zeros([2, 8], f), &w4, None));
    let text = refused
        .unwrap_err()
        .downcast_ref::<String>()
        .unwrap()
        .clone();
    assert!(text.contains("linear_bf16 takes bf16"), "{text}");
    let refused = std::panic::catch_unwind(|| swiglu_bf16(&Tensor::zeros([2, 8], f)));
    let message = refused.unwrap_err();
    let text = message.downcast_ref::<String>().unwrap();
    assert!(text.contains("swiglu_bf16 takes bf16"), "{text}");
}

#[test]
fn every_build_of_the_kernels_the_cpu_runs_computes_the_plain_builds_bits() {
    use super::kernels::{
        rms_norm_backward_rows, rms_norm_rows, rotate_row, swiglu_backward_rows, swiglu_rows,
    };
    use crate::decoder::Isa;
    use crate::decoder::host_math::Bf16;
    // Widths no multiple of the lanes; values across the exponential's range.
    let (rows, dim) = (5, 100);
    let values = |n: usize, seed: u32| -> Vec<f32> {
        (0..n as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32 * 24.0 - 12.0)
            .collect()
    };
    let bf16 = |v: &[f32]| v.iter().map(|&v| Bf16::round(v).0).collect::<Vec<_>>();
    let x = values(rows * dim, 1);
    let w = values(dim, 2);
    let dy = bf16(&values(rows * dim, 3));
    let gu = bf16(&values(rows * 2 * dim, 4));
    let dh = bf16(&values(rows * dim, 5));
    let turns = values(dim, 6);
    let run = |isa: Isa| {
        let (mut y, mut rstd) = (vec![0u16; rows * dim], vec![0f32; rows]);
        rms_norm_rows(isa, &x, &w, &mut y, &mut rstd, 1e-5);
        let (mut dx, mut dw) = (vec![0f32; rows * dim], vec![0f32; dim]);
        rms_norm_backward_rows(isa, &x, &w, &rstd, &dy, &mut dx, &mut dw);
        let mut h = vec![0u16; rows * dim];
        swiglu_rows(isa, &gu, &mut h, dim);
        let mut dgu = vec![0u16; rows * 2 * dim];
        swiglu_backward_rows(isa, &gu, &dh, &mut dgu, dim);
        let (mut r, mut back) = (vec![0u16; dim], vec![0u16; dim]);
        rotate_row(isa, &dy[..dim], &turns, &mut r, false);
        rotate_row(isa, &dy[..dim], &turns, &mut back, true);
        let floats = [
            y.iter().map(|&v| v as u32).collect::<Vec<_>>(),
            rstd.iter().map(|v| v.to_bits()).collect(),
            dx.iter().map(|v| v.to_bits()).collect(),
            dw.iter().map(|v| v.to_bits()).collect(),
        ];
        let halves = [h, dgu, r, back];
        (floats, halves)
    };
    let plain = run(Isa::Portable);
    let available = Isa::available();
    assert!(available.contains(&Isa::Portable));
    for isa in available {
        assert!(
            run(isa) == plain,
            "the {} build differs from the plain one",
            isa.name()
        );
    }
}

/// The attention tests' shapes `(batch, heads, kv_heads, seq, head_dim)`: groups of 1
/// to 5 heads (tiles of 3, of 4 plus 1 at 5, and at 5 × 17 odd rows in all: a last
/// pair of one row for the sums over rows), head_dim 16 to 128, lengths off the
/// kernels' 16 keys, 64-key tiles and 32 positions (and one position alone).
const ATTENTION_SHAPES: [(i64, i64, i64, i64, i64); 6] = [
    (2, 6, 2, 150, 64),
    (1, 8, 2, 33, 128),
    (2, 5, 1, 17, 32),
    (1, 3, 1, 1, 64),
    (1, 4, 2, 70, 16),
    (1, 2, 1, 9, 80),
];

/// Which positions of `b` sequences of `t` are real (the last sequence's first 5 are
/// left padding, or all but its last below 6), and the additive f32 mask of causal
/// attention over them (`[b, 1, t, t]`; padding rows see nothing).
fn left_padded(b: i64, t: i64) -> (Tensor, Tensor) {
    let real = Tensor::ones([b, t], (Kind::Bool, Device::Cpu));
    let _ = real.get(b - 1).narrow(0, 0, 5.min(t - 1)).fill_(0);
    let causal = Tensor::ones([t, t], (Kind::Bool, Device::Cpu)).tril(0);
    let visible = causal
        .view([1, 1, t, t])
        .logical_and(&real.view([b, 1, 1, t]));
    let mask = crate::mask::AttentionMask::from_visible(&visible, Kind::Float);
    (real, mask)
}

/// libtorch's f32 attention of f32 `q` `[b, h, t, d]` over `k`, `v` `[b, kv, t, d]`,
/// causal or masked, as `[b, t, h, d]`.
fn exact_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    Tensor::scaled_dot_product_attention(q, k, v, mask, 0.0, mask.is_none(), None, true)
        .transpose(1, 2)
}

#[test]
#[allow(clippy::print_stderr)] // Says why the test checked nothing on this CPU.
fn attention_bf16_is_f32_attention_to_bf16s_rounding_causal_and_padded() {
    use super::attention_bf16;
    if !crate::decoder::bf16_units() {
        eprintln!("no AVX512-BF16 here: the bf16 attention is not run");
        return;
    }
    tch::manual_seed(14);
    let f = (Kind::Float, Device::Cpu);
    let bf16 = |x: Tensor| x.to_kind(Kind::BFloat16);
    for (b, h, kv, t, d) in ATTENTION_SHAPES {
        // Scores of standard deviation ~9, as the centred attention's test.
        let q = bf16(Tensor::randn([b, h, t, d], f) * 3.0);
        let k = bf16(Tensor::randn([b, kv, t, d], f) * 3.0);
        // v as the layers hand it over: a head-strided view of a wider product.
        let wide = bf16(Tensor::randn([b, t, kv + 1, d], f));
        let v = wide.narrow(2, 0, kv).transpose(1, 2);
        let (real, padded) = left_padded(b, t);
        for mask in [None, Some(&padded)] {
            let f32 = |x: &Tensor| x.to_kind(Kind::Float);
            let want = exact_attention(&f32(&q), &f32(&k), &f32(&v), mask).reshape([b, t, h * d]);
            let got = attention_bf16(&q, &k, &v, mask.map(|m| m.to_kind(Kind::BFloat16)).as_ref());
            assert_eq!(
                (got.kind(), got.size()),
                (Kind::BFloat16, vec![b, t, h * d])
            );
            // Rows that see something: padding rows see nothing (any finite mean).
            let seen = real.view([b, t, 1]).to_kind(Kind::Float);
            let (got, want) = (got.to_kind(Kind::Float) * &seen, want * &seen);
            let rel = (&got - &want).norm().double_value(&[]) / want.norm().double_value(&[]);
            let at = format!("{b}×{h}/{kv} heads × {t} × {d}, mask {}", mask.is_some());
            assert!(rel < 4e-3, "{at}: {rel}");
            // Each row's weights sum to one before the rounding of the output.
            let worst = (&got - &want).abs().max().double_value(&[]);
            assert!(worst < 0.05, "{at}: {worst}");
        }
    }
}

#[test]
#[allow(clippy::print_stderr)] // Says why the test checked nothing on this CPU.
fn attention_bf16_gradients_are_f32_attentions_to_bf16s_rounding_causal_and_padded() {
    use super::attention_bf16;
    if !crate::decoder::bf16_units() {
        eprintln!("no AVX512-BF16 here: the bf16 attention's backward is not run");
        return;
    }
    tch::manual_seed(15);
    let f = (Kind::Float, Device::Cpu);
    let off = |a: &Tensor, b: &Tensor| {
        let b = b.to_kind(Kind::Float);
        (a.to_kind(Kind::Float) - &b).norm().double_value(&[]) / b.norm().double_value(&[])
    };
    for (b, h, kv, t, d) in ATTENTION_SHAPES {
        // Scores of standard deviation ~9, as the forward's test.
        let bf16 = |x: Tensor| x.to_kind(Kind::BFloat16).to_kind(Kind::Float);
        let (q, k, v) = (
            bf16(Tensor::randn([b, h, t, d], f) * 3.0),
            bf16(Tensor::randn([b, kv, t, d], f) * 3.0),
            bf16(Tensor::randn([b, kv, t, d], f)),
        );
        // No loss reads a padding row.
        let (real, padded) = left_padded(b, t);
        let dy = Tensor::randn([b, t, h, d], f) * real.view([b, t, 1, 1]);
        for mask in [None, Some(&padded)] {
            let at = format!("{b}×{h}/{kv} heads × {t} × {d}, mask {}", mask.is_some());
            let leaves =
                |kind: Kind| [&q, &k, &v].map(|x| x.detach().to_kind(kind).set_requires_grad(true));
            let gradients = |y: &Tensor, leaves: &[Tensor; 3]| {
                (y.to_kind(Kind::Float) * &dy).sum(Kind::Float).backward();
                leaves.iter().map(Tensor::grad).collect::<Vec<_>>()
            };
            let exact = leaves(Kind::Float);
            let want = exact_attention(&exact[0], &exact[1], &exact[2], mask);
            let want_grads = gradients(&want, &exact);
            let ours = leaves(Kind::BFloat16);
            let mask16 = mask.map(|m| m.to_kind(Kind::BFloat16));
            let got = attention_bf16(&ours[0], &ours[1], &ours[2], mask16.as_ref());
            // Through autograd, the forward's output is the one without gradient.
            let plain =
                tch::no_grad(|| attention_bf16(&ours[0], &ours[1], &ours[2], mask16.as_ref()));
            assert!(got.equal(&plain), "{at}: the outputs differ with gradient");
            let got = got.view([b, t, h, d]);
            let got_grads = gradients(&got, &ours);
            for (name, (g, w)) in ["q", "k", "v"]
                .iter()
                .zip(got_grads.iter().zip(&want_grads))
            {
                assert_eq!(g.kind(), Kind::BFloat16, "{at}: d{name}'s kind");
                // One key alone has weight 1 whatever its score: q and k's gradients
                // are 0 (exact's within its rounding), so the error is absolute there.
                let zero = w.abs().max().double_value(&[]) < 1e-4;
                let e = match zero {
                    true => g.abs().max().double_value(&[]),
                    false => off(g, w),
                };
                assert!(e < 0.008, "{at}: d{name} off by {e}");
            }
        }
    }
}
