//! The frozen reference model of a run: in memory throughout, or offloaded between
//! its uses (`model.offload_reference`).

use std::path::PathBuf;

use anyhow::Context;
use lsp_model::{LanguageModel, LoadOptions, Unloaded};
use lsp_stage::Unavailable;
use tracing::debug;

/// The reference, loaded or to be loaded.
pub struct Reference {
    model: Option<LanguageModel>,
    /// Its folder, read and checked once, whose weights are read again on each use
    /// when offloaded; `None` keeps it resident.
    offload: Option<Unloaded>,
}

impl Reference {
    /// A reference kept in memory for the whole run.
    pub fn resident(model: LanguageModel) -> Self {
        Self {
            model: Some(model),
            offload: None,
        }
    }

    /// The reference in `folder`: loaded now and kept, or, when `offload`, loaded on
    /// first use and dropped by [`lsp_stage::Reference::release`].
    pub fn from_folder(
        folder: PathBuf,
        options: LoadOptions,
        offload: bool,
    ) -> anyhow::Result<Self> {
        let unloaded = Unloaded::open(&folder, options)
            .with_context(|| format!("reading the reference in {}", folder.display()))?;
        let mut reference = Self {
            model: None,
            offload: Some(unloaded),
        };
        if !offload {
            lsp_stage::Reference::<LanguageModel>::get(&mut reference)?;
            reference.offload = None;
        }
        Ok(reference)
    }
}

impl lsp_stage::Reference<LanguageModel> for Reference {
    /// The model, loading it first if it is offloaded.
    fn get(&mut self) -> Result<&LanguageModel, Unavailable> {
        if self.model.is_none()
            && let Some(unloaded) = &self.offload
        {
            let folder = unloaded.folder().display();
            let model = unloaded
                .load()
                .with_context(|| format!("loading the reference from {folder}"))
                .map_err(|e| Unavailable(e.into()))?;
            debug!(%folder, "reference loaded");
            self.model = Some(model);
        }
        Ok(self.model.as_ref().expect("resident, or loaded just now"))
    }

    /// Drops an offloaded reference until it is needed again; a resident one stays.
    fn release(&mut self) {
        if self.offload.is_some() && self.model.take().is_some() {
            debug!("reference released");
        }
    }
}
