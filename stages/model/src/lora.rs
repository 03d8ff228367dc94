//! LoRA adapters in PEFT's format: `model.lora` in the YAML, an adapter folder as PEFT
//! saves it (`adapter_config.json`, `adapter_model.safetensors` with PEFT's tensor
//! names), and the merge of an adapter into its base weights.
//!
//! An adapter's factors live in their own `VarStore` (trainable; the base weights are
//! frozen), and each targeted linear map (`layers::Linear`) holds handles to its
//! pair, so that a pass through autograd adds `scale · (x Aᵀ) Bᵀ` to the base
//! product, passes without gradient use the merged weight `W + scale · B A`
//! ([`crate::InferenceWeights`], built per pass, so re-merged after every update),
//! and the base model with adapters off is the same weights without the pairs
//! ([`crate::LanguageModel::base_view`]).

use std::path::Path;

use lsp_schemas::problems::{Problems, Validate, join_path};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tch::nn::{self, Init};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::ModelSnapshot;
use crate::error::{ModelError, Result};
use crate::layers::LoraPair;
use crate::safetensors_file::SafetensorsFile;
use crate::sampling::{Rng, mix};
use crate::transformer::Transformer;

/// The linear maps an adapter may target, by their short names.
pub const TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// PEFT's file names in an adapter folder.
pub const ADAPTER_CONFIG: &str = "adapter_config.json";
/// The adapter's tensors.
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";

/// `model.lora`: the adapter a run trains (the base weights frozen).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoraConfig {
    /// Rank of each adapter.
    pub r: i64,
    /// The adapter's output is scaled by `alpha / r` (`alpha / √r` with `rslora`).
    pub alpha: f64,
    /// Dropout on the adapter's input while training.
    pub dropout: f64,
    /// The maps adapted, among [`TARGETS`].
    pub target_modules: Vec<String>,
    /// Rank-stabilised scaling (`alpha / √r`).
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.0,
            target_modules: TARGETS.iter().map(|t| t.to_string()).collect(),
            rslora: false,
        }
    }
}

impl Validate for LoraConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        let p = |f: &str| join_path(path, f);
        problems.check(self.r >= 1, &p("r"), || {
            format!("{} is not a rank: use r >= 1", self.r)
        });
        problems.check(
            self.alpha.is_finite() && self.alpha > 0.0,
            &p("alpha"),
            || format!("{} must be > 0", self.alpha),
        );
        problems.check((0.0..1.0).contains(&self.dropout), &p("dropout"), || {
            format!(
                "{} is out of range: expected 0 <= dropout < 1",
                self.dropout
            )
        });
        problems.check(
            !self.target_modules.is_empty(),
            &p("target_modules"),
            || format!("name at least one of {}", TARGETS.join(", ")),
        );
        for (i, t) in self.target_modules.iter().enumerate() {
            problems.check(
                TARGETS.contains(&t.as_str()),
                &format!("{}[{i}]", p("target_modules")),
                || format!("{t:?} is not one of {}", TARGETS.join(", ")),
            );
        }
    }
}

impl LoraConfig {
    /// The factor `B A` is scaled by.
    pub fn scale(&self) -> f64 {
        match self.rslora {
            true => self.alpha / (self.r as f64).sqrt(),
            false => self.alpha / self.r as f64,
        }
    }

