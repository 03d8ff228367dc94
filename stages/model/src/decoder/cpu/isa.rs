//! The instruction sets the panel products ([`super::panels`]) are compiled for, and
//! the one place that picks among them: the widest the CPU has, detected once at run
//! time and logged once, within the ceiling [`CEILING_VAR`] may set ([`Ceiling`]).
//! Tests run every set the machine has ([`Isa::available`]).

use std::sync::OnceLock;

use tracing::{info, warn};

/// The environment variable that caps the instruction sets the process uses, so that
/// it runs as on a CPU that has only those: `avx512_bf16` (no cap), `avx512`, `avx2`
/// or `portable` ([`Ceiling`]).
pub const CEILING_VAR: &str = "LSP_CPU_ISA";

/// libtorch's own cap on its ATen kernels, which [`Ceiling::from_env`] reads too.
pub const ATEN_VAR: &str = "ATEN_CPU_CAPABILITY";

/// How far up the instruction sets a process may go: a machine of that kind, on this
/// one. The decoder's kernels take at most the matching build; below `avx512_bf16`
/// the CPU counts as having no bf16 units ([`bf16_units`]), so `mixed_bf16` takes its
/// f32 fallback (`products.rs`); and `pipeline` caps libtorch's kernels (ATen,
/// oneDNN, MKL) to match through their own variables ([`Ceiling::library_settings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ceiling {
    /// No vector extension (SSE4.1 for libtorch, which needs that much).
    Portable,
    /// AVX2 with FMA (most x86 servers before AVX-512; AMD before Zen 4).
    Avx2,
    /// AVX-512 without bf16 units (Intel Skylake to Ice Lake).
    Avx512,
    /// Everything: AVX-512 with AVX512-BF16 (Zen 4, Intel from Cooper Lake) and AMX.
    Avx512Bf16,
}

impl Ceiling {
    /// Every ceiling, lowest first, by name.
    pub const ALL: [(Self, &'static str); 4] = [
        (Self::Portable, "portable"),
        (Self::Avx2, "avx2"),
        (Self::Avx512, "avx512"),
        (Self::Avx512Bf16, "avx512_bf16"),
    ];

    /// The ceiling named `name` (as [`CEILING_VAR`] takes it).
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|(_, n)| *n == name)
            .map(|(c, _)| c)
    }

    /// The name [`CEILING_VAR`] takes.
    pub fn name(self) -> &'static str {
        Self::ALL
            .into_iter()
            .find(|(c, _)| *c == self)
            .map_or("", |(_, n)| n)
    }

    /// The ceiling of a process whose [`CEILING_VAR`] is `ours` and whose
    /// `ATEN_CPU_CAPABILITY` (libtorch's own cap) is `aten`: the lower of the two.
    /// ATen's `avx2` or `default` is a ceiling by itself: its bf16 kernels need
    /// AVX-512 (a mixed-precision backward on a CPU with bf16 units stopped with
    /// "pack_vnni2 is only supported when avx512 is supported"), so below it the
    /// process takes the path of a CPU without bf16 units. A name neither knows
    /// sets nothing (ATen warns about its own).
    pub fn from_env(ours: Option<&str>, aten: Option<&str>) -> Option<Self> {
        // The ceiling below AVX-512 whose own ATen setting is that value.
        let aten = aten.map(|v| v.trim().to_ascii_lowercase()).and_then(|v| {
            Self::ALL.into_iter().map(|(c, _)| c).find(|c| {
                *c < Self::Avx512 && c.library_settings().contains(&(ATEN_VAR, v.as_str()))
            })
        });
        match (ours.and_then(Self::parse), aten) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The ceiling of this process ([`Ceiling::from_env`]), read once and said once:
    /// none when neither variable sets one (a [`CEILING_VAR`] it does not know is
    /// said as a warning).
    pub fn of_process() -> Option<Self> {
        static CEILING: OnceLock<Option<Ceiling>> = OnceLock::new();
        *CEILING.get_or_init(|| {
            let ours = std::env::var(CEILING_VAR).ok();
            let aten = std::env::var(ATEN_VAR).ok();
            if let Some(value) = ours.as_deref().filter(|v| Self::parse(v).is_none()) {
                warn!(
                    value,
                    "{CEILING_VAR} is not one of portable, avx2, avx512, avx512_bf16: ignored"
                );
            }
            let ceiling = Self::from_env(ours.as_deref(), aten.as_deref());
            if let Some(c) = ceiling {
                info!(
                    ceiling = c.name(),
                    lsp_cpu_isa = ours.as_deref().unwrap_or("-"),
                    aten_cpu_capability = aten.as_deref().unwrap_or("-"),
                    "instruction sets capped"
                );
            }
            ceiling
        })
    }

    /// Whether `isa`'s build is within this ceiling.
    fn admits(self, isa: Isa) -> bool {
        match isa {
            Isa::Portable => true,
            Isa::Avx2 => self >= Self::Avx2,
            Isa::Avx512 => self >= Self::Avx512,
            Isa::Avx512Bf16 => self >= Self::Avx512Bf16,
        }
    }

    /// The variables that cap libtorch's own kernels to this ceiling: ATen's
    /// (`ATEN_CPU_CAPABILITY`), oneDNN's (`ONEDNN_MAX_CPU_ISA`) and MKL's
    /// (`MKL_ENABLE_INSTRUCTIONS`); none for `avx512_bf16`.
    pub fn library_settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Portable => &[
                (ATEN_VAR, "default"),
                ("ONEDNN_MAX_CPU_ISA", "SSE41"),
                ("MKL_ENABLE_INSTRUCTIONS", "SSE4_2"),
            ],
            Self::Avx2 => &[
                (ATEN_VAR, "avx2"),
                ("ONEDNN_MAX_CPU_ISA", "AVX2"),
                ("MKL_ENABLE_INSTRUCTIONS", "AVX2"),
            ],
            Self::Avx512 => &[
                (ATEN_VAR, "avx512"),
                ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI"),
                ("MKL_ENABLE_INSTRUCTIONS", "AVX512"),
            ],
            Self::Avx512Bf16 => &[],
        }
    }
}

