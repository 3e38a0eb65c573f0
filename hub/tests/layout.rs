//! The shape of `hub/src` that ARCHITECTURE.md describes: imports between its folders go
//! one way. The only cycle is the one named there: the root's `state::Shared` (the context
//! every handler receives) and the folders whose parts it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file below `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("hub/src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level names a file refers to as `crate::<name>` (also inside `crate::{a, b}`).
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                refs.insert(name);
            }
        } else {
            refs.insert(
                rest.chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect(),
            );
        }
    }
    refs
}

/// Folder → the folders it imports from ("root" for the files at the top of hub/src).
fn folder_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let folders: BTreeSet<String> = std::fs::read_dir(&src)
        .expect("hub/src")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("below hub/src");
        let from = match relative.components().count() {
            1 => "root".to_owned(),
            _ => relative
                .components()
                .next()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        let text = std::fs::read_to_string(&file).expect("a source file");
        for name in crate_refs(&text) {
            let to = if folders.contains(&name) {
                name
            } else {
                "root".to_owned()
            };
            if to != from {
                graph.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    graph
}

/// A cycle through the folders other than `skip`, if there is one.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>, skip: &str) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        skip: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut found = path[at..].to_vec();
            found.push(node.to_owned());
            return Some(found);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if next != skip
                && let Some(found) = visit(next, graph, skip, path, done)
            {
                return Some(found);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .filter(|n| *n != skip)
        .find_map(|n| visit(n, graph, skip, &mut Vec::new(), &mut done))
}

#[test]
fn the_hub_folders_import_one_way_but_through_the_root() {
    let graph = folder_graph();
    assert!(
        graph.contains_key("stream") && graph.contains_key("kubeapi"),
        "the hub's folders were not found: {graph:?}"
    );
    if let Some(found) = cycle(&graph, "root") {
        panic!(
            "an import cycle between hub folders: {} (ARCHITECTURE.md names only the root's)",
            found.join(" -> ")
        );
    }
    assert!(
        graph
            .get("core")
            .is_none_or(|to| to.iter().all(|t| t == "root")),
        "core/ imports other folders: {:?}",
        graph.get("core")
    );
}

#[test]
fn spinnaker_imports_core_alone() {
    let graph = folder_graph();
    let to = graph
        .get("spinnaker")
        .expect("hub/src/spinnaker imports core at least");
    assert!(
        to.iter().all(|t| t == "core"),
        "spinnaker/ imports more than core/ (the root hands it what it needs): {to:?}"
    );
}

#[test]
fn a_cycle_between_two_folders_is_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("stream".to_owned(), ["replicas".to_owned()].into()),
        ("replicas".to_owned(), ["stream".to_owned()].into()),
    ]
    .into();
    assert!(cycle(&graph, "root").is_some());
    assert_eq!(
        crate_refs("use crate::stream::{register, routing};\nuse crate::{core, net};"),
        ["core", "net", "stream"].map(str::to_owned).into()
    );
}
