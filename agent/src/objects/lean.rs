//! Objects as the agent streams them, read without building a tree of them.
//!
//! A [`LeanObject`] keeps each top-level field of an object (`spec`, `status`, `data`,
//! ...) as the raw JSON text the API server sent, parses only the metadata the agent
//! reads (name, namespace, uid, resourceVersion, labels), keeps the rest of the metadata
//! raw, and skips `managedFields` as it reads them (they never leave: the one rule of
//! [`scale_agent_crds::objects`]). [`LeanObject::body`] then writes what the hub receives
//! by joining those pieces: `apiVersion` and `kind` first (the hub cuts them off a
//! stored object without parsing it), the metadata in the order `ObjectMeta` writes its
//! fields, then the other fields in the order the API server sent them, a Secret's data
//! left out. The JSON is the same as a `DynamicObject` stripped and written again would
//! be; within a raw field, its text is the API server's (key order, number and escape
//! spelling).
//!
//! Raw text needs serde_json's own deserializer reading the object: `serde_json::from_str`
//! and `from_slice` (kube's watch reads each event so, and [`LeanList`] is read so), and
//! the API server writes a watch event's `type` before its `object`, as serde needs to
//! read the object directly. A reader that buffers the object first (a
//! `serde_json::Value`, an `ObjectList` with its flattened type fields) cannot give raw
//! text: that is an error, never a silently different object.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, ObjectMeta};
use kube::core::{ApiResource, DynamicResourceScope, Resource};
use scale_agent_crds::objects;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Where a field of metadata goes: parsed into [`LeanObject::metadata`], or kept raw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Name,
    Namespace,
    Uid,
    ResourceVersion,
    Labels,
    /// Kept raw, at this index of [`LeanObject::kept`].
    Raw(usize),
}

/// Index of `annotations` among the raw fields of metadata.
const ANNOTATIONS: usize = 0;

/// The fields of `ObjectMeta` but `managedFields`, in the order it writes them; a field
/// not here is dropped, as `ObjectMeta` drops what it does not know.
const METADATA: [(&str, Slot); 14] = [
    ("annotations", Slot::Raw(ANNOTATIONS)),
    ("creationTimestamp", Slot::Raw(1)),
    ("deletionGracePeriodSeconds", Slot::Raw(2)),
    ("deletionTimestamp", Slot::Raw(3)),
    ("finalizers", Slot::Raw(4)),
    ("generateName", Slot::Raw(5)),
    ("generation", Slot::Raw(6)),
    ("labels", Slot::Labels),
    ("name", Slot::Name),
    ("namespace", Slot::Namespace),
    ("ownerReferences", Slot::Raw(7)),
    ("resourceVersion", Slot::ResourceVersion),
    ("selfLink", Slot::Raw(8)),
    ("uid", Slot::Uid),
];

/// How many fields of metadata are kept raw.
const RAW_METADATA: usize = 9;

/// A Kubernetes object of any kind, as the agent streams it (see the module's doc).
#[derive(Debug, Clone, Default)]
pub struct LeanObject {
    /// What the agent reads of the object's metadata: name, namespace, uid,
    /// resourceVersion and labels; its other fields are kept raw, apart.
    pub metadata: ObjectMeta,
    /// The other fields of metadata, raw, by their [`Slot::Raw`] index (`null` as none).
    kept: [Option<Box<RawValue>>; RAW_METADATA],
    /// The top-level fields but `apiVersion`, `kind` and `metadata`, raw, in order.
    fields: Vec<(Box<str>, Box<RawValue>)>,
}

impl LeanObject {
    /// The object as the hub receives it, typed as `resource`, without what never
    /// leaves the agent (managedFields; a Secret's data and last-applied annotation).
    pub fn body(&self, resource: &ApiResource) -> Result<Vec<u8>, serde_json::Error> {
        let secret = objects::is_secret(&resource.api_version, &resource.kind);
        let raw: usize = self
            .kept
            .iter()
            .flatten()
            .map(|v| v.get().len())
            .sum::<usize>()
            + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>();
        let mut out = Vec::with_capacity(raw + 256);
        out.extend_from_slice(b"{\"apiVersion\":");
        serde_json::to_writer(&mut out, &resource.api_version)?;
        out.extend_from_slice(b",\"kind\":");
        serde_json::to_writer(&mut out, &resource.kind)?;
        out.extend_from_slice(b",\"metadata\":{");
        let mut first = true;
        for (name, slot) in METADATA {
            let piece = self.piece(slot, secret);
            let Some(piece) = piece else { continue };
            if !first {
                out.push(b',');
            }
            first = false;
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            match piece {
                Piece::Str(s) => serde_json::to_writer(&mut out, s)?,
                Piece::Map(m) => serde_json::to_writer(&mut out, m)?,
                Piece::Owned(m) => serde_json::to_writer(&mut out, &m)?,
                Piece::Raw(v) => out.extend_from_slice(v.get().as_bytes()),
            }
        }
        out.push(b'}');
        for (key, value) in &self.fields {
            if !objects::keeps_field(secret, key) {
                continue;
            }
            out.push(b',');
            serde_json::to_writer(&mut out, &**key)?;
            out.push(b':');
            out.extend_from_slice(value.get().as_bytes());
        }
        out.push(b'}');
        Ok(out)
    }

