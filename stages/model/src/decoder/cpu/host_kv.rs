//! Decoding's keys, values and attention on the host, in Rust, on the threads of a
//! [`Team`].
//!
//! Once the weights' products run on the team ([`super::panels`]), libtorch's
//! intra-op pool is down to one thread while decoding, and its attention over the
//! cache (small batched products per sequence and key/value head, then a softmax)
//! took a fifth of a batch-8 step on that one thread: it reads every cached key and
//! value once per step, which is memory-bound work for every core. Here the cache is
//! copied to host vectors after the prefill, each step appends the new position, and
//! each thread attends for a contiguous share of the (sequence, key/value head)
//! groups: one pass over the keys for the query heads of the group, a softmax, one
//! pass over the values.
//!
//! Under mixed precision the cache keeps bf16 keys and values, widened to f32 where
//! the passes read them: the prefill's and the training pass's attention take bf16
//! keys and values (libtorch's decoding steps still attend over an f32 cache), and a
//! step reads every cached position of every sequence (at 8 sequences of alpaca_eval
//! prompts, ~110 MB a step in f32, as much as SmolLM2's int8 weights). Measured on an
//! Intel Xeon (AMX, 2 vCPU), rollouts of SmolLM2-135M alternated with the f32 cache,
//! 3 pairs, medians: int8 weights 78.4 → 79.7 tok/s at batch 1 and 211.5 → 216.9 at
//! 8, bf16 weights 198.9 → 213.0 at 8.

use std::sync::Arc;

use tch::{Kind, Tensor};

use super::attention::{Attention, SPAN_STEP, attend_group, span};
use super::columns::Shared;
use super::isa::Isa;
use super::panels::{Bf16, PanelValue};
use super::team::Team;

/// Where one input row's key and value go: its sequence (a row of the cache) and the
/// position in that sequence's cache. A decoding step has one per sequence, each at
/// the next position ([`HostKv::next_places`]); the prompts' pass one per token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub row: usize,
    pub slot: usize,
}

/// Every layer's keys, `[batch, kv_heads, head_dim, capacity]` (transposed, so that
/// a query's scores over all positions are vertical multiply-adds with no horizontal
/// sums), and values, `[batch, kv_heads, capacity, head_dim]`: f32, or bf16 where
/// attention runs on bf16 keys and values elsewhere ([`HostKv::from_tensors`]).
///
/// Each sequence's tokens fill its first positions, its own count of them
/// ([`HostKv::lens`]), with no padding between: a step attends over its sequence's
/// tokens only. (Prompts of different lengths padded to the longest made a quarter
/// of a batch-32 step's attention over alpaca_eval prompts padding, masked out.)
#[derive(Debug)]
pub struct HostKv {
    store: Store,
    batch: usize,
    kv_heads: usize,
    capacity: usize,
    head_dim: usize,
    /// Each sequence's filled positions.
    lens: Vec<usize>,
    team: Arc<Team>,
}

/// The sizes of an empty cache ([`HostKv::empty`]).
#[derive(Debug, Clone, Copy)]
pub struct CacheShape {
    pub layers: usize,
    pub batch: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
}

/// The cache's values in the kind they are kept in.
#[derive(Debug)]
enum Store {
    F32(Layers<f32>),
    Bf16(Layers<Bf16>),
}

/// Every layer's keys and values, of one kind.
#[derive(Debug)]
struct Layers<T> {
    keys: Vec<Arc<Vec<T>>>,
    values: Vec<Arc<Vec<T>>>,
}

/// A value the cache keeps: f32, or bf16 (half the bytes that each step reads for
/// every cached position), widened to f32 where it is read.
trait CacheValue: PanelValue {
    /// `v` as kept.
    fn narrow(v: f32) -> Self;

    /// `t`'s values (any float kind) as kept, flat.
    fn host(t: &Tensor) -> Vec<Self>;
}

impl CacheValue for f32 {
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        v
    }

    fn host(t: &Tensor) -> Vec<Self> {
        let flat = tch::no_grad(|| t.to_kind(Kind::Float).contiguous().view([-1]));
        Vec::<f32>::try_from(&flat).expect("an f32 CPU cache")
    }
}

