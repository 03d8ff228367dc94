//! Which charts a run's report has, built from its figures.

use super::plots::{Chart, Series};
use super::stats::{IterationStats, RunStats, Spread};

fn line(
    name: &str,
    stats: &[IterationStats],
    f: impl Fn(&IterationStats) -> Option<f64>,
) -> Option<Series> {
    let points: Vec<(f64, f64)> = stats
        .iter()
        .filter_map(|s| f(s).map(|y| (s.iteration as f64, y)))
        .collect();
    (!points.is_empty()).then(|| Series {
        name: name.to_string(),
        points,
        band: None,
    })
}

/// A mean line with a ±1 standard deviation band.
fn spread(
    name: &str,
    stats: &[IterationStats],
    f: impl Fn(&IterationStats) -> Option<Spread>,
) -> Option<Series> {
    let spreads: Vec<(f64, Spread)> = stats
        .iter()
        .filter_map(|s| f(s).map(|v| (s.iteration as f64, v)))
        .collect();
    (!spreads.is_empty()).then(|| Series {
        name: format!("{name} (mean ± sd)"),
        points: spreads.iter().map(|(x, s)| (*x, s.mean)).collect(),
        band: Some(
            spreads
                .iter()
                .map(|(x, s)| (*x, s.mean - s.std, s.mean + s.std))
                .collect(),
        ),
    })
}

/// The report's charts, in page order.
pub fn charts(run: &RunStats) -> Vec<Chart> {
    let s = &run.iterations;
    let chart = |stem, title: &str, y: &str, series: Vec<Option<Series>>| Chart {
        stem,
        title: title.to_string(),
        y_label: y.to_string(),
        series: series.into_iter().flatten().collect(),
    };
    let stage = |i: usize| move |x: &IterationStats| Some(x.seconds[i]);
    vec![
        chart(
            "rewards",
            "Rewards per role",
            "reward",
            vec![
                spread("solver R", s, |x| Some(x.reward)),
                spread("solver R_Q", s, |x| x.self_reward),
                spread("challenger reward", s, |x| x.challenger_reward),
            ],
        ),
        chart(
            "values",
            "Values per query",
            "value",
            vec![
                spread("V(q)", s, |x| Some(x.value)),
                spread("V_Q(q)", s, |x| x.value_q),
            ],
        ),
        chart(
            "kl",
            "KL to the reference",
            "KL per token",
            vec![
                line("answers", s, |x| Some(x.kl_answer)),
                line("queries", s, |x| x.kl_query),
            ],
        ),
        chart(
            "entropy",
            "Policy entropy (a collapse signal)",
            "nats per token",
            vec![line("answers", s, |x| Some(x.monitor.mean_answer_entropy))],
        ),
        chart(
            "lengths",
            "Lengths",
            "tokens",
            vec![
                line("query (challenger)", s, |x| Some(x.query_tokens)),
                line("answer (solver)", s, |x| Some(x.answer_tokens)),
            ],
        ),
        chart(
            "diversity",
            "Challenger diversity and drift",
            "share",
            vec![
                line("distinct-n", s, |x| Some(x.monitor.distinct_n)),
                line("novelty", s, |x| Some(x.monitor.novelty)),
                line("near-duplicate share", s, |x| {
                    Some(x.monitor.near_duplicate_share)
                }),
                line("code share", s, |x| Some(x.monitor.code_share)),
                line("judge read-outs", s, |x| x.judge_read_out_rate),
                line("judge fallbacks", s, |x| x.judge_failure_rate),
            ],
        ),
        chart(
            "speed",
            "Seconds per stage",
            "seconds",
            vec![
                line("challenger", s, stage(0)),
                line("solver", s, stage(1)),
                line("reward", s, stage(2)),
                line("self-reward", s, stage(3)),
                line("advantage", s, stage(4)),
                line("update", s, stage(5)),
            ],
        ),
        chart(
            "throughput",
            "Generation throughput",
            "tokens/s",
            vec![line("challenger + solver", s, |x| {
                Some(x.tokens_per_second)
            })],
        ),
    ]
}
