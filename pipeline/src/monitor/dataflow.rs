//! The live monitor as a differential dataflow beside the run's stages, in the same
//! timely worker. Its timestamps are iterations, as the stages' are; each iteration's
//! queries and answers are inserted once its record is assembled, and every figure is
//! maintained incrementally across the whole run:
//!
//! - near-duplicates: each query's n-gram set is keyed by n-gram and joined with
//!   itself, so only queries sharing an n-gram meet; shared counts per pair give the
//!   Jaccard similarity, and a reduce keeps each query's closest earlier query;
//! - distinct-n: the iteration's distinct (iteration, n-gram) pairs over all of them;
//! - novelty: a reduce keeps each n-gram's first iteration, counted per iteration;
//! - per-iteration sums of tokens, code answers and judge failures.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use differential_dataflow::VecCollection;
use differential_dataflow::input::{Input, InputSession};
use serde::{Deserialize, Serialize};
use timely::dataflow::ProbeHandle;
use timely::dataflow::operators::Probe;
use timely::worker::Worker;

use super::figures::{IterationResult, Similar};
use super::observation::{AnswerObservation, QueryKey, QueryObservation};

/// One figure the dataflow maintains, keyed by the iteration it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Figure {
    /// A query's closest earlier query.
    Similar(QueryKey, Similar),
    /// (queries, query tokens, n-grams with repeats) of an iteration.
    Queries(u64, [u64; 3]),
    /// Distinct n-grams of an iteration.
    Distinct(u64, u64),
    /// n-grams first seen in an iteration.
    New(u64, u64),
    /// Answer sums of an iteration: answers, tokens, code, plain, plain code, judged,
    /// judge failures, judge read-outs, judge characters, entropy and rollout mismatch
    /// (micro-nats).
    Answers(u64, [u64; 11]),
}

impl Figure {
    fn iteration(&self) -> u64 {
        match self {
            Figure::Similar(key, _) => key.0,
            Figure::Queries(t, _)
            | Figure::Distinct(t, _)
            | Figure::New(t, _)
            | Figure::Answers(t, _) => *t,
        }
    }
}

/// The figures as they stand: every update the dataflow reported, accumulated.
type Accumulated = Rc<RefCell<BTreeMap<Figure, isize>>>;

/// The live monitor's inputs and output.
pub struct LiveMonitor {
    queries: InputSession<u64, QueryObservation, isize>,
    answers: InputSession<u64, AnswerObservation, isize>,
    probe: ProbeHandle<u64>,
    figures: Accumulated,
}

/// Sums each key's values (with their multiplicities) into one array.
fn sums<const N: usize, V>(
    collection: VecCollection<'_, u64, (u64, V), isize>,
    parts: impl Fn(&V) -> [u64; N] + 'static,
) -> VecCollection<'_, u64, (u64, [u64; N]), isize>
where
    V: differential_dataflow::ExchangeData + std::hash::Hash,
{
    collection.reduce(move |_iteration, values, out| {
        let mut total = [0u64; N];
        for (value, count) in values {
            for (t, p) in total.iter_mut().zip(parts(value)) {
                *t += p * *count as u64;
            }
        }
        out.push((total, 1));
    })
}

