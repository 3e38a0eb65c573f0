//! A value read from a file and re-read every interval, so that a rotated
//! secret or an edited tokens file takes effect without a restart.
//!
//! A file that becomes unreadable or invalid keeps the value read before: a
//! half-written file or a mount being swapped must not lock everyone out. Its
//! error is reported once per streak, not once per interval, so a file left
//! broken for a day does not flood the log.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// What a re-read found, for the owner to log in its own words.
#[derive(Debug)]
pub enum Reload<'a, T> {
    /// The file holds a new value, now in use.
    Changed(&'a T),
    /// The file cannot be read or parsed; the value before stays in use.
    /// Reported once until a read succeeds again or the error changes.
    Failed(&'a str),
}

/// The current value of a file.
#[derive(Debug)]
pub struct Reloaded<T> {
    path: PathBuf,
    current: RwLock<T>,
}

impl<T: Send + Sync + 'static> Reloaded<T> {
    /// A value that is never re-read (given as text rather than as a file).
    pub fn fixed(value: T) -> Reloaded<T> {
        Reloaded {
            path: PathBuf::new(),
            current: RwLock::new(value),
        }
    }

    /// Reads the file with `read` (its error when that fails), then reads it
    /// again every `interval` until `shutdown`. A value that `differs` from
    /// the current one replaces it; `report` hears of every change and of
    /// the first error of each streak.
    pub fn watch(
        path: &Path,
        interval: Duration,
        shutdown: CancellationToken,
        read: fn(&Path) -> Result<T, String>,
        differs: fn(&T, &T) -> bool,
        report: impl Fn(&Path, Reload<'_, T>) + Send + 'static,
    ) -> Result<Arc<Reloaded<T>>, String> {
        let first = read(path)?;
        let reloaded = Arc::new(Reloaded {
            path: path.to_owned(),
            current: RwLock::new(first),
        });
        let watched = Arc::clone(&reloaded);
        tokio::spawn(async move {
            let mut last_error = String::new();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = shutdown.cancelled() => return,
                }
                let path = watched.path.clone();
                let Ok(next) = tokio::task::spawn_blocking(move || read(&path)).await else {
                    continue;
                };
                match next {
                    Ok(next) => {
                        last_error.clear();
                        let mut current =
                            watched.current.write().unwrap_or_else(|p| p.into_inner());
                        if differs(&current, &next) {
                            *current = next;
                            report(&watched.path, Reload::Changed(&current));
                        }
                    }
                    Err(err) => {
                        if err != last_error {
                            report(&watched.path, Reload::Failed(&err));
                            last_error = err;
                        }
                    }
                }
            }
        });
        Ok(reloaded)
    }

    /// The value in use. A writer that panicked cannot have left it half
    /// written (it is replaced whole), so a poisoned lock is read as is.
    pub fn current(&self) -> RwLockReadGuard<'_, T> {
        self.current.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The file it is read from (empty for a fixed value).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn read_number(path: &Path) -> Result<u32, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        text.trim().parse().map_err(|e| format!("{e}"))
    }

    /// Replaces the file whole, so the watcher never reads it half written.
    fn put(path: &Path, text: &str) {
        let next = path.with_extension("next");
        std::fs::write(&next, text).expect("write");
        std::fs::rename(&next, path).expect("rename");
    }

    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_changed_file_replaces_the_value_and_a_broken_one_is_reported_once() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("number");
        std::fs::write(&path, "1").expect("write");
        let reports = Arc::new(Mutex::new(Vec::<String>::new()));
        let heard = Arc::clone(&reports);
        let shutdown = CancellationToken::new();
        let number = Reloaded::watch(
            &path,
            Duration::from_millis(10),
            shutdown.clone(),
            read_number,
            |a, b| a != b,
            move |_, reload| {
                let line = match reload {
                    Reload::Changed(n) => format!("changed {n}"),
                    Reload::Failed(_) => "failed".to_owned(),
                };
                heard.lock().expect("not poisoned").push(line);
            },
        )
        .expect("readable");
        assert_eq!(*number.current(), 1);
        let seen = |want: usize| {
            let reports = Arc::clone(&reports);
            move || reports.lock().expect("not poisoned").len() >= want
        };

        put(&path, "2");
        until(seen(1)).await;
        assert_eq!(*number.current(), 2);

        // Broken for many intervals: one report, and the value stays.
        put(&path, "not a number");
        until(seen(2)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(*number.current(), 2);

        // Fixed, then broken again: a new streak, reported again.
        put(&path, "3");
        until(seen(3)).await;
        put(&path, "not a number");
        until(seen(4)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
        assert_eq!(*number.current(), 3);
        assert_eq!(
            *reports.lock().expect("not poisoned"),
            ["changed 2", "failed", "changed 3", "failed"]
        );

        std::fs::write(&path, "").expect("write");
        let refused = Reloaded::watch(
            &path,
            Duration::from_secs(1),
            CancellationToken::new(),
            read_number,
            |a, b| a != b,
            |_, _| {},
        );
        assert!(refused.is_err());
    }
}
