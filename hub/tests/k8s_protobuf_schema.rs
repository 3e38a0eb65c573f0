//! The Kubernetes protobuf schema the hub's Kubernetes API transcodes its cached JSON
//! with (`hub/src/kubeapi/protobuf/k8s.binpb` and `upstream.rs`), made from the
//! `generated.proto` files and Go types of `k8s.io/api` and `k8s.io/apimachinery` at
//! the version the e2e control plane runs, as the Go module cache holds them:
//!
//! ```sh
//! go mod download k8s.io/api@v0.36.3 k8s.io/apimachinery@v0.36.3   # once
//! SCALE_AGENT_WRITE_K8S_SCHEMA=1 cargo test -p scale-agent-hub --test k8s_protobuf_schema
//! ```
//!
//! Without the variable the test checks that the files in the tree are what the
//! modules make (and says so and checks nothing when the module cache lacks them).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The version of `k8s.io/api` and `k8s.io/apimachinery` (the e2e control plane's
/// Kubernetes, e2e/scripts/build-k8s.sh).
const VERSION: &str = "v0.36.3";

fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kubeapi/protobuf")
}

fn module_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("GOMODCACHE") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    Path::new(&home).join("go/pkg/mod")
}

/// Every `generated.proto` under `dir`, with its path relative to `dir`.
fn protos(dir: &Path, under: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir.join(under)) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let rel = under.join(e.file_name());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            if e.file_name() == "testapigroup" {
                continue;
            }
            protos(dir, &rel, out);
        } else if e.file_name() == "generated.proto" {
            out.push(rel);
        }
    }
}

/// `package x.y.z;` of a proto file.
fn proto_package(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("package "))
        .map(|p| p.trim_end_matches(';').trim().to_owned())
}

/// The Go fields of a package embedded with `json:",inline"` that its protobuf keeps
/// as a field of their own: (struct, field number).
fn inline_fields(go_dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(go_dir) else {
        return out;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "go")
                && !p.to_string_lossy().ends_with("_test.go")
                && !p.to_string_lossy().contains("generated")
        })
        .collect();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a Go file");
        let mut current: Option<String> = None;
        for line in text.lines() {
            let t = line.trim();
            if let Some(rest) = t.strip_prefix("type ")
                && let Some(name) = rest.strip_suffix(" struct {")
            {
                current = Some(name.trim().to_owned());
                continue;
            }
            if line.starts_with('}') {
                current = None;
                continue;
            }
            let Some(at) = t.find("json:\",inline\" protobuf:\"") else {
                continue;
            };
            let tag = &t[at + "json:\",inline\" protobuf:\"".len()..];
            let number = tag
                .split(',')
                .nth(1)
                .and_then(|n| n.parse::<u32>().ok())
                .expect("a protobuf tag with a field number");
            let owner = current.clone().expect("an inline field inside a struct");
            out.push((owner, number));
        }
    }
    out
}

/// The API group a Go package registers (`const GroupName = "apps"` in register.go, or
/// its `+groupName=` tag); the core group's is empty.
fn group_name(go_dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(go_dir.join("register.go"))
        && let Some(g) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("const GroupName = "))
    {
        return Some(g.trim().trim_matches('"').to_owned());
    }
    for name in ["doc.go", "register.go", "types.go"] {
        let Ok(text) = std::fs::read_to_string(go_dir.join(name)) else {
            continue;
        };
        if let Some(g) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("// +groupName="))
        {
            return Some(g.trim().to_owned());
        }
    }
    None
}

struct Made {
    descriptors: Vec<u8>,
    upstream: String,
}

