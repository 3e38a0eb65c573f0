//! What GitOps tools make of AgentShards, with their own code: kstatus (the
//! sigs.k8s.io/cli-utils library Flux and kpt wait on, built from `e2e/kstatus/` by
//! `e2e/scripts/build-go-tool.sh`; [`go_tool`] builds the other Go programs of `e2e/` too) and
//! Argo CD's health check (`manifests/gitops/argocd/scaleagent.dev/AgentShard/health.lua`, in
//! Argo CD's own layout with its test cases, run with Lua 5.1, the dialect Argo CD embeds;
//! Debian's `lua5.1` is installed with apt-get when missing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::{Error, Result};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The kstatus of one object, as the library computes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct Kstatus {
    /// `namespace/name`.
    pub name: String,
    /// Current, InProgress, Failed, Terminating, NotFound or Unknown.
    pub status: String,
    /// The library's message.
    pub message: String,
}

/// The kstatus binary, built first when the cache lacks it.
pub fn kstatus_binary() -> Result<PathBuf> {
    go_tool("kstatus")
}

/// The binary of the Go program in `e2e/<name>/` (kstatus, informer), built by
/// `e2e/scripts/build-go-tool.sh` first when the cache lacks it.
pub fn go_tool(name: &str) -> Result<PathBuf> {
    crate::bins::build_script(&repo().join("e2e/scripts/build-go-tool.sh"), &[name])
}

