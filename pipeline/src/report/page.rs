//! The report's two pages: one self-contained HTML file (plots inlined as SVG) and a
//! Markdown file that links the PNGs.

use std::fmt::Write;

use lsp_schemas::GameRecordRow;

use super::plots::Chart;
use super::stats::{IterationStats, RunStats, Spread};

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn clip(text: &str, chars: usize) -> String {
    let text = text.trim();
    match text.char_indices().nth(chars) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn spread(s: &Spread) -> String {
    format!("{:.3} ± {:.3}", s.mean, s.std)
}

fn pct(x: f64) -> String {
    format!("{:.0}%", 100.0 * x)
}

/// The per-iteration table: header and rows of cells.
pub fn table(stats: &[IterationStats]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "iteration",
        "R",
        "R_Q",
        "V(q)",
        "challenger reward",
        "KL",
        "entropy",
        "query tok",
        "answer tok",
        "judge read-out / fallback",
        "distinct-n",
        "novelty",
        "near-dup",
        "code",
        "tok/s",
        "seconds",
    ];
    let rows = stats
        .iter()
        .map(|s| {
            vec![
                s.iteration.to_string(),
                spread(&s.reward),
                s.self_reward.as_ref().map_or("–".into(), spread),
                spread(&s.value),
                s.challenger_reward.as_ref().map_or("–".into(), spread),
                format!("{:.3e}", s.kl_answer),
                format!("{:.2}", s.monitor.mean_answer_entropy),
                format!("{:.1}", s.query_tokens),
                format!("{:.1}", s.answer_tokens),
                match (s.judge_read_out_rate, s.judge_failure_rate) {
                    (Some(r), Some(f)) => format!("{} / {}", pct(r), pct(f)),
                    _ => "–".into(),
                },
                format!("{:.3}", s.monitor.distinct_n),
                format!("{:.3}", s.monitor.novelty),
                format!("{}/{}", s.monitor.near_duplicates, s.monitor.queries),
                pct(s.monitor.code_share),
                format!("{:.1}", s.tokens_per_second),
                format!("{:.1}", s.seconds.iter().sum::<f64>()),
            ]
        })
        .collect();
    (header, rows)
}

/// One example: a query with its best and worst answer by R.
pub struct Example<'a> {
    pub iteration: u64,
    pub query: &'a str,
    pub best: &'a GameRecordRow,
    pub worst: &'a GameRecordRow,
}

/// Examples from the first, middle and last iterations.
pub fn examples(run: &RunStats) -> Vec<Example<'_>> {
    let n = run.records.len();
    let mut picks = vec![0, n / 2, n - 1];
    picks.dedup();
    let mut out = Vec::new();
    for i in picks {
        let rows = &run.records[i];
        let mut ids: Vec<u32> = rows.iter().map(|r| r.query_id).collect();
        ids.dedup();
        for id in ids {
            let answers: Vec<&GameRecordRow> = rows.iter().filter(|r| r.query_id == id).collect();
            let by_reward =
                |a: &&&GameRecordRow, b: &&&GameRecordRow| a.reward.total_cmp(&b.reward);
            let best = answers
                .iter()
                .max_by(by_reward)
                .expect("a query has answers");
            let worst = answers
                .iter()
                .min_by(by_reward)
                .expect("a query has answers");
            out.push(Example {
                iteration: rows[0].iteration,
                query: &answers[0].query_text,
                best,
                worst,
            });
        }
    }
    out
}

/// One line per `pipeline eval` summary found under the run's `eval/`: benchmark,
/// model, sample size, and the headline figure with its 95% interval.
pub fn eval_lines(evals: &[serde_json::Value]) -> Vec<[String; 4]> {
    evals
        .iter()
        .map(|e| {
            let r = &e["result"];
            let (name, est) = if r["win_rate"].is_object() {
                (
                    format!("win rate ({} judge)", r["judge"].as_str().unwrap_or("?")),
                    &r["win_rate"],
                )
            } else if r["accuracy"].is_object() {
                ("accuracy".to_string(), &r["accuracy"])
            } else {
                ("pass@1".to_string(), &r["pass_at_1"])
            };
            let f = |v: &serde_json::Value| {
                v.as_f64()
                    .map_or("–".into(), |x| format!("{:.1}%", 100.0 * x))
            };
            let model = e["candidate"]
                .as_str()
                .or(e["model"].as_str())
                .unwrap_or("?");
            [
                format!("{} {name}", e["benchmark"].as_str().unwrap_or("?")),
                model.to_string(),
                format!("{} of {}", e["sampled"], e["of"]),
                format!(
                    "{} [{}, {}]",
                    f(&est["value"]),
                    f(&est["low"]),
                    f(&est["high"])
                ),
            ]
        })
        .collect()
}

fn warnings(run: &RunStats) -> Vec<(u64, &str)> {
    run.iterations
        .iter()
        .flat_map(|s| {
            s.monitor
                .warnings
                .iter()
                .map(move |w| (s.iteration, w.as_str()))
        })
        .collect()
}

