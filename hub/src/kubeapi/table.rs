//! Lists (and the watches of `kubectl get -w`, one row per event, see
//! [`super::watch::Encoder`]) answered as `Table`s (`Accept:
//! application/json;as=Table;v=v1;g=meta.k8s.io`, what `kubectl get` asks for to
//! print columns), written as kube-apiserver writes them: its column definitions (always with the `-o wide` ones, priority 1), one row
//! per object with the cells its printers compute (`pkg/printers/internalversion`),
//! and the object's metadata (`includeObject=Metadata`, the default) or nothing
//! (`None`).
//!
//! Only the kinds whose printers the hub has are answered from the cache; a Table of
//! any other kind (or of a custom resource, whose `additionalPrinterColumns` the cache
//! does not know) goes to the cluster.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, header};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::columns::Custom;
use crate::core::cache::KindKey;

/// What a row of a Table carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    /// The object's metadata (`PartialObjectMetadata`), the default.
    Metadata,
    /// Nothing.
    None,
}

/// The Table a read asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableAsk {
    /// What each row carries.
    pub include: Include,
}

/// What a client asks an answer to be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// JSON.
    Json,
    /// A `meta.k8s.io/v1` Table (JSON).
    Table,
    /// Kubernetes protobuf first, JSON as its second choice (client-go's ask for
    /// built-in kinds): protobuf when the hub can write it ([`super::protobuf`]),
    /// JSON otherwise.
    Protobuf,
}

/// How the client wants a list; `Err` when the hub does not write what it asks for
/// (metadata-only answers, protobuf alone, a v1beta1 Table).
pub fn wanted(headers: &HeaderMap) -> Result<Media, &'static str> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(Media::Json);
    };
    let accept = accept
        .to_str()
        .map_err(|_| "an Accept header that is not text")?;
    let mut protobuf_first = false;
    // The API server answers with the first media type it can write.
    for t in accept.split(',') {
        let mut parts = t.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default();
        let params: Vec<(&str, &str)> = parts.filter_map(|p| p.split_once('=')).collect();
        let param = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
        match (media, param("as")) {
            ("application/json", Some("Table"))
                if param("v") == Some("v1") && param("g") == Some("meta.k8s.io") =>
            {
                // A Table is never written in protobuf: its JSON, as before.
                return Ok(Media::Table);
            }
            (_, Some(_)) => return Err("an answer the hub does not write (as=...)"),
            (super::protobuf::MEDIA_TYPE, None) => protobuf_first = true,
            ("application/json" | "*/*" | "application/*" | "", None) => {
                return Ok(if protobuf_first {
                    Media::Protobuf
                } else {
                    Media::Json
                });
            }
            _ => {}
        }
    }
    Err("no media type the hub writes")
}

/// `includeObject` as the API server reads it.
pub fn include(v: &str) -> Result<Include, &'static str> {
    match v {
        "" | "Metadata" => Ok(Include::Metadata),
        "None" => Ok(Include::None),
        _ => Err("includeObject other than Metadata or None"),
    }
}

/// A kind's columns and how to fill them.
pub struct Printer {
    columns: &'static [Column],
    cells: fn(&Value, SystemTime) -> Vec<Value>,
    /// The row's `conditions`, for the kinds whose printer sets them (Pods).
    conditions: Option<fn(&Value) -> Option<Value>>,
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
}

/// The API server's description of the Name column.
pub const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
/// The API server's description of an Age column (`metadata.creationTimestamp`).
pub const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

const fn col(name: &'static str, description: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind: "string",
        format: "",
        description,
        priority,
    }
}

