//! A guide's shell commands, taken from its Markdown so that the tests run what users
//! read. Every ```` ```sh ```` block carries a marker on the line before it:
//!
//! ```text
//! <!-- test: run -->
//! <!-- test: skip: the reason it cannot run on the test control plane -->
//! ```
//!
//! A block without one is an error: a new command is either run or says why not.

use std::path::Path;

use crate::{Error, Result};

/// What the tests do with a block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Marker {
    /// Run it, in order with the other blocks marked so.
    Run,
    /// Not run, for this reason.
    Skip(String),
}

/// One ```` ```sh ```` block of a guide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// The line of the opening fence (from 1).
    pub line: usize,
    /// Run or skipped.
    pub marker: Marker,
    /// The commands, without the fences.
    pub text: String,
}

/// The `sh` blocks of `markdown` (the file `what`, for messages), in order.
pub fn blocks(what: &str, markdown: &str) -> Result<Vec<Block>> {
    let invalid = |line: usize, message: String| Error::Invalid {
        what: format!("{what} line {line}"),
        message,
    };
    let lines: Vec<&str> = markdown.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let fence = lines[i].trim_start();
        if !fence.starts_with("```") {
            i += 1;
            continue;
        }
        let indent = lines[i].len() - fence.len();
        let lang = fence.trim_start_matches('`').trim();
        let start = i;
        let mut body = Vec::new();
        i += 1;
        while i < lines.len() && lines[i].trim() != "```" {
            body.push(lines[i].get(indent..).unwrap_or(lines[i].trim_start()));
            i += 1;
        }
        if i == lines.len() {
            return Err(invalid(start + 1, "a code block is not closed".into()));
        }
        i += 1;
        if lang != "sh" {
            continue;
        }
        let before = lines[..start]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| !l.is_empty())
            .unwrap_or("");
        let marker = before
            .strip_prefix("<!-- test:")
            .and_then(|m| m.strip_suffix("-->"))
            .map(str::trim)
            .and_then(|m| {
                if m == "run" {
                    Some(Marker::Run)
                } else {
                    m.strip_prefix("skip:")
                        .map(|why| Marker::Skip(why.trim().to_owned()))
                        .filter(|m| !matches!(m, Marker::Skip(why) if why.is_empty()))
                }
            })
            .ok_or_else(|| {
                invalid(
                    start + 1,
                    "a sh block needs `<!-- test: run -->` or `<!-- test: skip: <why> -->` on \
                     the line before it"
                        .into(),
                )
            })?;
        out.push(Block {
            line: start + 1,
            marker,
            text: body.join("\n"),
        });
    }
    Ok(out)
}

/// The blocks of `blocks` marked to run, as one bash script that stops at the first
/// failing command and says on standard error which block each command came from.
pub fn script(what: &str, blocks: &[Block]) -> String {
    let mut s = String::from("set -euo pipefail\n");
    for b in blocks.iter().filter(|b| b.marker == Marker::Run) {
        s.push_str(&format!(
            "echo '+++ {what} line {}' >&2\nset -x\n{}\nset +x\n",
            b.line, b.text
        ));
    }
    s
}

/// The command the first of `blocks` that runs one in Deployment `deployment`'s container
/// (`kubectl ... exec deploy/<deployment> -- <command>`) runs there: its words, up to a
/// redirection or the end of the command. For tests that run it in a stand-in of the pod.
pub fn exec_command(blocks: &[Block], deployment: &str) -> Option<Vec<String>> {
    let exec = format!("exec deploy/{deployment} --");
    blocks.iter().find_map(|b| {
        let joined = b.text.replace("\\\n", " ");
        let line = joined.lines().find(|l| l.contains(&exec))?;
        let (_, rest) = line.split_once(&exec)?;
        let words: Vec<String> = rest
            .split_whitespace()
            .take_while(|w| !w.starts_with(['>', '<', '|', '&', ';']))
            .map(str::to_owned)
            .collect();
        (!words.is_empty()).then_some(words)
    })
}

/// The blocks of the Markdown file at `path`.
pub fn read(path: &Path) -> Result<Vec<Block>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
    blocks(&path.display().to_string(), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_carry_their_markers() {
        let md = "# Guide\n\n<!-- test: run -->\n```sh\nkubectl apply -k x\n```\n\n```yaml\na: 1\n```\n\n1. Step\n\n   <!-- test: skip: needs a kubelet -->\n   ```sh\n   kubectl wait x\n     --for y\n   ```\n";
        let b = blocks("g.md", md).expect("blocks");
        assert_eq!(
            b,
            [
                Block {
                    line: 4,
                    marker: Marker::Run,
                    text: "kubectl apply -k x".into()
                },
                Block {
                    line: 15,
                    marker: Marker::Skip("needs a kubelet".into()),
                    text: "kubectl wait x\n  --for y".into()
                },
            ]
        );
        let s = script("g.md", &b);
        assert!(s.contains("kubectl apply -k x") && !s.contains("kubectl wait"));
    }

    #[test]
    fn a_block_without_a_marker_or_reason_is_an_error() {
        for md in [
            "text\n```sh\nrm -rf x\n```\n",
            "<!-- test: skip: -->\n```sh\nx\n```\n",
            "<!-- test: maybe -->\n```sh\nx\n```\n",
            "<!-- test: run -->\n```sh\nx\n",
        ] {
            assert!(blocks("g.md", md).is_err(), "{md:?}");
        }
    }

    #[test]
    fn exec_command_is_the_words_run_in_the_container() {
        let md = "<!-- test: run -->\n```sh\nkubectl get x\n```\n<!-- test: skip: no kubelet -->\n```sh\nkubectl -n a exec deploy/hub -- \\\n  /bin/hub kubeconfig \\\n  --server https://h:1 > out\nrm out\n```\n";
        let b = blocks("g.md", md).expect("blocks");
        assert_eq!(
            exec_command(&b, "hub"),
            Some(vec![
                "/bin/hub".into(),
                "kubeconfig".into(),
                "--server".into(),
                "https://h:1".into()
            ])
        );
        assert_eq!(exec_command(&b, "operator"), None);
    }

    #[test]
    fn the_install_guide_marks_every_block() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/install.md");
        let b = read(&path).expect("docs/install.md");
        assert!(b.iter().filter(|b| b.marker == Marker::Run).count() >= 5);
    }
}