/// The HTML page, with each chart's SVG inlined from `plots`.
pub fn html(
    run: &RunStats,
    charts: &[Chart],
    svgs: &[String],
    evals: &[serde_json::Value],
) -> String {
    let mut p = String::new();
    let title = format!("LSP run {} ({})", escape(&run.run_id), escape(&run.mode));
    let _ = write!(
        p,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>\
         body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;font-size:13px}}\
         td,th{{border:1px solid #ccc;padding:3px 6px;vertical-align:top}}th{{background:#f3f3f3}}\
         .plots svg{{max-width:100%;height:auto}}.warn{{color:#a00}}</style></head><body>\n<h1>{title}</h1>\n\
         <p>{} iterations; monitor figures {}.</p>\n",
        run.iterations.len(),
        escape(&run.monitor_source)
    );
    let (header, rows) = table(&run.iterations);
    p.push_str("<h2>Per iteration</h2>\n<table id=\"iterations\"><tr>");
    for h in header {
        let _ = write!(p, "<th>{}</th>", escape(h));
    }
    p.push_str("</tr>\n");
    for row in rows {
        p.push_str("<tr>");
        for cell in row {
            let _ = write!(p, "<td>{}</td>", escape(&cell));
        }
        p.push_str("</tr>\n");
    }
    p.push_str("</table>\n");
    if !evals.is_empty() {
        p.push_str("<h2>Evaluations</h2>\n<table id=\"evals\"><tr><th>benchmark</th><th>model</th><th>sample</th><th>result [95% CI]</th></tr>\n");
        for line in eval_lines(evals) {
            p.push_str("<tr>");
            for cell in line {
                let _ = write!(p, "<td>{}</td>", escape(&cell));
            }
            p.push_str("</tr>\n");
        }
        p.push_str("</table>\n");
    }
    p.push_str("<h2>Monitor warnings</h2>\n");
    let warned = warnings(run);
    if warned.is_empty() {
        p.push_str("<p>None.</p>\n");
    } else {
        p.push_str("<ul>\n");
        for (t, w) in warned {
            let _ = writeln!(p, "<li class=\"warn\">iteration {t}: {}</li>", escape(w));
        }
        p.push_str("</ul>\n");
    }
    p.push_str("<h2>Plots</h2>\n<div class=\"plots\">\n");
    for (chart, svg) in charts.iter().zip(svgs) {
        let _ = writeln!(p, "<figure id=\"{}\">{svg}</figure>", chart.stem);
    }
    p.push_str("</div>\n<h2>Examples (first, middle and last iterations)</h2>\n<table id=\"examples\">\
                <tr><th>iteration</th><th>query</th><th>best answer (R)</th><th>worst answer (R)</th></tr>\n");
    for e in examples(run) {
        let _ = writeln!(
            p,
            "<tr><td>{}</td><td>{}</td><td>{} <b>({:.3})</b></td><td>{} <b>({:.3})</b></td></tr>",
            e.iteration,
            escape(&clip(e.query, 400)),
            escape(&clip(&e.best.answer_text, 400)),
            e.best.reward,
            escape(&clip(&e.worst.answer_text, 400)),
            e.worst.reward
        );
    }
    p.push_str("</table>\n</body></html>\n");
    p
}

fn md_cell(text: &str) -> String {
    clip(text, 200).replace('|', "\\|").replace('\n', " ")
}

/// The Markdown page, linking `plots/<stem>.png`.
pub fn markdown(run: &RunStats, charts: &[Chart], evals: &[serde_json::Value]) -> String {
    let mut p = format!(
        "# LSP run {} ({})\n\n{} iterations; monitor figures {}.\n\n## Per iteration\n\n",
        run.run_id,
        run.mode,
        run.iterations.len(),
        run.monitor_source
    );
    let (header, rows) = table(&run.iterations);
    let _ = writeln!(p, "| {} |", header.join(" | "));
    let _ = writeln!(p, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(p, "| {} |", row.join(" | "));
    }
    if !evals.is_empty() {
        p.push_str("\n## Evaluations\n\n| benchmark | model | sample | result [95% CI] |\n|---|---|---|---|\n");
        for line in eval_lines(evals) {
            let _ = writeln!(p, "| {} |", line.join(" | "));
        }
    }
    p.push_str("\n## Monitor warnings\n\n");
    let warned = warnings(run);
    if warned.is_empty() {
        p.push_str("None.\n");
    }
    for (t, w) in warned {
        let _ = writeln!(p, "- iteration {t}: {w}");
    }
    p.push_str("\n## Plots\n\n");
    for c in charts {
        let _ = writeln!(p, "![{}](plots/{}.png)\n", c.title, c.stem);
    }
    p.push_str("## Examples (first, middle and last iterations)\n\n| iteration | query | best answer (R) | worst answer (R) |\n|---|---|---|---|\n");
    for e in examples(run) {
        let _ = writeln!(
            p,
            "| {} | {} | {} ({:.3}) | {} ({:.3}) |",
            e.iteration,
            md_cell(e.query),
            md_cell(&e.best.answer_text),
            e.best.reward,
            md_cell(&e.worst.answer_text),
            e.worst.reward
        );
    }
    p
}
