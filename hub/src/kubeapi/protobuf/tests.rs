//! The transcoder on real objects, checked by decoding its protobuf with the same
//! descriptors back to the Kubernetes JSON (the rules of [`super::Special`] the other
//! way round) and comparing with what went in.

use prost_reflect::{DynamicMessage, MapKey, ReflectMessage as _, Value as Pv};
use serde_json::{Value, json};

use super::*;

/// The Kubernetes JSON of a decoded message, as Go's JSON encoding writes it.
fn to_json(schema: &Schema, m: &DynamicMessage) -> Value {
    let d = m.descriptor();
    if let Some(s) = special(d.full_name()) {
        return special_json(s, m);
    }
    if d.fields().len() == 1
        && let Some(items) = d.get_field_by_name("items")
        && items.is_list()
    {
        return value_json(schema, &m.get_field(&items));
    }
    let mut out = serde_json::Map::new();
    for (field, v) in m.fields() {
        let v = value_json(schema, v);
        if schema.inline(&d, &field) {
            if let Value::Object(inner) = v {
                out.extend(inner);
            }
        } else {
            out.insert(field.name().to_owned(), v);
        }
    }
    Value::Object(out)
}

fn value_json(schema: &Schema, v: &Pv) -> Value {
    match v {
        Pv::Bool(b) => json!(b),
        Pv::I32(n) => json!(n),
        Pv::I64(n) => json!(n),
        Pv::U32(n) => json!(n),
        Pv::U64(n) => json!(n),
        Pv::F64(n) => json!(n),
        Pv::F32(n) => json!(n),
        Pv::String(s) => json!(s),
        Pv::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Pv::Message(m) => to_json(schema, m),
        Pv::List(items) => Value::Array(items.iter().map(|i| value_json(schema, i)).collect()),
        Pv::Map(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let MapKey::String(k) = k else {
                        panic!("Kubernetes maps have string keys")
                    };
                    (k.clone(), value_json(schema, v))
                })
                .collect(),
        ),
        Pv::EnumNumber(_) => panic!("Kubernetes has no enums"),
    }
}

fn special_json(s: Special, m: &DynamicMessage) -> Value {
    let get = |n: u32| m.get_field_by_number(n).map(std::borrow::Cow::into_owned);
    let int = |n: u32| match get(n) {
        Some(Pv::I64(v)) => v,
        Some(Pv::I32(v)) => i64::from(v),
        _ => 0,
    };
    let text = |n: u32| match get(n) {
        Some(Pv::String(v)) => v,
        _ => String::new(),
    };
    let bytes = |n: u32| match get(n) {
        Some(Pv::Bytes(v)) => serde_json::from_slice(&v).expect("raw JSON"),
        _ => Value::Null,
    };
    match s {
        Special::Time | Special::MicroTime => {
            let (secs, nanos) = (int(1), int(2));
            let days = secs.div_euclid(86_400);
            let rem = secs.rem_euclid(86_400);
            // civil_from_days
            let z = days + 719_468;
            let era = z.div_euclid(146_097);
            let doe = z - era * 146_097;
            let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
            let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
            let mp = (5 * doy + 2) / 153;
            let d = doy - (153 * mp + 2) / 5 + 1;
            let mo = if mp < 10 { mp + 3 } else { mp - 9 };
            let y = yoe + era * 400 + i64::from(mo <= 2);
            let base = format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
            if s == Special::MicroTime {
                json!(format!("{base}.{:06}Z", nanos / 1000))
            } else {
                json!(format!("{base}Z"))
            }
        }
        Special::Duration => {
            let n = int(1);
            assert_eq!(n % 1_000_000_000, 0, "whole seconds in these tests");
            json!(format!("{}s", n / 1_000_000_000))
        }
        Special::Quantity => json!(text(1)),
        Special::IntOrString => match int(1) {
            0 => json!(int(2)),
            _ => json!(text(3)),
        },
        Special::RawExtension | Special::FieldsV1 => bytes(1),
    }
}