impl CacheValue for Bf16 {
    #[inline(always)]
    fn narrow(v: f32) -> Self {
        Bf16::round(v)
    }

    fn host(t: &Tensor) -> Vec<Self> {
        let bits = tch::no_grad(|| {
            t.to_kind(Kind::BFloat16)
                .contiguous()
                .view_dtype(Kind::Int16)
                .view([-1])
        });
        let bits = Vec::<i16>::try_from(&bits).expect("a bf16 CPU cache");
        bits.into_iter().map(|b| Bf16(b as u16)).collect()
    }
}

impl<T: CacheValue> Layers<T> {
    /// `keys` and `values` (`[batch, kv_heads, capacity, head_dim]`) on the host, each
    /// sequence's positions `order` (`[batch, filled]`) first, those past its length
    /// (`kept`, `[batch, filled]`, 1 within it) zeroed, to a capacity of `capacity`.
    fn from_tensors(
        keys: &[Tensor],
        values: &[Tensor],
        (order, kept): (&Tensor, &Tensor),
        capacity: i64,
    ) -> Self {
        let padded = |t: &Tensor| {
            tch::no_grad(|| {
                let (b, kv, _, d) = t.size4().expect("[batch, heads, positions, d]");
                let filled = order.size()[1];
                let at = order
                    .view([b, 1, filled, 1])
                    .expand([b, kv, filled, d], false);
                let kept = kept.to_kind(t.kind()).view([b, 1, filled, 1]);
                let compact = t.narrow(2, 0, filled).gather(2, &at, false) * kept;
                compact.constant_pad_nd([0, 0, 0, capacity - filled])
            })
        };
        Self {
            keys: keys
                .iter()
                .map(|k| Arc::new(T::host(&padded(k).transpose(2, 3))))
                .collect(),
            values: values
                .iter()
                .map(|v| Arc::new(T::host(&padded(v))))
                .collect(),
        }
    }

    /// `layers` layers of `per_layer` zeros each, for keys and for values.
    fn zeros(layers: usize, per_layer: usize) -> Self {
        let zeros = || {
            (0..layers)
                .map(|_| Arc::new(vec![T::narrow(0.0); per_layer]))
                .collect()
        };
        Self {
            keys: zeros(),
            values: zeros(),
        }
    }

    /// Copies positions `0..n` of sequence 0 into every other sequence, each
    /// `per_row` values a layer of keys `[kv_heads · d, capacity]` and values
    /// `[kv_heads, capacity · d]` (`d` values per position).
    fn copy_first(&mut self, n: usize, per_row: usize, capacity: usize, d: usize) {
        let outlived = "no attention part outlives its pass";
        for keys in &mut self.keys {
            let keys = Arc::get_mut(keys).expect(outlived);
            for to in (per_row..keys.len()).step_by(capacity) {
                keys.copy_within(to % per_row..to % per_row + n, to);
            }
        }
        for values in &mut self.values {
            let values = Arc::get_mut(values).expect(outlived);
            let run = capacity * d;
            for to in (per_row..values.len()).step_by(run) {
                values.copy_within(to % per_row..to % per_row + n * d, to);
            }
        }
    }

    /// Keeps the sequences at `rows`, each `per_row` values a layer.
    fn select_rows(&mut self, rows: &[usize], per_row: usize) {
        let select = |all: &Arc<Vec<T>>| {
            let mut kept = Vec::with_capacity(rows.len() * per_row);
            for &r in rows {
                kept.extend_from_slice(&all[r * per_row..(r + 1) * per_row]);
            }
            Arc::new(kept)
        };
        self.keys = self.keys.iter().map(select).collect();
        self.values = self.values.iter().map(select).collect();
    }
}