    /// The settings of a PEFT `adapter_config.json` (LoRA, plain list of target
    /// modules, no DoRA, no per-module ranks): an error naming what this project does
    /// not read.
    pub fn from_peft(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(ModelError::io(path))?;
        let v: Value = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |message: String| ModelError::Invalid(format!("{}: {message}", path.display()));
        let field = |name: &str| v.get(name).filter(|x| !x.is_null());
        if field("peft_type").and_then(Value::as_str) != Some("LORA") {
            return Err(bad("peft_type is not LORA".into()));
        }
        for (name, ok) in [
            (
                "use_dora",
                field("use_dora").is_none_or(|x| x == &json!(false)),
            ),
            (
                "fan_in_fan_out",
                field("fan_in_fan_out").is_none_or(|x| x == &json!(false)),
            ),
            ("bias", field("bias").is_none_or(|x| x == &json!("none"))),
            ("modules_to_save", field("modules_to_save").is_none()),
            (
                "layers_to_transform",
                field("layers_to_transform").is_none(),
            ),
            (
                "rank_pattern",
                field("rank_pattern").is_none_or(|x| x == &json!({})),
            ),
            (
                "alpha_pattern",
                field("alpha_pattern").is_none_or(|x| x == &json!({})),
            ),
        ] {
            if !ok {
                return Err(bad(format!(
                    "{name} = {} is not supported (plain LoRA only)",
                    v[name]
                )));
            }
        }
        let number = |name: &str| {
            field(name)
                .and_then(Value::as_f64)
                .ok_or_else(|| bad(format!("{name} is missing or not a number")))
        };
        let targets = match field("target_modules") {
            Some(Value::Array(list)) => list
                .iter()
                .map(|t| t.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("target_modules holds a non-string".into()))?,
            other => {
                return Err(bad(format!(
                    "target_modules must be a list of module names, not {}",
                    other.map_or("nothing".to_string(), Value::to_string)
                )));
            }
        };
        let mut targets: Vec<String> = targets;
        targets.sort_by_key(|t| TARGETS.iter().position(|x| x == t));
        let config = Self {
            r: number("r")? as i64,
            alpha: number("lora_alpha")?,
            dropout: field("lora_dropout").and_then(Value::as_f64).unwrap_or(0.0),
            target_modules: targets,
            rslora: field("use_rslora")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        config
            .check("adapter_config")
            .map_err(|e| bad(e.to_string()))?;
        Ok(config)
    }

    /// The `adapter_config.json` PEFT writes for this adapter on `base` (every field
    /// `PeftConfig.from_pretrained` and `LoraConfig` read).
    pub fn to_peft(&self, base: &str) -> Value {
        json!({
            "alpha_pattern": {},
            "auto_mapping": null,
            "base_model_name_or_path": base,
            "bias": "none",
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layer_replication": null,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": self.alpha,
            "lora_bias": false,
            "lora_dropout": self.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.r,
            "rank_pattern": {},
            "revision": null,
            "target_modules": self.target_modules,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.rslora,
        })
    }
}

/// PEFT's saved name of factor `A` or `B` of the map at `module`.
pub(crate) fn peft_name(module: &str, factor: &str) -> String {
    format!("base_model.model.{module}.lora_{factor}.weight")
}

/// A model's adapter: its factors, trainable, in their own store.
#[derive(Debug)]
pub struct Adapter {
    vs: nn::VarStore,
    config: LoraConfig,
}

impl Adapter {
    /// Attaches an adapter of `config` to `transformer`'s targeted maps: PEFT's
    /// initialisation (A Kaiming-uniform, bound 1/√in; B zero, so the model starts as
    /// its base), drawn from `seed` (and each map's number: replicas and worker threads
    /// agree, whatever else draws meanwhile), or the tensors of the PEFT adapter file
    /// `weights` when given.
    pub(crate) fn attach(
        transformer: &mut Transformer,
        config: &LoraConfig,
        device: Device,
        weights: Option<&Path>,
        seed: u64,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let kind = transformer.kind_and_device().0;
        let scale = config.scale();
        let mut names = Vec::new();
        for (module, short, map) in transformer.adaptable_maps() {
            if !config.target_modules.iter().any(|t| t == short) {
                continue;
            }
            let (out, inner) = (map.weight.size()[0], map.weight.size()[1]);
            let path = |factor: &str| {
                let name = peft_name(&module, factor);
                let mut p = vs.root();
                let parts: Vec<&str> = name.split('.').collect();
                for part in &parts[..parts.len() - 1] {
                    p = &p / *part;
                }
                (p, name)
            };
            let (pa, a_name) = path("A");
            let mut rng = Rng::new(mix(seed, names.len() as u64));
            let bound = 1.0 / (inner as f32).sqrt();
            let drawn: Vec<f32> = (0..config.r * inner)
                .map(|_| bound * (2.0 * rng.uniform() - 1.0))
                .collect();
            let drawn = Tensor::from_slice(&drawn).view([config.r, inner]);
            let a = pa.var_copy("weight", &drawn);
            let (pb, b_name) = path("B");
            let b = pb.var("weight", &[out, config.r], Init::Const(0.0));
            names.push((a_name, a.shallow_clone()));
            names.push((b_name, b.shallow_clone()));
            map.lora = Some(LoraPair {
                a,
                b,
                scale,
                dropout: config.dropout,
            });
        }
        if let Some(file) = weights {
            read_factors(file, &names)?;
        }
        // The factors in the base's kind (pure bf16 weights), f32 otherwise (mixed
        // precision keeps them as masters beside the f32 base).
        if kind == Kind::BFloat16 {
            vs.bfloat16();
        }
        Ok(Self {
            vs,
            config: config.clone(),
        })
    }

