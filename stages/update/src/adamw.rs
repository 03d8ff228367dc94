//! AdamW written out, so that its state (moments and step count) can be saved with a
//! checkpoint and a resumed run continues exactly; tch's optimizer keeps its state
//! private.

use std::path::Path;

use lsp_model::SafetensorsFile;
use tch::{Kind, Tensor};

use crate::adamw_fused::{self, StepConstants};
use crate::error::Result;

/// AdamW (decoupled weight decay) over a list of parameters.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<(String, Tensor)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: i64,
    betas: (f64, f64),
    eps: f64,
    weight_decay: f64,
}

impl AdamW {
    /// An optimizer over `params` (name, trainable tensor), in a fixed order.
    pub fn new(
        mut params: Vec<(String, Tensor)>,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
    ) -> Self {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &Tensor| Tensor::zeros_like(p).to_kind(Kind::Float);
        Self {
            m: params.iter().map(|(_, p)| zeros(p)).collect(),
            v: params.iter().map(|(_, p)| zeros(p)).collect(),
            params,
            step: 0,
            betas,
            eps,
            weight_decay,
        }
    }

    /// The parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.params.iter().map(|(_, p)| p)
    }

    /// Steps taken.
    pub fn steps(&self) -> i64 {
        self.step
    }

    /// Drops every gradient ([`lsp_model::forget_grad`], PyTorch's
    /// `zero_grad(set_to_none=True)`): the next backward pass hands each parameter its
    /// gradient as computed, with no zeros written first and no sum into them. A
    /// parameter no backward pass reaches has a zero gradient in
    /// [`AdamW::gradients`].
    pub fn zero_grad(&mut self) {
        for (_, p) in &self.params {
            lsp_model::forget_grad(p);
        }
    }

    /// Frees the gradients' memory until the next [`AdamW::zero_grad`] (libtorch
    /// keeps a gradient once made; between steps, while the rollouts run, it would
    /// hold another copy of the weights for nothing).
    pub fn release_grads(&mut self) {
        for (_, p) in &self.params {
            lsp_model::forget_grad(p);
        }
    }

    /// Frees one gradient's memory ([`AdamW::release_grads`]); `grad` is a handle of
    /// a parameter's gradient.
    pub fn release_grad(grad: &Tensor) {
        if grad.defined() {
            let mut g = grad.shallow_clone();
            tch::no_grad(|| g.set_data(&Tensor::empty([0], (g.kind(), g.device()))));
        }
    }

    /// Each parameter's accumulated gradient, in order; zeros where none was made.
    pub fn gradients(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(|(_, p)| {
                let g = p.grad();
                match g.defined() && g.numel() == p.numel() {
                    true => g,
                    false => tch::no_grad(|| p.zeros_like()),
                }
            })
            .collect()
    }

    /// One step at learning rate `lr` from the accumulated gradients.
    pub fn step(&mut self, lr: f64) {
        let grads = self.gradients();
        self.step_with(lr, &grads);
    }

    /// One step at learning rate `lr` with gradient `grads[i]` for parameter i (e.g.
    /// the sum of every worker's, [`AdamW::gradients`]): in one pass over each
    /// parameter's memory where it is f32 on the CPU (`adamw_fused.rs`), else through
    /// libtorch's operators.
    pub fn step_with(&mut self, lr: f64, grads: &[Tensor]) {
        assert_eq!(grads.len(), self.params.len(), "one gradient per parameter");
        self.step += 1;
        let (b1, b2) = self.betas;
        let bias1 = 1.0 - b1.powi(self.step as i32);
        let bias2 = 1.0 - b2.powi(self.step as i32);
        let constants = StepConstants {
            lerp_m: (1.0 - b1) as f32,
            lerp_v: (1.0 - b2) as f32,
            inv_sqrt_bias2: (1.0 / bias2.sqrt()) as f32,
            eps: self.eps as f32,
            scale: (-bias1 / lr) as f32,
            decay: (1.0 - lr * self.weight_decay) as f32,
        };
        let threads = tch::get_num_threads().max(1) as usize;
        tch::no_grad(|| {
            for (i, ((_, p), g)) in self.params.iter_mut().zip(grads).enumerate() {
                let (m, v) = (&mut self.m[i], &mut self.v[i]);
                if adamw_fused::takes(p, g, m, v) {
                    adamw_fused::fused_step(p, g, m, v, &constants, threads);
                    continue;
                }
                // In place, one parameter at a time, with one temporary of the
                // parameter's size (the largest is the embedding): the step is taken at
                // the update's memory peak, when every gradient is alive.
                let g = g.to_kind(Kind::Float);
                // m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g².
                let _ = m.lerp_(&g, 1.0 - b1);
                let mut scratch = g.square();
                let _ = v.lerp_(&scratch, 1.0 - b2);
                // p ← p·(1 − lr·λ) − lr·m̂ / (√v̂ + ε), with m̂ = m/bias1, v̂ = v/bias2:
                // scratch = −(bias1/lr)·(√v/√bias2 + ε), then p += m / scratch.
                let _ = v.sqrt_out(&scratch);
                let _ = scratch.g_div_scalar_(bias2.sqrt());
                let _ = scratch.g_add_scalar_(self.eps);
                let _ = scratch.g_mul_scalar_(-bias1 / lr);
                if self.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                // (A bf16 parameter takes the f32 update rounded, as `to_kind` would.)
                let _ = p.addcdiv_(m, &scratch);
            }
        });
    }

    /// Saves the moments and the step count (`optimizer.safetensors`), streamed.
    pub fn save(&self, path: &Path) -> Result<()> {
        lsp_model::write_safetensors(&self.state(), path)?;
        Ok(())
    }

    /// What [`AdamW::save`] writes, named, sharing the moments' storage (to be written
    /// later, before the next step changes them).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut named: Vec<(String, Tensor)> = Vec::with_capacity(2 * self.params.len() + 1);
        for (i, (name, _)) in self.params.iter().enumerate() {
            named.push((format!("m.{name}"), self.m[i].shallow_clone()));
            named.push((format!("v.{name}"), self.v[i].shallow_clone()));
        }
        named.push(("step".to_string(), Tensor::from_slice(&[self.step])));
        named
    }

    /// Restores what [`AdamW::save`] wrote for the same parameters, streamed into the
    /// moments already allocated.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let mut file = SafetensorsFile::open(path)?;
        for (i, (name, _)) in self.params.iter().enumerate() {
            file.read_into(&format!("m.{name}"), &self.m[i])?;
            file.read_into(&format!("v.{name}"), &self.v[i])?;
        }
        self.step = file.read("step")?.int64_value(&[0]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOAT: (Kind, tch::Device) = (Kind::Float, tch::Device::Cpu);

    /// Three steps of the fused kernel against libtorch's operators (a bf16 copy of
    /// the gradient sends a parameter down that path), with and without weight
    /// decay, sizes from one element to several threads' chunks, moments and
    /// parameters alike to f32's rounding.
    #[test]
    fn the_fused_step_follows_libtorchs_operators() {
        tch::manual_seed(7);
        for decay in [0.0, 0.1] {
            let sizes = [vec![1i64], vec![17, 3], vec![300_001], vec![1 << 19, 3]];
            let params: Vec<Tensor> = sizes.iter().map(|s| Tensor::randn(s, FLOAT)).collect();
            let named = |ps: &[Tensor]| -> Vec<(String, Tensor)> {
                let copies = ps.iter().map(|p| p.copy());
                (0..).map(|i| format!("p{i}")).zip(copies).collect()
            };
            let mut fused = AdamW::new(named(&params), (0.9, 0.999), 1e-8, decay);
            let mut reference = AdamW::new(named(&params), (0.9, 0.999), 1e-8, decay);
            for step in 0..3 {
                let grads: Vec<Tensor> = params.iter().map(|p| p.randn_like() * 3).collect();
                // libtorch's path takes a gradient it must convert; the values are the
                // same (f32's through bf16 and back).
                let grads: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::BFloat16)).collect();
                let wide: Vec<Tensor> = grads.iter().map(|g| g.to_kind(Kind::Float)).collect();
                assert!((0..params.len()).all(|i| adamw_fused::takes(
                    &fused.params[i].1,
                    &wide[i],
                    &fused.m[i],
                    &fused.v[i]
                ) && !adamw_fused::takes(
                    &reference.params[i].1,
                    &grads[i],
                    &reference.m[i],
                    &reference.v[i]
                )));
                let before: Vec<Tensor> = reference.params().map(Tensor::copy).collect();
                let versions: Vec<i64> = fused.params().map(Tensor::internal_version).collect();
                fused.step_with(1e-2, &wide);
                // Written in place as libtorch's operators would be: the version counters
                // (which kept inference weights are matched by) moved.
                for (p, version) in fused.params().zip(versions) {
                    assert!(
                        p.internal_version() > version,
                        "a fused write left no version"
                    );
                }
                reference.step_with(1e-2, &grads);
                for (i, ((_, got), (_, want))) in
                    fused.params.iter().zip(&reference.params).enumerate()
                {
                    // The parameters' change (the parameters themselves would hide an
                    // error in it below their rounding), the moments themselves.
                    for (got, want, what, tol) in [
                        (got - &before[i], want - &before[i], "change", 1e-4),
                        (fused.m[i].copy(), reference.m[i].copy(), "m", 4e-7),
                        (fused.v[i].copy(), reference.v[i].copy(), "v", 4e-7),
                    ] {
                        let scale = want.abs().max().double_value(&[]);
                        let diff = (&got - &want).abs().max().double_value(&[]);
                        assert!(
                            scale > 0.0 && diff <= tol * scale,
                            "step {step}, decay {decay}, p{i} {what}: {diff} of {scale}"
                        );
                    }
                }
            }
        }
    }

    /// The bound `pipeline validate` warns by: a bf16 weight of size 512·lr or more
    /// holds still under a step of lr (the first step of a constant gradient: m̂/√v̂ =
    /// 1 with ε 0), smaller ones move, and f32 weights all move.
    #[test]
    fn a_bf16_weight_from_512_learning_rates_up_loses_the_step() {
        let step = |kind: Kind, lr: f64, values: &[f32]| -> Vec<bool> {
            let w = Tensor::from_slice(values)
                .to_kind(kind)
                .set_requires_grad(true);
            let before = w.detach().copy();
            let mut opt = AdamW::new(
                vec![("w".into(), w.shallow_clone())],
                (0.9, 0.999),
                0.0,
                0.0,
            );
            opt.zero_grad();
            w.sum(Kind::Float).backward();
            opt.step(lr);
            let moved = w.detach().ne_tensor(&before);
            Vec::<bool>::try_from(&moved).unwrap()
        };
        // 512 · 3e-6 = 1.536e-3: 1.6e-3, 0.02 and -0.02 hold still; 1e-4 and 3e-4 move.
        let values = [1e-4, 3e-4, 1.6e-3, 0.02, -0.02];
        assert_eq!(
            step(Kind::BFloat16, 3e-6, &values),
            [true, true, false, false, false]
        );
        assert_eq!(step(Kind::Float, 3e-6, &values), [true; 5]);
        // At 1e-4 (the bound 0.0512) the bf16 weights of 0.02 move too.
        assert_eq!(step(Kind::BFloat16, 1e-4, &values), [true; 5]);
    }

    #[test]
    fn two_steps_by_hand_and_state_round_trips() {
        // One parameter x = 1 with gradient 2 each step, lr 0.1, betas (0.9, 0.999),
        // eps 0, weight decay 0.5.
        let x = Tensor::from_slice(&[1.0f32]).set_requires_grad(true);
        let mut opt = AdamW::new(
            vec![("x".into(), x.shallow_clone())],
            (0.9, 0.999),
            0.0,
            0.5,
        );
        let grad_step = |opt: &mut AdamW| {
            opt.zero_grad();
            (&x * 2.0).sum(Kind::Float).backward();
            opt.step(0.1);
        };
        grad_step(&mut opt);
        // m̂ = 2, v̂ = 4 → update 1; x = 1·(1 − 0.05) − 0.1 = 0.85.
        assert!((x.double_value(&[0]) - 0.85).abs() < 1e-6);
        grad_step(&mut opt);
        // Constant gradient: m̂ = 2, v̂ = 4 again → x = 0.85·0.95 − 0.1 = 0.7075.
        assert!((x.double_value(&[0]) - 0.7075).abs() < 1e-6);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        opt.save(&path).unwrap();
        let y = Tensor::from_slice(&[0.7075f32]).set_requires_grad(true);
        let mut restored = AdamW::new(
            vec![("x".into(), y.shallow_clone())],
            (0.9, 0.999),
            0.0,
            0.5,
        );
        restored.load(&path).unwrap();
        assert_eq!(restored.steps(), 2);
        assert!(restored.m[0].equal(&opt.m[0]) && restored.v[0].equal(&opt.v[0]));
    }
}
