//! A loaded model: weights in a `VarStore`, the transformer over them, the tokenizer
//! and the ids that end generation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tch::{Device, Kind, nn};
use tracing::info;

use crate::checkpoint::{ModelSnapshot, load_weights};
use crate::config::{DeviceKind, Dtype, Precision, RolloutWeights};
use crate::digest::Digests;
use crate::error::{ModelError, Result};
use crate::lora::{ADAPTER_CONFIG, ADAPTER_WEIGHTS, Adapter, LoraConfig};
use crate::products::Products;
use crate::spec::{Head, ModelSpec};
use crate::tokenizer::TextTokenizer;
use crate::transformer::Transformer;
use crate::unloaded::{Unloaded, read_folder};

/// How to load a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Weight type.
    pub dtype: Dtype,
    /// Compute precision: with `mixed_bf16` the weights stay f32 (a trainable
    /// model's masters) and every pass computes its products in bf16 where the device
    /// has bf16 units ([`Products`]).
    pub precision: Precision,
    /// Under `mixed_bf16` on a CPU without bf16 units, compute bf16 products anyway
    /// (libtorch emulates them, several times slower than f32); off, they run in f32.
    pub emulate_bf16: bool,
    /// How the rollouts' decoder stores the weights (int8: the CPU decoder only).
    pub rollout_weights: RolloutWeights,
    /// Device.
    pub device: DeviceKind,
    /// Whether the weights take gradients (the policy) or are frozen (the reference,
    /// the judge, a reward model).
    pub trainable: bool,
    /// Whether a generation may run past the model's context (prompt plus new
    /// tokens longer than `max_position_embeddings`); off, it is an error.
    pub allow_past_context: bool,
}

impl LoadOptions {
    /// Whether the weights are stored in bf16 (`dtype: bf16`).
    fn stores_bf16(&self) -> bool {
        self.dtype == Dtype::Bf16
    }

    /// Where the products run on this machine: bf16 under mixed precision (f32
    /// weights — a trainable model's masters — and bf16 products, for the frozen
    /// models too) where the device computes bf16, f32 on a CPU that would emulate it.
    pub fn products(&self) -> Products {
        Products::on_this_machine(self.precision, self.device, self.emulate_bf16)
    }
}

/// The kind a model's linear maps are made in: the products' kind for a frozen model
/// under mixed precision (the reference, a judge, a reward model), f32 otherwise. Its
/// passes cast the maps to that kind anyway (`inference.rs`), so they compute the
/// same, and the model holds half their bytes (SmolLM2: 0.33 against 0.54 GB), read
/// from the file straight into bf16. Embeddings, norms and a score head keep the
/// weights' kind, as the policy's passes use them. The one place this is decided;
/// attaching an adapter ([`LanguageModel::load_adapter`]) first reads the f32 maps
/// back, as it merges into them.
fn maps_kind(options: &LoadOptions) -> Kind {
    match options.products().kind() {
        Some(kind) if !options.trainable && !options.stores_bf16() => kind,
        _ => Kind::Float,
    }
}

/// A Hugging Face model folder loaded for inference or training.
#[derive(Debug)]
pub struct LanguageModel {
    vs: nn::VarStore,
    transformer: Transformer,
    /// Shared with the model's views and copies, and with the [`Unloaded`] it was
    /// loaded from.
    tokenizer: Arc<TextTokenizer>,
    folder: PathBuf,
    eos_token_ids: Vec<u32>,
    pub(crate) options: LoadOptions,
    /// A LoRA adapter on the (then frozen) weights.
    adapter: Option<Adapter>,
}

/// The torch device for `kind`; CUDA only when libtorch has it.
pub fn torch_device(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda if tch::Cuda::is_available() => Ok(Device::Cuda(0)),
        DeviceKind::Cuda => Err(ModelError::Invalid(
            "device cuda was asked for, but libtorch sees no CUDA device: use device cpu, \
             or build against a CUDA libtorch (see the README)"
                .to_string(),
        )),
    }
}