impl HostKv {
    /// A copy of cached `keys` and `values` (`[batch, kv_heads, capacity, head_dim]`
    /// per layer) whose positions `key_mask` (`[batch, filled]`, 1 = real token) says
    /// are filled, each sequence's tokens moved to its first positions, in order; kept
    /// as f32, or as bf16 when `kind` is bf16: under mixed precision, where the
    /// prefill's and the training pass's attention take bf16 keys and values.
    pub fn from_tensors(
        keys: &[Tensor],
        values: &[Tensor],
        key_mask: &Tensor,
        kind: Kind,
        team: Arc<Team>,
    ) -> Self {
        let shape = keys[0].size();
        // Room for the first pass's last block of positions ([`span`]).
        let capacity = (shape[2] as usize).next_multiple_of(SPAN_STEP);
        let (real, filled) = (key_mask.ne(0), key_mask.size()[1]);
        let positions = Tensor::arange(filled, (Kind::Int64, key_mask.device()));
        // Real positions first, in order, then the padding.
        let order =
            (real.logical_not().to_kind(Kind::Int64) * filled + &positions).argsort(1, false);
        let lens = real.sum_dim_intlist(1, false, Kind::Int64);
        let kept = positions.unsqueeze(0).lt_tensor(&lens.unsqueeze(1));
        let compact = (&order, &kept);
        let store = match kind {
            Kind::BFloat16 => {
                Store::Bf16(Layers::from_tensors(keys, values, compact, capacity as i64))
            }
            _ => Store::F32(Layers::from_tensors(keys, values, compact, capacity as i64)),
        };
        Self {
            store,
            batch: shape[0] as usize,
            kv_heads: shape[1] as usize,
            capacity,
            head_dim: shape[3] as usize,
            lens: Vec::<i64>::try_from(&lens)
                .expect("lengths")
                .into_iter()
                .map(|n| n as usize)
                .collect(),
            team,
        }
    }

    /// An empty cache of `layers` layers for `batch` sequences of up to `capacity`
    /// positions (`kv_heads` heads of `head_dim` values), kept as bf16 when `kind` is
    /// bf16, else f32: the prompts' pass on the panels fills it
    /// ([`super::prompts`]).
    pub fn empty(shape: CacheShape, kind: Kind, team: Arc<Team>) -> Self {
        let capacity = shape.capacity.next_multiple_of(SPAN_STEP);
        let per_layer = shape.batch * shape.kv_heads * capacity * shape.head_dim;
        let store = match kind {
            Kind::BFloat16 => Store::Bf16(Layers::zeros(shape.layers, per_layer)),
            _ => Store::F32(Layers::zeros(shape.layers, per_layer)),
        };
        Self {
            store,
            batch: shape.batch,
            kv_heads: shape.kv_heads,
            capacity,
            head_dim: shape.head_dim,
            lens: vec![0; shape.batch],
            team,
        }
    }

    /// The kind its values are kept in.
    #[cfg(test)]
    pub fn kind(&self) -> Kind {
        match self.store {
            Store::F32(_) => Kind::Float,
            Store::Bf16(_) => Kind::BFloat16,
        }
    }

    /// Each sequence's filled positions.
    #[cfg(test)]
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Sequences in the cache.
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Marks one more position of every sequence as filled, once every layer has
    /// appended it.
    pub fn advance(&mut self) {
        self.lens.iter_mut().for_each(|n| *n += 1);
    }

    /// Marks each sequence's first `lens` positions as filled (after the prompts'
    /// pass).
    pub fn fill(&mut self, lens: Vec<usize>) {
        assert!(
            lens.len() == self.batch && lens.iter().all(|&n| n <= self.capacity),
            "{lens:?} positions in {} sequences of {}",
            self.batch,
            self.capacity
        );
        self.lens = lens;
    }

    /// Each sequence's next position: a decoding step's places.
    pub fn next_places(&self) -> Vec<Place> {
        self.lens
            .iter()
            .enumerate()
            .map(|(row, &slot)| Place { row, slot })
            .collect()
    }

    /// Copies the first `n` positions of sequence 0, in every layer, to every other
    /// sequence: a prefix all prompts share, run once.
    pub fn copy_first(&mut self, n: usize) {
        let per_row = self.kv_heads * self.capacity * self.head_dim;
        let (capacity, d) = (self.capacity, self.head_dim);
        match &mut self.store {
            Store::F32(layers) => layers.copy_first(n, per_row, capacity, d),
            Store::Bf16(layers) => layers.copy_first(n, per_row, capacity, d),
        }
    }

