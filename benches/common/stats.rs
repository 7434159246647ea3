//! Reductions of measured samples: medians, nearest-rank percentiles, means,
//! and ratios of paired rounds. Pure functions, no timing.

use std::time::Duration;

/// The median (the mean of the two middle values for an even count); NaN
/// for no values.
pub fn median(xs: &[f64]) -> f64 {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => xs[n / 2],
        _ => (xs[n / 2 - 1] + xs[n / 2]) / 2.0,
    }
}

/// Nearest-rank percentile `p` (0–100) of durations sorted ascending; zero
/// for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Sorts a copy and takes nearest-rank percentile `p`.
pub fn percentile_of(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    percentile(&v, p)
}

/// The nearest-rank median of durations (unsorted).
pub fn median_duration(v: &[Duration]) -> Duration {
    percentile_of(v, 50.0)
}

/// The mean of durations; zero for none.
pub fn mean(v: &[Duration]) -> Duration {
    if v.is_empty() {
        Duration::ZERO
    } else {
        v.iter().sum::<Duration>() / v.len() as u32
    }
}

/// Median, min and max of a set of ratios.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

/// `num[i] / den[i]` for each round `i` (both measured in that round, so
/// background load hits both alike): median, min, max.
pub fn paired_ratios(num: &[f64], den: &[f64]) -> Spread {
    assert_eq!(num.len(), den.len(), "paired rounds");
    let ratios: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
    Spread {
        median: median(&ratios),
        min: ratios.iter().copied().fold(f64::INFINITY, f64::min),
        max: ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    }
}
