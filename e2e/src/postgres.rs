//! PostgreSQL (Debian's package) as the store several hub replicas share, for `just up`
//! and the end-to-end tests: `initdb` into a data folder of its own, `postgres` on
//! 127.0.0.1 and a free port, trust authentication for the loopback only, TLS with a
//! certificate from a CA of its own, which its URLs name (`sslmode=verify-full`, as the
//! hub connects by default). PostgreSQL
//! refuses to run as root, so when the harness is root the server runs as the `postgres`
//! system user (the package creates it; the harness creates `scale-agent-pg` when it is
//! missing).
//!
//! Tests share one server and take a database each ([`Postgres::database`]); they stop,
//! kill and restart the server to see what the hubs do without it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::ports::{free_port, start_on_free_ports};
use crate::process::{Proc, wait_ready};
use crate::{Error, Result};

/// The role the hubs connect as (superuser of this throwaway server).
pub const ROLE: &str = "scaleagent";

/// Where `initdb` and `postgres` are: `$PG_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let newest = std::fs::read_dir(root)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max_by_key(|(v, _)| *v);
    newest.map(|(_, bin)| bin).ok_or(Error::Missing {
        program: "PostgreSQL (initdb, postgres)",
        install: "apt-get install postgresql (`just test` and `just up` do this)",
    })
}

/// The user the server runs as: `None` (the current one) unless the harness is root.
fn server_user() -> Result<Option<(u32, u32)>> {
    if !nix::unistd::Uid::effective().is_root() {
        return Ok(None);
    }
    for name in ["postgres", "scale-agent-pg"] {
        if let Ok(Some(user)) = nix::unistd::User::from_name(name) {
            return Ok(Some((user.uid.as_raw(), user.gid.as_raw())));
        }
    }
    let status = Command::new("useradd")
        .args([
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "scale-agent-pg",
        ])
        .status()
        .map_err(|source| Error::Spawn {
            component: "useradd (a system user for PostgreSQL)".into(),
            source,
        })?;
    match nix::unistd::User::from_name("scale-agent-pg") {
        Ok(Some(user)) if status.success() => Ok(Some((user.uid.as_raw(), user.gid.as_raw()))),
        _ => Err(Error::Invalid {
            what: "a system user for PostgreSQL".into(),
            message: format!("useradd scale-agent-pg failed ({status})"),
        }),
    }
}

/// A running PostgreSQL server. Dropping it stops the server and removes its data.
#[derive(Debug)]
pub struct Postgres {
    proc: Option<Proc>,
    bin: PathBuf,
    /// The data folder (outside the run folder: the server's user must be able to reach
    /// it, and the run folder may be private to root).
    data: PathBuf,
    user: Option<(u32, u32)>,
    run_dir: PathBuf,
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The CA the server's certificate (127.0.0.1, localhost) chains to.
    pub ca_file: PathBuf,
}

impl Postgres {
    /// Creates a data folder with `initdb` and starts the server on a free port; its log
    /// goes to `<run_dir>/logs/postgres-<port>.log`.
    pub async fn start(run_dir: &Path) -> Result<Postgres> {
        start_on_free_ports("PostgreSQL", || Postgres::start_on_a_free_port(run_dir)).await
    }

