//! Kubernetes protobuf (`application/vnd.kubernetes.protobuf`) for the built-in kinds,
//! transcoded from the JSON the cache holds by the upstream schema: the
//! `generated.proto` files of `k8s.io/api` and `k8s.io/apimachinery` compiled to a
//! descriptor set (`k8s.binpb`), and the few facts about their Go types the protobuf
//! does not say (`upstream.rs`: which API group a package serves, which fields Go embeds
//! `json:",inline"`). Both are made by `hub/tests/k8s_protobuf_schema.rs`; nothing here
//! is written per kind.
//!
//! The JSON is walked with each message's descriptor. The types whose JSON is not
//! their protobuf have rules of their own ([`Special`]): `metav1.Time` and `MicroTime`
//! (RFC 3339 ↔ seconds and nanos), `metav1.Duration` (a Go duration ↔ nanoseconds),
//! `resource.Quantity` (a string), `intstr.IntOrString` (a number or a string),
//! `runtime.RawExtension` and `metav1.FieldsV1` (JSON carried as bytes), and Go slice
//! types (a JSON array ↔ a message of `items`). Anything the schema does not know (a
//! field a newer cluster added, a value of the wrong type) is an [`Untranscodable`]
//! error, never a guess: the caller answers JSON instead.
//!
//! What goes on the wire is what kube-apiserver writes (k8s.io/apimachinery's
//! `runtime/serializer/protobuf`): the magic `k8s\0`, then a `runtime.Unknown` whose
//! `typeMeta` names the kind and whose `raw` is the object's message; a list is the
//! kind's `…List` message; a watch is a stream of `metav1.WatchEvent`s, each prefixed by
//! its length (4 bytes, big-endian), whose object is the enveloped object's bytes.

#[rustfmt::skip]
mod upstream;

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, OnceLock};

use axum::body::Body;
use base64::Engine as _;
use http::{HeaderValue, Response, header};
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind as FieldKind, MessageDescriptor};
use serde_json::Value;
use tracing::warn;

/// The media type of Kubernetes protobuf.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The media type of a watch in Kubernetes protobuf.
pub const WATCH_MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf;stream=watch";
/// What every enveloped object begins with.
const MAGIC: &[u8] = b"k8s\0";

/// Why an object has no protobuf: where in it, and what is wrong there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at {at}")]
pub struct Untranscodable {
    /// The field's path in the object (`spec.containers.ports.containerPort`).
    pub at: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl Untranscodable {
    fn new(reason: &'static str) -> Untranscodable {
        Untranscodable {
            at: String::new(),
            reason,
        }
    }

    /// The error with `field` in front of its path.
    fn under(mut self, field: &str) -> Untranscodable {
        self.at = if self.at.is_empty() {
            field.to_owned()
        } else {
            format!("{field}.{}", self.at)
        };
        self
    }
}

/// The message types whose JSON is not their protobuf's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    /// `metav1.Time`: RFC 3339, seconds only.
    Time,
    /// `metav1.MicroTime`: RFC 3339 with microseconds.
    MicroTime,
    /// `metav1.Duration`: a Go duration string.
    Duration,
    /// `resource.Quantity`: a string (or a number).
    Quantity,
    /// `intstr.IntOrString`: a number or a string.
    IntOrString,
    /// `runtime.RawExtension`: any JSON, carried as bytes.
    RawExtension,
    /// `metav1.FieldsV1`: a JSON object, carried as bytes.
    FieldsV1,
}

fn special(full_name: &str) -> Option<Special> {
    Some(match full_name {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => Special::Time,
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => Special::MicroTime,
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => Special::Duration,
        "k8s.io.apimachinery.pkg.api.resource.Quantity"
        | "k8s.io.apimachinery.pkg.api.resource.QuantityValue" => Special::Quantity,
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => Special::IntOrString,
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => Special::RawExtension,
        "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => Special::FieldsV1,
        _ => return None,
    })
}

/// The upstream schema, loaded once.
pub struct Schema {
    pool: DescriptorPool,
    /// (group, version) → protobuf package.
    groups: HashMap<(&'static str, &'static str), &'static str>,
    /// (message, field number) of Go's inline fields.
    inline: HashSet<(&'static str, u32)>,
    /// Kinds whose objects once failed to transcode: answered in JSON from then on.
    refused: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Schema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schema").finish_non_exhaustive()
    }
}