/// An `integer` column.
const fn int(name: &'static str, description: &'static str) -> Column {
    Column {
        name,
        kind: "integer",
        format: "",
        description,
        priority: 0,
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    description: NAME_DOC,
    priority: 0,
};
const AGE: Column = col("Age", AGE_DOC, 0);

/// The columns of a workload's Table: Name, its own, then Age and (`-o wide`) its pod
/// template's Containers and Images and its Selector (described per kind); its rows are
/// written by [`workload_row`].
macro_rules! workload_columns {
    ($($own:expr,)* ; selector: $doc:expr) => {
        &[NAME, $($own,)* AGE, CONTAINERS, IMAGES, col("Selector", $doc, 1)]
    };
}

static CONFIG_MAP: Printer = Printer {
    conditions: None,
    columns: &[
        NAME,
        col(
            "Data",
            "Data contains the configuration data. Each key must consist of alphanumeric characters, '-', '_' or '.'. Values with non-UTF-8 byte sequences must use the BinaryData field. The keys stored in Data must not overlap with the keys in the BinaryData field, this is enforced during validation process.",
            0,
        ),
        AGE,
    ],
    cells: |o, now| {
        let count = |f: &str| o[f].as_object().map_or(0, serde_json::Map::len);
        vec![
            name(o),
            json!(count("data") + count("binaryData")),
            age(o, now),
        ]
    },
};

static NAMESPACE: Printer = Printer {
    conditions: None,
    columns: &[NAME, col("Status", "The status of the namespace", 0), AGE],
    cells: |o, now| {
        vec![
            name(o),
            json!(o["status"]["phase"].as_str().unwrap_or_default()),
            age(o, now),
        ]
    },
};

static SERVICE_ACCOUNT: Printer = Printer {
    conditions: None,
    columns: &[NAME, AGE],
    cells: |o, now| vec![name(o), age(o, now)],
};

static DEPLOYMENT: Printer = Printer {
    conditions: None,
    columns: workload_columns![
        col("Ready", "Number of the pod with ready state", 0),
        col(
            "Up-to-date",
            "Total number of non-terminating pods targeted by this deployment that have the desired template spec.",
            0,
        ),
        col(
            "Available",
            "Total number of available non-terminating pods (ready for at least minReadySeconds) targeted by this deployment.",
            0,
        ),
        ; selector: "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment. It must match the pod template's labels."
    ],
    cells: |o, now| {
        let status = &o["status"];
        workload_row(
            vec![
                name(o),
                ready_of_desired(o),
                int_of(&status["updatedReplicas"]),
                int_of(&status["availableReplicas"]),
            ],
            o,
            now,
            &o["spec"]["template"],
            selector(&o["spec"]["selector"]),
        )
    },
};

const CONTAINERS: Column = col("Containers", "Names of each container in the template.", 1);
const IMAGES: Column = col(
    "Images",
    "Images referenced by each container in the template.",
    1,
);

/// The cells a workload's row has after its own: its age, then (`-o wide`) the
/// container names and images of its pod template, as the API server lays them out.
fn age_and_containers(o: &Value, now: SystemTime, template: &Value) -> [Value; 3] {
    let [names, images] = template_containers(template);
    [age(o, now), names, images]
}

/// A workload's row: its own cells, then those [`workload_columns`] adds: its age, its
/// pod template's container names and images, and its selector as written.
fn workload_row(
    mut cells: Vec<Value>,
    o: &Value,
    now: SystemTime,
    template: &Value,
    selector: String,
) -> Vec<Value> {
    cells.extend(age_and_containers(o, now, template));
    cells.push(json!(selector));
    cells
}

/// `ready/desired` replicas of a Deployment or StatefulSet.
fn ready_of_desired(o: &Value) -> Value {
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    json!(format!(
        "{}/{}",
        n(&o["status"]["readyReplicas"]),
        n(&o["spec"]["replicas"])
    ))
}

/// The container names and images of a pod template.
fn template_containers(template: &Value) -> [Value; 2] {
    let list = template["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let joined = |f: &str| {
        list.iter()
            .map(|c| c[f].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(",")
    };
    [json!(joined("name")), json!(joined("image"))]
}

fn int_of(v: &Value) -> Value {
    json!(v.as_i64().unwrap_or(0))
}

/// apimachinery's `FormatLabelSelector`: the selector, or `<none>` when empty.
fn format_selector(s: &Value) -> String {
    let text = selector(s);
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

/// apimachinery's `labels.FormatLabels`: `k=v` sorted by key, or `<none>`.
fn format_labels(m: &Value) -> String {
    let mut pairs: Vec<(&String, &str)> = m
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    if pairs.is_empty() {
        "<none>".into()
    } else {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

static REPLICA_SET: Printer = Printer {
    conditions: None,
    columns: workload_columns![
        int(
            "Desired",
            "Replicas is the number of desired pods. This is a pointer to distinguish between explicit zero and unspecified. Defaults to 1. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicaset",
        ),
        int(
            "Current",
            "Replicas is the most recently observed number of non-terminating pods. More info: https://kubernetes.io/docs/concepts/workloads/controllers/replicaset",
        ),
        int(
            "Ready",
            "The number of non-terminating pods targeted by this ReplicaSet with a Ready Condition.",
        ),
        ; selector: "Selector is a label query over pods that should match the replica count. Label keys and values that must match in order to be controlled by this replica set. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"
    ],
    cells: |o, now| {
        workload_row(
            vec![
                name(o),
                int_of(&o["spec"]["replicas"]),
                int_of(&o["status"]["replicas"]),
                int_of(&o["status"]["readyReplicas"]),
            ],
            o,
            now,
            &o["spec"]["template"],
            format_selector(&o["spec"]["selector"]),
        )
    },
};

static STATEFUL_SET: Printer = Printer {
    conditions: None,
    columns: &[
        NAME,
        col("Ready", "Number of the pod with ready state", 0),
        AGE,
        CONTAINERS,
        IMAGES,
    ],
    cells: |o, now| {
        let mut cells = vec![name(o), ready_of_desired(o)];
        cells.extend(age_and_containers(o, now, &o["spec"]["template"]));
        cells
    },
};

static DAEMON_SET: Printer = Printer {
    conditions: None,
    columns: workload_columns![
        int(
            "Desired",
            "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod). More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
        ),
        int(
            "Current",
            "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod. More info: https://kubernetes.io/docs/concepts/workloads/controllers/daemonset/",
        ),
        int(
            "Ready",
            "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
        ),
        int(
            "Up-to-date",
            "The total number of nodes that are running updated daemon pod",
        ),
        int(
            "Available",
            "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
        ),
        col(
            "Node Selector",
            "NodeSelector is a selector which must be true for the pod to fit on a node. Selector which must match a node's labels for the pod to be scheduled on that node. More info: https://kubernetes.io/docs/concepts/configuration/assign-pod-node/",
            0,
        ),
        ; selector: "A label query over pods that are managed by the daemon set. Must match in order to be controlled. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors"
    ],
    cells: |o, now| {
        let st = &o["status"];
        workload_row(
            vec![
                name(o),
                int_of(&st["desiredNumberScheduled"]),
                int_of(&st["currentNumberScheduled"]),
                int_of(&st["numberReady"]),
                int_of(&st["updatedNumberScheduled"]),
                int_of(&st["numberAvailable"]),
                json!(format_labels(
                    &o["spec"]["template"]["spec"]["nodeSelector"]
                )),
            ],
            o,
            now,
            &o["spec"]["template"],
            format_selector(&o["spec"]["selector"]),
        )
    },
};

static SERVICE: Printer = Printer {
    conditions: None,
    columns: &[
        NAME,
        col(
            "Type",
            "type determines how the Service is exposed. Defaults to ClusterIP. Valid options are ExternalName, ClusterIP, NodePort, and LoadBalancer. \"ClusterIP\" allocates a cluster-internal IP address for load-balancing to endpoints. Endpoints are determined by the selector or if that is not specified, by manual construction of an Endpoints object or EndpointSlice objects. If clusterIP is \"None\", no virtual IP is allocated and the endpoints are published as a set of endpoints rather than a virtual IP. \"NodePort\" builds on ClusterIP and allocates a port on every node which routes to the same endpoints as the clusterIP. \"LoadBalancer\" builds on NodePort and creates an external load-balancer (if supported in the current cloud) which routes to the same endpoints as the clusterIP. \"ExternalName\" aliases this service to the specified externalName. Several other fields do not apply to ExternalName services. More info: https://kubernetes.io/docs/concepts/services-networking/service/#publishing-services-service-types",
            0,
        ),
        col(
            "Cluster-IP",
            "clusterIP is the IP address of the service and is usually assigned randomly. If an address is specified manually, is in-range (as per system configuration), and is not in use, it will be allocated to the service; otherwise creation of the service will fail. This field may not be changed through updates unless the type field is also being changed to ExternalName (which requires this field to be blank) or the type field is being changed from ExternalName (in which case this field may optionally be specified, as describe above).  Valid values are \"None\", empty string (\"\"), or a valid IP address. Setting this to \"None\" makes a \"headless service\" (no virtual IP), which is useful when direct endpoint connections are preferred and proxying is not required.  Only applies to types ClusterIP, NodePort, and LoadBalancer. If this field is specified when creating a Service of type ExternalName, creation will fail. This field will be wiped when updating a Service to type ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies",
            0,
        ),
        col(
            "External-IP",
            "externalIPs is a list of IP addresses for which nodes in the cluster will also accept traffic for this service.  These IPs are not managed by Kubernetes.  The user is responsible for ensuring that traffic arrives at a node with this IP.  A common example is external load-balancers that are not part of the Kubernetes system.",
            0,
        ),
        col(
            "Port(s)",
            "The list of ports that are exposed by this service. More info: https://kubernetes.io/docs/concepts/services-networking/service/#virtual-ips-and-service-proxies",
            0,
        ),
        AGE,
        col(
            "Selector",
            "Route service traffic to pods with label keys and values matching this selector. If empty or not present, the service is assumed to have an external process managing its endpoints, which Kubernetes will not modify. Only applies to types ClusterIP, NodePort, and LoadBalancer. Ignored if type is ExternalName. More info: https://kubernetes.io/docs/concepts/services-networking/service/",
            1,
        ),
    ],
    cells: |o, now| {
        let spec = &o["spec"];
        let cluster_ip = spec["clusterIPs"][0].as_str().unwrap_or("<none>");
        let ports: Vec<String> = spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let port = p["port"].as_i64().unwrap_or(0);
                let protocol = p["protocol"].as_str().unwrap_or_default();
                match p["nodePort"].as_i64().filter(|n| *n > 0) {
                    Some(node) => format!("{port}:{node}/{protocol}"),
                    None => format!("{port}/{protocol}"),
                }
            })
            .collect();
        let ports = if ports.is_empty() {
            "<none>".to_owned()
        } else {
            ports.join(",")
        };
        vec![
            name(o),
            json!(spec["type"].as_str().unwrap_or_default()),
            json!(cluster_ip),
            json!(external_ip(o)),
            json!(ports),
            age(o, now),
            json!(format_labels(&spec["selector"])),
        ]
    },
};

/// kube-apiserver's `getServiceExternalIP`, wide (as Tables are always written).
fn external_ip(o: &Value) -> String {
    let spec = &o["spec"];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let external = strings(&spec["externalIPs"]);
    match spec["type"].as_str().unwrap_or_default() {
        "ClusterIP" | "NodePort" if external.is_empty() => "<none>".into(),
        "ClusterIP" | "NodePort" => external.join(","),
        "LoadBalancer" => {
            let mut all = balancer_addresses(&o["status"]["loadBalancer"]);
            all.extend(external);
            if all.is_empty() {
                "<pending>".into()
            } else {
                all.join(",")
            }
        }
        "ExternalName" => spec["externalName"].as_str().unwrap_or_default().to_owned(),
        _ => "<unknown>".into(),
    }
}

/// kube-apiserver's `loadBalancerStatusStringer` (wide): each ingress point's IP, else
/// its hostname, sorted and without repeats.
fn balancer_addresses(status: &Value) -> Vec<String> {
    let set: std::collections::BTreeSet<String> = status["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| {
            [&i["ip"], &i["hostname"]]
                .into_iter()
                .filter_map(Value::as_str)
                .find(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .collect();
    set.into_iter().collect()
}

/// kube-apiserver's `formatHosts`: the first three named hosts, then how many rules
/// more; `*` when none is named.
fn ingress_hosts(rules: &[Value]) -> String {
    const MAX: usize = 3;
    let mut shown: Vec<&str> = Vec::new();
    let mut more = false;
    for rule in rules {
        if shown.len() == MAX {
            more = true;
        }
        if let Some(host) = rule["host"].as_str().filter(|h| !more && !h.is_empty()) {
            shown.push(host);
        }
    }
    if shown.is_empty() {
        return "*".into();
    }
    let list = shown.join(",");
    if more {
        format!("{list} + {} more...", rules.len() - MAX)
    } else {
        list
    }
}

static INGRESS: Printer = Printer {
    conditions: None,
    columns: &[
        NAME,
        col(
            "Class",
            "The name of the IngressClass resource that should be used for additional configuration",
            0,
        ),
        col(
            "Hosts",
            "Hosts that incoming requests are matched against before the ingress rule",
            0,
        ),
        col(
            "Address",
            "Address is a list containing ingress points for the load-balancer",
            0,
        ),
        col("Ports", "Ports of TLS configurations that open", 0),
        AGE,
    ],
    cells: |o, now| {
        let spec = &o["spec"];
        let rules = spec["rules"].as_array().map_or(&[][..], Vec::as_slice);
        let tls = spec["tls"].as_array().is_some_and(|t| !t.is_empty());
        vec![
            name(o),
            json!(spec["ingressClassName"].as_str().unwrap_or("<none>")),
            json!(ingress_hosts(rules)),
            json!(balancer_addresses(&o["status"]["loadBalancer"]).join(",")),
            json!(if tls { "80, 443" } else { "80" }),
            age(o, now),
        ]
    },
};

static NETWORK_POLICY: Printer = Printer {
    conditions: None,
    columns: &[
        NAME,
        col(
            "Pod-Selector",
            "podSelector selects the pods to which this NetworkPolicy object applies. The array of rules is applied to any pods selected by this field. An empty selector matches all pods in the policy's namespace. Multiple network policies can select the same set of pods. In this case, the ingress rules for each are combined additively. This field is optional. If it is not specified, it defaults to an empty selector.",
            0,
        ),
        AGE,
    ],
    cells: |o, now| {
        vec![
            name(o),
            json!(format_selector(&o["spec"]["podSelector"])),
            age(o, now),
        ]
    },
};

const JOB_SELECTOR_DOC: &str = "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors";

static JOB: Printer = Printer {
    conditions: None,
    columns: workload_columns![
        col("Status", "Status of the job.", 0),
        col(
            "Completions",
            "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
            0,
        ),
        col("Duration", "Time required to complete the job.", 0),
        ; selector: JOB_SELECTOR_DOC
    ],
    cells: |o, now| {
        let spec = &o["spec"];
        let status = &o["status"];
        let succeeded = status["succeeded"].as_i64().unwrap_or(0);
        let completions = match spec["completions"].as_i64() {
            Some(c) => format!("{succeeded}/{c}"),
            None => match spec["parallelism"].as_i64().unwrap_or(0) {
                p if p > 1 => format!("{succeeded}/1 of {p}"),
                _ => format!("{succeeded}/1"),
            },
        };
        let time = |f: &str| status[f].as_str().and_then(|t| t.parse::<Timestamp>().ok());
        let duration = match (time("startTime"), time("completionTime")) {
            (None, _) => String::new(),
            (Some(start), None) => {
                let now = Timestamp::try_from(now).unwrap_or(start);
                human_duration(now.as_second() - start.as_second())
            }
            (Some(start), Some(end)) => human_duration(end.as_second() - start.as_second()),
        };
        // hasJobCondition: the first condition of the type decides.
        let condition = |t: &str| {
            status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == t)
                .is_some_and(|c| c["status"] == "True")
        };
        let state = if condition("Complete") {
            "Complete"
        } else if condition("Failed") {
            "Failed"
        } else if !o["metadata"]["deletionTimestamp"].is_null() {
            "Terminating"
        } else if condition("Suspended") {
            "Suspended"
        } else if condition("FailureTarget") {
            "FailureTarget"
        } else if condition("SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else {
            "Running"
        };
        workload_row(
            vec![name(o), json!(state), json!(completions), json!(duration)],
            o,
            now,
            &spec["template"],
            format_selector(&spec["selector"]),
        )
    },
};

static CRON_JOB: Printer = Printer {
    conditions: None,
    columns: workload_columns![
        col(
            "Schedule",
            "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron.",
            0,
        ),
        col(
            "Timezone",
            "The time zone name for the given schedule, see https://en.wikipedia.org/wiki/List_of_tz_database_time_zones. If not specified, this will default to the time zone of the kube-controller-manager process. The set of valid time zone names and the time zone offset is loaded from the system-wide time zone database by the API server during CronJob validation and the controller manager during execution. If no system-wide time zone database can be found a bundled version of the database is used instead. If the time zone name becomes invalid during the lifetime of a CronJob or due to a change in host configuration, the controller will stop creating new new Jobs and will create a system event with the reason UnknownTimeZone. More information can be found in https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/#time-zones",
            0,
        ),
        Column {
            name: "Suspend",
            kind: "boolean",
            format: "",
            description: "This flag tells the controller to suspend subsequent executions, it does not apply to already started executions.  Defaults to false.",
            priority: 0,
        },
        int("Active", "A list of pointers to currently running jobs."),
        col(
            "Last Schedule",
            "Information when was the last time the job was successfully scheduled.",
            0,
        ),
        ; selector: JOB_SELECTOR_DOC
    ],
    cells: |o, now| {
        let spec = &o["spec"];
        let job = &spec["jobTemplate"]["spec"];
        let last = &o["status"]["lastScheduleTime"];
        workload_row(
            vec![
                name(o),
                json!(spec["schedule"].as_str().unwrap_or_default()),
                json!(spec["timeZone"].as_str().unwrap_or("<none>")),
                json!(match spec["suspend"].as_bool() {
                    Some(true) => "True",
                    Some(false) => "False",
                    None => "<unset>",
                }),
                json!(o["status"]["active"].as_array().map_or(0, Vec::len)),
                if last.is_null() {
                    json!("<none>")
                } else {
                    since(last, now)
                },
            ],
            o,
            now,
            &job["template"],
            format_selector(&job["selector"]),
        )
    },
};

static POD: Printer = Printer {
    columns: &[
        NAME,
        col(
            "Ready",
            "The aggregate readiness state of this pod for accepting traffic.",
            0,
        ),
        col(
            "Status",
            "The aggregate status of the containers in this pod.",
            0,
        ),
        col(
            "Restarts",
            "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
            0,
        ),
        AGE,
        col(
            "IP",
            "podIP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
            1,
        ),
        col(
            "Node",
            "NodeName indicates in which node this pod is scheduled. If empty, this pod is a candidate for scheduling by the scheduler defined in schedulerName. Once this field is set, the kubelet for this node becomes responsible for the lifecycle of this pod. This field should not be used to express a desire for the pod to be scheduled on a specific node. https://kubernetes.io/docs/concepts/scheduling-eviction/assign-pod-node/#nodename",
            1,
        ),
        col(
            "Nominated Node",
            "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods. This field does not guarantee that the pod will be scheduled on this node. Scheduler may decide to place the pod elsewhere if other nodes become available sooner. Scheduler may also decide to give the resources on this node to a higher priority pod that is created after preemption. As a result, this field may be different than PodSpec.nodeName when the pod is scheduled.",
            1,
        ),
        col(
            "Readiness Gates",
            "If specified, all readiness gates will be evaluated for pod readiness. A pod is ready when all its containers are ready AND all conditions specified in the readiness gates have status equal to \"True\" More info: https://git.k8s.io/enhancements/keps/sig-network/580-pod-readiness-gates",
            1,
        ),
    ],
    cells: pod_cells,
    conditions: Some(|o| {
        let (reason, message) = match o["status"]["phase"].as_str() {
            Some("Succeeded") => ("Succeeded", "The pod has completed successfully."),
            Some("Failed") => ("Failed", "The pod failed."),
            _ => return None,
        };
        Some(json!([{
            "type": "Completed",
            "status": "True",
            "reason": reason,
            "message": message,
        }]))
    }),
};

/// A container status's state, by what kube-apiserver's pod printer looks at.
struct State<'a> {
    waiting_reason: Option<&'a str>,
    terminated: Option<&'a Value>,
    running: bool,
}

fn state(c: &Value) -> State<'_> {
    let s = &c["state"];
    State {
        waiting_reason: s["waiting"]
            .is_object()
            .then(|| s["waiting"]["reason"].as_str().unwrap_or_default()),
        terminated: s["terminated"].is_object().then_some(&s["terminated"]),
        running: s["running"].is_object(),
    }
}

/// A terminated container's reason, else `Signal:N`, else `ExitCode:N`.
fn terminated_reason(t: &Value, prefix: &str) -> String {
    match t["reason"].as_str().filter(|r| !r.is_empty()) {
        Some(r) => format!("{prefix}{r}"),
        None => match t["signal"].as_i64().filter(|s| *s != 0) {
            Some(signal) => format!("{prefix}Signal:{signal}"),
            None => format!("{prefix}ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
        },
    }
}

/// The later of `latest` and when the container last terminated.
fn last_termination(c: &Value, latest: &mut Option<Timestamp>) {
    let finished = c["lastState"]["terminated"]["finishedAt"]
        .as_str()
        .and_then(|t| t.parse::<Timestamp>().ok());
    if let Some(f) = finished
        && latest.is_none_or(|l| l < f)
    {
        *latest = Some(f);
    }
}

/// The elements of a JSON array, none for anything else.
fn items(v: &Value) -> &[Value] {
    v.as_array().map_or(&[][..], Vec::as_slice)
}

/// kube-apiserver's `printPod`: ready containers, the status a person reads, restarts
/// (and how long ago the last), then (wide) IP, node, nominated node, readiness gates.
fn pod_cells(o: &Value, now: SystemTime) -> Vec<Value> {
    let spec = &o["spec"];
    let status = &o["status"];
    let list = items;
    let phase = status["phase"].as_str().unwrap_or_default();
    let mut reason = status["reason"]
        .as_str()
        .filter(|r| !r.is_empty())
        .unwrap_or(phase)
        .to_owned();
    let conditions = list(&status["conditions"]);
    if conditions
        .iter()
        .any(|c| c["type"] == "PodScheduled" && c["reason"] == "SchedulingGated")
    {
        reason = "SchedulingGated".into();
    }
    let init_specs = list(&spec["initContainers"]);
    let sidecar = |name: &Value| {
        init_specs
            .iter()
            .any(|c| c["name"] == *name && c["restartPolicy"] == "Always")
    };
    let total = list(&spec["containers"]).len()
        + init_specs
            .iter()
            .filter(|c| c["restartPolicy"] == "Always")
            .count();
    let mut ready = 0;
    let mut restarts = 0;
    let mut sidecar_restarts = 0;
    let mut last_restart = None;
    let mut last_sidecar_restart = None;
    let mut initializing = false;
    let init_statuses = list(&status["initContainerStatuses"]);
    for (i, c) in init_statuses.iter().enumerate() {
        let count = c["restartCount"].as_i64().unwrap_or(0);
        restarts += count;
        last_termination(c, &mut last_restart);
        let is_sidecar = sidecar(&c["name"]);
        if is_sidecar {
            sidecar_restarts += count;
            last_termination(c, &mut last_sidecar_restart);
        }
        let st = state(c);
        match st.terminated {
            Some(t) if t["exitCode"].as_i64().unwrap_or(0) == 0 => continue,
            _ if is_sidecar && c["started"].as_bool() == Some(true) => {
                if c["ready"].as_bool() == Some(true) {
                    ready += 1;
                }
                continue;
            }
            Some(t) => reason = terminated_reason(t, "Init:"),
            None => match st.waiting_reason {
                Some(w) if !w.is_empty() && w != "PodInitializing" => {
                    reason = format!("Init:{w}");
                }
                _ => reason = format!("Init:{i}/{}", init_specs.len()),
            },
        }
        initializing = true;
        break;
    }
    let initialized = conditions
        .iter()
        .find(|c| c["type"] == "Initialized")
        .is_some_and(|c| c["status"] == "True");
    if !initializing || initialized {
        restarts = sidecar_restarts;
        last_restart = last_sidecar_restart;
        let mut has_running = false;
        let mut error_reason = None;
        for c in list(&status["containerStatuses"]).iter().rev() {
            restarts += c["restartCount"].as_i64().unwrap_or(0);
            last_termination(c, &mut last_restart);
            let st = state(c);
            match (st.waiting_reason, st.terminated) {
                (Some(w), _) if !w.is_empty() => reason = w.to_owned(),
                (_, Some(t)) => {
                    reason = terminated_reason(t, "");
                    if t["exitCode"].as_i64().unwrap_or(0) != 0 {
                        error_reason = Some(reason.clone());
                    }
                }
                _ if c["ready"].as_bool() == Some(true) && st.running => {
                    has_running = true;
                    ready += 1;
                }
                _ => {}
            }
        }
        if reason == "Completed" {
            let pod_ready = conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            if has_running && pod_ready {
                reason = "Running".into();
            } else if let Some(e) = error_reason {
                reason = e;
            } else if has_running {
                reason = "NotReady".into();
            }
        }
    }
    let deleting = !o["metadata"]["deletionTimestamp"].is_null();
    if deleting && status["reason"] == "NodeLost" {
        reason = "Unknown".into();
    } else if deleting && !matches!(phase, "Succeeded" | "Failed") {
        reason = "Terminating".into();
    }
    let restarts = match last_restart {
        Some(last) if restarts != 0 => {
            let ago = Timestamp::try_from(now).map_or(0, |n| n.as_second() - last.as_second());
            format!("{restarts} ({} ago)", human_duration(ago))
        }
        _ => restarts.to_string(),
    };
    let or_none = |v: &Value| json!(v.as_str().filter(|s| !s.is_empty()).unwrap_or("<none>"));
    let gates = list(&spec["readinessGates"]);
    let readiness_gates = if gates.is_empty() {
        "<none>".to_owned()
    } else {
        let met = gates
            .iter()
            .filter(|g| {
                conditions
                    .iter()
                    .find(|c| c["type"] == g["conditionType"])
                    .is_some_and(|c| c["status"] == "True")
            })
            .count();
        format!("{met}/{}", gates.len())
    };
    vec![
        name(o),
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
        age(o, now),
        or_none(&status["podIPs"][0]["ip"]),
        or_none(&spec["nodeName"]),
        or_none(&status["nominatedNodeName"]),
        json!(readiness_gates),
    ]
}

static PERSISTENT_VOLUME_CLAIM: Printer = Printer {
    columns: &[
        NAME,
        col(
            "Status",
            "phase represents the current phase of PersistentVolumeClaim.",
            0,
        ),
        col(
            "Volume",
            "volumeName is the binding reference to the PersistentVolume backing this claim.",
            0,
        ),
        col(
            "Capacity",
            "capacity represents the actual resources of the underlying volume.",
            0,
        ),
        col(
            "Access Modes",
            "accessModes contains the actual access modes the volume backing the PVC has. More info: https://kubernetes.io/docs/concepts/storage/persistent-volumes#access-modes-1",
            0,
        ),
        col("StorageClass", "StorageClass of the pvc", 0),
        col(
            "VolumeAttributesClass",
            "VolumeAttributesClass of the pvc",
            0,
        ),
        AGE,
        col(
            "VolumeMode",
            "volumeMode defines what type of volume is required by the claim. Value of Filesystem is implied when not included in claim spec.",
            1,
        ),
    ],
    cells: |o, now| {
        let spec = &o["spec"];
        let status = &o["status"];
        let phase = if o["metadata"]["deletionTimestamp"].is_null() {
            status["phase"].as_str().unwrap_or_default()
        } else {
            "Terminating"
        };
        let volume = spec["volumeName"].as_str().unwrap_or_default();
        let (capacity, modes) = if volume.is_empty() {
            (String::new(), String::new())
        } else {
            let capacity = match &status["capacity"]["storage"] {
                Value::String(q) => q.clone(),
                _ => "0".to_owned(),
            };
            let has = |m: &str| {
                status["accessModes"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|x| x == m))
            };
            let modes: Vec<&str> = [
                ("ReadWriteOnce", "RWO"),
                ("ReadOnlyMany", "ROX"),
                ("ReadWriteMany", "RWX"),
                ("ReadWriteOncePod", "RWOP"),
            ]
            .into_iter()
            .filter(|(m, _)| has(m))
            .map(|(_, short)| short)
            .collect();
            (capacity, modes.join(","))
        };
        let class = o["metadata"]["annotations"]["volume.beta.kubernetes.io/storage-class"]
            .as_str()
            .or_else(|| spec["storageClassName"].as_str())
            .unwrap_or_default();
        vec![
            name(o),
            json!(phase),
            json!(volume),
            json!(capacity),
            json!(modes),
            json!(class),
            json!(
                spec["volumeAttributesClassName"]
                    .as_str()
                    .unwrap_or("<unset>")
            ),
            age(o, now),
            json!(spec["volumeMode"].as_str().unwrap_or("<unset>")),
        ]
    },
    conditions: None,
};

static HORIZONTAL_POD_AUTOSCALER: Printer = Printer {
    columns: &[
        NAME,
        col(
            "Reference",
            "scaleTargetRef points to the target resource to scale, and is used to the pods for which metrics should be collected, as well as to actually change the replica count.",
            0,
        ),
        col(
            "Targets",
            "metrics contains the specifications for which to use to calculate the desired replica count (the maximum replica count across all metrics will be used).  The desired replica count is calculated multiplying the ratio between the target value and the current value by the current number of pods.  Ergo, metrics used must decrease as the pod count is increased, and vice-versa.  See the individual metric source types for more information about how each type of metric must respond. If not set, the default metric will be set to 80% average CPU utilization.",
            0,
        ),
        col(
            "MinPods",
            "minReplicas is the lower limit for the number of replicas to which the autoscaler can scale down.  It defaults to 1 pod.  minReplicas is allowed to be 0 if the alpha feature gate HPAScaleToZero is enabled and at least one Object or External metric is configured.  Scaling is active as long as at least one metric value is available.",
            0,
        ),
        col(
            "MaxPods",
            "maxReplicas is the upper limit for the number of replicas to which the autoscaler can scale up. It cannot be less that minReplicas.",
            0,
        ),
        col(
            "Replicas",
            "currentReplicas is current number of replicas of pods managed by this autoscaler, as last seen by the autoscaler.",
            0,
        ),
        AGE,
    ],
    cells: |o, now| {
        let spec = &o["spec"];
        let target = &spec["scaleTargetRef"];
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                target["kind"].as_str().unwrap_or_default(),
                target["name"].as_str().unwrap_or_default()
            )),
            json!(hpa_metrics(spec, &o["status"])),
            json!(
                spec["minReplicas"]
                    .as_i64()
                    .map_or_else(|| "<unset>".to_owned(), |m| m.to_string())
            ),
            int_of(&spec["maxReplicas"]),
            int_of(&o["status"]["currentReplicas"]),
            age(o, now),
        ]
    },
    conditions: None,
};

