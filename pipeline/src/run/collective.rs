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

/// One worker's part of a vector to be summed across workers: chunk `index` of it,
/// from worker `from`.
pub type Chunk = (u32, u32, Vec<f32>);

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
                            sum.iter_mut().zip(&values).for_each(|(s, v)| *s += v);
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