/// A build of the panel products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    /// [`Isa::Avx512`] with AVX512-BF16's dot products: bf16 panels take them
    /// ([`super::dot`]), two positions per instruction; f32 and int8 panels run
    /// AVX-512's build.
    Avx512Bf16,
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
            Self::Avx512Bf16 => "avx512_bf16",
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
                Self::Avx512Bf16 => {
                    Self::Avx512.supported() && std::arch::is_x86_feature_detected!("avx512bf16")
                }
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

    /// The int8 dot products this build takes `w8a8` panels' products on
    /// ([`super::int8_dots`]): AVX512-VNNI's on the AVX-512 builds where the CPU has
    /// them (Intel from Cascade Lake, AMD from Zen 4; a [`Ceiling`] of `avx512` keeps
    /// them, as it keeps oneDNN's `AVX512_CORE_VNNI`), else AVX2's on any build but
    /// the portable one (every AVX-512 CPU has AVX2).
    pub fn int8_dots(self) -> Option<Int8Dots> {
        #[cfg(target_arch = "x86_64")]
        {
            let vnni = std::arch::is_x86_feature_detected!("avx512vnni");
            match self {
                _ if !self.supported() => None,
                Self::Avx512 | Self::Avx512Bf16 if vnni => Some(Int8Dots::Vnni),
                Self::Avx512 | Self::Avx512Bf16 | Self::Avx2 => Some(Int8Dots::Avx2),
                Self::Portable => None,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// Every build this CPU runs, widest first.
    pub fn available() -> Vec<Self> {
        [Self::Avx512Bf16, Self::Avx512, Self::Avx2, Self::Portable]
            .into_iter()
            .filter(|isa| isa.supported())
            .collect()
    }

    /// The widest build this CPU runs within the process's [`Ceiling`]; detected
    /// and logged once per process.
    pub fn detected() -> Self {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let ceiling = Ceiling::of_process().unwrap_or(Ceiling::Avx512Bf16);
            let isa = Self::available()
                .into_iter()
                .find(|&isa| ceiling.admits(isa))
                .unwrap_or(Self::Portable);
            info!(
                isa = isa.name(),
                bf16_units = isa == Self::Avx512Bf16,
                int8_dots = isa.int8_dots().map_or("none", Int8Dots::name),
                "CPU decoder kernels: f32, bf16 and int8 panels (bf16 by AVX512-BF16's dot \
                 products on the avx512_bf16 build, w8a8 by int8 dot products (AVX512-VNNI's \
                 or AVX2's), else widened to f32 in registers)"
            );
            isa
        })
    }
}

