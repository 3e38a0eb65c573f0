//! What every binary's command line does the same way, beyond durations and the log
//! format: one check of a parser's declarations, and the duration flags that must not be
//! zero.

use std::time::Duration;

/// Checks a binary's flag declarations (names, conflicts, requirements, defaults) the way
/// clap does in debug builds, so a test fails at once on a mistake the binary would only
/// hit when started with that flag. Each binary's flag tests declare it with
/// [`flags_are_consistent!`](crate::flags_are_consistent!).
pub fn assert_consistent<A: clap::CommandFactory>() {
    A::command().debug_assert();
}

/// The test every binary's flags get, in its `cli.rs` test module:
/// `scale_agent_runtime::flags_are_consistent!(Args);` declares `flags_are_consistent`,
/// which runs [`assert_consistent`] on `Args`.
#[macro_export]
macro_rules! flags_are_consistent {
    ($args:ty) => {
        #[test]
        fn flags_are_consistent() {
            $crate::flags::assert_consistent::<$args>();
        }
    };
}

/// A duration flag (`15s`, `500ms`, `1m30s`) that must not be zero: each such flag paces
/// a loop or a timeout, and zero would spin or expire at once.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    match crate::parse_duration(text)? {
        d if d.is_zero() => Err(format!("{text:?}: must be longer than zero")),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_refused_and_units_are_read() {
        assert_eq!(positive_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(positive_duration("10"), Ok(Duration::from_secs(10)));
        assert!(positive_duration("0s").is_err());
        assert!(positive_duration("0").is_err());
        assert!(positive_duration("2x").is_err());
    }
}
