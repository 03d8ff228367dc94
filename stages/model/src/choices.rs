//! A judge's answer without generation: the probabilities of single-token choices
//! (rating digits, a preference letter) at the position after each sequence. Used by
//! the `judge` reward, the self-reward's score read-out and the win rate.

use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};
use crate::inference::InferenceWeights;
use crate::model::LanguageModel;
use crate::prefill::prefill;

impl LanguageModel {
    /// The single token id of each of `choices`; an error naming the first that is
    /// not one token in this model's vocabulary.
    pub fn choice_token_ids(&self, choices: &[String]) -> Result<Vec<u32>> {
        choices
            .iter()
            .map(|choice| match self.tokenizer().encode(choice)?.as_slice() {
                [id] => Ok(*id),
                ids => Err(ModelError::Invalid(format!(
                    "{}: the judge's answer {choice:?} is {} tokens, not one",
                    self.folder().display(),
                    ids.len()
                ))),
            })
            .collect()
    }

    /// For each of `seqs`, the probabilities of `choices` (token ids) at the next
    /// position, renormalised over the choices (softmax in f64). Sequences run by
    /// `batch`, each batch through one prompt pass whose shared prefix (the judge's
    /// instructions) runs once. No gradient.
    pub fn choice_probabilities(
        &self,
        seqs: &[Vec<u32>],
        choices: &[u32],
        batch: usize,
    ) -> Result<Vec<Vec<f64>>> {
        self.require_causal_lm()?;
        if let Some(i) = seqs.iter().position(Vec::is_empty) {
            return Err(ModelError::Invalid(format!("sequence {i} is empty")));
        }
        let _guard = tch::no_grad_guard();
        let index: Vec<i64> = choices.iter().map(|&c| i64::from(c)).collect();
        let index = Tensor::from_slice(&index).to_device(self.device());
        let weights = InferenceWeights::new(self.transformer());
        let mut out = Vec::with_capacity(seqs.len());
        for chunk in seqs.chunks(batch.max(1)) {
            let longest = chunk.iter().map(Vec::len).max().unwrap_or(0) as i64;
            let pass = prefill(&weights, chunk, 1, self.pad_token_id(), longest);
            let probs = pass
                .logits
                .index_select(1, &index)
                .softmax(-1, Kind::Double);
            let flat = Vec::<f64>::try_from(&probs.view([-1]))?;
            out.extend(flat.chunks(choices.len()).map(<[f64]>::to_vec));
        }
        Ok(out)
    }
}