    /// Keeps only the sequences at `rows`.
    pub fn select_rows(&mut self, rows: &[usize]) {
        let per_row = self.kv_heads * self.capacity * self.head_dim;
        match &mut self.store {
            Store::F32(layers) => layers.select_rows(rows, per_row),
            Store::Bf16(layers) => layers.select_rows(rows, per_row),
        }
        self.lens = rows.iter().map(|&r| self.lens[r]).collect();
        self.batch = rows.len();
    }

    /// Layer `layer`'s attention of input rows at `places` (one each): writes each
    /// row's key and value (`[rows, kv_heads, head_dim]` each, rotated keys) at its
    /// place, then attends with its queries (`q`, `[rows, heads, head_dim]`, rotated)
    /// over its sequence's positions up to its own. Returns `[rows, heads ·
    /// head_dim]`.
    pub fn attend(
        &mut self,
        layer: usize,
        q: Vec<f32>,
        (k, v): (&[f32], &[f32]),
        places: &[Place],
    ) -> Vec<f32> {
        let geometry = Geometry {
            batch: self.batch,
            kv_heads: self.kv_heads,
            capacity: self.capacity,
            head_dim: self.head_dim,
            team: &self.team,
        };
        let rows = Rows { q, k, v, places };
        match &mut self.store {
            Store::F32(layers) => geometry.attend(layers, layer, &rows),
            Store::Bf16(layers) => geometry.attend(layers, layer, &rows),
        }
    }
}

/// The cache's sizes, and the team that attends.
#[derive(Clone, Copy)]
struct Geometry<'a> {
    batch: usize,
    kv_heads: usize,
    capacity: usize,
    head_dim: usize,
    team: &'a Team,
}

/// [`HostKv::attend`]'s input rows.
struct Rows<'a> {
    q: Vec<f32>,
    k: &'a [f32],
    v: &'a [f32],
    places: &'a [Place],
}

