//! The SQLite store. Every query paperpost runs lives in this module's children,
//! and every other module (CLI, daemon, web) reads and writes through them.

pub mod alerts;
pub mod bounces;
pub mod confirmations;
pub mod deliveries;
pub mod events;
pub mod papers;
pub mod prune;
pub mod secret;
pub mod subscribers;

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    ConnectOptions, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::config::DatabaseSettings;

pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Sqlite>;

/// The database handles the rest of paperpost passes around: which database
/// it is stays the store's business (no SQLite type outside `src/store/`).
pub type Pool = sqlx::SqlitePool;
/// One connection (or a transaction, through `&mut *tx`).
pub type Conn = sqlx::SqliteConnection;

/// A write transaction: it takes the database's write lock at once
/// (`BEGIN IMMEDIATE`), so it never fails half-way for a lock another
/// writer took meanwhile. The one way every module starts a write.
pub async fn write(pool: &SqlitePool) -> Result<Tx<'static>, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

/// The migrations in migrations/, compiled in.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Errors a store function reports to its caller in words a user understands.
/// [`StoreError::is_busy`] tells a database held by another writer (try
/// again) from a fault.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// The database was busy (held by another writer): try again.
    pub fn is_busy(&self) -> bool {
        matches!(self, StoreError::Db(e) if busy(e))
    }
}

/// Opens (creating if needed) the database file with WAL, foreign keys and a
/// busy timeout, and applies pending migrations.
pub async fn connect(settings: &DatabaseSettings) -> anyhow::Result<SqlitePool> {
    let pool = open(settings).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Opens the pool without migrating.
pub async fn open(settings: &DatabaseSettings) -> anyhow::Result<SqlitePool> {
    let path = &settings.path;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the database folder {}", dir.display()))?;
    }
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(settings.busy_timeout)
        .pragma("temp_store", "file")
        // A bulk import's merge legitimately runs for seconds; only warn past a minute.
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(60));
    let pool = SqlitePoolOptions::new()
        .max_connections(settings.max_connections)
        // A connection is a file handle, not a socket that can go stale: testing
        // it on every acquire costs a round trip to its worker thread.
        .test_before_acquire(false)
        .after_release(|conn, _| Box::pin(async move { Ok(known_state(conn)) }))
        .acquire_timeout(Duration::from_secs(30).max(settings.busy_timeout))
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open the database {}", path.display()))?;
    Ok(pool)
}

/// Opens an existing database to read only: no migration, no file created
/// (a backup copies the schema it finds, whatever release made it).
pub async fn open_read_only(settings: &DatabaseSettings) -> anyhow::Result<SqlitePool> {
    let path = &settings.path;
    let options = SqliteConnectOptions::from_str("sqlite:")?
        .filename(path)
        .read_only(true)
        .busy_timeout(settings.busy_timeout);
    SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open the database {}", path.display()))
}

/// One connection for every write a process makes (the delivery engine's
/// outcomes and claims, the web endpoint's unsubscribes and sign-ups), so
/// concurrent writers queue here, in order, instead of in SQLite's busy
/// handler, which sleeps for milliseconds at a time.
pub fn writer(pool: &SqlitePool) -> SqlitePool {
    SqlitePoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .after_release(|conn, _| Box::pin(async move { Ok(known_state(conn)) }))
        .connect_lazy_with((*pool.connect_options()).clone())
}

/// Whether a connection handed back to its pool may be used again: not one
/// still inside a transaction (a write failed and its ROLLBACK failed too,
/// as after SQLITE_FULL, where SQLite rolls back by itself): reused, its next
/// BEGIN would become a SAVEPOINT and nothing it wrote would be committed.
/// It is closed instead, and the pool opens a new one.
fn known_state(conn: &mut sqlx::SqliteConnection) -> bool {
    use sqlx::Connection;
    let clean = !conn.is_in_transaction();
    if !clean {
        tracing::warn!("a database connection was left inside a transaction; replacing it");
    }
    clean
}