/// The kstatus of every AgentShard in namespace `ns`, read through `kubeconfig`, by name.
pub fn kstatus(kubeconfig: &Path, ns: &str) -> Result<BTreeMap<String, Kstatus>> {
    let bin = kstatus_binary()?;
    let out = Command::new(&bin)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg(format!("--namespace={ns}"))
        .output()
        .map_err(|e| Error::io("running", &bin, e))?;
    if !out.status.success() {
        return Err(Error::Invalid {
            what: "the kstatus run".into(),
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let k: Kstatus = serde_json::from_str(l).map_err(|e| Error::Invalid {
                what: format!("kstatus line {l:?}"),
                message: e.to_string(),
            })?;
            Ok((k.name.clone(), k))
        })
        .collect()
}

/// The kstatus of one object (JSON, as the API server returned it: from a server-side
/// dry run, say), as the library computes it.
pub fn kstatus_of(obj: &Value) -> Result<Kstatus> {
    let bin = kstatus_binary()?;
    let mut child = Command::new(&bin)
        .arg("--stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io("running", &bin, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin
            .write_all(obj.to_string().as_bytes())
            .map_err(|e| Error::io("writing to", &bin, e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("running", &bin, e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::Invalid {
            what: "the kstatus run".into(),
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    serde_json::from_str(text.trim()).map_err(|e| Error::Invalid {
        what: format!("kstatus line {text:?}"),
        message: e.to_string(),
    })
}

/// Lua 5.1, installed from Debian when missing (once per process, waiting for dpkg's
/// lock when another install holds it).
pub fn lua() -> Result<PathBuf> {
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = INSTALL.lock();
    if let Some(p) = crate::bins::which("lua5.1") {
        return Ok(p);
    }
    let out = Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-q",
            "-o",
            "DPkg::Lock::Timeout=300",
            "lua5.1",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .map_err(|e| Error::io("running", Path::new("apt-get"), e))?;
    crate::bins::which("lua5.1").ok_or_else(|| Error::Invalid {
        what: "installing lua5.1 with apt-get".into(),
        message: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The folder of the Argo CD health check, laid out as Argo CD's
/// `resource_customizations/<group>/<kind>/`: `health.lua`, `health_test.yaml`, `testdata/`.
pub const ARGOCD_CHECK: &str = "manifests/gitops/argocd/scaleagent.dev/AgentShard";

/// The Argo CD health check as users paste it.
pub fn argocd_health_script() -> Result<String> {
    let path = repo().join(ARGOCD_CHECK).join("health.lua");
    std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))
}

/// What Argo CD's health check says of `obj` (an object as the API server returns it,
/// JSON): its status (Healthy, Progressing, Degraded, Suspended) and message.
pub fn argocd_health(obj: &Value) -> Result<(String, String)> {
    let lua = lua()?;
    let program = format!(
        "local obj = {}\nlocal function check(obj)\n{}\nend\nlocal hs = check(obj)\nio.write(hs.status, \"\\t\", hs.message or \"\")\n",
        lua_literal(obj),
        argocd_health_script()?
    );
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating", Path::new("/tmp"), e))?;
    let file = dir.path().join("check.lua");
    std::fs::write(&file, program).map_err(|e| Error::io("writing", &file, e))?;
    let out = Command::new(&lua)
        .arg(&file)
        .output()
        .map_err(|e| Error::io("running", &lua, e))?;
    if !out.status.success() {
        return Err(Error::Invalid {
            what: "the Argo CD health check".into(),
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, message) = text.split_once('\t').unwrap_or((text.as_str(), ""));
    Ok((status.to_owned(), message.to_owned()))
}

/// One case of the check's `health_test.yaml`, in Argo CD's format: the object in
/// `inputPath` (relative to the check's folder) and the health the check must give it.
#[derive(Clone, Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthTest {
    /// The object, a YAML file under `testdata/`.
    pub input_path: String,
    /// What the check must answer.
    pub health_status: HealthStatus,
}

/// A health check's answer, as Argo CD compares it: both fields exactly.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
pub struct HealthStatus {
    /// Healthy, Progressing, Degraded, Suspended...
    pub status: String,
    /// For people.
    #[serde(default)]
    pub message: String,
}

/// The test cases of the Argo CD check (its `health_test.yaml`).
pub fn argocd_health_tests() -> Result<Vec<HealthTest>> {
    #[derive(serde::Deserialize)]
    struct File {
        tests: Vec<HealthTest>,
    }
    let path = repo().join(ARGOCD_CHECK).join("health_test.yaml");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    let file: File = serde_yaml::from_str(&text).map_err(|e| Error::Invalid {
        what: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(file.tests)
}

/// The object of one test case, as JSON.
pub fn argocd_test_input(case: &HealthTest) -> Result<Value> {
    let path = repo().join(ARGOCD_CHECK).join(&case.input_path);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("reading", &path, e))?;
    serde_yaml::from_str(&text).map_err(|e| Error::Invalid {
        what: path.display().to_string(),
        message: e.to_string(),
    })
}

/// `value` as a Lua table constructor, as Argo CD hands objects to health checks
/// (JSON objects become tables with string keys, arrays sequences from 1).
pub fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_becomes_lua() {
        let v = serde_json::json!({ "a": [1, "x\"y\n"], "b": { "c": true, "d": null } });
        assert_eq!(
            lua_literal(&v),
            r#"{["a"] = {1, "x\"y\n"}, ["b"] = {["c"] = true, ["d"] = nil}}"#
        );
    }

    /// The check's own test cases (Argo CD's `health_test.yaml` and `testdata/`, as its
    /// `TestLuaHealthScript` runs them upstream), with Lua 5.1: every case gives exactly
    /// the status and message it names, and every file in `testdata/` is a case.
    #[test]
    fn the_argocd_check_passes_its_test_cases() {
        let cases = argocd_health_tests().expect("health_test.yaml");
        let mut wrong = Vec::new();
        for case in &cases {
            let obj = argocd_test_input(case).expect("test input");
            let (status, message) = argocd_health(&obj).expect("the check runs");
            let got = HealthStatus { status, message };
            if got != case.health_status {
                wrong.push(format!(
                    "{}: got {got:?}, want {:?}",
                    case.input_path, case.health_status
                ));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        let mut files: Vec<String> = std::fs::read_dir(repo().join(ARGOCD_CHECK).join("testdata"))
            .expect("testdata")
            .map(|e| {
                format!(
                    "testdata/{}",
                    e.expect("entry").file_name().to_string_lossy()
                )
            })
            .collect();
        files.sort();
        let mut listed: Vec<String> = cases.iter().map(|c| c.input_path.clone()).collect();
        listed.sort();
        assert_eq!(files, listed, "every file in testdata/ is a case, once");
        for state in ["Healthy", "Progressing", "Degraded", "Suspended"] {
            assert!(
                cases.iter().any(|c| c.health_status.status == state),
                "no case is {state}"
            );
        }
    }

    #[test]
    fn the_argocd_cm_snippet_is_the_script() {
        let script = argocd_health_script().expect("health.lua");
        let path = repo().join("manifests/gitops/argocd/argocd-cm.yaml");
        let cm: Value =
            serde_yaml::from_str(&std::fs::read_to_string(path).expect("argocd-cm.yaml"))
                .expect("YAML");
        let snippet = cm["data"]["resource.customizations.health.scaleagent.dev_AgentShard"]
            .as_str()
            .expect("the health entry");
        assert_eq!(snippet.trim_end(), script.trim_end());
    }
}
