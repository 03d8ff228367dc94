//! One module per subcommand, and the model options they share.

mod fetch;
pub use fetch::sha256_file;
pub mod generate;
pub mod model;
pub mod score;
pub mod validate;

use clap::{Args, ValueEnum};
use lsp_model::{DeviceKind, Dtype, LanguageModel, LoadOptions, Precision, RolloutWeights};

/// Weight type, as a command-line value.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DtypeArg {
    /// 32-bit floats.
    F32,
    /// bfloat16.
    Bf16,
}

/// Device, as a command-line value.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum DeviceArg {
    /// The CPU.
    Cpu,
    /// The first CUDA device.
    Cuda,
}

/// `--precision`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    /// Everything in the weights' type.
    F32,
    /// f32 weights, bf16 products.
    #[value(name = "mixed_bf16", alias = "mixed-bf16")]
    MixedBf16,
}

/// `--rollout-weights`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RolloutWeightsArg {
    /// In the products' kind: f32, or bf16 under mixed precision.
    Products,
    /// bf16 whatever the products' kind (the passes keep theirs).
    Bf16,
    /// int8, one scale per output row.
    Int8,
    /// int8 weights and int8 inputs by blocks of 32 (int8 dot products: AVX512-VNNI's
    /// or AVX2's).
    W8a8,
}

/// How a model runs: weight type, device, threads.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Weight type.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: DtypeArg,
    /// Compute precision: `mixed-bf16` keeps f32 weights and computes the products
    /// (rollouts, log-probs, training) in bf16.
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// With `mixed_bf16` on a CPU without bf16 units: bf16 products anyway, emulated
    /// (several times slower than f32); without it they run in f32 there.
    #[arg(long)]
    emulate_bf16: bool,
    /// How the rollouts' decoder stores the weights: `bf16` (the CPU decoder at any
    /// batch, whatever the products' kind) halves f32's bytes per decoding step, `int8`
    /// (one scale per output row) bf16's; `w8a8` quantizes the products' inputs too,
    /// for the CPU's int8 dot products.
    #[arg(long, value_enum, default_value = "products")]
    rollout_weights: RolloutWeightsArg,
    /// Device.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// libtorch threads (default: the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Let a prompt plus its new tokens run past the model's context.
    #[arg(long)]
    allow_past_context: bool,
    /// A PEFT LoRA adapter folder to apply to the model (`eval`: to the model under
    /// test, not the baseline or the judge).
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
}

impl ModelArgs {
    /// Sets libtorch's thread count.
    pub fn apply(&self) {
        let threads = self
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        tch::set_num_threads(threads as i32);
        tch::set_num_interop_threads(1);
    }

    /// The model in `folder`, frozen, with `--adapter` applied when `adapted`.
    pub fn load(&self, folder: &std::path::Path, adapted: bool) -> anyhow::Result<LanguageModel> {
        use anyhow::Context;
        let options = LoadOptions {
            trainable: false,
            ..self.load_options()
        };
        let mut model = LanguageModel::load(folder, options)
            .with_context(|| format!("loading {}", folder.display()))?;
        if let Some(adapter) = self.adapter.as_ref().filter(|_| adapted) {
            model
                .load_adapter(adapter)
                .with_context(|| format!("applying the adapter in {}", adapter.display()))?;
        }
        Ok(model)
    }

    /// Load options for these settings.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            dtype: match self.dtype {
                DtypeArg::F32 => Dtype::F32,
                DtypeArg::Bf16 => Dtype::Bf16,
            },
            precision: match self.precision {
                PrecisionArg::F32 => Precision::F32,
                PrecisionArg::MixedBf16 => Precision::MixedBf16,
            },
            emulate_bf16: self.emulate_bf16,
            rollout_weights: match self.rollout_weights {
                RolloutWeightsArg::Products => RolloutWeights::Products,
                RolloutWeightsArg::Bf16 => RolloutWeights::Bf16,
                RolloutWeightsArg::Int8 => RolloutWeights::Int8,
                RolloutWeightsArg::W8a8 => RolloutWeights::W8a8,
            },
            device: match self.device {
                DeviceArg::Cpu => DeviceKind::Cpu,
                DeviceArg::Cuda => DeviceKind::Cuda,
            },
            trainable: false,
            allow_past_context: self.allow_past_context,
        }
    }
}
