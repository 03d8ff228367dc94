//! The runtime description of a model, derived from `config.json` and checked there.

/// Transformer family: both are pre-norm decoders with RMSNorm, SwiGLU, GQA and RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// Llama 2/3.x, SmolLM2.
    Llama,
    /// Qwen2: biases on the q/k/v projections.
    Qwen2,
}

/// What sits on top of the final hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// `lm_head` (or the tied embedding): next-token logits.
    CausalLm,
    /// `score`: one reward per sequence, at its last non-padding token.
    Score,
}

/// RoPE frequency scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Llama 3.x's smooth interpolation of the low frequencies.
    Llama3 {
        /// Scale of the lowest frequencies.
        factor: f64,
        /// Wavelength bound (in units of the original context) above which frequencies are scaled.
        low_freq_factor: f64,
        /// Wavelength bound below which frequencies are kept.
        high_freq_factor: f64,
        /// The context the model was pre-trained on.
        original_max_position_embeddings: f64,
    },
}

/// Everything the forward pass needs to know about a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Family.
    pub architecture: Architecture,
    /// Head.
    pub head: Head,
    /// Rows of the embedding.
    pub vocab_size: i64,
    /// Model width.
    pub hidden_size: i64,
    /// SwiGLU width.
    pub intermediate_size: i64,
    /// Decoder blocks.
    pub num_layers: i64,
    /// Query heads.
    pub num_heads: i64,
    /// Key/value heads (GQA when fewer than query heads).
    pub num_kv_heads: i64,
    /// Width of one head.
    pub head_dim: i64,
    /// RMSNorm ε.
    pub rms_norm_eps: f64,
    /// RoPE base θ.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Longest context the model supports.
    pub max_position_embeddings: i64,
    /// Whether the output head is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v (Qwen2, or Llama with `attention_bias`).
    pub attention_bias: bool,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<i64>,
    /// Ids that end generation (from `config.json`; `generation_config.json` adds more).
    pub eos_token_ids: Vec<i64>,
    /// Padding id, if the checkpoint names one.
    pub pad_token_id: Option<i64>,
}

impl ModelSpec {
    /// Number of parameters of the checkpoint (tied embeddings counted once).
    pub fn num_parameters(&self) -> i64 {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let attention = h * q + 2 * h * kv + q * h + bias;
        let mlp = 3 * h * i;
        let block = attention + mlp + 2 * h;
        let head = match self.head {
            Head::CausalLm if self.tie_word_embeddings => 0,
            Head::CausalLm => v * h,
            Head::Score => h,
        };
        v * h + self.num_layers * block + h + head
    }
}
