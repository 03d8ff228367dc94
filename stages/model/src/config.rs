//! The user-facing settings of a model and of sampling from it, as written in
//! `epoch.yaml`.

use std::path::PathBuf;

use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};

use crate::lora::LoraConfig;

/// Floating-point type of the weights.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 32-bit floats (default; what the parity tests check).
    #[default]
    F32,
    /// bfloat16.
    Bf16,
}

/// How a trainable policy computes (`model.precision`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Everything in the weights' own type (default; exact against the fixtures).
    #[default]
    F32,
    /// f32 weights (the policy's masters, and its AdamW state); the products of the
    /// forward and backward passes, the rollouts and every pass of the frozen models
    /// (reference, judge, reward model) in bf16, from bf16 copies made once per
    /// optimizer step or pass; norms, softmax, attention, log-probs, losses and
    /// reductions in f32.
    MixedBf16,
}

impl Precision {
    /// The name written in YAML and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::MixedBf16 => "mixed_bf16",
        }
    }
}

/// How the rollouts' decoder stores the weights (`model.rollout_weights`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutWeights {
    /// In the kind of the products (default): f32, or bf16 under `mixed_bf16`.
    #[default]
    Products,
    /// bf16 whatever the products' kind, on the CPU decoder at every batch size
    /// (beside bf16 products, up to where the products' own decoder leads: the
    /// same bf16 weights in oneDNN's AMX kernels beyond 8 sequences on a CPU with
    /// tiles): half f32's bytes per decoding step, its input rounded to bf16 as under
    /// `mixed_bf16` (AVX512-BF16's dot products where the CPU has them, else widened
    /// in registers). The passes with and without gradient keep the products' kind:
    /// under `f32`, exact training beside bf16 sampling (as trainers that sample with a
    /// bf16 inference engine); under `mixed_bf16` on a CPU whose bf16 products do not
    /// pay (its f32 fallback), bf16 rollouts still. The sampler then differs from the
    /// trainer as under mixed precision: see `rollout_mismatch`.
    Bf16,
    /// int8 with one scale per output row (symmetric, weight-only: activations and
    /// accumulation stay f32), packed for the CPU decoder at every batch size: half
    /// bf16's bytes per decoding step. The trainer still sees the f32 (or bf16)
    /// products, so the sampler differs from it more than under bf16: see
    /// `rollout_mismatch` and `update.rollout_correction: tis`.
    Int8,
    /// int8 weights as `int8`, and each product's input quantized to int8 too, by
    /// blocks of 32 positions with a scale each (llama.cpp's q8_0 activations): the
    /// products run on the CPU's integer dot products (AVX512-VNNI's, four positions
    /// per instruction, or AVX2's), where `int8`'s widening kernel converts each
    /// weight to f32; without AVX2 the widening kernel takes the rounded input (the
    /// same arithmetic, up to the order of the sums). A little further from the trainer
    /// than `int8`.
    W8a8,
}

impl RolloutWeights {
    /// Whether the weights are stored for the CPU decoder in a kind of their own
    /// (`bf16`, `int8`, `w8a8`), which it then runs at every batch size; it needs f32
    /// weights on the CPU.
    pub fn own_kind(self) -> bool {
        !matches!(self, Self::Products)
    }

    /// The name written in YAML and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Products => "products",
            Self::Bf16 => "bf16",
            Self::Int8 => "int8",
            Self::W8a8 => "w8a8",
        }
    }
}

/// How a training step's passes use the threads of a worker (`update.parallelism`).
///
/// Measured on 2 cores (`docs/measured.md`, "Mixed precision and LoRA, measured"),
/// under mixed precision on an AMX Xeon: `sequences` ahead at micro-batches of 8 × 256
/// tokens (+7.5% over six ABBA pairs, and +1 to +12% in an earlier session) and of 4 × 256,
/// behind at 2 × 512 (−12%) and at GRPO's micro-batches of 4 short answers (−13 to
/// −20%), where each thread's share of the weights' gradient (the same size whatever
/// its tokens) dominates; even in f32. `auto` takes `sequences` where each thread gets
/// [`Parallelism::AUTO_TOKENS_PER_THREAD`] tokens or more under bf16 products on the
/// CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parallelism {
    /// `sequences` for a micro-batch of at least
    /// [`Parallelism::AUTO_TOKENS_PER_THREAD`] tokens a thread with bf16 products on
    /// the CPU (mixed precision), else `operators`.
    #[default]
    Auto,
    /// Each micro-batch in one pass, every operator over libtorch's pool of threads.
    Operators,
    /// On the CPU, each micro-batch's sequences split over the threads, one libtorch
    /// thread each (`LanguageModel::train_in_parallel`); on CUDA as `operators`.
    Sequences,
}

