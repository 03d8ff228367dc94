//! The model's tokenizer (`tokenizer.json`) with what `tokenizer_config.json` adds:
//! the special tokens and the chat template.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::chat_template::{ChatTemplate, Message};
use crate::error::{ModelError, Result};

/// Text ↔ token ids, and chat messages → prompt ids.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    chat: Option<ChatTemplate>,
    eos_token_id: Option<u32>,
    pad_token_id: Option<u32>,
}

/// The parts of `tokenizer_config.json` read here.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    bos_token: Option<Value>,
    #[serde(default)]
    eos_token: Option<Value>,
    #[serde(default)]
    pad_token: Option<Value>,
    #[serde(default)]
    chat_template: Option<Value>,
}

/// A special token is written as a string or as `{"content": "..."}`.
fn token_text(value: &Option<Value>) -> Option<String> {
    match value {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Object(o)) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// The chat template is a string, or a list of `{name, template}` of which `default`
/// is the one to use.
fn template_text(value: &Option<Value>) -> Option<String> {
    match value {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Array(items)) => items
            .iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
            .or_else(|| items.first())
            .and_then(|t| t.get("template"))
            .and_then(Value::as_str)
            .map(str::to_string),
        _ => None,
    }
}

impl TextTokenizer {
    /// Reads `tokenizer.json`, `tokenizer_config.json` and, when present,
    /// `chat_template.jinja` from a model folder.
    pub fn from_folder(folder: &Path) -> Result<Self> {
        let path = folder.join("tokenizer.json");
        if !path.is_file() {
            return Err(ModelError::Tokenizer {
                path,
                message: "missing: a model folder needs its tokenizer.json".to_string(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| ModelError::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let config_path = folder.join("tokenizer_config.json");
        let config: TokenizerConfig = if config_path.is_file() {
            let text =
                std::fs::read_to_string(&config_path).map_err(ModelError::io(&config_path))?;
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: config_path.clone(),
                source,
            })?
        } else {
            TokenizerConfig::default()
        };
        let jinja = folder.join("chat_template.jinja");
        let template = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(ModelError::io(&jinja))?)
        } else {
            template_text(&config.chat_template)
        };
        let bos = token_text(&config.bos_token).unwrap_or_default();
        let eos = token_text(&config.eos_token);
        let chat = template
            .map(|t| ChatTemplate::new(&t, &bos, eos.as_deref().unwrap_or("")))
            .transpose()?;
        let id_of = |t: Option<String>| t.and_then(|t| inner.token_to_id(&t));
        let eos_token_id = id_of(eos);
        let pad_token_id = id_of(token_text(&config.pad_token));
        Ok(Self {
            inner,
            chat,
            eos_token_id,
            pad_token_id,
        })
    }

    /// Token ids of `text`, without special tokens added (as `apply_chat_template`
    /// tokenizes the rendered chat).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer {
                path: "tokenizer.json".into(),
                message: format!("cannot encode: {e}"),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens are dropped when `skip_special`.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| ModelError::Tokenizer {
                path: "tokenizer.json".into(),
                message: format!("cannot decode: {e}"),
            })
    }

    /// The chat template applied to `messages`.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let chat = self.chat.as_ref().ok_or_else(|| {
            ModelError::Template("the tokenizer_config.json has no chat_template".to_string())
        })?;
        chat.render(messages, add_generation_prompt)
    }

    /// Prompt ids of one user message with the generation prompt.
    pub fn chat_prompt(&self, user: &str) -> Result<Vec<u32>> {
        self.chat_prompt_messages(&[Message::user(user)])
    }

    /// Prompt ids of a conversation with the generation prompt.
    pub fn chat_prompt_messages(&self, messages: &[Message]) -> Result<Vec<u32>> {
        self.encode(&self.render_chat(messages, true)?)
    }

    /// Size of the vocabulary including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id of the tokenizer's `eos_token`.
    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// Id of the tokenizer's `pad_token`.
    pub fn pad_token_id(&self) -> Option<u32> {
        self.pad_token_id
    }

    /// Id of a token's text, if it is one token.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}
