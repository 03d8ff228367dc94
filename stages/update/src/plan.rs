//! Who trains which sequences of an iteration, in which micro-batch.
//!
//! The loss's sequences come in *pieces* that share a prompt: a query's answers (its
//! solver prompt computed once, at most `micro_batch_size` answers a piece), and the
//! challenger's queries (Box 1 computed once for `micro_batch_size` queries). Each
//! piece is costed by the token positions it passes through the model, and the pieces
//! are dealt out to the workers by longest-processing-time: largest first, each to the
//! worker with the least so far. Then each worker's answer pieces, in query order, are
//! packed into micro-batches of at most `micro_batch_size` answers (several queries'
//! answers in one pass when G is smaller: a pass has a cost its tokens do not shrink,
//! the weights' gradient); the challenger's pieces stay alone (Box 1 is several times
//! an answer prompt, and the rows of one pass are padded to the longest). Every worker
//! computes the same plan from the iteration's tallies, so each owner knows where to
//! send its sequences and each trainer which micro-batches it gets.
//!
//! Keeping a query's rows on the worker that played it would give every worker a
//! share of the challenger's queries, and with it a pass over Box 1 of its own: a
//! prompt of ~420 tokens against ~64 per query, paid once per worker. Here it is paid
//! once per unit, as on one worker.

use std::collections::BTreeMap;

use arrow::array::{Array, Float64Array, ListArray, UInt32Array};
use lsp_schemas::columns::*;
use lsp_schemas::{AdvantageBatch, TypedBatch};
use lsp_stage::QueryTally;
use serde::{Deserialize, Serialize};

use crate::error::{Result, UpdateError};

/// Which sequence of an iteration: a query's answer, or the query itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ItemKey {
    /// The query.
    pub query_id: u32,
    /// The answer's index; `None` for the query (the challenger's sequence).
    pub answer_index: Option<u32>,
}

/// One sequence the loss covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Which it is.
    pub key: ItemKey,
    pub(crate) prompt: Vec<u32>,
    pub(crate) completion: Vec<u32>,
    /// The sampler's log-probs of `completion`, computed while generating (PPO's old
    /// policy, and the other side of the rollout/training mismatch).
    pub(crate) old: Vec<f32>,
    pub(crate) advantage: f64,
}

impl Item {
    /// Whether it trains the challenger (a query) rather than the solver.
    pub fn challenger(&self) -> bool {
        self.key.answer_index.is_none()
    }

    /// Whether it has anything to train or measure (a query from data has neither
    /// tokens nor prompt).
    pub(crate) fn trainable(&self) -> bool {
        !self.completion.is_empty() && !self.prompt.is_empty()
    }
}

/// Sequences that share a prompt, dealt to a worker whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Piece {
    /// Answers `chunk · m ..` of a query (by rank of answer index), m the micro-batch size.
    Answers { query_id: u32, chunk: u32 },
    /// The challenger's queries `chunk · m ..` (by rank of query id).
    Queries { chunk: u32 },
}

/// An iteration's micro-batches and the worker that trains each.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Each micro-batch's index (into the plan's micro-batches, in order) and worker,
    /// by piece.
    pieces: BTreeMap<Piece, (u32, u32)>,
    micro_batch: usize,
    /// The rank of each query the challenger is trained on.
    query_rank: BTreeMap<u32, u32>,
}

