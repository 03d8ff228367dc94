//! What the workers of a run compute together, as timely operators over
//! iteration-stamped streams: everything a worker learns from the others arrives
//! through an exchange pact, and an iteration's values are used once the input's
//! frontier has passed that iteration (every worker's part is in).
//!
//! - [`Collective::gather_at`]: each time's records from every sender, in one call.
//! - [`join_at`]: a time's records of two streams, in one call.
//! - [`all_reduce`]: the element-wise sum of every worker's chunks (a gradient),
//!   reduce-scatter by chunk index then all-gather, so each worker sums 1/W of it.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use timely::ExchangeData;
use timely::container::{
    CapacityContainerBuilder, ContainerBuilder, LengthPreservingContainerBuilder, PushInto,
};
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{ExchangeCore, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Map;

/// The timely operators of [`crate::run`]'s collective steps.
pub trait Collective<'scope, D> {
    /// Routes each record to worker `route(record) mod workers`, and once the
    /// frontier has passed a time, calls `logic(time, records)` with every record of
    /// that time this worker received, giving its outputs at that time.
    fn gather_at<O, R, L>(self, name: &str, route: R, logic: L) -> StreamVec<'scope, u64, O>
    where
        O: Clone + 'static,
        R: Fn(&D) -> u64 + 'static,
        L: FnMut(u64, Vec<D>) -> Vec<O> + 'static;

    /// Every record on every worker: [`Collective::gather_at`] after a broadcast.
    fn gather_everywhere<O, L>(self, name: &str, logic: L) -> StreamVec<'scope, u64, O>
    where
        O: Clone + 'static,
        L: FnMut(u64, Vec<D>) -> Vec<O> + 'static;
}

impl<'scope, D: ExchangeData + Clone> Collective<'scope, D> for StreamVec<'scope, u64, D> {
    fn gather_at<O, R, L>(self, name: &str, route: R, mut logic: L) -> StreamVec<'scope, u64, O>
    where
        O: Clone + 'static,
        R: Fn(&D) -> u64 + 'static,
        L: FnMut(u64, Vec<D>) -> Vec<O> + 'static,
    {
        let pact = ExchangeCore::<OneEach<D>, _>::new_core(move |d: &D| route(d));
        let mut stash = BTreeMap::new();
        self.unary_frontier::<CapacityContainerBuilder<Vec<O>>, _, _, _>(pact, name, move |_, _| {
            move |(input, frontier), output| {
                input.for_each(|cap, data| {
                    let t = *cap.least().expect("a stamp has a least time");
                    let (_, records) = stash.entry(t).or_insert_with(|| {
                        (cap.retain_least(0).expect("a capability"), Vec::new())
                    });
                    records.append(data);
                });
                let ready: Vec<u64> = stash
                    .keys()
                    .copied()
                    .filter(|t| !frontier.less_equal(t))
                    .collect();
                for t in ready {
                    let (cap, records) = stash.remove(&t).expect("a stashed time");
                    output
                        .session(&cap)
                        .give_iterator(logic(t, records).into_iter());
                }
            }
        })
    }

    fn gather_everywhere<O, L>(self, name: &str, mut logic: L) -> StreamVec<'scope, u64, O>
    where
        O: Clone + 'static,
        L: FnMut(u64, Vec<D>) -> Vec<O> + 'static,
    {
        // A copy of each record to every worker (the last gets the record itself).
        let peers = self.scope().peers() as u64;
        self.flat_map(move |d| {
            let mut copies: Vec<(u64, D)> = (1..peers).map(|to| (to, d.clone())).collect();
            copies.push((0, d));
            copies
        })
        .gather_at(
            name,
            |(to, _)| *to,
            move |t, records: Vec<(u64, D)>| {
                logic(t, records.into_iter().map(|(_, d)| d).collect())
            },
        )
    }
}

/// The exchange's container builder: one message per record. timely's default
/// sizes a message by the records' inline size (8 KiB of them), so a worker's whole
/// gradient (a few dozen 4 MB pieces, 32 bytes each inline) would cross processes as
/// one message of hundreds of MB, serialized whole before the first byte is sent and
/// received whole into a buffer grown by doubling before the first is read. One
/// message per record streams them: the network thread sends piece i while the
/// worker serializes piece i + 1. The records exchanged here are few and large.
struct OneEach<D> {
    pending: VecDeque<Vec<D>>,
    out: Option<Vec<D>>,
}

impl<D> Default for OneEach<D> {
    fn default() -> Self {
        Self {
            pending: VecDeque::new(),
            out: None,
        }
    }
}

impl<D> PushInto<D> for OneEach<D> {
    fn push_into(&mut self, record: D) {
        self.pending.push_back(vec![record]);
    }
}

impl<D: Clone + 'static> ContainerBuilder for OneEach<D> {
    type Container = Vec<D>;

    fn extract(&mut self) -> Option<&mut Vec<D>> {
        self.out = self.pending.pop_front();
        self.out.as_mut()
    }

    fn finish(&mut self) -> Option<&mut Vec<D>> {
        self.extract()
    }
}

impl<D: Clone + 'static> LengthPreservingContainerBuilder for OneEach<D> {}

