//! Label and field selectors, parsed and matched the way the API server does, for the
//! reads the hub answers from its cache.
//!
//! Anything the API server would refuse (a malformed selector, an invalid label key or
//! value) or that the hub cannot evaluate exactly (a field the kind does not index,
//! or one the hub does not know) is `None`: the request then goes to the cluster, which
//! gives its own answer.

use std::collections::BTreeMap;

use serde_json::Value;

/// A label selector requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value`, `key==value`, `key in (a,b)`.
    In(String, Vec<String>),
    /// `key!=value`, `key notin (a,b)`: also matches objects without the key.
    NotIn(String, Vec<String>),
    /// `key`: the key is present.
    Exists(String),
    /// `!key`: the key is absent.
    DoesNotExist(String),
    /// `key>n`: the value is an integer greater than n.
    Gt(String, i64),
    /// `key<n`: the value is an integer less than n.
    Lt(String, i64),
}

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector(pub Vec<Requirement>);

fn valid_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn valid_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !l.is_empty()
                && l.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && l.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

/// A label key as the API server accepts it: `[prefix/]name`.
pub fn valid_key(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => valid_dns_subdomain(prefix) && valid_name_part(name),
        None => valid_name_part(key),
    }
}

/// A label value as the API server accepts it (empty is allowed).
pub fn valid_value(value: &str) -> bool {
    value.is_empty() || valid_name_part(value)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Op(&'static str),
    Open,
    Close,
    Comma,
    Not,
}

fn tokens(text: &str) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Token::Open);
                i += 1;
            }
            ')' => {
                out.push(Token::Close);
                i += 1;
            }
            ',' => {
                out.push(Token::Comma);
                i += 1;
            }
            '!' if chars.get(i + 1) == Some(&'=') => {
                out.push(Token::Op("!="));
                i += 2;
            }
            '!' => {
                out.push(Token::Not);
                i += 1;
            }
            '=' if chars.get(i + 1) == Some(&'=') => {
                out.push(Token::Op("=="));
                i += 2;
            }
            '=' => {
                out.push(Token::Op("="));
                i += 1;
            }
            '>' => {
                out.push(Token::Op(">"));
                i += 1;
            }
            '<' => {
                out.push(Token::Op("<"));
                i += 1;
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !matches!(chars[i], '(' | ')' | ',' | '!' | '=' | '>' | '<')
                {
                    i += 1;
                }
                out.push(Token::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Some(out)
}

/// Parses a label selector; `None` when the API server would refuse it.
pub fn parse_labels(text: &str) -> Option<LabelSelector> {
    let toks = tokens(text)?;
    let mut reqs = Vec::new();
    let mut i = 0;
    let word = |t: Option<&Token>| match t {
        Some(Token::Word(w)) => Some(w.clone()),
        _ => None,
    };
    while i < toks.len() {
        let req = if toks[i] == Token::Not {
            let key = word(toks.get(i + 1))?;
            i += 2;
            valid_key(&key).then_some(Requirement::DoesNotExist(key))?
        } else {
            let key = word(toks.get(i))?;
            if !valid_key(&key) {
                return None;
            }
            i += 1;
            match toks.get(i) {
                None | Some(Token::Comma) => Requirement::Exists(key),
                Some(Token::Op(op)) => {
                    // An empty value (`a=`) is allowed: the next token is not a word.
                    let value = match toks.get(i + 1) {
                        Some(Token::Word(w)) => {
                            i += 2;
                            w.clone()
                        }
                        _ => {
                            i += 1;
                            String::new()
                        }
                    };
                    match *op {
                        "=" | "==" => {
                            valid_value(&value).then_some(())?;
                            Requirement::In(key, vec![value])
                        }
                        "!=" => {
                            valid_value(&value).then_some(())?;
                            Requirement::NotIn(key, vec![value])
                        }
                        ">" => Requirement::Gt(key, value.parse().ok()?),
                        "<" => Requirement::Lt(key, value.parse().ok()?),
                        _ => return None,
                    }
                }
                Some(Token::Word(w)) if w == "in" || w == "notin" => {
                    let negate = w == "notin";
                    i += 1;
                    if toks.get(i) != Some(&Token::Open) {
                        return None;
                    }
                    i += 1;
                    let mut values = Vec::new();
                    loop {
                        match toks.get(i) {
                            Some(Token::Word(v)) => {
                                valid_value(v).then_some(())?;
                                values.push(v.clone());
                                i += 1;
                                match toks.get(i) {
                                    Some(Token::Comma) => i += 1,
                                    Some(Token::Close) => {
                                        i += 1;
                                        break;
                                    }
                                    _ => return None,
                                }
                            }
                            Some(Token::Close) if values.is_empty() => return None,
                            _ => return None,
                        }
                    }
                    if negate {
                        Requirement::NotIn(key, values)
                    } else {
                        Requirement::In(key, values)
                    }
                }
                _ => return None,
            }
        };
        reqs.push(req);
        match toks.get(i) {
            None => break,
            Some(Token::Comma) => {
                i += 1;
                if i == toks.len() {
                    return None;
                }
            }
            _ => return None,
        }
    }
    Some(LabelSelector(reqs))
}

impl LabelSelector {
    /// True when the object's labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
            Requirement::Gt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v > *n),
            Requirement::Lt(k, n) => labels
                .get(k)
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|v| v < *n),
        })
    }

    /// True when this selector includes each of `other`'s requirements, so it selects
    /// nothing `other` does not (a read inside an agent's label filter).
    pub fn implies(&self, other: &LabelSelector) -> bool {
        other.0.iter().all(|r| self.0.contains(r))
    }

    /// True when there is no requirement.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One field selector requirement: `field=value` or `field!=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// The field, e.g. `metadata.name`.
    pub field: String,
    /// The value compared with.
    pub value: String,
    /// `!=` rather than `=`.
    pub negated: bool,
}