impl LiveMonitor {
    /// Builds the monitor's dataflow in `worker`.
    pub fn new(worker: &mut Worker) -> Self {
        let figures = Accumulated::default();
        let sink = figures.clone();
        let probe = ProbeHandle::new();
        let (queries, answers) = worker.dataflow::<u64, _, _>(|scope| {
            let (query_input, queries) = scope.new_collection::<QueryObservation, isize>();
            let (answer_input, answers) = scope.new_collection::<AnswerObservation, isize>();

            let shingles = queries.clone().flat_map(|q| {
                let (key, size) = (q.key, q.shingles.len() as u64);
                q.shingles.into_iter().map(move |s| (s, (key, size)))
            });
            let similar = shingles
                .clone()
                .join(shingles)
                .flat_map(|(_, (a, b))| (a.0 < b.0).then_some((a, b)))
                .count()
                .map(|(((earlier, size_a), (key, size_b)), shared)| {
                    let shared = shared as u64;
                    let union = size_a + size_b - shared;
                    (
                        key,
                        Similar {
                            shared,
                            union,
                            earlier,
                        },
                    )
                })
                .reduce(|_key, candidates, out| {
                    let best = Similar::best(candidates.iter().map(|(s, _)| **s));
                    out.push((best.expect("reduce sees a non-empty group"), 1isize));
                })
                .map(|(key, best)| Figure::Similar(key, best));

            let grams = queries.clone().flat_map(|q| {
                let iteration = q.key.0;
                q.grams.into_iter().map(move |g| (iteration, g))
            });
            let distinct = grams.distinct();
            let distinct_counts = distinct
                .clone()
                .map(|(iteration, _)| iteration)
                .count()
                .map(|(iteration, n)| Figure::Distinct(iteration, n as u64));
            let new_counts = distinct
                .map(|(iteration, gram)| (gram, iteration))
                .reduce(|_gram, iterations, out| out.push((*iterations[0].0, 1isize)))
                .map(|(_, first)| first)
                .count()
                .map(|(iteration, n)| Figure::New(iteration, n as u64));

            let query_sums = sums(queries.map(|q| (q.key.0, q)), |q| {
                [1, u64::from(q.tokens), q.grams.len() as u64]
            })
            .map(|(iteration, s)| Figure::Queries(iteration, s));
            let answer_sums = sums(answers.map(|a| (a.key.0, a)), |a| {
                let plain = !a.query_asks_code;
                [
                    1,
                    u64::from(a.tokens),
                    u64::from(a.is_code),
                    u64::from(plain),
                    u64::from(plain && a.is_code),
                    u64::from(a.judge_failed.is_some()),
                    u64::from(a.judge_failed == Some(true)),
                    u64::from(a.judge_read_out),
                    a.judge_chars,
                    a.entropy_micro,
                    a.mismatch_micro,
                ]
            })
            .map(|(iteration, s)| Figure::Answers(iteration, s));

            similar
                .concat(distinct_counts)
                .concat(new_counts)
                .concat(query_sums)
                .concat(answer_sums)
                .inspect(move |(figure, _time, diff)| {
                    let mut all = sink.borrow_mut();
                    let count = all.entry(figure.clone()).or_insert(0);
                    *count += diff;
                    if *count == 0 {
                        all.remove(figure);
                    }
                })
                .inner
                .probe_with(&probe);
            (query_input, answer_input)
        });
        Self {
            queries,
            answers,
            probe,
            figures,
        }
    }

    /// Inserts one iteration's observations, runs the dataflow until it has caught up
    /// with them, and returns the iteration's result. Iterations come in increasing
    /// order (earlier ones, e.g. before a resume, may be fed and their results ignored).
    pub fn observe(
        &mut self,
        worker: &mut Worker,
        iteration: u64,
        queries: &[QueryObservation],
        answers: &[AnswerObservation],
    ) -> IterationResult {
        self.queries.advance_to(iteration);
        self.answers.advance_to(iteration);
        for q in queries {
            self.queries.insert(q.clone());
        }
        for a in answers {
            self.answers.insert(a.clone());
        }
        self.queries.advance_to(iteration + 1);
        self.answers.advance_to(iteration + 1);
        self.queries.flush();
        self.answers.flush();
        let next = iteration + 1;
        worker.step_or_park_while(None, || self.probe.less_than(&next));
        self.take(iteration)
    }

    /// Removes and returns the figures of `iteration`. Nothing later changes them: a
    /// query's earlier queries, an n-gram's first iteration and an iteration's sums are
    /// all complete once its own records are in.
    fn take(&self, iteration: u64) -> IterationResult {
        let mut all = self.figures.borrow_mut();
        let mine: Vec<Figure> = all
            .keys()
            .filter(|f| f.iteration() == iteration)
            .cloned()
            .collect();
        let mut result = IterationResult::default();
        let c = &mut result.counts;
        for figure in mine {
            debug_assert_eq!(all.get(&figure), Some(&1), "{figure:?}");
            all.remove(&figure);
            match figure {
                Figure::Similar((_, id), s) => {
                    result.similar.insert(id, s);
                }
                Figure::Queries(_, [n, tokens, grams]) => {
                    (c.queries, c.query_tokens, c.grams) = (n, tokens, grams);
                }
                Figure::Distinct(_, n) => c.distinct_grams = n,
                Figure::New(_, n) => c.new_grams = n,
                Figure::Answers(_, s) => {
                    [
                        c.answers,
                        c.answer_tokens,
                        c.code_answers,
                        c.plain_answers,
                        c.plain_code_answers,
                        c.judged,
                        c.judge_failures,
                        c.judge_read_outs,
                        c.judge_chars,
                        c.entropy_micro,
                        c.mismatch_micro,
                    ] = s;
                }
            }
        }
        result
    }
}