/// The schema of `k8s.io/api` [`upstream::VERSION`].
pub fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let pool = DescriptorPool::decode(&include_bytes!("k8s.binpb")[..]).unwrap_or_else(|e| {
            // Made and checked by tests/k8s_protobuf_schema.rs: never expected.
            warn!(error = %e, "the Kubernetes protobuf schema does not load; answering JSON only");
            DescriptorPool::new()
        });
        Schema {
            pool,
            groups: upstream::GROUPS
                .iter()
                .map(|(g, v, p)| ((*g, *v), *p))
                .collect(),
            inline: upstream::INLINE.iter().copied().collect(),
            refused: Mutex::new(HashSet::new()),
        }
    })
}

/// A kind the schema has: its object's and its list's messages and its type meta.
#[derive(Debug, Clone)]
pub struct Kind {
    object: MessageDescriptor,
    list: MessageDescriptor,
    api_version: String,
    kind: String,
}

impl Schema {
    /// The kind `kind` of `group`/`version` when it is built in and the schema has it
    /// (and none of its objects failed to transcode before).
    pub fn kind(&self, group: &str, version: &str, kind: &str) -> Option<Kind> {
        let package = self.groups.get(&(group, version))?;
        let object = self
            .pool
            .get_message_by_name(&format!("{package}.{kind}"))?;
        if self.is_refused(object.full_name()) {
            return None;
        }
        let list = self
            .pool
            .get_message_by_name(&format!("{package}.{kind}List"))?;
        Some(Kind {
            object,
            list,
            api_version: if group.is_empty() {
                version.to_owned()
            } else {
                format!("{group}/{version}")
            },
            kind: kind.to_owned(),
        })
    }

    /// [`Schema::kind`] of a kind named by its `apiVersion` (`group/version`, or
    /// `version` for the core group).
    pub fn kind_of(&self, api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        self.kind(group, version, kind)
    }

    fn is_refused(&self, message: &str) -> bool {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(message)
    }

    /// Notes that an object of `kind` did not transcode: the kind is answered in JSON
    /// from then on (a watch cannot change its content type midway, and the next
    /// change would fail the same way). Logged once per kind.
    pub fn refuse(&self, kind: &Kind, err: &Untranscodable) {
        let first = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(kind.object.full_name().to_owned());
        if first {
            warn!(
                kind = %kind.kind, api_version = %kind.api_version, error = %err,
                "an object the hub's protobuf schema (k8s.io/api {}) cannot write; its kind is answered in JSON from now on",
                upstream::VERSION
            );
        }
    }

    fn inline(&self, message: &MessageDescriptor, field: &FieldDescriptor) -> bool {
        !self.inline.is_empty() && self.inline.contains(&(message.full_name(), field.number()))
    }
}