/// A parsed field selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

/// Splits on `sep` outside backslash escapes.
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            if let Some(last) = parts.last_mut() {
                last.push('\\');
                last.push(c);
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    if escaped && let Some(last) = parts.last_mut() {
        last.push('\\');
    }
    parts
}

fn unescape(value: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next()? {
                e @ ('\\' | ',' | '=') => out.push(e),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// Parses a field selector; `None` when malformed.
pub fn parse_fields(text: &str) -> Option<FieldSelector> {
    let mut reqs = Vec::new();
    if text.trim().is_empty() {
        return Some(FieldSelector::default());
    }
    for part in split_unescaped(text, ',') {
        let (field, value, negated) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once("==") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once('=') {
            (f, v, false)
        } else {
            return None;
        };
        let field = field.trim();
        if field.is_empty() {
            return None;
        }
        reqs.push(FieldRequirement {
            field: field.to_owned(),
            value: unescape(value)?,
            negated,
        });
    }
    Some(FieldSelector(reqs))
}

/// A field the API server lets a kind be selected by, and where it is in the object.
struct Indexed {
    field: &'static str,
    path: &'static [&'static str],
    /// What an absent field reads as.
    default: &'static str,
}

const fn at(field: &'static str, path: &'static [&'static str]) -> Indexed {
    Indexed {
        field,
        path,
        default: "",
    }
}

/// Fields the API server indexes beyond `metadata.name` and `metadata.namespace`,
/// for the kinds the hub knows them of (core group).
fn indexed(group: &str, kind: &str) -> &'static [Indexed] {
    const POD: &[Indexed] = &[
        at("spec.nodeName", &["spec", "nodeName"]),
        at("spec.restartPolicy", &["spec", "restartPolicy"]),
        at("spec.schedulerName", &["spec", "schedulerName"]),
        at("spec.serviceAccountName", &["spec", "serviceAccountName"]),
        Indexed {
            field: "spec.hostNetwork",
            path: &["spec", "hostNetwork"],
            default: "false",
        },
        at("status.phase", &["status", "phase"]),
        at("status.podIP", &["status", "podIP"]),
        at("status.nominatedNodeName", &["status", "nominatedNodeName"]),
    ];
    const EVENT: &[Indexed] = &[
        at("involvedObject.kind", &["involvedObject", "kind"]),
        at("involvedObject.namespace", &["involvedObject", "namespace"]),
        at("involvedObject.name", &["involvedObject", "name"]),
        at("involvedObject.uid", &["involvedObject", "uid"]),
        at(
            "involvedObject.apiVersion",
            &["involvedObject", "apiVersion"],
        ),
        at(
            "involvedObject.resourceVersion",
            &["involvedObject", "resourceVersion"],
        ),
        at("involvedObject.fieldPath", &["involvedObject", "fieldPath"]),
        at("reason", &["reason"]),
        at("reportingComponent", &["reportingComponent"]),
        at("source", &["source", "component"]),
        at("type", &["type"]),
    ];
    const NAMESPACE: &[Indexed] = &[at("status.phase", &["status", "phase"])];
    match (group, kind) {
        ("", "Pod") => POD,
        ("", "Event") => EVENT,
        ("", "Namespace") => NAMESPACE,
        _ => &[],
    }
}

fn field_value(object: &Value, path: &[&str], default: &str) -> String {
    let v = path.iter().fold(object, |v, k| &v[*k]);
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => default.to_owned(),
    }
}