/// The int8 dot products a build of the CPU decoder takes `w8a8` panels' products
/// on ([`int8_dots`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Dots {
    /// AVX512-VNNI's `vpdpbusd`: four positions of 16 lanes into int32, one
    /// instruction.
    Vnni,
    /// AVX2's `vpmaddubsw` then `vpmaddwd`: four positions of 8 lanes into int32, two
    /// multiplies (and a sign flip of the input), as llama.cpp's q8_0 on AVX2.
    Avx2,
}

impl Int8Dots {
    /// The name in logs and run manifests.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vnni => "avx512_vnni",
            Self::Avx2 => "avx2",
        }
    }
}

/// Whether the CPU computes bf16 products natively (AVX512-BF16's dot products; the
/// CPUs with AMX-BF16 tiles have it too), which libtorch's oneDNN kernels use: without
/// them bf16 products are emulated and slower than f32. False under a [`Ceiling`]
/// below `avx512_bf16`: the CPU decoder then runs its `avx512_bf16` build.
pub fn bf16_units() -> bool {
    Isa::detected() == Isa::Avx512Bf16
}

/// The int8 dot products the CPU decoder's `w8a8` products run on, its detected
/// build's: AVX512-VNNI's where the CPU has them (and a [`Ceiling`] of `avx512` or
/// more), else AVX2's; none without AVX2, where they take the widening kernel.
pub fn int8_dots() -> Option<Int8Dots> {
    Isa::detected().int8_dots()
}

/// Whether bf16 products outrun f32 ones on this CPU, so that `mixed_bf16` computes
/// libtorch's in bf16 ([`crate::Products`]): on AMX-BF16 tiles, or on AVX512-BF16's dot
/// products of an AMD core (Zen 4 and 5), which runs 512-bit f32 FMAs in halves. On
/// an Intel core with AVX512-BF16 but no AMX (Cooper Lake; a Sapphire Rapids VM that
/// hides its tiles) libtorch's bf16 products lost to its f32 ones (a Xeon, 2 vCPU:
/// log-probs 8×256 520 against 801 tok/s, a training step 164 against 272): by the
/// instruction tables `vdpbf16ps` does no more work a cycle there than the two f32
/// FMA ports, and the casts and reorders come on top. False under a [`Ceiling`]
/// below `avx512_bf16`.
pub fn bf16_products_pay() -> bool {
    bf16_units() && (amx_tiles() || !intel())
}

/// Whether the CPU is Intel's (CPUID leaf 0's vendor).
fn intel() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let leaf = std::arch::x86_64::__cpuid(0);
        [leaf.ebx, leaf.edx, leaf.ecx] == [*b"Genu", *b"ineI", *b"ntel"].map(u32::from_le_bytes)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the CPU has AMX-BF16 tiles (Intel from Sapphire Rapids) that this process
/// can use, as oneDNN's bf16 products would: past a few rows they outrun the CPU
/// decoder's dot products. False under a [`Ceiling`] below `avx512_bf16`.
pub fn amx_tiles() -> bool {
    bf16_units() && tiles_usable(amx_cpuid(), enabled_state())
}

/// CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
fn amx_cpuid() -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::x86_64::__cpuid_count(7, 0).edx
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        0
    }
}

/// The register state the operating system saves for processes (XCR0), or 0 where
/// it does not say (XSAVE not enabled by the OS, or not x86-64).
#[allow(unsafe_code)]
fn enabled_state() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // CPUID leaf 1, ECX bit 27: OSXSAVE, the OS enabled XSAVE and XGETBV.
        let osxsave = std::arch::x86_64::__cpuid(1).ecx >> 27 & 1 == 1;
        if osxsave {
            // SAFETY: XGETBV runs wherever OSXSAVE is set, checked above.
            return unsafe { xcr0() };
        }
    }
    0
}

/// XCR0, read by XGETBV.
///
/// # Safety
/// CPUID's OSXSAVE bit is set.
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    // SAFETY: as the function's contract.
    unsafe { std::arch::x86_64::_xgetbv(0) }
}