/// kube-apiserver's `formatHPAMetrics` (autoscaling/v2): `current/target` of the
/// first two metrics, then how many more. Quantities are written as the API server
/// serialized them (its canonical form, which its printer prints too).
fn hpa_metrics(spec: &Value, status: &Value) -> String {
    const MAX: usize = 2;
    let specs = items(&spec["metrics"]);
    if specs.is_empty() {
        return "<none>".into();
    }
    let statuses = items(&status["currentMetrics"]);
    let text = |v: &Value| -> String {
        match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            // Go's `(*Quantity)(nil).String()`.
            _ => "<nil>".into(),
        }
    };
    let list: Vec<String> = specs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let source = |field: &str| (&m[field], &statuses.get(i).unwrap_or(&Value::Null)[field]);
            let unknown = || "<unknown>".to_owned();
            match m["type"].as_str().unwrap_or_default() {
                t @ ("External" | "Object") => {
                    let (s, c) = source(if t == "External" {
                        "external"
                    } else {
                        "object"
                    });
                    match &s["target"]["averageValue"] {
                        Value::Null => {
                            let current = if c.is_object() {
                                text(&c["current"]["value"])
                            } else {
                                unknown()
                            };
                            format!("{current}/{}", text(&s["target"]["value"]))
                        }
                        avg => {
                            let current = if c["current"]["averageValue"].is_null() {
                                unknown()
                            } else {
                                text(&c["current"]["averageValue"])
                            };
                            format!("{current}/{} (avg)", text(avg))
                        }
                    }
                }
                "Pods" => {
                    let (s, c) = source("pods");
                    let current = if c.is_object() {
                        text(&c["current"]["averageValue"])
                    } else {
                        unknown()
                    };
                    format!("{current}/{}", text(&s["target"]["averageValue"]))
                }
                t @ ("Resource" | "ContainerResource") => {
                    let (s, c) = source(if t == "Resource" {
                        "resource"
                    } else {
                        "containerResource"
                    });
                    let resource = s["name"].as_str().unwrap_or_default();
                    match &s["target"]["averageValue"] {
                        Value::Null => {
                            let current = c["current"]["averageUtilization"]
                                .as_i64()
                                .map_or_else(unknown, |u| format!("{u}%"));
                            let target = s["target"]["averageUtilization"]
                                .as_i64()
                                .map_or_else(|| "<auto>".to_owned(), |u| format!("{u}%"));
                            format!("{resource}: {current}/{target}")
                        }
                        avg => {
                            let current = if c.is_object() {
                                text(&c["current"]["averageValue"])
                            } else {
                                unknown()
                            };
                            format!("{resource}: {current}/{}", text(avg))
                        }
                    }
                }
                _ => "<unknown type>".to_owned(),
            }
        })
        .collect();
    if list.len() > MAX {
        format!("{} + {} more...", list[..MAX].join(", "), list.len() - MAX)
    } else {
        list.join(", ")
    }
}

