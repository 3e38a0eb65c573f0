//! `decode`: what the agent does with each listed or watched object before it is sent,
//! the lean way ([`LeanList`], [`LeanObject::body`]) and the way it had before (kube's
//! `ObjectList<DynamicObject>`, `strip_metadata`, `serde_json::to_vec`), measured in the
//! same process so that the ratio holds on a loaded machine.
//!
//! - `page`: one list page of 500 Pods (`agent/fixtures/pod.json`, about 4.8 KB each,
//!   managedFields and a last-applied annotation), read from the response's text,
//!   stripped and written as the hub receives them.
//! - `watch_event`: one watch event of the same Pod, read from its line and written.
//!
//! Afterwards it runs itself once per way (`DECODE_PEAK=lean|dynamic`) and prints how far
//! the process's peak resident memory grew while it read one page and wrote its bodies.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use kube::core::{ApiResource, DynamicObject, ObjectList, TypeMeta, WatchEvent};
use scale_agent::objects::{LeanList, LeanObject};
use scale_agent_crds::objects;

const POD: &str = include_str!("../fixtures/pod.json");
const PAGE: usize = 500;

fn pods() -> ApiResource {
    ApiResource {
        group: String::new(),
        version: "v1".into(),
        api_version: "v1".into(),
        kind: "Pod".into(),
        plural: "pods".into(),
    }
}

/// A list page of `n` Pods as the API server writes it (items without their type).
fn page(n: usize) -> String {
    let item = POD
        .trim()
        .replacen("\"kind\":\"Pod\",\"apiVersion\":\"v1\",", "", 1);
    let mut out = String::with_capacity(n * (item.len() + 8) + 256);
    out.push_str("{\"kind\":\"PodList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"4816000\",\"continue\":\"eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ\"},\"items\":[");
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str(
            &item
                .replace("x2x9z", &format!("{i:05}"))
                .replace("4815162", &(4_815_162 + i).to_string()),
        );
    }
    out.push_str("]}");
    out
}

/// The way the agent had: kube's `DynamicObject`, stripped, typed, written again.
fn dynamic(mut obj: DynamicObject, resource: &ApiResource) -> Vec<u8> {
    objects::strip_metadata(&mut obj.metadata, false);
    obj.types = Some(TypeMeta {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
    });
    serde_json::to_vec(&obj).expect("json")
}

fn page_dynamic(text: &str, resource: &ApiResource) -> Vec<Vec<u8>> {
    let list: ObjectList<DynamicObject> = serde_json::from_str(text).expect("page");
    list.items
        .into_iter()
        .map(|o| dynamic(o, resource))
        .collect()
}

fn page_lean(text: &str, resource: &ApiResource) -> Vec<Vec<u8>> {
    let list: LeanList = serde_json::from_str(text).expect("page");
    list.items
        .iter()
        .map(|o| o.body(resource).expect("body"))
        .collect()
}

fn event_dynamic(line: &str, resource: &ApiResource) -> Vec<u8> {
    match serde_json::from_str::<WatchEvent<DynamicObject>>(line).expect("event") {
        WatchEvent::Modified(o) => dynamic(o, resource),
        _ => Vec::new(),
    }
}

fn event_lean(line: &str, resource: &ApiResource) -> Vec<u8> {
    match serde_json::from_str::<WatchEvent<LeanObject>>(line).expect("event") {
        WatchEvent::Modified(o) => o.body(resource).expect("body"),
        _ => Vec::new(),
    }
}

fn benches(c: &mut Criterion) {
    let resource = pods();
    let text = page(PAGE);
    // Both ways send the same objects.
    let (old, new) = (page_dynamic(&text, &resource), page_lean(&text, &resource));
    assert_eq!(old.len(), new.len());
    for (o, n) in old.iter().zip(&new) {
        let o: serde_json::Value = serde_json::from_slice(o).expect("json");
        let n: serde_json::Value = serde_json::from_slice(n).expect("json");
        assert_eq!(o, n);
    }

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(PAGE as u64));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("page/dynamic", |b| {
        b.iter(|| page_dynamic(black_box(&text), &resource))
    });
    group.bench_function("page/lean", |b| {
        b.iter(|| page_lean(black_box(&text), &resource))
    });
    group.finish();

    let line = format!("{{\"type\":\"MODIFIED\",\"object\":{}}}", POD.trim());
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("watch_event/dynamic", |b| {
        b.iter(|| event_dynamic(black_box(&line), &resource))
    });
    group.bench_function("watch_event/lean", |b| {
        b.iter(|| event_lean(black_box(&line), &resource))
    });
    group.finish();
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// In a process of its own: how far peak resident memory grows while one page is read
/// and its bodies written `way`.
fn peak(way: &str) {
    let resource = pods();
    let text = page(PAGE);
    let before = status_kib("VmHWM:").unwrap_or(0);
    let bodies = match way {
        "lean" => page_lean(&text, &resource),
        _ => page_dynamic(&text, &resource),
    };
    let after = status_kib("VmHWM:").unwrap_or(0);
    black_box(bodies);
    println!("{}", after.saturating_sub(before));
}

fn main() {
    if let Ok(way) = std::env::var("DECODE_PEAK") {
        peak(&way);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    benches(&mut c);
    c.final_summary();
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let text_kib = page(PAGE).len() / 1024;
    for way in ["dynamic", "lean"] {
        let grew = std::process::Command::new(&exe)
            .env("DECODE_PEAK", way)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
        println!(
            "peak RSS growth reading a {text_kib} KiB page of {PAGE} Pods and writing their bodies, {way}: {} KiB",
            grew.unwrap_or_default()
        );
    }
}