/// An error naming the first weight that holds a NaN or an infinity: such a model
/// cannot be trained or trusted (a damaged file loads as NaN).
fn refuse_non_finite(vs: &nn::VarStore, folder: &Path) -> Result<()> {
    let _guard = tch::no_grad_guard();
    let mut variables: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, tensor) in variables {
        // A finite sum proves every value finite in one pass; only a sum that is not
        // (a NaN, an infinity, or finite values overflowing f32) takes the exact
        // element-wise test, four passes and a mask.
        let sum_finite = tensor.sum(Kind::Float).double_value(&[]).is_finite();
        if !sum_finite && !bool::try_from(tensor.isfinite().all())? {
            return Err(ModelError::Invalid(format!(
                "{}: weight {name} holds NaN or infinite values (a damaged file?)",
                folder.display()
            )));
        }
    }
    Ok(())
}

impl LanguageModel {
    /// Checks the model folder without loading its weights (`pipeline validate`):
    /// config.json parses and names a supported architecture, the weight files'
    /// headers fit it, and the tokenizer fits the embedding. Its spec.
    pub fn inspect(folder: &Path) -> Result<ModelSpec> {
        Ok(read_folder(folder)?.0)
    }

    /// Loads the model in `folder`: `config.json`, the safetensors weights, the
    /// tokenizer and, when present, `generation_config.json`.
    pub fn load(folder: &Path, options: LoadOptions) -> Result<Self> {
        Unloaded::open(folder, options)?.load()
    }

    /// The weights of `unloaded`'s folder read into a model with its spec, tokenizer
    /// and options ([`Unloaded::load`]).
    pub(crate) fn with_weights(unloaded: &Unloaded) -> Result<Self> {
        let started = std::time::Instant::now();
        let Unloaded {
            spec,
            tokenizer,
            folder,
            eos_token_ids,
            options,
        } = unloaded;
        let device = torch_device(options.device)?;
        let mut vs = nn::VarStore::new(device);
        let mut transformer = Transformer::new(&vs.root(), spec, maps_kind(options));
        load_weights(&mut vs, folder)?;
        refuse_non_finite(&vs, folder)?;
        if options.stores_bf16() {
            vs.bfloat16();
        }
        let products = options.products();
        products.log_once();
        transformer.set_product_kind(products.kind());
        transformer.set_rollout_weights(options.rollout_weights);
        if !options.trainable {
            vs.freeze();
        }
        let model = Self {
            vs,
            transformer,
            tokenizer: Arc::clone(tokenizer),
            folder: folder.clone(),
            eos_token_ids: eos_token_ids.clone(),
            options: *options,
            adapter: None,
        };
        info!(
            folder = %folder.display(),
            parameters = spec.num_parameters(),
            ?device,
            dtype = ?options.dtype,
            precision = options.precision.name(),
            products = products.name(),
            maps = ?model.transformer.maps_kind(),
            seconds = started.elapsed().as_secs_f64(),
            "model loaded"
        );
        Ok(model)
    }

    /// Undoes [`maps_kind`]'s narrower maps: the maps made again in the weights'
    /// kind and read again from the folder (the model's own, loaded from it or copied
    /// while equal to it).
    fn restore_frozen_maps(&mut self) -> Result<()> {
        let weights = self.transformer.kind_and_device().0;
        if self.transformer.maps_kind() != weights {
            self.transformer.unset_maps_as(weights);
            load_weights(&mut self.vs, &self.folder)?;
        }
        Ok(())
    }

    /// Attaches a fresh LoRA adapter of `config` (PEFT's initialisation, drawn from
    /// `seed`: the model is still its base) and freezes the base weights: only the
    /// adapter trains.
    pub fn attach_adapter(&mut self, config: &LoraConfig, seed: u64) -> Result<()> {
        self.adapt(config, None, seed)
    }

    /// Attaches the PEFT adapter in `folder` (`adapter_config.json`,
    /// `adapter_model.safetensors`) and freezes the base weights; its settings.
    pub fn load_adapter(&mut self, folder: &Path) -> Result<LoraConfig> {
        let config = LoraConfig::from_peft(&folder.join(ADAPTER_CONFIG))?;
        self.adapt(&config, Some(&folder.join(ADAPTER_WEIGHTS)), 0)?;
        Ok(config)
    }

