//! Component processes: each runs in its own process group with its output in a log file,
//! and is stopped (the whole group) when its guard drops — also on panic. A reaper process
//! kills every recorded group if the harness itself dies without dropping its guards.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::{Error, Result};

/// The file, inside a run folder, that lists every process group the run started.
pub const PGIDS_FILE: &str = "pgids";

/// A running component. Dropping it stops its process group: SIGTERM, then SIGKILL.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` as component `name` in its own process group, appending its stdout and
    /// stderr to `<run_dir>/logs/<name>.log` and recording its group in `<run_dir>/pgids`.
    pub fn spawn(name: &str, mut cmd: Command, run_dir: &Path) -> Result<Proc> {
        let logs = run_dir.join("logs");
        fs::create_dir_all(&logs).map_err(|e| Error::io("creating", &logs, e))?;
        let log = logs.join(format!("{name}.log"));
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::io("opening", &log, e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io("duplicating", &log, e))?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd.spawn().map_err(|source| Error::Spawn {
            component: name.to_string(),
            source,
        })?;
        record_group(run_dir, child.id())?;
        tracing::debug!(component = name, pid = child.id(), log = %log.display(), "started");
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The component's log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails with the log's tail when the process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(Error::Exited {
                component: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
                tail: tail(&self.log, 30),
            }),
            Ok(None) => Ok(()),
            Err(e) => Err(Error::io("waiting for", &self.log, e)),
        }
    }

    /// Sends `signal` to the component's process group (e.g. SIGSTOP to freeze it).
    pub fn signal(&self, signal: Signal) {
        let _ = killpg(group(self.child.id()), signal);
    }

    /// Stops the process group: SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            // The leader is gone; members of its group may still be running.
            let _ = killpg(group(self.child.id()), Signal::SIGKILL);
            return;
        }
        let _ = killpg(group(self.child.id()), Signal::SIGCONT);
        let _ = killpg(group(self.child.id()), Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                let _ = killpg(group(self.child.id()), Signal::SIGKILL);
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = killpg(group(self.child.id()), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn group(pid: u32) -> Pid {
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

fn record_group(run_dir: &Path, pid: u32) -> Result<()> {
    let path = run_dir.join(PGIDS_FILE);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io("opening", &path, e))?;
    writeln!(f, "{pid}").map_err(|e| Error::io("writing", &path, e))
}

/// Kills every process group recorded in `<run_dir>/pgids` (SIGKILL). Returns how many
/// groups still had processes.
pub fn kill_recorded_groups(run_dir: &Path) -> usize {
    let Ok(text) = fs::read_to_string(run_dir.join(PGIDS_FILE)) else {
        return 0;
    };
    text.lines()
        .filter_map(|l| l.trim().parse::<u32>().ok())
        .filter(|pid| killpg(group(*pid), Signal::SIGKILL).is_ok())
        .count()
}

/// Starts a reaper that waits for process `watched` to exit, then kills every group
/// recorded in the run's pgids file. It covers a harness that is killed or aborts
/// without running its destructors. The returned guard stops the reaper itself.
pub fn spawn_reaper(run_dir: &Path, watched: u32) -> Result<Proc> {
    let pgids = run_dir.join(PGIDS_FILE);
    let script = r#"while kill -0 "$1" 2>/dev/null; do sleep 1; done
[ -f "$2" ] && while read -r g; do kill -9 -- "-$g" 2>/dev/null; done < "$2"
exit 0"#;
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(script)
        .arg("reaper")
        .arg(watched.to_string())
        .arg(&pgids);
    // The reaper's own group must not be in the file it reads, or it would kill itself
    // before the others: spawn it without recording.
    let logs = run_dir.join("logs");
    fs::create_dir_all(&logs).map_err(|e| Error::io("creating", &logs, e))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    let child = cmd.spawn().map_err(|source| Error::Spawn {
        component: "reaper".into(),
        source,
    })?;
    Ok(Proc {
        name: "reaper".into(),
        child,
        log: logs.join("reaper.log"),
    })
}

/// Waits until the component `proc` is ready: polls `ready` every `every`; fails with
/// its log's tail when it exits, or when it is not ready within `timeout`. The one
/// readiness poll of the components the harness starts.
pub async fn wait_ready<F, Fut>(
    proc: &mut Proc,
    timeout: Duration,
    every: Duration,
    mut ready: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        proc.check_running()?;
        if ready().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            // It may have exited while we waited: say so rather than "not ready".
            proc.check_running()?;
            return Err(Error::NotReady {
                component: proc.name().to_string(),
                seconds: timeout.as_secs(),
                log: proc.log().to_path_buf(),
                tail: tail(proc.log(), 30),
            });
        }
        tokio::time::sleep(every).await;
    }
}

/// The last `lines` lines of a log file (empty when it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = read_end(path, 64 * 1024);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `max_bytes` of a file as text (empty when it cannot be read): what is worth
/// reading of a log that may have grown large.
pub fn read_end(path: &Path, max_bytes: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The resident memory of process `pid` in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Every file under `dir`, at any depth (none when it cannot be read).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}