impl Geometry<'_> {
    /// [`HostKv::attend`] over `layers`.
    fn attend<T: CacheValue>(
        self,
        layers: &mut Layers<T>,
        layer: usize,
        rows: &Rows<'_>,
    ) -> Vec<f32> {
        let (kv, cap, d) = (self.kv_heads, self.capacity, self.head_dim);
        for place in rows.places {
            assert!(
                place.row < self.batch && place.slot < cap,
                "KV cache overflow: {place:?} in {} sequences of {cap} positions",
                self.batch
            );
        }
        let outlived = "no attention part outlives its step";
        let keys = Arc::get_mut(&mut layers.keys[layer]).expect(outlived);
        for (place, key) in rows.places.iter().zip(rows.k.chunks_exact(kv * d)) {
            let groups = keys[place.row * kv * d * cap..].chunks_exact_mut(d * cap);
            for (group, key) in groups.zip(key.chunks_exact(d)) {
                for (column, &value) in group.chunks_exact_mut(cap).zip(key) {
                    column[place.slot] = T::narrow(value);
                }
            }
        }
        let values = Arc::get_mut(&mut layers.values[layer]).expect(outlived);
        for (place, value) in rows.places.iter().zip(rows.v.chunks_exact(kv * d)) {
            let groups = values[place.row * kv * cap * d..].chunks_exact_mut(cap * d);
            for (group, value) in groups.zip(value.chunks_exact(d)) {
                for (slot, &value) in group[place.slot * d..][..d].iter_mut().zip(value) {
                    *slot = T::narrow(value);
                }
            }
        }
        let heads = rows.q.len() / (rows.places.len() * d);
        let per_group = heads / kv;
        let parts = self.team.size();
        let (keys, values) = (&layers.keys[layer], &layers.values[layer]);
        let longest = rows.places.iter().map(|p| p.slot + 1).max().unwrap_or(0);
        let scale = 1.0 / (d as f32).sqrt();
        let isa = Isa::detected();
        // Each thread takes a contiguous run of the query heads (row by row, group by
        // group, a group's heads together), so that batch 1's few groups (SmolLM2: 3
        // of 3 heads each) split evenly over the threads; a group cut between two
        // threads has its cache read by both.
        let count = rows.places.len() * heads;
        let bound = |i: usize| count * i / parts;
        let mut out = vec![0f32; count * d];
        let bounds = (0..parts)
            .map(|i| (bound(i) * d, bound(i + 1) * d))
            .collect();
        let shared = Shared::new(&mut out, 1, bounds);
        self.team.each(&|i| {
            let (first, end) = (bound(i), bound(i + 1));
            let mut out = shared.take(i);
            let out = out.segment(0, 0, (end - first) * d);
            let mut scores = vec![0f32; per_group * span(longest, cap)];
            let mut head = first;
            while head < end {
                // The head's group among every row's groups, and its group in the cache.
                let g = head / per_group;
                let stop = ((g + 1) * per_group).min(end);
                let place = rows.places[g / kv];
                let cached = place.row * kv + g % kv;
                let total = place.slot + 1;
                let span = span(total, cap);
                let group = Attention {
                    queries: &rows.q[head * d..stop * d],
                    keys: &keys[cached * d * cap..(cached + 1) * d * cap],
                    values: &values[cached * cap * d..(cached * cap + total) * d],
                    total,
                    scale,
                    span,
                };
                let out = &mut out[(head - first) * d..(stop - first) * d];
                attend_group(isa, &group, &mut scores[..(stop - head) * span], out);
                head = stop;
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// libtorch's grouped-query attention of one query position `q` (`[b, heads,
    /// d]`) over `keys` and `values` (`[b, kv_heads, positions, d]`).
    fn libtorch_attention(
        q: &Tensor,
        keys: &Tensor,
        values: &Tensor,
        mask: Option<&Tensor>,
    ) -> Tensor {
        let repeats = q.size()[1] / keys.size()[1];
        let rep = |t: &Tensor| t.repeat_interleave_self_int(repeats, 1, None);
        Tensor::scaled_dot_product_attention(
            &q.unsqueeze(2),
            &rep(keys),
            &rep(values),
            mask,
            0.0,
            false,
            None,
            false,
        )
        .squeeze_dim(2)
    }

    #[test]
    fn every_team_size_attends_alike_bit_for_bit_with_groups_cut_between_threads() {
        // SmolLM2's shape at batch 1 and 2 (3 key/value heads of 3 query heads, 64
        // values each): 9 or 18 heads over 1 to 4 threads, so that groups are cut
        // between threads at every place (4 | 5, 3 | 3 | 3, 2 | 2 | 2 | 3, ...).
        let f = (Kind::Float, Device::Cpu);
        for b in [1i64, 2] {
            let (kv, h, d, cap, len) = (3i64, 9i64, 64i64, 40i64, 33i64);
            let keys = vec![Tensor::randn([b, kv, cap, d], f)];
            let values = vec![Tensor::randn([b, kv, cap, d], f)];
            let flat = |t: Tensor| Vec::<f32>::try_from(&t.view([-1])).unwrap();
            let (q, k, v) = (
                flat(Tensor::randn([b, h, d], f)),
                flat(Tensor::randn([b, kv, d], f)),
                flat(Tensor::randn([b, kv, d], f)),
            );
            let attend = |threads: usize| {
                let team = Arc::new(Team::new(threads));
                let filled = Tensor::ones([b, len], (Kind::Int64, Device::Cpu));
                let mut host = HostKv::from_tensors(&keys, &values, &filled, Kind::Float, team);
                let places = host.next_places();
                host.attend(0, q.clone(), (&k, &v), &places)
            };
            let one = attend(1);
            assert!(one.iter().all(|x| x.is_finite()));
            for threads in 2..=4 {
                let got = attend(threads);
                let same = got
                    .iter()
                    .zip(&one)
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "batch {b}, {threads} threads");
            }
        }
    }

    #[test]
    fn host_attention_equals_libtorchs_over_padded_prompts_and_dropped_rows() {
        let f = (Kind::Float, Device::Cpu);
        // A short cache and head, and one long and wide enough that both passes
        // take every width of block (64, 8 and 1 values).
        // Kept as bf16, the cache gives attention over bf16-rounded keys and values.
        let shapes = [(9i64, 20i64, 5i64), (80, 74, 74)];
        for ((cap, d, len), kind) in shapes
            .into_iter()
            .flat_map(|s| [(s, Kind::Float), (s, Kind::BFloat16)])
        {
            let kept = |t: &Tensor| t.to_kind(kind).to_kind(Kind::Float);
            let (b, kv, h) = match d {
                20 => (3i64, 2i64, 6i64),
                _ => (3, 1, 5),
            };
            let keys: Vec<Tensor> = (0..2).map(|_| Tensor::randn([b, kv, cap, d], f)).collect();
            let values: Vec<Tensor> = (0..2).map(|_| Tensor::randn([b, kv, cap, d], f)).collect();
            // Sequence 1 has two padding positions at the front, sequence 2 one in
            // the middle: the host cache holds each sequence's tokens first.
            let key_mask = Tensor::ones([b, len], (Kind::Int64, Device::Cpu));
            let _ = key_mask.get(1).narrow(0, 0, 2).fill_(0);
            let _ = key_mask.get(2).narrow(0, 2, 1).fill_(0);
            let blocked = |width: i64, rows: &[i64]| {
                let mut mask = vec![0f32; (rows.len() as i64 * width) as usize];
                for (i, &r) in rows.iter().enumerate() {
                    for p in 0..len {
                        if key_mask.int64_value(&[r, p]) == 0 {
                            mask[i * width as usize + p as usize] = f32::MIN / 2.0;
                        }
                    }
                }
                Tensor::from_slice(&mask).view([rows.len() as i64, 1, 1, width])
            };
            for threads in [1, 2, 3] {
                let mut host = HostKv::from_tensors(
                    &keys,
                    &values,
                    &key_mask,
                    kind,
                    Arc::new(Team::new(threads)),
                );
                assert_eq!(host.kind(), kind);
                let n = len as usize;
                assert_eq!(host.lens(), [n, n - 2, n - 1]);
                let q = Tensor::randn([b, h, d], f);
                let (k, v) = (Tensor::randn([b, kv, d], f), Tensor::randn([b, kv, d], f));
                let host_q = Vec::<f32>::try_from(&q.view([-1])).unwrap();
                let flat = |t: &Tensor| Vec::<f32>::try_from(&t.contiguous().view([-1])).unwrap();
                let places = host.next_places();
                let got = host.attend(1, host_q, (&flat(&k), &flat(&v)), &places);
                let got = Tensor::from_slice(&got).view([b, h, d]);
                // libtorch: the layer's cache with the new position, grouped-query attention.
                let all_k = kept(&Tensor::cat(
                    &[keys[1].narrow(2, 0, len), k.unsqueeze(2)],
                    2,
                ));
                let all_v = kept(&Tensor::cat(
                    &[values[1].narrow(2, 0, len), v.unsqueeze(2)],
                    2,
                ));
                let want =
                    libtorch_attention(&q, &all_k, &all_v, Some(&blocked(len + 1, &[0, 1, 2])));
                let diff = (&got - &want).abs().max().double_value(&[]);
                assert!(
                    diff < 1e-5,
                    "{kind:?}, {threads} threads, {len} + 1 positions of {d}: {diff}"
                );
                // Dropping sequence 0 keeps the others' caches.
                host.advance();
                host.select_rows(&[2, 1]);
                assert_eq!((host.batch_size(), host.lens()), (2, &[n, n - 1][..]));
                let q2 = Tensor::randn([2, h, d], f);
                let (k2, v2) = (Tensor::randn([2, kv, d], f), Tensor::randn([2, kv, d], f));
                let places = host.next_places();
                let got2 = host.attend(1, flat(&q2), (&flat(&k2), &flat(&v2)), &places);
                let got2 = Tensor::from_slice(&got2).view([2, h, d]);
                let rows = Tensor::from_slice(&[2i64, 1]);
                let all_k2 = kept(&Tensor::cat(
                    &[all_k.index_select(0, &rows), k2.unsqueeze(2)],
                    2,
                ));
                let all_v2 = kept(&Tensor::cat(
                    &[all_v.index_select(0, &rows), v2.unsqueeze(2)],
                    2,
                ));
                let want2 =
                    libtorch_attention(&q2, &all_k2, &all_v2, Some(&blocked(len + 2, &[2, 1])));
                let diff2 = (&got2 - &want2).abs().max().double_value(&[]);
                assert!(
                    diff2 < 1e-5,
                    "{kind:?}, {threads} threads after dropping a row: {diff2}"
                );
            }
        }
    }
}
