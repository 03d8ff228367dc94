//! The live dataflow against the sequential reference, iteration by iteration, on
//! records made to repeat themselves (as a collapsing challenger does).

use lsp_schemas::GameRecordRow;

use super::figures::IterationResult;
use super::*;

/// A deterministic stream of texts drawn from a small vocabulary, so that n-grams
/// and whole queries recur across and within iterations.
struct Texts(u64);

impl Texts {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn text(&mut self, words: usize) -> String {
        const VOCAB: [&str; 12] = [
            "write", "a", "poem", "about", "the", "sea", "python", "function", "explain", "why",
            "sky", "blue",
        ];
        let n = 1 + (self.next() as usize % words);
        (0..n)
            .map(|_| VOCAB[self.next() as usize % VOCAB.len()])
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn row(
    iteration: u64,
    query_id: u32,
    answer_index: u32,
    query: &str,
    answer: &str,
    status: &str,
) -> GameRecordRow {
    GameRecordRow {
        run_id: "t".into(),
        mode: "lsp".into(),
        iteration,
        query_id,
        answer_index,
        prompt_id: "p".into(),
        prompt_version: "v".into(),
        query_text: query.into(),
        query_finish_reason: "eos".into(),
        query_status: "ok".into(),
        reference_answer: None,
        answer_text: answer.into(),
        answer_finish_reason: "eos".into(),
        query_logprob_policy: None,
        query_logprob_ref: None,
        answer_logprob_policy: -1.0,
        answer_logprob_ref: -1.0,
        query_logprob_sampler: None,
        answer_logprob_sampler: -1.0,
        reward: 0.0,
        reward_status: "ok".into(),
        reward_parts: None,
        self_reward: None,
        self_reward_status: status.into(),
        self_reward_top_probability: (status == "read_out").then_some(0.6),
        judge_text: (status != "disabled").then(|| format!("judge {query_id}/{answer_index}")),
        value: 0.0,
        value_q: None,
        solver_reward: 0.0,
        challenger_reward: None,
        adv_solver: 0.0,
        adv_challenger: None,
        kl_query: None,
        kl_answer: 0.0,
        query_entropy: None,
        answer_entropy: 1.0 + f64::from(answer_index),
        query_tokens: 3 + query_id,
        answer_tokens: 10 + answer_index,
        loss: 0.0,
        loss_solver: 0.0,
        loss_challenger: None,
        grad_norm: 0.0,
        step_applied: true,
        skip_reason: None,
        learning_rate: 0.0,
        clip_low_fraction: 0.0,
        clip_high_fraction: 0.0,
        rollout_mismatch: 0.0,
        seconds_challenger: 0.0,
        seconds_solver: 0.0,
        seconds_reward: 0.0,
        seconds_self_reward: 0.0,
        seconds_advantage: 0.0,
        seconds_update: 0.0,
        query_similarity: None,
        query_similar_iteration: None,
        query_similar_id: None,
        query_asks_code: None,
        answer_code_fraction: None,
        answer_is_code: None,
    }
}

/// `iterations` records of `queries` × `answers` rows.
fn records(iterations: u64, queries: u32, answers: u32) -> Vec<Vec<GameRecordRow>> {
    let mut texts = Texts(7);
    let statuses = ["ok", "missing", "disabled", "out_of_range", "read_out"];
    (1..=iterations)
        .map(|t| {
            let mut rows = Vec::new();
            for q in 0..queries {
                let query = texts.text(8);
                for a in 0..answers {
                    let answer = if texts.next().is_multiple_of(3) {
                        format!("```\n{}\n```", texts.text(5))
                    } else {
                        texts.text(20)
                    };
                    let status = statuses[texts.next() as usize % statuses.len()];
                    rows.push(row(t, q, a, &query, &answer, status));
                }
            }
            rows
        })
        .collect()
}

#[test]
fn live_dataflow_equals_the_sequential_computation() {
    let config = MonitorConfig::default();
    let all = records(8, 6, 3);
    let expected: Vec<IterationResult> = {
        let mut reference = SequentialMonitor::default();
        all.iter()
            .enumerate()
            .map(|(i, rows)| {
                let (q, a) = observe(rows, &config);
                reference.observe(i as u64 + 1, &q, &a)
            })
            .collect()
    };
    // The inputs do repeat: some queries have earlier near-duplicates, later
    // iterations bring fewer new n-grams, some answers are code.
    assert!(
        expected
            .iter()
            .any(|r| r.near_duplicates(config.near_duplicate) > 0)
    );
    assert!(
        expected
            .iter()
            .all(|r| r.counts.new_grams <= r.counts.distinct_grams)
    );
    assert!(expected.last().unwrap().counts.new_grams < expected[0].counts.new_grams);
    assert!(expected.iter().any(|r| r.counts.code_answers > 0));

    let config_live = config.clone();
    let live: Vec<IterationResult> = timely::execute_directly(move |worker| {
        let mut monitor = LiveMonitor::new(worker);
        all.iter()
            .enumerate()
            .map(|(i, rows)| {
                let (q, a) = observe(rows, &config_live);
                monitor.observe(worker, i as u64 + 1, &q, &a)
            })
            .collect()
    });
    for (t, (live, expected)) in live.iter().zip(&expected).enumerate() {
        assert_eq!(live, expected, "iteration {}", t + 1);
    }
}

#[test]
fn the_first_iteration_is_all_new_and_exact_repeats_are_found() {
    let config = MonitorConfig::default();
    let first = vec![
        row(1, 0, 0, "Write a poem about the sea.", "Waves.", "ok"),
        row(
            1,
            1,
            0,
            "Explain why the sky is blue.",
            "def f():\n    return 1",
            "missing",
        ),
    ];
    let second = vec![
        row(2, 0, 0, "write a POEM about the sea", "Foam.", "ok"),
        row(2, 1, 0, "Name three prime numbers.", "2, 3, 5", "read_out"),
    ];
    let results = timely::execute_directly(move |worker| {
        let mut monitor = LiveMonitor::new(worker);
        [first, second]
            .iter()
            .enumerate()
            .map(|(i, rows)| {
                let (q, a) = observe(rows, &config);
                monitor.observe(worker, i as u64 + 1, &q, &a)
            })
            .collect::<Vec<_>>()
    });
    let config = MonitorConfig::default();
    let one = results[0].row("t", 1, &config);
    assert_eq!((one.novelty, one.near_duplicates), (1.0, 0));
    // "Explain why the sky is blue." asks for no code; its answer is all code.
    assert_eq!((one.code_share, one.code_drift), (0.5, Some(0.5)));
    assert_eq!(
        (one.judge_failure_rate, one.judge_read_out_rate),
        (Some(0.5), Some(0.0))
    );
    let two = results[1].row("t", 2, &config);
    assert_eq!(two.near_duplicates, 1);
    assert_eq!(
        (two.judge_failure_rate, two.judge_read_out_rate),
        (Some(0.0), Some(0.5))
    );
    let same = results[1].similar[&0];
    assert_eq!((same.jaccard(), same.earlier), (1.0, (1, 0)));
    assert!(!results[1].similar.contains_key(&1));
    // Of iteration 2's 5 + 3 = 8 distinct bigrams, the 5 of the repeated poem are old.
    assert_eq!((two.distinct_n, two.novelty), (1.0, 0.375));
}
