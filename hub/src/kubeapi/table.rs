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

use std::time::SystemTime;

use http::{HeaderMap, header};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

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

/// How the client wants a list: `None` for plain JSON, `Some` for a `meta.k8s.io/v1`
/// Table; `Err` when the hub does not write what it asks for (metadata-only answers,
/// protobuf alone, a v1beta1 Table).
pub fn wanted(headers: &HeaderMap) -> Result<Option<()>, &'static str> {
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(None);
    };
    let accept = accept
        .to_str()
        .map_err(|_| "an Accept header that is not text")?;
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
                return Ok(Some(()));
            }
            (_, Some(_)) => return Err("an answer the hub does not write (as=...)"),
            ("application/json" | "*/*" | "application/*" | "", None) => return Ok(None),
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
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    description: &'static str,
    priority: u8,
}

const NAME_DOC: &str = "Name must be unique within a namespace. Is required when creating resources, although some resources may allow a client to request the generation of an appropriate name automatically. Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";
const AGE_DOC: &str = "CreationTimestamp is a timestamp representing the server time when this object was created. It is not guaranteed to be set in happens-before order across separate operations. Clients may not set this value. It is represented in RFC3339 form and is in UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata";

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

static CONFIG_MAP: Printer = Printer {
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
    columns: &[NAME, AGE],
    cells: |o, now| vec![name(o), age(o, now)],
};

static DEPLOYMENT: Printer = Printer {
    columns: &[
        NAME,
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
        AGE,
        col("Containers", "Names of each container in the template.", 1),
        col(
            "Images",
            "Images referenced by each container in the template.",
            1,
        ),
        col(
            "Selector",
            "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment. It must match the pod template's labels.",
            1,
        ),
    ],
    cells: |o, now| {
        let n = |v: &Value| v.as_i64().unwrap_or(0);
        let status = &o["status"];
        let [names, images] = containers(o);
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                n(&status["readyReplicas"]),
                n(&o["spec"]["replicas"])
            )),
            json!(n(&status["updatedReplicas"])),
            json!(n(&status["availableReplicas"])),
            age(o, now),
            names,
            images,
            json!(selector(&o["spec"]["selector"])),
        ]
    },
};

const CONTAINERS: Column = col("Containers", "Names of each container in the template.", 1);
const IMAGES: Column = col(
    "Images",
    "Images referenced by each container in the template.",
    1,
);

/// The container names and images of a workload's pod template, as the API server lays
/// them out.
fn containers(o: &Value) -> [Value; 2] {
    template_containers(&o["spec"]["template"])
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
    columns: &[
        NAME,
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
        AGE,
        CONTAINERS,
        IMAGES,
        col(
            "Selector",
            "Selector is a label query over pods that should match the replica count. Label keys and values that must match in order to be controlled by this replica set. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
            1,
        ),
    ],
    cells: |o, now| {
        let [names, images] = containers(o);
        vec![
            name(o),
            int_of(&o["spec"]["replicas"]),
            int_of(&o["status"]["replicas"]),
            int_of(&o["status"]["readyReplicas"]),
            age(o, now),
            names,
            images,
            json!(format_selector(&o["spec"]["selector"])),
        ]
    },
};

static STATEFUL_SET: Printer = Printer {
    columns: &[
        NAME,
        col("Ready", "Number of the pod with ready state", 0),
        AGE,
        CONTAINERS,
        IMAGES,
    ],
    cells: |o, now| {
        let n = |v: &Value| v.as_i64().unwrap_or(0);
        let [names, images] = containers(o);
        vec![
            name(o),
            json!(format!(
                "{}/{}",
                n(&o["status"]["readyReplicas"]),
                n(&o["spec"]["replicas"])
            )),
            age(o, now),
            names,
            images,
        ]
    },
};

static DAEMON_SET: Printer = Printer {
    columns: &[
        NAME,
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
        AGE,
        CONTAINERS,
        IMAGES,
        col(
            "Selector",
            "A label query over pods that are managed by the daemon set. Must match in order to be controlled. It must match the pod template's labels. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
            1,
        ),
    ],
    cells: |o, now| {
        let st = &o["status"];
        let [names, images] = containers(o);
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
            age(o, now),
            names,
            images,
            json!(format_selector(&o["spec"]["selector"])),
        ]
    },
};

static SERVICE: Printer = Printer {
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

const JOB_SELECTOR: Column = col(
    "Selector",
    "A label query over pods that should match the pod count. Normally, the system sets this field for you. More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors",
    1,
);

static JOB: Printer = Printer {
    columns: &[
        NAME,
        col("Status", "Status of the job.", 0),
        col(
            "Completions",
            "The number of pods which reached phase Succeeded. The value increases monotonically for a given spec. However, it may decrease in reaction to scale down of elastic indexed jobs.",
            0,
        ),
        col("Duration", "Time required to complete the job.", 0),
        AGE,
        CONTAINERS,
        IMAGES,
        JOB_SELECTOR,
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
        let [names, images] = containers(o);
        vec![
            name(o),
            json!(state),
            json!(completions),
            json!(duration),
            age(o, now),
            names,
            images,
            json!(format_selector(&spec["selector"])),
        ]
    },
};

static CRON_JOB: Printer = Printer {
    columns: &[
        NAME,
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
        AGE,
        CONTAINERS,
        IMAGES,
        JOB_SELECTOR,
    ],
    cells: |o, now| {
        let spec = &o["spec"];
        let job = &spec["jobTemplate"]["spec"];
        let [names, images] = template_containers(&job["template"]);
        let last = &o["status"]["lastScheduleTime"];
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
            age(o, now),
            names,
            images,
            json!(format_selector(&job["selector"])),
        ]
    },
};