    async fn start_on_a_free_port(run_dir: &Path) -> Result<Postgres> {
        let bin = bin_dir()?;
        let user = server_user()?;
        let port = free_port()?;
        remove_abandoned_data();
        let data = std::env::temp_dir().join(format!("{DATA_PREFIX}{}-{port}", std::process::id()));
        if data.exists() {
            std::fs::remove_dir_all(&data).map_err(|e| Error::io("removing", &data, e))?;
        }
        std::fs::create_dir_all(&data).map_err(|e| Error::io("creating", &data, e))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&data, Some(uid), Some(gid))
                .map_err(|e| Error::io("handing to the PostgreSQL user", &data, e))?;
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args(["-U", ROLE, "--auth=trust", "-E", "UTF8", "--no-sync"])
            .arg("--locale=C");
        as_user(&mut initdb, user);
        let out = initdb.output().map_err(|source| Error::Spawn {
            component: "initdb".into(),
            source,
        })?;
        if !out.status.success() {
            return Err(Error::NotReady {
                component: "PostgreSQL (initdb)".into(),
                seconds: 0,
                log: data.clone(),
                tail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        let ca_file = server_certificate(run_dir, &data, port, user)?;
        let mut pg = Postgres {
            proc: None,
            bin,
            data,
            user,
            run_dir: run_dir.to_path_buf(),
            port,
            ca_file,
        };
        pg.restart().await?;
        Ok(pg)
    }

    /// Starts the server (again) on the same port and data, and waits until it takes
    /// queries.
    pub async fn restart(&mut self) -> Result<()> {
        self.proc = None;
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            // No Unix socket: nothing but the loopback port, no shared socket folder.
            .args(["-c", "unix_socket_directories="])
            // A test server: durability across a machine crash is not wanted, speed is.
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"])
            // server.crt and server.key in the data folder.
            .args(["-c", "ssl=on"]);
        as_user(&mut cmd, self.user);
        let mut proc = Proc::spawn(&format!("postgres-{}", self.port), cmd, &self.run_dir)?;
        wait_ready(
            &mut proc,
            Duration::from_secs(30),
            Duration::from_millis(100),
            || std::future::ready(self.psql("postgres", "SELECT 1").is_ok()),
        )
        .await?;
        self.proc = Some(proc);
        Ok(())
    }

    /// Stops the server the way an operator restarting it would (fast shutdown: open
    /// sessions are ended, committed work is kept).
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            proc.signal(Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline && proc.check_running().is_ok() {
                std::thread::sleep(Duration::from_millis(50));
            }
            proc.stop(Duration::from_secs(5));
        }
    }

    /// The server's process (to freeze or kill it).
    pub fn process(&self) -> Option<&Proc> {
        self.proc.as_ref()
    }

    /// The connection URL of database `db`.
    pub fn url(&self, db: &str) -> String {
        self.url_as(ROLE, db)
    }

    /// The connection URL of database `db` as `role`: TLS, the server's certificate
    /// checked against [`Postgres::ca_file`] and the host.
    pub fn url_as(&self, role: &str, db: &str) -> String {
        format!(
            "postgres://{role}@127.0.0.1:{}/{db}?sslmode=verify-full&sslrootcert={}",
            self.port,
            self.ca_file.display()
        )
    }

    /// Creates database `name` (a fresh one per test) and returns its URL.
    pub fn database(&self, name: &str) -> Result<String> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(Error::Invalid {
                what: format!("database name {name:?}"),
                message: "use at most 63 lower-case letters, digits and _".into(),
            });
        }
        self.psql("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url(name))
    }

    /// Creates role `role` that logs in only with `password` (SCRAM, from 127.0.0.1) and
    /// database `db` it owns; returns the database's URL, without the password.
    pub fn database_with_password(&self, db: &str, role: &str, password: &str) -> Result<String> {
        let plain =
            |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !plain(db) || !plain(role) || !plain(password) {
            return Err(Error::Invalid {
                what: format!("database {db:?}, role {role:?}"),
                message: "use letters, digits and _".into(),
            });
        }
        self.psql(
            "postgres",
            &format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
        )?;
        self.psql("postgres", &format!("CREATE DATABASE {db} OWNER {role}"))?;
        let hba = self.data.join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).map_err(|e| Error::io("reading", &hba, e))?;
        std::fs::write(
            &hba,
            format!("host all {role} 127.0.0.1/32 scram-sha-256\n{rules}"),
        )
        .map_err(|e| Error::io("writing", &hba, e))?;
        self.psql("postgres", "SELECT pg_reload_conf()")?;
        Ok(self.url_as(role, db))
    }

    /// Runs `sql` in database `db` with `psql`; returns the rows, one line each, columns
    /// separated by `|`.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .arg("-d")
            .arg(self.url(db))
            .arg("-c")
            .arg(sql)
            .output()
            .map_err(|source| Error::Spawn {
                component: "psql".into(),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(Error::Invalid {
                what: format!("psql {sql:?}"),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }

    /// The server's log.
    pub fn log(&self) -> Option<PathBuf> {
        self.proc.as_ref().map(|p| p.log().to_path_buf())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// Writes the server's certificate and key into `data` (`server.crt`, `server.key`,
/// the key readable by the server's user only, as PostgreSQL demands), from a CA of
/// its own in `<run_dir>/postgres-<port>-pki`; returns the CA's file.
fn server_certificate(
    run_dir: &Path,
    data: &Path,
    port: u16,
    user: Option<(u32, u32)>,
) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let pki = crate::certs::Pki::create_named(
        &run_dir.join(format!("postgres-{port}-pki")),
        "PostgreSQL test CA",
    )?;
    let pair = pki.issue_server("server", &["127.0.0.1", "localhost"])?;
    for (name, text, mode) in [
        ("server.crt", &pair.cert_pem, 0o644),
        ("server.key", &pair.key_pem, 0o600),
    ] {
        let path = data.join(name);
        std::fs::write(&path, text).map_err(|e| Error::io("writing", &path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("setting the mode of", &path, e))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))
                .map_err(|e| Error::io("handing to the PostgreSQL user", &path, e))?;
        }
    }
    Ok(pki.ca_file)
}

/// The data folders' name: `<prefix><pid of the harness>-<port>`.
const DATA_PREFIX: &str = "scale-agent-pg-";

/// Removes the data folders of harness processes that are gone (killed before they
/// could remove their own).
fn remove_abandoned_data() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DATA_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn as_user(cmd: &mut Command, user: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt as _;
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
        // initdb and postgres read HOME-relative files of the user they run as.
        cmd.env("HOME", "/tmp");
    }
}