/// The printer of `kind`, when the hub has it.
pub fn printer(kind: &KindKey) -> Option<&'static Printer> {
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "ConfigMap") => Some(&CONFIG_MAP),
        ("", "Namespace") => Some(&NAMESPACE),
        ("", "ServiceAccount") => Some(&SERVICE_ACCOUNT),
        ("", "Pod") => Some(&POD),
        ("", "PersistentVolumeClaim") => Some(&PERSISTENT_VOLUME_CLAIM),
        ("autoscaling", "HorizontalPodAutoscaler") => Some(&HORIZONTAL_POD_AUTOSCALER),
        ("", "Service") => Some(&SERVICE),
        ("batch", "Job") => Some(&JOB),
        ("batch", "CronJob") => Some(&CRON_JOB),
        ("networking.k8s.io", "Ingress") => Some(&INGRESS),
        ("networking.k8s.io", "NetworkPolicy") => Some(&NETWORK_POLICY),
        ("apps", "Deployment") => Some(&DEPLOYMENT),
        ("apps", "ReplicaSet") => Some(&REPLICA_SET),
        ("apps", "StatefulSet") => Some(&STATEFUL_SET),
        ("apps", "DaemonSet") => Some(&DAEMON_SET),
        _ => None,
    }
}

fn name(o: &Value) -> Value {
    json!(o["metadata"]["name"].as_str().unwrap_or_default())
}