/// The printer of `kind`, when the hub has it.
pub fn printer(kind: &KindKey) -> Option<&'static Printer> {
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "ConfigMap") => Some(&CONFIG_MAP),
        ("", "Namespace") => Some(&NAMESPACE),
        ("", "ServiceAccount") => Some(&SERVICE_ACCOUNT),
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

/// The column definitions, as the API server writes them.
pub fn columns(p: &Printer) -> Value {
    Value::Array(
        p.columns
            .iter()
            .map(|c| {
                json!({
                    "name": c.name,
                    "type": c.kind,
                    "format": c.format,
                    "description": c.description,
                    "priority": c.priority,
                })
            })
            .collect(),
    )
}

/// One row of `object` (its JSON as cached).
pub fn row(p: &Printer, object: &str, include: Include, now: SystemTime) -> Value {
    let o: Value = serde_json::from_str(object).unwrap_or(Value::Null);
    let mut row = json!({ "cells": (p.cells)(&o, now) });
    if include == Include::Metadata {
        row["object"] = json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o["metadata"],
        });
    }
    row
}

/// A whole Table: `metadata` is the list's, `rows` already written.
pub fn table(p: &Printer, metadata: Value, rows: Vec<Value>) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(p),
        "rows": rows,
    })
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
            Ok(Some(()))
        );
        assert_eq!(wanted(&HeaderMap::new()), Ok(None));
        assert_eq!(wanted(&accept("application/json, */*")), Ok(None));
        assert_eq!(
            wanted(&accept(
                "application/vnd.kubernetes.protobuf, application/json"
            )),
            Ok(None)
        );
        assert!(wanted(&accept("application/json;as=Table;v=v1beta1;g=meta.k8s.io")).is_err());
        assert!(
            wanted(&accept(
                "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io"
            ))
            .is_err()
        );
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
        let r = row(&CONFIG_MAP, &cm, Include::Metadata, now);
        assert_eq!(r["cells"], json!(["c", 3, "2m5s"]));
        assert_eq!(r["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(r["object"]["metadata"]["namespace"], "a");
        assert!(
            row(&CONFIG_MAP, &cm, Include::None, now)
                .get("object")
                .is_none()
        );
        let d = format!(
            r#"{{"metadata":{{"name":"web","creationTimestamp":"{created}"}},"spec":{{"replicas":3,"selector":{{"matchLabels":{{"z":"1","app":"web"}},"matchExpressions":[{{"key":"tier","operator":"In","values":["b","a"]}},{{"key":"gone","operator":"DoesNotExist"}}]}},"template":{{"spec":{{"containers":[{{"name":"a","image":"nginx:1"}},{{"name":"b","image":"busybox"}}]}}}}}},"status":{{"readyReplicas":2,"updatedReplicas":3}}}}"#
        );
        assert_eq!(
            row(&DEPLOYMENT, &d, Include::None, now)["cells"],
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
            row(&NAMESPACE, ns, Include::None, now)["cells"],
            json!(["n", "Active", "<unknown>"])
        );
        let rs = format!(
            r#"{{"metadata":{{"name":"web-1","creationTimestamp":"{created}"}},"spec":{{"replicas":2,"selector":{{}},"template":{{"spec":{{"containers":[{{"name":"a","image":"i"}}]}}}}}},"status":{{"replicas":2,"readyReplicas":1}}}}"#
        );
        assert_eq!(
            row(&REPLICA_SET, &rs, Include::None, now)["cells"],
            json!(["web-1", 2, 2, 1, "2m5s", "a", "i", "<none>"])
        );
        let ds = format!(
            r#"{{"metadata":{{"name":"d","creationTimestamp":"{created}"}},"spec":{{"selector":{{"matchLabels":{{"app":"d"}}}},"template":{{"spec":{{"nodeSelector":{{"a.b":"2","a":"1"}},"containers":[{{"name":"a","image":"i"}}]}}}}}},"status":{{"desiredNumberScheduled":3,"numberReady":2}}}}"#
        );
        assert_eq!(
            row(&DAEMON_SET, &ds, Include::None, now)["cells"],
            json!(["d", 3, 0, 2, 0, 0, "a=1,a.b=2", "2m5s", "a", "i", "app=d"])
        );
        assert_eq!(columns(&DAEMON_SET)[1]["type"], "integer");
        let cols = columns(&DEPLOYMENT);
        assert_eq!(cols[0]["format"], "name");
        assert_eq!(cols[5]["priority"], 1);
        assert_eq!(cols[1]["format"], "");
    }
}
