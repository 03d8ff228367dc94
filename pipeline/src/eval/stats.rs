//! Estimates with 95% confidence intervals.

use serde::Serialize;

/// z for a two-sided 95% interval.
const Z: f64 = 1.959_963_984_540_054;

/// A proportion or mean with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
    pub n: usize,
}

/// Wilson's score interval for `successes` of `n` (sound at small n and at 0 or n).
pub fn wilson(successes: usize, n: usize) -> Estimate {
    if n == 0 {
        return Estimate {
            value: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
            n,
        };
    }
    let (k, n_f) = (successes as f64, n as f64);
    let p = k / n_f;
    let denom = 1.0 + Z * Z / n_f;
    let centre = (p + Z * Z / (2.0 * n_f)) / denom;
    let half = Z * (p * (1.0 - p) / n_f + Z * Z / (4.0 * n_f * n_f)).sqrt() / denom;
    Estimate {
        value: p,
        low: (centre - half).max(0.0),
        high: (centre + half).min(1.0),
        n,
    }
}

/// Mean of outcomes in [0, 1] (wins 1, ties 0.5, losses 0) with a normal interval from
/// the sample standard deviation, clipped to [0, 1].
pub fn mean_interval(outcomes: &[f64]) -> Estimate {
    let n = outcomes.len();
    if n == 0 {
        return Estimate {
            value: f64::NAN,
            low: f64::NAN,
            high: f64::NAN,
            n,
        };
    }
    let mean = outcomes.iter().sum::<f64>() / n as f64;
    let half = if n > 1 {
        let var = outcomes.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        Z * (var / n as f64).sqrt()
    } else {
        f64::INFINITY
    };
    Estimate {
        value: mean,
        low: (mean - half).max(0.0),
        high: (mean + half).min(1.0),
        n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_the_textbook_values() {
        // 8 of 10: the Wilson 95% interval is [0.4902, 0.9433].
        let e = wilson(8, 10);
        assert!(
            (e.low - 0.4902).abs() < 1e-4 && (e.high - 0.9433).abs() < 1e-4,
            "{e:?}"
        );
        let zero = wilson(0, 20);
        assert_eq!((zero.value, zero.low), (0.0, 0.0));
        assert!((zero.high - 0.1611).abs() < 1e-4, "{zero:?}");
    }

    #[test]
    fn mean_interval_of_wins_ties_and_losses() {
        // Outcomes 1, 0.5, 0, 1: mean 0.625, sample sd 0.4787, half-width 1.96·sd/2.
        let e = mean_interval(&[1.0, 0.5, 0.0, 1.0]);
        assert_eq!(e.value, 0.625);
        assert!((e.high - 1.0).abs() < 1e-12);
        assert!(
            (e.low - (0.625 - Z * 0.478_713_553_878_169_9 / 2.0)).abs() < 1e-9,
            "{e:?}"
        );
        assert_eq!(mean_interval(&[1.0]).low, 0.0);
    }
}
