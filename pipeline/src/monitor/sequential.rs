//! The monitor's figures computed the plain way: every query against every earlier
//! one, sets of n-grams in hash maps. The reference the live dataflow is tested
//! against, and what `pipeline report` uses over a finished run.

use std::collections::{HashMap, HashSet};

use super::figures::{IterationResult, Similar};
use super::observation::{AnswerObservation, QueryObservation};

/// State across iterations: every query seen and where each n-gram first appeared.
#[derive(Debug, Default)]
pub struct SequentialMonitor {
    seen: Vec<QueryObservation>,
    first_iteration: HashMap<u64, u64>,
}

/// Size of the intersection of two sorted, deduplicated lists.
fn shared(a: &[u64], b: &[u64]) -> u64 {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

impl SequentialMonitor {
    /// Takes in one iteration's observations and returns its result. Iterations come
    /// in increasing order.
    pub fn observe(
        &mut self,
        iteration: u64,
        queries: &[QueryObservation],
        answers: &[AnswerObservation],
    ) -> IterationResult {
        let mut queries = queries.to_vec();
        queries.sort_by_key(|q| q.key);
        let mut result = IterationResult::default();
        for q in &queries {
            let candidates = self.seen.iter().filter_map(|earlier| {
                let n = shared(&earlier.shingles, &q.shingles);
                (n > 0).then(|| Similar {
                    shared: n,
                    union: (earlier.shingles.len() + q.shingles.len()) as u64 - n,
                    earlier: earlier.key,
                })
            });
            if let Some(best) = Similar::best(candidates) {
                result.similar.insert(q.key.1, best);
            }
            self.seen.push(q.clone());
        }
        let c = &mut result.counts;
        c.queries = queries.len() as u64;
        c.query_tokens = queries.iter().map(|q| u64::from(q.tokens)).sum();
        let distinct: HashSet<u64> = queries
            .iter()
            .flat_map(|q| q.grams.iter().copied())
            .collect();
        c.grams = queries.iter().map(|q| q.grams.len() as u64).sum();
        c.distinct_grams = distinct.len() as u64;
        for gram in distinct {
            if *self.first_iteration.entry(gram).or_insert(iteration) == iteration {
                c.new_grams += 1;
            }
        }
        for a in answers {
            c.answers += 1;
            c.answer_tokens += u64::from(a.tokens);
            c.code_answers += u64::from(a.is_code);
            c.entropy_micro += a.entropy_micro;
            c.mismatch_micro += a.mismatch_micro;
            if !a.query_asks_code {
                c.plain_answers += 1;
                c.plain_code_answers += u64::from(a.is_code);
            }
            if let Some(failed) = a.judge_failed {
                c.judged += 1;
                c.judge_failures += u64::from(failed);
                c.judge_read_outs += u64::from(a.judge_read_out);
                c.judge_chars += a.judge_chars;
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersections_of_sorted_sets() {
        assert_eq!(shared(&[1, 3, 5, 7], &[2, 3, 7, 9]), 2);
        assert_eq!(shared(&[], &[1]), 0);
    }
}
