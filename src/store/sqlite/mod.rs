//! The SQLite file: opening it, its writer, migrations and backups.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    ConnectOptions, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{MIGRATOR, StoreError};
use crate::config::DatabaseSettings;

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

/// Applies pending migrations and the one schema edit SQLite needs.
pub async fn migrate(pool: &SqlitePool) -> anyhow::Result<()> {
    MIGRATOR
        .run(pool)
        .await
        .context("cannot apply database migrations")?;
    allow_complaints(pool)
        .await
        .context("cannot apply database migrations (unsubscribed_by 'complaint')")
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
        sqlx::query("UPDATE sqlite_schema SET sql = replace(sql, $1, $2) WHERE type = 'table' AND name = 'subscribers'")
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

/// A consistent copy of the database in `to` (which must not exist), made
/// while other processes read and write it (`VACUUM INTO`).
pub async fn backup(pool: &SqlitePool, to: &std::path::Path) -> Result<(), StoreError> {
    sqlx::query("VACUUM INTO $1")
        .bind(to.to_string_lossy().into_owned())
        .execute(pool)
        .await?;
    Ok(())
}
