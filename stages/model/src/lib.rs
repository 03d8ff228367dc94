//! The one model implementation every LSP stage shares: the policy (challenger and
//! solver), the frozen reference, the self-reward judge and the reward model.
//!
//! - [`LanguageModel::load`] reads a Hugging Face folder (`config.json` in the classic
//!   or the transformers-5 layout, safetensors weights, single or sharded,
//!   `tokenizer.json`, `tokenizer_config.json`, `generation_config.json`) for
//!   `LlamaForCausalLM`, `Qwen2ForCausalLM` and their `ForSequenceClassification`
//!   reward-model forms; [`LanguageModel::save`] writes one transformers loads.
//! - [`TextTokenizer`] renders the model's own Jinja chat template.
//! - [`Transformer`] holds the weights and the one forward pass; [`InferenceWeights`]
//!   are its products prepared for passes without gradient.
//! - [`LanguageModel::generate`] samples batches (greedy, temperature, top-k, top-p;
//!   seeded) on a [`decoder`]: libtorch's, or the CPU decoder's Rust kernels, chosen
//!   by [`DecoderKind::choose`]. [`LanguageModel::completion_logprobs`] gives
//!   teacher-forced log-probs with or without gradient,
//!   [`LanguageModel::training_logprobs`] the same for a training step (the output
//!   head's backward written out, to save memory), and
//!   [`LanguageModel::score_sequences`] a reward model's scores.
//! - `precision: mixed_bf16` keeps f32 weights and computes products in bf16
//!   ([`TrainingWeights`]: casts made once per optimizer step) where the device has
//!   bf16 units, in f32 where it would emulate them ([`Products`]); [`lora`] attaches PEFT
//!   LoRA adapters ([`LanguageModel::load_adapter`], [`LanguageModel::base_view`]).
//!
//! (Not run as a doctest: rustdoc's binaries live outside `target/`, where the rpath to
//! libtorch does not reach. `tests/parity.rs` runs the same calls.)
//!
//! ```ignore
//! use lsp_model::{GenerationRequest, LanguageModel, LoadOptions, SamplingConfig};
//! let model = LanguageModel::load("tests/fixtures/tiny-llama".as_ref(), LoadOptions::default())?;
//! let prompt = model.tokenizer().chat_prompt("Write a haiku about the sea.")?;
//! let out = model.generate(&GenerationRequest {
//!     prompts: &[prompt],
//!     sampling: &SamplingConfig::greedy(16),
//!     repeats: 1,
//!     seed: 0,
//!     sequence_ids: None,
//!     ignore_eos: false,
//! })?;
//! println!("{}", out[0].text);
//! # Ok::<(), lsp_model::ModelError>(())
//! ```

mod centered_attention;
mod chat_template;
mod checkpoint;
mod choices;
mod config;
pub mod decoder;
mod digest;
mod error;
mod fused;
mod generate;
pub mod gguf;
mod grads;
mod hf_config;
mod inference;
mod kept;
mod kv_cache;
mod layers;
mod logprobs;
pub mod lora;
mod mask;
mod model;
pub mod operator_profile;
mod packed_rows;
mod prefill;
mod products;
mod rope;
mod safetensors_file;
mod sampling;
mod slots;
mod softmax_rows;
mod spec;
mod tokenizer;
mod training;
mod training_threads;
mod training_weights;
mod transformer;
mod unloaded;
mod weight_grads;
mod whole_attention;

pub use chat_template::{ChatTemplate, Message};
pub use checkpoint::ModelSnapshot;
pub use config::{
    DEFAULT_MODEL_DIR, DeviceKind, Dtype, ModelConfig, Parallelism, Precision, RolloutWeights,
    SamplingConfig,
};
pub use decoder::{Decoder, DecoderKind};
pub use digest::{DIGEST_PREFIX, DigestWriter, Digests, digest_file};
pub use error::{ModelError, Result};
pub use generate::{FinishReason, Generation, GenerationRequest};
pub use grads::forget_grad;
pub use hf_config::{HfConfig, TokenIds};
pub use inference::InferenceWeights;
pub use kept::mark_written;
pub use kv_cache::KvCache;
pub use logprobs::TokenLogprobs;
pub use lora::{Adapter, LoraConfig};
pub use model::{LanguageModel, LoadOptions, torch_device};
pub use products::Products;
pub use safetensors_file::{SafetensorsFile, write_safetensors};
pub use sampling::{Rng, mix};
pub use slots::fill_slots;
pub use spec::{Architecture, Head, ModelSpec, RopeScaling};
pub use tokenizer::TextTokenizer;
pub use training::TrainingLogprobs;
pub use training_weights::TrainingWeights;
pub use transformer::{Projections, Transformer};
pub use unloaded::Unloaded;
pub use whole_attention::WholeAttention;
