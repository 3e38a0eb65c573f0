//! The Tables of custom resources: the columns their CustomResourceDefinition names
//! (`additionalPrinterColumns` of the served version, or `Age` when it names none),
//! filled as kube-apiserver's CRD table convertor fills them.
//!
//! The agent follows the cluster's CRDs by name and version only
//! ([`crate::core::cache::AccountCache::api_surface`]), so the first Table of a custom
//! kind asks the cluster for its definition (one list of CustomResourceDefinitions by
//! name, which the agent's rights to follow them allow); its columns are kept while the
//! account's surface number stays the same (any change of a CRD or APIService drops
//! them). A column whose JSONPath is more than fields, indexes, `[*]` and `[?(@.f=="v")]`
//! filters leaves the kind without a printer: its Tables go to the cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::discovery::PerAccount;
use super::table::{AGE_DOC, NAME_DOC, column, human_duration};

/// The largest CRD list the hub reads for a kind's columns (a CRD with a large
/// schema is a few hundred KiB).
pub const MAX_CRD: usize = 8 << 20;
/// Custom kinds whose columns are kept per account at most.
pub const MAX_KINDS_PER_ACCOUNT: usize = 1024;

/// One step of a column's JSONPath.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// `.name` or `['name']`.
    Field(String),
    /// `[n]` (negative counts from the end).
    Index(i64),
    /// `[*]`.
    All,
    /// `[?(@.a.b=="v")]`: the elements whose field at the path equals the value.
    Filter(Vec<String>, Value),
}

/// One column of a custom resource.
#[derive(Debug, Clone)]
struct Col {
    name: String,
    kind: String,
    format: String,
    description: String,
    priority: i64,
    path: Vec<Step>,
}

/// The columns of one version of a custom resource.
#[derive(Debug)]
pub struct Custom {
    columns: Vec<Col>,
}

/// Why a CRD's columns cannot be written by the hub.
pub type Unsupported = &'static str;

impl Custom {
    /// The columns `crd` names for `version`.
    pub fn from_crd(crd: &Value, version: &str) -> Result<Custom, Unsupported> {
        let served = crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == version)
            .ok_or("the CRD does not serve that version")?;
        let named = served["additionalPrinterColumns"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        let columns = if named.is_empty() {
            vec![Col {
                name: "Age".into(),
                kind: "date".into(),
                format: String::new(),
                description: AGE_DOC.into(),
                priority: 0,
                path: parse(".metadata.creationTimestamp")?,
            }]
        } else {
            named
                .iter()
                .map(|c| {
                    let path = c["jsonPath"]
                        .as_str()
                        .ok_or("a column without a jsonPath")?;
                    let description = c["description"]
                        .as_str()
                        .filter(|d| !d.is_empty())
                        .map_or_else(
                            || {
                                format!(
                                    "Custom resource definition column (in JSONPath format): {path}"
                                )
                            },
                            str::to_owned,
                        );
                    Ok(Col {
                        name: c["name"].as_str().unwrap_or_default().to_owned(),
                        kind: c["type"].as_str().unwrap_or_default().to_owned(),
                        format: c["format"].as_str().unwrap_or_default().to_owned(),
                        description,
                        priority: c["priority"].as_i64().unwrap_or(0),
                        path: parse(path)?,
                    })
                })
                .collect::<Result<_, Unsupported>>()?
        };
        Ok(Custom { columns })
    }

    /// The column definitions: Name, then the CRD's.
    pub fn columns(&self) -> Value {
        let mut out = vec![column("Name", "string", "name", NAME_DOC, 0)];
        out.extend(
            self.columns
                .iter()
                .map(|c| column(&c.name, &c.kind, &c.format, &c.description, c.priority)),
        );
        Value::Array(out)
    }

    /// The cells of `o`: its name, then each column's first value, as its type shows it.
    pub fn cells(&self, o: &Value, now: SystemTime) -> Vec<Value> {
        let mut cells = vec![json!(o["metadata"]["name"].as_str().unwrap_or_default())];
        for c in &self.columns {
            let found = find(o, &c.path).into_iter().next();
            cells.push(found.map_or(Value::Null, |v| cell(&c.kind, v, now)));
        }
        cells
    }
}

/// apiextensions' `cellForJSONValue`, and for `string` columns what jsonpath prints.
fn cell(kind: &str, v: &Value, now: SystemTime) -> Value {
    match (kind, v) {
        (_, Value::Null) => Value::Null,
        ("string", Value::String(s)) => json!(s),
        ("string", Value::Number(n)) => json!(n.to_string()),
        ("string", Value::Bool(b)) => json!(b.to_string()),
        ("string", other) => json!(other.to_string()),
        ("integer", Value::Number(n)) => n
            .as_i64()
            // Go converts a float64 to int64 by truncation.
            .or_else(|| n.as_f64().map(|f| f as i64))
            .map_or(Value::Null, |i| json!(i)),
        ("number", Value::Number(n)) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        ("boolean", Value::Bool(b)) => json!(b),
        ("date", Value::String(s)) => match s.parse::<Timestamp>() {
            Ok(t) => {
                let now = Timestamp::try_from(now).unwrap_or(t);
                json!(human_duration(now.as_second() - t.as_second()))
            }
            Err(_) => json!("<invalid>"),
        },
        _ => Value::Null,
    }
}

