//! Decoding through libtorch: the prefill and every step are
//! [`InferenceWeights::forward`] over a tensor KV cache. Runs any dtype on any
//! device (bf16, CUDA, and f32 batches past the CPU decoder's).

use tch::{Kind, Tensor};

use super::Decoder;
use crate::inference::InferenceWeights;
use crate::kv_cache::KvCache;
use crate::prefill::prefill;

/// The libtorch decoder: stacked weights, and after the prefill a tensor cache with
/// its key mask.
#[derive(Debug)]
pub struct LibtorchDecoder<'a> {
    weights: InferenceWeights<'a>,
    state: Option<(KvCache, Tensor)>,
}

impl<'a> LibtorchDecoder<'a> {
    /// A decoder over `weights`.
    pub fn new(weights: InferenceWeights<'a>) -> Self {
        Self {
            weights,
            state: None,
        }
    }

    fn state(&mut self) -> &mut (KvCache, Tensor) {
        self.state.as_mut().expect("prefill before decoding")
    }
}

impl Decoder for LibtorchDecoder<'_> {
    fn prefill(&mut self, prompts: &[Vec<u32>], repeats: usize, pad: u32, capacity: i64) -> Tensor {
        let done = prefill(&self.weights, prompts, repeats, pad, capacity);
        self.state = Some((done.cache, done.key_mask));
        done.logits
    }

    fn step(&mut self, tokens: &Tensor) -> Tensor {
        let weights = &self.weights;
        let (cache, key_mask) = self.state.as_mut().expect("prefill before decoding");
        let ones = Tensor::ones([tokens.size()[0], 1], (key_mask.kind(), key_mask.device()));
        *key_mask = Tensor::cat(&[&*key_mask, &ones], 1);
        let hidden = weights.forward(&tokens.unsqueeze(1), key_mask, Some(cache));
        weights.logits(&hidden.squeeze_dim(1)).to_kind(Kind::Float)
    }

    fn retain(&mut self, rows: &[i64]) {
        let (cache, key_mask) = self.state();
        let rows = Tensor::from_slice(rows).to_device(key_mask.device());
        cache.select_rows(&rows);
        *key_mask = key_mask.index_select(0, &rows);
    }
}