    fn adapt(&mut self, config: &LoraConfig, weights: Option<&Path>, seed: u64) -> Result<()> {
        let mut problems = lsp_schemas::problems::Problems::new();
        lsp_schemas::problems::Validate::validate(config, "lora", &mut problems);
        problems
            .into_result()
            .map_err(|e| ModelError::Invalid(e.to_string()))?;
        if self.adapter.is_some() {
            return Err(ModelError::Invalid(
                "the model has an adapter already".into(),
            ));
        }
        self.require_causal_lm()?;
        self.restore_frozen_maps()?;
        self.vs.freeze();
        let device = self.vs.device();
        let mut adapter = Adapter::attach(&mut self.transformer, config, device, weights, seed)?;
        if !self.options.trainable {
            adapter.freeze();
        }
        info!(
            r = config.r,
            alpha = config.alpha,
            targets = config.target_modules.join(","),
            parameters = adapter
                .variables()
                .iter()
                .map(|(_, t)| t.numel())
                .sum::<usize>(),
            "LoRA adapter attached"
        );
        self.adapter = Some(adapter);
        Ok(())
    }

    /// The LoRA adapter, if one is attached.
    pub fn adapter(&self) -> Option<&Adapter> {
        self.adapter.as_ref()
    }

    /// The variables an optimizer trains, sorted by name: the adapter's factors when
    /// one is attached, else every weight that takes gradients.
    pub fn trainable_variables(&self) -> Vec<(String, tch::Tensor)> {
        let mut vars: Vec<(String, tch::Tensor)> = match &self.adapter {
            Some(adapter) => adapter.variables(),
            None => self.vs.variables().into_iter().collect(),
        };
        vars.retain(|(_, t)| t.requires_grad());
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The base model with the adapter switched off, sharing this model's weights (no
    /// copy): the frozen reference and judge of a LoRA run (its rollouts, the
    /// judge's replies, in the products' kind, never int8).
    pub fn base_view(&self) -> Result<Self> {
        let mut base = self.view(false);
        base.transformer
            .set_rollout_weights(RolloutWeights::Products);
        base.options = LoadOptions {
            trainable: false,
            rollout_weights: RolloutWeights::Products,
            ..self.options
        };
        Ok(base)
    }

    /// The same transformer sharing every weight (no copy), with or without the
    /// adapter's factors on its maps, for passes only: the view owns no variables
    /// (saving it or optimizing it sees none). A view can move to another thread.
    pub(crate) fn view(&self, adapters: bool) -> Self {
        Self {
            vs: nn::VarStore::new(self.vs.device()),
            transformer: self.transformer.shallow_copy(adapters),
            tokenizer: Arc::clone(&self.tokenizer),
            folder: self.folder.clone(),
            eos_token_ids: self.eos_token_ids.clone(),
            options: self.options,
            adapter: None,
        }
    }

    /// Saves the adapter as PEFT does (an error without one); the files' digests.
    pub fn save_adapter(&self, folder: &Path) -> Result<Digests> {
        let adapter = self
            .adapter
            .as_ref()
            .ok_or_else(|| ModelError::Invalid("the model has no adapter to save".into()))?;
        adapter
            .snapshot(&self.folder.display().to_string())
            .write(folder)
    }

    /// Saves a Hugging Face folder whose weights are the base's with the adapter
    /// merged in (`W + scale · B A` on every targeted map), in f32: transformers loads
    /// it without PEFT. Returns the files' digests.
    pub fn save_merged(&self, folder: &Path) -> Result<Digests> {
        let Some(adapter) = &self.adapter else {
            return ModelSnapshot::of_var_store(&self.vs, &self.folder).write(folder);
        };
        let factors: std::collections::HashMap<String, tch::Tensor> =
            adapter.variables().into_iter().collect();
        let scale = adapter.config().scale();
        let _guard = tch::no_grad_guard();
        let named: Vec<(String, tch::Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(name, weight)| {
                let module = name.strip_suffix(".weight").unwrap_or("");
                let factor = |f: &str| factors.get(&crate::lora::peft_name(module, f));
                let weight = weight.to_kind(Kind::Float);
                let value = match (factor("A"), factor("B")) {
                    (Some(a), Some(b)) => {
                        weight + b.to_kind(Kind::Float).mm(&a.to_kind(Kind::Float)) * scale
                    }
                    _ => weight,
                };
                (name, value)
            })
            .collect();
        ModelSnapshot::new(
            Some(self.folder.clone()),
            Vec::new(),
            "model.safetensors",
            named,
        )
        .write(folder)
    }

    /// A frozen copy of the current weights (the reference policy; the judge's
    /// replies in the products' kind, never int8).
    pub fn frozen_copy(&self) -> Result<Self> {
        let options = LoadOptions {
            trainable: false,
            rollout_weights: RolloutWeights::Products,
            ..self.options
        };
        let mut vs = nn::VarStore::new(self.vs.device());
        let mut transformer = Transformer::new(&vs.root(), self.spec(), maps_kind(&options));
        if options.stores_bf16() {
            vs.bfloat16();
        }
        transformer.set_product_kind(options.products().kind());
        transformer.set_rollout_weights(options.rollout_weights);
        vs.copy(&self.vs)?;
        vs.freeze();
        Ok(Self {
            vs,
            transformer,
            tokenizer: Arc::clone(&self.tokenizer),
            folder: self.folder.clone(),
            eos_token_ids: self.eos_token_ids.clone(),
            options,
            adapter: None,
        })
    }

    /// Saves the model as a Hugging Face folder transformers loads: the weights as
    /// `model.safetensors` (in f32), and the source folder's config, tokenizer and
    /// generation files.
    ///
    /// With an adapter, the adapter as PEFT saves it instead (the base is unchanged).
    /// Returns the digest of every file written ([`Digests`]).
    pub fn save(&self, folder: &Path) -> Result<Digests> {
        self.snapshot().write(folder)
    }

    /// What [`LanguageModel::save`] writes, taken now without copying the weights, to
    /// be written later (on another thread) while the weights stay as they are.
    pub fn snapshot(&self) -> ModelSnapshot {
        match &self.adapter {
            Some(adapter) => adapter.snapshot(&self.folder.display().to_string()),
            None => ModelSnapshot::of_var_store(&self.vs, &self.folder),
        }
    }

    /// An error unless the model predicts tokens (a reward model has a score head).
    pub fn require_causal_lm(&self) -> Result<()> {
        match self.spec().head {
            Head::CausalLm => Ok(()),
            Head::Score => Err(ModelError::Invalid(format!(
                "{} is a reward model (sequence classification): it scores, it does not generate",
                self.folder.display()
            ))),
        }
    }

    /// The transformer.
    pub fn transformer(&self) -> &Transformer {
        &self.transformer
    }

    /// The model's description.
    pub fn spec(&self) -> &ModelSpec {
        self.transformer.spec()
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Ids that end generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    /// The weights (for an optimizer).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// The weights, mutably (to load a checkpoint into).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// How the model was loaded (what a model loaded beside it, a reward model, follows).
    pub fn options(&self) -> LoadOptions {
        self.options
    }

    /// The folder the model was loaded from.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Id used to pad batches: the tokenizer's pad token, else the first EOS id.
    pub fn pad_token_id(&self) -> u32 {
        self.tokenizer
            .pad_token_id()
            .or(self.spec().pad_token_id.map(|p| p as u32))
            .or(self.eos_token_ids.first().copied())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(values: &[f32]) -> nn::VarStore {
        store_as(values, Kind::Float)
    }

    /// `b.weight` holds `values` in `kind` (a frozen model's bf16 maps).
    fn store_as(values: &[f32], kind: Kind) -> nn::VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = (&root / "a").var_copy("weight", &tch::Tensor::from_slice(&[1.0f32, -2.0]));
        let b = tch::Tensor::from_slice(values).to_kind(kind);
        let _ = (&root / "b").var_copy("weight", &b);
        vs
    }

    #[test]
    fn only_nan_or_infinite_weights_are_refused() {
        let folder = Path::new("m");
        // Finite values whose f32 sum overflows are still finite.
        refuse_non_finite(&store(&[3e38, 3e38, -1.0]), folder).unwrap();
        refuse_non_finite(&store(&[f32::MAX, -f32::MAX]), folder).unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for kind in [Kind::Float, Kind::BFloat16] {
                let err = refuse_non_finite(&store_as(&[0.5, bad], kind), folder)
                    .unwrap_err()
                    .to_string();
                assert_eq!(
                    err, "m: weight b.weight holds NaN or infinite values (a damaged file?)",
                    "{bad} in {kind:?}"
                );
            }
        }
    }
}
