//! Hugging Face checkpoints: `model.safetensors` or a sharded
//! `model.safetensors.index.json`, read into a `VarStore` whose variable names are the
//! checkpoint's tensor names; and saving a model folder transformers loads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Tensor, nn};
use tracing::debug;

use crate::digest::{Digests, digest_file};
use crate::error::{ModelError, Result};
use crate::safetensors_file::{SafetensorsFile, write_safetensors};
use crate::spec::ModelSpec;

/// The weight files of a model folder.
pub fn weight_files(folder: &Path) -> Result<Vec<PathBuf>> {
    let single = folder.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = folder.join("model.safetensors.index.json");
    if index.is_file() {
        #[derive(Deserialize)]
        struct Index {
            weight_map: BTreeMap<String, String>,
        }
        let text = std::fs::read_to_string(&index).map_err(ModelError::io(&index))?;
        let parsed: Index = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: index.clone(),
            source,
        })?;
        let files: BTreeSet<_> = parsed.weight_map.into_values().collect();
        return Ok(files.into_iter().map(|f| folder.join(f)).collect());
    }
    Err(ModelError::Io {
        path: folder.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no model.safetensors or model.safetensors.index.json in this folder",
        ),
    })
}

/// Copies the checkpoint in `folder` into the variables of `vs`, checking that every
/// variable has its tensor with the right shape. Tensors the model does not use
/// (a tied `lm_head`, cached rotary tables) are skipped.
/// The weight files' headers against `spec`: the embedding's rows and width, the
/// number of decoder blocks and the first block's projections, so that a config that
/// does not describe its weights is named as such (read from the headers only).
pub fn check_weight_headers(folder: &Path, spec: &ModelSpec) -> Result<()> {
    let mut shapes: HashMap<String, Vec<i64>> = HashMap::new();
    for file in weight_files(folder)? {
        let reader = SafetensorsFile::open(&file)?;
        for name in reader.names() {
            shapes.insert(
                name.to_string(),
                reader.shape(name).expect("listed").to_vec(),
            );
        }
    }
    let (h, d) = (spec.hidden_size, spec.head_dim);
    let expected = [
        ("model.embed_tokens.weight", vec![spec.vocab_size, h]),
        (
            "model.layers.0.self_attn.q_proj.weight",
            vec![spec.num_heads * d, h],
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            vec![spec.num_kv_heads * d, h],
        ),
        (
            "model.layers.0.mlp.gate_proj.weight",
            vec![spec.intermediate_size, h],
        ),
    ];
    for (name, want) in expected {
        match shapes.get(name) {
            Some(got) if *got != want => {
                return Err(ModelError::Invalid(format!(
                    "{}: config.json describes {name} as {want:?} but the weights hold {got:?}: \
                     config.json does not belong to these weights",
                    folder.display()
                )));
            }
            Some(_) => {}
            None => {
                return Err(ModelError::MissingTensor {
                    folder: folder.to_path_buf(),
                    name: name.to_string(),
                });
            }
        }
    }
    let blocks = shapes
        .keys()
        .filter_map(|n| {
            n.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .max()
        .map_or(0, |last| last + 1);
    if blocks != spec.num_layers {
        return Err(ModelError::Invalid(format!(
            "{}: config.json says num_hidden_layers {} but the weights hold {blocks} blocks",
            folder.display(),
            spec.num_layers
        )));
    }
    Ok(())
}

pub fn load_weights(vs: &mut nn::VarStore, folder: &Path) -> Result<()> {
    let mut wanted: HashMap<String, Tensor> = vs.variables();
    let total = wanted.len();
    for file in weight_files(folder)? {
        if !file.is_file() {
            return Err(ModelError::Io {
                path: file,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "weight shard missing"),
            });
        }
        let mut reader = SafetensorsFile::open(&file)?;
        // In name order, so the first problem reported is the same on every run.
        let names: Vec<String> = reader.names().map(str::to_string).collect();
        for name in names {
            let Some(var) = wanted.remove(&name) else {
                debug!(tensor = name, "checkpoint tensor not used by the model");
                continue;
            };
            let shape = reader.shape(&name).expect("a listed name").to_vec();
            if var.size() != shape {
                return Err(ModelError::ShapeMismatch {
                    folder: folder.to_path_buf(),
                    name,
                    expected: var.size(),
                    actual: shape,
                });
            }
            reader.read_into(&name, &var)?;
        }
    }
    if let Some(name) = wanted.keys().min() {
        return Err(ModelError::MissingTensor {
            folder: folder.to_path_buf(),
            name: name.clone(),
        });
    }
    debug!(folder = %folder.display(), tensors = total, "checkpoint loaded");
    Ok(())
}

/// A model's saved form, taken without copying its weights (f32 tensors share the
/// model's storage): written by [`ModelSnapshot::write`], on any thread, into a folder
/// transformers (or PEFT) loads. The model's weights must not change until then.
#[derive(Debug)]
pub struct ModelSnapshot {
    /// The folder whose [`COMPANION_FILES`] the saved folder carries (a whole model).
    companions: Option<PathBuf>,
    /// Files written as they are (an adapter's config).
    files: Vec<(String, Vec<u8>)>,
    /// The weights' file name and its tensors, in f32 under their saved names.
    weights: (&'static str, Vec<(String, Tensor)>),
}

impl ModelSnapshot {
    /// The weights of `named` as `file`, beside `companions`' files and `files`.
    pub(crate) fn new(
        companions: Option<PathBuf>,
        files: Vec<(String, Vec<u8>)>,
        file: &'static str,
        named: Vec<(String, Tensor)>,
    ) -> Self {
        let named = tch::no_grad(|| {
            named
                .into_iter()
                .map(|(name, t)| (name, t.detach().to_kind(tch::Kind::Float)))
                .collect()
        });
        Self {
            companions,
            files,
            weights: (file, named),
        }
    }

    /// The variables of `vs` as `model.safetensors`, with `companions`' files.
    pub(crate) fn of_var_store(vs: &nn::VarStore, companions: &Path) -> Self {
        let named = vs.variables().into_iter().collect();
        Self::new(
            Some(companions.into()),
            Vec::new(),
            "model.safetensors",
            named,
        )
    }

    /// Writes the folder; the weights file appears whole (written beside it, renamed).
    /// Returns the digest of every file written, by name: the weights' taken as they
    /// were written, the others' read back.
    pub fn write(&self, folder: &Path) -> Result<Digests> {
        let mut written: Vec<String> = match &self.companions {
            Some(from) => copy_companions(from, folder)?,
            None => {
                std::fs::create_dir_all(folder).map_err(ModelError::io(folder))?;
                Vec::new()
            }
        };
        for (name, bytes) in &self.files {
            let path = folder.join(name);
            std::fs::write(&path, bytes).map_err(ModelError::io(&path))?;
            written.push(name.clone());
        }
        let mut digests = Digests::new();
        for name in written {
            let path = folder.join(&name);
            digests.insert(name, digest_file(&path).map_err(ModelError::io(&path))?);
        }
        let (file, named) = &self.weights;
        let path = folder.join(file);
        let tmp = folder.join(format!(".{file}.tmp"));
        digests.insert(file.to_string(), write_safetensors(named, &tmp)?);
        std::fs::rename(&tmp, &path).map_err(ModelError::io(&path))?;
        Ok(digests)
    }
}

/// Files of a model folder other than the weights that a saved copy carries over
/// unchanged (architecture, tokenizer, chat template, generation settings).
pub const COMPANION_FILES: [&str; 6] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// Copies the [`COMPANION_FILES`] that exist in `from` into `to`; their names.
pub fn copy_companions(from: &Path, to: &Path) -> Result<Vec<String>> {
    std::fs::create_dir_all(to).map_err(ModelError::io(to))?;
    let mut copied = Vec::new();
    for name in COMPANION_FILES {
        let src = from.join(name);
        if src.is_file() {
            std::fs::copy(&src, to.join(name)).map_err(ModelError::io(&src))?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}