fn age(o: &Value, now: SystemTime) -> Value {
    since(&o["metadata"]["creationTimestamp"], now)
}

/// kube-apiserver's `translateTimestampSince`: how long ago `t` was.
fn since(t: &Value, now: SystemTime) -> Value {
    let created = t.as_str().and_then(|t| t.parse::<Timestamp>().ok());
    let Some(created) = created else {
        return json!("<unknown>");
    };
    let now = Timestamp::try_from(now).unwrap_or(created);
    let secs = now.as_second() - created.as_second();
    json!(human_duration(secs))
}

/// apimachinery's `duration.HumanDuration`, from whole seconds.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

/// A label selector as apimachinery's `LabelSelectorAsSelector(...).String()` writes
/// it: requirements sorted by key, values sorted.
fn selector(s: &Value) -> String {
    let mut reqs: Vec<(String, String)> = Vec::new();
    if let Some(labels) = s["matchLabels"].as_object() {
        for (k, v) in labels {
            reqs.push((k.clone(), format!("{k}={}", v.as_str().unwrap_or_default())));
        }
    }
    for e in s["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or_default().to_owned();
        let mut values: Vec<&str> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        values.sort_unstable();
        values.dedup();
        let text = match e["operator"].as_str().unwrap_or_default() {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.clone(),
            "DoesNotExist" => format!("!{key}"),
            _ => return "<invalid>".into(),
        };
        reqs.push((key, text));
    }
    reqs.sort_by(|a, b| a.0.cmp(&b.0));
    reqs.into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .join(",")
}