impl Parallelism {
    /// The tokens a thread from which `auto` splits a micro-batch's sequences (8 × 256
    /// over 2 threads: yes; 4 × 256, 2 × 512, 4 × 80: no).
    pub const AUTO_TOKENS_PER_THREAD: usize = 1024;

    /// The name written in YAML and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Sequences => "sequences",
            Self::Operators => "operators",
        }
    }

    /// Whether a micro-batch of `tokens` tokens on the CPU is split over its `threads`
    /// threads, its products bf16 (`bf16_products`) or not: the one rule.
    pub fn splits(self, tokens: usize, threads: usize, bf16_products: bool) -> bool {
        match self {
            Self::Sequences => true,
            Self::Operators => false,
            Self::Auto => bf16_products && tokens >= Self::AUTO_TOKENS_PER_THREAD * threads,
        }
    }
}

/// Where the model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// The first CUDA device; an error at load time when libtorch has no CUDA.
    Cuda,
}

/// Which checkpoints play which part. The policy is trained; the frozen reference
/// (for KL and as the self-reward judge) is a copy of the policy's initial weights
/// unless another folder is named.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Hugging Face model folder of the policy.
    pub policy: PathBuf,
    /// Folder of the frozen reference; `null` means the policy's initial weights.
    pub reference: Option<PathBuf>,
    /// Keep the reference out of memory between its uses: it is loaded from its
    /// folder when an iteration first needs it (the judge, the KL's log-probs) and
    /// dropped once the update has its log-probs, so it never shares memory with the
    /// policy's backward pass (a model's size less at the peak, for one load per
    /// iteration from the page cache).
    pub offload_reference: bool,
    /// Weight type.
    pub dtype: Dtype,
    /// Compute precision ([`Precision`]); `mixed_bf16` needs `dtype: f32` (the master
    /// weights).
    pub precision: Precision,
    /// Under `mixed_bf16` on a CPU without bf16 units (`lscpu` lists neither
    /// `avx512_bf16` nor `amx_bf16`), compute the products in bf16 anyway: libtorch
    /// emulates them there, several times slower than f32 (to reproduce a bf16 run's
    /// numerics on such a machine). Off (default), they run in f32 there, and the log
    /// and the run's manifest say so ([`crate::Products`]).
    pub emulate_bf16: bool,
    /// How the rollouts' decoder stores the policy's weights ([`RolloutWeights`]);
    /// `int8` and `w8a8` need `device: cpu` and `dtype: f32`.
    pub rollout_weights: RolloutWeights,
    /// Device.
    pub device: DeviceKind,
    /// Let a prompt plus its new tokens run past a model's context (RoPE runs on;
    /// quality there is the model's own business). Off, such a generation stops the
    /// run with an error.
    pub allow_past_context: bool,
    /// Train a LoRA adapter instead of every weight ([`LoraConfig`]): the base is
    /// frozen, the reference and the judge are the base with the adapter off.
    pub lora: Option<LoraConfig>,
    /// Continue from the PEFT adapter in this folder (its `adapter_config.json` sets
    /// the adapter's shape; `lora`, if given too, must agree).
    pub adapter: Option<PathBuf>,
    /// With an adapter: also write `final/merged/`, a Hugging Face folder with the
    /// adapter merged into the base weights.
    pub save_merged: bool,
}

impl ModelConfig {
    /// Where the models' products run on this machine.
    pub fn products(&self) -> crate::Products {
        crate::Products::on_this_machine(self.precision, self.device, self.emulate_bf16)
    }
}

/// Where `pipeline model fetch smollm2-135m-instruct` puts the embedded default.
pub const DEFAULT_MODEL_DIR: &str = "data-out/models/smollm2-135m-instruct";

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            policy: PathBuf::from(DEFAULT_MODEL_DIR),
            reference: None,
            offload_reference: false,
            dtype: Dtype::F32,
            precision: Precision::F32,
            emulate_bf16: false,
            rollout_weights: RolloutWeights::Products,
            device: DeviceKind::Cpu,
            allow_past_context: false,
            lora: None,
            adapter: None,
            save_merged: false,
        }
    }
}

