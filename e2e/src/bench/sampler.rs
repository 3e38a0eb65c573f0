//! Samples one process's resident memory and CPU time from `/proc` at a fixed interval,
//! from start to stop, so a scenario can ask for the peak, the steady level over a
//! window, and the CPU used in a window. The peak also takes the kernel's high-water mark
//! (`VmHWM`), so a spike between two samples is not missed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::procfs;
use super::stats::median;

/// A measurement, or why there is none (a figure without a measurement is reported
/// `not_measured` with that reason, never as a number).
pub type Measured<T> = Result<T, String>;

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// `VmRSS`, KiB.
    pub rss_kib: u64,
    /// `VmHWM` at that moment, KiB.
    pub hwm_kib: u64,
    /// CPU seconds used so far (user + system, every thread).
    pub cpu_s: f64,
}

/// A running sampler of one process.
#[derive(Debug)]
pub struct Sampler {
    pid: u32,
    samples: Arc<Mutex<Vec<Sample>>>,
    task: JoinHandle<()>,
}

impl Sampler {
    /// Starts sampling process `pid` every `every` until [`Sampler::stop`] or the
    /// process exits.
    pub fn start(pid: u32, every: Duration) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&samples);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(sample) = take(pid) else { return };
                if let Ok(mut s) = sink.lock() {
                    s.push(sample);
                }
            }
        });
        Sampler { pid, samples, task }
    }

    /// The sampled process.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Takes one more sample now (so a phase boundary has one) and returns it.
    pub fn sample_now(&self) -> Option<Sample> {
        let sample = take(self.pid)?;
        if let Ok(mut s) = self.samples.lock() {
            s.push(sample);
        }
        Some(sample)
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// The highest resident set seen so far, KiB: the kernel's high-water mark, or the
    /// highest sample if that is higher. An error when nothing was sampled.
    pub fn peak_kib(&self) -> Measured<u64> {
        self.samples()
            .iter()
            .map(|s| s.hwm_kib.max(s.rss_kib))
            .max()
            .ok_or_else(|| format!("process {} was never sampled", self.pid))
    }

    /// The highest resident set up to `until`, KiB (the high-water mark of the last
    /// sample taken by then). An error when nothing was sampled by then.
    pub fn peak_kib_until(&self, until: Instant) -> Measured<u64> {
        self.samples()
            .iter()
            .filter(|s| s.at <= until)
            .map(|s| s.hwm_kib.max(s.rss_kib))
            .max()
            .ok_or_else(|| format!("process {} was not sampled by then", self.pid))
    }

    /// The median resident set of the samples taken in `[from, to]`, KiB. An error when
    /// no sample falls in the window.
    pub fn median_rss_kib(&self, from: Instant, to: Instant) -> Measured<f64> {
        let window: Vec<f64> = self
            .samples()
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .map(|s| s.rss_kib as f64)
            .collect();
        median(&window).ok_or_else(|| {
            format!(
                "no sample of process {} in the {:.1} s window",
                self.pid,
                to.saturating_duration_since(from).as_secs_f64()
            )
        })
    }

    /// CPU seconds used between the first sample at or after `from` and the last at or
    /// before `to`, and the seconds between those two samples. Take a sample at each
    /// edge of the window ([`Sampler::sample_now`]) so the two are the window's own; an
    /// error when fewer than two samples fall in it.
    pub fn cpu_between(&self, from: Instant, to: Instant) -> Measured<(f64, f64)> {
        let samples = self.samples();
        let window = || {
            format!(
                "fewer than two samples of process {} in the {:.1} s window",
                self.pid,
                to.saturating_duration_since(from).as_secs_f64()
            )
        };
        let first = samples.iter().find(|s| s.at >= from).ok_or_else(window)?;
        let last = samples
            .iter()
            .rev()
            .find(|s| s.at <= to)
            .ok_or_else(window)?;
        let wall = last
            .at
            .checked_duration_since(first.at)
            .ok_or_else(window)?
            .as_secs_f64();
        if wall > 0.0 {
            Ok((last.cpu_s - first.cpu_s, wall))
        } else {
            Err(window())
        }
    }

    /// CPU seconds the process used from its start until now (a sample taken now).
    pub fn cpu_so_far(&self) -> Measured<f64> {
        self.sample_now()
            .map(|s| s.cpu_s)
            .ok_or_else(|| format!("process {} could not be read (exited?)", self.pid))
    }

    /// Stops sampling (after one last sample) and returns every sample.
    pub fn stop(self) -> Vec<Sample> {
        let _ = self.sample_now();
        self.task.abort();
        self.samples()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn take(pid: u32) -> Option<Sample> {
    let mem = procfs::memory(pid)?;
    Some(Sample {
        at: Instant::now(),
        rss_kib: mem.rss_kib,
        hwm_kib: mem.hwm_kib,
        cpu_s: procfs::cpu_seconds(pid)?,
    })
}

/// Samples the machine's load average every ten seconds until dropped.
#[derive(Debug)]
pub struct LoadSampler {
    samples: Arc<Mutex<Vec<f64>>>,
    task: JoinHandle<()>,
}

impl LoadSampler {
    /// Starts sampling.
    pub fn start() -> LoadSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&samples);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tick.tick().await;
                if let (Some(l), Ok(mut s)) = (procfs::load_average(), sink.lock()) {
                    s.push(l);
                }
            }
        });
        LoadSampler { samples, task }
    }

    /// The samples so far.
    pub fn samples(&self) -> Vec<f64> {
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for LoadSampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn samples_this_process_and_sees_memory_grow() {
        let s = Sampler::start(std::process::id(), Duration::from_millis(10));
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = s.peak_kib();
        // Touch 64 MiB so the resident set grows.
        let big = vec![1u8; 64 << 20];
        tokio::time::sleep(Duration::from_millis(50)).await;
        let after = s.sample_now().expect("alive");
        assert!(std::hint::black_box(&big).iter().all(|b| *b == 1));
        let before = before.expect("sampled");
        assert!(
            after.hwm_kib >= before + 60 * 1024,
            "{before} KiB → {after:?}"
        );
        assert!(s.median_rss_kib(start, Instant::now()).is_ok());
        assert!(s.cpu_so_far().is_ok());
        let samples = s.stop();
        assert!(samples.len() >= 3);
    }

    #[tokio::test]
    async fn a_window_without_samples_is_not_measured() {
        let s = Sampler::start(std::process::id(), Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(20)).await;
        let from = Instant::now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let to = Instant::now();
        assert!(s.cpu_between(from, to).is_err(), "no sample inside");
        assert!(s.median_rss_kib(from, to).is_err());
        // Sampling at both edges measures the window.
        let s2 = Sampler::start(std::process::id(), Duration::from_secs(3600));
        let from = Instant::now();
        s2.sample_now();
        tokio::time::sleep(Duration::from_millis(20)).await;
        s2.sample_now();
        let to = Instant::now();
        assert!(s2.cpu_between(from, to).is_ok());
    }
}
