//! Running kubectl the way a user does.

use std::ffi::OsStr;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::{Error, Result};

/// What a kubectl run printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status was zero.
    pub success: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error (warnings and errors).
    pub stderr: String,
}

/// Runs kubectl and returns its output whatever the exit status.
pub fn run_full<I, S>(
    kubectl: &Path,
    kubeconfig: &Path,
    args: I,
    stdin: Option<&str>,
) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(kubectl);
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| Error::io("running", kubectl, e))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .map_err(|e| Error::io("writing stdin of", kubectl, e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io("waiting for", kubectl, e))?;
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs kubectl; a non-zero exit is an error carrying stderr.
pub fn run<I, S>(kubectl: &Path, kubeconfig: &Path, args: I, stdin: Option<&str>) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = run_full(kubectl, kubeconfig, &args, stdin)?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(Error::Kubectl {
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            status: "non-zero exit".into(),
            stderr: out.stderr,
        })
    }
}

/// The lines a process prints on `stdout`, as they come (a thread reads them; the
/// channel ends with the output).
pub fn lines_of(stdout: std::process::ChildStdout) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Parses kubectl's table output into rows of (column, value), cutting each line at the
/// header's column offsets, so empty cells stay empty instead of shifting the others.
pub fn table(output: &str) -> Vec<Vec<(String, String)>> {
    let mut lines = output.lines();
    let Some(header) = lines.next() else {
        return Vec::new();
    };
    let mut starts = Vec::new();
    let mut prev_space = true;
    for (i, c) in header.char_indices() {
        if !c.is_whitespace() && prev_space {
            starts.push(i);
        }
        prev_space = c.is_whitespace();
    }
    let cell = |line: &str, k: usize| -> String {
        let from = starts[k].min(line.len());
        let to = starts
            .get(k + 1)
            .copied()
            .unwrap_or(line.len())
            .min(line.len());
        line.get(from..to).unwrap_or_default().trim().to_string()
    };
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            (0..starts.len())
                .map(|k| (cell(header, k), cell(line, k)))
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::table;

    #[test]
    fn empty_cells_stay_in_their_column() {
        let out = "NAME   REPLICAS   READY   HUB\neast   1                  hub:443\n";
        let rows = table(out);
        let row: Vec<(&str, &str)> = rows[0]
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            row,
            [
                ("NAME", "east"),
                ("REPLICAS", "1"),
                ("READY", ""),
                ("HUB", "hub:443")
            ]
        );
    }
}