/// Unwraps the envelope: (apiVersion, kind, raw).
fn unwrap(bytes: &[u8]) -> (String, String, Vec<u8>) {
    let schema = schema();
    let rest = bytes.strip_prefix(MAGIC).expect("the magic");
    let unknown = schema
        .pool
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
        .expect("Unknown");
    let m = DynamicMessage::decode(unknown, rest).expect("an Unknown");
    let tm = m.get_field_by_name("typeMeta").expect("typeMeta");
    let tm = tm.as_message().expect("a message");
    let s = |m: &DynamicMessage, f: &str| {
        m.get_field_by_name(f)
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    let raw = m
        .get_field_by_name("raw")
        .and_then(|v| v.as_bytes().map(|b| b.to_vec()))
        .expect("raw");
    (s(tm, "apiVersion"), s(tm, "kind"), raw)
}

/// `json` through protobuf and back, with its envelope's type meta.
fn round_trip(group: &str, version: &str, kind: &str, json: &Value) -> Value {
    let schema = schema();
    let k = schema.kind(group, version, kind).expect("a built-in kind");
    let bytes = object(&k, &json.to_string()).expect("transcodes");
    let (api_version, kind_name, raw) = unwrap(&bytes);
    assert_eq!(api_version, json["apiVersion"]);
    assert_eq!(kind_name, kind);
    let m = DynamicMessage::decode(k.object.clone(), raw.as_slice()).expect("decodes");
    let mut back = to_json(schema, &m);
    back["apiVersion"] = json!(api_version);
    back["kind"] = json!(kind_name);
    back
}

fn config_map() -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": "settings", "namespace": "team-a", "uid": "4f1c3a52-8d0e-4a52-9d43-9f5c1f1e2b11",
            "resourceVersion": "12345", "creationTimestamp": "2026-03-04T05:06:07Z",
            "labels": {"app": "web", "tier": "front"},
            "annotations": {"note": "ünïcødé \"quoted\""},
            "managedFields": [{
                "manager": "kubectl-client-side-apply", "operation": "Update",
                "apiVersion": "v1", "time": "2026-03-04T05:06:07Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {".": {}, "f:key": {}}}
            }]
        },
        "data": {"key": "value", "empty": ""},
        "binaryData": {"blob": "AAECAwQF/w=="},
        "immutable": false
    })
}

fn pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web-0", "namespace": "team-a", "generateName": "web-",
            "creationTimestamp": "2026-03-04T05:06:07Z",
            "deletionTimestamp": "2026-03-04T06:00:00Z", "deletionGracePeriodSeconds": 30,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "u-1", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "containers": [{
                "name": "web", "image": "nginx:1.27", "command": ["nginx"], "args": ["-g", "daemon off;"],
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "A", "value": "1"}, {"name": "B", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}}],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}, "requests": {"cpu": "250m", "memory": "64Mi", "ephemeral-storage": "1Gi"}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"}, "initialDelaySeconds": 3, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
                "securityContext": {"runAsUser": 1000, "runAsNonRoot": true, "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "cache", "mountPath": "/cache"}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"
            }],
            "volumes": [
                {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
                {"name": "config", "configMap": {"name": "settings", "defaultMode": 420, "items": [{"key": "key", "path": "key.txt"}]}}
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "nodeName": "node-1", "schedulerName": "default-scheduler", "priority": 0,
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "overhead": {"cpu": "10m"}
        },
        "status": {
            "phase": "Running", "podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}],
            "startTime": "2026-03-04T05:06:08Z", "qosClass": "Burstable",
            "conditions": [{"type": "Ready", "status": "True", "lastProbeTime": null, "lastTransitionTime": "2026-03-04T05:06:10Z"}],
            "containerStatuses": [{"name": "web", "ready": true, "restartCount": 2, "image": "nginx:1.27", "imageID": "sha256:abc", "started": true,
                "state": {"running": {"startedAt": "2026-03-04T05:06:09Z"}},
                "lastState": {"terminated": {"exitCode": -1, "reason": "Error", "startedAt": "2026-03-04T05:00:00Z", "finishedAt": "2026-03-04T05:06:00Z"}}}]
        }
    })
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "team-a", "generation": 4, "resourceVersion": "99"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front", "edge"]}]},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx", "resources": {}}], "securityContext": {}}
            },
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
            "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600
        },
        "status": {
            "observedGeneration": 4, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3, "availableReplicas": 3,
            "conditions": [{"type": "Available", "status": "True", "lastUpdateTime": "2026-03-04T05:06:07Z", "lastTransitionTime": "2026-03-04T05:06:07Z", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."}]
        }
    })
}

#[test]
fn a_config_map_round_trips() {
    let cm = config_map();
    assert_eq!(round_trip("", "v1", "ConfigMap", &cm), cm);
}

#[test]
fn a_pod_with_quantities_times_and_int_or_string_ports_round_trips() {
    let p = pod();
    let mut want = p.clone();
    // A null time is no time.
    want["status"]["conditions"][0]
        .as_object_mut()
        .expect("a condition")
        .remove("lastProbeTime");
    assert_eq!(round_trip("", "v1", "Pod", &p), want);
}

#[test]
fn a_deployment_round_trips() {
    let d = deployment();
    assert_eq!(round_trip("apps", "v1", "Deployment", &d), d);
}

