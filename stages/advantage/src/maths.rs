//! The advantage maths, pure functions over slices (no tch), hand-checked in tests.

use std::collections::BTreeMap;

/// Mean of `xs` (0 for none).
pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// Unbiased standard deviation (n − 1), as torch's `std`; 0 for fewer than two values.
pub fn std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// `x − mean`, divided by the standard deviation when `normalize` (a group whose
/// values are all equal gets advantage 0 either way).
pub fn centred(xs: &[f64], normalize: bool) -> Vec<f64> {
    centred_in(xs, xs, normalize)
}

/// [`centred`] with the mean and standard deviation of `population` (of which `xs`
/// are some): a worker's share of the queries, centred by all of them.
pub fn centred_in(xs: &[f64], population: &[f64], normalize: bool) -> Vec<f64> {
    let m = mean(population);
    let s = std(population);
    xs.iter()
        .map(|x| {
            let d = x - m;
            if !normalize {
                d
            } else if s > 0.0 {
                d / s
            } else {
                0.0
            }
        })
        .collect()
}

/// Row indices of each group, groups in order of first appearance.
pub fn groups(keys: &[u32]) -> Vec<Vec<usize>> {
    let mut order: Vec<u32> = Vec::new();
    let mut members: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, k) in keys.iter().enumerate() {
        members.entry(*k).or_insert_with(|| {
            order.push(*k);
            Vec::new()
        });
        members.get_mut(k).expect("inserted").push(i);
    }
    order
        .into_iter()
        .map(|k| members.remove(&k).expect("present"))
        .collect()
}

/// Group-relative advantages of `rewards` within each group of `keys`: the reward
/// minus its group's mean (÷ the group's std when `normalize`). Also returns each
/// row's group mean.
pub fn group_advantages(rewards: &[f64], keys: &[u32], normalize: bool) -> (Vec<f64>, Vec<f64>) {
    let mut means = vec![0.0; rewards.len()];
    let mut advantages = vec![0.0; rewards.len()];
    for group in groups(keys) {
        let values: Vec<f64> = group.iter().map(|&i| rewards[i]).collect();
        let m = mean(&values);
        for (&i, a) in group.iter().zip(centred(&values, normalize)) {
            means[i] = m;
            advantages[i] = a;
        }
    }
    (means, advantages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_advantages_by_hand() {
        // Query 0: rewards 1, 2, 3, 6 → mean 3 → −2, −1, 0, 3; std = √(14/3).
        // Query 1: all 0.5 → advantage 0, also when normalised.
        let rewards = [1.0, 2.0, 3.0, 6.0, 0.5, 0.5];
        let keys = [0, 0, 0, 0, 1, 1];
        let (means, adv) = group_advantages(&rewards, &keys, false);
        assert_eq!(means, [3.0, 3.0, 3.0, 3.0, 0.5, 0.5]);
        assert_eq!(adv, [-2.0, -1.0, 0.0, 3.0, 0.0, 0.0]);
        let (_, norm) = group_advantages(&rewards, &keys, true);
        let s = (14.0f64 / 3.0).sqrt();
        for (got, want) in norm
            .iter()
            .zip([-2.0 / s, -1.0 / s, 0.0, 3.0 / s, 0.0, 0.0])
        {
            assert!((got - want).abs() < 1e-12);
        }
    }

    #[test]
    fn groups_keep_first_appearance_order_and_need_not_be_contiguous() {
        assert_eq!(
            groups(&[5, 2, 5, 2, 9]),
            vec![vec![0, 2], vec![1, 3], vec![4]]
        );
        let (means, adv) = group_advantages(&[1.0, 10.0, 3.0, 20.0, 7.0], &[5, 2, 5, 2, 9], false);
        assert_eq!(means, [2.0, 15.0, 2.0, 15.0, 7.0]);
        assert_eq!(adv, [-1.0, -5.0, 1.0, 5.0, 0.0]);
        assert_eq!(std(&[4.0]), 0.0);
    }
}