    /// What is written of the field of metadata in `slot`.
    fn piece(&self, slot: Slot, secret: bool) -> Option<Piece<'_>> {
        let meta = &self.metadata;
        match slot {
            Slot::Name => meta.name.as_deref().map(Piece::Str),
            Slot::Namespace => meta.namespace.as_deref().map(Piece::Str),
            Slot::Uid => meta.uid.as_deref().map(Piece::Str),
            Slot::ResourceVersion => meta.resource_version.as_deref().map(Piece::Str),
            Slot::Labels => meta.labels.as_ref().map(Piece::Map),
            Slot::Raw(ANNOTATIONS) if secret => self.secret_annotations().map(Piece::Owned),
            Slot::Raw(i) => self.kept[i].as_deref().map(Piece::Raw),
        }
    }

    /// A Secret's annotations, stripped by [`objects::strip_metadata`]; none when that
    /// leaves none, or when they are not a map of strings (nothing of them is sent then).
    fn secret_annotations(&self) -> Option<BTreeMap<String, String>> {
        let raw = self.kept[ANNOTATIONS].as_deref()?;
        let mut meta = ObjectMeta {
            annotations: serde_json::from_str(raw.get()).ok()?,
            ..ObjectMeta::default()
        };
        objects::strip_metadata(&mut meta, true);
        meta.annotations
    }
}

/// One field of metadata to write.
enum Piece<'a> {
    Str(&'a str),
    Map(&'a BTreeMap<String, String>),
    Owned(BTreeMap<String, String>),
    Raw(&'a RawValue),
}

impl Resource for LeanObject {
    type DynamicType = ApiResource;
    type Scope = DynamicResourceScope;

    fn group(dt: &ApiResource) -> Cow<'_, str> {
        dt.group.as_str().into()
    }

    fn version(dt: &ApiResource) -> Cow<'_, str> {
        dt.version.as_str().into()
    }

    fn kind(dt: &ApiResource) -> Cow<'_, str> {
        dt.kind.as_str().into()
    }

    fn api_version(dt: &ApiResource) -> Cow<'_, str> {
        dt.api_version.as_str().into()
    }

    fn plural(dt: &ApiResource) -> Cow<'_, str> {
        dt.plural.as_str().into()
    }

    /// Only what the agent reads of metadata (see [`LeanObject::metadata`]).
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl<'de> Deserialize<'de> for LeanObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A top-level key.
enum Top {
    /// `apiVersion` or `kind`: written from the kind watched, as the agent always has.
    Type,
    Metadata,
    Other(Box<str>),
}

struct TopKey;

impl<'de> DeserializeSeed<'de> for TopKey {
    type Value = Top;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Top, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for TopKey {
    type Value = Top;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Top, E> {
        Ok(match key {
            "apiVersion" | "kind" => Top::Type,
            "metadata" => Top::Metadata,
            other => Top::Other(other.into()),
        })
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = LeanObject;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a Kubernetes object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LeanObject, A::Error> {
        let mut obj = LeanObject::default();
        let mut metadata = false;
        while let Some(key) = map.next_key_seed(TopKey)? {
            match key {
                Top::Type => {
                    map.next_value::<IgnoredAny>()?;
                }
                Top::Metadata if metadata => return Err(de::Error::duplicate_field("metadata")),
                Top::Metadata => {
                    metadata = true;
                    map.next_value_seed(MetaSeed(&mut obj))?;
                }
                Top::Other(key) => {
                    let value: Box<RawValue> = map.next_value()?;
                    // The last of a repeated key counts, as in a `serde_json::Value`.
                    match obj.fields.iter_mut().find(|(k, _)| *k == key) {
                        Some(field) => field.1 = value,
                        None => obj.fields.push((key, value)),
                    }
                }
            }
        }
        Ok(obj)
    }
}

/// Reads metadata into a [`LeanObject`].
struct MetaSeed<'a>(&'a mut LeanObject);

impl<'de> DeserializeSeed<'de> for MetaSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for MetaSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object's metadata")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let obj = self.0;
        while let Some(slot) = map.next_key_seed(MetaKey)? {
            let meta = &mut obj.metadata;
            match slot {
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
                Some(Slot::Name) => meta.name = map.next_value()?,
                Some(Slot::Namespace) => meta.namespace = map.next_value()?,
                Some(Slot::Uid) => meta.uid = map.next_value()?,
                Some(Slot::ResourceVersion) => meta.resource_version = map.next_value()?,
                Some(Slot::Labels) => meta.labels = map.next_value()?,
                Some(Slot::Raw(i)) => {
                    let value: Box<RawValue> = map.next_value()?;
                    // `null` is no value, as in `ObjectMeta`.
                    obj.kept[i] = (value.get() != "null").then_some(value);
                }
            }
        }
        Ok(())
    }
}

/// A key of metadata: its slot, or `None` for one that is skipped (managedFields, by
/// [`objects::MANAGED_FIELDS`], and what `ObjectMeta` does not know).
struct MetaKey;

impl<'de> DeserializeSeed<'de> for MetaKey {
    type Value = Option<Slot>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Slot>, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for MetaKey {
    type Value = Option<Slot>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Option<Slot>, E> {
        if key == objects::MANAGED_FIELDS {
            return Ok(None);
        }
        Ok(METADATA
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, slot)| *slot))
    }
}

/// One page of a list of [`LeanObject`]s. Unlike kube's `ObjectList` (whose flattened
/// type fields make serde buffer the whole page as a tree first), it reads each item
/// straight from the response's text.
#[derive(Debug, Deserialize)]
pub struct LeanList {
    /// The list's resourceVersion and continue token.
    #[serde(default)]
    pub metadata: ListMeta,
    /// The objects (`null` as none).
    #[serde(default, deserialize_with = "null_as_empty")]
    pub items: Vec<LeanObject>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<LeanObject>, D::Error> {
    Ok(Option::<Vec<LeanObject>>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests;
