//! The list options of a list or watch, checked as the API server checks them
//! (apimachinery's `ValidateListOptions`, with the `WatchList` feature on, as it is by
//! default since Kubernetes 1.34), so that a request the hub answers itself is refused
//! with the same `422 Invalid` the cluster would give:
//! - a list may not ask for `sendInitialEvents`, nor for `resourceVersionMatch`
//!   without a `resourceVersion` or with a `continue`, nor `Exact` with "0";
//! - a watch with `sendInitialEvents` needs `resourceVersionMatch=NotOlderThan`, and a
//!   watch may give `resourceVersionMatch` only with `sendInitialEvents`.
//!
//! Query parameters read as the API server reads them: the first value of a repeated
//! parameter counts, and a boolean is false only when absent, "0" or "false".

use http::StatusCode;
use serde_json::json;

use super::status::Failure;

/// `resourceVersionMatch=NotOlderThan`.
pub const NOT_OLDER_THAN: &str = "NotOlderThan";
/// `resourceVersionMatch=Exact`.
pub const EXACT: &str = "Exact";

/// A boolean query parameter as the API server reads it: false only for "0" and
/// "false" (any case); anything else, even an empty value, is true.
pub fn go_bool(v: &str) -> bool {
    !(v == "0" || v.eq_ignore_ascii_case("false"))
}

/// The list options that decide what a list or watch is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `watch`.
    pub watch: bool,
    /// `resourceVersion` ("" when unset).
    pub resource_version: String,
    /// `resourceVersionMatch` ("" when unset).
    pub resource_version_match: String,
    /// `sendInitialEvents`, when given.
    pub send_initial_events: Option<bool>,
    /// `continue` ("" when unset).
    pub cont: String,
}

impl ListOptions {
    /// Reads them from a decoded query (the first value of each parameter counts).
    pub fn from_query(query: &[(String, String)]) -> ListOptions {
        let first = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        ListOptions {
            watch: first("watch").is_some_and(go_bool),
            resource_version: first("resourceVersion").unwrap_or_default().to_owned(),
            resource_version_match: first("resourceVersionMatch").unwrap_or_default().to_owned(),
            send_initial_events: first("sendInitialEvents").map(go_bool),
            cont: first("continue").unwrap_or_default().to_owned(),
        }
    }
}

/// One field's error, as apimachinery's `field.Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field (`resourceVersionMatch`, `sendInitialEvents`).
    pub field: &'static str,
    /// `FieldValueForbidden` or `FieldValueNotSupported`.
    pub cause: &'static str,
    /// The error without its field: `Forbidden: ...`, `Unsupported value: ...`.
    pub body: String,
}

fn forbidden(field: &'static str, detail: &str) -> FieldError {
    FieldError {
        field,
        cause: "FieldValueForbidden",
        body: format!("Forbidden: {detail}"),
    }
}

fn not_supported(field: &'static str, value: &str, supported: &[&str]) -> FieldError {
    let quoted: Vec<String> = supported.iter().map(|s| go_json_string(s)).collect();
    FieldError {
        field,
        cause: "FieldValueNotSupported",
        body: format!(
            "Unsupported value: {}: supported values: {}",
            go_json_string(value),
            quoted.join(", ")
        ),
    }
}

