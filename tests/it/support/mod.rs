//! Shared helpers for the integration tests.

pub mod browser;
pub mod child;
pub mod daemon;
pub mod http;
pub mod notify;
pub mod postfix;
pub mod proxy;
pub mod smtp;
pub mod source;

use std::{
    path::{Path, PathBuf},
    process::Output,
};

/// A scratch installation: its own directory, database, secret and subscriber file.
/// Every command runs the real `paperpost` binary there.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    pub db: TestDb,
}

/// The database of a test's installation: the SQLite file in its folder, or,
/// when `PAPERPOST_TEST_POSTGRES` names a server (CI's second leg, from
/// `.ci/postgres.sh`), a fresh PostgreSQL database, dropped with it.
pub struct TestDb {
    url: Option<(String, String)>,
}

impl TestDb {
    pub fn new() -> Self {
        let Ok(server) = std::env::var("PAPERPOST_TEST_POSTGRES") else {
            return TestDb { url: None };
        };
        let name = format!("pp_{}", uuid::Uuid::new_v4().simple());
        psql(&server, &format!("CREATE DATABASE {name}"));
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        TestDb {
            url: Some((format!("{base}/{name}"), name)),
        }
    }

    /// No database of its own (an installation beside another's).
    pub fn none() -> Self {
        TestDb { url: None }
    }

    /// The `database.url` setting (an empty one for SQLite).
    pub fn url(&self) -> &str {
        self.url.as_ref().map_or("", |(u, _)| u.as_str())
    }
}

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let (Some((_, name)), Ok(server)) = (&self.url, std::env::var("PAPERPOST_TEST_POSTGRES"))
        {
            psql(
                &server,
                &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            );
        }
    }
}