impl Plan {
    /// The plan for an iteration of `tallies` (every worker's) over `workers` workers,
    /// `micro_batch` sequences a pass.
    pub fn balance(tallies: &[QueryTally], workers: usize, micro_batch: usize) -> Self {
        let m = micro_batch.max(1) as u64;
        let mut tallies: Vec<&QueryTally> = tallies.iter().collect();
        tallies.sort_by_key(|t| t.query_id);
        // Each piece with its sequences and cost.
        let mut costed: Vec<(Piece, u64, u64)> = Vec::new();
        for t in &tallies {
            let rows = u64::from(t.rows);
            for chunk in 0..rows.div_ceil(m) {
                let n = m.min(rows - chunk * m);
                let tokens = t.answer_tokens * n / rows.max(1);
                costed.push((
                    Piece::Answers {
                        query_id: t.query_id,
                        chunk: chunk as u32,
                    },
                    n,
                    t.answer_prompt_tokens + tokens,
                ));
            }
        }
        let trained: Vec<&&QueryTally> = tallies.iter().filter(|t| trains_challenger(t)).collect();
        let query_rank = trained
            .iter()
            .enumerate()
            .map(|(rank, t)| (t.query_id, rank as u32))
            .collect();
        for (chunk, queries) in trained.chunks(m as usize).enumerate() {
            let prompt = queries.iter().map(|t| t.prompt_tokens).max().unwrap_or(0);
            let tokens: u64 = queries.iter().map(|t| t.query_tokens).sum();
            costed.push((
                Piece::Queries {
                    chunk: chunk as u32,
                },
                queries.len() as u64,
                prompt + tokens,
            ));
        }
        // Longest first (ties in piece order), each to the least loaded worker (ties to
        // the lowest index).
        let mut order: Vec<usize> = (0..costed.len()).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(costed[i].2), costed[i].0));
        let mut load = vec![0u64; workers.max(1)];
        let mut worker_of = vec![0u32; costed.len()];
        for i in order {
            let w = (0..load.len())
                .min_by_key(|&w| (load[w], w))
                .expect("at least one worker");
            load[w] += costed[i].2;
            worker_of[i] = w as u32;
        }
        // Each worker's answer pieces, in piece order, packed into micro-batches of at
        // most m sequences; a challenger's piece is a micro-batch of its own.
        let mut pieces = BTreeMap::new();
        let mut batches = 0u32;
        for worker in 0..load.len() as u32 {
            let mut open: Option<(u32, u64)> = None;
            for (i, &(piece, rows, _)) in costed.iter().enumerate() {
                if worker_of[i] != worker {
                    continue;
                }
                let index = match (piece, open) {
                    (Piece::Answers { .. }, Some((index, held))) if held + rows <= m => {
                        open = Some((index, held + rows));
                        index
                    }
                    (Piece::Answers { .. }, _) => {
                        open = Some((batches, rows));
                        batches += 1;
                        batches - 1
                    }
                    (Piece::Queries { .. }, _) => {
                        batches += 1;
                        batches - 1
                    }
                };
                pieces.insert(piece, (index, worker));
            }
        }
        Self {
            pieces,
            micro_batch: m as usize,
            query_rank,
        }
    }

    /// Each of `items` (one owner's, every answer of each of its queries among them)
    /// with its micro-batch (an index into the plan) and the worker that trains it;
    /// items with nothing to train are left out. An item the plan has no micro-batch
    /// for (its query not in the tallies the plan was made from) is an error.
    pub fn route(&self, items: Vec<Item>) -> Result<Vec<(u32, u32, Item)>> {
        // Each answer's rank among its query's answers.
        let mut answers: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for item in &items {
            if let Some(a) = item.key.answer_index {
                answers.entry(item.key.query_id).or_default().push(a);
            }
        }
        answers.values_mut().for_each(|a| a.sort_unstable());
        let m = self.micro_batch as u32;
        items
            .into_iter()
            .filter(Item::trainable)
            .map(|item| {
                let key = item.key;
                let piece = match key.answer_index {
                    Some(a) => {
                        let rank = answers[&key.query_id]
                            .binary_search(&a)
                            .expect("ranked above") as u32;
                        Some(Piece::Answers {
                            query_id: key.query_id,
                            chunk: rank / m,
                        })
                    }
                    None => self
                        .query_rank
                        .get(&key.query_id)
                        .map(|rank| Piece::Queries { chunk: rank / m }),
                };
                let (index, worker) = piece
                    .and_then(|piece| self.pieces.get(&piece).copied())
                    .ok_or_else(|| {
                        UpdateError::Plan(format!(
                            "no micro-batch for {key:?}: its query's tally is missing or \
                             says it is not trained"
                        ))
                    })?;
                Ok((worker, index, item))
            })
            .collect()
    }

    /// The micro-batches of a worker's routed `items` (every owner's), in plan order.
    pub fn micro_batches(routed: Vec<(u32, Item)>) -> Vec<Vec<Item>> {
        let mut by_unit: BTreeMap<u32, Vec<Item>> = BTreeMap::new();
        for (unit, item) in routed {
            by_unit.entry(unit).or_default().push(item);
        }
        by_unit
            .into_values()
            .map(|mut items| {
                items.sort_by_key(|i| i.key);
                items
            })
            .collect()
    }

    /// A micro-batch's token positions, as its pass computes them: its distinct
    /// prompts' (each once) and its completions'.
    pub fn tokens(micro_batch: &[Item]) -> (usize, usize) {
        let mut prompts: Vec<&[u32]> = micro_batch.iter().map(|i| i.prompt.as_slice()).collect();
        prompts.sort_unstable();
        prompts.dedup();
        let completions = micro_batch.iter().map(|i| i.completion.len()).sum();
        (prompts.iter().map(|p| p.len()).sum(), completions)
    }

    /// The whole of `items` on one worker, in micro-batches.
    pub fn local(&self, items: Vec<Item>) -> Result<Vec<Vec<Item>>> {
        Ok(Self::micro_batches(
            self.route(items)?
                .into_iter()
                .map(|(_, unit, item)| (unit, item))
                .collect(),
        ))
    }
}

