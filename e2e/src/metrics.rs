//! Reading the Prometheus text that the agent, the hub and the operator serve on
//! `/metrics`: tests assert on counters and gauges (relists, reconnects, reconciles).

use std::time::Duration;

use crate::{Error, Result};

/// The value of the sample `series` in Prometheus text `text`: the metric name with its
/// labels exactly as exposed (`scale_agent_relists_total`,
/// `requests_total{code="200"}`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(parse_line)
        .find(|(s, _)| *s == series)
        .map(|(_, v)| v)
}

/// The sum of every series of metric `name` in Prometheus text `text`, whatever their
/// labels (`scale_agent_relists_total` over all causes); 0 when there is none.
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(parse_line)
        .filter(|(s, _)| s.split('{').next() == Some(name))
        .map(|(_, v)| v)
        .sum()
}

/// The value of `series` in `text`, or an error naming it when it is not exposed: for
/// counters a test compares, so that a renamed or removed metric fails the test instead
/// of reading as 0 for ever.
pub fn require(text: &str, series: &str) -> Result<f64> {
    sample(text, series).ok_or_else(|| Error::Invalid {
        what: format!("metric {series}"),
        message: "not exposed (renamed or removed?)".into(),
    })
}

/// [`sum`] of metric `name` (a sample name such as `scale_agent_relists_total`), or an
/// error when the metric is not declared at all: a family with no series yet sums to 0,
/// a metric that does not exist is an error.
pub fn require_sum(text: &str, name: &str) -> Result<f64> {
    let family = name.strip_suffix("_total").unwrap_or(name);
    let declared = text.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some("#")
            && words.next() == Some("TYPE")
            && matches!(words.next(), Some(n) if n == name || n == family)
    });
    if declared || sample_names(text).any(|n| n == name) {
        Ok(sum(text, name))
    } else {
        Err(Error::Invalid {
            what: format!("metric {name}"),
            message: "not declared (renamed or removed?)".into(),
        })
    }
}

fn sample_names(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter_map(parse_line)
        .filter_map(|(s, _)| s.split('{').next())
}

/// The sum of the series of metric `name` whose labels include `label` (`source="cluster"`),
/// whatever their other labels; 0 when there is none.
pub fn sum_with(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter_map(parse_line)
        .filter(|(s, _)| {
            let mut parts = s.splitn(2, '{');
            parts.next() == Some(name)
                && parts.next().is_some_and(|labels| {
                    labels.trim_end_matches('}').split(',').any(|l| l == label)
                })
        })
        .map(|(_, v)| v)
        .sum()
}

/// Splits a sample line into its series (name and labels) and its value; `None` for
/// comments, blank lines and lines that are not samples. Label values may hold spaces,
/// braces and escaped quotes; a timestamp after the value is ignored.
fn parse_line(line: &str) -> Option<(&str, f64)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let end = series_end(line)?;
    let (series, rest) = line.split_at(end);
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((series, value))
}

/// Where the series of a sample line ends: after the closing brace of its labels, or at
/// the first white space when it has none.
fn series_end(line: &str) -> Option<usize> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    if !line[name_end..].starts_with('{') {
        return Some(name_end);
    }
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in line.char_indices().skip(name_end) {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '}' if !quoted => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// The `/metrics` text of the admin server at `addr` (`127.0.0.1:<port>`).
pub async fn scrape(addr: &str) -> Result<String> {
    let url = format!("http://{addr}/metrics");
    let fail = |e: reqwest::Error| Error::Http {
        url: url.clone(),
        message: e.to_string(),
    };
    reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .map_err(fail)?
        .error_for_status()
        .map_err(fail)?
        .text()
        .await
        .map_err(fail)
}

/// A counter or gauge of the admin server at `addr`, as a whole number; 0 when it is
/// absent or the server does not answer (a process that is down has counted nothing).
pub async fn metric(addr: &str, series: &str) -> u64 {
    match scrape(addr).await {
        Ok(text) => sample(&text, series).map_or(0, |v| v as u64),
        Err(_) => 0,
    }
}

/// The sum of every series of metric `name` at the admin server at `addr` (0 when it
/// does not answer).
pub async fn metric_sum(addr: &str, name: &str) -> u64 {
    match scrape(addr).await {
        Ok(text) => sum(&text, name) as u64,
        Err(_) => 0,
    }
}

/// [`require`] at the admin server at `addr`: fails when it does not answer or does not
/// expose `series`.
pub async fn required(addr: &str, series: &str) -> Result<f64> {
    require(&scrape(addr).await?, series)
}

#[cfg(test)]
mod tests {
    use super::{require, require_sum, sample, sum, sum_with};

    const TEXT: &str = r#"# HELP scale_agent_operator_leader Whether this replica leads.
# TYPE scale_agent_operator_leader gauge
scale_agent_operator_leader 1
scale_agent_operator_reconciles_total 12
scale_agent_operator_reconciles_total_created 1700000000
foo{a="b"} 3
foo{a="b c",d="}"} 4
foo{a="say \"hi\" }"} 5
with_timestamp 6 1700000000000
broken{a="b" 7
"#;

    #[test]
    fn reads_samples_by_exact_series() {
        assert_eq!(sample(TEXT, "scale_agent_operator_leader"), Some(1.0));
        assert_eq!(
            sample(TEXT, "scale_agent_operator_reconciles_total"),
            Some(12.0)
        );
        assert_eq!(sample(TEXT, "foo{a=\"b\"}"), Some(3.0));
        assert_eq!(sample(TEXT, "missing"), None);
        assert_eq!(
            sample(TEXT, "foo"),
            None,
            "a name alone is not a labelled series"
        );
    }

    #[test]
    fn sums_every_series_of_a_metric() {
        assert_eq!(sum(TEXT, "foo"), 12.0);
        assert_eq!(sum(TEXT, "scale_agent_operator_leader"), 1.0);
        assert_eq!(sum(TEXT, "missing"), 0.0);
        assert_eq!(sum_with(TEXT, "foo", "a=\"b\""), 3.0);
        assert_eq!(sum_with(TEXT, "foo", "a=\"c\""), 0.0);
    }

    #[test]
    fn a_missing_metric_is_an_error_not_zero() {
        assert_eq!(require(TEXT, "foo{a=\"b\"}").ok(), Some(3.0));
        assert!(require(TEXT, "scale_agent_renamed_total").is_err());
        let family = "# HELP relists Relists.\n# TYPE relists counter\n";
        assert_eq!(require_sum(family, "relists_total").ok(), Some(0.0));
        assert_eq!(require_sum(TEXT, "foo").ok(), Some(12.0));
        assert!(require_sum(TEXT, "scale_agent_renamed_total").is_err());
    }

    #[test]
    fn label_values_may_hold_spaces_braces_and_quotes() {
        assert_eq!(sample(TEXT, r#"foo{a="b c",d="}"}"#), Some(4.0));
        assert_eq!(sample(TEXT, r#"foo{a="say \"hi\" }"}"#), Some(5.0));
    }

    #[test]
    fn a_timestamp_is_not_the_value_and_broken_lines_are_skipped() {
        assert_eq!(sample(TEXT, "with_timestamp"), Some(6.0));
        assert_eq!(sample(TEXT, "broken{a=\"b\" 7"), None);
        assert_eq!(sample(TEXT, "broken"), None);
    }
}
