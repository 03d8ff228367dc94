//! A model folder read and checked, its weights not loaded: what an offloaded model
//! (the reference under `model.offload_reference`) keeps between its uses, so that
//! loading it again reads only the weights — not the tokenizer (≈ 0.06 s for
//! SmolLM2's, a quarter of a reload), the config or the headers again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::check_weight_headers;
use crate::config::{DeviceKind, Dtype, Precision};
use crate::error::{ModelError, Result};
use crate::hf_config::{HfConfig, TokenIds};
use crate::model::{LanguageModel, LoadOptions};
use crate::spec::ModelSpec;
use crate::tokenizer::TextTokenizer;

/// A model folder's spec, tokenizer and EOS ids, checked, with the options to load
/// its weights by ([`Unloaded::load`], as often as needed).
#[derive(Debug, Clone)]
pub struct Unloaded {
    pub(crate) spec: ModelSpec,
    pub(crate) tokenizer: Arc<TextTokenizer>,
    pub(crate) folder: PathBuf,
    pub(crate) eos_token_ids: Vec<u32>,
    pub(crate) options: LoadOptions,
}

impl Unloaded {
    /// Reads and checks everything in `folder` but the weights' values:
    /// `config.json`, the weight files' headers, the tokenizer and, when present,
    /// `generation_config.json`; and that `options` go together.
    pub fn open(folder: &Path, options: LoadOptions) -> Result<Self> {
        if options.rollout_weights.own_kind()
            && (options.dtype != Dtype::F32 || options.device != DeviceKind::Cpu)
        {
            return Err(ModelError::Invalid(format!(
                "{} rollout weights run on the CPU decoder: load with dtype f32 on the cpu",
                options.rollout_weights.name()
            )));
        }
        if options.precision == Precision::MixedBf16 && options.dtype != Dtype::F32 {
            return Err(ModelError::Invalid(
                "precision mixed_bf16 keeps f32 master weights: load with dtype f32".into(),
            ));
        }
        let (spec, tokenizer) = read_folder(folder)?;
        let eos_token_ids = eos_ids(folder, &spec, &tokenizer)?;
        Ok(Self {
            spec,
            tokenizer: Arc::new(tokenizer),
            folder: folder.to_path_buf(),
            eos_token_ids,
            options,
        })
    }

    /// The model with the folder's weights, read now (and checked finite: a file
    /// damaged since [`Unloaded::open`] is an error, not a model).
    pub fn load(&self) -> Result<LanguageModel> {
        LanguageModel::with_weights(self)
    }

    /// The model folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }
}

/// A model folder's spec and tokenizer, checked against each other and against the
/// weight files' headers: what [`LanguageModel::load`] checks before reading weights.
pub(crate) fn read_folder(folder: &Path) -> Result<(ModelSpec, TextTokenizer)> {
    if !folder.is_dir() {
        return Err(ModelError::Invalid(format!(
            "{} is not a folder: a model is a Hugging Face folder with config.json, \
             tokenizer.json and model.safetensors",
            folder.display()
        )));
    }
    let config_path = folder.join("config.json");
    let spec = HfConfig::read(&config_path)?.to_spec(&config_path)?;
    check_weight_headers(folder, &spec)?;
    let tokenizer = TextTokenizer::from_folder(folder)?;
    if tokenizer.vocab_size() as i64 > spec.vocab_size {
        return Err(ModelError::Tokenizer {
            path: folder.join("tokenizer.json"),
            message: format!(
                "the tokenizer has {} tokens but the model's embedding only {} rows: \
                 this tokenizer belongs to another model",
                tokenizer.vocab_size(),
                spec.vocab_size
            ),
        });
    }
    Ok((spec, tokenizer))
}

/// EOS ids from `config.json`, `generation_config.json` and the tokenizer's
/// `eos_token`, without repeats.
fn eos_ids(folder: &Path, spec: &ModelSpec, tokenizer: &TextTokenizer) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = spec.eos_token_ids.iter().map(|&i| i as u32).collect();
    let generation = folder.join("generation_config.json");
    if generation.is_file() {
        #[derive(serde::Deserialize)]
        struct GenerationConfig {
            #[serde(default)]
            eos_token_id: Option<TokenIds>,
        }
        let text = std::fs::read_to_string(&generation).map_err(ModelError::io(&generation))?;
        let config: GenerationConfig =
            serde_json::from_str(&text).map_err(|source| ModelError::Json {
                path: generation.clone(),
                source,
            })?;
        ids.extend(
            config
                .eos_token_id
                .iter()
                .flat_map(TokenIds::to_vec)
                .map(|i| i as u32),
        );
    }
    ids.extend(tokenizer.eos_token_id());
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(*id));
    Ok(ids)
}