/// Every value `path` selects in `v`, in order.
fn find<'a>(v: &'a Value, path: &[Step]) -> Vec<&'a Value> {
    let mut current = vec![v];
    for step in path {
        let mut next = Vec::new();
        for v in current {
            match step {
                Step::Field(f) => next.extend(v.get(f.as_str())),
                Step::Index(i) => {
                    if let Some(a) = v.as_array() {
                        let len = i64::try_from(a.len()).unwrap_or(i64::MAX);
                        let at = if *i < 0 { len + i } else { *i };
                        next.extend(usize::try_from(at).ok().and_then(|at| a.get(at)));
                    }
                }
                Step::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Step::Filter(field, want) => {
                    for e in v.as_array().into_iter().flatten() {
                        let mut at = e;
                        let mut found = true;
                        for f in field {
                            match at.get(f.as_str()) {
                                Some(x) => at = x,
                                None => {
                                    found = false;
                                    break;
                                }
                            }
                        }
                        if found && at == want {
                            next.push(e);
                        }
                    }
                }
            }
        }
        current = next;
    }
    current
}

fn field_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '/')
}

/// Parses the JSONPath subset the hub evaluates exactly; anything else is
/// unsupported.
fn parse(path: &str) -> Result<Vec<Step>, Unsupported> {
    const UNSUPPORTED: &str = "a JSONPath the hub does not evaluate";
    let mut steps = Vec::new();
    let mut rest = path.trim();
    if !rest.starts_with('.') {
        return Err(UNSUPPORTED);
    }
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(|c: char| !field_char(c)).unwrap_or(r.len());
            if end == 0 {
                return Err(UNSUPPORTED);
            }
            steps.push(Step::Field(r[..end].to_owned()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').ok_or(UNSUPPORTED)?;
            let inside = &r[..end];
            rest = &r[end + 1..];
            steps.push(bracket(inside).ok_or(UNSUPPORTED)?);
        } else {
            return Err(UNSUPPORTED);
        }
    }
    Ok(steps)
}

