//! The instruction sets the panel products ([`super::panels`]) are compiled for, and
//! the one place that picks among them: the widest the CPU has, detected once at run
//! time and logged once. Tests run every set the machine has ([`Isa::available`]).

use std::sync::OnceLock;

use tracing::info;

/// A build of the panel products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// AVX-512 (F, VL) with FMA: one panel of 16 f32 per register.
    Avx512,
    /// AVX2 with FMA: a panel in two registers.
    Avx2,
    /// No vector extension assumed: what the compiler makes of plain Rust, with
    /// separate multiply and add (a fused one without FMA is a library call).
    Portable,
}

impl Isa {
    /// The name in logs and tests.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512",
            Self::Avx2 => "avx2",
            Self::Portable => "portable",
        }
    }

    /// Whether this CPU runs the build.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Avx512 => {
                    std::arch::is_x86_feature_detected!("avx512f")
                        && std::arch::is_x86_feature_detected!("avx512vl")
                        && std::arch::is_x86_feature_detected!("fma")
                }
                Self::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
                Self::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Self::Portable
        }
    }

    /// Every build this CPU runs, widest first.
    pub fn available() -> Vec<Self> {
        [Self::Avx512, Self::Avx2, Self::Portable]
            .into_iter()
            .filter(|isa| isa.supported())
            .collect()
    }

    /// The widest build this CPU runs; detected and logged once per process.
    pub fn detected() -> Self {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let isa = Self::available()[0];
            info!(
                isa = isa.name(),
                bf16_units = bf16_units(),
                "CPU decoder kernels: f32 and bf16 panels (bf16 widened to f32 in registers)"
            );
            isa
        })
    }
}

/// Whether the CPU computes bf16 products natively (AVX512-BF16's dot products; the
/// CPUs with AMX-BF16 tiles have it too), which libtorch's oneDNN kernels use: without
/// them bf16 products are emulated and slower than f32.
pub fn bf16_units() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