/// Calls `logic(time, a's records, b's records)` once both streams' frontiers have
/// passed a time, on the worker that holds them (no exchange), giving its outputs at
/// that time.
pub fn join_at<'scope, A, B, O, L>(
    a: StreamVec<'scope, u64, A>,
    b: StreamVec<'scope, u64, B>,
    name: &str,
    mut logic: L,
) -> StreamVec<'scope, u64, O>
where
    A: Clone + 'static,
    B: Clone + 'static,
    O: Clone + 'static,
    L: FnMut(u64, Vec<A>, Vec<B>) -> Vec<O> + 'static,
{
    type Stash<C, A, B> = BTreeMap<u64, (Option<C>, Vec<A>, Vec<B>)>;
    let mut stash: Stash<_, A, B> = BTreeMap::new();
    a.binary_frontier::<_, CapacityContainerBuilder<Vec<O>>, _, _, _, _>(
        b,
        Pipeline,
        Pipeline,
        name,
        move |_, _| {
            move |(a, a_frontier), (b, b_frontier), output| {
                a.for_each(|cap, data| {
                    let t = *cap.least().expect("a stamp has a least time");
                    let entry = stash.entry(t).or_default();
                    entry
                        .0
                        .get_or_insert_with(|| cap.retain_least(0).expect("a capability"));
                    entry.1.append(data);
                });
                b.for_each(|cap, data| {
                    let t = *cap.least().expect("a stamp has a least time");
                    let entry = stash.entry(t).or_default();
                    entry
                        .0
                        .get_or_insert_with(|| cap.retain_least(0).expect("a capability"));
                    entry.2.append(data);
                });
                let ready: Vec<u64> = stash
                    .keys()
                    .copied()
                    .filter(|t| !a_frontier.less_equal(t) && !b_frontier.less_equal(t))
                    .collect();
                for t in ready {
                    let (cap, xs, ys) = stash.remove(&t).expect("a stashed time");
                    let cap = cap.expect("a time is stashed with its capability");
                    output
                        .session(&cap)
                        .give_iterator(logic(t, xs, ys).into_iter());
                }
            }
        },
    )
}

/// f32 values as their bytes, so that a chunk crosses processes in one copy
/// (bincode writes a `Vec<f32>` value by value).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Floats(#[serde(with = "serde_bytes")] Vec<u8>);

impl Floats {
    /// The bytes of `values` (native order: the workers of a run share a machine
    /// type).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        assert_eq!(bytes.len() % 4, 0, "f32 values take 4 bytes each");
        Self(bytes)
    }

    /// The values' bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.0.len() / 4
    }

    /// `self + other`, element-wise: in place where both buffers are aligned for
    /// f32 (as the allocator gives them), else through aligned copies.
    fn add(&mut self, other: &Floats) {
        let in_place = bytemuck::try_cast_slice_mut::<u8, f32>(&mut self.0)
            .ok()
            .zip(bytemuck::try_cast_slice::<u8, f32>(&other.0).ok());
        match in_place {
            Some((sum, other)) => sum.iter_mut().zip(other).for_each(|(s, v)| *s += v),
            None => {
                let mut sum: Vec<f32> = bytemuck::pod_collect_to_vec(&self.0);
                let other: Vec<f32> = bytemuck::pod_collect_to_vec(&other.0);
                sum.iter_mut().zip(&other).for_each(|(s, v)| *s += v);
                self.0 = bytemuck::cast_slice(&sum).to_vec();
            }
        }
    }
}

/// One worker's part of a vector to be summed across workers: chunk `index` of it,
/// from worker `from`.
pub type Chunk = (u32, u32, Floats);

/// The element-wise sum over workers of each chunk index, on every worker: each
/// worker sends chunk i to worker i mod W, which sums the W parts it receives (in
/// worker order, so every run sums alike) and broadcasts the sum. Outputs `(index,
/// how many workers sent a part, sum)`: a count short of the workers means one of
/// them failed before sending, and the caller must not use the sum.
pub fn all_reduce<'scope>(
    parts: StreamVec<'scope, u64, Chunk>,
    name: &str,
) -> StreamVec<'scope, u64, Chunk> {
    parts
        .gather_at(
            &format!("{name} reduce-scatter"),
            |(index, _, _)| u64::from(*index),
            |_, mut parts: Vec<Chunk>| {
                parts.sort_by_key(|(index, from, _)| (*index, *from));
                let mut sums: Vec<Chunk> = Vec::new();
                for (index, _, values) in parts {
                    match sums.last_mut() {
                        Some((i, senders, sum)) if *i == index => {
                            *senders += 1;
                            sum.add(&values);
                        }
                        _ => sums.push((index, 1, values)),
                    }
                }
                sums
            },
        )
        .gather_everywhere(&format!("{name} all-gather"), |_, mut sums: Vec<Chunk>| {
            sums.sort_by_key(|(index, _, _)| *index);
            sums
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exchange_sends_one_message_per_record() {
        let mut builder = OneEach::default();
        for piece in 0..3u32 {
            builder.push_into((piece, 0u32, Floats::default()));
        }
        let mut messages = Vec::new();
        while let Some(message) = builder.extract() {
            messages.push(std::mem::take(message));
        }
        assert_eq!(messages.len(), 3);
        for (piece, message) in messages.iter().enumerate() {
            assert_eq!(message.len(), 1);
            assert_eq!(message[0].0, piece as u32);
        }
        assert!(builder.finish().is_none());
    }

    #[test]
    fn floats_round_trip_their_bytes_and_add() {
        let values = [1.5f32, -2.0, 3.25];
        let mut a = Floats::from_bytes(bytemuck::cast_slice(&values).to_vec());
        assert_eq!(a.len(), 3);
        a.add(&Floats::from_bytes(
            bytemuck::cast_slice(&[0.5f32, 2.0, -0.25]).to_vec(),
        ));
        let sum: Vec<f32> = bytemuck::pod_collect_to_vec(a.bytes());
        assert_eq!(sum, [2.0, 0.0, 3.0]);

        // Across processes, as timely sends it (bincode).
        let wire = bincode::serialize(&a).unwrap();
        assert_eq!(wire.len(), 8 + 12);
        assert_eq!(bincode::deserialize::<Floats>(&wire).unwrap(), a);
    }
}