/// Whether tiles are there to use: the CPU has AMX-TILE and AMX-BF16 (`cpuid_edx`,
/// [`amx_cpuid`]), and the operating system saves the tiles' state (XCR0 bits 17,
/// TILECFG, and 18, TILEDATA), as oneDNN checks before it runs AMX kernels. A CPU
/// that has tiles under a kernel that does not enable them (Linux before 5.16, or a
/// hypervisor that masks them) computes oneDNN's bf16 products on AVX512-BF16, no
/// faster than f32 on Intel's cores ([`bf16_products_pay`]).
fn tiles_usable(cpuid_edx: u32, xcr0: u64) -> bool {
    const TILES: u32 = 1 << 22 | 1 << 24;
    const STATE: u64 = 1 << 17 | 1 << 18;
    cpuid_edx & TILES == TILES && xcr0 & STATE == STATE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_count_only_where_the_cpu_has_them_and_the_os_saves_their_state() {
        let (bf16, tile) = (1u32 << 22, 1u32 << 24);
        let (cfg, data) = (1u64 << 17, 1u64 << 18);
        // A Sapphire Rapids under Linux 5.16 or later (x87, SSE, AVX, AVX-512 and tiles).
        assert!(tiles_usable(bf16 | tile | 1 << 25, 0xe7 | cfg | data));
        // The same CPU where the OS does not save the tiles' state.
        assert!(!tiles_usable(bf16 | tile, 0xe7));
        assert!(!tiles_usable(bf16 | tile, 0xe7 | cfg));
        assert!(!tiles_usable(bf16 | tile, 0xe7 | data));
        // State saved, but no AMX-BF16 or no tiles on the CPU.
        assert!(!tiles_usable(tile, 0xe7 | cfg | data));
        assert!(!tiles_usable(bf16, 0xe7 | cfg | data));
        assert!(!tiles_usable(0, 0));
    }

    #[test]
    fn a_ceiling_admits_the_builds_up_to_it_and_caps_libtorch_to_match() {
        for (ceiling, name) in Ceiling::ALL {
            assert_eq!(Ceiling::parse(name), Some(ceiling));
            assert_eq!(ceiling.name(), name);
            assert_eq!(
                Ceiling::parse(&format!(" {} ", name.to_uppercase())),
                Some(ceiling)
            );
        }
        assert_eq!(Ceiling::parse("avx"), None);
        assert_eq!(Ceiling::parse(""), None);
        // ATen's own cap below AVX-512 caps the process; ours and it meet at the lower.
        let from = Ceiling::from_env;
        assert_eq!(from(None, None), None);
        assert_eq!(from(None, Some("avx512")), None);
        assert_eq!(from(None, Some("AVX2")), Some(Ceiling::Avx2));
        assert_eq!(from(None, Some("default")), Some(Ceiling::Portable));
        assert_eq!(from(Some("avx512"), Some("avx2")), Some(Ceiling::Avx2));
        assert_eq!(
            from(Some("portable"), Some("avx2")),
            Some(Ceiling::Portable)
        );
        assert_eq!(from(Some("avx512"), Some("zvector")), Some(Ceiling::Avx512));
        assert_eq!(from(Some("bogus"), Some("avx2")), Some(Ceiling::Avx2));
        assert_eq!(from(Some("bogus"), None), None);
        let admitted = |c: Ceiling| -> Vec<Isa> {
            [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Portable]
                .into_iter()
                .filter(|&isa| c.admits(isa))
                .collect()
        };
        assert_eq!(admitted(Ceiling::Portable), [Isa::Portable]);
        assert_eq!(admitted(Ceiling::Avx2), [Isa::Avx2, Isa::Portable]);
        assert_eq!(
            admitted(Ceiling::Avx512),
            [Isa::Avx512, Isa::Avx2, Isa::Portable]
        );
        assert_eq!(
            admitted(Ceiling::Avx512Bf16),
            [Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2, Isa::Portable]
        );
        // Every capped ceiling names all three libraries; the top one none.
        assert!(Ceiling::Avx512Bf16.library_settings().is_empty());
        for (ceiling, _) in &Ceiling::ALL[..3] {
            let names: Vec<&str> = ceiling.library_settings().iter().map(|(n, _)| *n).collect();
            assert_eq!(
                names,
                [
                    "ATEN_CPU_CAPABILITY",
                    "ONEDNN_MAX_CPU_ISA",
                    "MKL_ENABLE_INSTRUCTIONS"
                ]
            );
        }
    }
}
