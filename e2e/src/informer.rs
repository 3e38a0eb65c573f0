//! client-go's own shared informer (`e2e/informer/`, a Go program built into the tool
//! cache) as a process: started on the ConfigMaps of one namespace through a
//! kubeconfig, it prints one JSON line per event (`start`, `synced` with every name,
//! `added`, `updated`, `deleted`) until its standard input closes.
//!
//! The end-to-end tests and the informer-sync benchmark read those lines here; errors
//! are the tests' own (`anyhow`), as in [`crate::scenario`].

use std::io::{BufRead as _, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use serde_json::Value;

/// How long [`Informer::next`] waits for a line.
pub const LINE_WAIT: Duration = Duration::from_secs(60);

/// A running informer and the lines it printed.
pub struct Informer {
    child: Child,
    /// When the process was started.
    pub started: Instant,
    rx: Mutex<Receiver<Value>>,
    /// Every line read so far.
    seen: Mutex<Vec<Value>>,
    /// Reads what it writes to standard error as it comes (so it never blocks on it),
    /// and hands it over when the process ends.
    err: Option<JoinHandle<String>>,
}

impl Informer {
    /// Starts it on the ConfigMaps of `ns` through `kubeconfig` (its `context`, or the
    /// current one); it ends by itself after `run_for`.
    pub fn start(
        kubeconfig: &Path,
        context: Option<&str>,
        ns: &str,
        run_for: Duration,
    ) -> anyhow::Result<Informer> {
        let bin = crate::gitops::go_tool("informer")?;
        let mut command = Command::new(&bin);
        command
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--namespace={ns}"))
            .arg(format!("--for={}s", run_for.as_secs().max(1)));
        if let Some(context) = context {
            command.arg(format!("--context={context}"));
        }
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("the informer's stdout")?;
        let (tx, rx) = channel::<Value>();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        let err = child.stderr.take().map(|mut stderr| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = stderr.read_to_string(&mut text);
                text
            })
        });
        Ok(Informer {
            child,
            started,
            rx: Mutex::new(rx),
            seen: Mutex::new(Vec::new()),
            err,
        })
    }

    /// The next line `want` accepts, within [`LINE_WAIT`].
    pub fn next(&self, what: &str, want: &dyn Fn(&Value) -> bool) -> anyhow::Result<Value> {
        self.next_within(what, LINE_WAIT, want)
    }

    /// The next line `want` accepts, within `wait`.
    pub fn next_within(
        &self,
        what: &str,
        wait: Duration,
        want: &dyn Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let rx = self.rx.lock().map_err(|_| anyhow!("poisoned"))?;
        let deadline = Instant::now() + wait;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(v) => {
                    self.seen
                        .lock()
                        .map_err(|_| anyhow!("poisoned"))?
                        .push(v.clone());
                    if want(&v) {
                        return Ok(v);
                    }
                }
                Err(_) => bail!("the informer printed no {what} within {wait:?}"),
            }
        }
    }

    /// How many lines were read so far.
    pub fn mark(&self) -> usize {
        self.seen.lock().map_or(0, |s| s.len())
    }

    /// Stops it (closing its input, which ends it) and requires that it exited well;
    /// every line it printed, and what it wrote to standard error.
    pub fn stop(mut self) -> anyhow::Result<(Vec<Value>, String)> {
        drop(self.child.stdin.take());
        let status = self.child.wait()?;
        let err = self
            .err
            .take()
            .and_then(|reader| reader.join().ok())
            .unwrap_or_default();
        ensure!(status.success(), "the informer failed: {status}\n{err}");
        let mut seen = self.seen.into_inner().map_err(|_| anyhow!("poisoned"))?;
        let rx = self.rx.into_inner().map_err(|_| anyhow!("poisoned"))?;
        seen.extend(rx.try_iter());
        Ok((seen, err))
    }

    /// Ends it at once, whatever state it is in.
    pub fn kill(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