impl Validate for ModelConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let hint = if self.policy.ends_with(DEFAULT_MODEL_DIR) {
            " (run `pipeline model fetch smollm2-135m-instruct` to get the default model)"
        } else {
            ""
        };
        if self.precision == Precision::MixedBf16 && self.dtype != Dtype::F32 {
            problems.push(
                join_path(path, "precision"),
                "mixed_bf16 keeps f32 master weights: set dtype: f32 (dtype: bf16 is pure \
                 bf16, no master copy)",
            );
        }
        if self.emulate_bf16 && self.precision != Precision::MixedBf16 {
            problems.push(
                join_path(path, "emulate_bf16"),
                "emulate_bf16 applies to precision: mixed_bf16 (f32 has no bf16 products)",
            );
        }
        if self.rollout_weights.own_kind()
            && (self.device != DeviceKind::Cpu || self.dtype != Dtype::F32)
        {
            problems.push(
                join_path(path, "rollout_weights"),
                format!(
                    "{} rollout weights run on the CPU decoder: set device: cpu and dtype: f32 \
                     (with precision f32 or mixed_bf16) for bf16, int8 or w8a8",
                    self.rollout_weights.name()
                ),
            );
        }
        // A model folder's spec, or its problems.
        let mut folder = |key: &str, dir: &std::path::Path, hint: &str| {
            let at = join_path(path, key);
            let before = problems.len();
            problems.folder_with(&at, dir, "config.json", hint);
            if problems.len() != before {
                return None;
            }
            crate::LanguageModel::inspect(dir)
                .map_err(|e| problems.push(at, e.to_string()))
                .ok()
        };
        let policy = folder("policy", &self.policy, hint);
        if let Some(reference) = &self.reference {
            folder("reference", reference, "");
        }
        if let Some(lora) = &self.lora {
            lora.validate(&join_path(path, "lora"), problems);
        }
        if let Some(adapter) = &self.adapter {
            let at = join_path(path, "adapter");
            let before = problems.len();
            problems.folder_with(&at, adapter, crate::lora::ADAPTER_CONFIG, "");
            if problems.len() == before
                && let Some(spec) = &policy
                && let Err(e) = crate::lora::check_adapter(adapter, spec, self.lora.as_ref())
            {
                problems.push(at, e.to_string());
            }
        }
        if self.save_merged && self.lora.is_none() && self.adapter.is_none() {
            problems.push(
                join_path(path, "save_merged"),
                "there is no adapter to merge: set model.lora or model.adapter",
            );
        }
    }
}

/// How tokens are drawn. `temperature: 0` is greedy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingConfig {
    /// Most tokens to generate.
    pub max_new_tokens: u64,
    /// Softmax temperature; 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling mass (1 keeps the full vocabulary).
    pub top_p: f64,
    /// Keep only the k most likely tokens (0 keeps all).
    pub top_k: u64,
    /// Extra strings that end a sequence (the model's EOS ids always do).
    pub stop: Vec<String>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            stop: Vec::new(),
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding of at most `max_new_tokens`.
    pub fn greedy(max_new_tokens: u64) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            ..Self::default()
        }
    }
}

impl Validate for SamplingConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        problems.positive(&join_path(path, "max_new_tokens"), self.max_new_tokens);
        problems.in_range(
            &join_path(path, "temperature"),
            self.temperature,
            0.0,
            100.0,
        );
        problems.check(
            self.top_p > 0.0 && self.top_p <= 1.0,
            &join_path(path, "top_p"),
            || format!("{} is out of range: expected 0 < top_p <= 1", self.top_p),
        );
        for (i, s) in self.stop.iter().enumerate() {
            problems.check(
                !s.is_empty(),
                &format!("{}[{i}]", join_path(path, "stop")),
                || "an empty stop string would end every sequence at once".to_string(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_problems_are_all_reported() {
        let bad = SamplingConfig {
            max_new_tokens: 0,
            temperature: -0.5,
            top_p: 0.0,
            top_k: 5,
            stop: vec![String::new()],
        };
        let mut problems = Problems::new();
        bad.validate("solver.sampling", &mut problems);
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "solver.sampling.max_new_tokens",
                "solver.sampling.temperature",
                "solver.sampling.top_p",
                "solver.sampling.stop[0]"
            ]
        );
        let mut none = Problems::new();
        SamplingConfig::greedy(16).validate("x", &mut none);
        assert!(none.is_empty(), "{none}");
    }

    #[test]
    fn missing_default_model_suggests_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let config = ModelConfig {
            policy: dir.path().join(DEFAULT_MODEL_DIR),
            reference: Some(dir.path().to_path_buf()),
            ..ModelConfig::default()
        };
        let mut problems = Problems::new();
        config.validate("model", &mut problems);
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.path.as_str(), p.message.as_str()))
            .collect();
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].0, "model.policy");
        assert!(
            found[0]
                .1
                .contains("does not exist (run `pipeline model fetch"),
            "{}",
            found[0].1
        );
        assert_eq!(found[1].0, "model.reference");
        assert!(found[1].1.ends_with("has no config.json"), "{}", found[1].1);
    }
}
