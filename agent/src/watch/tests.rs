//! Tests of `watch.rs`.

use super::*;

/// A Status as the API server writes it, with `causes` as (reason, field) pairs.
fn status(code: u16, causes: Vec<(&str, &str)>) -> Box<Status> {
    let causes: Vec<serde_json::Value> = causes
        .into_iter()
        .map(|(reason, field)| serde_json::json!({ "reason": reason, "field": field }))
        .collect();
    let s: Status = serde_json::from_value(serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "no", "reason": "Reason", "code": code,
        "details": { "causes": causes }
    }))
    .expect("status");
    s.boxed()
}

#[test]
fn only_a_version_the_server_cannot_watch_from_relists() {
    assert!(matches!(
        classify(Ok(WatchEvent::Error(status(410, vec![])))),
        Step::Expired
    ));
    assert!(matches!(
        classify(Err(kube::Error::Api(status(410, vec![])))),
        Step::Expired
    ));
    // A resume point newer than the cluster has (etcd restored from a backup).
    assert!(matches!(
        classify(Ok(WatchEvent::Error(status(
            504,
            vec![("ResourceVersionTooLarge", "")]
        )))),
        Step::Expired
    ));
    // A resume point that is no version at all.
    assert!(matches!(
        classify(Err(kube::Error::Api(status(
            500,
            vec![("FieldValueInvalid", "resourceVersion")]
        )))),
        Step::Expired
    ));
    // A refusal is told apart (a shared cluster-wide watch then gives way to each
    // account's own), and retried from the same version by an account's own watch.
    assert!(matches!(
        classify(Ok(WatchEvent::Error(status(403, vec![])))),
        Step::Forbidden(_)
    ));
    // Everything else is retried from the same version.
    for code in [429, 500, 503, 504] {
        assert!(
            matches!(
                classify(Ok(WatchEvent::Error(status(code, vec![])))),
                Step::Failed(_)
            ),
            "{code}"
        );
    }
}

#[test]
fn bookmarks_carry_their_version() {
    // As the API server writes it.
    let bookmark: WatchEvent<LeanObject> = serde_json::from_str(
        r#"{"type":"BOOKMARK","object":{"kind":"ConfigMap","apiVersion":"v1","metadata":{"resourceVersion":"1234","annotations":{"k8s.io/initial-events-end":"true"}}}}"#,
    )
    .expect("bookmark");
    assert!(matches!(classify(Ok(bookmark)), Step::Bookmark(v) if v == "1234"));
}

#[test]
fn steps_that_end_a_watch() {
    assert!(Step::Ended.ends_the_watch());
    assert!(Step::Expired.ends_the_watch());
    assert!(Step::Failed(String::new()).ends_the_watch());
    assert!(Step::Forbidden(String::new()).ends_the_watch());
    assert!(!Step::Bookmark(String::new()).ends_the_watch());
    assert!(!Step::Skipped(String::new()).ends_the_watch());
}

#[test]
fn only_a_resume_point_beyond_the_newest_version_is_ahead() {
    assert!(ahead("999999", "1200"));
    assert!(!ahead("1200", "1200"));
    assert!(!ahead("800", "1200"));
    assert!(!ahead("opaque", "1200"));
    assert!(!ahead("5", ""));
}

#[test]
fn retries_slow_down_to_a_cap() {
    assert_eq!(retry_delay(1), Duration::from_millis(250));
    assert_eq!(retry_delay(4), Duration::from_secs(1));
    assert_eq!(retry_delay(1000), Duration::from_secs(5));
}

#[test]
fn truncation_keeps_characters_whole() {
    assert_eq!(truncate("héllo", 2), "h");
    assert_eq!(truncate("hello", 10), "hello");
}
