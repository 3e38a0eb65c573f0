//! The one runner of the end-to-end test binaries (`harness = false`, libtest's command
//! line through libtest-mimic): it starts the binary's environment once, runs each test
//! on a shared tokio runtime, and stops everything afterwards, also when a test fails.
//!
//! Each test runs in a scope that records the namespaces it creates with
//! [`Env::namespace`]. A test that passes has them deleted; a test that fails (an error
//! or a panic) gets the [`diagnostics`] of them appended to its failure, and the run
//! folder with every component's log is kept.

use std::any::Any;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use libtest_mimic::{Arguments, Failed, Trial};
use tokio::runtime::Handle;

use crate::{Env, Options, diagnostics};

/// What a test returns.
pub type TestResult = anyhow::Result<()>;

/// A test's body, given the binary's fixture.
pub type TestFn<F> = fn(Arc<F>) -> Pin<Box<dyn Future<Output = TestResult> + Send>>;

/// A named test.
pub type Test<F> = (&'static str, TestFn<F>);

/// A test binary's list of tests, one line each: `tests![name => function, ...]`, each
/// function an `async fn(Arc<F>) -> TestResult`, each name the test's.
#[macro_export]
macro_rules! tests {
    ($($name:ident => $f:path),* $(,)?) => {
        vec![$((stringify!($name), |e| Box::pin($f(e)))),*]
    };
}

/// What the tests of one binary share: an [`Env`], and whatever the binary adds to it
/// (an operator, say).
pub trait Fixture: Send + Sync + 'static {
    /// The environment.
    fn env(&self) -> &Env;

    /// Logs of components every test uses; a failed test shows their lines that mention
    /// its namespaces.
    fn shared_logs(&self) -> impl Future<Output = Vec<PathBuf>> + Send {
        async { Vec::new() }
    }
}

impl Fixture for Env {
    fn env(&self) -> &Env {
        self
    }
}

/// Runs `tests` against an [`Env`] with target clusters `targets`, as many at once as
/// the command line says, and exits with libtest's status.
pub fn main(targets: &[&str], tests: Vec<Test<Env>>) -> ! {
    main_with(targets, tests, None)
}

/// [`main`], with at most `threads` tests at once whatever the command line says
/// (`Some(1)`: one after another, for tests that stop shared components).
pub fn main_with(targets: &[&str], tests: Vec<Test<Env>>, threads: Option<usize>) -> ! {
    let options = Options {
        targets: targets.iter().map(|t| t.to_string()).collect(),
        ..Options::default()
    };
    run(threads, Env::start(options), tests)
}

/// Builds the fixture with `start` (unless the command line only lists the tests), runs
/// `tests` against it (at most `threads` at once, when given), drops it, and exits with
/// libtest's status.
pub fn run<F, E>(
    threads: Option<usize>,
    start: impl Future<Output = Result<F, E>>,
    tests: Vec<Test<F>>,
) -> !
where
    F: Fixture,
    E: Into<anyhow::Error>,
{
    init_tracing();
    let mut args = Arguments::from_args();
    if args.list {
        let trials = tests
            .iter()
            .map(|(name, _)| Trial::test(*name, || Ok(())))
            .collect();
        libtest_mimic::run(&args, trials).exit();
    }
    args.test_threads = at_most(args.test_threads, threads);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => exit_with(&format!("building the tokio runtime: {e}")),
    };
    let started = Instant::now();
    let fixture = match rt.block_on(start) {
        Ok(f) => Arc::new(f),
        Err(e) => exit_with(&format!("starting the test environment: {:#}", e.into())),
    };
    eprintln!(
        "test environment ready in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let trials = tests
        .into_iter()
        .map(|(name, body)| {
            let fixture = fixture.clone();
            let rt = rt.handle().clone();
            Trial::test(name, move || run_one(&rt, fixture, body))
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    if conclusion.has_failed() {
        let dir = fixture.env().cp.keep_run_dir();
        eprintln!("kept the run folder for a look: {}", dir.display());
    }
    // Components go before the control plane they talk to (the fixture's drop order),
    // and before the runtime their clients run on.
    drop(fixture);
    drop(rt);
    conclusion.exit()
}

/// At most `limit` threads, when the binary sets a limit.
fn at_most(asked: Option<usize>, limit: Option<usize>) -> Option<usize> {
    match (asked, limit) {
        (Some(a), Some(l)) => Some(a.min(l)),
        (a, None) => a,
        (None, l) => l,
    }
}

fn exit_with(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(101)
}

/// Runs one test in its scope, on this thread as a plain test would run; on success
/// deletes its namespaces, on failure (an error or a panic) returns the error with the
/// diagnostics of its namespaces.
fn run_one<F: Fixture>(rt: &Handle, fixture: Arc<F>, body: TestFn<F>) -> Result<(), Failed> {
    let scope = Arc::new(Scope::default());
    let test = SCOPE.scope(scope.clone(), body(fixture.clone()));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| rt.block_on(test)));
    let namespaces = scope.namespaces();
    let error = match outcome {
        Ok(Ok(())) => {
            rt.block_on(async {
                for ns in &namespaces {
                    fixture.env().drop_namespace(ns).await;
                }
            });
            return Ok(());
        }
        Ok(Err(e)) => format!("{e:#}"),
        Err(payload) => format!("the test panicked: {}", panic_text(payload.as_ref())),
    };
    let shared = rt.block_on(fixture.shared_logs());
    let report = diagnostics::report(fixture.env(), &namespaces, &shared);
    Err(format!("{error}\n\n{report}").into())
}

fn panic_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// What one running test has created.
#[derive(Debug, Default)]
struct Scope {
    namespaces: Mutex<Vec<String>>,
}

impl Scope {
    fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default()
    }
}

tokio::task_local! {
    static SCOPE: Arc<Scope>;
}

/// Records that the running test created namespace `ns` (nothing outside a test).
pub(crate) fn record_namespace(ns: &str) {
    let _ = SCOPE.try_with(|scope| {
        if let Ok(mut n) = scope.namespaces.lock() {
            n.push(ns.to_string());
        }
    });
}

/// Runs `body` in a fresh namespace named after `test` (see [`Env::namespace`]).
pub async fn in_namespace<F, B, Fut>(fixture: Arc<F>, test: &str, body: B) -> TestResult
where
    F: Fixture,
    B: FnOnce(Arc<F>, String) -> Fut,
    Fut: Future<Output = TestResult>,
{
    let ns = fixture.env().namespace(test).await?;
    body(fixture, ns).await
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_binary_limit_caps_the_command_line() {
        assert_eq!(at_most(Some(4), Some(1)), Some(1));
        assert_eq!(at_most(Some(1), Some(2)), Some(1));
        assert_eq!(at_most(None, Some(1)), Some(1));
        assert_eq!(at_most(Some(3), None), Some(3));
        assert_eq!(at_most(None, None), None);
    }

    #[tokio::test]
    async fn namespaces_are_recorded_for_the_test_that_creates_them() {
        let (a, b) = (Arc::new(Scope::default()), Arc::new(Scope::default()));
        let one = SCOPE.scope(a.clone(), async { record_namespace("one") });
        let two = SCOPE.scope(b.clone(), async { record_namespace("two") });
        tokio::join!(one, two);
        record_namespace("outside any test");
        assert_eq!(a.namespaces(), ["one"]);
        assert_eq!(b.namespaces(), ["two"]);
    }
}