/// A string as Go's `encoding/json` writes it (`<`, `>` and `&` escaped).
fn go_json_string(s: &str) -> String {
    serde_json::Value::String(s.to_owned())
        .to_string()
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// The errors the API server finds in `o` (none: valid).
pub fn validate(o: &ListOptions) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let rvm = o.resource_version_match.as_str();
    if o.watch {
        if o.send_initial_events.is_some() && rvm != NOT_OLDER_THAN {
            errs.push(forbidden(
                "resourceVersionMatch",
                "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            ));
        }
        if !rvm.is_empty() {
            if o.send_initial_events.is_none() {
                errs.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
                ));
            }
            if rvm != NOT_OLDER_THAN {
                errs.push(not_supported(
                    "resourceVersionMatch",
                    rvm,
                    &[NOT_OLDER_THAN],
                ));
            }
            if !o.cont.is_empty() {
                errs.push(forbidden(
                    "resourceVersionMatch",
                    "resourceVersionMatch is forbidden when continue is provided",
                ));
            }
        }
        return errs;
    }
    if !rvm.is_empty() {
        if o.resource_version.is_empty() {
            errs.push(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        if !o.cont.is_empty() {
            errs.push(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        if rvm != EXACT && rvm != NOT_OLDER_THAN {
            errs.push(not_supported(
                "resourceVersionMatch",
                rvm,
                &[EXACT, NOT_OLDER_THAN, ""],
            ));
        }
        if rvm == EXACT && o.resource_version == "0" {
            errs.push(forbidden(
                "resourceVersionMatch",
                "resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
    }
    if o.send_initial_events.is_some() {
        errs.push(forbidden(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for list",
        ));
    }
    errs
}

/// The API server's `422 Invalid` for `errs` (`ListOptions.meta.k8s.io "" is invalid`).
pub fn invalid(errs: &[FieldError]) -> Failure {
    let mut seen: Vec<String> = Vec::new();
    for e in errs {
        let text = format!("{}: {}", e.field, e.body);
        if !seen.contains(&text) {
            seen.push(text);
        }
    }
    let all = match seen.as_slice() {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    };
    let causes: Vec<_> = errs
        .iter()
        .map(|e| json!({ "reason": e.cause, "message": e.body, "field": e.field }))
        .collect();
    Failure {
        details: Some(json!({ "group": "meta.k8s.io", "kind": "ListOptions", "causes": causes })),
        ..Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("ListOptions.meta.k8s.io \"\" is invalid: {all}"),
        )
    }
}

/// Checks the list options of a list or watch: `Err` with the API server's answer
/// when it would refuse them.
pub fn check(query: &[(String, String)]) -> Result<ListOptions, Failure> {
    let o = ListOptions::from_query(query);
    let errs = validate(&o);
    if errs.is_empty() {
        Ok(o)
    } else {
        Err(invalid(&errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn message(pairs: &[(&str, &str)]) -> Option<String> {
        check(&q(pairs)).err().map(|f| f.message)
    }

    #[test]
    fn booleans_read_as_the_api_server_reads_them() {
        for t in ["true", "1", "True", "yes", ""] {
            assert!(go_bool(t), "{t:?}");
        }
        for f in ["false", "FALSE", "0"] {
            assert!(!go_bool(f), "{f:?}");
        }
    }

    #[test]
    fn streaming_lists_and_their_misuse_are_judged_as_the_api_server_does() {
        // What client-go's reflector sends, with and without a version.
        for rv in ["", "0", "42"] {
            assert_eq!(
                message(&[
                    ("watch", "1"),
                    ("sendInitialEvents", "true"),
                    ("resourceVersionMatch", "NotOlderThan"),
                    ("allowWatchBookmarks", "true"),
                    ("resourceVersion", rv),
                ]),
                None
            );
        }
        assert_eq!(
            message(&[("watch", "true"), ("sendInitialEvents", "true")]).as_deref(),
            Some(
                "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
            )
        );
        assert_eq!(
            message(&[("watch", "true"), ("resourceVersionMatch", "NotOlderThan")]).as_deref(),
            Some(
                "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided"
            )
        );
        assert_eq!(
            message(&[
                ("watch", "true"),
                ("sendInitialEvents", "true"),
                ("resourceVersionMatch", "Exact")
            ])
            .as_deref(),
            Some(
                "ListOptions.meta.k8s.io \"\" is invalid: [resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan, resourceVersionMatch: Unsupported value: \"Exact\": supported values: \"NotOlderThan\"]"
            )
        );
        assert_eq!(
            message(&[("sendInitialEvents", "true")]).as_deref(),
            Some(
                "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"
            )
        );
        assert_eq!(
            message(&[("resourceVersionMatch", "NotOlderThan")]).as_deref(),
            Some(
                "ListOptions.meta.k8s.io \"\" is invalid: resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided"
            )
        );
        // A watch that is not one sends nothing of the watch's.
        assert_eq!(
            message(&[("watch", "false"), ("sendInitialEvents", "true")]).as_deref(),
            Some(
                "ListOptions.meta.k8s.io \"\" is invalid: sendInitialEvents: Forbidden: sendInitialEvents is forbidden for list"
            )
        );
        assert_eq!(
            message(&[("resourceVersion", "5"), ("resourceVersionMatch", "Exact")]),
            None
        );
        let f = check(&q(&[("watch", "1"), ("sendInitialEvents", "false")])).expect_err("invalid");
        let body = f.body();
        assert_eq!(f.code, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["reason"], "Invalid");
        assert_eq!(body["details"]["kind"], "ListOptions");
        assert_eq!(body["details"]["group"], "meta.k8s.io");
        assert_eq!(
            body["details"]["causes"][0]["reason"],
            "FieldValueForbidden"
        );
        assert_eq!(
            body["details"]["causes"][0]["field"],
            "resourceVersionMatch"
        );
    }
}
