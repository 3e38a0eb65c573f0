//! The goals figures are judged by: an absolute limit ("peak ≤ 128 MiB"), a ratio to the
//! baseline ("≤ 0.8× the bare LISTs"), a ratio with an allowance ("p99 ≤ 1.2× the bare
//! watcher's + 2 ms"), or, for a rate, a share of the baseline's rate to reach ("≥ 0.5×
//! the bare decoder's events per second"). Pure: whether a value meets its goal, what
//! value the goal allows, and how the goal reads in a report.

use serde::{Deserialize, Serialize};

/// What a figure must reach. Every goal is an upper bound (lower is better) but
/// [`Goal::RatioAtLeast`], a lower bound for rates.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Goal {
    /// The value is at most `limit`, in the figure's unit.
    AtMost {
        /// The largest value that meets the goal.
        limit: f64,
    },
    /// The value is at most `ratio` times the baseline.
    RatioAtMost {
        /// The largest ratio that meets the goal.
        ratio: f64,
    },
    /// The value is at most `ratio` times the baseline plus `slack` (in the figure's
    /// unit): a fixed allowance for what a relay adds however fast the baseline is.
    WithinOfBaseline {
        /// The largest ratio, before the allowance.
        ratio: f64,
        /// The allowance, in the figure's unit.
        slack: f64,
    },
    /// The value is at least `ratio` times the baseline: higher is better.
    RatioAtLeast {
        /// The smallest ratio that meets the goal.
        ratio: f64,
    },
}

impl Goal {
    /// The largest value that meets the goal; `None` when the goal is relative and there
    /// is no usable baseline.
    pub fn allowed(&self, baseline: Option<f64>) -> Option<f64> {
        match *self {
            Goal::AtMost { limit } => Some(limit),
            Goal::RatioAtMost { ratio } | Goal::RatioAtLeast { ratio } => {
                baseline.filter(|b| b.is_finite()).map(|b| ratio * b)
            }
            Goal::WithinOfBaseline { ratio, slack } => baseline
                .filter(|b| b.is_finite())
                .map(|b| ratio * b + slack),
        }
    }

    /// Whether `value` meets the goal; `None` when it cannot be told (no value, or a
    /// relative goal without a baseline).
    pub fn met(&self, value: Option<f64>, baseline: Option<f64>) -> Option<bool> {
        let value = value.filter(|v| v.is_finite())?;
        self.allowed(baseline).map(|allowed| {
            if self.higher_is_better() {
                value >= allowed
            } else {
                value <= allowed
            }
        })
    }

    /// Whether the goal is a lower bound (a rate to reach) rather than an upper one.
    pub fn higher_is_better(&self) -> bool {
        matches!(self, Goal::RatioAtLeast { .. })
    }

    /// For a value that misses the goal: how far from what it allows, as a fraction of
    /// that (0.42: 42 % over an upper bound, or 42 % short of a lower one).
    pub fn missed_by(&self, value: f64, allowed: f64) -> Option<f64> {
        if allowed <= 0.0 || !value.is_finite() {
            return None;
        }
        Some(if self.higher_is_better() {
            1.0 - value / allowed
        } else {
            value / allowed - 1.0
        })
    }

    /// How the goal reads in a report, e.g. `≤ 256 MiB`, `ratio ≤ 1.3`,
    /// `≤ 1.5 × baseline + 5 ms`.
    pub fn describe(&self, unit: &str) -> String {
        match *self {
            Goal::AtMost { limit } => format!("≤ {} {unit}", number(limit)),
            Goal::RatioAtMost { ratio } => format!("ratio ≤ {}", number(ratio)),
            Goal::RatioAtLeast { ratio } => format!("ratio ≥ {}", number(ratio)),
            Goal::WithinOfBaseline { ratio, slack } => {
                format!("≤ {} × baseline + {} {unit}", number(ratio), number(slack))
            }
        }
    }
}

/// A number the way a report shows it: at most three significant digits after the
/// point for small values, no trailing zeros, thousands unseparated.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    let a = v.abs();
    let text = if a == 0.0 {
        "0".to_string()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        // Three significant digits.
        let digits = (-a.log10()).floor() as usize + 3;
        format!("{v:.digits$}")
    };
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absolute_limit_needs_no_baseline() {
        let g = Goal::AtMost { limit: 256.0 };
        assert_eq!(g.met(Some(255.9), None), Some(true));
        assert_eq!(g.met(Some(256.0), None), Some(true));
        assert_eq!(g.met(Some(300.0), Some(1.0)), Some(false));
        assert_eq!(g.met(None, None), None);
        assert_eq!(g.describe("MiB"), "≤ 256 MiB");
    }

    #[test]
    fn a_ratio_needs_a_baseline() {
        let g = Goal::RatioAtMost { ratio: 1.3 };
        assert_eq!(g.met(Some(12.9), Some(10.0)), Some(true));
        assert_eq!(g.met(Some(13.1), Some(10.0)), Some(false));
        assert_eq!(g.met(Some(1.0), None), None);
        assert_eq!(g.met(Some(1.0), Some(f64::NAN)), None);
        assert_eq!(g.describe("s"), "ratio ≤ 1.3");
    }

    #[test]
    fn the_allowance_is_added_after_the_ratio() {
        let g = Goal::WithinOfBaseline {
            ratio: 1.5,
            slack: 5.0,
        };
        // 1.5 × 10 ms + 5 ms = 20 ms.
        assert_eq!(g.allowed(Some(10.0)), Some(20.0));
        assert_eq!(g.met(Some(20.0), Some(10.0)), Some(true));
        assert_eq!(g.met(Some(20.5), Some(10.0)), Some(false));
        assert_eq!(g.describe("ms"), "≤ 1.5 × baseline + 5 ms");
    }

    #[test]
    fn a_rate_to_reach_is_a_lower_bound() {
        let g = Goal::RatioAtLeast { ratio: 0.5 };
        assert_eq!(g.met(Some(5.0), Some(10.0)), Some(true));
        assert_eq!(g.met(Some(4.4), Some(10.0)), Some(false));
        assert_eq!(g.met(Some(4.4), None), None);
        let short = g.missed_by(4.0, 5.0).expect("short");
        assert!((short - 0.2).abs() < 1e-9);
        assert_eq!(g.describe("events/s"), "ratio ≥ 0.5");
        let over = Goal::AtMost { limit: 10.0 }
            .missed_by(12.0, 10.0)
            .expect("over");
        assert!((over - 0.2).abs() < 1e-9);
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(number(256.0), "256");
        assert_eq!(number(1234.56), "1235");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.30), "1.3");
        assert_eq!(number(0.05), "0.05");
        assert_eq!(number(0.012345), "0.0123");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(-2.5), "-2.5");
    }
}
