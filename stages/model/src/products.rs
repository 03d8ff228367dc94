//! Which kind a model's products take: the one place `model.precision` meets the
//! machine. Under `mixed_bf16` the products are bf16 where the device computes bf16
//! faster than f32: a CUDA device, or a CPU whose bf16 units outrun its f32 FMAs
//! ([`crate::decoder::bf16_products_pay`]: AMX-BF16 tiles, or AVX512-BF16 on an AMD
//! core). A CPU without bf16 units would have libtorch emulate every bf16 product,
//! several times slower than f32 (measured on an AVX2 EPYC: log-probs 6-7x slower,
//! transformers' bf16 autocast as much), and an Intel core with AVX512-BF16 but no
//! AMX computes them no faster than f32 and loses the casts (measured on a Xeon:
//! log-probs 0.65x, a training step 0.6x of f32's), so there the products run in
//! f32 — the master weights' own type: exact, and as fast as `precision: f32` —
//! unless `emulate_bf16` asks for bf16 regardless (to reproduce a bf16 run's numerics
//! on such a machine, and in tests, which run every path on every machine). The path
//! is logged once per process and written in a run's manifest.

use std::sync::Mutex;

use tch::Kind;
use tracing::{info, warn};

use crate::config::{DeviceKind, Precision};

/// Where a model's products run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Products {
    /// `precision: f32`: in the weights' own kind.
    Weights,
    /// `mixed_bf16` in bf16, on units that compute it.
    Bf16,
    /// `mixed_bf16` in bf16 on a CPU where they do not pay, as `emulate_bf16` asks:
    /// emulated without bf16 units, or on units no faster than f32's.
    Bf16Emulated,
    /// `mixed_bf16` in f32 on a CPU where bf16 products do not pay: the master
    /// weights' kind.
    F32Fallback,
}

impl Products {
    /// The path for `precision` on `device`, given whether the CPU's bf16 products
    /// outrun its f32 ones and whether bf16 regardless was asked for.
    pub fn resolve(
        precision: Precision,
        device: DeviceKind,
        bf16_pays: bool,
        emulate_bf16: bool,
    ) -> Self {
        match precision {
            Precision::F32 => Self::Weights,
            Precision::MixedBf16 if device == DeviceKind::Cuda || bf16_pays => Self::Bf16,
            Precision::MixedBf16 if emulate_bf16 => Self::Bf16Emulated,
            Precision::MixedBf16 => Self::F32Fallback,
        }
    }

    /// The path for `precision` on `device` on this machine.
    pub fn on_this_machine(precision: Precision, device: DeviceKind, emulate_bf16: bool) -> Self {
        Self::resolve(
            precision,
            device,
            crate::decoder::bf16_products_pay(),
            emulate_bf16,
        )
    }

    /// The products' kind when not the weights' own.
    pub fn kind(self) -> Option<Kind> {
        match self {
            Self::Weights | Self::F32Fallback => None,
            Self::Bf16 | Self::Bf16Emulated => Some(Kind::BFloat16),
        }
    }

    /// The name in logs, manifests and benchmark headers.
    pub fn name(self) -> &'static str {
        match self {
            Self::Weights => "weights",
            Self::Bf16 => "bf16",
            Self::Bf16Emulated => "bf16_emulated",
            Self::F32Fallback => "f32_fallback",
        }
    }

    /// Says once per process which path runs, and why when it is not what the
    /// precision names.
    pub fn log_once(self) {
        static SAID: Mutex<Vec<Products>> = Mutex::new(Vec::new());
        let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
        if said.contains(&self) {
            return;
        }
        said.push(self);
        match self {
            Self::Weights => {}
            Self::Bf16 => info!(products = self.name(), "mixed_bf16: bf16 products"),
            Self::Bf16Emulated => warn!(
                products = self.name(),
                "mixed_bf16 with emulate_bf16 on {}: the bf16 products run slower than f32",
                why_not_bf16()
            ),
            Self::F32Fallback => warn!(
                products = self.name(),
                "mixed_bf16 on {}: the products run in f32, the master weights' kind (exact, \
                 and faster here); set model.emulate_bf16 (--emulate-bf16) for bf16 anyway, \
                 or model.rollout_weights: bf16 (or w8a8) for rollouts that read fewer bytes",
                why_not_bf16()
            ),
        }
    }
}

/// Why bf16 products do not pay on this CPU, for the log.
fn why_not_bf16() -> &'static str {
    if crate::decoder::bf16_units() {
        "an Intel CPU with AVX512-BF16 but no AMX-BF16 tiles, whose bf16 dot products run \
         no faster than its f32 FMAs"
    } else {
        "a CPU without bf16 units (no avx512_bf16, or capped below it by LSP_CPU_ISA or \
         ATEN_CPU_CAPABILITY), where libtorch emulates them, several times slower than f32"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_precision_falls_back_to_f32_only_where_bf16_products_do_not_pay() {
        use DeviceKind::{Cpu, Cuda};
        use Precision::{F32, MixedBf16};
        for units in [false, true] {
            for emulate in [false, true] {
                for device in [Cpu, Cuda] {
                    let got = Products::resolve(F32, device, units, emulate);
                    assert_eq!(got, Products::Weights);
                    assert_eq!(got.kind(), None);
                }
                assert_eq!(
                    Products::resolve(MixedBf16, Cuda, units, emulate),
                    Products::Bf16
                );
                assert_eq!(
                    Products::resolve(MixedBf16, Cpu, true, emulate),
                    Products::Bf16
                );
            }
        }
        let fallback = Products::resolve(MixedBf16, Cpu, false, false);
        assert_eq!(fallback, Products::F32Fallback);
        assert_eq!(fallback.kind(), None);
        let emulated = Products::resolve(MixedBf16, Cpu, false, true);
        assert_eq!(emulated, Products::Bf16Emulated);
        assert_eq!(emulated.kind(), Some(Kind::BFloat16));
    }
}
