//! One line per iteration: what a user watches a run by.

use lsp_schemas::{GameRecordBatch, MonitorRow, TypedBatch};

use lsp_self_reward::ScoreSource;

/// Figures of one iteration, from its game record.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub iteration: u64,
    pub answers: usize,
    pub reward: f64,
    pub self_reward: Option<f64>,
    pub value_challenger: Option<f64>,
    /// Judged answers whose R_Q was parsed, read out, or the fallback.
    pub judge_sources: Option<[usize; 3]>,
    pub kl: f64,
    /// Mean over answers of their mean token entropy.
    pub entropy: f64,
    /// The step's rollout/training mismatch (mean |Δ log-prob| per token).
    pub mismatch: f64,
    pub query_tokens: f64,
    pub answer_tokens: f64,
    pub tokens_per_second: f64,
    pub seconds: [f64; 6],
    pub loss: f64,
    pub step_applied: bool,
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { sum / n as f64 }
}

impl Summary {
    /// Shares of the judged answers whose R_Q was read out and was the fallback.
    pub fn judge_shares(&self) -> Option<(f64, f64)> {
        self.judge_sources.map(|[p, r, f]| {
            let n = (p + r + f) as f64;
            (r as f64 / n, f as f64 / n)
        })
    }

    /// The figures of `record`.
    pub fn of(record: &GameRecordBatch) -> anyhow::Result<Self> {
        let rows = record.to_rows()?;
        anyhow::ensure!(!rows.is_empty(), "empty game record");
        let r0 = &rows[0];
        let judged: Vec<_> = rows
            .iter()
            .filter(|r| r.self_reward_status != "disabled")
            .collect();
        let sources = judged.iter().fold([0; 3], |mut n, r| {
            match ScoreSource::of_status(&r.self_reward_status) {
                Some(ScoreSource::Parsed) => n[0] += 1,
                Some(ScoreSource::ReadOut) => n[1] += 1,
                _ => n[2] += 1,
            }
            n
        });
        let seconds = [
            r0.seconds_challenger,
            r0.seconds_solver,
            r0.seconds_reward,
            r0.seconds_self_reward,
            r0.seconds_advantage,
            r0.seconds_update,
        ];
        let generated: u32 = rows.iter().map(|r| r.answer_tokens).sum::<u32>()
            + rows
                .iter()
                .filter(|r| r.answer_index == 0)
                .map(|r| r.query_tokens)
                .sum::<u32>();
        let generation_seconds = seconds[0] + seconds[1];
        Ok(Self {
            iteration: r0.iteration,
            answers: rows.len(),
            reward: mean(rows.iter().map(|r| r.reward)),
            self_reward: (!judged.is_empty())
                .then(|| mean(judged.iter().filter_map(|r| r.self_reward))),
            value_challenger: r0
                .challenger_reward
                .map(|_| mean(rows.iter().filter_map(|r| r.challenger_reward))),
            judge_sources: (!judged.is_empty()).then_some(sources),
            kl: mean(rows.iter().map(|r| r.kl_answer)),
            entropy: mean(rows.iter().map(|r| r.answer_entropy)),
            mismatch: r0.rollout_mismatch,
            query_tokens: mean(
                rows.iter()
                    .filter(|r| r.answer_index == 0)
                    .map(|r| r.query_tokens as f64),
            ),
            answer_tokens: mean(rows.iter().map(|r| r.answer_tokens as f64)),
            tokens_per_second: if generation_seconds > 0.0 {
                generated as f64 / generation_seconds
            } else {
                0.0
            },
            seconds,
            loss: r0.loss,
            step_applied: r0.step_applied,
        })
    }

    /// The line printed for the iteration, with the live monitor's figures if it ran.
    pub fn line(&self, of: u64, monitor: Option<&MonitorRow>) -> String {
        let opt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
        let [c, so, r, sr, a, u] = self.seconds;
        format!(
            "iteration {}/{of}: R {:.3} | R_Q {} | challenger reward {} | judge {} | KL {:.3e} | entropy {:.2} | mismatch {:.1e} | \
             loss {:.3e}{} | query {:.0} tok, answer {:.0} tok | {:.1} tok/s | s: challenger {c:.1} solver {so:.1} \
             reward {r:.1} self-reward {sr:.1} advantage {a:.2} update {u:.1}",
            self.iteration,
            self.reward,
            opt(self.self_reward),
            opt(self.value_challenger),
            self.judge_sources
                .map_or("-".to_string(), |[p, r, f]| format!(
                    "parsed {p} read-out {r} fallback {f}"
                )),
            self.kl,
            self.entropy,
            self.mismatch,
            self.loss,
            if self.step_applied {
                ""
            } else {
                " (step skipped)"
            },
            self.query_tokens,
            self.answer_tokens,
            self.tokens_per_second,
        ) + &monitor.map_or(String::new(), monitor_part)
    }
}

/// The monitor's part of the line.
fn monitor_part(m: &MonitorRow) -> String {
    format!(
        " | monitor: near-duplicates {}/{}, distinct-n {:.2}, novelty {:.2}, code {:.0}%{}",
        m.near_duplicates,
        m.queries,
        m.distinct_n,
        m.novelty,
        100.0 * m.code_share,
        if m.warnings.is_empty() {
            String::new()
        } else {
            format!(", {} warning(s)", m.warnings.len())
        }
    )
}
