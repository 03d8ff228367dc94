//! What a benchmark prints: throughput, FLOP/s and peak memory, one line each.

use std::time::Duration;

/// Peak resident set size of this process (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The median of `times`.
pub fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// `name: 1234.5 tok/s (2048 tokens in 1.66 s, median of 3), 123.4 GFLOP/s, peak RSS 1.23 GB`.
pub fn report(name: &str, tokens: u64, time: Duration, runs: usize, flops: f64) -> String {
    let secs = time.as_secs_f64();
    let rss = peak_rss_bytes().map_or("?".to_string(), |b| format!("{:.2} GB", b as f64 / 1e9));
    format!(
        "{name}: {:.1} tok/s ({tokens} tokens in {secs:.2} s, median of {runs}), {:.1} GFLOP/s, peak RSS {rss}",
        tokens as f64 / secs,
        flops / secs / 1e9,
    )
}