#[test]
fn micro_times_durations_raw_extensions_and_slice_types_round_trip() {
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "l", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "node-1", "leaseDurationSeconds": 40, "renewTime": "2026-03-04T05:06:07.123456Z"}
    });
    assert_eq!(
        round_trip("coordination.k8s.io", "v1", "Lease", &lease),
        lease
    );
    let revision = json!({
        "apiVersion": "apps/v1", "kind": "ControllerRevision",
        "metadata": {"name": "r"}, "revision": 3,
        "data": {"spec": {"template": {"spec": {"containers": [{"name": "x"}]}}}}
    });
    assert_eq!(
        round_trip("apps", "v1", "ControllerRevision", &revision),
        revision
    );
    let csr = json!({
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"name": "c"},
        "spec": {"request": "AAEC", "signerName": "example.com/s", "usages": ["client auth"],
                 "username": "u", "extra": {"scopes": ["a", "b"]}, "expirationSeconds": 600}
    });
    assert_eq!(
        round_trip(
            "certificates.k8s.io",
            "v1",
            "CertificateSigningRequest",
            &csr
        ),
        csr
    );
    assert_eq!(go_duration("1h2m3.5s"), Some(3_723_500_000_000));
    assert_eq!(go_duration("300ms"), Some(300_000_000));
    assert_eq!(go_duration("-1.5h"), Some(-5_400_000_000_000));
    assert_eq!(go_duration("0"), Some(0));
    assert_eq!(go_duration("5"), None);
    assert_eq!(go_duration("1d"), None);
    assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some((0, 0)));
    assert_eq!(
        rfc3339("2026-03-04T05:06:07+01:00"),
        rfc3339("2026-03-04T04:06:07Z")
    );
    assert_eq!(rfc3339("0001-01-01T00:00:00Z"), Some((GO_ZERO_TIME, 0)));
    assert_eq!(rfc3339("2026-03-04 05:06:07Z"), None);
}

#[test]
fn what_the_schema_does_not_know_is_refused_never_guessed() {
    let schema = schema();
    let cm = schema.kind("", "v1", "ConfigMap").expect("ConfigMap");
    let mut newer = config_map();
    newer["spec"] = json!({"fromTheFuture": true});
    assert_eq!(
        object(&cm, &newer.to_string()),
        Err(Untranscodable {
            at: "spec".into(),
            reason: "a field the schema does not have"
        })
    );
    let mut wrong = pod();
    wrong["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("8080");
    let p = schema.kind("", "v1", "Pod").expect("Pod");
    let err = object(&p, &wrong.to_string()).expect_err("a string port");
    assert_eq!(err.at, "spec.containers.ports.containerPort");
    // Custom resources and kinds the schema lacks have no protobuf.
    assert!(schema.kind("example.com", "v1", "Widget").is_none());
    assert!(schema.kind("", "v1", "Widget").is_none());
    assert!(schema.kind("apps", "v1", "Deployment").is_some());
}

#[test]
fn lists_and_watch_events_are_framed_as_kube_apiserver_frames_them() {
    let schema = schema();
    let k = schema.kind("", "v1", "ConfigMap").expect("ConfigMap");
    let a = config_map();
    let mut b = config_map();
    b["metadata"]["name"] = json!("other");
    let (a_text, b_text) = (a.to_string(), b.to_string());
    let meta = ListMeta {
        resource_version: "77".into(),
        cont: Some("token".into()),
        remaining: Some(3),
    };
    let bytes = list(&k, &meta, [a_text.as_str(), b_text.as_str()].into_iter()).expect("a list");
    let (api_version, kind, raw) = unwrap(&bytes);
    assert_eq!(
        (api_version.as_str(), kind.as_str()),
        ("v1", "ConfigMapList")
    );
    let decoded = to_json(
        schema,
        &DynamicMessage::decode(k.list.clone(), raw.as_slice()).expect("a ConfigMapList"),
    );
    assert_eq!(
        decoded["metadata"],
        json!({"resourceVersion": "77", "continue": "token", "remainingItemCount": 3})
    );
    let names: Vec<&str> = decoded["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["metadata"]["name"].as_str().expect("a name"))
        .collect();
    assert_eq!(names, ["settings", "other"]);

    let frame = watch_event(&k, "MODIFIED", &a_text).expect("an event");
    let len = u32::from_be_bytes(frame[..4].try_into().expect("4 bytes")) as usize;
    assert_eq!(len, frame.len() - 4);
    let event = schema
        .pool
        .get_message_by_name("k8s.io.apimachinery.pkg.apis.meta.v1.WatchEvent")
        .expect("WatchEvent");
    let ev = DynamicMessage::decode(event, &frame[4..]).expect("a WatchEvent");
    assert_eq!(
        ev.get_field_by_name("type")
            .and_then(|t| t.as_str().map(str::to_owned)),
        Some("MODIFIED".to_owned())
    );
    let object_field = ev.get_field_by_name("object").expect("object");
    let raw = object_field
        .as_message()
        .and_then(|m| m.get_field_by_name("raw"))
        .and_then(|r| r.as_bytes().map(|b| b.to_vec()))
        .expect("raw");
    assert_eq!(raw, object(&k, &a_text).expect("the object"));
}