/// What is between `[` and `]`.
fn bracket(inside: &str) -> Option<Step> {
    let quoted = |s: &str| {
        s.strip_prefix('\'')
            .and_then(|s| s.strip_suffix('\''))
            .or_else(|| s.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
            .filter(|s| !s.contains(['\'', '"', '\\']))
            .map(str::to_owned)
    };
    if inside == "*" {
        return Some(Step::All);
    }
    if let Ok(i) = inside.parse::<i64>() {
        return Some(Step::Index(i));
    }
    if let Some(key) = quoted(inside) {
        return Some(Step::Field(key));
    }
    let filter = inside.strip_prefix("?(@.")?.strip_suffix(')')?;
    let (lhs, rhs) = filter.split_once("==")?;
    let fields: Vec<String> = lhs.trim().split('.').map(str::to_owned).collect();
    if fields
        .iter()
        .any(|f| f.is_empty() || !f.chars().all(field_char))
    {
        return None;
    }
    let rhs = rhs.trim();
    let want = match quoted(rhs) {
        Some(s) => Value::String(s),
        None => match rhs {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            n => json!(n.parse::<i64>().ok()?),
        },
    };
    Some(Step::Filter(fields, want))
}

/// Each account's custom-resource columns, kept while its surface number holds.
#[derive(Debug, Default)]
pub struct Memory {
    /// Kept per account.
    pub accounts: PerAccount<Account>,
}

/// One account's custom-resource columns.
#[derive(Debug, Default)]
pub struct Account {
    surface: u64,
    /// By (group, version, resource): the columns, or why the hub cannot write them.
    kinds: HashMap<(String, String, String), Result<Arc<Custom>, Unsupported>>,
}

/// What the hub knows of a custom kind's columns.
#[derive(Debug, Clone)]
pub enum Known {
    /// Its columns.
    Columns(Arc<Custom>),
    /// Columns the hub cannot write (its Tables go to the cluster).
    Unsupported(Unsupported),
    /// Not asked yet under this surface.
    Unknown,
}

impl Memory {
    /// What is kept for the kind while the account's surface is `surface`.
    pub fn get(&self, account: &str, surface: u64, gvr: (&str, &str, &str)) -> Known {
        let accounts = self.accounts.lock();
        let Some(a) = accounts.get(account).filter(|a| a.surface == surface) else {
            return Known::Unknown;
        };
        let key = (gvr.0.to_owned(), gvr.1.to_owned(), gvr.2.to_owned());
        match a.kinds.get(&key) {
            Some(Ok(c)) => Known::Columns(Arc::clone(c)),
            Some(Err(why)) => Known::Unsupported(why),
            None => Known::Unknown,
        }
    }

    /// Keeps what the CRD said of the kind, under `surface`.
    pub fn keep(
        &self,
        account: &str,
        surface: u64,
        gvr: (&str, &str, &str),
        columns: Result<Arc<Custom>, Unsupported>,
    ) {
        let mut accounts = self.accounts.lock();
        let a = accounts.entry(account.to_owned()).or_default();
        if a.surface != surface {
            *a = Account {
                surface,
                kinds: HashMap::new(),
            };
        }
        let key = (gvr.0.to_owned(), gvr.1.to_owned(), gvr.2.to_owned());
        if a.kinds.len() < MAX_KINDS_PER_ACCOUNT || a.kinds.contains_key(&key) {
            a.kinds.insert(key, columns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd(columns: Value) -> Value {
        json!({"spec": {"versions": [
            {"name": "v1beta1"},
            {"name": "v1", "additionalPrinterColumns": columns}
        ]}})
    }

    #[test]
    fn a_crds_columns_fill_as_the_api_server_fills_them() {
        let c = Custom::from_crd(
            &crd(json!([
                {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
                {"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status", "description": "Ready or not"},
                {"name": "Host", "type": "string", "jsonPath": ".spec.hosts[0]", "priority": 1},
                {"name": "Labels", "type": "string", "jsonPath": ".metadata.labels"},
                {"name": "Key", "type": "string", "jsonPath": ".metadata.annotations['a.b/c']"},
                {"name": "On", "type": "boolean", "jsonPath": ".spec.on"},
                {"name": "Ratio", "type": "number", "jsonPath": ".spec.ratio"},
                {"name": "Created", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                {"name": "Missing", "type": "string", "jsonPath": ".spec.nothing"},
            ])),
            "v1",
        )
        .expect("supported");
        let cols = c.columns();
        assert_eq!(cols[0]["name"], "Name");
        assert_eq!(cols[0]["format"], "name");
        assert_eq!(
            cols[1]["description"],
            "Custom resource definition column (in JSONPath format): .spec.replicas"
        );
        assert_eq!(cols[2]["description"], "Ready or not");
        assert_eq!(cols[3]["priority"], 1);
        let o = json!({
            "metadata": {"name": "w", "creationTimestamp": "2026-01-01T00:00:00Z",
                "labels": {"b": "2", "a": "1"}, "annotations": {"a.b/c": "yes"}},
            "spec": {"replicas": 3, "hosts": ["x", "y"], "on": true, "ratio": 0.5},
            "status": {"conditions": [{"type": "Synced", "status": "True"}, {"type": "Ready", "status": "False"}]}
        });
        let now = SystemTime::from("2026-01-01T00:02:05Z".parse::<Timestamp>().expect("t"));
        assert_eq!(
            c.cells(&o, now),
            vec![
                json!("w"),
                json!(3),
                json!("False"),
                json!("x"),
                json!("{\"a\":\"1\",\"b\":\"2\"}"),
                json!("yes"),
                json!(true),
                json!(0.5),
                json!("2m5s"),
                Value::Null,
            ]
        );
    }

    #[test]
    fn without_columns_a_crd_shows_its_age_and_odd_paths_go_to_the_cluster() {
        let c = Custom::from_crd(&crd(json!([])), "v1").expect("supported");
        let cols = c.columns();
        assert_eq!(cols[1]["name"], "Age");
        assert_eq!(cols[1]["type"], "date");
        assert!(Custom::from_crd(&crd(json!([])), "v2").is_err());
        for odd in [
            "spec.replicas",
            ".spec..replicas",
            ".spec.items[1:2]",
            ".spec.items[?(@.a>1)]",
            "{.spec.a}",
            ".spec.items[?(@.a==\"b\" && @.c==\"d\")]",
        ] {
            assert!(
                Custom::from_crd(
                    &crd(json!([{"name": "X", "type": "string", "jsonPath": odd}])),
                    "v1"
                )
                .is_err(),
                "{odd}"
            );
        }
    }

    #[test]
    fn columns_are_kept_per_surface_and_dropped_with_the_account() {
        let memory = Memory::default();
        let c = Arc::new(Custom::from_crd(&crd(json!([])), "v1").expect("supported"));
        let gvr = ("e.x", "v1", "widgets");
        assert!(matches!(memory.get("a", 1, gvr), Known::Unknown));
        memory.keep("a", 1, gvr, Ok(c));
        assert!(matches!(memory.get("a", 1, gvr), Known::Columns(_)));
        assert!(matches!(memory.get("a", 2, gvr), Known::Unknown));
        memory.keep("a", 2, gvr, Err("odd"));
        assert!(matches!(memory.get("a", 2, gvr), Known::Unsupported(_)));
        assert_eq!(memory.accounts.accounts(), ["a"]);
        memory.accounts.forget("a");
        assert!(matches!(memory.get("a", 2, gvr), Known::Unknown));
        assert!(memory.accounts.accounts().is_empty());
    }
}
