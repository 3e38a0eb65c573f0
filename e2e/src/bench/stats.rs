//! Percentiles of measured samples (nearest rank: every reported percentile is a value
//! that was actually measured).

/// Summary of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// The `p`th percentile (0–100) of `samples` by nearest rank; `None` when empty.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    Some(rank(&sorted, p))
}

fn rank(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    // Nearest rank: the smallest value with at least p % of the samples at or below it.
    let r = ((p.clamp(0.0, 100.0) / 100.0) * n as f64).ceil() as usize;
    sorted[r.clamp(1, n) - 1]
}

/// p50, p99, max and mean of `samples`; `None` when empty.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mean = sorted.iter().sum::<f64>() / sorted.len() as f64;
    Some(Summary {
        count: sorted.len(),
        p50: rank(&sorted, 50.0),
        p99: rank(&sorted, 99.0),
        max: sorted[sorted.len() - 1],
        mean,
    })
}

/// The median of `samples`; `None` when empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_are_measured_values() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 50.0), Some(50.0));
        assert_eq!(percentile(&s, 99.0), Some(99.0));
        assert_eq!(percentile(&s, 100.0), Some(100.0));
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn a_single_slow_sample_is_the_p99_of_fewer_than_a_hundred() {
        let mut s = vec![1.0; 50];
        s.push(40.0);
        let sum = summarize(&s).expect("samples");
        assert_eq!(sum.p50, 1.0);
        assert_eq!(sum.p99, 40.0);
        assert_eq!(sum.max, 40.0);
        assert_eq!(sum.count, 51);
    }

    #[test]
    fn non_finite_samples_are_ignored() {
        assert_eq!(median(&[f64::NAN, 2.0, f64::INFINITY]), Some(2.0));
    }
}