/// Whether a query's own sequence is trained (the challenger's): it has a challenger
/// reward, a prompt and tokens.
fn trains_challenger(t: &QueryTally) -> bool {
    t.challenger_reward.is_some() && t.query_tokens > 0 && t.prompt_tokens > 0
}

/// The tallies of `batch` taken as the whole iteration (what the workers of a run
/// gather before the advantage stage).
pub(crate) fn tallies_of(batch: &AdvantageBatch) -> Result<Vec<QueryTally>> {
    let ids = batch.column::<UInt32Array>(QUERY_ID)?;
    let challenger = batch.column::<Float64Array>(CHALLENGER_REWARD)?;
    let adv_challenger = batch.column::<Float64Array>(ADV_CHALLENGER)?;
    let answers = batch.column::<ListArray>(ANSWER_TOKEN_IDS)?;
    let answer_prompts = batch.column::<ListArray>(ANSWER_PROMPT_TOKEN_IDS)?;
    let queries = batch.column::<ListArray>(QUERY_TOKEN_IDS)?;
    let prompts = batch.column::<ListArray>(PROMPT_TOKEN_IDS)?;
    let mut tallies: BTreeMap<u32, QueryTally> = BTreeMap::new();
    for row in 0..batch.num_rows() {
        let tally = tallies.entry(ids.value(row)).or_insert_with(|| QueryTally {
            query_id: ids.value(row),
            rows: 0,
            challenger_reward: (!adv_challenger.is_null(row) && !challenger.is_null(row))
                .then(|| challenger.value(row)),
            answer_tokens: 0,
            query_tokens: queries.value_length(row) as u64,
            prompt_tokens: prompts.value_length(row) as u64,
            answer_prompt_tokens: answer_prompts.value_length(row) as u64,
        });
        tally.rows += 1;
        tally.answer_tokens += answers.value_length(row) as u64;
    }
    Ok(tallies.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(query_id: u32, rows: u32, challenger: bool) -> QueryTally {
        QueryTally {
            query_id,
            rows,
            challenger_reward: challenger.then_some(0.5),
            answer_tokens: 64 * u64::from(rows),
            query_tokens: 64,
            prompt_tokens: 420,
            answer_prompt_tokens: 80,
        }
    }

    fn item(query_id: u32, answer_index: Option<u32>) -> Item {
        Item {
            key: ItemKey {
                query_id,
                answer_index,
            },
            prompt: vec![1; 8],
            completion: vec![2; 4],
            old: vec![-1.0; 4],
            advantage: 0.0,
        }
    }

    #[test]
    fn a_prompt_its_micro_batch_shares_counts_once() {
        let mut batch = vec![item(3, Some(0)), item(3, Some(1)), item(3, Some(2))];
        batch[1].completion.push(5);
        assert_eq!(Plan::tokens(&batch), (8, 13));
        // Another prompt (the challenger's queries of another Box 1) counts again.
        let mut other = item(4, None);
        other.prompt = vec![7; 5];
        batch.push(other);
        assert_eq!(Plan::tokens(&batch), (13, 17));
        assert_eq!(Plan::tokens(&[]), (0, 0));
    }

    /// Every item of queries `ids` with `g` answers each.
    fn items(ids: &[u32], g: u32) -> Vec<Item> {
        ids.iter()
            .flat_map(|&q| (0..g).map(move |a| item(q, Some(a))).chain([item(q, None)]))
            .collect()
    }

    fn loads(plan: &Plan, tallies: &[QueryTally]) -> Vec<usize> {
        let mut per_worker = vec![0; 4];
        for (worker, _, _) in plan
            .route(items(
                &tallies.iter().map(|t| t.query_id).collect::<Vec<_>>(),
                tallies[0].rows,
            ))
            .unwrap()
        {
            per_worker[worker as usize] += 1;
        }
        per_worker
    }

    #[test]
    fn the_challengers_queries_go_to_one_worker_and_the_answers_balance_them() {
        // N = 4, G = 4, micro-batches of 4, two workers: Box 1 with the four queries
        // (420 + 256) and one query's answers (80 + 256) on one worker, three queries'
        // answers on the other.
        let tallies: Vec<QueryTally> = (0..4).map(|q| tally(q, 4, true)).collect();
        let plan = Plan::balance(&tallies, 2, 4);
        let routed = plan.route(items(&[0, 1, 2, 3], 4)).unwrap();
        let queries: Vec<u32> = routed
            .iter()
            .filter(|(_, _, i)| i.challenger())
            .map(|(w, _, _)| *w)
            .collect();
        assert_eq!(queries, [0, 0, 0, 0]);
        assert_eq!(loads(&plan, &tallies)[..2], [8, 12]);
        // Each query's answers stay together, in one micro-batch.
        for q in 0..4 {
            let units: Vec<(u32, u32)> = routed
                .iter()
                .filter(|(_, _, i)| i.key.query_id == q && !i.challenger())
                .map(|(w, u, _)| (*w, *u))
                .collect();
            assert_eq!(units.len(), 4);
            assert!(units.iter().all(|u| *u == units[0]), "{units:?}");
        }
    }

    #[test]
    fn one_worker_trains_everything_in_micro_batches_that_share_a_prompt() {
        let tallies: Vec<QueryTally> = (0..3).map(|q| tally(q, 5, true)).collect();
        let plan = Plan::balance(&tallies, 1, 4);
        let batches = plan.local(items(&[0, 1, 2], 5)).unwrap();
        let shape: Vec<Vec<ItemKey>> = batches
            .iter()
            .map(|b| b.iter().map(|i| i.key).collect())
            .collect();
        // Per query: answers 0–3, then 4; then the three queries together.
        assert_eq!(shape.len(), 3 * 2 + 1);
        for b in &shape {
            assert!(b.len() <= 4);
            let query_batch = b[0].answer_index.is_none();
            assert!(b.iter().all(|k| k.answer_index.is_none() == query_batch));
            if !query_batch {
                assert!(b.iter().all(|k| k.query_id == b[0].query_id));
            }
        }
        let all: usize = shape.iter().map(Vec::len).sum();
        assert_eq!(all, 3 * 5 + 3);
    }

    #[test]
    fn answers_of_several_queries_share_a_micro_batch_up_to_its_size() {
        // N = 5, G = 2, micro-batches of 8: on one worker, queries 0–3's answers in one
        // pass, query 4's in another, the challenger's five queries in a third.
        let tallies: Vec<QueryTally> = (0..5).map(|q| tally(q, 2, true)).collect();
        let shape = |plan: &Plan| -> Vec<Vec<ItemKey>> {
            let routed = plan.route(items(&[0, 1, 2, 3, 4], 2)).unwrap();
            Plan::micro_batches(routed.into_iter().map(|(_, u, i)| (u, i)).collect())
                .iter()
                .map(|b| b.iter().map(|i| i.key).collect())
                .collect()
        };
        let one = shape(&Plan::balance(&tallies, 1, 8));
        let sizes: Vec<usize> = one.iter().map(Vec::len).collect();
        assert_eq!(sizes, [8, 2, 5], "{one:?}");
        assert!(
            one[0]
                .iter()
                .all(|k| k.query_id < 4 && k.answer_index.is_some())
        );
        assert!(one[2].iter().all(|k| k.answer_index.is_none()));
        // Two workers: each packs its own pieces, never another's.
        let plan = Plan::balance(&tallies, 2, 8);
        let routed = plan.route(items(&[0, 1, 2, 3, 4], 2)).unwrap();
        let mut worker_of_batch = BTreeMap::new();
        for (worker, unit, _) in &routed {
            assert_eq!(*worker_of_batch.entry(*unit).or_insert(*worker), *worker);
        }
        let answers_per_worker: Vec<usize> = (0..2)
            .map(|w| {
                routed
                    .iter()
                    .filter(|(x, _, i)| *x == w && !i.challenger())
                    .count()
            })
            .collect();
        assert_eq!(answers_per_worker.iter().sum::<usize>(), 10);
        assert!(
            answers_per_worker.iter().all(|&n| n > 0),
            "{answers_per_worker:?}"
        );
        // G larger than the micro-batch: each query's answers split, never mixed.
        let tallies: Vec<QueryTally> = (0..2).map(|q| tally(q, 6, false)).collect();
        let plan = Plan::balance(&tallies, 1, 4);
        let batches = plan
            .local(
                items(&[0, 1], 6)
                    .into_iter()
                    .filter(|i| !i.challenger())
                    .collect(),
            )
            .unwrap();
        let sizes: Vec<(usize, u32)> = batches
            .iter()
            .map(|b| (b.len(), b[0].key.query_id))
            .collect();
        assert_eq!(sizes, [(4, 0), (2, 0), (4, 1), (2, 1)]);
    }

    #[test]
    fn queries_without_a_challenger_or_tokens_are_not_trained() {
        let mut tallies: Vec<QueryTally> = (0..3).map(|q| tally(q, 2, false)).collect();
        tallies[1].challenger_reward = Some(1.0);
        tallies[1].query_tokens = 0;
        let plan = Plan::balance(&tallies, 3, 4);
        // Query items with tokens where the tallies say none trains: an error, not a
        // sequence silently left untrained; so is a query the tallies do not know.
        let err = plan.route(items(&[0], 2)).unwrap_err().to_string();
        assert!(err.contains("no micro-batch for"), "{err}");
        assert!(plan.route(vec![item(9, Some(0))]).is_err());
        let mut data: Vec<Item> = items(&[0, 1, 2], 2)
            .into_iter()
            .filter(|i| !i.challenger())
            .collect();
        data.push(Item {
            completion: Vec::new(),
            ..item(7, Some(0))
        });
        data.push(Item {
            completion: Vec::new(),
            ..item(1, None)
        });
        let routed = plan.route(data).unwrap();
        assert!(routed.iter().all(|(_, _, i)| !i.challenger()));
        assert_eq!(routed.len(), 6);
        // Three units of equal cost over three workers: one each.
        let mut workers: Vec<u32> = routed.iter().map(|(w, _, _)| *w).collect();
        workers.dedup();
        assert_eq!(workers, [0, 1, 2]);
    }

    #[test]
    fn every_worker_makes_the_same_plan_from_tallies_in_any_order() {
        let tallies: Vec<QueryTally> = (0..5).map(|q| tally(q, 4, true)).collect();
        let mut shuffled = tallies.clone();
        shuffled.reverse();
        assert_eq!(
            Plan::balance(&tallies, 2, 4),
            Plan::balance(&shuffled, 2, 4)
        );
        // N = 5 over two workers: both work, neither holds more than half again the other.
        let per_worker = loads(&Plan::balance(&tallies, 2, 4), &tallies);
        assert!(per_worker[0] > 0 && per_worker[1] > 0, "{per_worker:?}");
    }
}
