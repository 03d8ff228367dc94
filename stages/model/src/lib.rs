//! The one model implementation every LSP stage shares: the policy (challenger and
//! solver), the frozen reference, the self-reward judge and the reward model.
//!
//! Today this crate holds the model and sampling settings of `epoch.yaml`
//! ([`ModelConfig`], [`SamplingConfig`]). The engine itself — Hugging Face checkpoint
//! loading, tokenizer and chat template, the tch transformer, KV-cache sampling and
//! teacher-forced log-probs — is the model-engine issue's work and lands here.

mod config;

pub use config::{DEFAULT_MODEL_DIR, DeviceKind, Dtype, ModelConfig, SamplingConfig};
