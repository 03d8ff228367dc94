//! The key/value cache for incremental decoding: one preallocated buffer per layer,
//! filled in place, so a decoding step allocates no new cache memory.

use tch::{Device, Kind, Tensor};

/// Keys and values of every layer for a batch of sequences, `[batch, kv_heads,
/// capacity, head_dim]` each, of which the first `len` positions are filled.
#[derive(Debug)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: i64,
    capacity: i64,
}

impl KvCache {
    /// An empty cache for `batch` sequences of up to `capacity` positions.
    pub fn new(
        layers: i64,
        batch: i64,
        kv_heads: i64,
        capacity: i64,
        head_dim: i64,
        kind: Kind,
        device: Device,
    ) -> Self {
        let buffer = || Tensor::zeros([batch, kv_heads, capacity, head_dim], (kind, device));
        Self {
            keys: (0..layers).map(|_| buffer()).collect(),
            values: (0..layers).map(|_| buffer()).collect(),
            len: 0,
            capacity,
        }
    }

    /// Every layer's keys and values (`[batch, kv_heads, capacity, head_dim]` each),
    /// for a decoder that keeps them elsewhere.
    pub fn layers(&self) -> (&[Tensor], &[Tensor]) {
        (&self.keys, &self.values)
    }

    /// Positions filled so far.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most positions the cache holds.
    pub fn capacity(&self) -> i64 {
        self.capacity
    }

    /// Sequences in the cache.
    pub fn batch_size(&self) -> i64 {
        self.keys.first().map_or(0, |k| k.size()[0])
    }

    /// Writes layer `layer`'s new keys and values (`[batch, kv_heads, new, head_dim]`)
    /// after the filled positions and returns all keys and values so far. The caller
    /// advances the length once every layer is written ([`KvCache::advance`]).
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> (Tensor, Tensor) {
        let new = k.size()[2];
        let (mut k_slot, mut v_slot) = self.slots(layer, new);
        k_slot.copy_(k);
        v_slot.copy_(v);
        self.filled(layer, new)
    }

    /// Layer `layer`'s next `new` positions, `[batch, kv_heads, new, head_dim]` each,
    /// to be written in place (keys, values).
    pub fn slots(&self, layer: usize, new: i64) -> (Tensor, Tensor) {
        assert!(
            self.len + new <= self.capacity,
            "KV cache overflow: {} + {new} > {}",
            self.len,
            self.capacity
        );
        (
            self.keys[layer].narrow(2, self.len, new),
            self.values[layer].narrow(2, self.len, new),
        )
    }

    /// Layer `layer`'s keys and values up to and including the `new` positions after
    /// the filled ones.
    pub fn filled(&self, layer: usize, new: i64) -> (Tensor, Tensor) {
        (
            self.keys[layer].narrow(2, 0, self.len + new),
            self.values[layer].narrow(2, 0, self.len + new),
        )
    }

    /// Writes every sequence of `part` (its filled positions) into rows `rows` of this
    /// cache, right-aligned to end at position `end`. The caller then advances the
    /// length ([`KvCache::advance`]).
    pub fn place(&mut self, rows: &Tensor, part: &KvCache, end: i64) {
        let n = part.len;
        assert!(
            n <= end && end <= self.capacity,
            "{n} positions cannot end at {end}"
        );
        let pairs = self.keys.iter_mut().zip(&part.keys);
        for (mine, theirs) in pairs.chain(self.values.iter_mut().zip(&part.values)) {
            let _ = mine
                .narrow(2, end - n, n)
                .index_copy_(0, rows, &theirs.narrow(2, 0, n));
        }
    }

    /// Marks `new` more positions as filled.
    pub fn advance(&mut self, new: i64) {
        self.len += new;
    }

    /// A new cache of the sequences at `rows` (int64 indices, repeats allowed), with
    /// this one's length and capacity.
    pub fn rows(&self, rows: &Tensor) -> KvCache {
        let select = |ts: &[Tensor]| ts.iter().map(|t| t.index_select(0, rows)).collect();
        KvCache {
            keys: select(&self.keys),
            values: select(&self.values),
            len: self.len,
            capacity: self.capacity,
        }
    }

    /// Keeps only the sequences at `rows` (int64 indices), e.g. to drop finished ones,
    /// or to repeat a shared prompt's cache for several answers.
    pub fn select_rows(&mut self, rows: &Tensor) {
        for t in self.keys.iter_mut().chain(self.values.iter_mut()) {
            *t = t.index_select(0, rows);
        }
    }
}