/// Applies pending migrations, logging what it did. A database that a newer
/// paperpost has migrated further is refused with a clear message, untouched.
pub async fn migrate(pool: &SqlitePool) -> anyhow::Result<()> {
    let known = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied = schema_version(pool).await?;
    if applied > known {
        anyhow::bail!(
            "the database was migrated by a newer paperpost (schema version {applied}; this \
             binary knows up to {known}): run that version or a later one, or restore a \
             backup made before the upgrade"
        );
    }
    MIGRATOR
        .run(pool)
        .await
        .context("cannot apply database migrations")?;
    allow_complaints(pool)
        .await
        .context("cannot apply database migrations (unsubscribed_by 'complaint')")?;
    // An upgrade is worth a line; creating a new database is not (on a first
    // run the first line of standard error should be the error, if any).
    if applied > 0 && applied < known {
        tracing::info!(from = applied, to = known, "applied database migrations");
    } else if applied < known {
        tracing::debug!(schema = known, "created the database");
    }
    Ok(())
}

/// Lets `subscribers.unsubscribed_by` say 'complaint' (issue 18). SQLite
/// cannot alter a CHECK constraint, and rebuilding the table inside a
/// migration's transaction would cascade-delete every delivery (foreign keys
/// cannot be turned off there): the table's recorded SQL is edited in place,
/// with the schema version raised so every connection reads it again, as
/// SQLite documents for such changes. Idempotent; checked at every start.
async fn allow_complaints(pool: &SqlitePool) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    let sql: String = sqlx::query_scalar(
        "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'subscribers'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if sql.contains("'complaint'") {
        return Ok(());
    }
    let (old, new) = ("'sync', 'bounce'))", "'sync', 'bounce', 'complaint'))");
    anyhow::ensure!(
        sql.contains(old),
        "the subscribers table is not as expected"
    );
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let edited = async {
        let version: i64 = sqlx::query_scalar("PRAGMA schema_version")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::raw_sql("PRAGMA writable_schema = ON").execute(&mut *conn).await?;
        sqlx::query("UPDATE sqlite_schema SET sql = replace(sql, ?, ?) WHERE type = 'table' AND name = 'subscribers'")
            .bind(old)
            .bind(new)
            .execute(&mut *conn)
            .await?;
        sqlx::raw_sql(&format!("PRAGMA schema_version = {}", version + 1))
            .execute(&mut *conn)
            .await?;
        sqlx::raw_sql("PRAGMA writable_schema = OFF").execute(&mut *conn).await?;
        anyhow::Ok(())
    }
    .await;
    let end = if edited.is_ok() { "COMMIT" } else { "ROLLBACK" };
    sqlx::raw_sql(end).execute(&mut *conn).await?;
    edited?;
    let check: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&mut *conn)
        .await?;
    anyhow::ensure!(check == "ok", "integrity check after the edit: {check}");
    Ok(())
}

/// The newest migration applied to the database (0 for a new one).
pub async fn schema_version(pool: &SqlitePool) -> Result<i64, StoreError> {
    let exists: bool = sqlx::query_scalar(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_one(pool)
    .await?;
    if !exists {
        return Ok(0);
    }
    Ok(
        sqlx::query_scalar("SELECT coalesce(max(version), 0) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?,
    )
}

/// A consistent copy of the database in `to` (which must not exist), made
/// while other processes read and write it (`VACUUM INTO`).
pub async fn backup(pool: &SqlitePool, to: &std::path::Path) -> Result<(), StoreError> {
    sqlx::query("VACUUM INTO ?")
        .bind(to.to_string_lossy().into_owned())
        .execute(pool)
        .await?;
    Ok(())
}

/// Now, as stored: Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A stored time for people: RFC 3339 in UTC.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// True when SQLite said the database is locked by another connection or
/// process (SQLITE_BUSY or SQLITE_LOCKED, any extended code) anywhere in `e`'s
/// chain: worth waiting out and trying again.
pub fn is_busy(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause.downcast_ref::<sqlx::Error>().is_some_and(busy)
            || matches!(cause.downcast_ref::<StoreError>(), Some(StoreError::Db(e)) if busy(e))
    })
}

/// The database is held by another writer past `database.busy_timeout`
/// (SQLITE_BUSY, SQLITE_LOCKED), or no connection came free in time: not a
/// fault, a reason to try again shortly.
pub fn busy(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6)),
        sqlx::Error::PoolTimedOut => true,
        _ => false,
    }
}

/// True when `e` is a UNIQUE constraint violation.
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Whether the database answers (for /healthz).
pub async fn ping(pool: &SqlitePool) -> Result<(), StoreError> {
    sqlx::query_scalar::<_, i64>("SELECT 1")
        .fetch_one(pool)
        .await?;
    Ok(())
}