fn psql(server: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .args(["-q", "-X", "-v", "ON_ERROR_STOP=1", server, "-c", sql])
        .output()
        .expect("psql runs (PAPERPOST_TEST_POSTGRES is set)");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// True on the PostgreSQL leg. A test of something only SQLite has (its
/// file, its write lock, its backups) says so and returns.
pub fn on_postgres(what: &str) -> bool {
    let pg = std::env::var_os("PAPERPOST_TEST_POSTGRES").is_some();
    if pg {
        eprintln!("not on PostgreSQL: {what}");
    }
    pg
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "command failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts failure with exit code 1 and returns stderr.
    #[track_caller]
    pub fn fails(&self) -> &str {
        assert_eq!(
            self.code, 1,
            "expected exit 1:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        &self.stderr
    }

    /// The first line of stderr.
    pub fn first_error_line(&self) -> &str {
        self.stderr.lines().next().unwrap_or("")
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// How long a command may run before the test kills it and fails: a hung
/// command must fail its test, not hang CI until its own limit.
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs a command to its end, killing it (and failing) after `limit`.
#[track_caller]
pub fn output_within(c: &mut std::process::Command, limit: std::time::Duration) -> Run {
    use std::{io::Read, process::Stdio, time::Instant};
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{c:?} did not finish within {limit:?}; stderr:\n{}",
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";

impl Sandbox {
    pub fn new() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("temp dir"),
            db: TestDb::new(),
        }
    }

    /// A sandbox with the sample daily_papers file imported (the 2024-03-11 edition).
    pub fn with_sample_papers() -> Self {
        let s = Self::new();
        let sample = fixture("daily_papers-2024-03-11.json");
        s.run(&["papers", "import", sample.to_str().unwrap()]).ok();
        s
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn db_path(&self) -> PathBuf {
        self.path("data/paperpost.db")
    }

    /// Writes a file in the sandbox and returns its path.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(&p, contents).unwrap();
        p
    }

    pub fn command(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_paperpost"));
        c.current_dir(self.dir.path())
            .env_remove("PAPERPOST_CONFIG")
            .env_remove("RUST_LOG")
            .env("PAPERPOST__SECURITY__SECRET", SECRET)
            .env("PAPERPOST__LOG__LEVEL", "warn")
            // Daemons in parallel tests each listen on ports of their own.
            .env("PAPERPOST__HTTP__BIND", "127.0.0.1:0")
            .env("PAPERPOST__HTTP__METRICS_BIND", "127.0.0.1:0")
            .env("PAPERPOST__DATABASE__URL", self.db.url());
        for (k, _) in std::env::vars() {
            if k.starts_with("PAPERPOST__")
                && k != "PAPERPOST__SECURITY__SECRET"
                && k != "PAPERPOST__LOG__LEVEL"
                && k != "PAPERPOST__HTTP__BIND"
                && k != "PAPERPOST__HTTP__METRICS_BIND"
                && k != "PAPERPOST__DATABASE__URL"
            {
                c.env_remove(k);
            }
        }
        c
    }

    /// Runs `paperpost ARGS...` in the sandbox (120 s at most).
    pub fn run(&self, args: &[&str]) -> Run {
        self.run_env::<&str, &str>(&[], args)
    }

    /// Runs with extra environment variables (120 s at most).
    pub fn run_env<K: AsRef<str>, V: AsRef<str>>(&self, env: &[(K, V)], args: &[&str]) -> Run {
        let mut c = self.command();
        for (k, v) in env {
            c.env(k.as_ref(), v.as_ref());
        }
        output_within(c.args(args), RUN_LIMIT)
    }

    /// `subscribers list --json`, parsed.
    pub fn subscribers(&self) -> Vec<serde_json::Value> {
        let out = self.run(&["subscribers", "list", "--json"]);
        serde_json::from_str(out.ok()).expect("list --json prints JSON")
    }

    /// The stored subscriber with this address, if any.
    pub fn subscriber(&self, email: &str) -> Option<serde_json::Value> {
        self.subscribers()
            .into_iter()
            .find(|s| s["email"].as_str().unwrap().eq_ignore_ascii_case(email))
    }

    /// `papers list [--date D] --json`, as (id, title) pairs in order.
    pub fn papers(&self, date: Option<&str>) -> Vec<(String, String)> {
        let mut args = vec!["papers", "list", "--json"];
        if let Some(d) = date {
            args.extend(["--date", d]);
        }
        let out = self.run(&args);
        let v: Vec<serde_json::Value> = serde_json::from_str(out.ok()).expect("JSON");
        v.iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    p["title"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    /// Opens the sandbox database without migrating it.
    pub async fn pool_unmigrated(&self) -> paperpost::store::Pool {
        paperpost::store::open(&self.database_settings())
            .await
            .unwrap()
    }

    fn database_settings(&self) -> paperpost::config::DatabaseSettings {
        self.database_settings_with(&[])
    }

    fn database_settings_with(&self, env: &[(&str, &str)]) -> paperpost::config::DatabaseSettings {
        let db = self.db_path().display().to_string();
        let mut env = env.to_vec();
        env.push(("PAPERPOST__DATABASE__PATH", &db));
        env.push(("PAPERPOST__DATABASE__URL", self.db.url()));
        settings(&env).database
    }

    /// Opens the sandbox database with the library, as the daemon would.
    pub async fn pool(&self) -> paperpost::store::Pool {
        self.pool_with(&[]).await
    }

    /// `pool` with these `PAPERPOST__DATABASE__…` settings.
    pub async fn pool_with(&self, env: &[(&str, &str)]) -> paperpost::store::Pool {
        paperpost::store::connect(&self.database_settings_with(env))
            .await
            .unwrap()
    }
}

/// The SQLite pool under a store pool, for a test's own SQL.
pub fn sqlite(pool: &paperpost::store::Pool) -> &sqlx::SqlitePool {
    match pool {
        paperpost::store::Pool::Sqlite(p) => p,
        paperpost::store::Pool::Postgres(_) => panic!("this test reads SQLite's file"),
    }
}

/// Settings as the binary loads them, from the defaults and these
/// `PAPERPOST__…` variables only (not the test process's environment).
pub fn settings(env: &[(&str, &str)]) -> paperpost::config::Settings {
    try_settings(env).expect("valid settings")
}

/// `settings`, or the error that stops start-up.
pub fn try_settings(
    env: &[(&str, &str)],
) -> Result<paperpost::config::Settings, paperpost::config::ConfigError> {
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    paperpost::config::Settings::load_from(None, Some(env.collect()))
}

/// The sample daily_papers file shipped with the tests.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// True if the message has a text/html part. (mail-parser's `html_body`
/// lists the text part of a text-only message too, and `is_text()` is true
/// for HTML parts as well, so neither tells.)
pub fn has_html_part(m: &mail_parser::Message<'_>) -> bool {
    use mail_parser::MimeHeaders;
    m.parts.iter().any(|p| {
        p.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("text")
                && ct.subtype().is_some_and(|s| s.eq_ignore_ascii_case("html"))
        })
    })
}

/// Makes the sandbox's database as a release with only the first `n`
/// migrations made it (same files, same checksums), for upgrade tests.
pub async fn database_at_version(s: &Sandbox, n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    files.sort();
    for f in files.iter().take(n) {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    std::fs::create_dir_all(s.db_path().parent().unwrap()).unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(s.db_path())
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    sqlx::migrate::Migrator::new(dir.path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    pool.close().await;
}

/// The number of migrations this build knows.
pub fn migrations() -> usize {
    std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "sql")
        })
        .count()
}

/// The database's write lock, held as another process holds it (a large
/// import, a backup) until `release`: SQLite's, or on PostgreSQL the
/// advisory lock every paperpost write transaction takes.
pub enum WriteLock {
    Sqlite(sqlx::pool::PoolConnection<sqlx::Sqlite>),
    Postgres(sqlx::pool::PoolConnection<sqlx::Postgres>),
}

impl WriteLock {
    /// Held as a process at work holds it: on PostgreSQL the server never
    /// ends the transaction (it would, were it idle past TTL/3).
    pub async fn take(pool: &paperpost::store::Pool) -> Self {
        Self::take_as(pool, true).await
    }

    /// Held as by a paperpost process that stopped inside its write: its
    /// session is left as paperpost opens them.
    pub async fn take_and_stop(pool: &paperpost::store::Pool) -> Self {
        Self::take_as(pool, false).await
    }

    async fn take_as(pool: &paperpost::store::Pool, at_work: bool) -> Self {
        match pool {
            paperpost::store::Pool::Sqlite(p) => {
                let mut conn = p.acquire().await.unwrap();
                sqlx::query("BEGIN IMMEDIATE")
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                WriteLock::Sqlite(conn)
            }
            paperpost::store::Pool::Postgres(p) => {
                let mut conn = p.acquire().await.unwrap();
                sqlx::query("BEGIN").execute(&mut *conn).await.unwrap();
                if at_work {
                    sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 0")
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                }
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(paperpost::store::postgres::WRITE_LOCK)
                    .execute(&mut *conn)
                    .await
                    .unwrap();
                // Every table, as SQLite's lock holds the whole file: others
                // read, nobody else writes.
                let tables: Vec<String> = sqlx::query_scalar(
                    "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public'",
                )
                .fetch_all(&mut *conn)
                .await
                .unwrap();
                if !tables.is_empty() {
                    let sql = format!("LOCK TABLE {} IN EXCLUSIVE MODE", tables.join(", "));
                    sqlx::query(&sql).execute(&mut *conn).await.unwrap();
                }
                WriteLock::Postgres(conn)
            }
        }
    }

    /// True if the lock's transaction is gone (ended by the server) when
    /// it is released.
    pub async fn release_fails(self) -> bool {
        match self {
            WriteLock::Sqlite(mut c) => sqlx::query("ROLLBACK").execute(&mut *c).await.is_err(),
            WriteLock::Postgres(mut c) => sqlx::query("ROLLBACK").execute(&mut *c).await.is_err(),
        }
    }

    pub async fn release(self) {
        match self {
            WriteLock::Sqlite(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut *c).await.unwrap();
            }
            WriteLock::Postgres(mut c) => {
                sqlx::query("ROLLBACK").execute(&mut *c).await.unwrap();
            }
        }
    }
}

/// Runs a test's own statement on whichever database `pool` is; inside,
/// `$p` is the driver's pool and `$p.sql(TEXT)` the text for it.
#[macro_export]
macro_rules! on_db {
    ($pool:expr, |$p:ident| $body:expr) => {{
        #[allow(unused_imports)]
        use paperpost::store::Dialect as _;
        match $pool {
            paperpost::store::Pool::Sqlite($p) => $body,
            paperpost::store::Pool::Postgres($p) => $body,
        }
    }};
}