impl FieldSelector {
    /// True when every field named is one the hub can evaluate for this kind as the
    /// API server does.
    pub fn supported(&self, group: &str, kind: &str) -> bool {
        let table = indexed(group, kind);
        self.0.iter().all(|r| {
            matches!(r.field.as_str(), "metadata.name" | "metadata.namespace")
                || table.iter().any(|i| i.field == r.field)
        })
    }

    /// True when the object (`namespace`, `name` and its JSON) satisfies every
    /// requirement. Only call after [`FieldSelector::supported`].
    pub fn matches(
        &self,
        group: &str,
        kind: &str,
        namespace: &str,
        name: &str,
        object: &Value,
    ) -> bool {
        let table = indexed(group, kind);
        self.0.iter().all(|r| {
            let actual = match r.field.as_str() {
                "metadata.name" => name.to_owned(),
                "metadata.namespace" => namespace.to_owned(),
                other => match table.iter().find(|i| i.field == other) {
                    Some(i) => field_value(object, i.path, i.default),
                    None => return false,
                },
            };
            (actual == r.value) != r.negated
        })
    }

    /// True when only `metadata.name` and `metadata.namespace` are named: no need to
    /// read the object.
    pub fn only_metadata(&self) -> bool {
        self.0
            .iter()
            .all(|r| matches!(r.field.as_str(), "metadata.name" | "metadata.namespace"))
    }