    /// The adapter's settings.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Its factors under PEFT's saved names, sorted by name.
    pub fn variables(&self) -> Vec<(String, Tensor)> {
        let mut vars: Vec<(String, Tensor)> = self.vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// Stops the factors taking gradients (an adapter loaded for inference).
    pub(crate) fn freeze(&mut self) {
        self.vs.freeze();
    }

    /// The adapter as PEFT saves it, to be written into a folder:
    /// `adapter_config.json` (with `base` as `base_model_name_or_path`) and
    /// `adapter_model.safetensors` in f32.
    pub fn snapshot(&self, base: &str) -> ModelSnapshot {
        let text =
            serde_json::to_string_pretty(&self.config.to_peft(base)).expect("a config serializes");
        let config = (ADAPTER_CONFIG.to_string(), (text + "\n").into_bytes());
        ModelSnapshot::new(None, vec![config], ADAPTER_WEIGHTS, self.variables())
    }
}

/// Reads every factor of `names` from the adapter file `file`: each must be there with
/// its shape, and the file may hold nothing else (a factor for a map this model does
/// not have, or does not target, means the adapter belongs to another model).
fn read_factors(file: &Path, names: &[(String, Tensor)]) -> Result<()> {
    let mut reader = SafetensorsFile::open(file)?;
    let bad = |message: String| ModelError::Invalid(format!("{}: {message}", file.display()));
    let mut extra: Vec<String> = reader
        .names()
        .filter(|n| !names.iter().any(|(m, _)| m == n))
        .map(str::to_string)
        .collect();
    if !extra.is_empty() {
        extra.sort();
        return Err(bad(format!(
            "{} tensors fit no targeted map of this model, first {}: the adapter was made \
             for another model or other target_modules",
            extra.len(),
            extra[0]
        )));
    }
    for (name, var) in names {
        let Some(shape) = reader.shape(name).map(<[i64]>::to_vec) else {
            return Err(bad(format!("tensor {name} is missing")));
        };
        if shape != var.size() {
            return Err(bad(format!(
                "tensor {name} has shape {shape:?}, this model's map needs {:?} (another \
                 base model, or another rank)",
                var.size()
            )));
        }
        tch::no_grad(|| reader.read_into(name, var))?;
    }
    Ok(())
}

impl LoraConfig {
    /// An error naming each setting where `other` (an adapter's own) differs from
    /// this one (the run's `model.lora`); the dropout may differ (it is training's).
    pub fn check_agrees(&self, other: &LoraConfig) -> std::result::Result<(), String> {
        let sorted = |c: &LoraConfig| {
            let mut t = c.target_modules.clone();
            t.sort();
            t
        };
        let mut differ = Vec::new();
        if self.r != other.r {
            differ.push(format!("r {} vs {}", self.r, other.r));
        }
        if self.alpha != other.alpha {
            differ.push(format!("alpha {} vs {}", self.alpha, other.alpha));
        }
        if self.rslora != other.rslora {
            differ.push(format!("rslora {} vs {}", self.rslora, other.rslora));
        }
        if sorted(self) != sorted(other) {
            differ.push(format!(
                "target_modules {:?} vs {:?}",
                sorted(self),
                sorted(other)
            ));
        }
        match differ.is_empty() {
            true => Ok(()),
            false => Err(format!(
                "model.lora differs from the adapter's own settings: {}",
                differ.join(", ")
            )),
        }
    }
}

/// Checks the PEFT adapter in `folder` against a model of `spec` without loading
/// either (`pipeline validate`): its config is plain LoRA (and agrees with `lora`
/// when given), and its file holds exactly the factors of the targeted maps, each of
/// the shape the model's map needs. Its settings.
pub fn check_adapter(
    folder: &Path,
    spec: &crate::spec::ModelSpec,
    lora: Option<&LoraConfig>,
) -> Result<LoraConfig> {
    let config = LoraConfig::from_peft(&folder.join(ADAPTER_CONFIG))?;
    if let Some(lora) = lora {
        lora.check_agrees(&config).map_err(ModelError::Invalid)?;
    }
    let file = folder.join(ADAPTER_WEIGHTS);
    let reader = SafetensorsFile::open(&file)?;
    let bad = |message: String| ModelError::Invalid(format!("{}: {message}", file.display()));
    let (q, kv) = (
        spec.num_heads * spec.head_dim,
        spec.num_kv_heads * spec.head_dim,
    );
    let (h, i) = (spec.hidden_size, spec.intermediate_size);
    let mut expected = std::collections::BTreeMap::new();
    for layer in 0..spec.num_layers {
        for (block, name, out, inner) in [
            ("self_attn", "q_proj", q, h),
            ("self_attn", "k_proj", kv, h),
            ("self_attn", "v_proj", kv, h),
            ("self_attn", "o_proj", h, q),
            ("mlp", "gate_proj", i, h),
            ("mlp", "up_proj", i, h),
            ("mlp", "down_proj", h, i),
        ] {
            if !config.target_modules.iter().any(|t| t == name) {
                continue;
            }
            let module = format!("model.layers.{layer}.{block}.{name}");
            expected.insert(peft_name(&module, "A"), vec![config.r, inner]);
            expected.insert(peft_name(&module, "B"), vec![out, config.r]);
        }
    }
    let mut names: Vec<&str> = reader.names().collect();
    names.sort();
    for name in names {
        let shape = reader.shape(name).expect("a listed name");
        match expected.remove(name) {
            None => {
                return Err(bad(format!(
                    "tensor {name} fits no targeted map of this model ({} layers, targets {})",
                    spec.num_layers,
                    config.target_modules.join(", ")
                )));
            }
            Some(want) if want != shape => {
                return Err(bad(format!(
                    "tensor {name} has shape {shape:?}, this model's map needs {want:?} \
                     (another base model, or another rank)"
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(name) = expected.keys().next() {
        return Err(bad(format!("tensor {name} is missing")));
    }
    Ok(config)
}
