//! The product of decoding's one or two rows ([`MAX_ROWS`]) with a weight matrix, in
//! Rust. Per call, libtorch's path to oneDNN converts the input and the output between
//! layouts (about 25 µs each) and oneDNN repacks the weight in chunks; for a decoding
//! step's single row that overhead is a third of the product's time. Measured with
//! `pipeline bench rollout` on this workplace's 2-core Zen 5: batch 1 39 → 51 tok/s,
//! batch 2 66 → 80; at batch 4 the single-threaded kernel ties oneDNN's two threads
//! and at batch 8 loses (212 against 162), so larger batches stay with oneDNN. Here the weight is
//! packed once, for as long as the inference guard lives, into panels of
//! [`PANEL`] output rows whose `in × PANEL` values lie in the order the kernel reads
//! them, and the kernel streams each panel once for every row of the input, with the
//! accumulators in registers. The kernel is compiled for AVX-512 and AVX2 and picked
//! at run time (`multiversion`), with a portable build as fallback.

use multiversion::multiversion;
use tch::{Device, Kind, Tensor};

/// Output rows per panel: one AVX-512 register of f32, two of AVX2.
const PANEL: usize = 16;

/// Most input rows the kernel takes (decoding's batch); more go through oneDNN.
pub const MAX_ROWS: usize = 2;

/// A weight `[out, in]` (and bias `[out]`) packed into panels, f32.
#[derive(Debug)]
pub struct Panels {
    values: Vec<f32>,
    bias: Option<Vec<f32>>,
    out: usize,
    inner: usize,
}

impl Panels {
    /// Packs `weight` (`[out, in]`, any float kind, on any device) and `bias`.
    pub fn pack(weight: &Tensor, bias: Option<&Tensor>) -> Self {
        let (out, inner) = (weight.size()[0] as usize, weight.size()[1] as usize);
        let padded = out.div_ceil(PANEL) * PANEL;
        // [padded, in] -> [panels, PANEL, in] -> [panels, in, PANEL], flat.
        let w = tch::no_grad(|| {
            let w = weight.to_device(Device::Cpu).to_kind(Kind::Float);
            let w = match padded - out {
                0 => w,
                extra => Tensor::cat(
                    &[
                        w,
                        Tensor::zeros([extra as i64, inner as i64], (Kind::Float, Device::Cpu)),
                    ],
                    0,
                ),
            };
            w.view([(padded / PANEL) as i64, PANEL as i64, inner as i64])
                .transpose(1, 2)
                .contiguous()
                .view([-1])
        });
        let to_vec = |t: &Tensor| Vec::<f32>::try_from(t).expect("a flat f32 CPU tensor");
        Self {
            values: to_vec(&w),
            bias: bias.map(|b| {
                to_vec(&tch::no_grad(|| {
                    b.to_device(Device::Cpu).to_kind(Kind::Float).view([-1])
                }))
            }),
            out,
            inner,
        }
    }

    /// Whether [`Panels::product`] takes `x`: f32 on the CPU, at most [`MAX_ROWS`]
    /// rows in all.
    fn takes(x: &Tensor) -> bool {
        let shape = x.size();
        let rows: i64 = shape[..shape.len() - 1].iter().product();
        x.device() == Device::Cpu
            && x.kind() == Kind::Float
            && rows > 0
            && rows as usize <= MAX_ROWS
    }

    /// `x Wᵀ + b` for an `x` (`[..., in]`) that [`Panels::takes`]; `None` otherwise.
    pub fn product(&self, x: &Tensor) -> Option<Tensor> {
        if !Self::takes(x) {
            return None;
        }
        let mut shape = x.size();
        let rows: i64 = shape[..shape.len() - 1].iter().product();
        let input = Vec::<f32>::try_from(&x.reshape([-1])).ok()?;
        let y = self.apply(&input, rows as usize);
        *shape.last_mut().expect("at least one dimension") = self.out as i64;
        Some(Tensor::from_slice(&y).view(shape.as_slice()))
    }

    /// `rows` rows of `input` (`rows × in`, row-major) times the weight: `rows × out`.
    pub fn apply(&self, input: &[f32], rows: usize) -> Vec<f32> {
        assert!((1..=MAX_ROWS).contains(&rows) && input.len() == rows * self.inner);
        let padded = self.values.len() / self.inner;
        let mut y = vec![0f32; rows * padded];
        product(input, rows, self.inner, &self.values, &mut y);
        let mut out = Vec::with_capacity(rows * self.out);
        for r in 0..rows {
            let row = &y[r * padded..r * padded + self.out];
            match &self.bias {
                Some(b) => out.extend(row.iter().zip(b).map(|(v, b)| v + b)),
                None => out.extend_from_slice(row),
            }
        }
        out
    }
}

/// `y[r][n] = Σ_k x[r][k] · w[n][k]` for 1 or 2 rows, over every panel.
#[multiversion(targets("x86_64+avx512f+avx512vl+fma", "x86_64+avx2+fma"))]
fn product(x: &[f32], rows: usize, inner: usize, panels: &[f32], y: &mut [f32]) {
    match rows {
        1 => rows_times_panels::<1>(x, inner, panels, y),
        _ => rows_times_panels::<2>(x, inner, panels, y),
    }
}

/// The kernel, inlined into each target's build of [`product`]: for each panel, `R ×
/// PANEL` accumulators, and per input position one broadcast of each row's value
/// times the panel's `PANEL` weights.
#[inline(always)]
fn rows_times_panels<const R: usize>(x: &[f32], inner: usize, panels: &[f32], y: &mut [f32]) {
    let padded = panels.len() / inner;
    for (p, panel) in panels.chunks_exact(inner * PANEL).enumerate() {
        let mut acc = [[0f32; PANEL]; R];
        for (k, w) in panel.chunks_exact(PANEL).enumerate() {
            for r in 0..R {
                let v = x[r * inner + k];
                for l in 0..PANEL {
                    acc[r][l] += v * w[l];
                }
            }
        }
        for r in 0..R {
            y[r * padded + p * PANEL..r * padded + (p + 1) * PANEL].copy_from_slice(&acc[r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_give_libtorchs_product_for_every_row_count() {
        // 40 outputs: two full panels and a padded one; with a bias.
        let w = Tensor::randn([40, 24], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([40], (Kind::Float, Device::Cpu));
        let panels = Panels::pack(&w, Some(&b));
        for rows in 1..=MAX_ROWS as i64 {
            let x = Tensor::randn([rows, 1, 24], (Kind::Float, Device::Cpu));
            let got = panels.product(&x).unwrap();
            assert_eq!(got.size(), [rows, 1, 40]);
            let expected = x.linear(&w, Some(&b));
            let diff = (got - expected).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "{rows} rows: {diff}");
        }
        let many = Tensor::randn([MAX_ROWS as i64 + 1, 24], (Kind::Float, Device::Cpu));
        assert!(panels.product(&many).is_none());
    }
}