/// A column definition as the API server writes it.
pub fn column(name: &str, kind: &str, format: &str, description: &str, priority: i64) -> Value {
    json!({
        "name": name,
        "type": kind,
        "format": format,
        "description": description,
        "priority": priority,
    })
}

/// What writes a kind's Tables: the hub's printer of a built-in kind, or the columns a
/// custom resource's definition names ([`super::columns`]).
#[derive(Clone)]
pub enum Print {
    /// A built-in kind.
    BuiltIn(&'static Printer),
    /// A custom resource.
    Custom(Arc<Custom>),
}

impl std::fmt::Debug for Print {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Print::BuiltIn(p) => write!(f, "BuiltIn({} columns)", p.columns.len()),
            Print::Custom(c) => write!(f, "Custom({c:?})"),
        }
    }
}

impl Print {
    /// The built-in printer of `kind`, if the hub has one.
    pub fn built_in(kind: &KindKey) -> Option<Print> {
        printer(kind).map(Print::BuiltIn)
    }

    /// The column definitions, as the API server writes them.
    pub fn columns(&self) -> Value {
        match self {
            Print::BuiltIn(p) => Value::Array(
                p.columns
                    .iter()
                    .map(|c| {
                        column(
                            c.name,
                            c.kind,
                            c.format,
                            c.description,
                            i64::from(c.priority),
                        )
                    })
                    .collect(),
            ),
            Print::Custom(c) => c.columns(),
        }
    }

    /// One row of `object` (its JSON as cached).
    pub fn row(&self, object: &str, include: Include, now: SystemTime) -> Value {
        let o: Value = serde_json::from_str(object).unwrap_or(Value::Null);
        let (cells, conditions) = match self {
            Print::BuiltIn(p) => ((p.cells)(&o, now), p.conditions.and_then(|c| c(&o))),
            Print::Custom(c) => (c.cells(&o, now), None),
        };
        let mut row = json!({ "cells": cells });
        if let Some(conditions) = conditions {
            row["conditions"] = conditions;
        }
        if include == Include::Metadata {
            row["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o["metadata"],
            });
        }
        row
    }

    /// The row of a watch's BOOKMARK, as the API server writes it: the kind's cells of
    /// an empty object at `rv`, with its metadata (always when it ends the initial
    /// events, whose annotation the client looks for).
    pub fn bookmark_row(&self, rv: u64, initial_events_end: bool, include: Include) -> Value {
        let mut metadata = json!({ "resourceVersion": rv.to_string() });
        if initial_events_end {
            metadata["annotations"] = json!({ super::watch::INITIAL_EVENTS_END: "true" });
        }
        let include = if initial_events_end {
            Include::Metadata
        } else {
            include
        };
        let object = json!({ "metadata": metadata }).to_string();
        self.row(&object, include, SystemTime::now())
    }

    /// The Table of one object, as the API server answers a read of it by name (and
    /// writes each event of a watch): its row, at its resourceVersion.
    pub fn one(&self, object: &str, include: Include) -> Value {
        let row = self.row(object, include, SystemTime::now());
        let rv = row["object"]["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| {
                serde_json::from_str::<Value>(object)
                    .ok()
                    .and_then(|o| o["metadata"]["resourceVersion"].as_str().map(str::to_owned))
            })
            .unwrap_or_default();
        self.table(json!({ "resourceVersion": rv }), vec![row])
    }

    /// A whole Table: `metadata` is the list's (or the object's), `rows` already
    /// written.
    pub fn table(&self, metadata: Value, rows: Vec<Value>) -> Value {
        json!({
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": metadata,
            "columnDefinitions": self.columns(),
            "rows": rows,
        })
    }
}