    /// True when there is no requirement.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn sel(text: &str) -> LabelSelector {
        parse_labels(text).unwrap_or_else(|| panic!("{text:?} should parse"))
    }

    #[test]
    fn label_selectors_parse_like_the_api_server() {
        assert_eq!(sel(""), LabelSelector(vec![]));
        assert_eq!(
            sel("app=web, tier==front,env!=prod"),
            LabelSelector(vec![
                Requirement::In("app".into(), vec!["web".into()]),
                Requirement::In("tier".into(), vec!["front".into()]),
                Requirement::NotIn("env".into(), vec!["prod".into()]),
            ])
        );
        assert_eq!(
            sel("app.kubernetes.io/managed-by in (spinnaker, helm),!legacy,canary,x notin (a)"),
            LabelSelector(vec![
                Requirement::In(
                    "app.kubernetes.io/managed-by".into(),
                    vec!["spinnaker".into(), "helm".into()]
                ),
                Requirement::DoesNotExist("legacy".into()),
                Requirement::Exists("canary".into()),
                Requirement::NotIn("x".into(), vec!["a".into()]),
            ])
        );
        assert_eq!(
            sel("a=,b>3,c<10"),
            LabelSelector(vec![
                Requirement::In("a".into(), vec![String::new()]),
                Requirement::Gt("b".into(), 3),
                Requirement::Lt("c".into(), 10),
            ])
        );
        for bad in [
            ",",
            "app=web,",
            "app in ()",
            "app in (a",
            "app in a",
            "-bad=x",
            "Bad_Prefix.COM/x=y",
            "a=b=c",
            "a=-x",
            "a>b",
            "a b",
            "!",
            &format!("a={}", "x".repeat(64)),
        ] {
            assert!(parse_labels(bad).is_none(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn label_selectors_match_like_the_api_server() {
        let l = labels(&[("app", "web"), ("tier", "front"), ("n", "5")]);
        for (s, want) in [
            ("app=web", true),
            ("app=api", false),
            ("app!=api", true),
            ("missing!=x", true),
            ("missing notin (x)", true),
            ("missing in (x)", false),
            ("app in (api,web)", true),
            ("!app", false),
            ("!missing", true),
            ("tier", true),
            ("app=web,tier=back", false),
            ("n>4", true),
            ("n<5", false),
            ("app>1", false),
            ("", true),
        ] {
            assert_eq!(sel(s).matches(&l), want, "{s}");
        }
    }

    #[test]
    fn a_selector_that_includes_the_scope_selects_within_it() {
        let scope = sel("app.kubernetes.io/managed-by=spinnaker");
        assert!(sel("app.kubernetes.io/managed-by=spinnaker,app=web").implies(&scope));
        assert!(!sel("app=web").implies(&scope));
        assert!(!sel("app.kubernetes.io/managed-by in (spinnaker,helm)").implies(&scope));
        assert!(sel("").implies(&LabelSelector::default()));
    }

    #[test]
    fn field_selectors_parse_with_escapes() {
        let f = parse_fields(r"metadata.name=a\,b,involvedObject.kind!=Pod,reason==x\=y")
            .expect("parses");
        assert_eq!(
            f.0,
            vec![
                FieldRequirement {
                    field: "metadata.name".into(),
                    value: "a,b".into(),
                    negated: false
                },
                FieldRequirement {
                    field: "involvedObject.kind".into(),
                    value: "Pod".into(),
                    negated: true
                },
                FieldRequirement {
                    field: "reason".into(),
                    value: "x=y".into(),
                    negated: false
                },
            ]
        );
        assert!(parse_fields("noequals").is_none());
        assert!(parse_fields("=x").is_none());
        assert!(parse_fields(r"a=\q").is_none());
        assert!(parse_fields("").expect("empty").is_empty());
    }

    #[test]
    fn only_indexed_fields_are_evaluated() {
        let by_node = parse_fields("spec.nodeName=n1,status.phase!=Failed").expect("parses");
        assert!(by_node.supported("", "Pod"));
        assert!(!by_node.supported("apps", "Deployment"));
        let unindexed = parse_fields("spec.replicas=3").expect("parses");
        assert!(!unindexed.supported("apps", "Deployment"));
        let pod = json!({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(by_node.matches("", "Pod", "ns", "p", &pod));
        let host = parse_fields("spec.hostNetwork=false").expect("parses");
        assert!(
            host.matches("", "Pod", "ns", "p", &pod),
            "absent reads as false"
        );
        let events =
            parse_fields("involvedObject.name=web,involvedObject.kind=Deployment").expect("parses");
        let event = json!({"involvedObject": {"name": "web", "kind": "Deployment"}});
        assert!(events.supported("", "Event"));
        assert!(events.matches("", "Event", "ns", "web.123", &event));
        let name =
            parse_fields("metadata.name=web,metadata.namespace!=kube-system").expect("parses");
        assert!(name.supported("apps", "Deployment") && name.only_metadata());
        assert!(name.matches("apps", "Deployment", "ns", "web", &json!({})));
        assert!(!name.matches("apps", "Deployment", "kube-system", "web", &json!({})));
    }
}