fn make(cache: &Path) -> Made {
    let api = cache.join(format!("k8s.io/api@{VERSION}"));
    let machinery = cache.join(format!("k8s.io/apimachinery@{VERSION}"));
    // protoc's view: k8s.io/api/... and k8s.io/apimachinery/... under one root.
    let root = tempfile::tempdir().expect("a temporary directory");
    let k8s = root.path().join("k8s.io");
    std::fs::create_dir_all(&k8s).expect("k8s.io");
    std::os::unix::fs::symlink(&api, k8s.join("api")).expect("link");
    std::os::unix::fs::symlink(&machinery, k8s.join("apimachinery")).expect("link");
    let mut files = Vec::new();
    protos(root.path(), Path::new("k8s.io/apimachinery"), &mut files);
    protos(root.path(), Path::new("k8s.io/api"), &mut files);
    let mut compiler = protox::Compiler::new([root.path()]).expect("a compiler");
    compiler.include_source_info(false).include_imports(true);
    compiler.open_files(&files).expect("the schema compiles");
    let descriptors = compiler.encode_file_descriptor_set();

    let mut groups = BTreeMap::new();
    let mut inline = Vec::new();
    for file in &files {
        let go_dir = root.path().join(file.parent().expect("a directory"));
        let text = std::fs::read_to_string(root.path().join(file)).expect("a proto file");
        let package = proto_package(&text).expect("a package");
        for (owner, number) in inline_fields(&go_dir) {
            inline.push((format!("{package}.{owner}"), number));
        }
        if file.starts_with("k8s.io/api")
            && let Some(group) = group_name(&go_dir)
        {
            let version = go_dir
                .file_name()
                .expect("a version directory")
                .to_string_lossy()
                .into_owned();
            groups.insert((group, version), package);
        }
    }
    inline.sort();
    let mut upstream = String::new();
    let _ = writeln!(
        upstream,
        "// Made by hub/tests/k8s_protobuf_schema.rs from k8s.io/api and k8s.io/apimachinery {VERSION}: do not edit.\n"
    );
    let _ = writeln!(
        upstream,
        "/// The version of `k8s.io/api` the schema comes from.\npub const VERSION: &str = \"{VERSION}\";\n"
    );
    let _ = writeln!(
        upstream,
        "/// (API group, version, protobuf package) of the built-in API groups.\npub const GROUPS: &[(&str, &str, &str)] = &["
    );
    for ((group, version), package) in &groups {
        let _ = writeln!(upstream, "    ({group:?}, {version:?}, {package:?}),");
    }
    let _ = writeln!(upstream, "];\n");
    let _ = writeln!(
        upstream,
        "/// (message, field number) of the Go fields embedded with `json:\",inline\"`: their\n/// fields are the JSON object's own, their protobuf a message of its own.\npub const INLINE: &[(&str, u32)] = &["
    );
    for (message, number) in &inline {
        let _ = writeln!(upstream, "    ({message:?}, {number}),");
    }
    let _ = writeln!(upstream, "];");
    Made {
        descriptors,
        upstream,
    }
}

#[test]
fn the_kubernetes_protobuf_schema_is_what_the_upstream_modules_make() {
    let cache = module_cache();
    if !cache.join(format!("k8s.io/api@{VERSION}")).is_dir()
        || !cache
            .join(format!("k8s.io/apimachinery@{VERSION}"))
            .is_dir()
    {
        eprintln!(
            "k8s.io/api and k8s.io/apimachinery {VERSION} are not in {}: nothing checked",
            cache.display()
        );
        return;
    }
    let made = make(&cache);
    let binpb = out_dir().join("k8s.binpb");
    let upstream = out_dir().join("upstream.rs");
    if std::env::var_os("SCALE_AGENT_WRITE_K8S_SCHEMA").is_some() {
        std::fs::write(&binpb, &made.descriptors).expect("write k8s.binpb");
        std::fs::write(&upstream, &made.upstream).expect("write upstream.rs");
        return;
    }
    assert!(
        std::fs::read(&binpb).ok() == Some(made.descriptors),
        "{} is not what {VERSION}'s generated.proto files make: write it again (see this file's doc)",
        binpb.display()
    );
    assert_eq!(
        std::fs::read_to_string(&upstream).ok().as_deref(),
        Some(made.upstream.as_str()),
        "{} is not what {VERSION}'s Go types make: write it again (see this file's doc)",
        upstream.display()
    );
}
