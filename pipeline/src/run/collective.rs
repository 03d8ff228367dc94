//! What the workers of a run compute together, as timely operators over
//! iteration-stamped streams: everything a worker learns from the others arrives
//! through an exchange pact, and an iteration's values are used once the input's
//! frontier has passed that iteration (every worker's part is in).
//!
//! - [`Collective::gather_at`]: each time's records from every sender, in one call.
//! - [`Collective::join_at`]: a time's records of two streams, in one call.
//! - [`all_reduce`]: the element-wise sum of every worker's chunks (a gradient),
//!   reduce-scatter by chunk index then all-gather, so each worker sums 1/W of it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use timely::ExchangeData;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::operator::Operator;
use timely::dataflow::operators::vec::Broadcast;

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
        let pact = Exchange::new(move |d: &D| route(d));
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

    fn gather_everywhere<O, L>(self, name: &str, logic: L) -> StreamVec<'scope, u64, O>
    where
        O: Clone + 'static,
        L: FnMut(u64, Vec<D>) -> Vec<O> + 'static,
    {
        // After the broadcast every worker holds every record: keep them where they are.
        let index = self.scope().index() as u64;
        self.broadcast().gather_at(name, move |_| index, logic)
    }
}

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