/// `value` as a varint.
fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn tag(out: &mut Vec<u8>, number: u32, wire: u8) {
    varint(out, (u64::from(number) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
    tag(out, number, 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn varint_field(out: &mut Vec<u8>, number: u32, value: u64) {
    tag(out, number, 0);
    varint(out, value);
}

/// An object's JSON as its kind's enveloped protobuf (`k8s\0` + `runtime.Unknown`).
pub fn object(kind: &Kind, json: &str) -> Result<Vec<u8>, Untranscodable> {
    let value: Value = serde_json::from_str(json).map_err(|_| Untranscodable::new("not JSON"))?;
    let mut raw = Vec::with_capacity(json.len());
    encode_message(schema(), &kind.object, &value, true, &mut raw)?;
    Ok(envelope(&kind.api_version, &kind.kind, &raw))
}

/// An answer of Kubernetes protobuf (an object or a list).
pub fn response(body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
    response
}

/// `raw` in the envelope kube-apiserver writes.
fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let mut type_meta = Vec::with_capacity(api_version.len() + kind.len() + 4);
    bytes_field(&mut type_meta, 1, api_version.as_bytes());
    bytes_field(&mut type_meta, 2, kind.as_bytes());
    let mut out = Vec::with_capacity(raw.len() + type_meta.len() + 16);
    out.extend_from_slice(MAGIC);
    bytes_field(&mut out, 1, &type_meta);
    bytes_field(&mut out, 2, raw);
    // contentEncoding and contentType: empty.
    bytes_field(&mut out, 3, b"");
    bytes_field(&mut out, 4, b"");
    out
}

/// A list's `metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListMeta {
    /// `resourceVersion`.
    pub resource_version: String,
    /// `continue`, when there are more pages.
    pub cont: Option<String>,
    /// `remainingItemCount`.
    pub remaining: Option<i64>,
}

/// A list of `kind`'s objects (their JSON) as its enveloped `…List` message.
pub fn list<'a>(
    kind: &Kind,
    meta: &ListMeta,
    items: impl Iterator<Item = &'a str>,
) -> Result<Vec<u8>, Untranscodable> {
    let field = |name: &str| {
        kind.list
            .get_field_by_name(name)
            .ok_or(Untranscodable::new("a list message without it").under(name))
    };
    let (meta_field, items_field) = (field("metadata")?, field("items")?);
    let mut raw = Vec::new();
    let mut m = Vec::new();
    // ListMeta: selfLink 1, resourceVersion 2, continue 3, remainingItemCount 4.
    bytes_field(&mut m, 2, meta.resource_version.as_bytes());
    if let Some(c) = &meta.cont {
        bytes_field(&mut m, 3, c.as_bytes());
    }
    if let Some(n) = meta.remaining {
        varint_field(&mut m, 4, n as u64);
    }
    bytes_field(&mut raw, meta_field.number(), &m);
    let schema = schema();
    let mut item = Vec::new();
    for json in items {
        let value: Value =
            serde_json::from_str(json).map_err(|_| Untranscodable::new("not JSON"))?;
        item.clear();
        encode_message(schema, &kind.object, &value, true, &mut item)
            .map_err(|e| e.under("items"))?;
        bytes_field(&mut raw, items_field.number(), &item);
    }
    Ok(envelope(
        &kind.api_version,
        &format!("{}List", kind.kind),
        &raw,
    ))
}

/// One watch event (`ADDED`, `BOOKMARK`, ...) of an object's JSON, framed as on the
/// wire: its length, then the `metav1.WatchEvent`.
pub fn watch_event(kind: &Kind, event: &str, json: &str) -> Result<Vec<u8>, Untranscodable> {
    let enveloped = object(kind, json)?;
    let mut raw_extension = Vec::with_capacity(enveloped.len() + 8);
    bytes_field(&mut raw_extension, 1, &enveloped);
    let mut frame = vec![0; 4];
    bytes_field(&mut frame, 1, event.as_bytes());
    bytes_field(&mut frame, 2, &raw_extension);
    let len = u32::try_from(frame.len() - 4).map_err(|_| Untranscodable::new("over 4 GiB"))?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// Writes the JSON object `value` as `message` into `out` (its fields only, no length).
/// `top`: the object itself, whose `apiVersion` and `kind` the envelope carries.
fn encode_message(
    schema: &Schema,
    message: &MessageDescriptor,
    value: &Value,
    top: bool,
    out: &mut Vec<u8>,
) -> Result<(), Untranscodable> {
    let Value::Object(map) = value else {
        return Err(Untranscodable::new("not an object"));
    };
    // Fields of Go structs embedded inline: gathered, then written as their message.
    let mut inlined: Vec<(FieldDescriptor, serde_json::Map<String, Value>)> = Vec::new();
    for (key, v) in map {
        if let Some(field) = message.get_field_by_name(key)
            && !schema.inline(message, &field)
        {
            encode_field(schema, &field, v, out).map_err(|e| e.under(key))?;
            continue;
        }
        if top && (key == "apiVersion" || key == "kind") {
            continue;
        }
        let home = message
            .fields()
            .filter(|f| schema.inline(message, f))
            .find(|f| match f.kind() {
                FieldKind::Message(m) => accepts(schema, &m, key),
                _ => false,
            });
        let Some(home) = home else {
            return Err(Untranscodable::new("a field the schema does not have").under(key));
        };
        match inlined.iter_mut().find(|(f, _)| *f == home) {
            Some((_, fields)) => {
                fields.insert(key.clone(), v.clone());
            }
            None => {
                let mut fields = serde_json::Map::new();
                fields.insert(key.clone(), v.clone());
                inlined.push((home, fields));
            }
        }
    }
    for (field, fields) in inlined {
        encode_field(schema, &field, &Value::Object(fields), out)
            .map_err(|e| e.under(field.name()))?;
    }
    Ok(())
}

/// Whether `message` (or a message it embeds inline) has a field named `key`.
fn accepts(schema: &Schema, message: &MessageDescriptor, key: &str) -> bool {
    if let Some(field) = message.get_field_by_name(key)
        && !schema.inline(message, &field)
    {
        return true;
    }
    message
        .fields()
        .filter(|f| schema.inline(message, f))
        .any(|f| match f.kind() {
            FieldKind::Message(m) => accepts(schema, &m, key),
            _ => false,
        })
}

/// Writes `field` with the JSON `value` (null: absent, as Go reads it).
fn encode_field(
    schema: &Schema,
    field: &FieldDescriptor,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<(), Untranscodable> {
    if value.is_null() {
        return Ok(());
    }
    if field.is_map() {
        let Value::Object(map) = value else {
            return Err(Untranscodable::new("a map that is not an object"));
        };
        let FieldKind::Message(entry) = field.kind() else {
            return Err(Untranscodable::new("a map without entries"));
        };
        let key_field = entry.map_entry_key_field();
        let value_field = entry.map_entry_value_field();
        let mut e = Vec::new();
        for (k, v) in map {
            e.clear();
            encode_single(schema, &key_field, &Value::String(k.clone()), &mut e)?;
            if !v.is_null() {
                encode_single(schema, &value_field, v, &mut e).map_err(|err| err.under(k))?;
            }
            bytes_field(out, field.number(), &e);
        }
        return Ok(());
    }
    if field.is_list() {
        let Value::Array(items) = value else {
            return Err(Untranscodable::new("a list that is not an array"));
        };
        for item in items {
            if item.is_null() {
                return Err(Untranscodable::new("null in a list"));
            }
            encode_single(schema, field, item, out)?;
        }
        return Ok(());
    }
    encode_single(schema, field, value, out)
}

/// Writes one value of `field` (a list's element, a map's key or value, or the field).
fn encode_single(
    schema: &Schema,
    field: &FieldDescriptor,
    value: &Value,
    out: &mut Vec<u8>,
) -> Result<(), Untranscodable> {
    let n = field.number();
    let int = || value.as_i64().ok_or(Untranscodable::new("not an integer"));
    match field.kind() {
        FieldKind::Message(m) => {
            let mut inner = Vec::new();
            match special(m.full_name()) {
                Some(s) => encode_special(s, value, &mut inner)?,
                None => match value {
                    // A Go slice type (`type ExtraValue []string`): its protobuf is a
                    // message of `items`.
                    Value::Array(_) => {
                        let items = m
                            .get_field_by_name("items")
                            .filter(|f| f.is_list() && m.fields().len() == 1)
                            .ok_or(Untranscodable::new("an array for a message"))?;
                        encode_field(schema, &items, value, &mut inner)?;
                    }
                    _ => encode_message(schema, &m, value, false, &mut inner)?,
                },
            }
            bytes_field(out, n, &inner);
        }
        FieldKind::String => {
            let s = value.as_str().ok_or(Untranscodable::new("not a string"))?;
            bytes_field(out, n, s.as_bytes());
        }
        FieldKind::Bytes => {
            let s = value
                .as_str()
                .ok_or(Untranscodable::new("bytes that are not a string"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| Untranscodable::new("bytes that are not base64"))?;
            bytes_field(out, n, &bytes);
        }
        FieldKind::Bool => {
            let b = value
                .as_bool()
                .ok_or(Untranscodable::new("not a boolean"))?;
            varint_field(out, n, u64::from(b));
        }
        FieldKind::Int64 => varint_field(out, n, int()? as u64),
        FieldKind::Int32 => {
            let v = i32::try_from(int()?).map_err(|_| Untranscodable::new("over 32 bits"))?;
            // Negative int32s are written sign-extended, as 64 bits.
            varint_field(out, n, i64::from(v) as u64);
        }
        FieldKind::Uint64 => {
            let v = value
                .as_u64()
                .ok_or(Untranscodable::new("not an unsigned integer"))?;
            varint_field(out, n, v);
        }
        FieldKind::Uint32 => {
            let v = value
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or(Untranscodable::new("not a 32-bit unsigned integer"))?;
            varint_field(out, n, u64::from(v));
        }
        FieldKind::Double => {
            let v = value.as_f64().ok_or(Untranscodable::new("not a number"))?;
            tag(out, n, 1);
            out.extend_from_slice(&v.to_le_bytes());
        }
        FieldKind::Float => {
            let v = value.as_f64().ok_or(Untranscodable::new("not a number"))?;
            tag(out, n, 5);
            out.extend_from_slice(&(v as f32).to_le_bytes());
        }
        // Not in the Kubernetes schema.
        _ => {
            return Err(Untranscodable::new(
                "a protobuf type Kubernetes does not use",
            ));
        }
    }
    Ok(())
}

/// Writes the fields of a [`Special`] message from its JSON.
fn encode_special(s: Special, value: &Value, out: &mut Vec<u8>) -> Result<(), Untranscodable> {
    match s {
        Special::Time | Special::MicroTime => {
            let text = value
                .as_str()
                .ok_or(Untranscodable::new("a time that is not a string"))?;
            let (seconds, nanos) =
                rfc3339(text).ok_or(Untranscodable::new("a time that is not RFC 3339"))?;
            // Go's zero time is written as nothing.
            if seconds != GO_ZERO_TIME || nanos != 0 {
                varint_field(out, 1, seconds as u64);
                // Time keeps seconds only; MicroTime microseconds.
                let nanos = nanos - nanos % 1000;
                if s == Special::MicroTime && nanos != 0 {
                    varint_field(out, 2, u64::from(nanos));
                }
            }
        }
        Special::Duration => {
            let text = value
                .as_str()
                .ok_or(Untranscodable::new("a duration that is not a string"))?;
            let nanos = go_duration(text).ok_or(Untranscodable::new("not a Go duration"))?;
            varint_field(out, 1, nanos as u64);
        }
        Special::Quantity => {
            let text = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err(Untranscodable::new("a quantity that is not a string")),
            };
            bytes_field(out, 1, text.as_bytes());
        }
        Special::IntOrString => match value {
            Value::Number(_) => {
                let v = value
                    .as_i64()
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or(Untranscodable::new("an int-or-string over 32 bits"))?;
                varint_field(out, 1, 0);
                varint_field(out, 2, i64::from(v) as u64);
            }
            Value::String(s) => {
                varint_field(out, 1, 1);
                bytes_field(out, 3, s.as_bytes());
            }
            _ => return Err(Untranscodable::new("an int-or-string of another type")),
        },
        Special::RawExtension => {
            bytes_field(out, 1, value.to_string().as_bytes());
        }
        Special::FieldsV1 => {
            if !value.is_object() {
                return Err(Untranscodable::new("fieldsV1 that is not an object"));
            }
            bytes_field(out, 1, value.to_string().as_bytes());
        }
    }
    Ok(())
}

/// Go's zero `time.Time` (0001-01-01T00:00:00Z) in Unix seconds.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// Days from 1970-01-01 to a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `2006-01-02T15:04:05[.frac](Z|±07:00)` as Unix seconds and nanoseconds.
fn rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = s.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 59 {
        return None;
    }
    let mut at = 19;
    let mut nanos: u32 = 0;
    if b.get(at) == Some(&b'.') {
        at += 1;
        let start = at;
        while b.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        let digits = &s[start..at];
        if digits.is_empty() || digits.len() > 9 {
            return None;
        }
        nanos = digits.parse::<u32>().ok()? * 10u32.pow(9 - digits.len() as u32);
    }
    let offset = match b.get(at)? {
        b'Z' | b'z' if at + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == b.len() && b[at + 3] == b':' => {
            let minutes = num(at + 1, 2)? * 60 + num(at + 4, 2)?;
            if *sign == b'+' { minutes } else { -minutes }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset * 60;
    Some((seconds, nanos))
}

/// A Go duration (`1h2m3.5s`, `300ms`, `-1.5h`, `0`) in nanoseconds.
fn go_duration(s: &str) -> Option<i64> {
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (whole, fraction) = rest[..number_end]
            .split_once('.')
            .unwrap_or((&rest[..number_end], ""));
        if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
            return None;
        }
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale: i128 = match &rest[..unit_end] {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        rest = &rest[unit_end..];
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let fraction = &fraction[..fraction.len().min(18)];
        let digits: i128 = if fraction.is_empty() {
            0
        } else {
            fraction.parse().ok()?
        };
        let fraction_nanos = digits * scale / 10i128.pow(fraction.len() as u32);
        total = total.checked_add(whole.checked_mul(scale)?.checked_add(fraction_nanos)?)?;
    }
    let nanos = i64::try_from(total).ok()?;
    Some(if negative { -nanos } else { nanos })
}

#[cfg(test)]
mod tests;
