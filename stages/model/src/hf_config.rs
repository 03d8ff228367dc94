//! The serde mirror of a Hugging Face `config.json`, in both layouts: the classic one
//! (`rope_theta` + `rope_scaling`, used by published Llama-3.x and Qwen2 checkpoints)
//! and transformers 5's (`rope_parameters`). Turned into the runtime [`ModelSpec`]
//! by [`HfConfig::to_spec`].

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::spec::{Architecture, Head, ModelSpec, RopeScaling};

/// The fields of `config.json` this engine reads. Unknown fields are ignored: real
/// checkpoints carry many that do not change the forward pass.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct HfConfig {
    /// `["LlamaForCausalLM"]` and the like.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `llama`, `qwen2`.
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: i64,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    /// Classic layout.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Classic layout.
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// transformers-5 layout.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    /// Sequence classification: number of labels (from `id2label` when absent).
    #[serde(default)]
    pub num_labels: Option<i64>,
    #[serde(default)]
    pub id2label: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
}

fn default_max_positions() -> i64 {
    2048
}

fn default_rms_eps() -> f64 {
    1e-6
}

/// `rope_scaling` (classic) or `rope_parameters` (transformers 5).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RopeParameters {
    /// `default`, `llama3`, ... (`type` in some older files).
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    /// transformers 5 keeps θ here.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<i64>,
}

/// A token id or a list of them (`eos_token_id` is either).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TokenIds {
    /// One id.
    One(i64),
    /// Several ids.
    Many(Vec<i64>),
}

impl TokenIds {
    /// The ids as a list.
    pub fn to_vec(&self) -> Vec<i64> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

impl HfConfig {
    /// Reads `config.json`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(ModelError::io(path))?;
        serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The runtime description of the model; `path` names the file in errors.
    pub fn to_spec(&self, path: &Path) -> Result<ModelSpec> {
        let bad = |message: String| ModelError::Config {
            path: path.to_path_buf(),
            message,
        };
        let arch_name = self.architectures.first().cloned().unwrap_or_default();
        let (architecture, head) = match arch_name.as_str() {
            "LlamaForCausalLM" => (Architecture::Llama, Head::CausalLm),
            "Qwen2ForCausalLM" => (Architecture::Qwen2, Head::CausalLm),
            "LlamaForSequenceClassification" => (Architecture::Llama, Head::Score),
            "Qwen2ForSequenceClassification" => (Architecture::Qwen2, Head::Score),
            other => {
                return Err(bad(format!(
                    "unsupported architecture {other:?}: this engine runs LlamaForCausalLM, \
                     Qwen2ForCausalLM, LlamaForSequenceClassification and \
                     Qwen2ForSequenceClassification"
                )));
            }
        };
        if let Some(act) = &self.hidden_act
            && act != "silu"
        {
            return Err(bad(format!(
                "unsupported hidden_act {act:?}: only silu (SwiGLU)"
            )));
        }
        if self.use_sliding_window == Some(true) {
            return Err(bad("sliding-window attention is not supported".to_string()));
        }
        if self.mlp_bias == Some(true) {
            return Err(bad("mlp_bias is not supported".to_string()));
        }
        let heads = self.num_attention_heads;
        let kv_heads = self.num_key_value_heads.unwrap_or(heads);
        if heads <= 0 || kv_heads <= 0 || heads % kv_heads != 0 {
            return Err(bad(format!(
                "num_attention_heads {heads} must be a positive multiple of num_key_value_heads {kv_heads}"
            )));
        }
        let head_dim = self.head_dim.unwrap_or(self.hidden_size / heads);
        if head_dim <= 0 || head_dim % 2 != 0 {
            return Err(bad(format!(
                "head_dim {head_dim} must be positive and even"
            )));
        }
        let num_labels = match head {
            Head::Score => self
                .num_labels
                .or_else(|| self.id2label.as_ref().map(|m| m.len() as i64))
                .unwrap_or(1),
            Head::CausalLm => 0,
        };
        if head == Head::Score && num_labels != 1 {
            return Err(bad(format!(
                "a reward model has one label; this one has {num_labels}"
            )));
        }
        // transformers 5 puts θ and the scaling together in `rope_parameters`; the
        // classic layout has `rope_theta` beside an optional `rope_scaling`.
        let rope = self.rope_parameters.as_ref().or(self.rope_scaling.as_ref());
        let rope_theta = rope
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(10_000.0);
        let rope_scaling = match rope.and_then(|r| r.rope_type.as_deref()) {
            None | Some("default") => RopeScaling::None,
            Some("llama3") => {
                let r = rope.expect("rope_type came from it");
                let need = |v: Option<f64>, name: &str| {
                    v.ok_or_else(|| bad(format!("llama3 rope scaling needs `{name}`")))
                };
                RopeScaling::Llama3 {
                    factor: need(r.factor, "factor")?,
                    low_freq_factor: need(r.low_freq_factor, "low_freq_factor")?,
                    high_freq_factor: need(r.high_freq_factor, "high_freq_factor")?,
                    original_max_position_embeddings: need(
                        r.original_max_position_embeddings.map(|v| v as f64),
                        "original_max_position_embeddings",
                    )?,
                }
            }
            Some(other) => {
                return Err(bad(format!(
                    "unsupported rope_type {other:?}: only default and llama3"
                )));
            }
        };
        let attention_bias = match architecture {
            Architecture::Qwen2 => true,
            Architecture::Llama => self.attention_bias.unwrap_or(false),
        };
        Ok(ModelSpec {
            architecture,
            head,
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_hidden_layers,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: self.max_position_embeddings,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            attention_bias,
            bos_token_id: self
                .bos_token_id
                .as_ref()
                .and_then(|t| t.to_vec().first().copied()),
            eos_token_ids: self
                .eos_token_id
                .as_ref()
                .map(TokenIds::to_vec)
                .unwrap_or_default(),
            pad_token_id: self.pad_token_id,
        })
    }
}