/// How long ago, for tests.
#[cfg(test)]
fn ago(created: &str, later: std::time::Duration) -> SystemTime {
    let t: Timestamp = created.parse().expect("timestamp");
    SystemTime::from(t) + later
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn accept(v: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static(v));
        h
    }

    #[test]
    fn kubectls_accept_header_asks_for_a_v1_table() {
        assert_eq!(
            wanted(&accept(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
            )),
            Ok(Media::Table)
        );
        assert_eq!(wanted(&HeaderMap::new()), Ok(Media::Json));
        assert_eq!(wanted(&accept("application/json, */*")), Ok(Media::Json));
        // client-go's ask for built-in kinds: protobuf, JSON as the second choice.
        assert_eq!(
            wanted(&accept(
                "application/vnd.kubernetes.protobuf, application/json"
            )),
            Ok(Media::Protobuf)
        );
        assert_eq!(
            wanted(&accept(
                "application/json, application/vnd.kubernetes.protobuf"
            )),
            Ok(Media::Json)
        );
        assert!(wanted(&accept("application/json;as=Table;v=v1beta1;g=meta.k8s.io")).is_err());
        assert!(
            wanted(&accept(
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
            ))
            .is_err()
        );
        // Protobuf alone: nothing to fall back to when an object does not transcode.
        assert!(wanted(&accept("application/vnd.kubernetes.protobuf")).is_err());
    }

    #[test]
    fn an_ingress_shows_three_hosts_then_how_many_rules_more() {
        let rules =
            |hosts: &[&str]| -> Vec<Value> { hosts.iter().map(|h| json!({"host": h})).collect() };
        assert_eq!(ingress_hosts(&rules(&[])), "*");
        assert_eq!(ingress_hosts(&rules(&["", ""])), "*");
        assert_eq!(ingress_hosts(&rules(&["a", "", "b"])), "a,b");
        assert_eq!(ingress_hosts(&rules(&["a", "b", "c"])), "a,b,c");
        assert_eq!(
            ingress_hosts(&rules(&["a", "b", "c", ""])),
            "a,b,c + 1 more..."
        );
        assert_eq!(ingress_hosts(&rules(&["", "a", "b", "c"])), "a,b,c");
    }

    #[test]
    fn a_load_balancers_external_ips_are_its_addresses_sorted_then_the_specs() {
        let lb = |ingress: Value, external: Value| {
            external_ip(&json!({
                "spec": {"type": "LoadBalancer", "externalIPs": external},
                "status": {"loadBalancer": {"ingress": ingress}}
            }))
        };
        assert_eq!(lb(json!([]), json!([])), "<pending>");
        assert_eq!(
            lb(
                json!([{"ip": "10.0.0.9"}, {"hostname": "a.example"}, {"ip": "10.0.0.1", "hostname": "x"}]),
                json!(["192.0.2.1"])
            ),
            "10.0.0.1,10.0.0.9,a.example,192.0.2.1"
        );
        assert_eq!(
            external_ip(&json!({"spec": {"type": "ExternalName", "externalName": "db.example"}})),
            "db.example"
        );
        assert_eq!(
            external_ip(&json!({"spec": {"type": "ClusterIP"}})),
            "<none>"
        );
    }

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        for (secs, want) in [
            (-5, "<invalid>"),
            (-1, "0s"),
            (0, "0s"),
            (119, "119s"),
            (120, "2m"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600, "3h"),
            (3 * 3600 + 60, "3h1m"),
            (8 * 3600, "8h"),
            (48 * 3600, "2d"),
            (49 * 3600, "2d1h"),
            (8 * 24 * 3600, "8d"),
            (2 * 365 * 24 * 3600, "2y"),
            (2 * 365 * 24 * 3600 + 24 * 3600, "2y1d"),
            (9 * 365 * 24 * 3600, "9y"),
        ] {
            assert_eq!(human_duration(secs), want, "{secs}");
        }
    }

    #[test]
    fn rows_have_the_api_servers_cells() {
        let created = "2026-01-01T00:00:00Z";
        let now = ago(created, std::time::Duration::from_secs(125));
        let cm = format!(
            r#"{{"metadata":{{"name":"c","namespace":"a","creationTimestamp":"{created}"}},"data":{{"a":"1","b":"2"}},"binaryData":{{"c":""}}}}"#
        );
        let r = Print::BuiltIn(&CONFIG_MAP).row(&cm, Include::Metadata, now);
        assert_eq!(r["cells"], json!(["c", 3, "2m5s"]));
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(r["object"]["metadata"]["namespace"], "a");
        assert!(
            Print::BuiltIn(&CONFIG_MAP)
                .row(&cm, Include::None, now)
                .get("object")
                .is_none()
        );
        let d = format!(
            r#"{{"metadata":{{"name":"web","creationTimestamp":"{created}"}},"spec":{{"replicas":3,"selector":{{"matchLabels":{{"z":"1","app":"web"}},"matchExpressions":[{{"key":"tier","operator":"In","values":["b","a"]}},{{"key":"gone","operator":"DoesNotExist"}}]}},"template":{{"spec":{{"containers":[{{"name":"a","image":"nginx:1"}},{{"name":"b","image":"busybox"}}]}}}}}},"status":{{"readyReplicas":2,"updatedReplicas":3}}}}"#
        );
        assert_eq!(
            Print::BuiltIn(&DEPLOYMENT).row(&d, Include::None, now)["cells"],
            json!([
                "web",
                "2/3",
                3,
                0,
                "2m5s",
                "a,b",
                "nginx:1,busybox",
                "app=web,!gone,tier in (a,b),z=1"
            ])
        );
        let ns = r#"{"metadata":{"name":"n"},"status":{"phase":"Active"}}"#;
        assert_eq!(
            Print::BuiltIn(&NAMESPACE).row(ns, Include::None, now)["cells"],
            json!(["n", "Active", "<unknown>"])
        );
        let rs = format!(
            r#"{{"metadata":{{"name":"web-1","creationTimestamp":"{created}"}},"spec":{{"replicas":2,"selector":{{}},"template":{{"spec":{{"containers":[{{"name":"a","image":"i"}}]}}}}}},"status":{{"replicas":2,"readyReplicas":1}}}}"#
        );
        assert_eq!(
            Print::BuiltIn(&REPLICA_SET).row(&rs, Include::None, now)["cells"],
            json!(["web-1", 2, 2, 1, "2m5s", "a", "i", "<none>"])
        );
        let ds = format!(
            r#"{{"metadata":{{"name":"d","creationTimestamp":"{created}"}},"spec":{{"selector":{{"matchLabels":{{"app":"d"}}}},"template":{{"spec":{{"nodeSelector":{{"a.b":"2","a":"1"}},"containers":[{{"name":"a","image":"i"}}]}}}}}},"status":{{"desiredNumberScheduled":3,"numberReady":2}}}}"#
        );
        assert_eq!(
            Print::BuiltIn(&DAEMON_SET).row(&ds, Include::None, now)["cells"],
            json!(["d", 3, 0, 2, 0, 0, "a=1,a.b=2", "2m5s", "a", "i", "app=d"])
        );
        assert_eq!(Print::BuiltIn(&DAEMON_SET).columns()[1]["type"], "integer");
        let cols = Print::BuiltIn(&DEPLOYMENT).columns();
        assert_eq!(cols[0]["format"], "name");
        assert_eq!(cols[5]["priority"], 1);
        assert_eq!(cols[1]["format"], "");
    }

    fn pod(status: Value, spec: Value) -> Value {
        json!({
            "metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z", "resourceVersion": "7"},
            "spec": spec,
            "status": status,
        })
    }

    fn cells_of_pod(o: &Value) -> Value {
        let now = ago("2026-01-01T00:00:00Z", std::time::Duration::from_secs(600));
        Print::BuiltIn(&POD).row(&o.to_string(), Include::None, now)["cells"].clone()
    }

    #[test]
    fn pods_read_as_kubectl_get_pods_prints_them() {
        let two = json!({"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1",
            "readinessGates": [{"conditionType": "x"}, {"conditionType": "y"}]});
        let crashing = pod(
            json!({
                "phase": "Running",
                "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                "conditions": [{"type": "x", "status": "True"}, {"type": "y", "status": "False"}],
                "containerStatuses": [
                    {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                    {"name": "b", "ready": false, "restartCount": 3,
                     "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:08:00Z"}}}
                ]
            }),
            two.clone(),
        );
        assert_eq!(
            cells_of_pod(&crashing),
            json!([
                "p",
                "1/2",
                "CrashLoopBackOff",
                "3 (2m ago)",
                "10m",
                "10.0.0.5",
                "n1",
                "<none>",
                "1/2"
            ])
        );
        let pending = pod(
            json!({"phase": "Pending"}),
            json!({"containers": [{"name": "a"}]}),
        );
        assert_eq!(
            cells_of_pod(&pending),
            json!([
                "p", "0/1", "Pending", "0", "10m", "<none>", "<none>", "<none>", "<none>"
            ])
        );
        let init = pod(
            json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "i", "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}
            ]}),
            json!({"containers": [{"name": "a"}], "initContainers": [{"name": "i"}, {"name": "j"}]}),
        );
        assert_eq!(cells_of_pod(&init)[2], "Init:0/2");
        let sidecar = pod(
            json!({"phase": "Running",
            "conditions": [{"type": "Initialized", "status": "True"}],
            "initContainerStatuses": [
                {"name": "s", "ready": true, "started": true, "restartCount": 1, "state": {"running": {}}}
            ],
            "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}}
            ]}),
            json!({"containers": [{"name": "a"}], "initContainers": [{"name": "s", "restartPolicy": "Always"}]}),
        );
        let cells = cells_of_pod(&sidecar);
        assert_eq!(
            (&cells[1], &cells[2], &cells[3]),
            (&json!("2/2"), &json!("Running"), &json!("1"))
        );
        let mut done = pod(
            json!({"phase": "Succeeded", "containerStatuses": [
                {"name": "a", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
            ]}),
            json!({"containers": [{"name": "a"}]}),
        );
        assert_eq!(cells_of_pod(&done)[2], "Completed");
        let row = Print::BuiltIn(&POD).row(&done.to_string(), Include::None, SystemTime::now());
        assert_eq!(row["conditions"][0]["type"], "Completed");
        assert_eq!(row["conditions"][0]["reason"], "Succeeded");
        assert!(
            Print::BuiltIn(&POD)
                .row(&crashing.to_string(), Include::None, SystemTime::now())
                .get("conditions")
                .is_none()
        );
        done["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:09:00Z");
        assert_eq!(
            cells_of_pod(&done)[2],
            "Completed",
            "a finished pod is not Terminating"
        );
        let mut going = crashing.clone();
        going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:09:00Z");
        assert_eq!(cells_of_pod(&going)[2], "Terminating");
        let failed_init = pod(
            json!({"phase": "Pending", "initContainerStatuses": [
                {"name": "i", "restartCount": 0, "state": {"terminated": {"exitCode": 2}}}
            ]}),
            json!({"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]}),
        );
        assert_eq!(cells_of_pod(&failed_init)[2], "Init:ExitCode:2");
    }

    #[test]
    fn claims_show_their_volume_once_bound() {
        let now = ago("2026-01-01T00:00:00Z", std::time::Duration::from_secs(60));
        let print = Print::BuiltIn(&PERSISTENT_VOLUME_CLAIM);
        let pending = json!({"metadata": {"name": "data"}, "spec": {"storageClassName": "fast",
            "resources": {"requests": {"storage": "1Gi"}}}, "status": {"phase": "Pending"}});
        assert_eq!(
            print.row(&pending.to_string(), Include::None, now)["cells"],
            json!([
                "data",
                "Pending",
                "",
                "",
                "",
                "fast",
                "<unset>",
                "<unknown>",
                "<unset>"
            ])
        );
        let bound = json!({"metadata": {"name": "data", "creationTimestamp": "2026-01-01T00:00:00Z",
                "annotations": {"volume.beta.kubernetes.io/storage-class": "old"}},
            "spec": {"volumeName": "pv-1", "volumeMode": "Filesystem", "storageClassName": "fast"},
            "status": {"phase": "Bound", "capacity": {"storage": "2Gi"},
                "accessModes": ["ReadWriteMany", "ReadWriteOnce"]}});
        assert_eq!(
            print.row(&bound.to_string(), Include::None, now)["cells"],
            json!([
                "data",
                "Bound",
                "pv-1",
                "2Gi",
                "RWO,RWX",
                "old",
                "<unset>",
                "60s",
                "Filesystem"
            ])
        );
    }

    #[test]
    fn autoscalers_show_their_targets_as_kubectl_does() {
        let now = ago("2026-01-01T00:00:00Z", std::time::Duration::from_secs(60));
        let hpa = json!({
            "metadata": {"name": "web", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "web"},
                "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}},
                    {"type": "Pods", "pods": {"metric": {"name": "qps"}, "target": {"type": "AverageValue", "averageValue": "100m"}}},
                    {"type": "External", "external": {"metric": {"name": "q"}, "target": {"type": "Value", "value": "3"}}}
                ]
            },
            "status": {"currentReplicas": 2, "currentMetrics": [
                {"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 50, "averageValue": "25m"}}}
            ]}
        });
        let print = Print::BuiltIn(&HORIZONTAL_POD_AUTOSCALER);
        assert_eq!(
            print.row(&hpa.to_string(), Include::None, now)["cells"],
            json!([
                "web",
                "Deployment/web",
                "cpu: 50%/80%, <unknown>/100m + 1 more...",
                "<unset>",
                5,
                2,
                "60s"
            ])
        );
        let none = json!({"metadata": {"name": "x"}, "spec": {"minReplicas": 2, "maxReplicas": 3}});
        assert_eq!(
            print.row(&none.to_string(), Include::None, now)["cells"],
            json!(["x", "/", "<none>", "2", 3, 0, "<unknown>"])
        );
    }

    #[test]
    fn one_object_and_a_bookmark_are_tables_of_one_row() {
        let cm =
            r#"{"metadata":{"name":"c","namespace":"a","resourceVersion":"42"},"data":{"a":"1"}}"#;
        let print = Print::BuiltIn(&CONFIG_MAP);
        let one = print.one(cm, Include::Metadata);
        assert_eq!(one["kind"], "Table");
        assert_eq!(one["metadata"]["resourceVersion"], "42");
        assert_eq!(one["rows"][0]["cells"][1], 1);
        assert_eq!(one["rows"][0]["object"]["metadata"]["name"], "c");
        let end = print.bookmark_row(50, true, Include::None);
        assert_eq!(end["cells"], json!(["", 0, "<unknown>"]));
        assert_eq!(
            end["object"]["metadata"]["annotations"][crate::kubeapi::watch::INITIAL_EVENTS_END],
            "true"
        );
        assert!(
            print
                .bookmark_row(51, false, Include::None)
                .get("object")
                .is_none()
        );
    }
}
