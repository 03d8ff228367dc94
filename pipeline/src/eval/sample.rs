//! Benchmark files and the seeded, stratified samples that fit a CPU budget.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use lsp_model::Rng;
use serde::de::DeserializeOwned;

/// Every line of a benchmark file as `T`.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    crate::jsonl::read_jsonl(path)
        .context("the repository's datasets/ has the benchmark files; --data names another")
}

/// Indices of a sample of `limit` items (all when `None` or larger), stratified by
/// `stratum`: each stratum gets its share of `limit` by largest remainder, drawn at
/// random with `seed`. Returned in the items' order.
pub fn stratified<T>(
    items: &[T],
    stratum: impl Fn(&T) -> &str,
    limit: Option<usize>,
    seed: u64,
) -> Vec<usize> {
    let n = items.len();
    let Some(limit) = limit.filter(|&l| l < n) else {
        return (0..n).collect();
    };
    let mut strata: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        strata.entry(stratum(item)).or_default().push(i);
    }
    // Quotas: floor of the exact share, then the largest remainders get one more.
    let mut quotas: Vec<(usize, f64, &str)> = strata
        .iter()
        .map(|(name, members)| {
            let exact = limit as f64 * members.len() as f64 / n as f64;
            (exact.floor() as usize, exact - exact.floor(), *name)
        })
        .collect();
    let given: usize = quotas.iter().map(|q| q.0).sum();
    let mut order: Vec<usize> = (0..quotas.len()).collect();
    order.sort_by(|&a, &b| quotas[b].1.total_cmp(&quotas[a].1).then(a.cmp(&b)));
    for &i in order.iter().take(limit - given) {
        quotas[i].0 += 1;
    }
    let mut rng = Rng::new(seed);
    let mut picked = Vec::with_capacity(limit);
    for (quota, _, name) in quotas {
        let mut members = strata[name].clone();
        rng.shuffle(&mut members);
        picked.extend(members.into_iter().take(quota));
    }
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strata_keep_their_shares_and_the_seed_fixes_the_draw() {
        // 60 of "a", 30 of "b", 10 of "c".
        let items: Vec<&str> = (0..100)
            .map(|i| {
                if i < 60 {
                    "a"
                } else if i < 90 {
                    "b"
                } else {
                    "c"
                }
            })
            .collect();
        let pick = stratified(&items, |s| s, Some(10), 7);
        assert_eq!(pick.len(), 10);
        let count = |s: &str| pick.iter().filter(|&&i| items[i] == s).count();
        assert_eq!((count("a"), count("b"), count("c")), (6, 3, 1));
        assert!(pick.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(pick, stratified(&items, |s| s, Some(10), 7));
        assert_ne!(pick, stratified(&items, |s| s, Some(10), 8));
        // Largest remainders: 7 of 100 → 4.2, 2.1, 0.7 → 4, 2, 1.
        let seven = stratified(&items, |s| s, Some(7), 1);
        assert_eq!(seven.iter().filter(|&&i| items[i] == "c").count(), 1);
        assert_eq!(stratified(&items, |s| s, None, 1).len(), 100);
        assert_eq!(stratified(&items, |s| s, Some(500), 1).len(), 100);
    }
}
